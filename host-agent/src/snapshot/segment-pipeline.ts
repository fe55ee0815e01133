// The read side of a snapshot: hands the files to read to the workers as segments (small files batched, large
// ones split), reads small files ahead from a cold page cache, turns what the workers sealed into each file's
// chunks in order (a ChunkTable), and sends the sink the chunks it lacks. createSnapshot (create-snapshot.ts)
// decides what to read and writes the manifest.
import * as fsSync from "node:fs";
import { type BigIntStats, constants, readFileSync, realpathSync } from "node:fs";
import { type FileHandle, open, readlink } from "node:fs/promises";
import { type ChunkSink, chunkCodec, type SealedChunk } from "@dumont/repository";
import type { ChunkTable } from "./chunk-table.js";
import {
  type CompiledChunker,
  type CutScanner,
  createCutScanner,
  findChunkEnd,
  GEAR,
  GEAR_SCAN_WASM,
} from "./chunker.js";
import { createUnderOpener, type UnderOpener } from "./open-under.js";
import { READ_AHEAD_MAX_FILE, ReadAhead } from "./read-ahead.js";
import type { FileSegment, SealedSegments } from "./segment-sealer.js";
import { type SourceEntry, sourceFile, withoutPath } from "./source-tree.js";
import type { SnapshotWorkerPool } from "./worker-pool.js";

/** A file this snapshot reads. */
export interface FileWork {
  entry: SourceEntry;
  /** Its chunks so far: rows first .. first + count - 1 of the snapshot's ChunkTable. */
  first: number;
  count: number;
  failed?: string;
  /** Segments the file was split into for the workers. */
  segments: number;
  /** End of the last chunk accepted so far. */
  position: number;
}

/** How a file that changed while it was read is left out (createSnapshot reads it once more). */
export const CHANGED = "it changed while it was being read";
/** Chunk ids asked of the sink in one call (one offer on the stream: the control plane takes MAX_OFFER_CHUNK_IDS). */
export const OFFER_BATCH = 4096;

/** The hex ids of `ids` the sink lacks, asked OFFER_BATCH at a time. */
export async function missingIds(sink: ChunkSink, ids: Buffer[]): Promise<Set<string>> {
  const missing = new Set<string>();
  for (let i = 0; i < ids.length; i += OFFER_BATCH) {
    for (const id of await sink.missing(ids.slice(i, i + OFFER_BATCH))) missing.add(id.toString("hex"));
  }
  return missing;
}

interface PlannedSegment {
  work: FileWork;
  /** Index of this segment within its file. */
  index: number;
  start: number;
  end: number;
}

/** What `offer` asked the sink (hex ids) and which of them it lacks. */
interface Offered {
  offered: Set<string>;
  missing: Set<string>;
}

interface Accepted {
  hex: string;
  id: Buffer;
  /** Empty when the worker left the chunk unsealed (the repository held it); `from` says where it lies. */
  blob: Buffer;
  plainLength: number;
  from?: { work: FileWork; start: number };
}

/**
 * Files up to this size are cut by one worker in one go; larger ones are split into segments this size or
 * less. 16 MiB ran as fast as 32 MiB on the dev machine with 50 MiB less peak memory (every segment in
 * flight holds an output buffer its size).
 */
export const DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024;
/**
 * Read-ahead starts once, over batches of at least READ_AHEAD_SAMPLE files, the storage below has been asked
 * for more than this share of the bytes the workers read (Linux's /proc/self/io `read_bytes`): from a warm
 * page cache it is asked for next to nothing, from a cold one for every byte and more (a 40-byte file costs a
 * 4 KiB block, and its inode). Timing the workers' reads instead was not reliable: on two busy cores a warm
 * read of a 50 KB file took up to 0.3 ms, more than a cold read of a small one.
 */
const READ_AHEAD_DISK_SHARE = 0.5;
const READ_AHEAD_SAMPLE = 64;
/** ... and at least this much in all: a warm run still reads ~100 KB (metadata, a worker's first load). */
const READ_AHEAD_MIN_STORAGE = 1024 * 1024;
/** Threads reading ahead: with the two workers, six reads in flight (measured: 2 readers 16.2 s, 8 6.2 s). */
const READ_AHEAD_THREADS = 4;
/** Batches planned ahead of the one handed to a worker, and read ahead once reading ahead is on. */
const READ_AHEAD_BATCHES = 4;
const BATCH_BYTES = 8 * 1024 * 1024;
const BATCH_FILES = 256;

