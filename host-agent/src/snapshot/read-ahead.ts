// Threads that only read small files into the page cache, ahead of the snapshot workers that then read them
// again from memory. A worker reads its files one after another, so from a cold page cache every small file
// costs a disk round trip: this dev VM's disk read 300,000 small files in 16.2 s with 2 readers, 8.8 s with
// 4 and 6.2 s with 8 (`xargs -P N cat`). More snapshot workers would read more at once but cost every snapshot
// CPU and memory (4 workers on 2 cores: the 1 GiB bench's full snapshot 10% slower, 83 MiB more); reads made
// with promises cost ~40 µs of a JS thread a file. These threads do nothing but blocking open/read/close, and
// SegmentPipeline starts them only once the reads reach the disk (see READ_AHEAD_DISK_SHARE in segment-pipeline.ts).
import { Worker } from "node:worker_threads";
import { createUnderOpener } from "./open-under.js";

/** Bytes of a file read ahead at most (the start of a larger one is in the worker's first read anyway). */
export const READ_AHEAD_MAX_FILE = 1024 * 1024;

interface Reader {
  worker: Worker;
  busy: number;
}

/** A few threads, each reading the files it is given in order, bytes thrown away. */
export class ReadAhead {
  private readonly readers: Reader[] = [];
  private closed = false;

  constructor(threads: number) {
    for (let i = 0; i < threads; i++) {
      // Eval workers are CommonJS, unless the parent runs with --input-type=module (inherited): then no require.
      const load = (name: string) =>
        `(typeof require === "function" ? require : process.getBuiltinModule)(${JSON.stringify(name)})`;
      const worker = new Worker(
        `(${readerMain.toString()})(${load("node:fs")}, ${load("node:worker_threads")}, (${createUnderOpener.toString()}))`,
        { eval: true },
      );
      const reader = { worker, busy: 0 };
      worker.on("message", () => {
        // Not once closing: terminate() refs the worker, and its 'exit' (what close() waits for) only arrives
        // while it is ref'd. A batch answered just before close() unref'd it and the process exited mid-await.
        if (--reader.busy === 0 && !this.closed) worker.unref();
      });
      // A reader that fails costs only its read-ahead: the snapshot workers read every file themselves.
      worker.on("error", () => {});
      worker.unref();
      this.readers.push(reader);
    }
  }

  /** Batches handed out whose reader has not finished them. */
  get pending(): number {
    return this.readers.reduce((sum, r) => sum + r.busy, 0);
  }

  /**
   * Hands `files` under `root` (their paths as listed, with the bytes of each to read) to the least busy reader;
   * returns at once. They are opened as the snapshot workers open them: through directory handles.
   */
  read(root: string, files: readonly { path: string; size: number }[]): void {
    if (this.closed || files.length === 0 || this.readers.length === 0) return;
    const reader = this.readers.reduce((a, b) => (b.busy < a.busy ? b : a));
    if (reader.busy++ === 0) reader.worker.ref();
    const batch = files.map((f) => ({ path: f.path, size: Math.min(f.size, READ_AHEAD_MAX_FILE) }));
    reader.worker.postMessage({ root, files: batch });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.readers.map((r) => r.worker.terminate()));
  }
}

/** The reader thread, run from its source text (an eval worker, so it ships inside the agent's one file). */
function readerMain(
  fs: typeof import("node:fs"),
  threads: typeof import("node:worker_threads"),
  makeOpener: typeof createUnderOpener,
): void {
  const scratch = Buffer.allocUnsafe(64 * 1024);
  const flags = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;
  threads.parentPort?.on("message", ({ root, files }: { root: string; files: { path: string; size: number }[] }) => {
    const opener = makeOpener(fs, root);
    for (const { path, size } of files) {
      let fd = -1;
      try {
        fd = opener.open(path, flags);
        for (let at = 0; at < size; ) {
          const n = fs.readSync(fd, scratch, 0, Math.min(scratch.length, size - at), at);
          if (n === 0) break;
          at += n;
        }
      } catch {
        // the snapshot worker reports what it cannot read
      } finally {
        if (fd >= 0) fs.closeSync(fd);
      }
    }
    opener.close();
    threads.parentPort?.postMessage(files.length);
  });
}
