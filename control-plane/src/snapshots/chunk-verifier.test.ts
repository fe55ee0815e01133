import { randomBytes } from "node:crypto";
import { chunkCodec } from "@dumont/repository";
import { afterAll, describe, expect, it } from "vitest";
import { ChunkVerifier } from "./chunk-verifier.js";

const key = randomBytes(32);
const seal = (plain: Buffer) => {
  const { id, blob } = chunkCodec.sealChunk(key, plain);
  return { id, blob, plainLength: plain.length };
};

describe("ChunkVerifier (the control plane's arrival check, on worker threads)", () => {
  const verifier = new ChunkVerifier(2);
  afterAll(() => verifier.close());

  it("passes chunks that open to their id, raw and LZ4, and names what is wrong with the others", async () => {
    const raw = seal(randomBytes(300_000));
    const text = seal(Buffer.from("timestamp,value\n".repeat(20_000)));
    expect(text.blob.length).toBeLessThan(text.plainLength / 4); // stored LZ4-compressed
    const flipped = { ...raw, blob: Buffer.from(raw.blob) };
    flipped.blob[100] ^= 1;
    const swapped = { ...text, id: raw.id };
    const shortId = { ...raw, id: raw.id.subarray(0, 31) };
    const wrongLength = { ...text, plainLength: text.plainLength - 1 };
    expect(await verifier.verify(key, [raw, text])).toEqual([null, null]);
    const problems = await verifier.verify(key, [flipped, swapped, shortId, wrongLength, raw]);
    expect(problems[0]).toMatch(/authentication failed/);
    expect(problems[1]).toMatch(/authentication failed/); // the id is the associated data
    expect(problems[2]).toMatch(/not 32 bytes/);
    expect(problems[3]).toMatch(/LZ4 data does not hold/);
    expect(problems[4]).toBeNull();
    expect(await verifier.verify(randomBytes(32), [raw])).toEqual([expect.stringMatching(/authentication failed/)]);
  });

  it("fails a call whose check threw, rather than call its chunks damaged, and keeps answering others", async () => {
    const chunk = seal(randomBytes(1000));
    // A 16-byte key makes the cipher itself throw: nothing is known of the chunk, so nothing is said of it (a pack
    // repair would delete a chunk called damaged).
    await expect(verifier.verify(randomBytes(16), [chunk])).rejects.toThrow(
      /^a chunk verifier thread could not verify a chunk: .*key/i,
    );
    expect(verifier.broken).toBe(false);
    expect(await verifier.verify(key, [chunk])).toEqual([null]);
  });

  it("answers each of many concurrent calls with its own chunks' results", async () => {
    const good = seal(randomBytes(64 * 1024));
    const bad = { ...good, blob: Buffer.from(good.blob) };
    bad.blob[bad.blob.length - 1] ^= 0xff;
    const calls = Array.from({ length: 40 }, (_, i) => verifier.verify(key, i % 3 === 0 ? [good, bad] : [good]));
    const answers = await Promise.all(calls);
    answers.forEach((a, i) => {
      if (i % 3 === 0) expect([a[0], typeof a[1]]).toEqual([null, "string"]);
      else expect(a).toEqual([null]);
    });
  });

  it("copies the chunks before returning: the caller may reuse their memory at once", async () => {
    const chunk = seal(randomBytes(200_000));
    const blob = Buffer.from(chunk.blob);
    const answer = verifier.verify(key, [{ ...chunk, blob }]);
    blob.fill(0); // as grpc-js or a pool would reuse the message's memory
    expect(await answer).toEqual([null]);
  });

  it("fails every call once closed, and says it is broken", async () => {
    const own = new ChunkVerifier(1);
    const chunk = seal(randomBytes(1000));
    const pending = expect(own.verify(key, [chunk])).rejects.toThrow(/closed/);
    await own.close();
    await pending;
    await expect(own.verify(key, [chunk])).rejects.toThrow(/closed/);
    expect(own.broken).toBe(true);
  });

  it("when a thread dies, stops the others and fails every later call (the owner starts a new verifier)", async () => {
    const own = new ChunkVerifier(2);
    const threads = (own as unknown as { threads: { worker: import("node:worker_threads").Worker }[] }).threads;
    const exited = threads.map((t) => new Promise((resolve) => t.worker.once("exit", resolve)));
    await threads[0].worker.terminate(); // as an out-of-memory kill would
    await Promise.all(exited); // the healthy thread too
    expect(own.broken).toBe(true);
    await expect(own.verify(key, [seal(randomBytes(1000))])).rejects.toThrow(/exited/);
    await own.close();
  });
});
