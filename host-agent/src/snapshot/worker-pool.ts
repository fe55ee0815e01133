// Worker threads that do the per-byte work of snapshots: read + chunk + seal file segments (hash, LZ4,
// AES-256-GCM), and open blobs on restore (decrypt, decompress, verify), so it spreads over every core while
// the main thread only orchestrates. Workers run the repository codec and the segment sealer from their
// source text (eval workers), so the agent can ship as one bundled file with no separate worker script.
import * as fs from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { chunkCodec, createChunkCodec, type OpenedChunkBatch } from "@dumont/repository";
import { type CompiledChunker, createCutScanner, findChunkEnd, GEAR, GEAR_SCAN_WASM } from "./chunker.js";
import { createSegmentSealer, type FileSegment, type SealedSegments, type SegmentSealer } from "./segment-sealer.js";

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

type WorkerRequest =
  | {
      seq: number;
      op: "segments";
      key: Uint8Array;
      chunker: CompiledChunker;
      segments: FileSegment[];
      spare?: ArrayBuffer;
    }
  | {
      seq: number;
      op: "open";
      key: Uint8Array;
      data: ArrayBuffer;
      dataLength: number;
      ranges: Int32Array;
      ids: ArrayBuffer;
      lengths: Int32Array;
      spare?: ArrayBuffer;
    };

