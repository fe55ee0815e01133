import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { chunkCodec, generateRepositoryKey } from "@dumont/repository";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compileChunker } from "./chunker.js";
import { createDirectSnapshot, restoreDirectSnapshot } from "./direct-mode.js";
import { builtSnapshotModule, runModuleScript } from "./testing.js";
import { SnapshotWorkerPool } from "./worker-pool.js";

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-writer-"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe.each([0, 1])("restore writes with %i worker thread(s)", (threads) => {
  it("takes back the batch's buffer when the batch fails as a whole", async () => {
    const pool = new SnapshotWorkerPool({ threads });
    try {
      const data = pool.buffer(1024);
      const idle = data.buffer;
      // Chunks longer than any memory a worker can make for them: the batch fails before it writes anything.
      const huge = Int32Array.from([2 ** 31 - 1, 2 ** 31 - 1, 2 ** 31 - 1]);
      const writing = pool.writeChunks(
        generateRepositoryKey(),
        data,
        Int32Array.from([0, 10, 10, 10, 20, 10]),
        Buffer.alloc(96),
        huge,
        Int32Array.from([0, 0, 0, 0]),
        new Float64Array(0),
      );
      await expect(writing).rejects.toThrow(/initial|memory/i);
      expect(pool.buffer(1024).buffer).toBe(idle);
    } finally {
      await pool.close();
    }
  });
  it("writes runs of chunks (O_DIRECT where it can), duplicates and unaligned ends byte for byte", async () => {
    const pool = new SnapshotWorkerPool({ threads });
    const key = generateRepositoryKey();
    // Odd sizes, so no chunk starts on a page boundary; c2 compresses (the LZ4 path), c3 will be damaged.
    const c0 = randomBytes(300_001);
    const c1 = randomBytes(200_000);
    const c2 = Buffer.from("step,loss,accuracy\n".repeat(13_200)).subarray(0, 250_003);
    const c3 = randomBytes(150_000);
    const chunks = [c0, c1, c2, c3];
    // File a: c0 c1 c2 c0 c3 (c0 twice); file b: c1 (shared with a). The worker creates two one-chunk files
    // itself: c (c2) and taken (c1), whose name is already taken, which must fail and leave it alone.
    const a = join(root, `a-${threads}`);
    const b = join(root, `b-${threads}`);
    const c = join(root, `c-${threads}`);
    const taken = join(root, `taken-${threads}`);
    await writeFile(taken, "someone else's");
    const aSize = c0.length * 2 + c1.length + c2.length + c3.length;
    const fa = await open(a, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    const fb = await open(b, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    await fa.truncate(aSize);
    await fb.truncate(c1.length);
    const direct = await open(`/proc/self/fd/${fa.fd}`, constants.O_WRONLY | constants.O_DIRECT).catch(() => undefined);
    try {
      const sealed = chunks.map((c) => chunkCodec.sealChunk(key, c));
      sealed[3].blob[40] ^= 1;
      const data = pool.buffer(sealed.reduce((sum, s) => sum + s.blob.length, 0));
      const ranges: number[] = [];
      let at = 0;
      for (const s of sealed) {
        s.blob.copy(data, at);
        ranges.push(at, s.blob.length);
        at += s.blob.length;
      }
      const d = direct?.fd ?? -1;
      const c0Again = c0.length + c1.length + c2.length;
      // Per chunk, its destinations as (fd, O_DIRECT fd, offset); the first one of each is where it runs on.
      const perChunk = [
        [fa.fd, d, 0, fa.fd, d, c0Again],
        [fa.fd, d, c0.length, fb.fd, -1, 0, -2, -1, 0],
        [fa.fd, d, c0.length + c1.length, -1, -1, 0],
        [fa.fd, d, c0Again + c0.length],
      ];
      const destStart = Int32Array.from([0, 2, 5, 7, 8]);
      const written = await pool.writeChunks(
        key,
        data,
        Int32Array.from(ranges),
        Buffer.concat(sealed.map((s) => s.id)),
        Int32Array.from(chunks.map((c) => c.length)),
        destStart,
        Float64Array.from(perChunk.flat()),
        { paths: [c, taken], modes: Int32Array.from([0o640, 0o600]), mtimes: Float64Array.from([1_700_000_000.5, 0]) },
      );
      expect(written.errors.slice(0, 3)).toEqual([null, null, null]);
      expect(written.errors[3]).toMatch(/authentication failed/);
      expect(written.writeErrors).toEqual([
        [4, { code: "EEXIST", message: expect.stringMatching(/EEXIST/), at: taken }],
      ]);
      if (direct)
        expect(written.directBytes).toBeGreaterThan(600_000); // the run c0 c1 c2, less its ends
      else expect(written.directBytes).toBe(0);
    } finally {
      await direct?.close();
      await fa.close();
      await fb.close();
      await pool.close();
    }
    const expected = Buffer.concat([c0, c1, c2, c0, Buffer.alloc(c3.length)]); // the damaged chunk: not written
    expect((await readFile(a)).equals(expected)).toBe(true);
    expect((await readFile(b)).equals(c1)).toBe(true);
    expect((await readFile(c)).equals(c2)).toBe(true);
    const st = await stat(c);
    expect([st.mode & 0o777, st.mtimeMs]).toEqual([0o640, 1_700_000_000_500]);
    expect(await readFile(taken, "utf8")).toBe("someone else's");
  });
  it("takes chunks in shared memory it was not given (a pooled gRPC message's), copying what it cannot hand over", async () => {
    const pool = new SnapshotWorkerPool({ threads });
    const key = generateRepositoryKey();
    const plain = randomBytes(100_003);
    const sealed = chunkCodec.sealChunk(key, plain);
    const data = Buffer.from(new SharedArrayBuffer(sealed.blob.length));
    data.fill(sealed.blob);
    const file = join(root, `shared-${threads}`);
    const fd = await open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      await fd.truncate(plain.length);
      const written = await pool.writeChunks(
        key,
        data,
        Int32Array.from([0, sealed.blob.length]),
        sealed.id,
        Int32Array.from([plain.length]),
        Int32Array.from([0, 1]),
        Float64Array.from([fd.fd, -1, 0]),
        undefined,
        { recycle: false },
      );
      expect(written).toMatchObject({ errors: [null], writeErrors: [] });
    } finally {
      await fd.close();
      await pool.close();
    }
    expect((await readFile(file)).equals(plain)).toBe(true);
  });
});

