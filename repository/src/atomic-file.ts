// Small files that must never be torn (keys, certificates, the local index): written to a temp file beside
// the target, fsynced, renamed over it, then the directory fsynced. A crash leaves the old file or the new
// one. Here rather than in either tree because the agent and the control plane both need it.
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { type FileHandle, open, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/** Writes `data` to `file` atomically with exactly `mode` (not narrowed by the umask). */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const dir = dirname(file);
  const temp = join(dir, `.${basename(file)}.${randomBytes(6).toString("hex")}.tmp`);
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await handle.writeFile(data);
    await handle.chmod(mode);
    await handle.sync();
  } catch (err) {
    await discardTemp(handle, temp);
    throw err;
  }
  await handle.close();
  try {
    await rename(temp, file);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
  await syncDirectory(dir);
}

/** Makes a rename (or create, or unlink) in `dir` durable. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Closes `handle` and removes the unfinished file `temp`, ignoring their errors (the caller reports its own). */
export async function discardTemp(handle: FileHandle, temp: string): Promise<void> {
  await handle.close().catch(() => {});
  await unlink(temp).catch(() => {});
}

/** A secret file (a private key) that users other than its owner may read or write. */
export class SecretFileModeError extends Error {}

/**
 * Reads a secret file written 0600 (a private key, a master key), refusing one that other users may read or
 * write, as ssh does: a looser mode means it was copied or restored carelessly, and whoever else read it holds
 * what it guards. The mode is read from the handle the file is read through. The directory holding it is
 * refused too when others may write to it (and it is not sticky, like /tmp): they could put another file in its
 * place, or beside it (the agent's pinned CA certificate shares its directory). We make these directories 0700,
 * but one made beforehand (or under a umask of 002) keeps its own mode.
 */
export async function readSecretFile(file: string): Promise<string> {
  const dir = dirname(file);
  const dirMode = (await stat(dir)).mode & 0o7777;
  if (dirMode & 0o022 && !(dirMode & 0o1000)) {
    throw new SecretFileModeError(
      `${dir}, which holds ${basename(file)}, may be written by other users (mode 0${dirMode.toString(8)}): they ` +
        `could put another file in its place. Run \`chmod go-w ${dir}\` and start again`,
    );
  }
  const handle = await open(file, "r");
  try {
    const mode = (await handle.stat()).mode & 0o777;
    if (mode & 0o077) {
      throw new SecretFileModeError(
        `${file} is open to other users (mode 0${mode.toString(8)}): run \`chmod 600 ${file}\` and start again, ` +
          "and if others did read it, treat it as leaked",
      );
    }
    return await handle.readFile("utf8");
  } finally {
    await handle.close();
  }
}
