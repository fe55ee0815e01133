// Worker threads that do the per-byte work of snapshots: read + chunk + seal file segments (hash, LZ4,
// AES-256-GCM), and on restore open blobs (decrypt, decompress, verify) and write the plain chunks into the
// files themselves (the fds are the process's), so it spreads over every core while the main thread only
// orchestrates. Workers run the repository codec and the segment sealer from their
// source text (eval workers), so the agent can ship as one bundled file with no separate worker script.
//
// Batches travel in SharedArrayBuffers that every worker is given once: a request names them by number.
// Transferring an ArrayBuffer instead hands the receiving thread "new" memory each time, and V8 answers
// every 64 MiB of that with a full garbage collection — measured at a quarter of the restore's main-thread
// time before this.
import * as fs from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import {
  alignedMemory,
  type ChunkBuffers,
  chunkCodec,
  copyBytes,
  createChunkCodec,
  createLz4Wasm,
  enableArrayBufferTransferInWorkers,
  LZ4_WASM,
  type Lz4WasmModules,
} from "@dumont/repository";
import { type CompiledChunker, createCutScanner, findChunkEnd, GEAR, GEAR_SCAN_WASM } from "./chunker.js";
import { createUnderOpener } from "./open-under.js";
import {
  createSegmentSealer,
  estimateSealedSize,
  type FileSegment,
  type SealedSegments,
  type SegmentSealer,
} from "./segment-sealer.js";

export interface WorkerPoolOptions {
  /** Worker threads; 0 runs everything on the calling thread. Defaults to the number of cores. */
  threads?: number;
  /**
   * Where the worker loads LZ4 from: a module path for `require`, or a `.node` addon for `process.dlopen`
   * (the single-binary build extracts the addon and passes its path). Defaults to the installed lz4-napi.
   */
  lz4Module?: string;
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
}

interface PoolWorker {
  worker: Worker;
  busy: number;
  pending: Map<number, Pending>;
}

/** A buffer handed to a worker: a shared one by number, or an ArrayBuffer transferred with the message. */
type BufferRef = { shared: number } | { transferred: ArrayBuffer };

type WorkerRequest =
  | { op: "share"; id: number; buffer: SharedArrayBuffer }
  | { op: "locks"; locks: SharedArrayBuffer }
  | { op: "unshare"; id: number }
  | {
      seq: number;
      op: "segments";
      key: Uint8Array;
      chunker: CompiledChunker;
      segments: FileSegment[];
      out?: BufferRef;
      /** Ids of chunks the repository holds (see SegmentSealer), in a buffer the workers share. */
      held?: { ref: BufferRef; length: number };
    }
  | {
      seq: number;
      op: "write";
      key: Uint8Array;
      data: BufferRef;
      dataLength: number;
      ranges: Int32Array;
      ids: ArrayBuffer;
      lengths: Int32Array;
      destStart: Int32Array;
      dests: Float64Array;
      creates?: NewFiles;
    };

interface WorkerReply {
  seq: number;
  error?: string;
  /** The worker's stack for `error`: for the log, never the message a user reads. */
  stack?: string;
}

/** A reply carrying sealed segments: in the shared buffer the request named, or transferred back. */
interface SealedReply extends WorkerReply {
  out: BufferRef;
}

/** Why a write failed: the error's message and, for a system error, its code (ENOSPC, EEXIST, ...). */
export interface WriteFailure {
  message: string;
  code?: string;
  /** The name the file was created by (a /proc/self/fd path), as the message may quote it. */
  at?: string;
}

/** What became of a batch of chunks opened and written to files (see `openAndWrite`). */
export interface WrittenChunks {
  /** Per chunk: why it could not be opened (damaged, wrong key, wrong length), or null. */
  errors: (string | null)[];
  /** Destinations (index into `dests` triples) whose write failed, with what failed. */
  writeErrors: [number, WriteFailure][];
  /** Bytes that went to disk with O_DIRECT (the rest went through the page cache). */
  directBytes: number;
}

/**
 * Files a worker creates, writes whole and closes itself (a destination fd of -1 - i means file i): a file
 * made of one chunk needs nothing from the calling thread. Creating, writing and finishing 2,000 small files
 * one libuv round trip at a time from the main thread took most of a restore's time for a tenth of its bytes.
 */
export interface NewFiles {
  /** Absolute paths, created with O_EXCL | O_NOFOLLOW (a fresh, empty target; nothing is followed). */
  paths: string[];
  modes: Int32Array;
  /** Modification (and access) time, in seconds. */
  mtimes: Float64Array;
  /** Owner and group of file i at [2i] and [2i + 1] (-1: left as created), when the restore gives owners back. */
  owners?: Float64Array;
}