describe.each([0, 1])("sealing segments with %i worker thread(s)", (threads) => {
  it("takes back its output buffer when a batch fails as a whole", async () => {
    // A batch that fails (not a file left out: a bug, or memory that ran out) kept the buffer it was offered,
    // and the pool made a new one for every later batch.
    const pool = new SnapshotWorkerPool({ threads });
    const file = join(root, `failing-${threads}`);
    await writeFile(file, randomBytes(10_000));
    try {
      const idle = pool.buffer(1024).buffer;
      pool.recycle(idle);
      // A look-back that is no number throws a TypeError with no code: the whole batch fails.
      const segment = { path: file, fileSize: 10_000, start: 0, end: 10_000, lookback: 1n as unknown as number };
      const failed = await pool.sealSegments(generateRepositoryKey(), compileChunker(), [segment]).catch((e) => e);
      expect(failed).toBeInstanceOf(Error);
      // The message says what failed and nothing more (it reaches a user: the CLI, the control plane's caller);
      // the worker's stack is kept where a log shows stacks.
      expect(failed.message).toMatch(/BigInt/);
      expect(failed.message).not.toMatch(/\n\s+at /);
      if (threads > 0) expect(failed.stack).toMatch(/in the worker: TypeError: .*BigInt[\s\S]*\n\s+at /);
      expect(pool.buffer(1024).buffer).toBe(idle);
    } finally {
      await pool.close();
    }
  });
  it("cuts and hashes chunks the repository holds like any other, and leaves only those unsealed", async () => {
    const pool = new SnapshotWorkerPool({ threads });
    const key = generateRepositoryKey();
    const chunker = compileChunker({ minSize: 1024, avgSize: 4096, maxSize: 16_384 });
    const file = join(root, `segments-${threads}`);
    const bytes = Buffer.concat([randomBytes(60_000), Buffer.from("epoch,loss\n".repeat(5000))]);
    await writeFile(file, bytes);
    const segment = { path: file, fileSize: bytes.length, start: 0, end: bytes.length };
    try {
      const all = await pool.sealSegments(key, chunker, [segment]);
      const count = all.ids.length / 32;
      expect(count).toBeGreaterThan(10);
      // Every other chunk is held; the ids go to the workers sorted, in memory they share.
      const heldHex = Array.from({ length: count }, (_, k) => all.ids.toString("hex", 32 * k, 32 * k + 32))
        .filter((_, k) => k % 2 === 0)
        .sort();
      const held = pool.buffer(32 * heldHex.length);
      for (let i = 0; i < heldHex.length; i++) held.write(heldHex[i], 32 * i, "hex");
      const some = await pool.sealSegments(key, chunker, [segment], held);

      expect(some.ids.equals(all.ids)).toBe(true);
      const heldSet = new Set(heldHex); // by id: a chunk repeated in the file is held wherever it recurs
      const unsealed = new Set<number>();
      for (let k = 0; k < count; k++) {
        const [, offset, length, blobAt, blobLength] = some.chunks.subarray(5 * k, 5 * k + 5);
        expect([offset, length]).toEqual([all.chunks[5 * k + 1], all.chunks[5 * k + 2]]);
        const id = some.ids.subarray(32 * k, 32 * k + 32);
        if (heldSet.has(id.toString("hex"))) {
          expect(blobLength).toBe(0);
          unsealed.add(k);
        } else {
          const blob = some.out.subarray(blobAt, blobAt + blobLength);
          expect(chunkCodec.openChunk(key, id, blob).equals(bytes.subarray(offset, offset + length))).toBe(true);
        }
      }
      expect(unsealed.size).toBeGreaterThanOrEqual(heldHex.length);
      expect(unsealed.size).toBeLessThan(count);
      pool.recycle(held.buffer);
    } finally {
      await pool.close();
    }
  });
});

