// A full disk under the repository or the restore target, for real: a small tmpfs, mounted for this file (so
// only where this process may mount one, as CI here runs; skipped elsewhere). The failure says where and what to
// do, leaves no temp file or half restore behind, and the next try, with room made, succeeds. Then a repository
// on a read-only filesystem: readable with --no-lock, and the error without it says so.
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, open, readdir, readFile, rm, statfs, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { canMountTmpfs, mountTmpfs, remountReadOnly, unmountTmpfs } from "@dumont/repository/testing/tmpfs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runAgentCli } from "../cli/run-in-process.js";

/** Every file under `dir`, relative, sorted. */
async function files(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .sort();
}

describe.skipIf(!canMountTmpfs())("a full disk", () => {
  let root: string;
  let small: string;
  const mounts: string[] = [];
  let keyFile: string;
  let source: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "dumont-full-disk-"));
    small = join(root, "small");
    await mkdir(small);
    mountTmpfs(small, "8m");
    mounts.push(small);
    keyFile = join(root, "key");
    await writeFile(keyFile, randomBytes(32).toString("hex"), { mode: 0o600 });
    source = join(root, "src");
    await mkdir(source);
    await writeFile(join(source, "weights.bin"), randomBytes(12 * 1024 * 1024)); // incompressible: 12 MiB stored
    await writeFile(join(source, "notes.txt"), "hello\n");
  });
  afterAll(async () => {
    for (const dir of mounts.reverse()) unmountTmpfs(dir);
    await rm(root, { recursive: true, force: true });
  });

  const create = (repo: string, from = source) =>
    runAgentCli(
      "snapshot",
      "create",
      "--source",
      from,
      "--repo",
      pathToFileURL(repo).href,
      "--key-file",
      keyFile,
      "--state-dir",
      join(root, "state"),
      "--json",
    );

  it("under the repository: names the store and what to do, leaves no temp file, and the next try succeeds", async () => {
    const repo = join(small, "repo");
    const failed = await create(repo);
    expect(failed.code).toBe(1);
    expect(failed.err).toMatch(
      new RegExp(
        `cannot write ${pathToFileURL(repo).href}/\\S+: no space left on the device \\(ENOSPC\\)\\. Make room`,
      ),
    );
    expect((await files(repo)).filter((f) => f.split("/").pop()?.startsWith(".tmp-"))).toEqual([]);
    // Room made (a smaller workspace here): the same repository takes the next snapshot.
    const smaller = join(root, "smaller");
    await mkdir(smaller);
    await writeFile(join(smaller, "notes.txt"), "hello\n");
    const ok = await create(repo, smaller);
    expect(ok.err).toBe("");
    expect(JSON.parse(ok.out)).toMatchObject({ files: 1 });
  });

  it("a prune of a full repository deletes what needs no writing before it repacks, and frees the disk", async () => {
    const disk = join(root, "prune-disk");
    await mkdir(disk);
    mountTmpfs(disk, "12m");
    mounts.push(disk);
    const repo = join(disk, "repo");
    const tree = async (name: string, files: Record<string, Buffer>) => {
      const dir = join(root, name);
      await mkdir(dir);
      for (const [file, data] of Object.entries(files)) await writeFile(join(dir, file), data);
      return dir;
    };
    const x = randomBytes(1024 * 1024);
    const idOf = async (dir: string) => (JSON.parse((await create(repo, dir)).out) as { id: string }).id;
    const old = await idOf(await tree("old", { "z.bin": randomBytes(3 * 1024 * 1024) })); // a pack nothing will need
    const both = await idOf(await tree("both", { "x.bin": x, "y.bin": randomBytes(5 * 1024 * 1024) }));
    const kept = join(root, "kept");
    await idOf(await tree("kept", { "x.bin": x })); // x's chunks: a sixth of `both`'s pack, repacked once it goes
    // The disk full but for a lock file's room.
    const { bavail, bsize } = await statfs(disk);
    await writeFile(join(disk, "filler"), Buffer.alloc(Math.max(0, Number(bavail) * Number(bsize) - 128 * 1024)));

    const key = ["--repo", pathToFileURL(repo).href, "--key-file", keyFile];
    const pruned = await runAgentCli("snapshot", "forget", old, both, "--prune", "--json", ...key);
    expect(pruned.err).toBe("");
    expect(JSON.parse(pruned.out)).toMatchObject({ prune: { packsDeleted: 1, packsRepacked: 1 } });
    const checked = await runAgentCli("snapshot", "check", ...key);
    expect(checked.code, checked.err).toBe(0);
    const target = join(root, "kept-restored");
    const [only] = JSON.parse((await runAgentCli("snapshot", "list", "--json", ...key)).out) as { id: string }[];
    expect((await runAgentCli("snapshot", "restore", "--id", only.id, "--target", target, ...key)).code).toBe(0);
    expect(await readFile(join(target, "x.bin"))).toEqual(await readFile(join(kept, "x.bin")));
  });

  const restore = (repo: string, id: string, target: string) =>
    runAgentCli(
      "snapshot",
      "restore",
      "--repo",
      pathToFileURL(repo).href,
      "--key-file",
      keyFile,
      "--id",
      id,
      "--target",
      target,
      "--json",
    );

  it("under the restore target: says how much room it needs, and removes what it had restored", async () => {
    const repo = join(root, "repo");
    const made = await create(repo);
    expect(made.code).toBe(0);
    const { id } = JSON.parse(made.out) as { id: string };
    const target = join(small, "restore");
    const failed = await restore(repo, id, target);
    expect(failed.code).toBe(1);
    expect(failed.err).toContain(
      `cannot restore into ${target}: no space left on the device (ENOSPC). What was restored so far has been ` +
        "removed; the restore needs 12.0 MiB there: make room and restore again",
    );
    expect(await readdir(target)).toEqual([]);
  });

  it("under the restore target, full before anything is written: says so, and leaves no marker to refuse the next", async () => {
    const repo = join(root, "repo");
    const made = await create(repo);
    const { id } = JSON.parse(made.out) as { id: string };
    const target = join(small, "restore-full");
    await mkdir(target);
    // Every block of the filesystem taken: the restore's marker is the first thing it cannot write.
    const filler = join(small, "filler");
    const handle = await open(filler, "w");
    try {
      for (;;) await handle.write(Buffer.alloc(64 * 1024, 1));
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe("ENOSPC");
    } finally {
      await handle.close();
    }
    const failed = await restore(repo, id, target);
    expect(failed.code).toBe(1);
    expect(failed.err).toContain(
      `cannot restore into ${target}: no space left on the device (ENOSPC). Nothing was written; the restore ` +
        "needs 12.0 MiB there: make room and restore again",
    );
    expect(await readdir(target)).toEqual([]);
    await rm(filler);
    // Room made (the rest of the snapshot would still not fit this disk: the same restore, of a smaller one).
    const smallSnapshot = join(root, "small-src");
    await mkdir(smallSnapshot);
    await writeFile(join(smallSnapshot, "notes.txt"), "hello\n");
    const small2 = JSON.parse((await create(repo, smallSnapshot)).out) as { id: string };
    const again = await restore(repo, small2.id, target);
    expect(again.code).toBe(0);
    expect(await readdir(target)).toEqual(["notes.txt"]);
  });
});