/**
 * Hands files to the workers as segments (small files batched together, big files split), and turns the
 * sealed results into the file's chunk list in order. A segment of a split file starts at a fixed offset,
 * not at a real cut: its worker cuts from a little before it (`lookback`), which almost always finds the
 * file's own chain, and seals from there. Where it did not, the chains are joined by cutting (and sealing)
 * on this thread until they meet; either way the result is the same chunks a single pass gives.
 * Results are handled in the order the segments were handed out; a bounded number are in flight.
 */
export class SegmentPipeline {
  private chain: Promise<void> = Promise.resolve();
  private readonly inflight: Promise<void>[] = [];
  private readonly maxInflight: number;
  private failure: unknown;
  private scanner: CutScanner | undefined;
  /** How far before its start a split segment's worker begins cutting (see FileSegment.lookback). */
  private readonly lookback: number;
  /**
   * Threads reading small files into the page cache ahead of the workers (read-ahead.ts): started with
   * "always", or in "auto" once the reads show a cold page cache (READ_AHEAD_DISK_SHARE), and kept for the
   * rest of the snapshot. From a warm cache they would only read every file twice.
   */
  private readAhead: ReadAhead | undefined;
  /** Storage bytes read and bytes the workers read when this run started (READ_AHEAD_DISK_SHARE). */
  private readBaseline: { storage: number; read: number } | undefined;
  /** In a second read, the root with its symlinks resolved: where each file opened must be (FileSegment.expectPath). */
  private expectRoot: string | undefined;
  /** Directory handles this thread opens files through (openListed), kept for one run. */
  private opener: UnderOpener | undefined;
  /**
   * Ids (hex) of chunks in the table that the sink lacks and that could not be delivered: a worker left them
   * unsealed, and their file had changed when it was read again to seal them (sealFromFile). The next file
   * holding one delivers it, though the table has it already; without this, every other file holding it would
   * name a chunk never sent, and the commit would fail.
   */
  private readonly owed = new Set<string>();

  constructor(
    /** The source directory (absolute): the entries' paths are relative to it. */
    private readonly root: string,
    private readonly pool: SnapshotWorkerPool,
    private readonly key: Buffer,
    private readonly sink: ChunkSink,
    private readonly chunker: CompiledChunker,
    private readonly segmentSize: number,
    sealAhead: number,
    private readonly stats: { bytesRead: number; bytesNew: number; bytesStored: number; chunksNew: number },
    /** Where accepted chunks go, in file order; its ids are the chunks this snapshot has already delivered. */
    private readonly table: ChunkTable,
    private readonly heldIds: Buffer | undefined,
    private readonly readAheadMode: "auto" | "always" | "never",
  ) {
    if (segmentSize < 2 * chunker.max)
      throw new Error("the segment size must be at least twice the maximum chunk size");
    if (!Number.isInteger(sealAhead) || sealAhead < 0) throw new Error("sealAhead must be a whole number, 0 or more");
    this.maxInflight = Math.max(2, pool.threads + 1) + sealAhead;
    // Four average chunks: on the bench corpus the seams then needed 8 MB of stitching per GiB (103 MB
    // with none, 0 with eight); every byte looked back over is read and cut once more.
    this.lookback = 4 * chunker.avg;
  }

  /** Where a file to read is. */
  private file(work: FileWork): string {
    return sourceFile(this.root, work.entry);
  }

  /** Where a file read a second time must be found, symlinks resolved; undefined in a first read. */
  private expectedPath(work: FileWork): string | undefined {
    return this.expectRoot === undefined ? undefined : sourceFile(this.expectRoot, work.entry);
  }

  /**
   * The times a file must keep while it is read (FileSegment.listedTimes): as listed in a first read, as its
   * fresh lstat gave them in a second, where they hold unless it has grown (FileSegment.timesUnlessGrown).
   */
  private listedTimes(work: FileWork): FileSegment["listedTimes"] {
    return { mtimeNs: work.entry.mtimeNs, ctimeNs: work.entry.ctimeNs };
  }