/**
 * What openAndWrite keeps between batches (one per thread): the output memory (page-aligned unless `unaligned`),
 * whether O_DIRECT was refused, zeros to compare.
 */
type WriteScratch = { spare?: ArrayBuffer; unaligned?: boolean; noDirect?: boolean; zeros?: Buffer };

/**
 * Opens and verifies a batch of blobs, then writes chunk i to every destination in
 * `dests[destStart[i]] .. dests[destStart[i + 1]]`: triples (fd, O_DIRECT fd of the same file or -1, file
 * offset). Plain chunks go from this thread's own memory straight to the files: nothing travels back.
 * Self-contained: workers run it from its source text.
 *
 * Chunks that continue each other in one file are written as one run. Where the file has an O_DIRECT fd, the
 * run is laid out in page-aligned memory at the file offset's alignment, and its whole pages bypass the page
 * cache: on the dev VM buffered writes ran at ~400 MB/s of kernel CPU (page allocation and copy) against
 * 0.7-1.2 GB/s for O_DIRECT, and restore was bound by them. The partial pages at a run's ends go through
 * the page cache (a run never shares a whole page with another write, so the two never overlap).
 */
export function openAndWrite(
  codec: import("@dumont/repository").ChunkCodec,
  fs: typeof import("node:fs"),
  scratch: WriteScratch,
  /**
   * Shared by the workers: slot fd % length is held while writing to fd. Two threads writing into one file
   * at once only spin on its inode lock in the kernel (measured: 14% of a restore's CPU); waiting here sleeps.
   */
  fileLocks: Int32Array | undefined,
  key: Buffer,
  data: Uint8Array,
  ranges: Int32Array,
  ids: Uint8Array,
  lengths: Int32Array,
  destStart: Int32Array,
  dests: Float64Array,
  creates?: NewFiles,
): WrittenChunks {
  const PAGE = 4096;
  /** Aligned stretches shorter than this are not worth a device round trip of their own. */
  const MIN_DIRECT = 64 * 1024;
  const n = lengths.length;
  // Lay out: a chunk that does not continue the previous one in its file starts at out offset ≡ file offset
  // (mod PAGE) when the file takes O_DIRECT writes.
  const positions = new Int32Array(n);
  let pos = 0;
  let runFd = -1;
  let runEnd = -1;
  for (let i = 0; i < n; i++) {
    const length = Math.max(0, lengths[i]);
    if (destStart[i] < destStart[i + 1]) {
      const k = 3 * destStart[i];
      const fd = dests[k];
      const at = dests[k + 2];
      if (dests[k + 1] >= 0 && (fd !== runFd || at !== runEnd)) pos += ((at % PAGE) - (pos % PAGE) + PAGE) % PAGE;
      runFd = fd;
      runEnd = at + length;
    } else {
      runFd = -1;
    }
    positions[i] = pos;
    pos += length;
  }
  if (!scratch.spare || scratch.spare.byteLength < pos) {
    // A WebAssembly memory starts on a page boundary (a Buffer from the allocator is only 16-byte aligned).
    // Without WebAssembly (node --jitless) the memory is ordinary and every write goes through the page cache.
    const wasm = (
      globalThis as unknown as { WebAssembly?: { Memory: new (d: { initial: number }) => { buffer: ArrayBuffer } } }
    ).WebAssembly;
    const size = Math.max(pos, 2 * (scratch.spare?.byteLength ?? 0), 1);
    scratch.spare = wasm ? new wasm.Memory({ initial: Math.ceil(size / 65536) }).buffer : new ArrayBuffer(size);
    scratch.unaligned = !wasm;
  }
  const r = codec.openChunkBatch(key, data, ranges, ids, lengths, scratch.spare, positions);
  const out = r.out;
  const aligned = !scratch.unaligned && out.buffer === scratch.spare && out.byteOffset === 0;
  let directBytes = 0;

  // Zeros are not written: every file written here is new and already as long as it will be (the restore
  // truncates a file of several chunks to its size; createFile sizes a one-chunk file of zeros), so a range
  // left alone reads as zeros and stays a hole. A chunk of zeros is skipped whole, and within a run that
  // holds data so is every 64 KiB block of zeros aligned in the file (see writeSparse). A sparse file (a
  // preallocated dataset, a disk image) restores about as sparse as it was instead of filling the disk, and
  // runs of zeros cost no writes. Data is told from zeros by its first or last byte in practice; only zeros
  // are compared whole (memcmp, 64 KiB at a time).
  const HOLE_BLOCK = 64 * 1024;
  const allZero = (at: number, length: number): boolean => {
    if (length <= 0 || out[at] !== 0 || out[at + length - 1] !== 0) return false;
    scratch.zeros ??= Buffer.alloc(HOLE_BLOCK);
    for (let done = 0; done < length; done += HOLE_BLOCK) {
      const piece = Math.min(HOLE_BLOCK, length - done);
      if (out.compare(scratch.zeros, 0, piece, at + done, at + done + piece) !== 0) return false;
    }
    return true;
  };
  const zero = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    if (r.errors[i] === null && allZero(r.plainRanges[2 * i], r.plainRanges[2 * i + 1])) zero[i] = 1;
  }

  // The code travels beside the message (a worker's reply carries plain data, not the Error), so the restore
  // can tell a full disk from a file it may not write without reading the message.
  const failureOf = (err: unknown): WriteFailure => {
    const code = (err as { code?: unknown } | null)?.code;
    return {
      message: err instanceof Error ? err.message : String(err),
      ...(typeof code === "string" ? { code } : {}),
    };
  };
  const writeFully = (fd: number, from: number, length: number, position: number): void => {
    for (let done = 0; done < length; ) done += fs.writeSync(fd, out, from + done, length - done, position + done);
  };
  // Writes out[from, from + length) at `position`; returns why it failed, or null.
  type WriteRange = (fd: number, direct: number, from: number, position: number, length: number) => WriteFailure | null;
  const writeRun: WriteRange = (fd, direct, from, position, length) => {
    const slot = fileLocks ? fd % fileLocks.length : -1;
    if (fileLocks) while (Atomics.compareExchange(fileLocks, slot, 0, 1) !== 0) Atomics.wait(fileLocks, slot, 1);
    try {
      const end = position + length;
      const middle = Math.min(end, Math.ceil(position / PAGE) * PAGE);
      const tail = Math.max(middle, Math.floor(end / PAGE) * PAGE);
      if (
        direct >= 0 &&
        aligned &&
        !scratch.noDirect &&
        tail - middle >= MIN_DIRECT &&
        (from - position) % PAGE === 0
      ) {
        writeFully(fd, from, middle - position, position);
        try {
          writeFully(direct, from + (middle - position), tail - middle, middle);
          directBytes += tail - middle;
        } catch (err) {
          if ((err as { code?: unknown }).code !== "EINVAL") throw err;
          scratch.noDirect = true; // this filesystem takes no O_DIRECT after all: page cache from now on
          writeFully(fd, from + (middle - position), tail - middle, middle);
        }
        writeFully(fd, from + (tail - position), end - tail, tail);
      } else {
        writeFully(fd, from, length, position);
      }
      return null;
    } catch (err) {
      return failureOf(err);
    } finally {
      if (fileLocks) {
        Atomics.store(fileLocks, slot, 0);
        Atomics.notify(fileLocks, slot, 1);
      }
    }
  };

  // Creates file -1 - fd of `creates` with out[from, from + length) as its whole content; a file it could not
  // finish is removed (it was new).
  const createFile = (fd: number, from: number, length: number, zeros: boolean): WriteFailure | null => {
    const c = -1 - fd;
    const path = creates!.paths[c];
    let f = -1;
    let created = false;
    try {
      const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
      f = fs.openSync(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
      created = true;
      if (zeros) fs.ftruncateSync(f, length);
      else writeFully(f, from, length, 0);
      const owners = creates!.owners;
      if (owners) {
        try {
          fs.fchownSync(f, owners[2 * c], owners[2 * c + 1]); // before the mode: chown clears setuid
        } catch (err) {
          // An owner the system will not give (ownerRefused in restore-snapshot.ts): left as created.
          const code = (err as { code?: unknown }).code;
          if (code !== "EINVAL" && code !== "EPERM") throw err;
        }
      }
      fs.fchmodSync(f, creates!.modes[c]);
      const m = creates!.mtimes[c];
      const t = m < 0 ? String(m) : m; // Node reads a negative number as "now" (see timeArg in restore-snapshot)
      fs.futimesSync(f, t, t);
      const done = f;
      f = -1;
      fs.closeSync(done);
      return null;
    } catch (err) {
      try {
        if (f >= 0) fs.closeSync(f);
        // unlink, not rm: rm would empty a directory swapped in under the name, following what it holds.
        if (created) fs.unlinkSync(path);
      } catch {
        // reported below; the restore names the file as not restored
      }
      return { ...failureOf(err), at: path };
    }
  };
  /** writeRun, leaving out the file's whole HOLE_BLOCKs of zeros in out[from, from + length). */
  const writeSparse: WriteRange = (fd, direct, from, position, length) => {
    const end = position + length;
    let pending = position; // file offset where the data not yet written starts
    for (let b = Math.ceil(position / HOLE_BLOCK) * HOLE_BLOCK; b + HOLE_BLOCK <= end; b += HOLE_BLOCK) {
      if (!allZero(from + (b - position), HOLE_BLOCK)) continue;
      if (b > pending) {
        const error = writeRun(fd, direct, from + (pending - position), pending, b - pending);
        if (error !== null) return error;
      }
      pending = b + HOLE_BLOCK;
    }
    return end > pending ? writeRun(fd, direct, from + (pending - position), pending, end - pending) : null;
  };

  /** Writes chunk bytes out[from, from + length) (chunk c's alone when `c` is given) to one destination. */
  const writeTo = (
    fd: number,
    direct: number,
    from: number,
    position: number,
    length: number,
    c = -1,
  ): WriteFailure | null => {
    if (fd < 0) return createFile(fd, from, length, c >= 0 && zero[c] === 1);
    return c >= 0 && zero[c] === 1 ? null : writeSparse(fd, direct, from, position, length);
  };

  const writeErrors: [number, WriteFailure][] = [];
  for (let i = 0; i < n; ) {
    if (r.errors[i] !== null || destStart[i] === destStart[i + 1]) {
      i++;
      continue;
    }
    // The run: the chunks after i that opened fine and continue it, in the same file and in `out`.
    const k0 = destStart[i];
    const fd = dests[3 * k0];
    const from = r.plainRanges[2 * i];
    const start = dests[3 * k0 + 2];
    let length = r.plainRanges[2 * i + 1];
    let j = i + 1;
    while (
      fd >= 0 &&
      zero[i] === 0 &&
      j < n &&
      zero[j] === 0 &&
      r.errors[j] === null &&
      destStart[j] < destStart[j + 1] &&
      dests[3 * destStart[j]] === fd &&
      dests[3 * destStart[j] + 2] === start + length &&
      r.plainRanges[2 * j] === from + length
    ) {
      length += r.plainRanges[2 * j + 1];
      j++;
    }
    const error = writeTo(fd, dests[3 * k0 + 1], from, start, length, j === i + 1 ? i : -1);
    if (error !== null) for (let c = i; c < j; c++) writeErrors.push([destStart[c], error]);
    // Other uses of the same chunks (one chunk can appear in several files, or twice in one): one by one.
    for (let c = i; c < j; c++) {
      for (let k = destStart[c] + 1; k < destStart[c + 1]; k++) {
        const e = writeTo(dests[3 * k], -1, r.plainRanges[2 * c], dests[3 * k + 2], r.plainRanges[2 * c + 1], c);
        if (e !== null) writeErrors.push([k, e]);
      }
    }
    i = j;
  }
  return { errors: r.errors, writeErrors, directBytes };
}

