// Snapshot create/restore end to end, on a local repository and on a real S3 server (s3rver) on loopback.
import { execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, existsSync, rmSync, statSync } from "node:fs";
import {
  appendFile,
  chmod,
  lchown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  statfs,
  symlink,
  unlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  type BlobStore,
  type ChunkSink,
  type ChunkSource,
  checkRepository,
  chunkCodec,
  type FetchedChunk,
  forgetSnapshots,
  generateRepositoryKey,
  indexKey,
  isRepositoryError,
  MAX_SKIPPED_LISTED,
  MAX_SKIPPED_REASON,
  type Manifest,
  type ManifestPartBlob,
  NOT_INDEXED,
  openBlobStore,
  packKey,
  pruneRepository,
  Repository,
  RepositoryChunkSource,
  RepositoryIndex,
  sealManifestParts,
  thisProcess,
} from "@dumont/repository";
import { type S3TestServer, startS3TestServer } from "@dumont/repository/testing";
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from "vitest";
import { chunkLengths } from "./chunker.js";
import { createSnapshot, listSnapshotSource } from "./create-snapshot.js";
import {
  createDirectSnapshot,
  type DirectCreateOptions,
  restoreDirectSnapshot,
  withDirectRepository,
} from "./direct-mode.js";
import { ReadAhead } from "./read-ahead.js";
import { FlushFailedError, RestoreDirectories } from "./restore-directories.js";
import {
  linkOrCopy,
  MAX_COPY_ROUNDS,
  RestoreDamagedError,
  RestoreLeftBehindError,
  restoreSnapshot,
} from "./restore-snapshot.js";
import {
  claimTarget,
  MARKER_STALE_AFTER_MS,
  RESTORE_MARKER,
  RESTORE_MARKER_LEFT_OUT,
  RESTORE_WRITES_WITHIN_MS,
} from "./restore-target.js";
import { builtSnapshotModule } from "./testing.js";
import { SnapshotWorkerPool } from "./worker-pool.js";

// Small sizes keep the suite fast while still crossing every boundary: many chunks per file, files larger
// than a pack, and files split into segments that must be stitched.
const CHUNKER = { minSize: 16 * 1024, avgSize: 64 * 1024, maxSize: 256 * 1024 };
const SMALL = { chunker: CHUNKER, packSize: 256 * 1024, segmentSize: 512 * 1024 };
const HOUR_AGO = Date.now() / 1000 - 3600;

let root: string;
let s3: S3TestServer;
let pool: SnapshotWorkerPool;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-snap-"));
  s3 = await startS3TestServer();
  pool = new SnapshotWorkerPool({ threads: 2 });
});
afterAll(async () => {
  await pool?.close();
  await s3?.close();
  await rm(root, { recursive: true, force: true });
});

let counter = 0;
const fresh = (name: string): string => join(root, `${name}-${++counter}`);

/** A pool of two workers (closed after the test) that counts the buffers it handed out and did not get back. */
function countingPool(): { pool: SnapshotWorkerPool; held: Set<ArrayBufferLike> } {
  const counting = new SnapshotWorkerPool({ threads: 2 });
  onTestFinished(() => counting.close());
  const held = new Set<ArrayBufferLike>();
  const buffer = counting.buffer.bind(counting);
  const recycle = counting.recycle.bind(counting);
  counting.buffer = (size) => {
    const b = buffer(size);
    held.add(b.buffer);
    return b;
  };
  counting.recycle = (b) => {
    held.delete(b);
    recycle(b);
  };
  return { pool: counting, held };
}

function seeded(size: number, seed: string): Buffer {
  const out = Buffer.allocUnsafe(size);
  for (let i = 0, n = 0; i < size; n++) i += createHash("sha256").update(`${seed}:${n}`).digest().copy(out, i);
  return out;
}

function csv(rows: number, seed: number): Buffer {
  const lines: string[] = ["id,name,score,when"];
  let x = seed;
  for (let i = 0; i < rows; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    lines.push(`${i},user-${x % 997},${(x % 10000) / 100},2026-01-${String((x % 28) + 1).padStart(2, "0")}`);
  }
  return Buffer.from(`${lines.join("\n")}\n`);
}

/** A workspace with every kind of entry the format must carry. */
async function makeWorkspace(dir: string): Promise<void> {
  await mkdir(join(dir, "data"), { recursive: true });
  await mkdir(join(dir, "empty dir"));
  await mkdir(join(dir, "src", "pkg ü"), { recursive: true });
  await writeFile(join(dir, "data", "weights.bin"), seeded(1_500_000, "weights")); // > pack, > segment
  await writeFile(join(dir, "data", "table.csv"), csv(20_000, 7));
  await writeFile(join(dir, "empty"), "");
  for (let i = 0; i < 30; i++) {
    await writeFile(join(dir, "src", "pkg ü", `módulo ${i}.py`), `def f${i}(x):\n    return x * ${i}\n`.repeat(i + 1));
  }
  await writeFile(join(dir, "run.sh"), "#!/bin/sh\necho hi\n");
  await chmod(join(dir, "run.sh"), 0o755);
  await writeFile(join(dir, "readonly.txt"), "do not touch\n");
  await chmod(join(dir, "readonly.txt"), 0o444);
  await symlink("data/weights.bin", join(dir, "latest"));
  await symlink("no/such/target", join(dir, "dangling"));
  await utimesTree(dir, HOUR_AGO);
}

/** A direct snapshot of a fresh makeWorkspace tree into a fresh file:// repository, opened for tampering. */
async function snapshotOfWorkspace() {
  const source = fresh("src");
  await makeWorkspace(source);
  const key = generateRepositoryKey();
  const repo = pathToFileURL(fresh("repo")).href;
  const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
  const store = openBlobStore(repo);
  return { source, key, repo, created, store, repository: await Repository.open(store, key) };
}

/**
 * A source of a model of `modelBytes`, `small` small files and, with `logRows`, a CSV log, all an hour old; and
 * direct-mode options for it with a repository and a state directory (a local index) of its own.
 */
async function workspaceWithIndex(
  modelBytes: number,
  small: number,
  logRows?: number,
): Promise<DirectCreateOptions & { source: string; key: Buffer }> {
  const source = fresh("src");
  await mkdir(join(source, "small"), { recursive: true });
  await writeFile(join(source, "model.bin"), seeded(modelBytes, "model"));
  if (logRows !== undefined) await writeFile(join(source, "log.csv"), csv(logRows, 3));
  for (let i = 0; i < small; i++) {
    await writeFile(join(source, "small", `f${i}.txt`), `file ${i}\n`.repeat(200 + i));
  }
  await utimesTree(source, HOUR_AGO);
  const key = generateRepositoryKey();
  return { repo: pathToFileURL(fresh("repo")).href, key, source, pool, stateDir: fresh("state"), ...SMALL };
}

async function utimesTree(dir: string, seconds: number): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await utimesTree(path, seconds);
    if (!entry.isSymbolicLink()) await utimes(path, seconds, seconds);
  }
  await utimes(dir, seconds, seconds);
}

/** SHA-256 of a file, read in pieces (the big-file test's files are larger than it should hold). */
async function fileDigest(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const piece of createReadStream(path)) hash.update(piece as Buffer);
  return hash.digest("hex");
}

/** Every entry with its type, mode, size, mtime (ms) and content hash or link target. */
async function describeTree(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  const names = (await readdir(join(dir, rel))).sort();
  for (const name of names) {
    const path = rel === "" ? name : `${rel}/${name}`;
    const abs = join(dir, path);
    const st = await lstat(abs);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) out.push(`${path} link -> ${await readlink(abs)}`);
    else if (st.isDirectory()) {
      out.push(`${path} dir ${mode} ${Math.floor(st.mtimeMs)}`);
      out.push(...(await describeTree(dir, path)));
    } else {
      const hash = createHash("sha256")
        .update(await readFile(abs))
        .digest("hex");
      out.push(`${path} file ${mode} ${st.size} ${Math.floor(st.mtimeMs)} ${hash}`);
    }
  }
  return out;
}

/** Runs `script` as an ES module in a process of its own, kills it (-9) once it prints `line`; its pid. */
async function killOnceItSays(script: string, line: string): Promise<number> {
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => d.toString().includes(line) && resolve());
    child.on("exit", (code) => reject(new Error(`child exited early with ${code}`)));
  });
  child.kill("SIGKILL");
  await new Promise((resolve) => child.on("exit", resolve));
  return child.pid!;
}

type Store = { name: string; url: () => string; s3?: () => S3TestServer["s3"] };
const stores: Store[] = [
  { name: "file://", url: () => pathToFileURL(fresh("repo")).href },
  { name: "s3://", url: () => s3.url(`repo-${++counter}`), s3: () => s3.s3 },
];

describe.each(stores)("snapshots on $name", (store) => {
  it("restores byte for byte: empty files and dirs, symlinks, big files, modes, times, UTF-8 names", async () => {
    const source = fresh("src");
    await makeWorkspace(source);
    const key = generateRepositoryKey();
    const repo = store.url();
    const base = { repo, key, s3: store.s3?.(), pool, ...SMALL };
    const created = await createDirectSnapshot({ ...base, source, workspace: "ws-7", tenant: "t-1", epoch: 4 });
    expect(created.files).toBe(35);
    expect(created.bytesNew).toBe(created.bytesTotal);
    expect(created.bytesStored).toBeLessThan(created.bytesTotal); // the CSV and sources compress

    const target = fresh("restored");
    const restored = await restoreDirectSnapshot({ ...base, snapshotId: created.id.slice(0, 10), target });
    expect(restored).toMatchObject({ files: 35, bytesWritten: created.bytesTotal, symlinks: 2 });
    expect(await describeTree(target)).toEqual(await describeTree(source));

    const repository = await Repository.open(openBlobStore(repo, { s3: store.s3?.() }), key);
    const [record] = await repository.listSnapshots();
    expect(record).toMatchObject({ id: created.id, workspace: "ws-7", tenant: "t-1", epoch: 4 });
    expect((await checkRepository(repository)).ok).toBe(true);
  });
});

/** `writer` as a ChunkSink, with `put` replaced: a test's hook into the moment chunks reach the repository. */
function sinkWithPut(writer: ChunkSink, put: ChunkSink["put"]): ChunkSink {
  return {
    missing: (ids) => writer.missing(ids),
    put,
    commit: (manifest, meta) => writer.commit(manifest, meta),
    abort: () => writer.abort(),
  };
}

/** A new file:// repository and a writer into it, for tests that play the sink themselves. */
async function freshWriter(key: Buffer) {
  const repo = pathToFileURL(fresh("repo")).href;
  const store = openBlobStore(repo);
  const { repository } = await Repository.openOrInit(store, key);
  return { repo, store, repository, writer: await repository.writer({ packSize: SMALL.packSize }) };
}

/**
 * Snapshots `source` into a repository of its own with a local index: what a second snapshot of it needs to be
 * taken into another repository with that index (the key, the options, the index), and the first's result.
 */
async function indexedInAnotherRepository(source: string) {
  const key = generateRepositoryKey();
  const meta = { workspace: "w", epoch: 0, tenant: "t" };
  // One segment for files up to 4 MiB, so no seam is stitched (stitching seals on this thread too).
  const options = { source, key, meta, pool, chunker: CHUNKER, segmentSize: 4 * 1024 * 1024 };
  const localIndex = { file: join(fresh("state"), "index.json"), scope: "one scope, two repositories" };
  const first = await freshWriter(key);
  const before = await createSnapshot({ ...options, sink: first.writer, localIndex });
  await first.store.close();
  return { key, options, localIndex, before };
}

/**
 * A sink onto `writer` (an empty repository's) whose first answer claims every chunk asked after, as a repository
 * pruned right after answering would: the workers leave the remembered chunks unsealed, and the truth comes
 * later. `beforeTruth` runs before its first true answer.
 */
function sinkClaimingAllAtFirst(
  writer: Awaited<ReturnType<typeof freshWriter>>["writer"],
  beforeTruth: () => Promise<void> = async () => {},
): ChunkSink {
  let calls = 0;
  return {
    missing: async (ids) => {
      if (++calls === 1) return [];
      if (calls === 2) await beforeTruth();
      return writer.missing(ids);
    },
    put: (chunks) => writer.put(chunks),
    commit: (manifest, meta) => writer.commit(manifest, meta),
    abort: () => writer.abort(),
  };
}