  /** Stops the read-ahead threads, if any were started. */
  async close(): Promise<void> {
    await this.readAhead?.close();
    this.readAhead = undefined;
  }

  /**
   * Reads `works`. `again`: they are files read once more after they changed (createSnapshot), their entries
   * updated from an lstat of their paths since; each file opened is then checked to be at its own path, not
   * reached through a directory replaced by a symlink (which that lstat followed too).
   */
  async run(works: FileWork[], signal: AbortSignal | undefined, progress: () => void, again = false): Promise<void> {
    this.expectRoot = undefined;
    if (again) {
      try {
        this.expectRoot = realpathSync.native(this.root);
      } catch {
        this.expectRoot = this.root; // gone: every read fails anyway
      }
    }
    if (this.readAheadMode === "always") this.readAhead ??= new ReadAhead(READ_AHEAD_THREADS);
    const storage = this.readAheadMode === "auto" ? storageReadBytes() : undefined;
    this.readBaseline = storage === undefined ? undefined : { storage, read: this.stats.bytesRead };
    const planned = this.plan(works);
    // Batches planned but not yet handed to a worker, read ahead (once reading ahead is on) while the workers
    // finish the ones before; the first `readAheadOf` of them have been.
    const upcoming: PlannedSegment[][] = [];
    let readAheadOf = 0;
    const nextTask = (): PlannedSegment[] | undefined => {
      while (upcoming.length < READ_AHEAD_BATCHES) {
        const next = planned.next();
        if (next.done) break;
        upcoming.push(next.value);
      }
      for (; this.readAhead && readAheadOf < upcoming.length; readAheadOf++) {
        const small = upcoming[readAheadOf].filter((seg) => seg.work.segments === 1 && seg.end <= READ_AHEAD_MAX_FILE);
        if (small.length > 1) {
          this.readAhead.read(
            this.root,
            small.map((seg) => ({ path: seg.work.entry.path, size: seg.end })),
          );
        }
      }
      readAheadOf = Math.max(0, readAheadOf - 1);
      return upcoming.shift();
    };
    // Aborted once the last tasks are handed out, the steps still in hand deliver nothing more: they see the
    // failure (and the loop's check would never run again).
    const aborted = () => {
      this.failure ??= signal?.reason;
    };
    signal?.addEventListener("abort", aborted, { once: true });
    try {
      for (let task = nextTask(); task; task = nextTask()) {
        signal?.throwIfAborted();
        const sealed = this.pool.sealSegments(
          this.key,
          this.chunker,
          task.map((seg) => ({
            path: this.file(seg.work),
            fileSize: seg.work.entry.size,
            start: seg.start,
            end: seg.end,
            lookback: seg.index > 0 ? this.lookback : undefined,
            under: { root: this.root, path: seg.work.entry.path },
            ino: seg.work.entry.ino,
            dev: seg.work.entry.dev,
            expectPath: this.expectedPath(seg.work),
            sizeAsListed: this.expectRoot === undefined,
            listedTimes: this.listedTimes(seg.work),
            timesUnlessGrown: this.expectRoot !== undefined,
          })),
          this.heldIds,
        );
        // The ids are offered as soon as the worker has them, not when this segment's turn comes: over the
        // agent's stream the answer is a round trip to the control plane (behind the chunks it is still
        // checking), and asking in turn stalled the whole pipeline on it.
        const offered = sealed.then((r) => this.offer(r.ids));
        sealed.catch(() => {});
        offered.catch(() => {});
        const step = this.chain.then(async () => {
          let result: SealedSegments | undefined;
          try {
            result = await sealed;
            if (this.failure) return; // a failed run's later results: only their memory goes back
            await this.handle(task, result, await offered);
            progress();
          } catch (err) {
            this.failure ??= err;
          } finally {
            // The sinks copy what they take before put resolves. Given back whatever happened: the pool keeps
            // what it lent until it closes, and an agent's pool closes only once idle.
            if (result) this.pool.recycle(result.out.buffer as ArrayBuffer);
          }
        });
        this.chain = step;
        this.inflight.push(step);
        while (this.inflight.length >= this.maxInflight) await this.inflight.shift();
        if (this.failure) throw this.failure;
      }
    } finally {
      await Promise.allSettled(this.inflight.splice(0));
      signal?.removeEventListener("abort", aborted);
      this.opener?.close();
      this.opener = undefined;
    }
    if (this.failure) throw this.failure;
    signal?.throwIfAborted();
  }

