// Takes a snapshot of a directory into a ChunkSink: lists the tree, skips files the local index knows are
// unchanged, has the rest read, chunked and sealed by the workers (segment-pipeline.ts: the sink is offered the
// chunk ids and sent only the chunks it lacks), then commits the sealed manifest and saves the local index.
import { createHash } from "node:crypto";
import { lstat, statfs } from "node:fs/promises";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import {
  type ChunkSink,
  cutManifestParts,
  MAX_MANIFEST_BYTES,
  MAX_MANIFEST_PARTS,
  MAX_PART_PLAIN_BYTES,
  MAX_SKIPPED_LISTED,
  MAX_SKIPPED_REASON,
  type ManifestEntries,
  type ManifestEntry,
  type ManifestPartBlob,
  type ManifestRoot,
  manifestEntryMinBytes,
  manifestTooLarge,
  RepositoryError,
  type SkippedEntry,
  sealManifestPart,
} from "@dumont/repository";
import { SMALLER_SNAPSHOT_ADVICE } from "@dumont/repository/limits";
import { ChunkTable } from "./chunk-table.js";
import { type ChunkerParams, compileChunker, DEFAULT_CHUNKER } from "./chunker.js";
import { LocalIndex, type RawLocalIndexFile, readLocalIndex, saveLocalIndex } from "./local-index.js";
import { loadExclusions } from "./path-matcher.js";
import {
  CHANGED,
  DEFAULT_SEGMENT_SIZE,
  type FileWork,
  missingIds,
  OFFER_BATCH,
  SegmentPipeline,
} from "./segment-pipeline.js";
import { listSourceTree, type SourceEntry, sourceFile, statSourceRoot } from "./source-tree.js";
import { SnapshotWorkerPool } from "./worker-pool.js";

export interface CreateSnapshotOptions {
  /** The directory to snapshot. */
  source: string;
  sink: ChunkSink;
  /** The repository (tenant) key chunks and the manifest are sealed with. */
  key: Buffer;
  meta: { workspace: string; epoch: number; tenant: string; hostname?: string };
  /**
   * Patterns (gitignore syntax, relative to `source`) to leave out of this snapshot, after those of the
   * source's own .dumontignore (see path-matcher.ts).
   */
  exclude?: readonly string[];
  /** Shared workers; without one, a pool is started for this snapshot and closed after. */
  pool?: SnapshotWorkerPool;
  /** Where to remember file -> chunks between snapshots; `scope` must change when the repository does. */
  localIndex?: { file: string; scope: string };
  /** How recent an mtime keeps a file out of the local index (default RACY_WINDOW_NS, 60 s; tests shorten it). */
  racyWindowMs?: number;
  chunker?: ChunkerParams;
  /** Files larger than this are split across workers (default 16 MiB; at least twice the maximum chunk). */
  segmentSize?: number;
  /**
   * Segments the workers may seal ahead, beyond one per worker and one being handed to the sink (default 0).
   * For a sink whose `put` waits on a network: the agent's stream sets 2 (see SnapshotCommands).
   */
  sealAhead?: number;
  /** Plain bytes per manifest part (MANIFEST_PART_BYTES; see sealManifestParts). */
  manifestPartBytes?: number;
  /**
   * Whether small files are read into the page cache ahead of the workers by threads of their own
   * (read-ahead.ts): "auto" (default) once the reads reach the disk (READ_AHEAD_DISK_SHARE in
   * segment-pipeline.ts), "always" or "never".
   */
  readAhead?: "auto" | "always" | "never";
  /**
   * The source already being listed (listSnapshotSource with the same source and `exclude`): a caller lists
   * while it opens the repository. The snapshot then dates from the start of that listing.
   */
  listing?: Promise<SourceListing>;
  onProgress?: (progress: CreateProgress) => void;
  signal?: AbortSignal;
}

export interface CreateProgress {
  bytesRead: number;
  bytesToRead: number;
}

