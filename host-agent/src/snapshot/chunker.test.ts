import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  chunkLengths,
  compileChunker,
  createCutScanner,
  DEFAULT_CHUNKER,
  findChunkEnd,
  GEAR,
  GEAR_SCAN_WASM,
} from "./chunker.js";

function pseudoRandom(size: number, seed: string): Buffer {
  const out = Buffer.allocUnsafe(size);
  for (let i = 0, n = 0; i < size; n++) {
    const block = createHash("sha256").update(`${seed}:${n}`).digest();
    i += block.copy(out, i);
  }
  return out;
}

describe("content-defined chunker", () => {
  const data = pseudoRandom(24 * 1024 * 1024, "chunker");

  it("cuts ~1 MiB chunks within 256 KiB..4 MiB, deterministically", () => {
    const lengths = chunkLengths(data);
    expect(lengths.reduce((a, b) => a + b, 0)).toBe(data.length);
    for (const len of lengths.slice(0, -1)) {
      expect(len).toBeGreaterThan(DEFAULT_CHUNKER.minSize);
      expect(len).toBeLessThanOrEqual(DEFAULT_CHUNKER.maxSize);
    }
    const average = data.length / lengths.length;
    expect(average).toBeGreaterThan(700 * 1024);
    expect(average).toBeLessThan(1600 * 1024);
    expect(chunkLengths(data)).toEqual(lengths);
  });

  it("never exceeds the maximum, even on data with no cut points", () => {
    const lengths = chunkLengths(Buffer.alloc(10 * 1024 * 1024));
    expect(Math.max(...lengths)).toBe(DEFAULT_CHUNKER.maxSize);
    expect(lengths.reduce((a, b) => a + b, 0)).toBe(10 * 1024 * 1024);
  });

  it("keeps the chunks away from an insertion", () => {
    const edited = Buffer.concat([data.subarray(0, 10_000_000), Buffer.from("inserted!"), data.subarray(10_000_000)]);
    const ids = (buf: Buffer): Set<string> => {
      const out = new Set<string>();
      let at = 0;
      for (const len of chunkLengths(buf)) {
        out.add(
          createHash("sha256")
            .update(buf.subarray(at, at + len))
            .digest("hex"),
        );
        at += len;
      }
      return out;
    };
    const before = ids(data);
    const after = ids(edited);
    const changed = [...after].filter((id) => !before.has(id)).length;
    expect(changed).toBeGreaterThanOrEqual(1);
    expect(changed).toBeLessThanOrEqual(3);
  });

  it("cuts the same in the WebAssembly scanner as in the JS loop", () => {
    const scanner = createCutScanner(GEAR_SCAN_WASM, GEAR, 2 * 1024 * 1024, findChunkEnd);
    // Small chunks make phases shorter than the scanner's unrolled step; the odd length ends it mid-step.
    const cases = [
      { params: { minSize: 4096, avgSize: 16384, maxSize: 65536 }, length: 2 * 1024 * 1024 },
      { params: { minSize: 64, avgSize: 128, maxSize: 259 }, length: 256 * 1024 + 3 },
    ];
    for (const { params, length } of cases) {
      const c = compileChunker(params);
      const sample = data.subarray(0, length);
      sample.copy(scanner.window);
      let cuts = 0;
      for (let at = 0; at < sample.length; cuts++) {
        const js = findChunkEnd(sample, 0, at, sample.length, c);
        expect(scanner.findEnd(0, at, sample.length, c)).toBe(js);
        at = js;
      }
      expect(cuts).toBeGreaterThan(length / params.maxSize);
    }
  });

  it("cuts the same when a phase's two streams find cuts in either half, or in none", () => {
    // Phases of 0.5-14 KiB: long enough for the scanner's two streams (each half >= 256 bytes), short enough
    // that cuts fall in the first half, the second, and neither (then the second stream's hash goes on).
    const scanner = createCutScanner(GEAR_SCAN_WASM, GEAR, 4 * 1024 * 1024, findChunkEnd);
    const halves = { first: 0, second: 0, none: 0 };
    for (const params of [
      { minSize: 512, avgSize: 2048, maxSize: 16384 },
      { minSize: 4096, avgSize: 8192, maxSize: 12288 + 3 },
    ]) {
      const c = compileChunker(params);
      const sample = Buffer.concat([data.subarray(0, 3 * 1024 * 1024), Buffer.alloc(300_001, 7)]);
      sample.copy(scanner.window);
      for (let at = 0; at < sample.length; ) {
        const js = findChunkEnd(sample, 0, at, sample.length, c);
        expect(scanner.findEnd(0, at, sample.length, c)).toBe(js);
        // Which half of its phase the cut fell in, as the scanner splits it.
        const end = Math.min(at + c.max, sample.length);
        const [from, to] = js <= at + c.avg ? [at + c.min, at + c.avg] : [at + c.avg, end];
        const half = Math.floor((to - from) / 2) & ~1;
        if (js === end) halves.none++;
        else if (js - 1 < from + half) halves.first++;
        else halves.second++;
        at = js;
      }
    }
    expect(halves.first).toBeGreaterThan(10);
    expect(halves.second).toBeGreaterThan(10);
    expect(halves.none).toBeGreaterThan(10);
  });

  it("rejects impossible parameters", () => {
    expect(() => compileChunker({ minSize: 1000, avgSize: 1000, maxSize: 5000 })).toThrow(/min < avg < max/);
    expect(() => compileChunker({ minSize: 1000, avgSize: 3000, maxSize: 5000 })).toThrow(/power of two/);
  });
});
