// The agent's memory of what it already chunked: path -> (size, mtime, inode, chunk ids). A file whose size,
// mtime and inode are unchanged is not read again. Stored as one JSON file, replaced atomically.
import { createHash, randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, open, readFile, rename, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";

export interface LocalIndexEntry {
  size: number;
  mtimeNs: string;
  ino: string;
  chunks: string[];
  lengths: number[];
}

export interface LocalIndex {
  version: 1;
  /** What the entries are valid for (repository id + source); a mismatch discards them. */
  scope: string;
  snapshot: string;
  files: Record<string, LocalIndexEntry>;
}

/** The index file for a scope under a state directory. */
export function localIndexPath(stateDir: string, scope: string): string {
  return join(stateDir, "snapshot-index", `${createHash("sha256").update(scope).digest("hex").slice(0, 32)}.json`);
}

export async function loadLocalIndex(file: string, scope: string): Promise<Map<string, LocalIndexEntry>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return new Map();
    throw err;
  }
  try {
    const index = JSON.parse(text) as LocalIndex;
    if (index.version !== 1 || index.scope !== scope || typeof index.files !== "object") return new Map();
    return new Map(Object.entries(index.files));
  } catch {
    return new Map(); // a damaged cache only costs a full read
  }
}

export async function saveLocalIndex(file: string, index: LocalIndex): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const temp = `${file}.tmp-${randomBytes(6).toString("hex")}`;
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    await handle.writeFile(JSON.stringify(index));
    await handle.sync();
  } catch (err) {
    await handle.close();
    await unlink(temp).catch(() => {});
    throw err;
  }
  await handle.close();
  await rename(temp, file);
  const dir = await open(dirname(file), constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