describe("snapshot engine", () => {
  it("keeps hard links as links: one inode restored, its bytes written once; a part restore writes the file", async () => {
    // A conda environment's files are hard links into its package cache: as copies, a restore doubled them.
    const source = fresh("src");
    await mkdir(join(source, "pkgs"), { recursive: true });
    await mkdir(join(source, "env", "lib"), { recursive: true });
    const lib = seeded(1_500_000, "libtorch"); // several chunks
    await writeFile(join(source, "pkgs", "libtorch.so"), lib);
    await link(join(source, "pkgs", "libtorch.so"), join(source, "env", "lib", "libtorch.so"));
    await link(join(source, "pkgs", "libtorch.so"), join(source, "env", "lib", "libtorch.so.2"));
    await writeFile(join(source, "pkgs", "small.py"), "print(1)\n"); // one chunk: a worker writes it
    await link(join(source, "pkgs", "small.py"), join(source, "env", "small.py"));
    await writeFile(join(source, "env", "alone.txt"), "not linked\n");
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    // Each file read once, whatever number of paths name it.
    expect(created).toMatchObject({ files: 6, filesRead: 3, bytesRead: lib.length + 9 + 11 });
    const { repository } = await Repository.openOrInit(openBlobStore(repo), key);
    const manifest = await repository.readManifest(await repository.findSnapshot(created.id));
    const links = manifest.entries.flatMap((e) => (e.type === "file" && e.linkOf ? [[e.path, e.linkOf]] : []));
    // Each names the first path of its file in the listing's order (depth first, by name).
    expect(links).toEqual([
      ["env/lib/libtorch.so.2", "env/lib/libtorch.so"],
      ["pkgs/libtorch.so", "env/lib/libtorch.so"],
      ["pkgs/small.py", "env/small.py"],
    ]);

    const target = fresh("restored");
    const restored = await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect(restored).toMatchObject({ files: 6, bytesWritten: lib.length + 9 + 11 });
    const inode = async (p: string) => (await lstat(join(target, p))).ino;
    expect(
      new Set([
        await inode("pkgs/libtorch.so"),
        await inode("env/lib/libtorch.so"),
        await inode("env/lib/libtorch.so.2"),
      ]).size,
    ).toBe(1);
    expect((await lstat(join(target, "pkgs/libtorch.so"))).nlink).toBe(3);
    expect(await inode("pkgs/small.py")).toBe(await inode("env/small.py"));
    expect(await describeTree(target)).toEqual(await describeTree(source));

    // Only the package cache: the files its entries are links to are not restored, so they are written whole.
    const part = fresh("restored-part");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target: part, pool, include: ["pkgs/"] });
    expect((await readFile(join(part, "pkgs", "libtorch.so"))).equals(lib)).toBe(true);
    expect((await lstat(join(part, "pkgs", "libtorch.so"))).nlink).toBe(1);
    expect(await readFile(join(part, "pkgs", "small.py"), "utf8")).toBe("print(1)\n");
  });

  it("reads a hard-linked file under its other paths when its first path is gone before it is read", async () => {
    const source = fresh("src");
    await mkdir(join(source, "pkgs"), { recursive: true });
    await mkdir(join(source, "env"), { recursive: true });
    const lib = seeded(700_000, "linked-gone");
    await writeFile(join(source, "env", "lib.so"), lib);
    await link(join(source, "env", "lib.so"), join(source, "pkgs", "lib.so"));
    await link(join(source, "env", "lib.so"), join(source, "pkgs", "lib.so.1"));
    const listing = await listSnapshotSource(source);
    await unlink(join(source, "env", "lib.so")); // listed first; the other two share its read

    const key = generateRepositoryKey();
    const { repo, repository, writer } = await freshWriter(key);
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    const created = await createSnapshot({
      source,
      listing: Promise.resolve(listing),
      sink: writer,
      key,
      meta,
      pool,
      ...SMALL,
    });
    expect(created.skipped.map((s) => s.path)).toEqual(["env/lib.so"]);
    expect(created.files).toBe(2);
    const manifest = await repository.readManifest(await repository.findSnapshot(created.id));
    expect(manifest.entries.flatMap((e) => (e.type === "file" ? [[e.path, e.linkOf]] : []))).toEqual([
      ["pkgs/lib.so", undefined],
      ["pkgs/lib.so.1", "pkgs/lib.so"],
    ]);
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect((await readFile(join(target, "pkgs", "lib.so"))).equals(lib)).toBe(true);
    expect((await lstat(join(target, "pkgs", "lib.so.1"))).ino).toBe((await lstat(join(target, "pkgs", "lib.so"))).ino);
  });

  // Two filesystems (link(2) across them is EXDEV): the temporary directory and /dev/shm, where they differ.
  const shm = existsSync("/dev/shm") && statSync("/dev/shm").dev !== statSync(tmpdir()).dev;
  it.runIf(shm)("copies a file it cannot hard link, with its mode and times, and never through a symlink", async () => {
    const dir = fresh("link-source");
    await mkdir(dir);
    const existing = join(dir, "weights.bin");
    await writeFile(existing, seeded(300_000, "weights"));
    await chmod(existing, 0o640);
    execFileSync("touch", ["-d", "@1700000000.123456", existing]); // with its microseconds (a Date keeps none)
    const elsewhere = await mkdtemp("/dev/shm/dumont-link-");
    try {
      await linkOrCopy(existing, join(elsewhere, "copy.bin"));
      const [from, to] = [await lstat(existing), await lstat(join(elsewhere, "copy.bin"), { bigint: true })];
      expect([Number(to.mode) & 0o7777, to.mtimeNs / 1000n, to.nlink, from.nlink]).toEqual([
        0o640,
        1700000000123456n,
        1n,
        1,
      ]);
      expect((await readFile(join(elsewhere, "copy.bin"))).equals(await readFile(existing))).toBe(true);
      await symlink(existing, join(dir, "swapped"));
      await expect(linkOrCopy(join(dir, "swapped"), join(elsewhere, "no.bin"))).rejects.toThrow(/ELOOP/);
      expect(existsSync(join(elsewhere, "no.bin"))).toBe(false);
    } finally {
      rmSync(elsewhere, { recursive: true, force: true });
    }
  });

  // chown takes root: CI here runs as root; elsewhere this is skipped.
  it.runIf(process.geteuid?.() === 0)(
    "records owners, gives them back when restoring as root (not setuid bits), and leaves them with owners: false",
    async () => {
      // A container's workspace belongs to its user (uid 1000 in many images), not to the agent that restores it.
      const source = fresh("src");
      await mkdir(join(source, "data"), { recursive: true });
      const files = {
        "data/big.bin": seeded(2 * 1024 * 1024, "big"), // several chunks: created and finished on this thread
        "data/small.txt": Buffer.from("one chunk\n"), // one chunk: a worker creates and finishes it
        "empty.txt": Buffer.alloc(0),
        "run.sh": Buffer.from("#!/bin/sh\n"),
      };
      for (const [path, data] of Object.entries(files)) await writeFile(join(source, path), data);
      await symlink("data/small.txt", join(source, "latest"));
      const owners: Record<string, [number, number]> = {
        data: [1000, 1000],
        "data/big.bin": [1000, 100],
        "data/small.txt": [1001, 1001],
        "empty.txt": [65534, 65534],
        latest: [1002, 1003],
        "run.sh": [1000, 1000],
      };
      for (const [path, [uid, gid]] of Object.entries(owners)) await lchown(join(source, path), uid, gid);
      await chmod(join(source, "run.sh"), 0o4755); // setuid: a restore drops it, owners or not
      // The workspace directory itself: the target becomes it (owner, mode, time), or its user could not write
      // a new file at its top.
      await lchown(source, 1000, 1000);
      await chmod(source, 0o750);
      await utimes(source, HOUR_AGO, HOUR_AGO);
      const key = generateRepositoryKey();
      const repo = pathToFileURL(fresh("repo")).href;
      const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
      const ownersOf = async (dir: string) => {
        const top = await lstat(dir);
        const out: Record<string, [number, number]> = { ".": [top.uid, top.gid] };
        for (const path of Object.keys(owners)) {
          const st = await lstat(join(dir, path));
          out[path] = [st.uid, st.gid];
        }
        return out;
      };

      const target = fresh("restored");
      await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
      expect(await ownersOf(target)).toEqual({ ".": [1000, 1000], ...owners });
      expect((await lstat(join(target, "run.sh"))).mode & 0o7777).toBe(0o755);
      const top = await lstat(target);
      expect(top.mode & 0o7777).toBe(0o750);
      expect(top.mtimeMs / 1000).toBeCloseTo(HOUR_AGO, 3);
      for (const [path, data] of Object.entries(files))
        expect((await readFile(join(target, path))).equals(data)).toBe(true);

      const asIs = fresh("restored-as-is");
      await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target: asIs, pool, owners: false });
      expect(Object.values(await ownersOf(asIs))).toEqual([[0, 0], ...Object.values(owners).map(() => [0, 0])]);
      expect((await lstat(asIs)).mode & 0o7777).toBe(0o750); // mode and time all the same
    },
  );

  it("restores runs of zeros as holes: a sparse file stays sparse, a file of zeros takes no blocks", async () => {
    const source = fresh("src");
    await mkdir(source);
    // 24 MiB with 1 MiB of data in the middle, the rest holes; a 100 KiB file of zeros written out (one chunk);
    // zeros inside a file between data; and a file of data only, as a control.
    const sparse = await open(join(source, "sparse.img"), "w");
    await sparse.write(seeded(1024 * 1024, "middle"), 0, 1024 * 1024, 12 * 1024 * 1024);
    await sparse.truncate(24 * 1024 * 1024);
    await sparse.close();
    await writeFile(join(source, "zeros.bin"), Buffer.alloc(100 * 1024));
    await writeFile(
      join(source, "mixed.bin"),
      Buffer.concat([seeded(2_000_000, "head"), Buffer.alloc(4_000_000), seeded(2_000_000, "tail")]),
    );
    await writeFile(join(source, "dense.bin"), seeded(3_000_000, "dense"));
    await utimesTree(source, HOUR_AGO);
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect(await describeTree(target)).toEqual(await describeTree(source));

    const allocated = async (name: string) => (await lstat(join(target, name))).blocks * 512;
    expect(await allocated("zeros.bin")).toBe(0);
    // Only the data and the chunks around it that are not all zeros take blocks.
    expect(await allocated("sparse.img")).toBeLessThan(2 * 1024 * 1024);
    expect(await allocated("mixed.bin")).toBeLessThan(6_000_000);
    expect(await allocated("dense.bin")).toBeGreaterThanOrEqual(3_000_000);

    // Zeros inside a chunk that holds data too: the default chunker finds no cut in zeros, so a 4-byte island
    // sits in a 4 MiB chunk. Each costs a 64 KiB block, not the chunk.
    const islands = fresh("src");
    await mkdir(islands);
    const img = await open(join(islands, "islands.img"), "w");
    await img.write(Buffer.from("data"), 0, 4, 1_000_000);
    await img.write(Buffer.from("more"), 0, 4, 20_000_000);
    await img.truncate(32 * 1024 * 1024);
    await img.close();
    const repo2 = pathToFileURL(fresh("repo")).href;
    const withIslands = await createDirectSnapshot({ repo: repo2, key, source: islands, pool });
    const target2 = fresh("restored");
    await restoreDirectSnapshot({ repo: repo2, key, snapshotId: withIslands.id, target: target2, pool });
    expect(await fileDigest(join(target2, "islands.img"))).toBe(await fileDigest(join(islands, "islands.img")));
    expect((await lstat(join(target2, "islands.img"))).blocks * 512).toBeLessThanOrEqual(2 * 64 * 1024);
  });

  it("cuts a file split across workers exactly as one pass would", async () => {
    const source = fresh("src");
    await mkdir(source);
    const content = seeded(3_000_000, "split");
    await writeFile(join(source, "big"), content);
    // Constant bytes cut at fixed sizes from wherever a chain starts, so a segment's look-back chain cannot
    // meet the file's own there: the seams in that half are stitched on the calling thread instead.
    const regular = Buffer.concat([Buffer.alloc(1_500_000, 7), seeded(1_500_000, "tail")]);
    await writeFile(join(source, "regular"), regular);
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL, segmentSize: 600 * 1024 });
    const repository = await Repository.open(openBlobStore(repo), key);
    const manifest = await repository.readManifest(await repository.findSnapshot(created.id));
    const lengthsOf = (path: string) => {
      const entry = manifest.entries.find((e) => e.path === path);
      return entry?.type === "file" && entry.lengths;
    };
    expect(lengthsOf("big")).toEqual(chunkLengths(content, CHUNKER));
    expect(lengthsOf("regular")).toEqual(chunkLengths(regular, CHUNKER));
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect((await readFile(join(target, "regular"))).equals(regular)).toBe(true);
  });

  it("asks the sink about each segment's chunks as soon as they are sealed, several questions at once", async () => {
    // Over the agent's stream every question is a round trip to the control plane. Asked in turn, one
    // segment after another, each round trip stopped the pipeline (20 ms of round trip added 30% to a 1 GiB
    // snapshot); asked as soon as a worker has the ids, they overlap.
    const source = fresh("src");
    await mkdir(source);
    const content = seeded(3_000_000, "offers");
    await writeFile(join(source, "big"), content);
    const key = generateRepositoryKey();
    const { repo, store, writer } = await freshWriter(key);
    let asking = 0;
    let most = 0;
    let chunksSent = 0;
    // A slow round trip: each question waits for its answer until a second question is out beside it, however
    // fast or slow the workers seal (a fixed 100 ms would miss the next question where sealing a segment takes
    // longer). Asked in turn, no second question comes while the first waits: after 10 s they are answered as
    // they come, one at a time, and `most` stays 1.
    let overlapped!: () => void;
    const together = new Promise<void>((resolve) => {
      overlapped = resolve;
    });
    const sink: ChunkSink = {
      missing: async (ids) => {
        most = Math.max(most, ++asking);
        if (asking >= 2) overlapped();
        const givingUp = setTimeout(overlapped, 10_000);
        await together;
        clearTimeout(givingUp);
        asking--;
        return writer.missing(ids);
      },
      put: async (chunks) => {
        chunksSent += chunks.length;
        await writer.put(chunks);
      },
      commit: (manifest, meta) => writer.commit(manifest, meta),
      abort: () => writer.abort(),
    };
    const created = await createSnapshot({
      source,
      sink,
      key,
      meta: { workspace: "w", epoch: 0, tenant: "t" },
      pool,
      chunker: CHUNKER,
      segmentSize: SMALL.segmentSize,
    });
    await store.close();
    expect(most).toBeGreaterThanOrEqual(2);
    // Every distinct chunk is sent once.
    const distinct = new Set<string>();
    let at = 0;
    for (const length of chunkLengths(content, CHUNKER)) {
      distinct.add(
        createHash("sha256")
          .update(content.subarray(at, at + length))
          .digest("hex"),
      );
      at += length;
    }
    expect(chunksSent).toBe(distinct.size);
    expect(created.chunksNew).toBe(distinct.size);
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect((await readFile(join(target, "big"))).equals(content)).toBe(true);
  });

  it("reads a file that changed while it was read once more, as it is now, rather than leave it out", async () => {
    // A checkpoint rewritten mid-snapshot: 8 MiB when listed, 1 MiB of new bytes once the sink has taken the
    // first chunks (the workers seal at most three segments of 512 KiB ahead, so the rest read the new file).
    const source = fresh("src");
    await mkdir(source);
    const file = join(source, "checkpoint.pt");
    await writeFile(file, seeded(8 * 1024 * 1024, "v1"));
    await utimes(file, HOUR_AGO, HOUR_AGO);
    await writeFile(join(source, "steady.txt"), "steady\n");
    const v2 = seeded(1024 * 1024, "v2");
    const key = generateRepositoryKey();
    const { repo, store, writer } = await freshWriter(key);
    let rewritten = false;
    const sink = sinkWithPut(writer, async (chunks) => {
      if (!rewritten) {
        rewritten = true;
        await writeFile(file, v2);
      }
      await writer.put(chunks);
    });
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    const created = await createSnapshot({ source, sink, key, meta, pool, ...SMALL });
    expect(rewritten).toBe(true);
    expect(created.skipped).toEqual([]);
    expect(created.files).toBe(2);
    expect(created.bytesRead).toBeGreaterThan(v2.length + 7);
    await store.close();
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect(await describeTree(target)).toEqual(await describeTree(source));
    expect((await readFile(join(target, "checkpoint.pt"))).equals(v2)).toBe(true);

    // One that shrinks by 2 MiB at the start of each read (the first chunks taken, as above) changes under
    // the second read too: left out, saying so. A new total to read in the progress marks the second read.
    let size = 8 * 1024 * 1024;
    await writeFile(file, seeded(size, "v3"));
    const { store: store2, writer: writer2 } = await freshWriter(key);
    let total = 0;
    let armed = true;
    const restless = await createSnapshot({
      source,
      sink: sinkWithPut(writer2, async (chunks) => {
        if (armed) {
          armed = false;
          size -= 2 * 1024 * 1024;
          await writeFile(file, seeded(size, `v${size}`));
        }
        await writer2.put(chunks);
      }),
      key,
      meta,
      pool,
      ...SMALL,
      onProgress: (p) => {
        if (total !== 0 && p.bytesToRead !== total) armed = true;
        total = p.bytesToRead;
      },
    });
    await store2.close();
    expect(size).toBe(4 * 1024 * 1024); // shrunk once in each read
    expect(restless.skipped).toEqual([{ path: "checkpoint.pt", reason: "it changed while it was being read, twice" }]);
    expect(restless.files).toBe(1);
  });

  it("reads a file appended to while it is read once more, whole as it is then, and the next snapshot again", async () => {
    // A log written by the running job: 8 MiB when listed, 1 MiB more once the sink has taken the first chunks.
    // Its size is not what was listed once its end is read: cut to the listed size it would be a prefix of what
    // the file holds, right for an append but not for a file rewritten in place (a checkpoint saved again), which
    // nothing here tells apart. So it is read once more, from a fresh listing, whose size is then kept to.
    const source = fresh("src");
    await mkdir(source);
    const file = join(source, "train.log");
    const listed = seeded(8 * 1024 * 1024, "log");
    await writeFile(file, listed);
    await utimes(file, HOUR_AGO, HOUR_AGO);
    const more = seeded(1024 * 1024, "more");
    const key = generateRepositoryKey();
    const { repo, store, repository, writer } = await freshWriter(key);
    const localIndex = { file: join(fresh("state"), "index.idx"), scope: "appended" };
    let appended = false;
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    const created = await createSnapshot({
      source,
      sink: sinkWithPut(writer, async (chunks) => {
        if (!appended) {
          appended = true;
          await appendFile(file, more);
        }
        await writer.put(chunks);
      }),
      key,
      meta,
      pool,
      localIndex,
      ...SMALL,
    });
    expect(appended).toBe(true);
    expect(created.skipped).toEqual([]);
    // What was read before a segment found its size changed (the rest stopped at open), then all of it.
    expect(created.bytesRead).toBeGreaterThan(listed.length + more.length);
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect((await readFile(join(target, "train.log"))).equals(Buffer.concat([listed, more]))).toBe(true);

    // Changed seconds ago (its mtime), it is not remembered in the local index: the next snapshot reads it.
    const sink = await repository.writer({ packSize: SMALL.packSize });
    const next = await createSnapshot({ source, sink, key, meta, pool, localIndex, ...SMALL });
    expect(next.filesRead).toBe(1);
    const again = fresh("restored-again");
    await restoreDirectSnapshot({ repo, key, snapshotId: next.id, target: again, pool });
    expect((await readFile(join(again, "train.log"))).equals(Buffer.concat([listed, more]))).toBe(true);
    await store.close();
  });

  it("seals `sealAhead` more segments ahead of a slow sink, and stores the same snapshot", async () => {
    const source = fresh("src");
    await mkdir(source);
    const content = seeded(4 * 1024 * 1024, "ahead"); // 8 segments of 512 KiB
    await writeFile(join(source, "big"), content);
    const key = generateRepositoryKey();
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    const { chunker, segmentSize } = SMALL;
    /**
     * How many segments the workers seal while the sink holds the first one's chunks (a stream held back by
     * its receiver), and the manifest's entries once it lets go. Once the sink holds those chunks and has been
     * offered every segment handed to the workers, nothing is left in flight: the pipeline waits on the sink
     * and hands out no more (one that did, beyond its window, has been counted by then). No timing decides it.
     */
    const run = async (sealAhead: number) => {
      const { store, repository, writer } = await freshWriter(key);
      const handedOut = vi.spyOn(pool, "sealSegments");
      let offers = 0;
      let atSink = false;
      let settled!: () => void;
      const quiet = new Promise<void>((resolve) => {
        settled = resolve;
      });
      const check = () => {
        if (atSink && offers === handedOut.mock.calls.length) settled();
      };
      let letGo!: () => void;
      const held = new Promise<void>((resolve) => {
        letGo = resolve;
      });
      const sink: ChunkSink = {
        missing: async (ids) => {
          const missing = await writer.missing(ids);
          offers++;
          check();
          return missing;
        },
        put: async (chunks) => {
          atSink = true;
          check();
          await held;
          await writer.put(chunks);
        },
        commit: (manifest, meta) => writer.commit(manifest, meta),
        abort: () => writer.abort(),
      };
      try {
        const creating = createSnapshot({ source, sink, key, meta, pool, chunker, segmentSize, sealAhead });
        await quiet;
        const sealed = offers;
        letGo();
        const created = await creating;
        const manifest = await repository.readManifest(await repository.findSnapshot(created.id));
        return { sealed, entries: manifest.entries };
      } finally {
        handedOut.mockRestore();
        await store.close();
      }
    };
    const usual = await run(0);
    const ahead = await run(2);
    expect(usual.sealed).toBe(pool.threads + 1);
    expect(ahead.sealed).toBe(pool.threads + 3);
    expect(ahead.entries).toEqual(usual.entries);
    const { store, writer } = await freshWriter(key);
    await expect(
      createSnapshot({ source, sink: writer, key, meta, pool, chunker, segmentSize, sealAhead: -1 }),
    ).rejects.toThrow(/sealAhead must be a whole number/);
    await store.close();
  });

  it("seals the manifest in parts a sink takes, in one for a sink that takes one, and restores either", async () => {
    const source = fresh("src");
    await makeWorkspace(source);
    const key = generateRepositoryKey();
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    /** A snapshot into a fresh repository through a sink taking at most `maxManifestParts`; what it committed. */
    const run = async (maxManifestParts: number) => {
      const { store, repository, writer } = await freshWriter(key);
      const committed: number[] = [];
      const sink: ChunkSink = {
        maxManifestParts,
        missing: (ids) => writer.missing(ids),
        put: (chunks) => writer.put(chunks),
        commit: (parts, meta) => {
          committed.push(parts.length);
          return writer.commit(parts, meta);
        },
        abort: () => writer.abort(),
      };
      try {
        const created = await createSnapshot({ source, sink, key, meta, pool, ...SMALL, manifestPartBytes: 1024 });
        const target = fresh("restored");
        await restoreSnapshot({ snapshotId: created.id, source: await repository.chunkSource(), key, target, pool });
        expect(await describeTree(target)).toEqual(await describeTree(source));
        return committed;
      } finally {
        await store.close();
      }
    };
    const [parts] = await run(64); // ~45 entries of ~100-250 bytes each, in parts of 1 KiB
    expect(parts).toBeGreaterThan(5);
    expect(await run(1)).toEqual([1]); // a control plane from before parts: one part, as before
    await expect(run(3)).rejects.toThrow(`has ${parts} parts; the repository takes at most 3`);
  });

  it("names the manifest parts its last snapshot stored instead of sealing and sending them again", async () => {
    const source = fresh("src");
    await mkdir(join(source, "d"), { recursive: true });
    for (let i = 0; i < 120; i++) await writeFile(join(source, "d", `file ${i}.txt`), `line ${i}\n`);
    await utimesTree(source, HOUR_AGO);
    const key = generateRepositoryKey();
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    const localIndex = { file: join(fresh("state"), "index.idx"), scope: "parts by id" };
    const { store, repository } = await freshWriter(key);
    /** A snapshot through a sink that takes parts by id when `byId`; what it committed, restored and compared. */
    const run = async (byId = true, asControlPlane = false) => {
      const writer = await repository.writer({ packSize: SMALL.packSize });
      const parts: ManifestPartBlob[] = [];
      const sink: ChunkSink = {
        missing: (ids) => writer.missing(ids),
        put: (chunks) => writer.put(chunks),
        ...(byId ? { missingManifestParts: (ids: string[]) => writer.missingManifestParts(ids) } : {}),
        commit: (committed, m, built) => {
          parts.push(...committed);
          // The control plane has no built manifest: it reads every part, named ones back from the store.
          return writer.commit(committed, m, asControlPlane ? undefined : built);
        },
        abort: () => writer.abort(),
      };
      const created = await createSnapshot({ source, sink, key, meta, pool, localIndex, manifestPartBytes: 1024 });
      const target = fresh("restored");
      await restoreSnapshot({ snapshotId: created.id, source: await repository.chunkSource(), key, target, pool });
      expect(await describeTree(target)).toEqual(await describeTree(source));
      const record = await repository.findSnapshot(created.id);
      return {
        created,
        record,
        named: parts.filter((p) => !Buffer.isBuffer(p)).length,
        sealed: parts.filter(Buffer.isBuffer).length,
        sealedBytes: parts.filter(Buffer.isBuffer).reduce((sum, p) => sum + p.length, 0),
      };
    };
    try {
      const first = await run();
      expect(first).toMatchObject({ named: 0 });
      expect(first.sealed).toBeGreaterThan(3);
      // Nothing changed: every part is the one stored, named by its id; nothing is stored.
      const unchanged = await run();
      expect(unchanged).toMatchObject({ named: first.sealed, sealed: 0 });
      expect(unchanged.created.bytesStored).toBe(0);
      expect(unchanged.record.manifests).toEqual(first.record.manifests);
      // One file changed: the part it falls in is sealed, the others named.
      await writeFile(join(source, "d", "file 60.txt"), "changed\n");
      await utimes(join(source, "d", "file 60.txt"), HOUR_AGO + 60, HOUR_AGO + 60);
      const changed = await run();
      expect(changed.sealed).toBeGreaterThanOrEqual(1);
      expect(changed.named).toBeGreaterThanOrEqual(first.sealed - 2);
      // A sink that takes sealed parts only gets them all, the same objects (sealed deterministically).
      const sealedOnly = await run(false);
      expect(sealedOnly).toMatchObject({ named: 0, sealed: changed.named + changed.sealed });
      expect(sealedOnly.record.manifests).toEqual(changed.record.manifests);
      expect(sealedOnly.created.bytesStored, "the store held every part: none written").toBe(0);
      // Parts gone from the repository since (a prune after a forget): sealed again, never named.
      for await (const blob of store.list("manifests/")) await store.delete(blob.key);
      const again = await run();
      expect(again).toMatchObject({ named: 0, sealed: changed.named + changed.sealed });
      // Every file's chunks are held: what it stored is those parts, written again (not "already stored").
      expect(again.created.bytesNew).toBe(0);
      expect(again.created.bytesStored).toBe(again.sealedBytes);
      // A part damaged in the store (cut short, a byte flipped) is not named: sealed and sent again, it replaces
      // the damaged copy, in direct mode (which does not read named parts back) and through the control plane.
      const total = again.sealed;
      for (const [i, asControlPlane] of [false, true].entries()) {
        const victim = `manifests/${again.record.manifests[i]}`;
        const bytes = await store.get(victim);
        if (i === 0) await store.put(victim, bytes.subarray(0, bytes.length - 10));
        else
          await store.put(
            victim,
            Buffer.concat([bytes.subarray(0, 40), Buffer.from([bytes[40] ^ 1]), bytes.subarray(41)]),
          );
        const healed = await run(true, asControlPlane);
        expect(healed).toMatchObject({ named: total - 1, sealed: 1 });
        expect(healed.created.bytesStored, "the damaged part, written over").toBe(bytes.length);
        expect(healed.record.manifests).toEqual(again.record.manifests);
        expect((await store.get(victim)).equals(bytes)).toBe(true);
      }
    } finally {
      await store.close();
    }
  });

  it("spreads a read buffer of many small files over the workers in parts, recycling it after the last", async () => {
    // 300 small files compress into one 8 MiB pack read: the restore cuts it into parts of at most 64 files
    // created by a worker, all reading the one shared buffer, which is recycled after the last part.
    const source = fresh("src");
    await mkdir(join(source, "many"), { recursive: true });
    for (let i = 0; i < 300; i++) {
      await writeFile(join(source, "many", `f${i}.py`), `def f${i}(x):\n    return x * ${i}\n`.repeat(200 + i));
    }
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool });
    // Watches every shared buffer: a buffer handed back (for the next pack read to overwrite) while a part
    // still reads from it is an early recycle. A whole batch's own recycle is done here, after its write, so
    // the same check covers it.
    const calls: { chunks: number; recycle: boolean | undefined }[] = [];
    const reading = new Map<ArrayBufferLike, number>();
    const early: number[] = [];
    const writeChunks = pool.writeChunks.bind(pool);
    const recycle = pool.recycle.bind(pool);
    pool.recycle = (buffer) => {
      if ((reading.get(buffer) ?? 0) > 0) early.push(reading.get(buffer)!);
      recycle(buffer);
    };
    pool.writeChunks = async (...args: Parameters<typeof pool.writeChunks>) => {
      const [batchKey, data, ranges, ids, lengths, destStart, dests, creates, options] = args;
      const whole = options?.recycle ?? true;
      calls.push({ chunks: lengths.length, recycle: options?.recycle });
      if (!pool.isShared(data.buffer)) return writeChunks(...args);
      reading.set(data.buffer, (reading.get(data.buffer) ?? 0) + 1);
      try {
        return await writeChunks(batchKey, data, ranges, ids, lengths, destStart, dests, creates, { recycle: false });
      } finally {
        reading.set(data.buffer, reading.get(data.buffer)! - 1);
        if (whole) pool.recycle(data.buffer);
      }
    };
    const target = fresh("restored");
    try {
      await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    } finally {
      pool.writeChunks = writeChunks;
      pool.recycle = recycle;
    }
    expect(await describeTree(target)).toEqual(await describeTree(source));
    const parts = calls.filter((c) => c.recycle === false);
    expect(parts.length).toBeGreaterThanOrEqual(5);
    expect(Math.max(...parts.map((c) => c.chunks))).toBeLessThanOrEqual(64);
    expect(parts.reduce((sum, c) => sum + c.chunks, 0)).toBe(300);
    expect(early, "parts still reading a buffer when it was recycled").toEqual([]);
  });

  it("fetches small files' chunks spread among the large files', in one window past 512 files", async () => {
    // Manifest order puts the two large files ("a-…") first and 600 one-chunk files ("z/…") after them.
    const source = fresh("src");
    await mkdir(join(source, "z"), { recursive: true });
    await writeFile(join(source, "a-weights.bin"), randomBytes(3 * 1024 * 1024));
    await writeFile(join(source, "a-log.txt"), "step 1 loss 0.5\n".repeat(100_000));
    for (let i = 0; i < 600; i++) await writeFile(join(source, "z", `f${i}.py`), `x = ${i}\n`.repeat(50 + i));
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });

    const repository = await Repository.open(openBlobStore(repo), key);
    const inner = await repository.chunkSource();
    const asked: Buffer[][] = [];
    const recording: ChunkSource = {
      readManifest: (id) => inner.readManifest(id),
      get: (ids) => {
        asked.push(ids);
        return inner.get(ids);
      },
    };
    const target = fresh("restored");
    await restoreSnapshot({ snapshotId: created.id, source: recording, key, target, pool });
    expect(await describeTree(target)).toEqual(await describeTree(source));

    expect(asked.length).toBe(1); // 602 files, two of them opened here: one window
    const manifest = await repository.readManifest(await repository.findSnapshot(created.id));
    const small = new Set<string>();
    for (const e of manifest.entries) if (e.type === "file" && e.path.startsWith("z/")) small.add(e.chunks[0]);
    const kinds = asked[0].map((id) => small.has(id.toString("hex")));
    expect(kinds.filter(Boolean).length).toBe(small.size);
    // Spread, not appended: each quarter of the order holds chunks of both kinds.
    for (let q = 0; q < 4; q++) {
      const quarter = kinds.slice((q * kinds.length) / 4, ((q + 1) * kinds.length) / 4);
      expect(quarter.includes(true) && quarter.includes(false), `quarter ${q + 1}`).toBe(true);
    }
  });

  it("reports what it left out, and its record lists the first 100 of them with the count", async () => {
    const source = fresh("src");
    await mkdir(join(source, "run"), { recursive: true });
    await writeFile(join(source, "kept.txt"), "kept\n");
    const fifos = Array.from({ length: 120 }, (_, i) => join(source, "run", `pipe-${String(i).padStart(3, "0")}`));
    execFileSync("mkfifo", fifos);
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    expect(created.files).toBe(1);
    expect(created.skipped).toHaveLength(120);
    expect(created.skipped[0]).toEqual({
      path: "run/pipe-000",
      reason: "a FIFO (named pipe): only regular files, directories and symlinks are kept",
    });
    const [record] = await (await Repository.open(openBlobStore(repo), key)).listSnapshots();
    expect(record.stats?.filesSkipped).toBe(120);
    expect(record.stats?.skipped).toEqual(created.skipped.slice(0, MAX_SKIPPED_LISTED));
    expect(MAX_SKIPPED_LISTED).toBe(100);

    await rm(join(source, "run"), { recursive: true });
    await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    const records = await (await Repository.open(openBlobStore(repo), key)).listSnapshots();
    expect(records.at(-1)?.stats).toMatchObject({ filesSkipped: 0 });
    expect(records.at(-1)?.stats?.skipped).toBeUndefined();
  });

  it("cuts a skipped entry's long reason to MAX_SKIPPED_REASON in its record, keeping it whole in the result", async () => {
    // A reason quoting a long path (an error where files are opened by their whole paths, without /proc), which
    // the control plane would refuse whole: put in the listing's own list of what it left out.
    const source = fresh("src");
    await mkdir(source);
    await writeFile(join(source, "kept.txt"), "kept\n");
    const listing = listSnapshotSource(source);
    const long = `cannot read: ENOENT: no such file or directory, open '${source}/${"d".repeat(2_900)}/gone.bin'`;
    (await listing).skipped.push({ path: "gone.bin", reason: long });
    const key = generateRepositoryKey();
    const { repository, store, writer } = await freshWriter(key);
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    const created = await createSnapshot({ source, listing, sink: writer, key, meta, pool, ...SMALL });
    await store.close();
    const [whole] = created.skipped;
    expect(whole).toEqual({ path: "gone.bin", reason: long });
    const [record] = await repository.listSnapshots();
    const [listed] = record.stats?.skipped ?? [];
    expect(listed.path).toBe(whole.path);
    expect(listed.reason).toHaveLength(MAX_SKIPPED_REASON);
    expect(listed.reason).toBe(`${whole.reason.slice(0, MAX_SKIPPED_REASON - 1)}…`);
  });

  it("works without worker threads too", async () => {
    const source = fresh("src");
    await makeWorkspace(source);
    const inline = new SnapshotWorkerPool({ threads: 0 });
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool: inline, ...SMALL });
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool: inline });
    expect(await describeTree(target)).toEqual(await describeTree(source));
  });

  it("reads a file rewritten in place at its size with its mtime set back: its ctime tells", async () => {
    const base = await workspaceWithIndex(1_000_000, 4, 10_000);
    const { source, key } = base;
    await createDirectSnapshot(base);
    const model = join(source, "model.bin");
    const before = await lstat(model);
    const rewritten = seeded(before.size, "rewritten in place");
    await writeFile(model, rewritten);
    await utimes(model, before.atime, before.mtime); // as `touch -d` or a copy keeping times would
    const second = await createDirectSnapshot(base);
    expect(second.filesRead).toBe(1);
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo: base.repo, key, snapshotId: second.id, target, pool });
    expect((await readFile(join(target, "model.bin"))).equals(rewritten)).toBe(true);
  });

  it("moves about 5% of the bytes after a 5% change, and does not re-read unchanged files", async () => {
    const base = await workspaceWithIndex(4_000_000, 40, 40_000);
    const { source, key } = base;
    const first = await createDirectSnapshot(base);
    const total = first.bytesTotal;

    // 5%: overwrite 150 KB in the middle of the model, append 60 KB to the log, edit 4 small files.
    const handle = await open(join(source, "model.bin"), "r+");
    await handle.write(seeded(150_000, "patch"), 0, 150_000, 2_000_000);
    await handle.close();
    await appendFile(join(source, "log.csv"), csv(3000, 99));
    for (const i of [1, 2, 3, 4]) await appendFile(join(source, "small", `f${i}.txt`), "edited\n");
    for (const name of ["model.bin", "log.csv", ...[1, 2, 3, 4].map((i) => `small/f${i}.txt`)]) {
      await utimes(join(source, name), HOUR_AGO + 60, HOUR_AGO + 60);
    }

    const second = await createDirectSnapshot(base);
    expect(second.filesRead).toBe(6);
    expect(second.filesUnchanged).toBe(36);
    expect(second.bytesRead).toBe(
      (await lstat(join(source, "model.bin"))).size +
        (await lstat(join(source, "log.csv"))).size +
        (await Promise.all([1, 2, 3, 4].map((i) => lstat(join(source, "small", `f${i}.txt`))))).reduce(
          (s, st) => s + st.size,
          0,
        ),
    );
    // The change is ~7% of the bytes; chunk granularity may add a chunk or two on each side.
    expect(second.bytesNew / total).toBeLessThan(0.2);
    expect(second.bytesNew).toBeGreaterThanOrEqual(150_000);

    const manifests = () => readdir(join(fileURLToPath(base.repo), "manifests"));
    const manifestsBefore = await manifests();
    const third = await createDirectSnapshot(base);
    expect(third.filesRead).toBe(0);
    expect(third.bytesNew).toBe(0);
    // Nothing changed: its manifest is the second's, sealed the same way, and stored once.
    expect(third.bytesStored).toBe(0);
    expect(await manifests()).toEqual(manifestsBefore);

    const target = fresh("restored");
    await restoreDirectSnapshot({ repo: base.repo, key, pool, snapshotId: second.id, target });
    expect(await describeTree(target)).toEqual(await describeTree(source));
  });

  it("reads unchanged files again when the repository no longer holds the chunks its local index remembers", async () => {
    const base = await workspaceWithIndex(700_000, 20);
    const { source, key } = base;
    const first = await createDirectSnapshot(base);
    // Every snapshot forgotten and its packs pruned: the local index still knows each file's chunks.
    await withDirectRepository(base, async (repository) => {
      await forgetSnapshots(repository, { ids: [first.id] });
      await pruneRepository(repository, {});
    });
    await writeFile(join(source, "small", "f0.txt"), "changed\n");
    await utimes(join(source, "small", "f0.txt"), HOUR_AGO, HOUR_AGO);

    const second = await createDirectSnapshot(base);
    expect(second.filesRead).toBe(21);
    expect(second.filesUnchanged).toBe(0);
    expect(second.bytesNew).toBe(second.bytesTotal);
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo: base.repo, key, pool, snapshotId: second.id, target });
    expect(await describeTree(target)).toEqual(await describeTree(source));
    expect((await createDirectSnapshot(base)).filesRead).toBe(0);
  });

  it("takes the same snapshot with small files read ahead by threads of their own as without", async () => {
    const source = fresh("src");
    for (let d = 0; d < 3; d++) {
      await mkdir(join(source, `d${d}`), { recursive: true });
      for (let f = 0; f < 150; f++) await writeFile(join(source, `d${d}`, `f${f}.txt`), `file ${d}/${f}\n`.repeat(f));
    }
    await writeFile(join(source, "big.bin"), seeded(3_000_000, "big"));
    const key = generateRepositoryKey();
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    const manifests: unknown[] = [];
    const handedOut = vi.spyOn(ReadAhead.prototype, "read");
    for (const readAhead of ["always", "never"] as const) {
      const { repository, store, writer } = await freshWriter(key);
      try {
        handedOut.mockClear();
        const result = await createSnapshot({ source, sink: writer, key, meta, pool, ...SMALL, readAhead });
        // "always": every small file went to the read-ahead threads (3 x 150, less the 3 empty ones, which
        // nothing reads), and the 3 MB file did not.
        const files = handedOut.mock.calls.reduce((n, [, batch]) => n + batch.length, 0);
        expect(files).toBe(readAhead === "always" ? 447 : 0);
        expect(result.files).toBe(451);
        manifests.push(await repository.readManifest(await repository.findSnapshot(result.id)));
        const target = fresh("restored");
        await restoreSnapshot({ snapshotId: result.id, source: await repository.chunkSource(), key, target, pool });
        expect(await describeTree(target)).toEqual(await describeTree(source));
      } finally {
        await store.close();
      }
    }
    handedOut.mockRestore();
    expect(manifests[0]).toEqual(manifests[1]);
  });

  it("dates a snapshot from the start of its listing, which direct mode runs while the repository opens", async () => {
    const source = fresh("src");
    await mkdir(source);
    await writeFile(join(source, "fresh.txt"), "written just before the listing");
    const key = generateRepositoryKey();
    const listedAt = Date.now();
    const listing = listSnapshotSource(source);
    await listing;
    // Longer than the racy window (2 s here) passes before the snapshot itself starts.
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    const { repository, store, writer } = await freshWriter(key);
    const localIndex = { file: join(fresh("state"), "index.idx"), scope: "dated" };
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    try {
      const first = await createSnapshot({
        source,
        listing,
        sink: writer,
        key,
        meta,
        pool,
        localIndex,
        racyWindowMs: 2_000,
      });
      const time = Date.parse((await repository.findSnapshot(first.id)).time);
      expect(time).toBeGreaterThanOrEqual(listedAt - 1);
      expect(time).toBeLessThan(listedAt + 1_000);
      // The file changed within 2 s of the listing's start, so the local index does not vouch for it: dated from
      // the call instead, it would, and a change made right after its lstat could go unseen.
      const second = await createSnapshot({ source, sink: await repository.writer(), key, meta, pool, localIndex });
      expect(second.filesRead).toBe(1);
    } finally {
      await store.close();
    }
  });

  it("commits nothing once stopped, however far the reads got (every segment already handed to a worker)", async () => {
    // A stop after the last task was handed out went unseen: the steps in hand delivered their chunks and the
    // snapshot committed, while direct mode's Ctrl-C had said "stopping" (helper-74).
    const source = fresh("src");
    await mkdir(source);
    for (let i = 0; i < 12; i++) await writeFile(join(source, `f${i}`), randomBytes(2 * 1024 * 1024));
    const stop = new AbortController();
    let puts = 0;
    let commits = 0;
    const sink: ChunkSink = {
      missing: async (ids: Buffer[]) => {
        stop.abort(new Error("stopped by the test"));
        return ids;
      },
      put: async () => {
        if (stop.signal.aborted) puts++;
        await new Promise((resolve) => setTimeout(resolve, 300));
      },
      commit: async () => {
        commits++;
        return "s".repeat(64);
      },
      abort: async () => {},
    } as unknown as ChunkSink;
    const snapshot = createSnapshot({
      source,
      sink,
      key: generateRepositoryKey(),
      meta: { workspace: "w", epoch: 0, tenant: "t" },
      pool,
      chunker: { minSize: 65_536, avgSize: 262_144, maxSize: 1024 * 1024 },
      segmentSize: 2 * 1024 * 1024,
      readAhead: "never",
      sealAhead: 2,
      signal: stop.signal,
    });
    await expect(snapshot).rejects.toThrow("stopped by the test");
    expect(commits).toBe(0);
    // The step being handled when the stop came may finish its put; no later one puts.
    expect(puts).toBeLessThanOrEqual(1);
  });

  it("remembers no file written within the minute, nor any on tmpfs: a write through a mapping may not move its times", async () => {
    // Writes to a mapped page still dirty change no time until it is written back (~35 s by default), and on tmpfs
    // never: a file remembered 3 s after such a write kept its old chunks in every later snapshot (helper-73).
    const sources = [fresh("src")];
    if ((await statfs("/dev/shm").catch(() => undefined))?.type === 0x01021994) {
      const shm = await mkdtemp(join("/dev/shm", "dumont-snapshot-"));
      onTestFinished(() => rm(shm, { recursive: true, force: true }));
      sources.push(shm);
    }
    const key = generateRepositoryKey();
    const { repository, store, writer } = await freshWriter(key);
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    try {
      let sink = writer;
      for (const [n, source] of sources.entries()) {
        await mkdir(source, { recursive: true });
        for (const [name, age] of [
          ["recent", 10],
          ["old", 3600],
        ] as const) {
          await writeFile(join(source, name), `${name} bytes`);
          const at = Date.now() / 1000 - age;
          await utimes(join(source, name), at, at);
        }
        const localIndex = { file: join(fresh("state"), "index.idx"), scope: `mapped-${n}` };
        await createSnapshot({ source, sink, key, meta, pool, localIndex });
        const second = await createSnapshot({ source, sink: await repository.writer(), key, meta, pool, localIndex });
        // Written 10 s before: read again (a 2 s window vouched for it). On tmpfs the old one is read again too.
        expect(second.filesRead, source).toBe(n === 0 ? 1 : 2);
        sink = await repository.writer();
      }
      // A tmpfs mounted inside the source (a memory-backed volume under the workspace), where mounting is allowed:
      // judged by its own filesystem, not the source's (helper-75).
      const source = fresh("src");
      const shm = join(source, "shm");
      await mkdir(shm, { recursive: true });
      const mounted = (() => {
        try {
          execFileSync("mount", ["-t", "tmpfs", "dumont-test", shm], { stdio: "ignore" });
          return true;
        } catch {
          return false;
        }
      })();
      if (mounted) {
        try {
          for (const file of [join(source, "disk.bin"), join(shm, "mapped.bin")]) {
            await writeFile(file, "old bytes");
            await utimes(file, HOUR_AGO, HOUR_AGO);
          }
          const localIndex = { file: join(fresh("state"), "index.idx"), scope: "mounted-tmpfs" };
          await createSnapshot({ source, sink, key, meta, pool, localIndex });
          const second = await createSnapshot({ source, sink: await repository.writer(), key, meta, pool, localIndex });
          expect(second.filesRead).toBe(1); // the one on tmpfs; the one on disk is vouched for
        } finally {
          execFileSync("umount", [shm]);
        }
      }
    } finally {
      await store.close();
    }
  });

  it("seals a chunk the workers left unsealed from its file when the repository lacks it after all", async () => {
    const source = fresh("src");
    await mkdir(source);
    await writeFile(join(source, "data"), seeded(2_000_000, "held"));
    await utimesTree(source, HOUR_AGO);
    // One segment, so no seam is stitched (it would blur the count of chunks sealed on this thread).
    const { key, options, localIndex, before } = await indexedInAnotherRepository(source);

    // A change in the middle: the file is read again, and most of its chunks are the ones stored before.
    const handle = await open(join(source, "data"), "r+");
    await handle.write(seeded(100_000, "patch"), 0, 100_000, 1_000_000);
    await handle.close();
    await utimes(join(source, "data"), HOUR_AGO + 60, HOUR_AGO + 60);
    const content = await readFile(join(source, "data"));

    // The second repository is empty, but its first answer claims every remembered chunk.
    const second = await freshWriter(key);
    const sink = sinkClaimingAllAtFirst(second.writer);
    const sealOne = vi.spyOn(chunkCodec, "sealChunk");
    let sealedHere: number;
    const after = await createSnapshot({ ...options, sink, localIndex }).finally(() => {
      sealedHere = sealOne.mock.calls.length;
      sealOne.mockRestore();
    });
    await second.store.close();
    // Every chunk the patch left alone was sealed on this thread, from the file; the rest by the workers.
    expect(sealedHere!).toBeGreaterThan(before.chunksNew / 2);
    expect(sealedHere!).toBeLessThan(after.chunksNew);
    expect(after.bytesNew).toBe(content.length);
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo: second.repo, key, snapshotId: after.id, target, pool });
    expect((await readFile(join(target, "data"))).equals(content)).toBe(true);
  });

  it("sends a chunk that two files of one batch hold once, and counts it once", async () => {
    const source = fresh("src");
    await mkdir(source);
    const same = seeded(10_000, "twice");
    await writeFile(join(source, "a"), same);
    await writeFile(join(source, "b"), same);
    const key = generateRepositoryKey();
    const { writer, store } = await freshWriter(key);
    const put = vi.spyOn(writer, "put");
    const created = await createSnapshot({
      source,
      key,
      meta: { workspace: "w", epoch: 0, tenant: "t" },
      pool,
      sink: writer,
    });
    await store.close();
    expect(put.mock.calls.flatMap(([chunks]) => chunks.map((c) => c.id.toString("hex")))).toEqual([
      createHash("sha256").update(same).digest("hex"),
    ]);
    expect(created).toMatchObject({ chunksNew: 1, bytesNew: 10_000 });
  });

  it.each([
    ["in the same batch", ["a", "b"]],
    ["in a later batch, past a file split into segments", ["a", "m-big", "z"]],
  ])(
    "delivers a chunk it could not seal from a file that changed from another file holding it (%s)",
    async (_, names) => {
      const source = fresh("src");
      await mkdir(source);
      const shared = seeded(10_000, "shared");
      const [changing, ...others] = names;
      for (const name of names)
        await writeFile(join(source, name), name === "m-big" ? seeded(9_000_000, "big") : shared);
      await utimesTree(source, HOUR_AGO);
      const { key, options, localIndex } = await indexedInAnotherRepository(source);
      // Read again (new times), with the local index naming their chunks.
      for (const name of names) await utimes(join(source, name), HOUR_AGO + 60, HOUR_AGO + 60);

      // An empty repository whose first answer claims every remembered chunk, so the workers leave them
      // unsealed; before its second, the first file holding the shared chunk is rewritten, so sealing that
      // chunk from it fails. The other files still hold it.
      const second = await freshWriter(key);
      const rewritten = seeded(10_000, "rewritten");
      const sink = sinkClaimingAllAtFirst(second.writer, () => writeFile(join(source, changing), rewritten));
      const after = await createSnapshot({ ...options, sink, localIndex });
      await second.store.close();
      const target = fresh("restored");
      await restoreDirectSnapshot({ repo: second.repo, key, snapshotId: after.id, target, pool });
      const digest = (b: Buffer) => createHash("sha256").update(b).digest("hex");
      for (const name of others) {
        expect(digest(await readFile(join(target, name))), name).toBe(digest(await readFile(join(source, name))));
      }
      // The changed file was read once more, as any file that changes while it is read.
      expect(digest(await readFile(join(target, changing)))).toBe(digest(rewritten));
    },
  );

  it("holds a shared lock while it restores in direct mode, so a prune elsewhere waits (unless --no-lock)", async () => {
    const { key, repo, created, repository } = await snapshotOfWorkspace();
    const pruneDuring = async (lock: boolean) => {
      let prune: Promise<unknown> | undefined;
      // The prune starts at the restore's first write, and the restore writes nothing until it has settled: the
      // restore is under way (its lock taken, or not) for the whole prune, however quick this machine is.
      const write = pool.writeChunks.bind(pool);
      const held = vi.spyOn(pool, "writeChunks").mockImplementation(async (...args) => {
        prune ??= pruneRepository(repository).catch((err: unknown) => err);
        await prune;
        return write(...args);
      });
      try {
        await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target: fresh("restored"), pool, lock });
      } finally {
        held.mockRestore();
      }
      expect(prune, "the restore wrote nothing, so no prune ran during it").toBeDefined();
      return prune;
    };
    expect(isRepositoryError(await pruneDuring(true), "locked")).toBe(true);
    expect(await pruneDuring(false)).toMatchObject({ packsDeleted: 0 });
  });

  it("says how far the listing has got after each directory (progress while a large tree is walked)", async () => {
    const source = fresh("src");
    await makeWorkspace(source);
    const seen: number[] = [];
    const listing = await listSnapshotSource(source, undefined, (entries) => seen.push(entries));
    const dirs = listing.entries.filter((e) => e.type === "dir").length;
    expect(seen).toHaveLength(dirs + 1); // the root, then each directory
    expect(seen.every((n, i) => i === 0 || n >= seen[i - 1])).toBe(true);
  });

  it("fails a wrong key with one clear sentence", async () => {
    const source = fresh("src");
    await mkdir(source);
    await writeFile(join(source, "a"), "a");
    const repo = pathToFileURL(fresh("repo")).href;
    await createDirectSnapshot({ repo, key: generateRepositoryKey(), source, pool });
    await expect(createDirectSnapshot({ repo, key: generateRepositoryKey(), source, pool })).rejects.toThrow(
      /^the key does not open the repository at file:\/\/.*: it was created with a different key$/,
    );
  });

  it("reports a corrupted pack on restore, naming the file, and restores everything else", async () => {
    const { source, key, repo, created, store, repository } = await snapshotOfWorkspace();
    const manifest = await repository.readManifest(await repository.findSnapshot(created.id));
    const csvEntry = manifest.entries.find((e) => e.path === "data/table.csv");
    if (csvEntry?.type !== "file") throw new Error("no csv in manifest");
    const location = (await repository.loadIndex()).get(csvEntry.chunks[0])!;
    const pack = await store.get(packKey(location.packId));
    pack[location.offset + 40] ^= 0x55;
    await store.put(packKey(location.packId), pack);

    const target = fresh("restored");
    const failure = await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool }).catch((e) => e);
    expect(failure).toBeInstanceOf(RestoreDamagedError);
    expect(failure.message).toMatch(/"data\/table\.csv"/);
    expect(failure.message).toContain(location.packId.slice(0, 12));
    expect(failure.message).toContain("no other pack holds a copy of it");
    expect((failure as RestoreDamagedError).damaged.map((d) => d.path)).toEqual(["data/table.csv"]);
    expect(existsSync(join(target, "data", "table.csv"))).toBe(false);
    expect((failure as RestoreDamagedError).result.flushSeconds).toBeGreaterThan(0); // what it kept is on disk
    const expected = (await describeTree(source)).filter((line) => !line.startsWith("data/table.csv "));
    const got = (await describeTree(target)).filter((line) => !line.startsWith("data "));
    expect(got).toEqual(expected.filter((line) => !line.startsWith("data ")));

    const report = await checkRepository(repository);
    expect(report.ok).toBe(false);
    expect(report.problems.some((p) => p.files?.some((f) => f.path === "data/table.csv"))).toBe(true);
  });

  /**
   * A snapshot of makeWorkspace with two chunks held twice: one of data/table.csv, a file of many chunks (written
   * through this thread's handle), and the only one of a one-chunk file (created by a worker), each copied into a
   * pack of their own as a snapshot racing this one would have stored them. `index` is one load of the index: which
   * copy a load finds first depends on the order it read the index objects in, so the restores below use it.
   */
  async function chunksHeldTwice() {
    const snapshot = await snapshotOfWorkspace();
    const { created, store, repository } = snapshot;
    const manifest = await repository.readManifest(await repository.findSnapshot(created.id));
    const chunksOf = (path: string): string[] => {
      const entry = manifest.entries.find((e) => e.path === path);
      if (entry?.type !== "file") throw new Error(`no file ${path} in the manifest`);
      return entry.chunks;
    };
    const csvChunks = chunksOf("data/table.csv");
    const csvChunk = csvChunks[1];
    const pyFile = "src/pkg ü/módulo 3.py";
    const [pyChunk] = chunksOf(pyFile);
    const before = await repository.loadIndex();
    const copyOf = async (hex: string) => {
      const at = before.get(hex)!;
      const pack = await store.get(packKey(at.packId));
      return {
        id: Buffer.from(hex, "hex"),
        blob: pack.subarray(at.offset, at.offset + at.length),
        plainLength: at.plainLength,
      };
    };
    const writer = await repository.writer({ index: new RepositoryIndex() });
    await writer.put([await copyOf(csvChunk), await copyOf(pyChunk)]);
    await writer.flush();
    await writer.abort();
    const index = await repository.loadIndex();
    /** Flips a byte of `hex` in the pack of its copy number `copy` (0: the one `index` finds first); that pack. */
    const damageCopy = async (hex: string, copy: number): Promise<string> => {
      const at = index.locations(hex)[copy];
      const pack = await store.get(packKey(at.packId));
      pack[at.offset + Math.floor(at.length / 2)] ^= 0x55;
      await store.put(packKey(at.packId), pack);
      return at.packId;
    };
    /** Restores the snapshot into `target`, from `source` (default: the repository, by `index`). */
    const restoreInto = (target: string, source: ChunkSource = new RepositoryChunkSource(repository, index)) =>
      restoreSnapshot({ snapshotId: created.id, source, key: snapshot.key, target, pool });
    return { ...snapshot, csvChunks, csvChunk, pyChunk, pyFile, index, damageCopy, restoreInto };
  }

  it("restores a chunk from another pack when the copy found first is damaged, and names a file only when all are", async () => {
    const { source, created, csvChunks, csvChunk, pyChunk, pyFile, damageCopy, restoreInto } = await chunksHeldTwice();
    const csvFirst = await damageCopy(csvChunk, 0);
    const pyFirst = await damageCopy(pyChunk, 0);

    // Each damaged chunk is read again from its other copy: the restore is whole, and says what it met.
    const target = fresh("restored");
    const restored = await restoreInto(target);
    expect(restored.bytesWritten).toBe(created.bytesRead);
    expect(await describeTree(target)).toEqual(await describeTree(source));
    const firstPacks = [...new Set([csvFirst, pyFirst])].sort().map((p) => p.slice(0, 12));
    expect(restored.warnings).toEqual([
      `2 chunks did not verify where first read (pack${firstPacks.length === 1 ? "" : "s"} ${firstPacks.join(", ")}) ` +
        "and were restored from another copy: the repository holds damaged data; `snapshot check` finds it and " +
        "`snapshot repair-packs` mends it",
    ]);

    // With the py chunk's other copy damaged too, its file is named, with the first copy's fault and pack. So is
    // the csv, for a chunk of it held once: its chunk read from another copy is then written nowhere, and not said.
    await damageCopy(pyChunk, 1);
    const csvHeldOnce = await damageCopy(csvChunks[2], 0);
    const again = fresh("restored-again");
    const failure = await restoreInto(again).catch((e) => e);
    expect(failure).toBeInstanceOf(RestoreDamagedError);
    const { damaged, result } = failure as RestoreDamagedError;
    expect(damaged.map((d) => [d.path, d.chunk, d.pack]).sort()).toEqual(
      [
        ["data/table.csv", csvChunks[2], csvHeldOnce],
        [pyFile, pyChunk, pyFirst],
      ].sort(),
    );
    expect(damaged.find((d) => d.path === pyFile)?.reason).toMatch(/; 1 other copy failed too$/);
    expect(damaged.find((d) => d.path !== pyFile)?.reason).toMatch(/; no other pack holds a copy of it$/);
    const expected = (await describeTree(source)).filter(
      (line) => !line.startsWith(`${pyFile} `) && !line.startsWith("data/table.csv "),
    );
    expect((await describeTree(again)).filter((line) => !line.startsWith("data "))).toEqual(
      expected.filter((line) => !line.startsWith("data ")),
    );
    expect(result.warnings).toBeUndefined();
  });

  it("reads another copy of a chunk its source could not read, and gives up after MAX_COPY_ROUNDS more", async () => {
    const { source, repository, index, pyChunk, pyFile, restoreInto } = await chunksHeldTwice();
    /**
     * A source over the repository that fails the py chunk as a pack it could not read, naming another pack each
     * time: on the first request only (the real source then gives its other copy), or on every one, never asking
     * the real source for other copies (as a store of endless bad copies would). `calls`: whether each asked so.
     */
    const failing = (always: boolean) => {
      const real = new RepositoryChunkSource(repository, index);
      const calls: boolean[] = [];
      const failed = (id: Buffer, n: number): FetchedChunk => ({
        id,
        pack: `pack-${n}`,
        error: `pack pack-${n} could not be read: EIO`,
      });
      const wrapped: ChunkSource = {
        otherCopies: true,
        readManifest: (id) => real.readManifest(id),
        async *get(ids, options) {
          calls.push(options?.otherCopy === true);
          const n = calls.length;
          if (always && options?.otherCopy) {
            for (const id of ids) yield failed(id, n);
            return;
          }
          for await (const c of real.get(ids, options)) {
            yield c.id.toString("hex") === pyChunk && (always || n === 1) ? failed(c.id, n) : c;
          }
        },
      };
      return { wrapped, calls };
    };

    const once = failing(false);
    const target = fresh("read-again");
    const restored = await restoreInto(target, once.wrapped);
    expect(await describeTree(target)).toEqual(await describeTree(source));
    expect(once.calls).toEqual([false, true]);
    expect(restored.warnings?.[0]).toMatch(/^1 chunk did not verify where first read \(pack pack-1\) and was restored/);

    const always = failing(true);
    const failure = await restoreInto(fresh("given-up"), always.wrapped).catch((e) => e);
    expect(failure).toBeInstanceOf(RestoreDamagedError);
    expect(always.calls).toEqual([false, ...Array(MAX_COPY_ROUNDS).fill(true)]);
    expect((failure as RestoreDamagedError).damaged).toEqual([
      {
        path: pyFile,
        chunk: pyChunk,
        pack: "pack-1",
        reason: `pack pack-1 could not be read: EIO; ${MAX_COPY_ROUNDS} other copies failed too`,
      },
    ]);
    expect((failure as RestoreDamagedError).result.warnings).toBeUndefined();
  });

  it("names the files of a chunk in no index at once, without asking for another copy", async () => {
    const { source, repository, created, key } = await snapshotOfWorkspace();
    const manifest = await repository.readManifest(await repository.findSnapshot(created.id));
    const csv = manifest.entries.find((e) => e.path === "data/table.csv");
    if (csv?.type !== "file") throw new Error("no csv in manifest");
    // An index without the pack of one of the csv's chunks (its index object lost): those chunks are in no index.
    const index = await repository.loadIndex();
    const lostPack = index.packIdOf(csv.chunks[0])!;
    index.removePacks([lostPack]);
    const real = new RepositoryChunkSource(repository, index);
    const otherCopy: boolean[] = [];
    const counting: ChunkSource = {
      otherCopies: true,
      readManifest: (id) => real.readManifest(id),
      get(ids, options) {
        otherCopy.push(options?.otherCopy === true);
        return real.get(ids, options);
      },
    };
    const target = fresh("not-indexed");
    const failure = await restoreSnapshot({ snapshotId: created.id, source: counting, key, target, pool }).catch(
      (e) => e,
    );
    expect(failure).toBeInstanceOf(RestoreDamagedError);
    const { damaged } = failure as RestoreDamagedError;
    expect(damaged.map((d) => d.path)).toContain("data/table.csv");
    expect(new Set(damaged.map((d) => d.reason))).toEqual(new Set([NOT_INDEXED]));
    expect(otherCopy.every((asked) => !asked)).toBe(true);
    // Everything else is restored: all but the damaged files and the directories holding them (their times).
    const left = damaged.flatMap((d) => [
      d.path,
      ...d.path
        .split("/")
        .slice(0, -1)
        .map((_, i, dirs) => dirs.slice(0, i + 1).join("/")),
    ]);
    const rest = (lines: string[]) => lines.filter((line) => !left.some((path) => line.startsWith(`${path} `)));
    expect(rest(await describeTree(target))).toEqual(rest(await describeTree(source)));
  });

  it("fails a restore whole, its target emptied, when the store cannot be read, rather than call data damaged", async () => {
    const { key, created, store } = await snapshotOfWorkspace();
    // A store that stops answering (S3 unreachable past its retries) once the restore has begun reading packs.
    let reads = 0;
    const unreachable: BlobStore = Object.create(store, {
      getRange: {
        value: (k: string, offset: number, length: number, into?: Buffer) =>
          ++reads > 1
            ? Promise.reject(new Error(`S3 request for ${k} failed: connect ECONNREFUSED 127.0.0.1:9000`))
            : store.getRange(k, offset, length, into),
      },
    });
    const repository = await Repository.open(unreachable, key);
    const target = fresh("restored");
    const restore = restoreSnapshot({
      snapshotId: created.id,
      source: await repository.chunkSource(),
      key,
      target,
      pool,
    }).catch((e: unknown) => e);
    const failure = await restore;
    expect(failure).not.toBeInstanceOf(RestoreDamagedError);
    expect((failure as Error).message).toMatch(/connect ECONNREFUSED/);
    expect(reads).toBeGreaterThan(1);
    expect(await readdir(target)).toEqual([]);
  });

  it("fails a restore on a damaged index object before it writes anything", async () => {
    // The index loads while the manifest is read (RepositoryChunkSource): its failure must still come first.
    const { key, repo, created, store, repository } = await snapshotOfWorkspace();
    const packId = [...(await repository.loadIndex()).packs.keys()][0];
    const sealed = await store.get(indexKey(packId));
    sealed[sealed.length - 1] ^= 0x01;
    await store.put(indexKey(packId), sealed);

    const target = fresh("restored");
    await expect(restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool })).rejects.toThrow(
      indexKey(packId),
    );
    expect(existsSync(target)).toBe(false);
  });

  it("leaves no snapshot after a crash mid-way, and the next one reuses the packs already written", async () => {
    const source = fresh("src");
    await mkdir(source);
    for (let i = 0; i < 6; i++) await writeFile(join(source, `part${i}.bin`), seeded(400_000, `crash${i}`));
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    let packs = 0;
    const crashing = createDirectSnapshot({
      repo,
      key,
      source,
      pool,
      ...SMALL,
      onPackWritten: () => {
        if (++packs === 3) throw new Error("simulated crash");
      },
    });
    await expect(crashing).rejects.toThrow("simulated crash");
    const repository = await Repository.open(openBlobStore(repo), key);
    expect(await repository.listSnapshots()).toEqual([]);

    const next = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    expect(next.bytesNew).toBeLessThan(next.bytesTotal - 3 * 200_000);
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([next.id]);
    expect((await checkRepository(repository)).ok).toBe(true);
  });

  it("survives kill -9 of the process taking the snapshot", async () => {
    const engineUrl = builtSnapshotModule("index");
    const source = fresh("src");
    await mkdir(source);
    for (let i = 0; i < 6; i++) await writeFile(join(source, `part${i}.bin`), seeded(400_000, `kill${i}`));
    const key = generateRepositoryKey();
    const repo = pathToFileURL(fresh("repo")).href;
    const script = `
      const { createDirectSnapshot } = await import(${JSON.stringify(engineUrl)});
      let packs = 0;
      await createDirectSnapshot({
        repo: ${JSON.stringify(repo)}, key: Buffer.from(${JSON.stringify(key.toString("hex"))}, "hex"),
        source: ${JSON.stringify(source)}, chunker: ${JSON.stringify(CHUNKER)}, packSize: 256 * 1024, segmentSize: 512 * 1024,
        onPackWritten: async () => { if (++packs === 2) { process.stdout.write("two packs\\n"); await new Promise((r) => setTimeout(r, 60000)); } },
      });`;
    await killOnceItSays(script, "two packs");

    const repository = await Repository.open(openBlobStore(repo), key);
    expect(await repository.listSnapshots()).toEqual([]);
    expect((await repository.loadIndex()).packs.size).toBeGreaterThanOrEqual(2);
    const next = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    expect(next.bytesNew).toBeLessThan(next.bytesTotal);
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([next.id]);
    expect((await checkRepository(repository)).ok).toBe(true);
  });

  /**
   * A restore of `snapshotId` into `target` in a child process, stopped for good once it has written some of the
   * files (its thread blocked, as a process stuck or killed mid-write would be) and killed there: its pid.
   */
  const restoreKilledPartWay = (
    engineUrl: string,
    options: { repo: string; key: Buffer },
    snapshotId: string,
    target: string,
  ) =>
    killOnceItSays(
      `
      const { restoreDirectSnapshot } = await import(${JSON.stringify(engineUrl)});
      await restoreDirectSnapshot({
        repo: ${JSON.stringify(options.repo)}, key: Buffer.from(${JSON.stringify(options.key.toString("hex"))}, "hex"),
        snapshotId: ${JSON.stringify(snapshotId)}, target: ${JSON.stringify(target)},
        onProgress: (p) => {
          if (p.bytesWritten === 0 || p.bytesWritten === p.bytesTotal) return;
          process.stdout.write("part written\\n");
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000);
        },
      });`,
      "part written",
    );

  it("restores again into the target of a restore killed with kill -9, clearing what it left half-written", async () => {
    const engineUrl = builtSnapshotModule("index");
    const options = await workspaceWithIndex(24 * 1024 * 1024, 40);
    const created = await createDirectSnapshot(options);
    const target = fresh("target");
    const killed = await restoreKilledPartWay(engineUrl, options, created.id, target);
    const left = await readdir(target);
    expect(left).toContain(RESTORE_MARKER);
    expect(JSON.parse(await readFile(join(target, RESTORE_MARKER), "utf8"))).toMatchObject({ pid: killed });
    expect(left.length).toBeGreaterThan(1);

    const again = await restoreDirectSnapshot({
      repo: options.repo,
      key: options.key,
      pool,
      snapshotId: created.id,
      target,
    });
    expect(again.files).toBe(41);
    expect(again.warnings).toEqual([
      expect.stringMatching(
        `^${target} held what an interrupted restore left \\(snapshot ${created.id.slice(0, 12)}, pid ${killed} on `,
      ),
    ]);
    expect(await describeTree(target)).toEqual(await describeTree(options.source));
    expect((await lstat(target)).mode & 0o7777).toBe((await lstat(options.source)).mode & 0o7777);
  });

  it("refuses to clear what was put into a killed restore's target after it died, naming it, and removes nothing", async () => {
    const engineUrl = builtSnapshotModule("index");
    const options = await workspaceWithIndex(8 * 1024 * 1024, 20);
    const created = await createDirectSnapshot(options);
    const target = fresh("target");
    const killed = await restoreKilledPartWay(engineUrl, options, created.id, target);
    const marker = join(target, RESTORE_MARKER);
    const left = await readdir(target);
    expect(left.length).toBeGreaterThan(1);
    // Someone's notes, put into the target after the kill: a second later than anything the dead restore wrote.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const later = Date.now();
    await mkdir(join(target, "mine"));
    for (const path of ["mine/notes.txt", "my-notes.txt", "zz-notes.txt"])
      await writeFile(join(target, path), "mine\n");
    // As though they came minutes after the kill (not waited for): the marker's last touch set back so that they
    // are half a second past what the dead restore could still have written, and its files half a second within.
    const touched = (later - RESTORE_WRITES_WITHIN_MS - 500) / 1000;
    await utimes(marker, touched, touched);
    const markerBefore = await readFile(marker, "utf8");
    const restore = () =>
      restoreDirectSnapshot({ repo: options.repo, key: options.key, pool, snapshotId: created.id, target });
    await expect(restore()).rejects.toThrow(
      `the restore target ${target} holds what an interrupted restore left (snapshot ${created.id.slice(0, 12)}, ` +
        `pid ${killed} on ${hostname()}`,
    );
    await expect(restore()).rejects.toThrow(
      'which is not its to clear: "mine", "mine/notes.txt", "my-notes.txt", and 1 more. Nothing was removed. Move ' +
        "them out of the target",
    );
    expect((await readdir(target)).sort()).toEqual([...left, "mine", "my-notes.txt", "zz-notes.txt"].sort());
    expect(await readFile(join(target, "my-notes.txt"), "utf8")).toBe("mine\n");
    expect(await readFile(marker, "utf8")).toBe(markerBefore); // still the dead restore's, as it was
    expect(Math.round((await stat(marker)).mtimeMs)).toBe(Math.round(touched * 1000));

    // Moved out, the dead restore's files are cleared and the snapshot restored whole.
    const kept = fresh("kept");
    await mkdir(kept);
    for (const name of ["mine", "my-notes.txt", "zz-notes.txt"]) await rename(join(target, name), join(kept, name));
    expect((await restore()).warnings).toEqual([
      expect.stringMatching(`^${target} held what an interrupted restore left .*cleared and the restore started over`),
    ]);
    expect(await describeTree(target)).toEqual(await describeTree(options.source));
    expect(await readFile(join(kept, "mine", "notes.txt"), "utf8")).toBe("mine\n");
  });

  it("streams a file through bounded memory: 8 times the file costs no more RSS to snapshot or restore", async () => {
    // "A 50 GiB file must not need 50 GiB RAM", with the production chunker and segment size: each size is
    // snapshotted and restored in a process of its own, and the peak RSS compared. Holding the file (or its
    // sealed chunks) would add ~224 MiB to the larger one. The files are sparse (holes read as zeros, so the
    // test writes little); random blocks at both ends make every one hold data as well.
    const engineUrl = builtSnapshotModule("index");
    const key = generateRepositoryKey();
    const peakRss = async (sizeMiB: number): Promise<{ snapshot: number; restore: number }> => {
      const source = fresh("big-src");
      await mkdir(source);
      const file = await open(join(source, "weights.bin"), "w");
      await file.write(seeded(1 << 20, `head${sizeMiB}`), 0, 1 << 20, 0);
      await file.write(seeded(1 << 20, `tail${sizeMiB}`), 0, 1 << 20, sizeMiB * 2 ** 20 - (1 << 20));
      await file.close();
      const repo = JSON.stringify(pathToFileURL(fresh("big-repo")).href);
      const run = async <T>(call: string): Promise<T & { maxRssKiB: number }> => {
        const script = `
          const engine = await import(${JSON.stringify(engineUrl)});
          const key = Buffer.from(${JSON.stringify(key.toString("hex"))}, "hex");
          const result = await engine.${call};
          process.stdout.write(JSON.stringify({ ...result, maxRssKiB: process.resourceUsage().maxRSS }));`;
        const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
          stdio: ["ignore", "pipe", "inherit"],
        });
        let out = "";
        child.stdout.on("data", (d: Buffer) => {
          out += d.toString();
        });
        const code = await new Promise((resolve) => child.on("exit", resolve));
        expect(code).toBe(0);
        return JSON.parse(out);
      };
      const created = await run<{ id: string; bytesRead: number }>(
        `createDirectSnapshot({ repo: ${repo}, key, source: ${JSON.stringify(source)} })`,
      );
      expect(created.bytesRead).toBe(sizeMiB * 2 ** 20);
      const target = fresh("big-target");
      const restored = await run<{ bytesWritten: number }>(
        `restoreDirectSnapshot({ repo: ${repo}, key, snapshotId: ${JSON.stringify(created.id)}, target: ${JSON.stringify(target)} })`,
      );
      expect(restored.bytesWritten).toBe(sizeMiB * 2 ** 20);
      expect(await fileDigest(join(target, "weights.bin"))).toBe(await fileDigest(join(source, "weights.bin")));
      await rm(target, { recursive: true });
      return { snapshot: created.maxRssKiB / 1024, restore: restored.maxRssKiB / 1024 };
    };
    const small = await peakRss(32);
    const large = await peakRss(256);
    expect(large.snapshot).toBeLessThan(small.snapshot + 64);
    expect(large.restore).toBeLessThan(small.restore + 64);
  });
});