  private *plan(works: FileWork[]): Generator<PlannedSegment[]> {
    let batch: PlannedSegment[] = [];
    let batchBytes = 0;
    for (const work of works) {
      const size = work.entry.size;
      if (size === 0) continue;
      if (size <= this.segmentSize) {
        work.segments = 1;
        batch.push({ work, index: 0, start: 0, end: size });
        batchBytes += size;
        if (batchBytes >= BATCH_BYTES || batch.length >= BATCH_FILES) {
          yield batch;
          batch = [];
          batchBytes = 0;
        }
        continue;
      }
      const count = Math.ceil(size / this.segmentSize);
      const each = Math.ceil(size / count);
      work.segments = count;
      for (let i = 0; i < count; i++) {
        if (batch.length > 0) {
          yield batch;
          batch = [];
          batchBytes = 0;
        }
        yield [{ work, index: i, start: i * each, end: Math.min(size, (i + 1) * each) }];
      }
    }
    if (batch.length > 0) yield batch;
  }

  /**
   * Asks the sink which of a worker's chunk ids it lacks (those this snapshot already delivered are left
   * out). A chunk seen again in a later segment is then not sent twice: `handle` only delivers chunks new
   * to this snapshot.
   */
  private async offer(ids: Buffer): Promise<Offered> {
    const offered = new Set<string>();
    const ask: Buffer[] = [];
    for (let at = 0; at < ids.length; at += 32) {
      if (this.table.has(ids, at)) continue;
      const hex = ids.toString("hex", at, at + 32);
      if (offered.has(hex)) continue;
      offered.add(hex);
      ask.push(ids.subarray(at, at + 32));
    }
    return { offered, missing: await missingIds(this.sink, ask) };
  }

  private async handle(task: PlannedSegment[], sealed: SealedSegments, offered: Offered): Promise<void> {
    if (this.readBaseline && !this.readAhead && task.length >= READ_AHEAD_SAMPLE) {
      const storage = (storageReadBytes() ?? this.readBaseline.storage) - this.readBaseline.storage;
      const read = this.stats.bytesRead + sealed.bytesRead - this.readBaseline.read;
      if (storage > READ_AHEAD_MIN_STORAGE && storage > READ_AHEAD_DISK_SHARE * read) {
        this.readAhead = new ReadAhead(READ_AHEAD_THREADS);
      }
    }
    const failed = new Map(sealed.errors.map((e) => [e.segment, e]));
    const perSegment: Accepted[][] = task.map(() => []);
    const starts: number[][] = task.map(() => []);
    const meta = sealed.chunks;
    for (let k = 0; k < meta.length / 5; k++) {
      const si = meta[5 * k];
      const blobAt = meta[5 * k + 3];
      const blobLength = meta[5 * k + 4];
      perSegment[si].push({
        hex: sealed.ids.toString("hex", 32 * k, 32 * k + 32),
        id: sealed.ids.subarray(32 * k, 32 * k + 32),
        blob: sealed.out.subarray(blobAt, blobAt + blobLength),
        plainLength: meta[5 * k + 2],
        from: blobLength === 0 ? { work: task[si].work, start: meta[5 * k + 1] } : undefined,
      });
      starts[si].push(meta[5 * k + 1]);
    }
    // The chunks to deliver: those new to the table, and again any that another file of this batch holds too,
    // or that is owed, in case the first cannot be sealed (deliver sends each once).
    const fresh: Accepted[] = [];
    const newHere = new Set<string>();
    const accept = (work: FileWork, chunk: Accepted): void => {
      // A file's chunks are one run of the table's rows: its segments are handled in turn, nothing between.
      if (work.count === 0) work.first = this.table.count;
      else if (work.first + work.count !== this.table.count) throw new Error(`${work.entry.path}: chunks out of turn`);
      work.count++;
      if (this.table.push(chunk.id, chunk.plainLength)) {
        fresh.push(chunk);
        newHere.add(chunk.hex);
      } else if (newHere.has(chunk.hex) || this.owed.has(chunk.hex)) fresh.push(chunk);
    };
    for (let si = 0; si < task.length; si++) {
      const seg = task[si];
      const work = seg.work;
      if (work.failed) continue;
      const error = failed.get(si);
      if (error !== undefined) {
        work.failed = error.changed ? CHANGED : error.elsewhere ? error.message : `cannot read: ${error.message}`;
        continue;
      }
      this.stats.bytesRead += seg.end - seg.start;
      if (work.segments === 1 || seg.index === 0) {
        for (const chunk of perSegment[si]) accept(work, chunk);
        const last = starts[si].length - 1;
        work.position = last < 0 ? 0 : starts[si][last] + perSegment[si][last].plainLength;
      } else {
        try {
          await this.stitch(work, seg, perSegment[si], starts[si], accept);
        } catch (err) {
          // The file vanished or shrank between the worker's read and this one.
          const code = (err as { code?: unknown }).code;
          if (typeof code !== "string") throw err;
          work.failed = readFailure(code, (err as Error).message);
          continue;
        }
      }
      if (seg.index === work.segments - 1 && work.position !== work.entry.size) {
        work.failed = CHANGED;
      }
    }
    await this.deliver(fresh, offered);
  }