export interface CreateSnapshotResult {
  id: string;
  /** Regular files in the snapshot. */
  files: number;
  /** Bytes read from the source (unchanged files are not read). */
  bytesRead: number;
  /** Plain bytes of chunks the repository did not have. */
  bytesNew: number;
  /** Sealed bytes sent to the repository (new chunks + manifest). */
  bytesStored: number;
  chunksNew: number;
  seconds: number;
  /** Bytes of all regular files in the snapshot. */
  bytesTotal: number;
  /** Files read: a hard-linked file once, whatever number of paths name it. */
  filesRead: number;
  filesUnchanged: number;
  skipped: SkippedEntry[];
  /**
   * What the caller should be told once, none of it a failure: a local index that could not be used (every
   * file read again), or one not saved after the commit. Absent when there is nothing to say.
   */
  warnings?: string[];
}

/**
 * A file whose mtime is this close to the start of the snapshot may change again without its times changing: it is
 * not remembered in the local index (the next snapshot reads it, once). Two reasons, the larger setting the window:
 * - A write through a shared mapping (np.memmap, LMDB, an mmap'd checkpoint) updates the times only when it
 *   faults on a clean page; writes to a page still dirty change nothing until the page is written back, within
 *   ~35 s with Linux's defaults (vm.dirty_expire_centisecs 3000, vm.dirty_writeback_centisecs 500). A file whose
 *   mtime is older than that had every page clean at the listing, so any later write moves its times. (A host
 *   tuned to hold dirty pages longer, laptop mode, shortens that margin.)
 * - A coarse mtime clock (2 s on FAT; 1 s on some network filesystems): a later write in the same tick keeps it.
 * By mtime alone, not ctime: judged by ctime too, every file whose times were set back within the window (a tar or
 * rsync -t extract just done, a chmod) would be read again by the next snapshot. What that leaves: a file
 * rewritten at its size after it was read, its mtime set back, within the same tick of a coarse ctime clock as its
 * listing (ext4 with 128-byte inodes, Linux before 6.13's multigrain times by a few ms; NFS, FUSE), is remembered
 * with its old chunks. The times are compared with this host's clock: on a network filesystem whose server's
 * clock is behind, the window is that much shorter.
 */
const RACY_WINDOW_NS = 60_000_000_000n;

/**
 * Filesystems whose writes through a mapping never update a file's times (tmpfs, ramfs: /dev/shm): a source there
 * is read whole at every snapshot, its stat trusted for nothing. Its data is in memory, so that is cheap.
 */
const TIMELESS_MMAP_FILESYSTEMS = new Set([0x01021994 /* tmpfs */, 0x858458f6 /* ramfs */]);

/**
 * The devices of `entries` whose files the local index may not vouch for (see TIMELESS_MMAP_FILESYSTEMS): per
 * device, not only the source's, as the listing crosses mount points (a memory-backed volume mounted under the
 * workspace). One statfs of a path on each device the source spans.
 */
async function untrustedDevices(source: string, entries: readonly SourceEntry[]): Promise<Set<number>> {
  const pathOn = new Map<number, string>();
  for (const e of entries) if (!pathOn.has(e.dev)) pathOn.set(e.dev, join(source, e.path));
  const untrusted = new Set<number>();
  for (const [dev, path] of pathOn) {
    const fs = await statfs(path).catch(() => undefined);
    if (fs !== undefined && TIMELESS_MMAP_FILESYSTEMS.has(Number(fs.type))) untrusted.add(dev);
  }
  return untrusted;
}

/** A source directory itself, its entries, what was left out, and when the listing began. */
export interface SourceListing {
  root: ManifestRoot;
  entries: SourceEntry[];
  skipped: SkippedEntry[];
  startedAt: { ms: number; ns: bigint };
}