// Runs inside the worker. Must not reference anything outside itself: it is shipped as source text.
function workerMain(
  makeCodec: typeof createChunkCodec,
  makeSealer: typeof createSegmentSealer,
  makeScanner: typeof createCutScanner,
  cutFinder: typeof findChunkEnd,
  write: typeof openAndWrite,
  makeLz4Wasm: typeof createLz4Wasm,
  makeOpener: typeof createUnderOpener,
  gear: number[],
  wasm: { gearScan: string; lz4: Lz4WasmModules },
  lz4Module: string,
  req: NodeJS.Require,
): void {
  const crypto = req("node:crypto") as typeof import("node:crypto");
  const workerThreads = req("node:worker_threads") as typeof import("node:worker_threads");
  // lz4-napi is the fallback where WebAssembly is missing: loaded on first use only (~20 ms and a few MiB a
  // worker otherwise, at every start of the pool).
  type Lz4Napi = { compressSync(d: Buffer): Buffer; uncompressSync(d: Buffer): Buffer };
  let lz4: Lz4Napi | undefined;
  const napi = (): Lz4Napi => {
    if (lz4) return lz4;
    if (lz4Module.endsWith(".node")) {
      const mod = { exports: {} as Lz4Napi };
      process.dlopen(mod, lz4Module);
      lz4 = mod.exports;
    } else {
      lz4 = req(lz4Module) as Lz4Napi;
    }
    return lz4;
  };
  const lz4Wasm = makeLz4Wasm(wasm.lz4);
  const codec = makeCodec({
    createHash: crypto.createHash,
    createCipheriv: crypto.createCipheriv,
    createDecipheriv: crypto.createDecipheriv,
    randomFillSync: crypto.randomFillSync,
    compress: (d) => napi().compressSync(d),
    uncompress: (d) => napi().uncompressSync(d),
    lz4Encoder: lz4Wasm?.encoder,
    lz4Decoder: lz4Wasm?.decoder,
  });
  const gearTable = Uint32Array.from(gear);
  const sealer = makeSealer({
    codec,
    makeScanner: (size) => makeScanner(wasm.gearScan, gearTable, size, cutFinder),
    fs: req("node:fs"),
    makeOpener: (root) => makeOpener(req("node:fs"), root),
  });
  const port = workerThreads.parentPort!;
  const fs = req("node:fs") as typeof import("node:fs");
  const scratch: WriteScratch = {};
  let fileLocks: Int32Array | undefined;
  const shared = new Map<number, SharedArrayBuffer>();
  const resolveRef = (ref: BufferRef | undefined): ArrayBufferLike | undefined =>
    ref === undefined ? undefined : "shared" in ref ? shared.get(ref.shared) : ref.transferred;
  // The output goes back by number when it landed in the shared buffer the request offered.
  const reply = (seq: number, offered: BufferRef | undefined, out: Buffer, fields: object, transfer: ArrayBuffer[]) => {
    if (offered && "shared" in offered && out.buffer === shared.get(offered.shared)) {
      port.postMessage({ seq, out: offered, ...fields }, transfer);
    } else {
      port.postMessage({ seq, out: { transferred: out.buffer }, ...fields }, [out.buffer as ArrayBuffer, ...transfer]);
    }
  };
  port.on("message", (msg: WorkerRequest) => {
    if (msg.op === "share") {
      shared.set(msg.id, msg.buffer);
      return;
    }
    if (msg.op === "unshare") {
      shared.delete(msg.id);
      return;
    }
    if (msg.op === "locks") {
      fileLocks = new Int32Array(msg.locks);
      return;
    }
    try {
      const key = Buffer.from(msg.key);
      if (msg.op === "segments") {
        const held = msg.held && new Uint8Array(resolveRef(msg.held.ref)!, 0, msg.held.length);
        const spare = resolveRef(msg.out) as ArrayBuffer | undefined;
        const r = sealer.sealSegments(key, msg.chunker, msg.segments, spare, held);
        const fields = {
          ids: r.ids.buffer,
          idsLength: r.ids.length,
          chunks: r.chunks,
          errors: r.errors,
          bytesRead: r.bytesRead,
        };
        reply(msg.seq, msg.out, r.out, fields, [r.ids.buffer as ArrayBuffer]);
      } else {
        const data = new Uint8Array(resolveRef(msg.data)!, 0, msg.dataLength);
        const r = write(
          codec,
          fs,
          scratch,
          fileLocks,
          key,
          data,
          msg.ranges,
          new Uint8Array(msg.ids),
          msg.lengths,
          msg.destStart,
          msg.dests,
          msg.creates,
        );
        // A transferred input goes back, so its memory is reused for the next batch.
        const back = "transferred" in msg.data ? [msg.data.transferred] : [];
        port.postMessage({ seq: msg.seq, ...r, data: back[0] }, back);
      }
    } catch (err) {
      // The message for whoever reads the failure; the stack apart, for the log (a user is shown no stack trace).
      const error = err instanceof Error ? err.message : String(err);
      port.postMessage({ seq: msg.seq, error, stack: err instanceof Error ? err.stack : undefined });
    }
  });
}