  /** Joins the true chain of cuts (ending at work.position) to the segment's own chain. */
  private async stitch(
    work: FileWork,
    seg: PlannedSegment,
    chunks: Accepted[],
    starts: number[],
    accept: (work: FileWork, chunk: Accepted) => void,
  ): Promise<void> {
    const size = work.entry.size;
    let p = work.position;
    const segmentEnd =
      chunks.length > 0 ? starts[starts.length - 1] + chunks[chunks.length - 1].plainLength : seg.start;
    let from = starts.indexOf(p);
    if (from < 0 && p < segmentEnd) {
      this.scanner ??= createCutScanner(GEAR_SCAN_WASM, GEAR, this.chunker.max, findChunkEnd);
      const scanner = this.scanner;
      const buf = scanner.window;
      const handle = await this.openAgain(work);
      try {
        while (p < segmentEnd && p < size) {
          await readExactly(handle, buf, Math.min(size, p + this.chunker.max) - p, p);
          const end = scanner.findEnd(p, p, size, this.chunker);
          const { id, blob } = chunkCodec.sealChunk(this.key, buf.subarray(0, end - p));
          accept(work, { hex: id.toString("hex"), id, blob, plainLength: end - p });
          p = end;
          from = starts.indexOf(p);
          if (from >= 0) break;
        }
        await this.assertUnwritten(work, handle); // what the seam read is of the version the workers read
      } finally {
        await handle.close();
      }
    }
    if (from >= 0) {
      for (let i = from; i < chunks.length; i++) accept(work, chunks[i]);
      p = segmentEnd;
    }
    work.position = p;
  }

  /**
   * Sends the sink the new chunks it lacks: as answered to `offer`, and asked now for those sealed here (and
   * those owed). A chunk listed more than once is sent once, from the first copy that can be sealed.
   */
  private async deliver(fresh: Accepted[], offered: Offered): Promise<void> {
    if (fresh.length === 0) return;
    const late = new Map<string, Buffer>();
    for (const c of fresh) if (!offered.offered.has(c.hex)) late.set(c.hex, c.id);
    const missing =
      late.size === 0
        ? offered.missing
        : new Set([...offered.missing, ...(await missingIds(this.sink, [...late.values()]))]);
    const chunks: SealedChunk[] = [];
    const sent = new Set<string>();
    for (const c of fresh) {
      if (!missing.has(c.hex)) {
        this.owed.delete(c.hex); // the sink has it after all
        continue;
      }
      if (sent.has(c.hex)) continue;
      const blob = c.from ? await this.sealFromFile(c, c.from) : c.blob;
      if (!blob) {
        this.owed.add(c.hex);
        continue;
      }
      this.owed.delete(c.hex);
      sent.add(c.hex);
      chunks.push({ id: c.id, blob, plainLength: c.plainLength });
      this.stats.chunksNew++;
      this.stats.bytesNew += c.plainLength;
      this.stats.bytesStored += blob.length;
    }
    if (chunks.length > 0) await this.sink.put(chunks);
  }