/** Lists a snapshot's source as createSnapshot does: its .dumontignore, then `exclude`. */
export async function listSnapshotSource(
  source: string,
  exclude?: readonly string[],
  onDirectory?: (entries: number) => void,
  /** See listSourceTree. */
  leaveOut?: ReadonlyMap<string, string>,
): Promise<SourceListing> {
  const startedAt = { ms: performance.now(), ns: BigInt(Date.now()) * 1_000_000n };
  const root = resolve(source);
  // First: a source that cannot be read is said so, not as its .dumontignore that could not be (a root of mode 0700).
  await statSourceRoot(root);
  const exclusions = await loadExclusions(root, exclude);
  return { ...(await listSourceTree(root, exclusions, onDirectory, leaveOut)), startedAt };
}

export async function createSnapshot(options: CreateSnapshotOptions): Promise<CreateSnapshotResult> {
  const source = resolve(options.source);
  const ownPool = options.pool === undefined;
  const pool = options.pool ?? new SnapshotWorkerPool();
  const { sink } = options;
  try {
    // Progress while listing too (nothing to read is known yet): a walk of a huge tree is work, and a caller
    // watching for a stalled snapshot (the agent's heartbeat) must see it move.
    // Only once the listing has taken a second: a small tree's first report is what there is to read.
    const listingFrom = performance.now();
    const listed = () => {
      if (performance.now() - listingFrom >= 1000) options.onProgress?.({ bytesRead: 0, bytesToRead: 0 });
    };
    const { root, entries, skipped, startedAt } = await (options.listing ??
      listSnapshotSource(source, options.exclude, listed));
    const chunker = compileChunker(options.chunker ?? DEFAULT_CHUNKER);
    refuseUnfittingManifest(entries, chunker.max);
    // From the listing's start: a file changed after its lstat must fall in the racy window below.
    const started = startedAt.ms;
    const startNs = startedAt.ns;
    const { index: previous, unusable } = options.localIndex
      ? await readLocalIndex(options.localIndex.file, options.localIndex.scope)
      : { index: LocalIndex.empty(), unusable: undefined };
    const untrusted = options.localIndex ? await untrustedDevices(source, entries) : new Set<number>();

    // Per entry: the local index's entry for a file found unchanged, else -1; and the file's FileWork when it
    // is read (an index into `reading`), else -1. Unchanged files get no object of their own.
    const known = new Int32Array(entries.length).fill(-1);
    const workAt = new Int32Array(entries.length).fill(-1);
    const reading: FileWork[] = [];
    // Hard links: a file listed under several paths (a conda environment's files are links into its package
    // cache) is read once, under its first path; the others share its FileWork (`sharing`). Where that read
    // fails, each of the others is read on its own below: the file may still be there under its other names.
    const workOfInode = new Map<string, number>();
    const sharing: number[] = [];
    const readEntry = (e: number): void => {
      const entry = entries[e];
      known[e] = -1;
      const inode = entry.nlink > 1 ? `${entry.dev}:${entry.ino}` : undefined;
      const shared = inode === undefined ? undefined : workOfInode.get(inode);
      if (shared !== undefined && sameInodeState(reading[shared].entry, entry)) {
        workAt[e] = shared;
        sharing.push(e);
        return;
      }
      if (inode !== undefined) workOfInode.set(inode, reading.length);
      workAt[e] = reading.length;
      reading.push({ entry, first: 0, count: 0, segments: 0, position: 0 });
    };
    for (let e = 0; e < entries.length; e++) {
      const entry = entries[e];
      if (entry.type !== "file") continue;
      if (!untrusted.has(entry.dev)) {
        known[e] = previous.find(entry.path, entry.size, entry.mtimeNs, entry.ino, entry.ctimeNs);
      }
      if (known[e] < 0) readEntry(e);
    }
    // Trust the local index only for chunks the repository still holds (a prune may have removed some).
    const heldIds = await heldChunks(sink, previous, known, readEntry, pool);

    const stats = { bytesRead: 0, bytesNew: 0, bytesStored: 0, chunksNew: 0 };
    let bytesToRead = reading.reduce((sum, w) => sum + w.entry.size, 0);
    const table = new ChunkTable();
    const pipeline = new SegmentPipeline(
      source,
      pool,
      options.key,
      sink,
      chunker,
      options.segmentSize ?? DEFAULT_SEGMENT_SIZE,
      options.sealAhead ?? 0,
      stats,
      table,
      heldIds,
      options.readAhead ?? "auto",
    );
    try {
      options.onProgress?.({ bytesRead: 0, bytesToRead });
      const progress = () => options.onProgress?.({ bytesRead: stats.bytesRead, bytesToRead });
      await pipeline.run(reading, options.signal, progress).finally(() => pipeline.close());
      // A path that shared a read which failed gets a read of its own, in the pass below, from a fresh lstat of
      // it: the first path may have been removed or replaced while this one still names the file.
      for (const e of sharing) {
        if (!reading[workAt[e]].failed) continue;
        workAt[e] = reading.length;
        reading.push({ entry: entries[e], first: 0, count: 0, segments: 0, position: 0, failed: CHANGED });
      }
      // A file that changed while it was read (a checkpoint being rewritten, a log cut short) is read once more,
      // as it is now: left out, a restore would not have it at all.
      const again = await rereadable(
        source,
        reading.filter((w) => w.failed === CHANGED),
      );
      if (again.length > 0) {
        bytesToRead += again.reduce((sum, w) => sum + w.entry.size, 0);
        progress();
        await pipeline.run(again, options.signal, progress, true).finally(() => pipeline.close());
        for (const w of again) if (w.failed === CHANGED) w.failed = CHANGED_TWICE;
      }
    } finally {
      // Given back however the reads end (a sink that failed, an abort): the pool keeps what it lent until it closes.
      if (heldIds) pool.recycle(heldIds.buffer);
    }
    let files = 0;
    let bytesTotal = 0;
    for (let e = 0; e < entries.length; e++) {
      if (entries[e].type !== "file") continue;
      const w = workAt[e] >= 0 ? reading[workAt[e]] : undefined;
      if (w?.failed) skipped.push({ path: w.entry.path, reason: w.failed });
      else {
        files++;
        bytesTotal += entries[e].size;
      }
    }

    // The manifest's entries are made each time they are iterated, from the listing, the local index and the
    // chunk table, and dropped after: held whole, with their hex ids and mtime strings, they were ~250 bytes
    // a file for the rest of the snapshot. Object literals, not `{ ...common, type }`: a spread made each entry
    // ~5 µs slower to build and its JSON slower to write. Same keys, same order.
    function* manifestEntries(): Generator<ManifestEntry> {
      // Hard links: the first path of each (dev, ino) with more than one link, and its chunks; a later entry of
      // the same file with the same chunks names it (linkOf). Read apart (its first read failed) and changed in
      // between, a file is two.
      const firstOf = new Map<string, { path: string; chunks: string[] }>();
      const linkOf = (x: SourceEntry, chunks: string[]): string | undefined => {
        if (x.nlink < 2) return undefined;
        const inode = `${x.dev}:${x.ino}`;
        const first = firstOf.get(inode);
        if (!first) firstOf.set(inode, { path: x.path, chunks });
        else if (sameChunks(first.chunks, chunks)) return first.path;
        return undefined;
      };
      for (let e = 0; e < entries.length; e++) {
        const x = entries[e];
        const { path, mode, uid, gid } = x;
        const mtimeNs = String(x.mtimeNs);
        if (x.type === "dir") yield { path, mode, mtimeNs, uid, gid, type: "dir" };
        else if (x.type === "symlink") yield { path, mode, mtimeNs, uid, gid, type: "symlink", target: x.target ?? "" };
        else {
          let chunks: string[];
          let lengths: number[];
          if (known[e] >= 0) {
            chunks = previous.chunks(known[e]);
            lengths = previous.lengths(known[e]);
          } else {
            const w = reading[workAt[e]];
            if (w.failed) continue;
            chunks = table.hexIds(w.first, w.count);
            lengths = table.lengthList(w.first, w.count);
          }
          const link = linkOf(x, chunks);
          if (link === undefined) yield { path, mode, mtimeNs, uid, gid, type: "file", size: x.size, chunks, lengths };
          else yield { path, mode, mtimeNs, uid, gid, type: "file", size: x.size, chunks, lengths, linkOf: link };
        }
      }
    }
    const manifest: ManifestEntries = { root, entries: { [Symbol.iterator]: manifestEntries } };
    // A stop asked for meanwhile (Ctrl-C, the control plane's abort) commits nothing, however far the reads got.
    options.signal?.throwIfAborted();
    const forSink = await manifestForSink(
      sink,
      options.key,
      manifest,
      entries.length,
      previous,
      options.manifestPartBytes,
    );
    // Parts seal deterministically: one the last snapshot of this scope had is stored already (the writer skips
    // it), so it is not counted as stored again, unless the sink said it no longer holds it (a prune after a
    // forget removed it, or its copy is damaged): then it is stored again, and counted.
    forSink.parts.forEach((part, i) => {
      const id = forSink.ids[i];
      if (Buffer.isBuffer(part) && (!previous.manifests.has(id) || forSink.lost.has(id)))
        stats.bytesStored += part.length;
    });
    const seconds = (performance.now() - started) / 1000;
    options.signal?.throwIfAborted();
    const id = await sink.commit(
      forSink.parts,
      {
        workspace: options.meta.workspace,
        epoch: options.meta.epoch,
        tenant: options.meta.tenant,
        hostname: options.meta.hostname ?? hostname(),
        time: new Date(Number(startNs / 1_000_000n)).toISOString(),
        source,
        stats: {
          files,
          ...stats,
          seconds,
          filesSkipped: skipped.length,
          ...(skipped.length > 0 ? { skipped: skipped.slice(0, MAX_SKIPPED_LISTED).map(listedSkip) } : {}),
        },
      },
      manifest,
    );

    // Committed: from here on nothing fails the snapshot.
    const warnings: string[] = [];
    if (options.localIndex) {
      // Files changed within the racy window are left out: they may change again without their times changing.
      const window =
        options.racyWindowMs === undefined ? RACY_WINDOW_NS : BigInt(Math.round(options.racyWindowMs * 1e6));
      const cutoff = startNs - window;
      function* remembered(): Generator<RawLocalIndexFile> {
        for (let e = 0; e < entries.length; e++) {
          const { path, type, size, mtimeNs, ino, ctimeNs, dev } = entries[e];
          if (type !== "file" || mtimeNs >= cutoff || untrusted.has(dev)) continue;
          if (known[e] >= 0) {
            yield {
              path,
              size,
              mtimeNs,
              ino,
              ctimeNs,
              ids: previous.chunkIds(known[e]),
              lengths: previous.chunkLengths(known[e]),
            };
            continue;
          }
          const w = reading[workAt[e]];
          if (w.failed) continue;
          yield {
            path,
            size,
            mtimeNs,
            ino,
            ctimeNs,
            ids: table.idsOf(w.first, w.count),
            lengths: table.lengthsOf(w.first, w.count),
          };
        }
      }
      let saved = false;
      try {
        await saveLocalIndex(options.localIndex.file, {
          scope: options.localIndex.scope,
          snapshot: id,
          manifests: forSink.ids,
          manifestPlains: forSink.plains,
          files: { [Symbol.iterator]: remembered },
        });
        saved = true;
      } catch (err) {
        warnings.push(
          `snapshot ${id} is saved, but not its local index: ${(err as Error).message}; ` +
            "the next snapshot will read its files again",
        );
      }
      if (unusable !== undefined) {
        warnings.unshift(
          `the local index ${options.localIndex.file} could not be used (${unusable}), so every file was read ` +
            `again${saved ? "; this snapshot wrote it anew" : ""}`,
        );
      }
    }
    return {
      id,
      files,
      ...stats,
      seconds: (performance.now() - started) / 1000,
      bytesTotal,
      filesRead: reading.length,
      filesUnchanged: known.reduce((n, row) => (row >= 0 ? n + 1 : n), 0),
      skipped,
      ...(warnings.length > 0 ? { warnings } : {}),
    };
  } catch (err) {
    // What was stored is kept for the next attempt, the pack being filled too: an interrupted snapshot (a
    // signal, a file that could not be read) sends again only what never reached the repository.
    await sink.abort({ keep: true }).catch(() => {});
    throw err;
  } finally {
    if (ownPool) await pool.close();
  }
}