/**
 * Shared buffers are sized in steps of this, so batches of similar size reuse each other's (with 4 MiB
 * steps a 1 GiB restore made 31 buffers for 6 in use at once; uneven LZ4 batches kept missing the idle ones).
 */
const SHARED_STEP = 8 * 1024 * 1024;
/**
 * Idle shared buffers kept for reuse; beyond that they are dropped (and unshared). Enough for what a streamed
 * restore holds at once: its receive queue (up to 64 MiB in 8 MiB buffers) and a batch per worker. With 4, each
 * restore kept allocating fresh ones and the agent's peak RSS grew by 120-330 MiB. An idle buffer is memory the
 * pool had in use at once a moment before, and the whole pool is closed once the agent is idle.
 */
const MAX_IDLE_SHARED = 16;

export class SnapshotWorkerPool {
  private readonly workers: PoolWorker[] = [];
  private readonly spares: ArrayBuffer[] = [];
  /** Every shared buffer the workers know, by its number. */
  private readonly sharedIds = new Map<ArrayBufferLike, number>();
  private readonly idleShared: SharedArrayBuffer[] = [];
  private nextSharedId = 0;
  private seq = 0;
  /** Requests waiting for an idle worker. */
  private readonly queue: {
    request: Extract<WorkerRequest, { seq: number }>;
    transfer: ArrayBuffer[];
    resolve(value: unknown): void;
    reject(err: Error): void;
  }[] = [];
  private closed = false;
  private closing: Promise<void> | undefined;
  private failure: Error | undefined;
  private localSealer: SegmentSealer | undefined;
  private readonly localScratch: WriteScratch = {};

