import { execFileSync, spawn } from "node:child_process";
import { closeSync, constants, openSync, readSync } from "node:fs";
import { mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it, vi } from "vitest";
import { ReadAhead } from "./read-ahead.js";
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

  it("opens no FIFO (or device) that a listed file was swapped for a symlink to", async () => {
    // O_NOFOLLOW: the link is not followed. Followed, a FIFO a host process writes to is opened (its writer,
    // blocked until a reader opens it, goes on), or as root a device (/dev/watchdog arms on open).
    const outside = await mkdtemp(join(tmpdir(), "dumont-read-ahead-outside-"));
    execFileSync("mkfifo", [join(outside, "fifo")]);
    const writer = spawn("sh", ["-c", 'echo host-data > "$1"', "sh", join(outside, "fifo")], { stdio: "ignore" });
    await symlink(join(outside, "fifo"), join(root, "swapped"));
    const readAhead = new ReadAhead(1);
    try {
      readAhead.read(root, [{ path: "swapped", size: 10 }]);
      await vi.waitFor(() => expect(readAhead.pending).toBe(0), { timeout: 10_000 });
      // The writer still waits for its first reader: opened here, it writes its line to this end. (Had the
      // read-ahead opened the FIFO, the writer would have written to it and gone: this end reads nothing.)
      const fd = openSync(join(outside, "fifo"), constants.O_RDONLY | constants.O_NONBLOCK);
      try {
        const buf = Buffer.alloc(64);
        await vi.waitFor(
          () => {
            let n = 0;
            try {
              n = readSync(fd, buf);
            } catch (err) {
              if ((err as NodeJS.ErrnoException).code !== "EAGAIN") throw err;
            }
            expect(buf.subarray(0, n).toString()).toBe("host-data\n");
          },
          { timeout: 10_000 },
        );
      } finally {
        closeSync(fd);
      }
    } finally {
      writer.kill("SIGKILL");
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