/** The manifest as a sink takes it, each part's id, and each part's plain digest (LocalIndex.storedParts). */
interface ManifestForSink {
  parts: ManifestPartBlob[];
  ids: string[];
  plains: string[];
  /** Ids of parts the last snapshot stored that the sink said it does not hold (missingManifestParts). */
  lost: Set<string>;
}

/**
 * The manifest as the sink takes it: in parts (cutManifestParts), or as one part for a sink that takes only
 * one (a control plane from before parts), which holds up to 64 MiB plain as before. A part the last snapshot
 * of this scope stored, cut again to the same bytes, is named by its id when the sink still holds it, neither
 * sealed (DEFLATE and AES: ~0.6 s of an unchanged 300,000-file snapshot) nor sent again.
 */
async function manifestForSink(
  sink: ChunkSink,
  key: Buffer,
  manifest: ManifestEntries,
  entryCount: number,
  previous: LocalIndex,
  partBytes?: number,
): Promise<ManifestForSink> {
  const maxParts = sink.maxManifestParts ?? MAX_MANIFEST_PARTS;
  const held = new Set<string>();
  const lost = new Set<string>();
  if (sink.missingManifestParts && previous.storedParts.size > 0) {
    const stored = [...new Set(previous.storedParts.values())];
    const missing = new Set(await sink.missingManifestParts(stored));
    for (const id of stored) (missing.has(id) ? lost : held).add(id);
  }
  const out: ManifestForSink = { parts: [], ids: [], plains: [], lost };
  const cutOptions = { partBytes: maxParts <= 1 ? Number.POSITIVE_INFINITY : partBytes, root: manifest.root };
  for (const part of cutManifestParts(manifest.entries, cutOptions)) {
    const plain = createHash("sha256").update(part.plain).digest("hex");
    const stored = previous.storedParts.get(plain);
    if (stored !== undefined && held.has(stored)) {
      out.parts.push({ stored });
      out.ids.push(stored);
    } else {
      const sealed = sealManifestPart(key, part);
      out.parts.push(sealed);
      out.ids.push(createHash("sha256").update(sealed).digest("hex"));
    }
    out.plains.push(plain);
  }
  if (out.parts.length > maxParts) {
    throw new Error(
      `the manifest of ${entryCount} entries has ${out.parts.length} parts; the repository takes at ` +
        `most ${maxParts}: ${SMALLER_SNAPSHOT_ADVICE}`,
    );
  }
  return out;
}