  constructor(options: WorkerPoolOptions = {}) {
    const threads = options.threads ?? availableParallelism();
    if (threads <= 0) {
      this.localSealer = createSegmentSealer({
        codec: chunkCodec,
        makeScanner: (size) => createCutScanner(GEAR_SCAN_WASM, GEAR, size, findChunkEnd),
        fs,
        makeOpener: (root) => createUnderOpener(fs, root),
      });
      return;
    }
    const lz4Module = options.lz4Module ?? createRequire(import.meta.url).resolve("lz4-napi");
    const wasmModules = { gearScan: GEAR_SCAN_WASM, lz4: LZ4_WASM };
    const source =
      `(${workerMain.toString()})((${createChunkCodec.toString()}), (${createSegmentSealer.toString()}), ` +
      `(${createCutScanner.toString()}), (${findChunkEnd.toString()}), (${openAndWrite.toString()}), ` +
      `(${createLz4Wasm.toString()}), (${createUnderOpener.toString()}), ${JSON.stringify([...GEAR])}, ` +
      `${JSON.stringify(wasmModules)}, ${JSON.stringify(lz4Module)}, ` +
      // Eval workers are CommonJS, unless the parent runs with --input-type=module (inherited): then no require.
      `typeof require === "function" ? require : process.getBuiltinModule("node:module").createRequire(${JSON.stringify(lz4Module)}));`;
    const fileLocks = new SharedArrayBuffer(4 * 1024);
    // So the workers' codecs free each cipher output once used (see chunk-codec.ts).
    enableArrayBufferTransferInWorkers();
    for (let i = 0; i < threads; i++) {
      const worker = new Worker(source, { eval: true });
      const entry: PoolWorker = { worker, busy: 0, pending: new Map() };
      worker.on("message", (msg: WorkerReply) => {
        const p = entry.pending.get(msg.seq);
        if (!p) return;
        entry.pending.delete(msg.seq);
        // Only a worker with work in hand keeps the process alive; once closing, every worker does until its
        // 'exit' (close() waits for it, and it arrives only while the worker is ref'd: see ReadAhead).
        if (--entry.busy === 0 && !this.closed) worker.unref();
        this.dispatch();
        if (msg.error !== undefined) p.reject(workerError(msg.error, msg.stack));
        else p.resolve(msg);
      });
      worker.on("error", (err) => this.fail(entry, err));
      worker.on("exit", (code) => {
        if (!this.closed) this.fail(entry, new Error(`snapshot worker exited with code ${code}`));
        // Closed with work in hand (an agent replacing a broken pool while another operation still used it): that
        // work fails, rather than wait for ever for a reply no worker will send.
        else rejectAll(entry.pending, new Error("the snapshot worker pool was closed while this work ran"));
      });
      worker.postMessage({ op: "locks", locks: fileLocks });
      worker.unref();
      this.workers.push(entry);
    }
  }

