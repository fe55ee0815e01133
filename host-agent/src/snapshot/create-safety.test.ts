// What `create` must not do, on real files: drop entries without a word, read outside the source through a
// directory replaced by a symlink mid-snapshot, or fail a snapshot it has already committed.
import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import {
  chmod,
  chown,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  symlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { type ChunkSink, generateRepositoryKey, openBlobStore, Repository } from "@dumont/repository";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { runAgentCli } from "../cli/run-in-process.js";
import { createSnapshot, listSnapshotSource } from "./create-snapshot.js";
import { createDirectSnapshot, restoreDirectSnapshot } from "./direct-mode.js";
import { DIRECTORY_REPLACED, NOT_UTF8_NAME, NOT_UTF8_TARGET } from "./source-tree.js";
import { SnapshotWorkerPool } from "./worker-pool.js";

const SMALL = {
  chunker: { minSize: 16 * 1024, avgSize: 64 * 1024, maxSize: 256 * 1024 },
  packSize: 256 * 1024,
  segmentSize: 512 * 1024,
};

const run = promisify(execFile);

let root: string;
let pool: SnapshotWorkerPool;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-create-safety-"));
  pool = new SnapshotWorkerPool({ threads: 2 });
});
afterAll(async () => {
  await pool?.close();
  await rm(root, { recursive: true, force: true });
});

let counter = 0;
const fresh = (name: string): string => join(root, `${name}-${++counter}`);