/**
 * Asks the sink which chunks the local index remembers it still holds. Unchanged files with a chunk it lost
 * are read again (`readEntry`); the rest come back raw and sorted in a buffer of the pool's (the workers
 * search them), or undefined when there are none.
 */
async function heldChunks(
  sink: ChunkSink,
  previous: LocalIndex,
  known: Int32Array,
  readEntry: (e: number) => void,
  pool: SnapshotWorkerPool,
): Promise<Buffer | undefined> {
  const distinct = previous.distinctIds();
  const n = distinct.length / 32;
  const absent = new Set<string>();
  for (let i = 0; i < n; i += OFFER_BATCH) {
    const batch: Buffer[] = [];
    for (let k = i; k < Math.min(n, i + OFFER_BATCH); k++) batch.push(distinct.subarray(32 * k, 32 * (k + 1)));
    for (const hex of await missingIds(sink, batch)) absent.add(hex);
  }
  if (absent.size > 0) {
    for (let e = 0; e < known.length; e++) {
      if (known[e] >= 0 && previous.chunks(known[e]).some((hex) => absent.has(hex))) readEntry(e);
    }
  }
  if (n === absent.size) return undefined;
  const held = pool.buffer(32 * (n - absent.size));
  let m = 0;
  for (let k = 0; k < n; k++) {
    if (absent.size > 0 && absent.has(distinct.toString("hex", 32 * k, 32 * (k + 1)))) continue;
    distinct.copy(held, 32 * m++, 32 * k, 32 * (k + 1));
  }
  return held;
}

