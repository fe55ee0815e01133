import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { writeFileAtomic } from "./atomic-file.js";

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