describe.skipIf(!canMountTmpfs())("a restore target that fills with small files", () => {
  it("says the room its files take in whole blocks, not the bytes they hold", async () => {
    const root = await mkdtemp(join(tmpdir(), "dumont-small-files-"));
    const disk = join(root, "disk");
    await mkdir(disk);
    mountTmpfs(disk, "4m");
    try {
      const keyFile = join(root, "key");
      await writeFile(keyFile, randomBytes(32).toString("hex"), { mode: 0o600 });
      const source = join(root, "src");
      await mkdir(source);
      // 1,500 files of 5 bytes: 7.3 KiB of data, 5.9 MiB of disk (a 4 KiB block each, and one for the directory).
      for (let i = 0; i < 1_500; i++) await writeFile(join(source, `f${i}.txt`), `${i}`.padStart(5, "0"));
      const key = ["--repo", pathToFileURL(join(root, "repo")).href, "--key-file", keyFile];
      expect((await runAgentCli("snapshot", "create", "--source", source, ...key)).code).toBe(0);
      const target = join(disk, "restore");
      const failed = await runAgentCli("snapshot", "restore", "--id", "latest", "--target", target, ...key);
      expect(failed.code).toBe(1);
      expect(failed.err).toContain(
        `cannot restore into ${target}: no space left on the device (ENOSPC). What was restored so far has been ` +
          "removed; the restore needs 5.9 MiB there: make room and restore again",
      );
    } finally {
      unmountTmpfs(disk);
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!canMountTmpfs())("a read-only repository", () => {
  it("restores and checks with --no-lock, and without it says that a lock needs writing and what to do", async () => {
    const root = await mkdtemp(join(tmpdir(), "dumont-read-only-"));
    const disk = join(root, "disk");
    await mkdir(disk);
    mountTmpfs(disk, "8m");
    try {
      const keyFile = join(root, "key");
      await writeFile(keyFile, randomBytes(32).toString("hex"), { mode: 0o600 });
      const source = join(root, "src");
      await mkdir(source);
      await writeFile(join(source, "data.bin"), randomBytes(100_000));
      const repo = pathToFileURL(join(disk, "repo")).href;
      const key = ["--repo", repo, "--key-file", keyFile];
      const state = ["--state-dir", join(root, "state")];
      expect((await runAgentCli("snapshot", "create", "--source", source, ...key, ...state)).code).toBe(0);
      await mkdir(join(disk, "restored")); // a target there, made while the filesystem took writes
      remountReadOnly(disk);

      const restore = (target: string, ...more: string[]) =>
        runAgentCli("snapshot", "restore", "--id", "latest", "--target", join(root, target), ...key, ...more);
      const refused = await restore("refused");
      expect(refused.code).toBe(1);
      expect(refused.err).toContain(
        `cannot take a shared lock in ${repo} for a restore: the filesystem is read-only (EROFS); a lock is an ` +
          "object written under locks/, so this needs write access there. For a repository you may only read, add " +
          "--no-lock",
      );
      const restored = await restore("restored", "--no-lock");
      expect(restored.code, restored.err).toBe(0);
      // A target on the read-only filesystem: not a matter of room, as a full disk is.
      const readOnlyTarget = join(disk, "restored");
      const nowhere = await runAgentCli(
        "snapshot",
        "restore",
        "--id",
        "latest",
        "--target",
        readOnlyTarget,
        "--no-lock",
        ...key,
      );
      expect(nowhere.code).toBe(1);
      expect(nowhere.err).toContain(`cannot restore into ${readOnlyTarget}: the filesystem is read-only (EROFS). `);
      expect(nowhere.err).toContain("mount it read-write, or restore elsewhere");
      expect(nowhere.err).not.toContain("make room");
      expect(await readFile(join(root, "restored", "data.bin"))).toEqual(await readFile(join(source, "data.bin")));
      expect((await runAgentCli("snapshot", "check", ...key)).err).toMatch(/for a check: .*add --no-lock/);
      expect((await runAgentCli("snapshot", "check", "--no-lock", ...key)).code).toBe(0);
      // A snapshot cannot go without writing: the same cause, and no --no-lock offered.
      const create = await runAgentCli("snapshot", "create", "--source", source, ...key, ...state);
      expect(create.code).toBe(1);
      expect(create.err).toMatch(/cannot take a shared lock in \S+ for a snapshot: the filesystem is read-only/);
      expect(create.err).not.toContain("--no-lock");
    } finally {
      unmountTmpfs(disk);
      await rm(root, { recursive: true, force: true });
    }
  });
});