  /** Worker threads (0 when work runs on the calling thread). */
  get threads(): number {
    return this.workers.length;
  }

  /**
   * Reads, chunks and seals file segments. `held` (sorted 32-byte ids of chunks the repository holds, see
   * SegmentSealer) must come from `buffer`, so the workers see it without a copy.
   */
  async sealSegments(
    key: Buffer,
    chunker: CompiledChunker,
    segments: FileSegment[],
    held?: Buffer,
  ): Promise<SealedSegments> {
    if (this.localSealer) {
      const spare = this.takeSpare(0, true);
      try {
        return this.localSealer.sealSegments(key, chunker, segments, spare, held);
      } catch (err) {
        if (spare) this.recycle(spare);
        throw err;
      }
    }
    if (held && !this.isShared(held.buffer)) throw new Error("held ids must be in a buffer from pool.buffer()");
    const out = this.buffer(estimateSealedSize(segments, chunker, chunkCodec.overhead));
    const r = (await this.run(
      {
        seq: 0,
        op: "segments",
        key: Uint8Array.from(key),
        chunker,
        segments,
        out: this.refOf(out),
        held: held && { ref: this.refOf(held), length: held.length },
      },
      [],
    ).catch((err: unknown) => {
      // The worker that had it answered, died or was ended: nothing writes to it any more.
      this.recycle(out.buffer);
      throw err;
    })) as SealedReply & {
      ids: ArrayBuffer;
      idsLength: number;
      chunks: Float64Array;
      errors: SealedSegments["errors"];
      bytesRead: number;
    };
    return {
      out: this.bufferOf(r.out, out),
      ids: Buffer.from(r.ids, 0, r.idsLength),
      chunks: r.chunks,
      errors: r.errors,
      bytesRead: r.bytesRead,
    };
  }

