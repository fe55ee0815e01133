import { createHash, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { generateRepositoryKey } from "./key.js";
import { chunkCodec } from "./sealing.js";

describe("chunk codec", () => {
  const key = generateRepositoryKey();

  it("compresses what shrinks, stores the rest raw, and opens both", () => {
    const text = Buffer.from("the same words again and again ".repeat(10_000));
    const noise = randomBytes(300_000);
    const a = chunkCodec.sealChunk(key, text);
    const b = chunkCodec.sealChunk(key, noise);
    expect(a.blob.length).toBeLessThan(text.length / 4);
    expect(b.blob.length).toBe(noise.length + chunkCodec.overhead);
    expect(a.id.equals(createHash("sha256").update(text).digest())).toBe(true);
    expect(chunkCodec.openChunk(key, a.id, a.blob).equals(text)).toBe(true);
    expect(chunkCodec.openChunk(key, b.id, b.blob).equals(noise)).toBe(true);
  });

  it("detects a flipped bit, a swapped id and a wrong key", () => {
    const plain = randomBytes(5000);
    const { id, blob } = chunkCodec.sealChunk(key, plain);
    const flipped = Buffer.from(blob);
    flipped[20] ^= 1;
    expect(() => chunkCodec.openChunk(key, id, flipped)).toThrow(/authentication failed/);
    expect(() => chunkCodec.openChunk(key, randomBytes(32), blob)).toThrow(/authentication failed/);
    expect(() => chunkCodec.openChunk(generateRepositoryKey(), id, blob)).toThrow(/authentication failed/);
  });

  it("seals and opens batches, reporting each bad blob on its own", () => {
    const data = Buffer.concat([randomBytes(1000), Buffer.alloc(50_000, 1), randomBytes(10)]);
    const ranges = Int32Array.from([0, 1000, 1000, 50_000, 51_000, 10]);
    const sealed = chunkCodec.sealChunkBatch(key, data, ranges);
    sealed.out[sealed.blobRanges[4] + 15] ^= 1; // damage the third
    const opened = chunkCodec.openChunkBatch(
      key,
      sealed.out,
      sealed.blobRanges,
      sealed.ids,
      Int32Array.from([1000, 50_000, 10]),
    );
    expect(opened.errors.map((e) => e === null)).toEqual([true, true, false]);
    const second = opened.out.subarray(opened.plainRanges[2], opened.plainRanges[2] + opened.plainRanges[3]);
    expect(second.equals(data.subarray(1000, 51_000))).toBe(true);
    const wrongLength = chunkCodec.openChunkBatch(
      key,
      sealed.out,
      sealed.blobRanges,
      sealed.ids,
      Int32Array.from([999, 50_000, 10]),
    );
    expect(wrongLength.errors[0]).toMatch(/1000 bytes, expected 999/);
  });
});