/** A skipped entry as the snapshot's record lists it: the reason cut to MAX_SKIPPED_REASON characters. */
function listedSkip({ path, reason }: SkippedEntry): SkippedEntry {
  return { path, reason: reason.length > MAX_SKIPPED_REASON ? `${reason.slice(0, MAX_SKIPPED_REASON - 1)}…` : reason };
}

const CHANGED_TWICE = "it changed while it was being read, twice";

/** Whether two listed paths of one inode were listed in the same state (not changed between their lstats). */
function sameInodeState(a: SourceEntry, b: SourceEntry): boolean {
  return a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

function sameChunks(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((id, i) => id === b[i]);
}

/**
 * The changed files that are still regular files, each reset to be read again from its new size, mode and
 * time; the others keep their reason (a file now gone or replaced is what it is now).
 */
async function rereadable(root: string, changed: FileWork[]): Promise<FileWork[]> {
  const again: FileWork[] = [];
  for (const work of changed) {
    const st = await lstat(sourceFile(root, work.entry), { bigint: true }).catch(() => undefined);
    if (!st?.isFile()) continue;
    const size = Number(st.size);
    // In place: the manifest is written from the listing's entries.
    // Its path is followed here through whatever it leads through now: the read checks it is still there
    // (SegmentPipeline.run's `again`).
    Object.assign(work.entry, {
      size,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      nlink: Number(st.nlink),
      mtimeNs: st.mtimeNs,
      ino: st.ino,
      ctimeNs: st.ctimeNs,
      dev: Number(st.dev),
    });
    Object.assign(work, { first: 0, count: 0, failed: undefined, segments: 0, position: 0 });
    again.push(work);
  }
  return again;
}

/**
 * Refuses, from the listing alone, a workspace whose manifest cannot fit one snapshot: more than MAX_MANIFEST_BYTES
 * in all (over a million files), or a file whose list of chunks alone is more than a part holds (a file of TiBs).
 * Judged by the fewest bytes each entry can take (a file cut into chunks of the largest size), so nothing that
 * would fit is refused; but for a file that turns out unreadable when read (left out, the snapshot going on),
 * which counts here too: such a file of TiBs now refuses the snapshot. Found only when the manifest was cut,
 * the refusal came after every file had been read and sent: hours, for millions of files.
 */
function refuseUnfittingManifest(entries: readonly SourceEntry[], maxChunk: number): void {
  let least = 0;
  for (const e of entries) {
    const chunks = e.type === "file" ? Math.ceil(e.size / maxChunk) : 0;
    const bytes = manifestEntryMinBytes(e.type, Buffer.byteLength(e.path), chunks);
    if (bytes > MAX_PART_PLAIN_BYTES) {
      throw new RepositoryError(
        "invalid-argument",
        `${JSON.stringify(e.path)} (${e.size} bytes) is too large for a snapshot: its list of at least ${chunks} ` +
          `chunks is more than one part of a manifest holds (${MAX_PART_PLAIN_BYTES / 2 ** 20} MiB); leave it out ` +
          "(list it in the workspace's .dumontignore, or pass --exclude) or split it",
      );
    }
    least += bytes;
  }
  if (least > MAX_MANIFEST_BYTES) throw manifestTooLarge(entries.length);
}
