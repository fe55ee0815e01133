import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { readSecretFile, SecretFileModeError, writeFileAtomic } from "./atomic-file.js";

describe("writeFileAtomic", () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it("replaces the file whole, with exactly the mode asked for, and leaves no temp file", async () => {
    const dir = await mkdtemp(join(tmpdir(), "dumont-atomic-"));
    dirs.push(dir);
    const file = join(dir, "key.pem");
    const umask = process.umask(0o077); // would narrow 0o644 to 0o600 if the mode were left to open()
    try {
      await writeFileAtomic(file, "first\n", 0o644);
      await writeFileAtomic(file, Buffer.from("second\n"), 0o644);
    } finally {
      process.umask(umask);
    }
    expect(await readFile(file, "utf8")).toBe("second\n");
    expect((await stat(file)).mode & 0o777).toBe(0o644);
    await writeFileAtomic(file, "third\n", 0o600);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readdir(dir)).toEqual(["key.pem"]);
  });

  it("fails without leaving anything when the directory does not exist", async () => {
    const dir = await mkdtemp(join(tmpdir(), "dumont-atomic-"));
    dirs.push(dir);
    await expect(writeFileAtomic(join(dir, "missing", "f"), "x")).rejects.toMatchObject({ code: "ENOENT" });
    expect(await readdir(dir)).toEqual([]);
  });
});

describe("readSecretFile", () => {
  let root: string;
  afterAll(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  it("reads a 0600 file in a directory only its owner may write to, and a sticky one like /tmp", async () => {
    root = await mkdtemp(join(tmpdir(), "dumont-secret-"));
    for (const [name, mode] of [
      ["private", 0o700],
      ["shared-read", 0o755],
      ["sticky", 0o1777],
    ] as const) {
      const dir = join(root, name);
      await mkdir(dir);
      await chmod(dir, mode);
      await writeFileAtomic(join(dir, "key"), "secret", 0o600);
      expect(await readSecretFile(join(dir, "key"))).toBe("secret");
    }
  });

  it("refuses a file others may read, and one in a directory others may write to, saying what to run", async () => {
    root ??= await mkdtemp(join(tmpdir(), "dumont-secret-"));
    const open = join(root, "open-file");
    await mkdir(open, { mode: 0o700 });
    await writeFileAtomic(join(open, "key"), "secret", 0o640);
    await expect(readSecretFile(join(open, "key"))).rejects.toThrow(
      `${join(open, "key")} is open to other users (mode 0640): run \`chmod 600 ${join(open, "key")}\``,
    );
    for (const mode of [0o775, 0o777]) {
      const dir = join(root, `writable-${mode.toString(8)}`);
      await mkdir(dir);
      await chmod(dir, mode);
      await writeFileAtomic(join(dir, "key"), "secret", 0o600);
      const refused = readSecretFile(join(dir, "key"));
      await expect(refused).rejects.toBeInstanceOf(SecretFileModeError);
      await expect(refused).rejects.toThrow(
        `${dir}, which holds key, may be written by other users (mode 0${mode.toString(8)}): they could put ` +
          `another file in its place. Run \`chmod go-w ${dir}\` and start again`,
      );
    }
  });
});