// Runs inside the worker. Must not reference anything outside itself: it is shipped as source text.
function workerMain(
  makeCodec: typeof createChunkCodec,
  makeSealer: typeof createSegmentSealer,
  makeScanner: typeof createCutScanner,
  cutFinder: typeof findChunkEnd,
  gear: number[],
  wasm: string,
  lz4Module: string,
  req: NodeJS.Require,
): void {
  const crypto = req("node:crypto") as typeof import("node:crypto");
  const workerThreads = req("node:worker_threads") as typeof import("node:worker_threads");
  let lz4: { compressSync(d: Buffer): Buffer; uncompressSync(d: Buffer): Buffer };
  if (lz4Module.endsWith(".node")) {
    const mod = { exports: {} as typeof lz4 };
    process.dlopen(mod, lz4Module);
    lz4 = mod.exports;
  } else {
    lz4 = req(lz4Module);
  }
  const codec = makeCodec({
    createHash: crypto.createHash,
    createCipheriv: crypto.createCipheriv,
    createDecipheriv: crypto.createDecipheriv,
    randomFillSync: crypto.randomFillSync,
    compress: (d) => lz4.compressSync(d),
    uncompress: (d) => lz4.uncompressSync(d),
  });
  const gearTable = Uint32Array.from(gear);
  const sealer = makeSealer({
    codec,
    makeScanner: (size) => makeScanner(wasm, gearTable, size, cutFinder),
    fs: req("node:fs"),
  });
  const port = workerThreads.parentPort!;
  port.on("message", (msg: WorkerRequest) => {
    try {
      const key = Buffer.from(msg.key);
      if (msg.op === "segments") {
        const r = sealer.sealSegments(key, msg.chunker, msg.segments, msg.spare);
        port.postMessage(
          {
            seq: msg.seq,
            out: r.out.buffer,
            ids: r.ids.buffer,
            idsLength: r.ids.length,
            chunks: r.chunks,
            errors: r.errors,
            bytesRead: r.bytesRead,
          },
          [r.out.buffer as ArrayBuffer, r.ids.buffer as ArrayBuffer],
        );
      } else {
        const data = new Uint8Array(msg.data, 0, msg.dataLength);
        const r = codec.openChunkBatch(key, data, msg.ranges, new Uint8Array(msg.ids), msg.lengths, msg.spare);
        // The input goes back too, so its memory is reused for the next batch.
        port.postMessage({ seq: msg.seq, out: r.out.buffer, ranges: r.plainRanges, errors: r.errors, data: msg.data }, [
          r.out.buffer as ArrayBuffer,
          msg.data,
        ]);
      }
    } catch (err) {
      port.postMessage({ seq: msg.seq, error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    }
  });
}

export class SnapshotWorkerPool {
  private readonly workers: PoolWorker[] = [];
  private readonly spares: ArrayBuffer[] = [];
  private seq = 0;
  private closed = false;
  private failure: Error | undefined;
  private localSealer: SegmentSealer | undefined;

  constructor(options: WorkerPoolOptions = {}) {
    const threads = options.threads ?? availableParallelism();
    if (threads <= 0) {
      this.localSealer = createSegmentSealer({
        codec: chunkCodec,
        makeScanner: (size) => createCutScanner(GEAR_SCAN_WASM, GEAR, size, findChunkEnd),
        fs,
      });
      return;
    }
    const lz4Module = options.lz4Module ?? createRequire(import.meta.url).resolve("lz4-napi");
    const source =
      `(${workerMain.toString()})((${createChunkCodec.toString()}), (${createSegmentSealer.toString()}), ` +
      `(${createCutScanner.toString()}), (${findChunkEnd.toString()}), ${JSON.stringify([...GEAR])}, ` +
      `${JSON.stringify(GEAR_SCAN_WASM)}, ${JSON.stringify(lz4Module)}, ` +
      // Eval workers are CommonJS, unless the parent runs with --input-type=module (inherited): then no require.
      `typeof require === "function" ? require : process.getBuiltinModule("node:module").createRequire(${JSON.stringify(lz4Module)}));`;
    for (let i = 0; i < threads; i++) {
      const worker = new Worker(source, { eval: true });
      const entry: PoolWorker = { worker, busy: 0, pending: new Map() };
      worker.on("message", (msg: { seq: number; error?: string }) => {
        const p = entry.pending.get(msg.seq);
        if (!p) return;
        entry.pending.delete(msg.seq);
        // Only a worker with work in hand keeps the process alive.
        if (--entry.busy === 0) worker.unref();
        if (msg.error !== undefined) p.reject(new Error(`snapshot worker failed: ${msg.error}`));
        else p.resolve(msg);
      });
      worker.on("error", (err) => this.fail(entry, err));
      worker.on("exit", (code) => {
        if (!this.closed) this.fail(entry, new Error(`snapshot worker exited with code ${code}`));
      });
      worker.unref();
      this.workers.push(entry);
    }
  }

  /** Worker threads (0 when work runs on the calling thread). */
  get threads(): number {
    return this.workers.length;
  }

  /** Reads, chunks and seals file segments. */
  async sealSegments(key: Buffer, chunker: CompiledChunker, segments: FileSegment[]): Promise<SealedSegments> {
    const spare = this.takeSpare(0, true);
    if (this.localSealer) return this.localSealer.sealSegments(key, chunker, segments, spare);
    const r = (await this.run(
      { seq: 0, op: "segments", key: Uint8Array.from(key), chunker, segments, spare },
      spare ? [spare] : [],
    )) as {
      out: ArrayBuffer;
      ids: ArrayBuffer;
      idsLength: number;
      chunks: Float64Array;
      errors: SealedSegments["errors"];
      bytesRead: number;
    };
    return {
      out: Buffer.from(r.out),
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
  recycle(buffer: ArrayBuffer): void {
    if (buffer.byteLength > 0 && this.spares.length < 2) this.spares.push(buffer);
  }

  /** A buffer of at least `size` bytes, reused when one is spare; hand it to `open` or `recycle` it. */
  buffer(size: number): Buffer {
    const spare = this.takeSpare(size);
    return spare ? Buffer.from(spare, 0, size) : Buffer.allocUnsafeSlow(size);
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
   * and the plain length each must have. `data` (best taken from `buffer()`) is handed over: do not use it after.
   */
  async open(
    key: Buffer,
    data: Buffer,
    ranges: Int32Array,
    ids: Buffer,
    lengths: Int32Array,
  ): Promise<OpenedChunkBatch> {
    const spare = this.takeSpare(lengths.reduce((sum, n) => sum + Math.max(0, n), 0));
    if (this.localSealer) {
      const r = chunkCodec.openChunkBatch(key, data, ranges, ids, lengths, spare);
      if (data.byteOffset === 0) this.recycle(data.buffer as ArrayBuffer);
      return r;
    }
    const owned = ownedBuffer(data);
    const idsCopy = ids.buffer.slice(ids.byteOffset, ids.byteOffset + ids.byteLength) as ArrayBuffer;
    const transfer = [owned, idsCopy, ...(spare ? [spare] : [])];
    const r = (await this.run(
      {
        seq: 0,
        op: "open",
        key: Uint8Array.from(key),
        data: owned,
        dataLength: data.byteLength,
        ranges,
        ids: idsCopy,
        lengths,
        spare,
      },
      transfer,
    )) as { out: ArrayBuffer; ranges: Int32Array; errors: (string | null)[]; data: ArrayBuffer };
    this.recycle(r.data);
    return { out: Buffer.from(r.out), plainRanges: r.ranges, errors: r.errors };
  }

  private run(request: WorkerRequest, transfer: ArrayBuffer[]): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new Error("the snapshot worker pool is closed"));
    let entry = this.workers[0];
    for (const w of this.workers) if (w.busy < entry.busy) entry = w;
    const seq = ++this.seq;
    if (entry.busy++ === 0) entry.worker.ref();
    return new Promise((resolve, reject) => {
      entry.pending.set(seq, { resolve, reject });
      entry.worker.postMessage({ ...request, seq }, transfer);
    });
  }

  private fail(entry: PoolWorker, err: Error): void {
    this.failure ??= err;
    for (const p of entry.pending.values()) p.reject(err);
    entry.pending.clear();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }
}

/** The memory of `data` as an ArrayBuffer that may be handed to a worker (a copy unless `data` starts it). */
function ownedBuffer(data: Buffer): ArrayBuffer {
  if (data.byteOffset === 0) return data.buffer as ArrayBuffer;
  const copy = Buffer.allocUnsafeSlow(data.byteLength);
  data.copy(copy);
  return copy.buffer as ArrayBuffer;
}