  /**
   * Seals a chunk a worker left unsealed because the repository held it, and now lacks after all (pruned
   * between the question and the answer): read again from its file. If the bytes there changed, the file is
   * left out of the snapshot, as for any file that changes while it is read.
   */
  private async sealFromFile(chunk: Accepted, from: { work: FileWork; start: number }): Promise<Buffer | undefined> {
    const plain = Buffer.allocUnsafe(chunk.plainLength);
    try {
      const handle = await this.openAgain(from.work);
      try {
        await readExactly(handle, plain, plain.length, from.start);
      } finally {
        await handle.close();
      }
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code !== "string") throw err;
      from.work.failed = readFailure(code, (err as Error).message);
      return undefined;
    }
    const { id, blob } = chunkCodec.sealChunk(this.key, plain);
    if (id.equals(chunk.id)) return blob;
    from.work.failed = CHANGED;
    return undefined;
  }

  /**
   * Opens a file a worker read, to read part of it again on this thread (a seam, a chunk to seal), checked as
   * the worker's read was (segment-sealer.ts): the file the listing saw and, in a second read, at its path.
   */
  private async openAgain(work: FileWork): Promise<FileHandle> {
    const handle = await this.openListed(work);
    try {
      const st = await handle.stat({ bigint: true });
      if (!st.isFile() || st.ino !== work.entry.ino || Number(st.dev) !== work.entry.dev) {
        throw Object.assign(new Error("it was replaced while the snapshot ran"), { code: "ECHANGED" });
      }
      await this.assertUnwritten(work, handle, st);
      const expected = this.expectedPath(work);
      const opened = expected && (await readlink(`/proc/self/fd/${handle.fd}`).catch(() => undefined));
      if (opened !== undefined && opened !== expected) {
        const message = "a directory on its path was replaced while the snapshot ran (it leads elsewhere now)";
        throw Object.assign(new Error(message), { code: "EELSEWHERE" });
      }
      return handle;
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /**
   * A listed file opened to read again, as the workers open it: one directory at a time through handles
   * (open-under.ts), the file itself on libuv's threads (a hung mount holds one of those, not this thread).
   */
  private async openListed(work: FileWork): Promise<FileHandle> {
    this.opener ??= createUnderOpener(fsSync, this.root);
    return openSource(this.opener.locate(work.entry.path));
  }

  /**
   * Fails ECHANGED if the file opened as `handle` no longer has its listed times (in a second read, unless it
   * has grown: see FileSegment.timesUnlessGrown).
   */
  private async assertUnwritten(work: FileWork, handle: FileHandle, st?: BigIntStats): Promise<void> {
    const times = this.listedTimes(work);
    if (!times) return;
    const now = st ?? (await handle.stat({ bigint: true }));
    if (this.expectRoot !== undefined && now.size > BigInt(work.entry.size)) return;
    if (now.mtimeNs !== times.mtimeNs || now.ctimeNs !== times.ctimeNs) {
      throw Object.assign(new Error("it was written to while it was being read"), { code: "ECHANGED" });
    }
  }
}

/** Why a file whose read failed with `code` is left out (ECHANGED: read once more, see CHANGED). */
function readFailure(code: string, message: string): string {
  // Without the path it ends with (segment-sealer.ts, run from its source text in workers, does the same).
  const reason = withoutPath(message);
  return code === "ECHANGED" ? CHANGED : code === "EELSEWHERE" ? reason : `cannot read: ${reason}`;
}

/** Bytes this process has had read from storage so far (Linux's /proc/self/io), or undefined where unknown. */
function storageReadBytes(): number | undefined {
  try {
    const match = /^read_bytes:\s*(\d+)$/m.exec(readFileSync("/proc/self/io", "latin1"));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Opens a source file to read it again: never through a symlink, never waiting on a FIFO put in its place. */
function openSource(path: string): Promise<FileHandle> {
  return open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
}

/** Fills `buf` from its start with `length` bytes at `position`; a file that ends first shrank since it was listed. */
async function readExactly(handle: FileHandle, buf: Buffer, length: number, position: number): Promise<void> {
  for (let got = 0; got < length; ) {
    const { bytesRead } = await handle.read(buf, got, length - got, position + got);
    if (bytesRead === 0) throw Object.assign(new Error("it shrank while it was being read"), { code: "ECHANGED" });
    got += bytesRead;
  }
}
