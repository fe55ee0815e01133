// The control plane's arrival check, on worker threads: every chunk an agent sends is opened (decrypted,
// decompressed) and its SHA-256 compared with its id, so an agent cannot store a chunk under a wrong id
// (which would corrupt other snapshots through dedup). On the main thread this check was about half of the
// control plane's CPU per GiB received, during which no agent stream was read, and it capped a whole fleet's
// snapshot intake at one core; here it runs on the other cores (up to 8), and the main thread moves bytes.
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { copyBytes, enableArrayBufferTransferInWorkers, type SealedChunk } from "@dumont/repository";

export interface VerifyRequest {
  seq: number;
  key: Uint8Array;
  /**
   * The blobs: staged back to back in an ArrayBuffer (transferred; it comes back with the reply), or where they
   * arrived, in the shared memory of a pooled message (see @dumont/proto's pooled-receiving.ts), read in place.
   */
  data: ArrayBuffer | SharedArrayBuffer;
  offsets: number[];
  lengths: number[];
  /** 32 bytes per chunk. */
  ids: Uint8Array;
  plainLengths: number[];
}

export interface VerifyReply {
  seq: number;
  /** Per chunk: why it is damaged, or null. */
  problems: (string | null)[];
  /** Why the batch could not be verified (verifyChunk threw): the call fails, nothing is said of the chunks. */
  error?: string;
  /** The staging buffer, for reuse (none when the blobs were read in shared memory). */
  data?: ArrayBuffer;
}

interface VerifierThread {
  worker: Worker;
  busy: number;
  pending: Map<number, { resolve: (problems: (string | null)[]) => void; reject: (err: Error) => void }>;
}

/** Staging buffers kept for reuse; a batch is one chunk message (about 1 MiB). */
const SPARE_BUFFERS = 8;
const STAGING_BYTES = 2 * 1024 * 1024;

export class ChunkVerifier {
  private readonly threads: VerifierThread[] = [];
  private readonly spares: ArrayBuffer[] = [];
  private seq = 0;
  private failure: Error | undefined;
  private stopping: Promise<void> | undefined;

  /**
   * `threads` defaults to one less than the cores (the main thread keeps the streams moving), at least one and
   * at most 8: one thread checks about a GB/s, so 8 outrun any network card, and each costs an isolate's memory.
   */
  constructor(threads = Math.max(1, Math.min(8, availableParallelism() - 1))) {
    if (!(Number.isInteger(threads) && threads > 0))
      throw new Error(`threads must be a positive integer, got ${threads}`);
    // So the threads' codecs free each decrypted piece once hashed (see chunk-codec.ts).
    enableArrayBufferTransferInWorkers();
    for (let i = 0; i < threads; i++) {
      const worker = new Worker(workerScript());
      const thread: VerifierThread = { worker, busy: 0, pending: new Map() };
      worker.unref(); // only a thread with work in hand keeps the process alive
      worker.on("message", (reply: VerifyReply) => {
        if (reply.data && this.spares.length < SPARE_BUFFERS) this.spares.push(reply.data);
        const p = thread.pending.get(reply.seq);
        thread.pending.delete(reply.seq);
        if (--thread.busy === 0) worker.unref();
        if (reply.error === undefined) p?.resolve(reply.problems);
        else p?.reject(new Error(`a chunk verifier thread could not verify a chunk: ${reply.error}`));
      });
      worker.on("error", (err) => this.fail(new Error(`a chunk verifier thread failed: ${err.message}`)));
      worker.on("exit", (code) => this.fail(new Error(`a chunk verifier thread exited (code ${code})`)));
      this.threads.push(thread);
    }
  }

  /** Set once a thread has failed or the verifier was closed: every call fails from then on (make a new one). */
  get broken(): boolean {
    return this.failure !== undefined;
  }

  /**
   * Per chunk, why it is damaged (null when it opens and its hash matches its id). Blobs that all lie in one
   * SharedArrayBuffer (a pooled message's) are read there by the thread: that memory must stay as it is until
   * the answer comes. Any others are copied before this returns, so their memory may be reused at once.
   */
  verify(key: Buffer, chunks: readonly SealedChunk[]): Promise<(string | null)[]> {
    if (this.failure) return Promise.reject(this.failure);
    if (chunks.length === 0) return Promise.resolve([]);
    const ids = new Uint8Array(32 * chunks.length);
    chunks.forEach((c, i) => {
      ids.set(c.id.subarray(0, 32), 32 * i); // an id of another length is reported as such (plainLength -1)
    });
    const shared = chunks[0].blob.buffer;
    let data: ArrayBuffer | SharedArrayBuffer;
    let offsets: number[];
    const transfer: ArrayBuffer[] = [ids.buffer];
    if (shared instanceof SharedArrayBuffer && chunks.every((c) => c.blob.buffer === shared)) {
      data = shared;
      offsets = chunks.map((c) => c.blob.byteOffset);
    } else {
      let total = 0;
      for (const c of chunks) total += c.blob.length;
      const staged = this.staging(total);
      const bytes = Buffer.from(staged);
      offsets = [];
      let at = 0;
      for (const c of chunks) {
        offsets.push(at);
        copyBytes(c.blob, bytes, at);
        at += c.blob.length;
      }
      data = staged;
      transfer.push(staged);
    }
    const seq = ++this.seq;
    const request: VerifyRequest = {
      seq,
      key: Uint8Array.from(key),
      data,
      offsets,
      lengths: chunks.map((c) => c.blob.length),
      ids,
      plainLengths: chunks.map((c) => (c.id.length === 32 ? c.plainLength : -1)),
    };
    const thread = this.threads.reduce((a, b) => (b.busy < a.busy ? b : a));
    if (thread.busy++ === 0) thread.worker.ref();
    return new Promise((resolve, reject) => {
      thread.pending.set(seq, { resolve, reject });
      thread.worker.postMessage(request, transfer);
    });
  }

  async close(): Promise<void> {
    this.fail(new Error("the chunk verifier is closed"));
    await this.stopping;
  }

  private staging(size: number): ArrayBuffer {
    const i = this.spares.findIndex((b) => b.byteLength >= size);
    return i >= 0 ? this.spares.splice(i, 1)[0] : new ArrayBuffer(Math.max(size, STAGING_BYTES));
  }

  /** Fails every pending and later call, and stops every thread: a broken verifier is replaced, not mended. */
  private fail(err: Error): void {
    this.failure ??= err;
    for (const t of this.threads) {
      for (const p of t.pending.values()) p.reject(this.failure);
      t.pending.clear();
    }
    this.stopping ??= Promise.all(this.threads.map((t) => t.worker.terminate())).then(() => undefined);
  }
}

/**
 * The worker's compiled file sits beside this one in dist/. Under vitest, which runs this file's TypeScript
 * source, it is the build's copy in dist/ (`npm test` builds first).
 */
function workerScript(): URL {
  const here = import.meta.url;
  const base = here.endsWith(".ts") ? here.replace("/control-plane/src/", "/control-plane/dist/") : here;
  return new URL("./chunk-verifier-worker.js", base);
}
