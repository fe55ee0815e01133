import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, realpath, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { RestoreDirectories } from "./restore-directories.js";

const openFds = async (): Promise<number> => (await readdir("/proc/self/fd")).length;

describe.runIf(process.platform === "linux")("RestoreDirectories", () => {
  let root: string;
  beforeEach(async () => {
    root = await realpath(await mkdtemp(join(tmpdir(), "dumont-dirs-")));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("runs its flush's `sync` with PATH and the C locale alone of this process's environment", async () => {
    // A repository key in DUMONT_REPO_KEY (direct mode's way) reached whatever `sync` came first on PATH.
    const bin = join(root, "bin");
    await mkdir(bin);
    const seen = join(root, "env-seen");
    await writeFile(join(bin, "sync"), `#!/bin/sh\nenv > ${seen}\n`, { mode: 0o755 });
    vi.stubEnv("PATH", `${bin}:${process.env.PATH}`);
    vi.stubEnv("DUMONT_REPO_KEY", "ab".repeat(32));
    const target = join(root, "target");
    await mkdir(target);
    const dirs = await RestoreDirectories.open(target);
    try {
      await dirs.syncFilesystem();
    } finally {
      await dirs.close();
      vi.unstubAllEnvs();
    }
    const names = (await readFile(seen, "utf8"))
      .split("\n")
      .filter(Boolean)
      .map((line) => line.split("=")[0]);
    expect(names).not.toContain("DUMONT_REPO_KEY");
    expect(names).toEqual(expect.arrayContaining(["PATH", "LC_ALL"]));
  });

  it("names entries through their directory's handle, keeping a bounded number open", async () => {
    const before = await openFds();
    const dirs = await RestoreDirectories.open(root);
    expect(dirs.throughHandles).toBe(true);
    const names = Array.from({ length: 600 }, (_, i) => `d${i}`);
    for (const name of names) {
      const at = await dirs.entry(name);
      await mkdir(at.path);
      at.release();
      const file = await dirs.entry(`${name}/f`);
      expect(file.path).toMatch(/^\/proc\/self\/fd\/\d+\/f$/);
      await writeFile(file.path, name);
      file.release();
    }
    // 600 directories used, a few hundred handles at most (256 idle ones are kept), none once closed.
    expect(await openFds()).toBeLessThan(before + 300);
    await dirs.close();
    expect(await openFds()).toBe(before);
    for (const name of names) expect(await readFile(join(root, name, "f"), "utf8")).toBe(name);
  });

  it("reads the target's names through its handle: a directory swapped in at its path is not what is judged", async () => {
    // The restore checks the target empty through the handle it then writes through: swapped after opening
    // (an empty directory renamed in at the path), the check still sees the directory the restore would fill.
    const target = join(root, "target");
    await mkdir(target);
    await writeFile(join(target, "precious"), "kept");
    const dirs = await RestoreDirectories.open(target);
    await rename(target, join(root, "moved"));
    await mkdir(target);
    expect(await readdir(target)).toEqual([]);
    expect(await dirs.targetNames()).toEqual(["precious"]);
    // Emptying keeps the name asked for.
    const keep = await dirs.entry("keep");
    await writeFile(keep.path, "marker");
    keep.release();
    await dirs.emptyTarget("keep");
    expect(await dirs.targetNames()).toEqual(["keep"]);
    await dirs.close();
  });

  it("never closes a leased handle: its name keeps meaning the directory it was taken for", async () => {
    const dirs = await RestoreDirectories.open(root);
    await mkdir(join(root, "keep"));
    const kept = await dirs.entry("keep/late");
    for (let i = 0; i < 400; i++) {
      await mkdir(join(root, `other${i}`));
      const at = await dirs.entry(`other${i}/x`);
      await writeFile(at.path, "");
      at.release();
    }
    await writeFile(kept.path, "late");
    kept.release();
    await dirs.close();
    expect(await readFile(join(root, "keep", "late"), "utf8")).toBe("late");
  });

  it("empties the target without following a directory swapped for a symlink while it does", async () => {
    // Another process (root in a container, say) swaps "a" for a symlink to `victim` as soon as the emptying
    // has removed a first file from it. Node's recursive rm resolved every path from the top again and went on
    // deleting in `victim` (up to 2,962 of 3,000 files in a review's runs).
    const victim = await mkdtemp(join(tmpdir(), "dumont-victim-"));
    try {
      await mkdir(join(root, "a"));
      const files = Array.from({ length: 3000 }, (_, i) => `f${i}`);
      for (const f of files) {
        await writeFile(join(root, "a", f), "");
        await writeFile(join(victim, f), "host data");
      }
      await writeFile(join(root, "top"), "");
      const a = join(root, "a");
      const racer = spawn(
        process.execPath,
        [
          "-e",
          `const fs = require("node:fs");
           process.stdout.write("ready\\n");
           const end = Date.now() + 20000;
           while (fs.readdirSync(${JSON.stringify(a)}).length >= 3000 && Date.now() < end) {}
           fs.renameSync(${JSON.stringify(a)}, ${JSON.stringify(`${a}.moved`)});
           fs.symlinkSync(${JSON.stringify(victim)}, ${JSON.stringify(a)});`,
        ],
        { stdio: ["ignore", "pipe", "inherit"] },
      );
      await new Promise<void>((resolve) => racer.stdout!.once("data", () => resolve()));
      const dirs = await RestoreDirectories.open(root);
      await dirs.emptyTarget();
      await dirs.close();
      await new Promise<void>((resolve) => (racer.exitCode !== null ? resolve() : racer.once("exit", () => resolve())));
      expect((await readdir(victim)).length).toBe(3000);
      expect(await readdir(root)).not.toContain("top");
    } finally {
      await rm(victim, { recursive: true, force: true });
    }
  });

  it("keeps writing into a directory it holds after its name is swapped, and refuses to open the swapped name", async () => {
    const outside = await mkdtemp(join(tmpdir(), "dumont-outside-"));
    try {
      const dirs = await RestoreDirectories.open(root);
      await mkdir(join(root, "a"));
      await mkdir(join(root, "b"));
      const inA = await dirs.entry("a/one"); // "a" is now held
      inA.release();
      for (const d of ["a", "b"]) {
        await rename(join(root, d), join(root, `${d}.moved`));
        await symlink(outside, join(root, d));
      }
      const again = await dirs.entry("a/two");
      await writeFile(again.path, "into the directory it opened");
      again.release();
      await expect(dirs.entry("b/x")).rejects.toThrow(
        /^directory "b" of the restore target was replaced or removed while the restore ran/,
      );
      await expect(dirs.withDirectory("b", async () => {})).rejects.toThrow(/directory "b"/);
      await dirs.close();
      expect(await readdir(outside)).toEqual([]);
      expect(await readdir(join(root, "a.moved"))).toEqual(["two"]);
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });
});
