import { execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ReadAhead } from "./read-ahead.js";

const root = await mkdtemp(join(tmpdir(), "dumont-read-ahead-"));
afterAll(() => rm(root, { recursive: true, force: true }));

describe("read-ahead threads", () => {
  it("read every batch through, past files that are missing or are FIFOs (never waiting on one)", async () => {
    const files = [];
    for (let i = 0; i < 50; i++) {
      const path = join(root, `f${i}`);
      await writeFile(path, `contents ${i}`.repeat(100));
      files.push({ path, size: 1000 + i });
    }
    const fifo = join(root, "fifo");
    execFileSync("mkfifo", [fifo]);
    const readAhead = new ReadAhead(2);
    try {
      readAhead.read(files.slice(0, 25));
      readAhead.read([{ path: join(root, "missing"), size: 10 }, { path: fifo, size: 10 }, ...files.slice(25)]);
      readAhead.read([]);
      expect(readAhead.pending).toBe(2);
      const deadline = Date.now() + 10_000;
      while (readAhead.pending > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(readAhead.pending).toBe(0);
    } finally {
      await readAhead.close();
    }
    // Closed: further batches are dropped, not queued.
    readAhead.read(files);
    expect(readAhead.pending).toBe(0);
  });
});