describe("restore safety", () => {
  const key = generateRepositoryKey();
  // The manifest in parts of ~64 bytes, an entry or two each: a restore reads parts one at a time, and what
  // makes a manifest unsafe may lie in another part than the entry it concerns.
  const sourceOf = (manifest: Manifest, chunks: Map<string, Buffer> = new Map()): ChunkSource => ({
    async readManifest(id) {
      return { snapshotId: id, manifestBlobs: sealManifestParts(key, manifest.entries, { partBytes: 64 }) };
    },
    async *get(ids): AsyncIterable<FetchedChunk> {
      for (const id of ids) {
        const blob = chunks.get(id.toString("hex"));
        yield blob ? { id, blob } : { id, error: "absent" };
      }
    },
  });
  const entry = (path: string, extra: object = {}) => ({
    type: "dir" as const,
    path,
    mode: 0o755,
    mtimeNs: "0",
    ...extra,
  });

  it.each([
    ["an absolute path", [{ ...entry("/tmp/evil"), type: "file", size: 0, chunks: [], lengths: [] }]],
    ["a .. path", [entry("a"), { ...entry("a/../../evil"), type: "file", size: 0, chunks: [], lengths: [] }]],
    ["a symlink escaping the target", [{ ...entry("l"), type: "symlink", target: "../../etc" }]],
    [
      "a file written through a symlink",
      [
        { ...entry("l"), type: "symlink", target: "." },
        { ...entry("l/x"), type: "file", size: 0, chunks: [], lengths: [] },
      ],
    ],
    ["a path twice, parts apart", [entry("a"), entry("b"), entry("c"), entry("d"), entry("a")]],
    [
      "a file under a file, its last entry",
      [
        { ...entry("f"), type: "file", size: 0, chunks: [], lengths: [] },
        ...["d1", "d2", "d3", "d4"].map((d) => entry(d)),
        { ...entry("f/x"), type: "file", size: 0, chunks: [], lengths: [] },
      ],
    ],
  ])("refuses a manifest with %s and writes nothing", async (_what, entries) => {
    const target = fresh("target");
    const manifest = { version: 1, entries } as Manifest;
    await expect(restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool })).rejects.toThrow(
      expect.objectContaining({ code: "invalid-manifest" }),
    );
    expect(existsSync(target)).toBe(false);
  });

  it("restores times to the microsecond: files of one chunk and of several, directories, links, before 1970 too", async () => {
    const source = fresh("src");
    await mkdir(join(source, "d"), { recursive: true });
    await writeFile(join(source, "small.txt"), "hello\n"); // one chunk: a worker creates it
    await writeFile(join(source, "big.bin"), seeded(1_000_000, "mtimes")); // several chunks
    await symlink("small.txt", join(source, "l"));
    await writeFile(join(source, "d", "old.txt"), "from 1965\n");
    // Set with nanoseconds (touch): Node's utimes would round them as the restore does.
    const stamps: [string, string][] = [
      ["small.txt", "@1700000000.973305"],
      ["big.bin", "@1700000000.123000"],
      ["l", "@1700000000.760772"],
      ["d/old.txt", "@-150000000.660477"],
      ["d", "@1700000000.999999"],
    ];
    for (const [p, at] of stamps) execFileSync("touch", ["-h", "-d", at, join(source, p)]);
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    const micros = async (dir: string) =>
      Object.fromEntries(
        await Promise.all(
          stamps.map(async ([p]) => [p, String((await lstat(join(dir, p), { bigint: true })).mtimeNs / 1000n)]),
        ),
      );
    expect(await micros(target)).toEqual(await micros(source));
  });

  it("restores times before 1970, and files without setuid or setgid (owners kept or not)", async () => {
    const source = fresh("src");
    await mkdir(join(source, "old dir"), { recursive: true });
    await writeFile(join(source, "old dir", "small.txt"), "from 1965\n"); // one chunk: a worker creates it
    await writeFile(join(source, "big.bin"), seeded(1_500_000, "big")); // several chunks: opened ahead
    await chmod(join(source, "big.bin"), 0o4755);
    await writeFile(join(source, "tool"), "#!/bin/sh\n");
    await chmod(join(source, "tool"), 0o2711);
    await mkdir(join(source, "shared"));
    await chmod(join(source, "shared"), 0o2775); // a directory's setgid only passes its group down: kept
    const past = "-150000000.25"; // 1965-03-31; as a string: Node reads a negative number as "now"
    for (const p of ["old dir/small.txt", "old dir", "big.bin", "tool", "shared"]) {
      await utimes(join(source, p), past, past);
    }
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    const target = fresh("restored");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    const mode = async (p: string) => (await lstat(join(target, p))).mode & 0o7777;
    expect(await mode("big.bin")).toBe(0o755);
    expect(await mode("tool")).toBe(0o711);
    expect(await mode("shared")).toBe(0o2775);
    for (const p of ["old dir/small.txt", "old dir", "big.bin", "tool", "shared"]) {
      expect((await lstat(join(target, p))).mtimeMs, p).toBe((await lstat(join(source, p))).mtimeMs);
    }
    expect((await lstat(join(target, "big.bin"))).mtimeMs).toBeLessThan(0);
  });

  it("keeps others out of the target while it writes, takes back what it wrote when it fails, and can run again", async () => {
    const { chunkCodec } = await import("@dumont/repository");
    const files = Array.from({ length: 6 }, (_, i) => Buffer.from(`content of file ${i}\n`.repeat(100 + i)));
    const sealedChunks = files.map((plain) => chunkCodec.sealChunk(key, plain));
    const manifest = {
      version: 1,
      entries: [
        entry("d"),
        ...files.map((plain, i) => ({
          type: "file" as const,
          path: `d/f${i}`,
          mode: 0o644,
          mtimeNs: "0",
          size: plain.length,
          chunks: [sealedChunks[i].id.toString("hex")],
          lengths: [plain.length],
        })),
      ],
    } as Manifest;
    const chunks = new Map(sealedChunks.map((c) => [c.id.toString("hex"), c.blob]));
    const target = fresh("target");
    await mkdir(target, { recursive: true, mode: 0o755 });
    await chmod(target, 0o755);
    const modeOf = async () => (await lstat(target)).mode & 0o777;
    const modesSeen: number[] = [];
    // A source whose stream drops after three chunks (the agent's connection cut mid-restore).
    const dropping: ChunkSource = {
      ...sourceOf(manifest, chunks),
      async *get(ids) {
        let n = 0;
        for await (const c of sourceOf(manifest, chunks).get(ids)) {
          modesSeen.push(await modeOf());
          if (++n > 3) throw new Error("the stream dropped");
          yield c;
        }
      },
    };
    await expect(restoreSnapshot({ snapshotId: "x", source: dropping, key, target, pool })).rejects.toThrow(
      "the stream dropped",
    );
    expect(modesSeen.every((m) => m === 0o700)).toBe(true);
    expect(await readdir(target)).toEqual([]);
    expect(await modeOf()).toBe(0o755);
    // The same restore again, into the same target.
    await restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest, chunks), key, target, pool });
    for (const [i, plain] of files.entries()) expect(await readFile(join(target, "d", `f${i}`))).toEqual(plain);
    expect(await modeOf()).toBe(0o755);
  });

  it("keeps its marker when it fails and cannot take back all it wrote: the target reads as an interrupted restore", async () => {
    // Without the marker, a target holding part of a snapshot would read as a whole restore.
    const { chunkCodec } = await import("@dumont/repository");
    const plain = Buffer.from("a file the stream never finishes ".repeat(100));
    const chunk = chunkCodec.sealChunk(key, plain);
    const file = { ...entry("f"), type: "file", mode: 0o644, size: plain.length, chunks: [chunk.id.toString("hex")] };
    const manifest = { version: 1, entries: [{ ...file, lengths: [plain.length] }] } as Manifest;
    const dropping: ChunkSource = {
      ...sourceOf(manifest),
      async *get() {
        yield* [];
        throw new Error("the stream dropped");
      },
    };
    const target = fresh("target");
    await mkdir(target);
    // What it wrote could not all be removed (a file made immutable meanwhile, an I/O error on unlink).
    const emptying = vi.spyOn(RestoreDirectories.prototype, "emptyTarget").mockResolvedValue(["stuck.bin"]);
    try {
      const failed = restoreSnapshot({ snapshotId: "x", source: dropping, key, target, pool });
      await expect(failed).rejects.toThrow(
        `the stream dropped. Not all it wrote could be removed (stuck.bin): ${RESTORE_MARKER} stays in ${target}`,
      );
      await expect(failed).rejects.toBeInstanceOf(RestoreLeftBehindError);
    } finally {
      emptying.mockRestore();
    }
    expect(await readdir(target)).toContain(RESTORE_MARKER);
  });

  it("writes nothing through a directory swapped for a symlink while it restores (as root could, even with 0700)", async () => {
    const { chunkCodec } = await import("@dumont/repository");
    const plains = Array.from({ length: 8 }, (_, i) => Buffer.from(`file ${i} `.repeat(50 + i)));
    const sealed = plains.map((plain) => chunkCodec.sealChunk(key, plain));
    const fileEntry = (path: string, i: number) => ({
      type: "file" as const,
      path,
      mode: 0o644,
      mtimeNs: "0",
      size: plains[i].length,
      chunks: [sealed[i].id.toString("hex")],
      lengths: [plains[i].length],
    });
    // "a/d" is made (and its handle opened) before any file; its files are made by the workers as their chunks
    // arrive.
    const manifest = {
      version: 1,
      entries: [entry("a"), entry("a/d"), ...plains.map((_, i) => fileEntry(`a/d/f${i}`, i))],
    } as Manifest;
    const chunks = new Map(sealed.map((c) => [c.id.toString("hex"), c.blob]));
    const target = fresh("target");
    const outside = fresh("outside");
    await mkdir(outside);
    // Before the first chunk arrives, "a/d" is moved away and a symlink to `outside` takes its name.
    const swapping: ChunkSource = {
      ...sourceOf(manifest, chunks),
      async *get(ids) {
        await rename(join(target, "a", "d"), join(target, "a", "d.moved"));
        await symlink(outside, join(target, "a", "d"));
        yield* sourceOf(manifest, chunks).get(ids);
      },
    };
    // The restore goes on writing into the directory it made, under its new name; nothing reaches `outside`.
    await restoreSnapshot({ snapshotId: "x", source: swapping, key, target, pool });
    expect(await readdir(outside)).toEqual([]);
    for (const [i, plain] of plains.entries()) {
      expect(await readFile(join(target, "a", "d.moved", `f${i}`))).toEqual(plain);
    }
    // (A directory swapped before its handle is opened fails the restore, naming it: restore-directories.test.ts.)
  });

  it.each([
    ["a symlink to a file outside", "symlink"],
    ["a hard link to a file outside", "hard link"],
  ])("writes nothing through %s planted where a later window's file goes", async (_, kind) => {
    // A window opens at most 512 files of more than one chunk: the 513th is created only when the first window is
    // done, long after the target was checked empty. Whoever can write in the target meanwhile (the job's own
    // processes) may plant a link at its name first; creating it O_EXCL | O_NOFOLLOW refuses to write there.
    const { chunkCodec } = await import("@dumont/repository");
    const halves = [Buffer.from("first half\n".repeat(40)), Buffer.from("second half\n".repeat(40))];
    const sealed = halves.map((plain) => chunkCodec.sealChunk(key, plain));
    const fileEntry = (path: string) => ({
      ...entry(path),
      type: "file" as const,
      size: halves[0].length + halves[1].length,
      chunks: sealed.map((c) => c.id.toString("hex")),
      lengths: halves.map((h) => h.length),
    });
    const names = Array.from({ length: 513 }, (_, i) => `m${String(i).padStart(3, "0")}`);
    const manifest = { version: 1, entries: names.map(fileEntry) } as Manifest;
    const chunks = new Map(sealed.map((c) => [c.id.toString("hex"), c.blob]));
    const target = fresh("target");
    const outside = fresh("outside");
    await mkdir(outside);
    const victim = join(outside, "victim");
    await writeFile(victim, "not the restore's\n");
    const planted = join(target, names[512]);
    let asked = 0;
    const planting: ChunkSource = {
      ...sourceOf(manifest, chunks),
      // In parts of the usual size (sourceOf's 64-byte parts would make 513 files too many parts).
      readManifest: async (id) => ({ snapshotId: id, manifestBlobs: sealManifestParts(key, manifest.entries) }),
      async *get(ids) {
        if (asked++ === 0) await (kind === "symlink" ? symlink(victim, planted) : link(victim, planted));
        yield* sourceOf(manifest, chunks).get(ids);
      },
    };
    await expect(restoreSnapshot({ snapshotId: "x", source: planting, key, target, pool })).rejects.toThrow(names[512]);
    expect(await readFile(victim, "utf8")).toBe("not the restore's\n");
  });

  it("refuses a target that is a file, a dangling link or cannot be made, saying so; makes missing parents", async () => {
    const target = join(fresh("parent"), "a-file");
    await mkdir(join(target, ".."), { recursive: true });
    await writeFile(target, "not a directory");
    const manifest = { version: 1, entries: [entry("d")] } as Manifest;
    await expect(restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool })).rejects.toThrow(
      `the restore target ${target} exists and is not a directory`,
    );
    // Where no directory can be made (Node's recursive mkdir never returns under /proc): a sentence.
    await expect(
      restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target: "/proc/dumont/x", pool }),
    ).rejects.toThrow("cannot create the restore target /proc/dumont/x: ENOENT");
    // A link to a directory that is not there (a mount gone missing): said, and nothing made where it points.
    const dangling = join(fresh("parent"), "dangling");
    await mkdir(join(dangling, ".."), { recursive: true });
    const nowhere = join(fresh("parent"), "nowhere");
    await symlink(nowhere, dangling);
    await expect(
      restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target: dangling, pool }),
    ).rejects.toThrow(`the restore target ${dangling} is a symbolic link to ${nowhere}, which does not exist`);
    await expect(stat(nowhere)).rejects.toThrow(/ENOENT/);
    // Missing parents are made.
    const deep = join(fresh("parent"), "a", "b", "c");
    await restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target: deep, pool });
    expect(await readdir(deep)).toEqual(["d"]);
  });

  it("refuses a target that is not empty (so nothing there can be followed)", async () => {
    const target = fresh("target");
    await mkdir(target);
    await symlink("/etc", join(target, "a"));
    const manifest: Manifest = { version: 1, entries: [entry("a")] };
    await expect(restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool })).rejects.toThrow(
      /not empty/,
    );
  });

  /** A manifest of `before` and then file `path` holding `plain` in one chunk, and that chunk by id. */
  const oneChunkFile = (path: string, plain: Buffer, before: object[] = []) => {
    const sealed = chunkCodec.sealChunk(key, plain);
    const id = sealed.id.toString("hex");
    const file = { ...entry(path), type: "file", size: plain.length, chunks: [id], lengths: [plain.length] };
    return { manifest: { version: 1, entries: [...before, file] } as Manifest, chunks: new Map([[id, sealed.blob]]) };
  };

  it("marks the target while it restores: a second restore into it meanwhile is refused and removes nothing", async () => {
    const plain = Buffer.from("checkpoint\n".repeat(1000));
    const { manifest, chunks } = oneChunkFile("d/f", plain, [entry("d")]);
    const target = fresh("target");
    let release = () => {};
    const held = new Promise<void>((r) => (release = r));
    const slow: ChunkSource = {
      ...sourceOf(manifest, chunks),
      async *get(ids) {
        await held;
        yield* sourceOf(manifest, chunks).get(ids);
      },
    };
    const first = restoreSnapshot({ snapshotId: "first", source: slow, key, target, pool });
    await vi.waitFor(() => expect(existsSync(join(target, RESTORE_MARKER))).toBe(true), { timeout: 10_000 });
    const marker = JSON.parse(await readFile(join(target, RESTORE_MARKER), "utf8"));
    expect(marker).toMatchObject({ snapshot: "first", pid: process.pid });
    await expect(
      restoreSnapshot({ snapshotId: "second", source: sourceOf(manifest, chunks), key, target, pool }),
    ).rejects.toThrow(`a restore of snapshot first into ${target} is under way (pid ${process.pid}`);
    release();
    await first;
    expect(await readdir(target)).toEqual(["d"]); // the marker gone with the restore
    expect(await readFile(join(target, "d", "f"))).toEqual(plain);

    // Two started at once into an empty directory: one restores, the other is refused and takes nothing away.
    const both = fresh("target");
    const outcomes = await Promise.allSettled(
      ["a", "b"].map((id) =>
        restoreSnapshot({ snapshotId: id, source: sourceOf(manifest, chunks), key, target: both, pool }),
      ),
    );
    expect(outcomes.filter((o) => o.status === "fulfilled")).toHaveLength(1);
    const refused = outcomes.find((o) => o.status === "rejected") as PromiseRejectedResult;
    expect(String(refused.reason)).toMatch(/another restore into .* began meanwhile|is under way|is not empty/);
    expect(await readdir(both)).toEqual(["d"]);
    expect(await readFile(join(both, "d", "f"))).toEqual(plain);
  });

  it("flushes what it wrote to disk before its marker goes, and says so where it cannot", async () => {
    const plain = Buffer.from("weights\n".repeat(5000));
    const { manifest, chunks } = oneChunkFile("w", plain);
    // `sync` as found on PATH, wrapped: it notes whether the marker is still there when it runs (the flush
    // must come first), then runs the real one, or fails as an I/O error would.
    const realSync = execFileSync("sh", ["-c", "command -v sync"], { encoding: "utf8" }).trim();
    const bin = fresh("bin");
    await mkdir(bin);
    const log = join(bin, "log");
    const wrapper = (then: string) =>
      writeFile(
        join(bin, "sync"),
        `#!/bin/sh\nfor a; do last=$a; done\n` +
          `if [ -e "$last/${RESTORE_MARKER}" ]; then echo "marker $*" >> ${log}; else echo "none $*" >> ${log}; fi\n${then}\n`,
        { mode: 0o755 },
      );
    const path = process.env.PATH;
    process.env.PATH = `${bin}:${path}`;
    try {
      await wrapper(`exec ${realSync} "$@"`);
      const target = fresh("target");
      const done = await restoreSnapshot({ snapshotId: "s", source: sourceOf(manifest, chunks), key, target, pool });
      expect(done.warnings).toBeUndefined();
      // Through the target's own handle as its stdin (the marker seen through it), not by a path.
      expect(await readFile(log, "utf8")).toBe("marker -f /proc/self/fd/0\n");
      expect(await readdir(target)).toEqual(["w"]);
      expect(done.flushSeconds).toBeGreaterThan(0);

      // In the user's locale sync would say it in their words (German here): it is run in the C locale.
      await wrapper(
        `[ "$LC_ALL" = C ] && why="Input/output error" || why="Eingabe-/Ausgabefehler"\n` +
          `echo "sync: error syncing '$last': $why" >&2; exit 1`,
      );
      const other = fresh("target");
      const flawed = restoreSnapshot({
        snapshotId: "s",
        source: sourceOf(manifest, chunks),
        key,
        target: other,
        pool,
      });
      // The disk failed writes it had taken: what was restored may not read back, so the restore fails and is
      // taken back (it used to succeed with a warning about a power loss to come).
      await expect(flawed).rejects.toThrow(
        `cannot flush ${other} to disk: sync: error syncing '/proc/self/fd/0': Input/output error: the disk did ` +
          "not take all that was restored, so restored files may not read back as they were; restore again, onto " +
          "a disk that works",
      );
      expect(await readdir(other)).toEqual([]);
      // So does one that kept all but a damaged file: what it kept may not read back either.
      const lost = oneChunkFile("lost", Buffer.from("never delivered\n"), manifest.entries);
      const partly = fresh("target");
      await expect(
        restoreSnapshot({ snapshotId: "s", source: sourceOf(lost.manifest, chunks), key, target: partly, pool }),
      ).rejects.toThrow(/^cannot flush .*: the disk did not take all that was restored/);
      expect(await readdir(partly)).toEqual([]);

      // A sync that fails for another reason (one without -f, say) is no sign of lost writes: a warning.
      await wrapper(`echo "sync: invalid option -- 'f'" >&2; exit 1`);
      const old = fresh("target");
      const unflushed = await restoreSnapshot({
        snapshotId: "s",
        source: sourceOf(manifest, chunks),
        key,
        target: old,
        pool,
      });
      expect(unflushed.warnings).toEqual([
        `cannot flush ${old} to disk: sync: invalid option -- 'f'; a power loss soon could leave restored files ` +
          "empty or short",
      ]);
      expect(await readdir(old)).toEqual(["w"]); // restored all the same, the marker gone
      expect(await readFile(join(old, "w"))).toEqual(plain);

      // The kernel's words as musl (BusyBox's usual libc) gives them, and a quota (NFS writeback): lost writes too.
      const dirs = await RestoreDirectories.open(other);
      for (const why of ["I/O error", "Disk quota exceeded", "Quota exceeded"]) {
        await wrapper(`echo "sync: /proc/self/fd/0: ${why}" >&2; exit 1`);
        await expect(dirs.syncFilesystem()).rejects.toBeInstanceOf(FlushFailedError);
      }
      // A flush that never returns (a device that stopped answering): given up on after its time, the child
      // killed; and a restore stopped while it flushes is taken back, as when stopped at any other point.
      await wrapper("exec sleep 60");
      await expect(dirs.syncFilesystem({ timeoutMs: 200 })).rejects.toThrow(
        `cannot flush ${other} to disk: sync did not finish in 0.2 s`,
      );
      await dirs.close();
      const stopped = fresh("target");
      const stop = new AbortController();
      const stopping = restoreSnapshot({
        snapshotId: "s",
        source: sourceOf(manifest, chunks),
        key,
        target: stopped,
        pool,
        signal: stop.signal,
      });
      // The ninth flush asked for is this restore's: its files are written.
      await vi.waitFor(async () => expect((await readFile(log, "utf8")).split("\n")).toHaveLength(10), {
        timeout: 10_000,
      });
      stop.abort(new Error("stopped by the test"));
      await expect(stopping).rejects.toThrow("stopped by the test");
      expect(await readdir(stopped)).toEqual([]);
    } finally {
      process.env.PATH = path;
    }
  });

  /** A marker as a restore of this agent writes it into `target`, with `over` changed. */
  const markerIn = async (target: string, over: object = {}) => {
    const own = await stat(target, { bigint: true });
    const marker = {
      claim: randomBytes(16).toString("hex"),
      snapshot: "old",
      started: "2026-01-01T00:00:00Z",
      targetDev: String(own.dev),
      targetIno: String(own.ino),
      targetMode: 0o750,
      hostname: hostname(),
      pid: 1,
      pidns: "pid:[1]", // another pid namespace: whether pid 1 there is alive cannot be told from here
      ...over,
    };
    await writeFile(join(target, RESTORE_MARKER), JSON.stringify(marker), { mode: 0o600 });
  };
  const longAgo = () => (Date.now() - MARKER_STALE_AFTER_MS - 60_000) / 1000;
  /**
   * A process of this host that has ended, as a marker names it: its restore is judged dead at once, whatever the
   * marker's age, so what the test writes beside a marker touched now reads as that restore's own. (A marker aged
   * with utimes instead makes files written now look changed long after it, which a takeover refuses.)
   */
  const deadProcess = async () => {
    const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
    await new Promise((resolve) => child.on("exit", resolve));
    return { ...thisProcess(), pid: child.pid! };
  };

  it("refuses a marker it cannot read or did not write for this target, naming the file, and removes nothing", async () => {
    const manifest: Manifest = { version: 1, entries: [entry("a")] };
    const restore = (target: string) =>
      restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool });
    const refused = (target: string) =>
      `the restore target ${target} holds ${RESTORE_MARKER}, which is not a marker this agent wrote for it`;
    // Empty: a restore creating it this moment (or killed while it did).
    const empty = fresh("target");
    await mkdir(empty);
    await writeFile(join(empty, RESTORE_MARKER), "");
    await writeFile(join(empty, "half-written.bin"), "x");
    await expect(restore(empty)).rejects.toThrow(refused(empty));
    expect((await readdir(empty)).sort()).toEqual([RESTORE_MARKER, "half-written.bin"]);
    // A dead restore's marker, copied in with its tree (cp -a of a half-restored directory): written for another
    // directory, it says nothing of this one, whose files are somebody's.
    const copied = fresh("target");
    await mkdir(copied);
    const elsewhere = fresh("elsewhere");
    await mkdir(elsewhere);
    await markerIn(elsewhere);
    await rename(join(elsewhere, RESTORE_MARKER), join(copied, RESTORE_MARKER));
    await writeFile(join(copied, "precious.txt"), "mine");
    await utimes(join(copied, RESTORE_MARKER), longAgo(), longAgo());
    await expect(restore(copied)).rejects.toThrow(refused(copied));
    expect((await readdir(copied)).sort()).toEqual([RESTORE_MARKER, "precious.txt"]);
    // Another user's (planted where others may write): not this agent's to judge.
    if (process.geteuid?.() === 0) {
      const planted = fresh("target");
      await mkdir(planted);
      await markerIn(planted);
      await writeFile(join(planted, "precious.txt"), "mine");
      await lchown(join(planted, RESTORE_MARKER), 65534, 65534);
      await utimes(join(planted, RESTORE_MARKER), longAgo(), longAgo());
      await expect(restore(planted)).rejects.toThrow(refused(planted));
      expect((await readdir(planted)).sort()).toEqual([RESTORE_MARKER, "precious.txt"]);
    }
  });

  it("takes over, in the same process, the marker a failed restore kept for what it could not remove", async () => {
    // A restore that fails and cannot take back all it wrote keeps its marker, naming this (living) process, and
    // says the next restore clears what is left: the next one in this agent did not, for ten minutes.
    const target = fresh("target");
    await mkdir(target);
    const dirs = await RestoreDirectories.open(target);
    try {
      const failed = await claimTarget(dirs, target, "first");
      await writeFile(join(target, "half-written.bin"), "x");
      await failed.finish({ keepMarker: true });
    } finally {
      await dirs.close();
    }
    expect(JSON.parse(await readFile(join(target, RESTORE_MARKER), "utf8"))).toMatchObject({ pid: process.pid });
    const manifest: Manifest = { version: 1, entries: [entry("a")] };
    const result = await restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool });
    expect(result.warnings).toEqual([expect.stringContaining("held what an interrupted restore left (snapshot first")]);
    expect(await readdir(target)).toEqual(["a"]);
  });

  it("a finished restore removes only its own marker: one of another restore's in its place stays", async () => {
    // The marker of a restore that took this one over (this one paused past the staleness): removed, it would
    // leave that restore's target looking finished while it still writes.
    const target = fresh("target");
    await mkdir(target);
    const dirs = await RestoreDirectories.open(target);
    try {
      const claimed = await claimTarget(dirs, target, "first");
      const marker = join(target, RESTORE_MARKER);
      const other = JSON.stringify({
        ...JSON.parse(await readFile(marker, "utf8")),
        snapshot: "second",
        claim: "ab".repeat(16),
      });
      await writeFile(marker, other);
      await claimed.finish();
      expect(await readFile(marker, "utf8")).toBe(other);
    } finally {
      await dirs.close();
    }
  });

  it("takes over a marker untouched for ten minutes, whoever wrote it (another pid namespace cannot be asked)", async () => {
    const target = fresh("target");
    await mkdir(target);
    await markerIn(target);
    await writeFile(join(target, "half-written.bin"), "x");
    const manifest: Manifest = { version: 1, entries: [entry("a")] };
    const restore = () => restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool });
    await expect(restore()).rejects.toThrow("a restore of snapshot old into");
    await utimes(join(target, RESTORE_MARKER), longAgo(), longAgo());
    // Written now, the file was changed long after the marker's last touch: not the dead restore's to clear.
    await expect(restore()).rejects.toThrow('which is not its to clear: "half-written.bin". Nothing was removed');
    const moved = fresh("moved");
    await mkdir(moved);
    await rename(join(target, "half-written.bin"), join(moved, "half-written.bin"));
    expect((await restore()).warnings).toEqual([
      `${target} held what an interrupted restore left (snapshot old, pid 1 on ${hostname()}, since ` +
        "2026-01-01T00:00:00Z); it was cleared and the restore started over",
    ]);
    expect(await readdir(target)).toEqual(["a"]);
  });

  it("clears what a dead restore changed up to RESTORE_WRITES_WITHIN_MS after its marker's last touch", async () => {
    // A restore dies before its next touch, which may come late: what it wrote, chmod'ed or utimes'ed (its
    // directories' modes and times come last) up to then is its own, cleared on takeover as before.
    const target = fresh("target");
    await mkdir(target);
    await markerIn(target, await deadProcess());
    await mkdir(join(target, "ro", "sub"), { recursive: true });
    await writeFile(join(target, "ro", "sub", "half-written.bin"), "x");
    await writeFile(join(target, "whole.bin"), "x");
    await utimes(join(target, "ro"), HOUR_AGO, HOUR_AGO);
    await chmod(join(target, "ro"), 0o555);
    let last = 0n;
    for (const path of ["ro", "ro/sub", "ro/sub/half-written.bin", "whole.bin"]) {
      const { ctimeNs } = await stat(join(target, path), { bigint: true });
      if (ctimeNs > last) last = ctimeNs;
    }
    // Touched as long before the last of those changes as the rule allows, less a little.
    const touched = (Number(last / 1_000_000n) - RESTORE_WRITES_WITHIN_MS + 200) / 1000;
    await utimes(join(target, RESTORE_MARKER), touched, touched);
    const dirs = await RestoreDirectories.open(target);
    try {
      const claimed = await claimTarget(dirs, target, "new");
      expect(claimed.tookOver).toContain("it was cleared and the restore started over");
      expect(await readdir(target)).toEqual([RESTORE_MARKER]);
      await claimed.finish();
    } finally {
      await dirs.close();
    }
  });

  it("takes over where a restore was killed while a marker changed hands (moved aside, or not yet linked)", async () => {
    // Without the marker in place, a dead restore's marker under the names it passes through is the marker: the
    // target is not stuck as "not empty" for good.
    for (const name of [`${RESTORE_MARKER}.taken-0123456789abcdef`, `${RESTORE_MARKER}.new-0123456789abcdef`]) {
      const target = fresh("target");
      await mkdir(target);
      await markerIn(target, await deadProcess());
      await rename(join(target, RESTORE_MARKER), join(target, name));
      await writeFile(join(target, "half-written.bin"), "x");
      const manifest: Manifest = { version: 1, entries: [entry("a")] };
      const result = await restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool });
      expect(result.warnings).toEqual([expect.stringContaining("held what an interrupted restore left")]);
      expect(await readdir(target)).toEqual(["a"]);
    }
  });

  it("lets one restore of several take over a dead restore's marker, however they interleave", async () => {
    // Each takes the marker aside under a name of its own and checks it took the one it judged; one that took
    // another's live marker puts it back. Before, a takeover unlinked by name, and two could both win.
    const opened: RestoreDirectories[] = [];
    const dead = await deadProcess();
    for (let round = 0; round < 60; round++) {
      const target = fresh("target");
      await mkdir(target);
      await markerIn(target, dead);
      await writeFile(join(target, "half-written.bin"), "x");
      const claims = await Promise.allSettled(
        [1, 2, 3].map(async (n) => {
          const dirs = await RestoreDirectories.open(target);
          opened.push(dirs);
          return claimTarget(dirs, target, `s${n}`);
        }),
      );
      expect(claims.filter((c) => c.status === "fulfilled")).toHaveLength(1);
      for (const c of claims) {
        if (c.status === "rejected") expect(String(c.reason)).toMatch(/began meanwhile|is under way/);
      }
      expect(await readdir(target)).toEqual([RESTORE_MARKER]);
      const winner = JSON.parse(await readFile(join(target, RESTORE_MARKER), "utf8"));
      expect(winner.pid).toBe(process.pid);
      for (const c of claims) if (c.status === "fulfilled") await c.value.finish();
      expect(await readdir(target)).toEqual([]);
      for (const dirs of opened.splice(0)) await dirs.close();
    }
  });

  it("puts back a live marker that another restore placed while this one moved the dead one aside", async () => {
    // The interleaving the rounds above seldom hit, made to happen: between judging the dead marker and moving it
    // aside, another restore takes it over and places its own. This one moves that live marker aside, sees the
    // claim is not the one it judged, puts it back and gives way; the other restore's files are left alone.
    const target = fresh("target");
    await mkdir(target);
    await markerIn(target, await deadProcess());
    await writeFile(join(target, "restored-by-the-other.bin"), "x");
    const live = { claim: "cd".repeat(16), snapshot: "other", pid: process.pid, pidns: undefined };
    const dirs = await RestoreDirectories.open(target);
    const withEntry = dirs.withEntry.bind(dirs);
    let swapped = false;
    dirs.withEntry = async (name, use) => {
      // The aside name is asked for just before the rename that takes the marker there.
      if (name.startsWith(`${RESTORE_MARKER}.taken-`) && !swapped) {
        swapped = true;
        await markerIn(target, live);
      }
      return withEntry(name, use);
    };
    try {
      await expect(claimTarget(dirs, target, "mine")).rejects.toThrow(
        `another restore into ${target} began meanwhile; wait for it, or stop it and restore again`,
      );
      expect(swapped).toBe(true);
      expect((await readdir(target)).sort()).toEqual([RESTORE_MARKER, "restored-by-the-other.bin"]);
      expect(JSON.parse(await readFile(join(target, RESTORE_MARKER), "utf8"))).toMatchObject({
        claim: live.claim,
        snapshot: "other",
      });
    } finally {
      await dirs.close();
    }
  });

  it("leaves a restore's marker out of a snapshot, and out of a restore of a snapshot that holds one", async () => {
    // A snapshot of a directory a restore is writing into (or a killed one left) says so, and stores no marker.
    const source = fresh("src");
    await mkdir(source);
    await writeFile(join(source, "data.txt"), "data\n");
    await writeFile(join(source, RESTORE_MARKER), "{}");
    // And the names a marker passes through on its way in or aside (a restore killed between two steps).
    const passing = [`${RESTORE_MARKER}.new-0123456789abcdef`, `${RESTORE_MARKER}.taken-0123456789abcdef`];
    for (const name of passing) await writeFile(join(source, name), "{}");
    const repo = pathToFileURL(fresh("repo")).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, ...SMALL });
    expect(created.skipped).toEqual(
      [RESTORE_MARKER, ...passing].map((path) => ({ path, reason: RESTORE_MARKER_LEFT_OUT })),
    );
    const target = fresh("target");
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect(await readdir(target)).toEqual(["data.txt"]);
    // An older agent's snapshot holding one (a file, or a directory with more under it): restored without it.
    const manifest = {
      version: 1,
      entries: [
        entry("d"),
        { ...entry(RESTORE_MARKER), type: "file", size: 0, chunks: [], lengths: [] },
        { ...entry(`d/${RESTORE_MARKER}`), type: "file", size: 0, chunks: [], lengths: [] },
        ...passing.map((name) => ({ ...entry(name), type: "file", size: 0, chunks: [], lengths: [] })),
      ],
    } as Manifest;
    const older = fresh("target");
    const result = await restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target: older, pool });
    expect(result.files).toBe(1);
    expect(await readdir(older)).toEqual(["d"]);
    expect(await readdir(join(older, "d"))).toEqual([RESTORE_MARKER]); // only the top one is a marker
  });

  it("creates outward symlinks only when allowed, and never writes through them", async () => {
    const outside = fresh("outside");
    await mkdir(outside);
    const manifest: Manifest = {
      version: 1,
      entries: [{ type: "symlink", path: "python", mode: 0o777, mtimeNs: "0", target: outside }],
    };
    const target = fresh("target");
    await expect(restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool })).rejects.toThrow(
      /points outside the restore target/,
    );
    await restoreSnapshot({
      snapshotId: "x",
      source: sourceOf(manifest),
      key,
      target,
      pool,
      allowExternalSymlinks: true,
    });
    expect(await readlink(join(target, "python"))).toBe(outside);
    expect(await readdir(outside)).toEqual([]);
  });

  it("judges outward symlinks only among those --include selects, after what the patterns match", async () => {
    const manifest: Manifest = {
      version: 1,
      entries: [
        entry("data"),
        { ...entry("data/empty"), type: "file", size: 0, chunks: [], lengths: [] },
        { type: "symlink", path: "data/inside", mode: 0o777, mtimeNs: "0", target: "empty" },
        { type: "symlink", path: "extlink", mode: 0o777, mtimeNs: "0", target: "/etc/hostname" },
      ],
    };
    const restore = (target: string, include?: string[]) =>
      restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool, include });
    // The link left out is no reason to refuse the part asked for (it was refused for it before).
    const part = fresh("target");
    await restore(part, ["data/"]);
    expect((await readdir(part)).sort()).toEqual(["data"]);
    expect((await readdir(join(part, "data"))).sort()).toEqual(["empty", "inside"]);
    // Patterns that match nothing say so, not that some other link points out.
    const none = fresh("target");
    await expect(restore(none, ["nomatch"])).rejects.toThrow(/^nothing in snapshot x matches "nomatch"/);
    expect(existsSync(none)).toBe(false);
    // A restore that writes the link is refused, in words of a choice to make, not of a damaged manifest.
    for (const include of [undefined, ["extlink"]]) {
      const target = fresh("target");
      const refused = await restore(target, include).catch((e: Error) => e);
      expect(refused).toBeInstanceOf(Error);
      expect((refused as Error).message).toBe(
        'symlink "extlink" -> "/etc/hostname" points outside the restore target; restore with ' +
          "--allow-external-symlinks to write it anyway (a restore creates links and never follows one), or " +
          "leave it out with --include",
      );
      expect(existsSync(target)).toBe(false);
    }
  });

  it("names a hard link chained to a damaged file damaged too, and keeps the rest", async () => {
    // Our snapshots link every path of a file to its first; a manifest may chain them (c -> b -> a).
    const { chunkCodec } = await import("@dumont/repository");
    const good = chunkCodec.sealChunk(key, Buffer.from("good"));
    const missing = chunkCodec.sealChunk(key, Buffer.from("lost"));
    const file = (path: string, chunk: Buffer, extra: object = {}) => ({
      type: "file" as const,
      path,
      mode: 0o644,
      mtimeNs: "0",
      size: 4,
      chunks: [chunk.toString("hex")],
      lengths: [4],
      ...extra,
    });
    const manifest: Manifest = {
      version: 1,
      entries: [
        file("a", missing.id),
        file("b", missing.id, { linkOf: "a" }),
        file("c", missing.id, { linkOf: "b" }),
        file("ok", good.id),
      ],
    };
    const source = sourceOf(manifest, new Map([[good.id.toString("hex"), good.blob]]));
    const target = fresh("target");
    const failure = await restoreSnapshot({ snapshotId: "x", source, key, target, pool }).catch((e) => e);
    expect(failure).toBeInstanceOf(RestoreDamagedError);
    expect((failure as RestoreDamagedError).damaged.map((d) => d.path)).toEqual(["a", "b", "c"]);
    expect(await readdir(target)).toEqual(["ok"]);
    expect(await readFile(join(target, "ok"), "utf8")).toBe("good");
  });

  it("links a file only to one listing the same chunks; one listing others is written from its own", async () => {
    // FORMAT.md: linkOf names an earlier entry of the same file with the same chunks. A manifest whose link lists
    // other chunks (damaged, or a writer's bug) was linked all the same: b came back as a's bytes, unchecked.
    const { chunkCodec } = await import("@dumont/repository");
    const sealedOf = (text: string) => ({ plain: Buffer.from(text), ...chunkCodec.sealChunk(key, Buffer.from(text)) });
    const [a, b] = [sealedOf("AAAA"), sealedOf("BBBBBBBB")];
    const file = (path: string, c: typeof a, extra: object = {}) => ({
      type: "file" as const,
      path,
      mode: 0o644,
      mtimeNs: "0",
      size: c.plain.length,
      chunks: [c.id.toString("hex")],
      lengths: [c.plain.length],
      ...extra,
    });
    const manifest: Manifest = {
      version: 1,
      // b names a but lists other chunks; c names b and lists b's (a chain through the one written apart).
      entries: [
        file("a", a),
        file("b", b, { linkOf: "a" }),
        file("c", b, { linkOf: "b" }),
        file("d", a, { linkOf: "a" }),
      ],
    };
    const blobs = new Map([a, b].map((c) => [c.id.toString("hex"), c.blob]));
    const target = fresh("target");
    const result = await restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest, blobs), key, target, pool });
    expect(result).toMatchObject({ files: 4, bytesWritten: 12 });
    expect(await readFile(join(target, "b"), "utf8")).toBe("BBBBBBBB");
    const ino = async (name: string) => (await stat(join(target, name))).ino;
    expect(await ino("b")).not.toBe(await ino("a"));
    expect(await ino("c")).toBe(await ino("b"));
    expect(await ino("d")).toBe(await ino("a"));
  });

  it("names the entry it could not create as the snapshot has it, not by a /proc name", async () => {
    const long = "n".repeat(300); // over NAME_MAX
    const manifest: Manifest = { version: 1, entries: [entry("logs"), entry(`logs/${long}`)] };
    const target = fresh("target");
    const failure = await restoreSnapshot({ snapshotId: "x", source: sourceOf(manifest), key, target, pool }).catch(
      (e) => e,
    );
    expect(failure.message).toContain(`ENAMETOOLONG: name too long, mkdir 'logs/${long}'`);
    expect(failure.message).not.toContain("/proc/");
    expect(await readdir(target)).toEqual([]); // taken back, as any failed restore
  });

  it("gives every read buffer back to the pool when it is cancelled as the reads begin", async () => {
    // Stopped as it met the first blob of a read buffer it had not taken into a batch yet, neither the restore
    // nor the chunk source gave that buffer back: 8 MiB an agent's pool kept for each cancelled restore.
    const { key, created, repository } = await snapshotOfWorkspace();
    const { pool: counting, held } = countingPool();
    const controller = new AbortController();
    const buffer = counting.buffer.bind(counting);
    let taken = 0;
    counting.buffer = (size) => {
      if (++taken === 2) controller.abort(new Error("cancelled")); // the second read has started
      return buffer(size);
    };
    const source = await repository.chunkSource({ readBuffers: counting.chunkBuffers });
    const target = fresh("target");
    await expect(
      restoreSnapshot({ snapshotId: created.id, source, key, target, pool: counting, signal: controller.signal }),
    ).rejects.toThrow("cancelled");
    expect(taken).toBeGreaterThanOrEqual(2);
    await vi.waitFor(() => expect(held.size).toBe(0), { timeout: 10_000 });
  });

  it.each([
    ["one chunk, created by a worker", 1],
    ["three chunks, opened on the main thread", 3],
  ])(
    "fails as a whole, naming the file, where the target cannot take a file's name (%s), not as damaged data",
    async (_, count) => {
      // A name the target's filesystem refuses is no fault of the snapshot: it used to be reported as "damaged
      // data" for a file a worker creates, by its /proc name, with the rest kept.
      const { chunkCodec } = await import("@dumont/repository");
      const long = "n".repeat(300); // over NAME_MAX
      const pieces = Array.from({ length: count }, (_, i) => chunkCodec.sealChunk(key, Buffer.from(`piece ${i}\n`)));
      const file = {
        type: "file" as const,
        path: `logs/${long}`,
        mode: 0o644,
        mtimeNs: "0",
        size: pieces.reduce((n, _p, i) => n + `piece ${i}\n`.length, 0),
        chunks: pieces.map((p) => p.id.toString("hex")),
        lengths: pieces.map((_, i) => `piece ${i}\n`.length),
      };
      const blobs = new Map(pieces.map((p) => [p.id.toString("hex"), p.blob]));
      const manifest: Manifest = { version: 1, entries: [entry("logs"), entry("logs/d"), file] };
      const target = fresh("target");
      const { pool: counting, held } = countingPool();
      const failure = await restoreSnapshot({
        snapshotId: "x",
        source: sourceOf(manifest, blobs),
        key,
        target,
        pool: counting,
      }).catch((e) => e);
      expect(failure).not.toBeInstanceOf(RestoreDamagedError);
      expect(failure.message).toContain(`ENAMETOOLONG: name too long, open 'logs/${long}'`);
      expect(failure.message).not.toContain("/proc/");
      expect(await readdir(target)).toEqual([]); // taken back, as any failed restore
      // Its batch went back to the pool too (a batch waiting for a file that could not be opened was dropped).
      await vi.waitFor(() => expect(held.size).toBe(0), { timeout: 10_000 });
    },
  );

  it("refuses a chunk whose content does not match its id", async () => {
    const { chunkCodec } = await import("@dumont/repository");
    const real = chunkCodec.sealChunk(key, Buffer.from("real content"));
    const forged = chunkCodec.sealChunk(key, Buffer.from("other content"));
    const manifest: Manifest = {
      version: 1,
      entries: [
        {
          type: "file",
          path: "f",
          mode: 0o644,
          mtimeNs: "0",
          size: 12,
          chunks: [real.id.toString("hex")],
          lengths: [12],
        },
      ],
    };
    const source = sourceOf(manifest, new Map([[real.id.toString("hex"), forged.blob]]));
    const target = fresh("target");
    const failure = await restoreSnapshot({ snapshotId: "x", source, key, target, pool }).catch((e) => e);
    expect(failure).toBeInstanceOf(RestoreDamagedError);
    expect(failure.message).toMatch(/"f".*authentication failed/);
  });
});