/** Every path under `dir` (files with their content), sorted. */
async function tree(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for (const d of (await readdir(join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const path = rel === "" ? d.name : `${rel}/${d.name}`;
    if (d.isDirectory()) out.push(`${path}/`, ...(await tree(dir, path)));
    else if (d.isFile()) out.push(`${path}: ${await readFile(join(dir, path), "utf8")}`);
    else out.push(`${path} (${d.isSymbolicLink() ? "symlink" : "other"})`);
  }
  return out;
}

/**
 * A snapshot of `source` from `listing` (taken beforehand, or under way) into a fresh repository, and the tree
 * it restores to.
 */
async function snapshotFromListing(source: string, listing: ReturnType<typeof listSnapshotSource>) {
  const key = generateRepositoryKey();
  const repo = pathToFileURL(fresh("repo")).href;
  const { repository } = await Repository.openOrInit(openBlobStore(repo), key);
  const sink = await repository.writer({ packSize: SMALL.packSize });
  const meta = { workspace: "w", epoch: 0, tenant: "t" };
  const created = await createSnapshot({ source, listing, sink, key, meta, pool, ...SMALL });
  const target = fresh("restored");
  await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
  return { created, restored: await tree(target) };
}

/**
 * A host process writing to a new FIFO at `fifo`, blocked in open until some reader opens it (killed when the test
 * ends, whatever its outcome). `stillBlocked` says, after half a second, that nothing opened the FIFO.
 */
async function blockedFifoWriter(fifo: string): Promise<{ stillBlocked: () => Promise<boolean> }> {
  await run("mkfifo", [fifo]);
  const writer = spawn("sh", ["-c", 'echo host-data > "$1"', "sh", fifo], { stdio: "ignore" });
  onTestFinished(() => void writer.kill("SIGKILL"));
  const exited = new Promise<boolean>((resolve) => writer.on("exit", () => resolve(true)));
  return {
    stillBlocked: async () =>
      !(await Promise.race([exited, new Promise<boolean>((r) => setTimeout(() => r(false), 500))])),
  };
}

describe("create", () => {
  it("leaves out names and symlink targets that are not valid UTF-8, saying so, and keeps the rest", async () => {
    const source = fresh("src");
    // A path from strings and single bytes (0xfe and 0xff are never valid in UTF-8).
    const raw = (...parts: (string | number)[]): Buffer =>
      Buffer.concat(parts.map((p) => (typeof p === "number" ? Buffer.of(p) : Buffer.from(p))));
    mkdirSync(join(source, "ok"), { recursive: true });
    writeFileSync(join(source, "ok", "inner.txt"), "inner");
    writeFileSync(join(source, "kept.txt"), "kept");
    writeFileSync(join(source, "real \uFFFD.txt"), "a name that holds U+FFFD itself is valid UTF-8");
    writeFileSync(raw(source, "/bad", 0xff, ".txt"), "latin-1 name");
    mkdirSync(raw(source, "/dir", 0xfe));
    writeFileSync(raw(source, "/dir", 0xfe, "/inside.txt"), "inside");
    symlinkSync(raw("t", 0xff), raw(source, "/link"));
    symlinkSync("kept.txt", join(source, "good link"));

    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    // One entry for the directory, not one for what it holds; in listing order, named as decoded for display.
    expect(created.skipped).toEqual([
      { path: "bad\uFFFD.txt", reason: NOT_UTF8_NAME },
      { path: "dir\uFFFD", reason: NOT_UTF8_NAME },
      { path: "link", reason: NOT_UTF8_TARGET },
    ]);
    expect(created.files).toBe(3);
    const [record] = await (await Repository.open(openBlobStore(repo), key)).listSnapshots();
    expect(record.stats?.filesSkipped).toBe(3);
    expect(record.stats?.skipped).toEqual(created.skipped);

    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect(await tree(target)).toEqual([
      "good link (symlink)",
      "kept.txt: kept",
      "ok/",
      "ok/inner.txt: inner",
      "real \uFFFD.txt: a name that holds U+FFFD itself is valid UTF-8",
    ]);
  });

  it("follows the source itself when it is a symlink to a directory, and no symlink inside it", async () => {
    const real = fresh("real-workspace");
    await mkdir(join(real, "data"), { recursive: true });
    await writeFile(join(real, "data", "train.csv"), "a,b\n1,2\n");
    await symlink("data/train.csv", join(real, "latest.csv"));
    const source = fresh("workspace-link");
    await symlink(real, source); // /workspace -> /mnt/data/ws
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    expect(created).toMatchObject({ files: 1, skipped: [] });
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect(await tree(target)).toEqual(["data/", "data/train.csv: a,b\n1,2\n", "latest.csv (symlink)"]);

    // A link to a file, or to nothing, is still no directory to snapshot.
    const toFile = fresh("file-link");
    await symlink(join(real, "data", "train.csv"), toFile);
    await expect(createDirectSnapshot({ repo, key, source: toFile, pool, ...SMALL })).rejects.toThrow(
      `the source ${toFile} is not a directory`,
    );
    const dangling = fresh("dangling-link");
    await symlink(join(real, "gone"), dangling);
    await expect(createDirectSnapshot({ repo, key, source: dangling, pool, ...SMALL })).rejects.toThrow(
      `cannot read the source directory ${dangling}: it does not exist`,
    );
    // Refused before any repository is made: a mistyped source left a new, empty one behind at a new URL.
    const unmade = fresh("unmade-repo");
    for (const source of [dangling, toFile, fresh("missing")]) {
      await expect(
        createDirectSnapshot({ repo: pathToFileURL(unmade).href, key, source, pool, ...SMALL }),
      ).rejects.toThrow(/^(cannot read the source directory|the source .* is not a directory)/);
      expect(existsSync(unmade)).toBe(false);
    }
  });

  it("leaves out a file:// repository (or a plain path) inside the source, saying so, and refuses the source itself", async () => {
    // `--source ~ --repo file://$HOME/backups/ws`: stored, each snapshot would hold the packs of the ones before.
    const source = fresh("home");
    await mkdir(join(source, "work"), { recursive: true });
    await writeFile(join(source, "work", "notes.txt"), "notes");
    const key = generateRepositoryKey();
    const repo = pathToFileURL(join(source, "backups", "ws")).href;
    const reason = 'the repository this snapshot is written to; list "/backups/ws/" in .dumontignore to leave it out';
    const skipped = [{ path: "backups/ws", reason: `${reason} without a word` }];
    // The first is listed while the repository is made: it may be there yet or not.
    expect(await createDirectSnapshot({ repo, key, source, pool, ...SMALL })).toMatchObject({ files: 1 });
    const second = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    expect(second).toMatchObject({ files: 1, skipped });
    // Named through a symlink to the source, it is the same directory.
    const link = fresh("home-link");
    await symlink(source, link);
    const viaLink = await createDirectSnapshot({ repo: pathToFileURL(join(link, "backups", "ws")).href, key, source });
    expect(viaLink).toMatchObject({ files: 1, skipped });
    // Given as a plain path (the repository takes that too), it is the same directory: it was stored.
    const asPath = await createDirectSnapshot({ repo: join(source, "backups", "ws"), key, source, pool, ...SMALL });
    expect(asPath).toMatchObject({ files: 1, skipped });
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: second.id, target, pool });
    expect(await tree(target)).toEqual(["backups/", "work/", "work/notes.txt: notes"]);
    // Listed in .dumontignore, it goes without a word.
    await writeFile(join(source, ".dumontignore"), "/backups/ws/\n");
    expect(await createDirectSnapshot({ repo, key, source, pool, ...SMALL })).toMatchObject({ files: 2, skipped: [] });

    for (const itself of [pathToFileURL(source).href, source]) {
      await expect(createDirectSnapshot({ repo: itself, key, source: link, pool })).rejects.toThrow(
        `--repo ${itself} is the source directory itself: keep the repository outside what it backs up`,
      );
    }
  });

  // The check of a second read's path needs Linux's /proc/self/fd (elsewhere it is not made).
  it.runIf(existsSync("/proc/self/fd"))(
    "does not store what a directory replaced by a symlink after the listing leads to, in either read",
    async () => {
      // zdir/secret.txt is listed; before it is read, zdir becomes a symlink to a directory outside the source
      // holding a file of the same name and size. O_NOFOLLOW guards only the last component of a path: the
      // read must see that the file it opened is not the one listed (its inode), and the second read of files
      // that changed, which finds the outside file at that path, that it is not where it was listed.
      const source = fresh("src");
      const outside = fresh("outside");
      await mkdir(join(source, "zdir"), { recursive: true });
      await mkdir(outside);
      await writeFile(join(source, "a.txt"), "a");
      await writeFile(join(source, "zdir", "secret.txt"), "inside!");
      await writeFile(join(outside, "secret.txt"), "OUTSIDE");
      const listing = await listSnapshotSource(source);
      await rename(join(source, "zdir"), fresh("moved-away"));
      await symlink(outside, join(source, "zdir"));

      const { created, restored } = await snapshotFromListing(source, Promise.resolve(listing));
      expect(created.skipped).toEqual([
        {
          path: "zdir/secret.txt",
          reason: "a directory on its path was replaced while the snapshot ran (it leads elsewhere now)",
        },
      ]);
      expect(created.files).toBe(1);
      expect(restored).toEqual(["a.txt: a", "zdir/"]);
    },
  );

  it("lists nothing through a directory replaced by a symlink while the source is listed", async () => {
    // The listing saw zdir a directory (its lstat); before it read zdir's names, zdir became a symlink to a
    // directory outside the source. Read by path, its names and their lstats were the outside's, and the read
    // of each file then found the very inode listed: the outside's files were stored as the workspace's.
    const source = fresh("src");
    const outside = fresh("outside");
    await mkdir(join(source, "zdir"), { recursive: true });
    await mkdir(outside);
    await writeFile(join(source, "a.txt"), "a");
    await writeFile(join(source, "zdir", "own.txt"), "inside");
    await writeFile(join(outside, "id_rsa"), "HOST SECRET");
    let directories = 0;
    const listing = listSnapshotSource(source, [], () => {
      // Called as each directory's walk begins: the second is zdir's, after the root's listing saw it.
      if (++directories === 2) {
        renameSync(join(source, "zdir"), fresh("moved-away"));
        symlinkSync(outside, join(source, "zdir"));
      }
    });
    const { created, restored } = await snapshotFromListing(source, listing);
    expect(directories).toBe(2);
    expect(created.skipped).toEqual([{ path: "zdir", reason: DIRECTORY_REPLACED }]);
    expect(restored).toEqual(["a.txt: a", "zdir/"]);
  });

  it("reads a file that grew after the listing once more, rather than store its listed size's worth of it", async () => {
    // Rewritten whole between the listing and the read: the first 3 bytes of the new content ("hel") are
    // content the file never had. (A shrink was always caught: the read comes up short.)
    const source = fresh("src");
    await mkdir(source);
    await writeFile(join(source, "cfg"), "abc");
    await writeFile(join(source, "other"), "same");
    const listing = await listSnapshotSource(source);
    await writeFile(join(source, "cfg"), "hello world");
    const { created, restored } = await snapshotFromListing(source, Promise.resolve(listing));
    expect(created.skipped).toEqual([]);
    expect(restored).toEqual(["cfg: hello world", "other: same"]);
  });

  it.skipIf(process.getuid?.() !== 0 || !existsSync("/usr/bin/setpriv"))(
    "says why a directory it may not read is left out, without the name it reached it by; a source it may not list fails",
    async () => {
      // As nobody (root reads everything): the directory is opened through its parent's handle, and the error's
      // own path was /proc/self/fd/N/locked.
      const work = fresh("as-nobody");
      await mkdir(join(work, "src", "locked"), { recursive: true });
      await writeFile(join(work, "src", "a.txt"), "a");
      const key = generateRepositoryKey();
      await writeFile(join(work, "key"), key.toString("hex"), { mode: 0o600 });
      await chown(join(work, "key"), 65534, 65534);
      await chmod(root, 0o755);
      await chmod(work, 0o777);
      await chmod(join(work, "src", "locked"), 0o000);
      const agent = fileURLToPath(new URL("../../bin/dumont-agent.js", import.meta.url));
      const asNobody = () =>
        run("/usr/bin/setpriv", [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          process.execPath,
          agent,
          "snapshot",
          "create",
          "--source",
          join(work, "src"),
          "--repo",
          pathToFileURL(join(work, "repo")).href,
          "--key-file",
          join(work, "key"),
          "--state-dir",
          join(work, "state"),
          "--json",
        ]);
      const { stdout } = await asNobody();
      expect(JSON.parse(stdout).skipped).toEqual([
        { path: "locked", reason: "cannot list: EACCES: permission denied" },
      ]);
      // The source itself: one that may be entered but not listed (0711) was listed as nothing, an empty snapshot
      // that a retention policy took for the newest; one that may not be entered (0700, 0744) was blamed on a
      // .dumontignore it does not have. Each fails, saying so, and stores no snapshot.
      const [user] = (await run("id", ["-nu", "65534"])).stdout.split("\n");
      for (const mode of [0o711, 0o700, 0o744]) {
        await chmod(join(work, "src"), mode);
        const failed = await asNobody().then(
          () => undefined,
          (err: { code: number; stderr: string }) => err,
        );
        expect(failed?.code, mode.toString(8)).toBe(1);
        expect(failed?.stderr).toBe(
          `dumont-agent: cannot read the source directory ${join(work, "src")}: EACCES: permission denied ` +
            `(the agent runs as user ${user}, which may not list or enter it)\n`,
        );
      }
      const repository = await Repository.open(openBlobStore(pathToFileURL(join(work, "repo")).href), key);
      expect(await repository.listSnapshots()).toHaveLength(1);
    },
  );

  it("returns a committed snapshot whose local index cannot be saved, with a warning, and the CLI exits 0", async () => {
    const source = fresh("src");
    await mkdir(source);
    await writeFile(join(source, "a.txt"), "a\n".repeat(100));
    // The index's directory a dangling symlink: nothing to load (ENOENT), and it cannot be made.
    const stateDir = fresh("state");
    await mkdir(stateDir);
    await symlink(join(stateDir, "nowhere", "deeper"), join(stateDir, "snapshot-index"));
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;

    const created = await createDirectSnapshot({ repo, key, source, pool, stateDir, ...SMALL });
    expect(created.files).toBe(1);
    expect(created.warnings).toHaveLength(1);
    expect(created.warnings?.[0]).toMatch(
      new RegExp(
        `^snapshot ${created.id} is saved, but not its local index: .+; the next snapshot will read its files again$`,
      ),
    );
    const listed = await (await Repository.open(openBlobStore(repo), key)).listSnapshots();
    expect(listed.map((s) => s.id)).toEqual([created.id]);

    const keyFile = fresh("key");
    await writeFile(keyFile, key.toString("hex"), { mode: 0o600 });
    const state = ["--state-dir", stateDir];
    const { code, out, err } = await runAgentCli(
      "snapshot",
      "create",
      "--source",
      source,
      "--repo",
      repo,
      "--key-file",
      keyFile,
      ...state,
      "--json",
    );
    expect(code).toBe(0);
    const { id } = JSON.parse(out);
    // Said once.
    expect(err).toMatch(new RegExp(`^warning: snapshot ${id} is saved, but not its local index: [^\\n]+\\n$`));
    const again = await (await Repository.open(openBlobStore(repo), key)).listSnapshots();
    expect(again.map((s) => s.id)).toContain(id);
  });

  it("says once that a damaged local index made it read every file again, and writes a good one", async () => {
    const source = fresh("src");
    await mkdir(source);
    await writeFile(join(source, "a.txt"), "a\n".repeat(100));
    const hourAgo = Date.now() / 1000 - 3600;
    await utimes(join(source, "a.txt"), hourAgo, hourAgo); // outside the racy window: the index vouches for it
    const stateDir = fresh("state");
    const key = generateRepositoryKey();
    const keyFile = fresh("key");
    await writeFile(keyFile, key.toString("hex"), { mode: 0o600 });
    const repo = pathToFileURL(fresh("repo")).href;
    const create = () =>
      runAgentCli(
        "snapshot",
        ...["create", "--source", source, "--repo", repo, "--key-file", keyFile, "--state-dir", stateDir, "--json"],
      );
    expect((await create()).code).toBe(0);
    const [name] = await readdir(join(stateDir, "snapshot-index"));
    const file = join(stateDir, "snapshot-index", name);
    const data = await readFile(file);
    data[data.length - 1] ^= 0x01;
    await writeFile(file, data);

    const damaged = await create();
    expect(damaged.code).toBe(0);
    expect(JSON.parse(damaged.out)).toMatchObject({ files: 1, bytesRead: 200 });
    expect(damaged.err).toBe(
      `warning: the local index ${file} could not be used (damaged: bad digest), so every file was read again; ` +
        "this snapshot wrote it anew\n",
    );
    const next = await create();
    expect({ err: next.err, bytesRead: JSON.parse(next.out).bytesRead }).toEqual({ err: "", bytesRead: 0 });

    // A directory in its place: read as none and said so, and the snapshot that cannot write it says that too.
    await rm(file);
    await mkdir(file);
    const blocked = await create();
    expect(blocked.code).toBe(0);
    const lines = blocked.err.trimEnd().split("\n");
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(
      /^warning: the local index .+ could not be used \(EISDIR.*\), so every file was read again$/,
    );
    expect(lines[1]).toMatch(/^warning: snapshot \w+ is saved, but not its local index: /);
  });
});

