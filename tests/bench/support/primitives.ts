// What this machine does per core, measured in the same run as the snapshot benchmark: the speeds the snapshot
// issue gives "for scale" (SHA-256 ~1 GB/s, LZ4 ~1.1 GB/s, AES-256-GCM ~3 GB/s, page-cache reads ~5 GB/s), plus
// a memory copy and the cost of touching fresh memory, so a ratio against restic can be read against the
// machine it was measured on. On the 2-core dev VM the first touch of a 4 KiB page came to cost ~11 µs (a
// virtualised page fault; ~0.25 µs on bare metal): a process that touches 200 MiB of new memory pays ~0.6 CPU-s
// for it, whatever it then does with the memory.
import { createCipheriv, createHash, randomBytes } from "node:crypto";
import { closeSync, openSync, readSync } from "node:fs";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { createLz4Wasm, enableArrayBufferTransferInWorkers, LZ4_WASM } from "@dumont/repository";
import { csvText, noise } from "./corpus-text.js";

export interface Primitives {
  /** node:crypto SHA-256 over 1 MiB buffers, one thread. */
  sha256MBps: number;
  /**
   * node:crypto AES-256-GCM encryption of 1 MiB buffers in 16 KiB pieces, each output copied out and freed at
   * once, as the chunk codec does in the agent's worker threads.
   */
  aes256GcmMBps: number;
  /** The chunk codec's LZ4 (WebAssembly) encoding 1 MiB chunks of the corpus's CSV. */
  lz4CsvMBps: number;
  /** Buffer.copy of 8 MiB between two buffers already touched. */
  memcpyMBps: number;
  /** Reading `file` through the page cache in 8 MiB reads into one reused buffer (absent without a file). */
  pageCacheReadMBps?: number;
  /** CPU microseconds per 4 KiB page the first time a fresh 64 MiB buffer is written. */
  firstTouchMicrosPerPage: number;
}

const MiB = 1024 * 1024;
const MB = 1e6;

/** Runs `work` (which handles `bytes` each call) for about `budgetMs`; returns MB/s of CPU time. */
function rate(bytes: number, budgetMs: number, work: () => void): number {
  work(); // warm: compiled, memory touched
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let n = 0;
  do {
    work();
    n++;
  } while (performance.now() - t0 < budgetMs);
  const c = process.cpuUsage(c0);
  return Math.round((n * bytes) / MB / ((c.user + c.system) / 1e6));
}

const WORKER_TAG = "dumont-bench-primitives";

/**
 * Measures the primitives (~2 s) in a worker thread, where the chunk codec runs and where a cipher output can be
 * freed at once (array-buffer-transfer.ts); `file` (e.g. a corpus file just written) for the read speed.
 */
export function measurePrimitives(file?: string): Promise<Primitives> {
  enableArrayBufferTransferInWorkers();
  const worker = new Worker(new URL(import.meta.url), { workerData: { tag: WORKER_TAG, file } });
  return new Promise((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
    worker.once("exit", (code) => reject(new Error(`the primitives worker exited (${code}) before answering`)));
  });
}

if (!isMainThread && (workerData as { tag?: string } | null)?.tag === WORKER_TAG) {
  parentPort?.postMessage(measure((workerData as { file?: string }).file));
}

function measure(file?: string): Primitives {
  const plain = noise("primitives", MiB);
  const key = randomBytes(32);
  const nonce = randomBytes(12);
  const piece = 16 * 1024;
  const sha256MBps = rate(plain.length, 300, () => {
    createHash("sha256").update(plain).digest();
  });
  const sealed = Buffer.alloc(plain.length + 64);
  const transfer = (ArrayBuffer.prototype as { transfer?: (this: ArrayBuffer, length: number) => ArrayBuffer })
    .transfer;
  const aes256GcmMBps = rate(plain.length, 300, () => {
    const cipher = createCipheriv("aes-256-gcm", key, nonce);
    for (let at = 0; at < plain.length; at += piece) {
      const out = cipher.update(plain.subarray(at, at + piece));
      out.copy(sealed, at);
      if (transfer && out.byteOffset === 0 && out.buffer.byteLength === out.length) transfer.call(out.buffer, 0);
    }
    cipher.final();
  });
  const wasm = createLz4Wasm(LZ4_WASM);
  const csv = Array.from({ length: 8 }, (_, i) => csvText(MiB, 900 + i));
  let next = 0;
  const lz4CsvMBps = wasm
    ? rate(MiB, 300, () => {
        wasm.encoder.encode(csv[next++ % csv.length], MiB - (MiB >> 5));
      })
    : 0;
  const from = Buffer.alloc(8 * MiB, 1);
  const to = Buffer.alloc(8 * MiB);
  const memcpyMBps = rate(from.length, 200, () => {
    from.copy(to);
  });
  let pageCacheReadMBps: number | undefined;
  if (file) {
    const fd = openSync(file, "r");
    try {
      const read = (): number => {
        let total = 0;
        for (let n = readSync(fd, to, 0, to.length, total); n > 0; n = readSync(fd, to, 0, to.length, total))
          total += n;
        return total;
      };
      const size = read();
      if (size > 0) pageCacheReadMBps = rate(size, 300, read);
    } finally {
      closeSync(fd);
    }
  }
  const touches: number[] = [];
  for (let run = 0; run < 3; run++) {
    const c0 = process.cpuUsage();
    const fresh = Buffer.allocUnsafeSlow(64 * MiB);
    for (let at = 0; at < fresh.length; at += 4096) fresh[at] = 1;
    const c = process.cpuUsage(c0);
    touches.push((c.user + c.system) / (fresh.length / 4096));
  }
  touches.sort((a, b) => a - b);
  return {
    sha256MBps,
    aes256GcmMBps,
    lz4CsvMBps,
    memcpyMBps,
    ...(pageCacheReadMBps === undefined ? {} : { pageCacheReadMBps }),
    firstTouchMicrosPerPage: Math.round(touches[1] * 100) / 100,
  };
}