describe("closing the pool", () => {
  it("waits for a worker whose answer came just before close(), and the process does not exit meanwhile", async () => {
    // As a snapshot that fails meets it: a batch still being sealed when the pool is closed. Its answer, handled
    // once close() had begun, unref'd the worker close() was stopping, whose 'exit' then never came: the process
    // exited with code 13 (a top-level await left unsettled) instead of reporting the failure.
    const file = join(root, "closing");
    await writeFile(file, randomBytes(10_000));
    const segment = JSON.stringify({ path: file, fileSize: 10_000, start: 0, end: 10_000 });
    const script = `
      const { SnapshotWorkerPool } = await import(${JSON.stringify(builtSnapshotModule("worker-pool"))});
      const { compileChunker } = await import(${JSON.stringify(builtSnapshotModule("chunker"))});
      const pool = new SnapshotWorkerPool({ threads: 1 });
      pool.sealSegments(Buffer.alloc(32, 1), compileChunker(), [${segment}]).catch(() => {});
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500); // sealed meanwhile, not yet handled
      await pool.close();
      process.stdout.write("closed");`;
    expect(await runModuleScript(script)).toEqual({ code: 0, out: "closed" });
  });

  it("fails the work a worker has in hand when the pool is closed, rather than leave it waiting for ever", async () => {
    // The agent closes a pool one of whose workers died while another operation still has work on the others:
    // that operation's request never settled, and its snapshot or restore hung until the agent restarted.
    const file = join(root, "in-hand");
    await writeFile(file, randomBytes(16 * 1024 * 1024));
    const pool = new SnapshotWorkerPool({ threads: 1 });
    const segment = { path: file, fileSize: 16 * 1024 * 1024, start: 0, end: 16 * 1024 * 1024 };
    const sealing = pool.sealSegments(generateRepositoryKey(), compileChunker(), [segment]);
    const settled = sealing.then(
      () => "sealed",
      (err: Error) => err.message,
    );
    const closing = pool.close();
    const again = pool.close(); // a second close waits for the first
    await again;
    expect(await settled).toBe("the snapshot worker pool was closed while this work ran");
    await closing;
  });
});

describe("a restore on a pool of one worker", () => {
  it("splits its batches too, so no worker writes a batch's GiBs of plain bytes at once", async () => {
    // A worker's scratch is sized to what one call writes, and kept: 8 MiB of read buffer holding chunks that
    // compress well is many times that plain, unsplit where the pool had one thread (a 1-vCPU host) (helper-74).
    const source = join(root, "split-source");
    await mkdir(source);
    const lines = Array.from({ length: 1_200_000 }, (_, i) => `step ${i},loss ${(1 / (i + 1)).toFixed(6)}\n`);
    await writeFile(join(source, "metrics.csv"), lines.join("")); // ~31 MB, which LZ4 shrinks several times
    const key = generateRepositoryKey();
    const repo = pathToFileURL(join(root, "split-repo")).href;
    const one = new SnapshotWorkerPool({ threads: 1 });
    const written: number[] = []; // plain bytes of each call of more than one chunk
    const writeChunks = one.writeChunks.bind(one);
    one.writeChunks = (...args: Parameters<typeof writeChunks>) => {
      const lengths = args[4];
      if (lengths.length > 1) written.push(lengths.reduce((sum, n) => sum + n, 0));
      return writeChunks(...args);
    };
    try {
      const created = await createDirectSnapshot({ repo, key, source, pool: one });
      const target = join(root, "split-restored");
      await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool: one });
      // Compared as bytes: toEqual walks 31 MB element by element for minutes.
      const same = (await readFile(join(target, "metrics.csv"))).equals(await readFile(join(source, "metrics.csv")));
      expect(same).toBe(true);
      expect(written.length).toBeGreaterThan(1);
      expect(Math.max(...written)).toBeLessThanOrEqual(8 * 1024 * 1024);
    } finally {
      await one.close();
    }
  });
});