describe("create, while files change under it", () => {
  const HOUR_AGO = Date.now() / 1000 - 3600;
  const meta = { workspace: "w", epoch: 0, tenant: "t" };
  const seeded = (size: number, seed: string): Buffer => {
    const out = Buffer.allocUnsafe(size);
    for (let i = 0, n = 0; i < size; n++) i += createHash("sha256").update(`${seed}:${n}`).digest().copy(out, i);
    return out;
  };
  /** A fresh repository and a writer into it whose put first runs `before` (once per put). */
  const writerWith = async (key: Buffer, before: (puts: number) => Promise<void>) => {
    const repo = pathToFileURL(fresh("repo")).href;
    const { repository } = await Repository.openOrInit(openBlobStore(repo), key);
    const writer = await repository.writer({ packSize: SMALL.packSize });
    let puts = 0;
    const sink: ChunkSink = {
      missing: (ids) => writer.missing(ids),
      put: async (chunks) => {
        await before(++puts);
        await writer.put(chunks);
      },
      commit: (manifest, m) => writer.commit(manifest, m),
      abort: () => writer.abort(),
    };
    return { repo, repository, sink };
  };

  it("stores a file rewritten in place at its size while its segments are read as one version, never a mix", async () => {
    // 8 MiB: 16 segments, read by two workers at different times. Rewritten in place once the first chunks are
    // taken (a database's pages, `dd conv=notrunc`, an mmap'd checkpoint): its size never changes, its times do.
    const source = fresh("src");
    await mkdir(source);
    const file = join(source, "db.bin");
    const [v1, v2] = [seeded(8 * 1024 * 1024, "v1"), seeded(8 * 1024 * 1024, "v2")];
    await writeFile(file, v1);
    await utimes(file, HOUR_AGO, HOUR_AGO);
    const key = generateRepositoryKey();
    const { repo, sink } = await writerWith(key, async (puts) => {
      if (puts === 1) await writeFile(file, v2, { flag: "r+" });
    });
    const created = await createSnapshot({ source, sink, key, meta, pool, ...SMALL });
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    // Read once more as it is now (the change noticed): v2, whole.
    expect(created.skipped).toEqual([]);
    expect((await readFile(join(target, "db.bin"))).equals(v2)).toBe(true);
  });

  it("never stores a file rewritten in place during both its reads as a mix: left out, saying so", async () => {
    // Rewritten in place once during the first read (noticed: read once more from a fresh listing) and again
    // during that second read, whose segments held no times: its first segments came from one version, the rest
    // from the next. An append during the second read (the file grows) is still kept as a prefix.
    const source = fresh("src");
    await mkdir(source);
    const file = join(source, "db.bin");
    const [v1, v2, v3] = ["v1", "v2", "v3"].map((v) => seeded(8 * 1024 * 1024, v));
    await writeFile(file, v1);
    await utimes(file, HOUR_AGO, HOUR_AGO);
    const key = generateRepositoryKey();
    let armed = true; // rewrite at the next chunks taken: once in the first read, once in the second
    let rewrites = 0;
    const { repo, sink } = await writerWith(key, async () => {
      if (!armed) return;
      armed = false;
      await writeFile(file, ++rewrites === 1 ? v2 : v3, { flag: "r+" });
    });
    let total = 0;
    const created = await createSnapshot({
      source,
      sink,
      key,
      meta,
      pool,
      ...SMALL,
      onProgress: (p) => {
        if (total !== 0 && p.bytesToRead !== total) armed = true; // the second read begins
        total = p.bytesToRead;
      },
    });
    expect(rewrites).toBe(2);
    expect(created.skipped).toEqual([{ path: "db.bin", reason: expect.stringMatching(/changed while/) }]);
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect(existsSync(join(target, "db.bin"))).toBe(false);
  });

  it("opens nothing outside the source through a directory swapped for a symlink after the listing", async () => {
    // The listing saw d/pipe, a file. Then d is swapped for a link to a directory outside whose `pipe` is a FIFO a
    // host process writes to, blocked in open until a reader opens it. O_NOFOLLOW guards a path's last name only:
    // the workers opened the FIFO (or, as root, a device: /dev/watchdog arms on open) before their inode check.
    const base = fresh("swap");
    const source = join(base, "src");
    const outside = join(base, "outside");
    await mkdir(join(source, "d"), { recursive: true });
    await mkdir(outside);
    await writeFile(join(source, "d", "pipe"), "inside\n");
    await writeFile(join(source, "kept.txt"), "kept\n");
    const listing = listSnapshotSource(source);
    await listing;
    const writer = await blockedFifoWriter(join(outside, "pipe"));
    await rename(join(source, "d"), join(base, "d.moved"));
    await symlink(outside, join(source, "d"));
    const { created, restored } = await snapshotFromListing(source, listing);
    expect(created.skipped).toEqual([
      {
        path: "d/pipe",
        reason: "a directory on its path was replaced while the snapshot ran (it leads elsewhere now)",
      },
    ]);
    expect(restored).toEqual(["d/", "kept.txt: kept\n"]);
    expect(await writer.stillBlocked()).toBe(true); // nothing opened the FIFO outside the source
  });

  it("opens nothing outside the source through a file swapped for a symlink after the listing", async () => {
    // The listing saw `pipe`, a file; then it is swapped for a link to a FIFO outside that a host process writes
    // to, blocked in open until a reader opens it. The workers open a source file O_NOFOLLOW: followed, the FIFO
    // would be opened before the check that it is no file. (The read-ahead's open: read-ahead.test.ts.)
    const base = fresh("leaf-swap");
    const source = join(base, "src");
    const outside = join(base, "outside");
    await mkdir(source, { recursive: true });
    await mkdir(outside);
    await writeFile(join(source, "pipe"), "inside\n");
    await writeFile(join(source, "kept.txt"), "kept\n");
    const listing = listSnapshotSource(source);
    await listing;
    const writer = await blockedFifoWriter(join(outside, "fifo"));
    await rm(join(source, "pipe"));
    await symlink(join(outside, "fifo"), join(source, "pipe"));
    const { created, restored } = await snapshotFromListing(source, listing);
    expect(created.skipped).toEqual([{ path: "pipe", reason: expect.stringMatching(/^cannot read: ELOOP/) }]);
    expect(restored).toEqual(["kept.txt: kept\n"]);
    expect(await writer.stillBlocked()).toBe(true); // nothing opened the FIFO outside the source
  });

  it("reads the files of a tree deeper than PATH_MAX, as its listing walks it: through handles", async () => {
    // 25 levels of 200-byte names: the deepest files' paths pass 4,096 bytes (made by relative steps, as no
    // whole path would open).
    const source = fresh("deep");
    const target = fresh("restored");
    await mkdir(source);
    const cwd = process.cwd();
    try {
      process.chdir(source);
      for (let i = 1; i <= 25; i++) {
        mkdirSync("d".repeat(200));
        process.chdir("d".repeat(200));
        writeFileSync("f.txt", `level ${i}`);
      }
    } finally {
      process.chdir(cwd);
    }
    try {
      const key = generateRepositoryKey();
      const repo = pathToFileURL(fresh("repo")).href;
      const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
      expect([created.files, created.skipped]).toEqual([25, []]);
      await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
      // Every file whole, each read back by find (which walks by relative steps too, as cat by a path would not).
      const each = "find \"$1\" -name f.txt -execdir sh -c 'cat f.txt; echo' \\;"; // in each file's directory
      const { stdout } = await run("sh", ["-c", each, "sh", target]);
      const levels = Array.from({ length: 25 }, (_, i) => `level ${i + 1}`);
      expect(stdout.trim().split("\n").sort()).toEqual(levels.sort());
    } finally {
      await run("rm", ["-rf", source, target]); // Node's rm cannot: it removes by whole paths
    }
  });

  it("keeps what an interrupted snapshot stored, the pack it was filling too: the next one sends only the rest", async () => {
    const source = fresh("src");
    await mkdir(source);
    const size = 4 * 1024 * 1024;
    await writeFile(join(source, "big.bin"), seeded(size, "interrupted"));
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const { repository } = await Repository.openOrInit(openBlobStore(repo), key);
    // A pack far larger than the file: what was put is in the pack being filled, which only the abort can seal.
    const writer = await repository.writer({ packSize: 64 * 1024 * 1024 });
    const stop = new AbortController();
    let stored = 0;
    const sink: ChunkSink = {
      missing: (ids) => writer.missing(ids),
      put: async (chunks) => {
        await writer.put(chunks);
        stored += chunks.reduce((sum, c) => sum + c.plainLength, 0);
        stop.abort(new Error("interrupted by the test")); // a signal, as Ctrl-C gives direct mode
      },
      commit: (manifest, m) => writer.commit(manifest, m),
      abort: (options) => writer.abort(options),
    };
    await expect(createSnapshot({ source, sink, key, meta, pool, ...SMALL, signal: stop.signal })).rejects.toThrow(
      "interrupted by the test",
    );
    expect(stored).toBeGreaterThan(0);
    expect(stored).toBeLessThan(size);
    const again = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    expect(again.bytesNew).toBe(size - stored);
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: again.id, target, pool });
    const digest = async (dir: string) =>
      createHash("sha256")
        .update(await readFile(join(dir, "big.bin")))
        .digest("hex");
    expect(await digest(target)).toBe(await digest(source));
  });

  it("gives the pool's shared buffers back when a snapshot fails part-way (an agent's pool lives on)", async () => {
    // A sink that fails once some chunks were taken (the control plane aborts, the stream drops): the buffers of
    // the segments sealed ahead, and the failed one's, stayed lent until the pool closed, ~24 MiB each.
    const shared = new SnapshotWorkerPool({ threads: 2 });
    const lent = () => {
      const p = shared as unknown as { sharedIds: Map<ArrayBufferLike, number>; idleShared: unknown[] };
      return p.sharedIds.size - p.idleShared.length;
    };
    try {
      const source = fresh("src");
      await mkdir(source);
      await writeFile(join(source, "big.bin"), seeded(16 * 1024 * 1024, "big"));
      const key = generateRepositoryKey();
      const after: number[] = [];
      for (let round = 0; round < 3; round++) {
        const { sink } = await writerWith(key, async (puts) => {
          if (puts === 2) throw new Error("the control plane aborted the snapshot");
        });
        await expect(createSnapshot({ source, sink, key, meta, pool: shared, ...SMALL })).rejects.toThrow(/aborted/);
        after.push(lent());
      }
      expect(after).toEqual([0, 0, 0]);
    } finally {
      await shared.close();
    }
  });
});

