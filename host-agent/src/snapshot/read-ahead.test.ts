import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it, vi } from "vitest";
import { READ_AHEAD_MAX_FILE, ReadAhead } from "./read-ahead.js";
import { builtSnapshotModule, runModuleScript } from "./testing.js";

const root = await mkdtemp(join(tmpdir(), "dumont-read-ahead-"));
afterAll(() => rm(root, { recursive: true, force: true }));

describe("read-ahead threads", () => {
  it("read every batch through, past files that are missing or are FIFOs (never waiting on one)", async () => {
    const files = [];
    for (let i = 0; i < 50; i++) {
      await writeFile(join(root, `f${i}`), `contents ${i}`.repeat(100));
      files.push({ path: `f${i}`, size: 1000 + i });
    }
    const fifo = join(root, "fifo");
    execFileSync("mkfifo", [fifo]);
    const readAhead = new ReadAhead(2);
    try {
      readAhead.read(root, files.slice(0, 25));
      readAhead.read(root, [{ path: "missing", size: 10 }, { path: "fifo", size: 10 }, ...files.slice(25)]);
      readAhead.read(root, []);
      expect(readAhead.pending).toBe(2);
      const deadline = Date.now() + 10_000;
      while (readAhead.pending > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(readAhead.pending).toBe(0);
    } finally {
      await readAhead.close();
    }
    // Closed: further batches are dropped, not queued.
    readAhead.read(root, files);
    expect(readAhead.pending).toBe(0);
  });

  it("reads nothing through a symlink that a listed file was swapped for", async () => {
    // O_NOFOLLOW: the link is not followed. Followed, it reads what the link points at outside the source (and
    // opens whatever is there first: a FIFO a host process writes to, or as root a device: /dev/watchdog arms on
    // open). Told by the bytes this process has read (its threads' included), not by timing.
    const outside = await mkdtemp(join(tmpdir(), "dumont-read-ahead-outside-"));
    await writeFile(join(outside, "secret.bin"), randomBytes(READ_AHEAD_MAX_FILE));
    await symlink(join(outside, "secret.bin"), join(root, "swapped"));
    const bytesRead = () => Number(/^rchar:\s*(\d+)$/m.exec(readFileSync("/proc/self/io", "latin1"))?.[1]);
    const readAhead = new ReadAhead(1);
    try {
      const before = bytesRead();
      readAhead.read(root, [{ path: "swapped", size: READ_AHEAD_MAX_FILE }]);
      await vi.waitFor(() => expect(readAhead.pending).toBe(0), { timeout: 10_000 });
      // Not the file's 1 MiB: what else this process read meanwhile is its test runner's messages, a few kB.
      expect(bytesRead() - before).toBeLessThan(READ_AHEAD_MAX_FILE / 4);
    } finally {
      await readAhead.close();
      await rm(outside, { recursive: true, force: true });
    }
  });

  it("close() waits for readers that answered just before it, and the process does not exit while it waits", async () => {
    // As the end of a snapshot meets it: the last batch's answer is handled only once close() has begun. That
    // answer once unref'd the reader close() was stopping, whose 'exit' then never came: the process, with
    // nothing else to wait for, exited with code 13 (a top-level await left unsettled) and no result.
    const file = join(root, "answered");
    await writeFile(file, "x".repeat(100));
    const files = JSON.stringify([{ path: "answered", size: 100 }]);
    const script = `
      const { ReadAhead } = await import(${JSON.stringify(builtSnapshotModule("read-ahead"))});
      const readAhead = new ReadAhead(1);
      readAhead.read(${JSON.stringify(root)}, ${files});
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000); // answered meanwhile, not yet handled
      await readAhead.close();
      process.stdout.write("closed");`;
    expect(await runModuleScript(script)).toEqual({ code: 0, out: "closed" });
  });
});