  /**
   * Hands a buffer back once nothing refers to it any more, so a later batch reuses its memory (fresh large
   * buffers cost page faults and garbage collections).
   */
  recycle(buffer: ArrayBufferLike): void {
    const id = this.sharedIds.get(buffer);
    if (id !== undefined) {
      if (this.idleShared.length < MAX_IDLE_SHARED) this.idleShared.push(buffer as SharedArrayBuffer);
      else this.unshare(buffer, id);
      return;
    }
    if (buffer.byteLength > 0 && this.spares.length < 2 && !(buffer instanceof SharedArrayBuffer)) {
      this.spares.push(buffer as ArrayBuffer);
    }
  }

  /**
   * A buffer of at least `size` bytes, shared with the workers (reused when one is idle); hand it to
   * `writeChunks` or `recycle` it.
   */
  buffer(size: number): Buffer {
    if (this.localSealer) {
      const spare = this.takeSpare(size);
      return spare ? Buffer.from(spare, 0, size) : Buffer.allocUnsafeSlow(size);
    }
    let best = -1;
    for (let i = 0; i < this.idleShared.length; i++) {
      const len = this.idleShared[i].byteLength;
      if (len >= size && (best < 0 || len < this.idleShared[best].byteLength)) best = i;
    }
    if (best >= 0) return Buffer.from(this.idleShared.splice(best, 1)[0], 0, size);
    // Page-aligned: packs are read into these with O_DIRECT (FileBlobStore.getRange).
    const shared = alignedMemory(Math.max(SHARED_STEP, Math.ceil(size / SHARED_STEP) * SHARED_STEP), { shared: true });
    const id = ++this.nextSharedId;
    this.sharedIds.set(shared, id);
    // Messages to a worker arrive in order: it knows the buffer before any request names it.
    for (const w of this.workers) w.worker.postMessage({ op: "share", id, buffer: shared });
    return Buffer.from(shared, 0, size);
  }

  /** This pool's shared buffers as a ChunkSource's: blobs read or received into them reach the workers uncopied. */
  readonly chunkBuffers: ChunkBuffers = {
    allocate: (size) => this.buffer(size),
    release: (buffer) => this.recycle(buffer.buffer),
  };

  /** Whether `buffer` is memory the workers already share (see `buffer`): a batch in it travels by number. */
  isShared(buffer: ArrayBufferLike): boolean {
    return this.sharedIds.has(buffer);
  }

  private unshare(buffer: ArrayBufferLike, id: number): void {
    this.sharedIds.delete(buffer);
    for (const w of this.workers) w.worker.postMessage({ op: "unshare", id });
  }

  /** How a worker finds `buf`'s memory: by number when shared, else by transferring it (a copy if need be). */
  private refOf(buf: Buffer): BufferRef {
    const id = this.sharedIds.get(buf.buffer);
    return id !== undefined ? { shared: id } : { transferred: ownedBuffer(buf) };
  }

  /** The output a worker wrote: into the offered shared buffer, or one it transferred back. */
  private bufferOf(ref: BufferRef, offered: Buffer): Buffer {
    if ("shared" in ref) return Buffer.from(offered.buffer);
    this.recycle(offered.buffer);
    return Buffer.from(ref.transferred);
  }

  /** The smallest spare of at least `size` bytes (or the largest, with `largest`). */
  private takeSpare(size: number, largest = false): ArrayBuffer | undefined {
    let best = -1;
    for (let i = 0; i < this.spares.length; i++) {
      const len = this.spares[i].byteLength;
      if (len < size) continue;
      if (best < 0 || (largest ? len > this.spares[best].byteLength : len < this.spares[best].byteLength)) best = i;
    }
    return best < 0 ? undefined : this.spares.splice(best, 1)[0];
  }