describe("a workspace whose manifest cannot fit one snapshot", () => {
  // Found only when the manifest was cut, after every file had been read and sent: hours for millions of files
  // or a file of TiBs. Judged from the listing now, before anything is read: a real listing whose files are
  // given such sizes stands in for them (with SMALL's 256 KiB largest chunk, a part's 64 MiB of chunk list is
  // reached at ~237 GiB).
  const GiB = 2 ** 30;
  const refusal = async (sizes: Record<string, number>) => {
    const source = fresh("huge");
    await mkdir(source);
    for (const name of Object.keys(sizes)) await writeFile(join(source, name), "");
    const listing = await listSnapshotSource(source);
    for (const e of listing.entries) e.size = sizes[e.path] ?? e.size;
    const { repository } = await Repository.openOrInit(openBlobStore(pathToFileURL(fresh("repo")).href), KEY);
    const sink = await repository.writer();
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    const failure = await createSnapshot({
      source,
      listing: Promise.resolve(listing),
      sink,
      key: KEY,
      meta,
      pool,
      ...SMALL,
    }).then(
      () => undefined,
      (err: Error) => err,
    );
    await sink.abort();
    return failure;
  };
  const KEY = generateRepositoryKey();

  it("refuses, naming it, a file whose list of chunks alone is more than a manifest part holds", async () => {
    const failure = await refusal({ "small.bin": 10, "disk.img": 300 * GiB });
    expect(failure?.message).toContain(
      `"disk.img" (${300 * GiB} bytes) is too large for a snapshot: its list of at least 1228800 chunks`,
    );
  });

  it("refuses files whose chunk lists together are more than a manifest holds", async () => {
    // 200 GiB each fits a part (~54 MiB of chunk list); five of them are over the 256 MiB a manifest holds.
    const failure = await refusal(Object.fromEntries([1, 2, 3, 4, 5].map((i) => [`part${i}.img`, 200 * GiB])));
    expect(failure?.message).toContain("5 entries make a manifest larger than one snapshot can hold (256 MiB");
  });
});