  /**
   * Opens and verifies blobs given as (offset, length) pairs into `data`, with their 32-byte ids back to back
   * and the plain length each must have, and writes chunk i to every (fd, O_DIRECT fd or -1, offset) triple
   * in `dests[destStart[i]] .. dests[destStart[i + 1]]` (see `openAndWrite`); an fd of -1 - i creates file i
   * of `creates` whole. The fds must stay open until this resolves. `data` (best taken from `buffer()`) is
   * handed over: do not use it after.
   */
  async writeChunks(
    key: Buffer,
    data: Buffer,
    ranges: Int32Array,
    ids: Buffer,
    lengths: Int32Array,
    destStart: Int32Array,
    dests: Float64Array,
    creates?: NewFiles,
    /** `recycle: false` leaves `data`'s memory to the caller (it is shared by several batches). */
    options: { recycle?: boolean } = {},
  ): Promise<WrittenChunks> {
    const recycle = options.recycle ?? true;
    if (this.localSealer) {
      try {
        return openAndWrite(
          chunkCodec,
          fs,
          this.localScratch,
          undefined,
          key,
          data,
          ranges,
          ids,
          lengths,
          destStart,
          dests,
          creates,
        );
      } finally {
        if (recycle && data.byteOffset === 0) this.recycle(data.buffer as ArrayBuffer);
      }
    }
    const input = this.refOf(data);
    const idsCopy = ids.buffer.slice(ids.byteOffset, ids.byteOffset + ids.byteLength) as ArrayBuffer;
    const transfer = [...("transferred" in input ? [input.transferred] : []), idsCopy];
    const r = (await this.run(
      {
        seq: 0,
        op: "write",
        key: Uint8Array.from(key),
        data: input,
        dataLength: data.byteLength,
        ranges,
        ids: idsCopy,
        lengths,
        destStart,
        dests,
        creates,
      },
      transfer,
    ).catch((err: unknown) => {
      // Shared memory is still the pool's (a transferred input went with the worker's failure).
      if ("shared" in input && recycle) this.recycle(data.buffer);
      throw err;
    })) as WorkerReply & WrittenChunks & { data?: ArrayBuffer };
    if ("shared" in input) {
      if (recycle) this.recycle(data.buffer);
    } else {
      this.recycle(r.data ?? new ArrayBuffer(0)); // transferred there and back: not the caller's any more
    }
    return { errors: r.errors, writeErrors: r.writeErrors, directBytes: r.directBytes };
  }

  private run(request: Extract<WorkerRequest, { seq: number }>, transfer: ArrayBuffer[]): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new Error("the snapshot worker pool is closed"));
    return new Promise((resolve, reject) => {
      this.queue.push({ request, transfer, resolve, reject });
      this.dispatch();
    });
  }

  /**
   * Hands queued requests to idle workers, one each: a request waits here rather than behind another on a
   * busy worker. Queued on the least busy worker instead, restores ran one worker at 70 batches and the
   * other at 47 and idle for the last third of a second (ties went to the first worker).
   */
  private dispatch(): void {
    for (const entry of this.workers) {
      if (this.queue.length === 0 || this.failure) return;
      if (entry.busy > 0) continue;
      const job = this.queue.shift()!;
      const seq = ++this.seq;
      entry.busy++;
      entry.worker.ref();
      entry.pending.set(seq, { resolve: job.resolve, reject: job.reject });
      entry.worker.postMessage({ ...job.request, seq }, job.transfer);
    }
  }

  /** Whether a worker died: every later request fails, so the pool must be replaced. */
  get broken(): boolean {
    return this.failure !== undefined;
  }

  private fail(entry: PoolWorker, err: Error): void {
    this.failure ??= err;
    rejectAll(entry.pending, err);
    for (const job of this.queue.splice(0)) job.reject(err);
  }

  /** Ends the workers; work in hand fails. A second call waits for the first's. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      for (const job of this.queue.splice(0)) job.reject(new Error("the snapshot worker pool is closed"));
      await Promise.all(this.workers.map((w) => w.worker.terminate()));
    })();
    return this.closing;
  }
}

function rejectAll(pending: Map<number, Pending>, err: Error): void {
  for (const p of pending.values()) p.reject(err);
  pending.clear();
}

/**
 * The memory of `data` as an ArrayBuffer that may be handed to a worker: a copy unless `data` starts an
 * ArrayBuffer (shared memory this pool was not given, such as a pooled gRPC message's, cannot be transferred).
 */
function ownedBuffer(data: Buffer): ArrayBuffer {
  if (data.byteOffset === 0 && data.buffer instanceof ArrayBuffer) return data.buffer;
  const copy = Buffer.allocUnsafeSlow(data.byteLength);
  copyBytes(data, copy, 0);
  return copy.buffer as ArrayBuffer;
}

/** A worker's failure as an error of this thread: its message, and the worker's stack where a log shows stacks. */
function workerError(message: string, stack: string | undefined): Error {
  const err = new Error(`snapshot worker failed: ${message}`);
  if (stack !== undefined) err.stack = `${err.stack}\nin the worker: ${stack}`;
  return err;
}
