// Content-defined chunking, FastCDC style: a gear rolling hash, a stricter mask before the target size and a
// looser one after it (normalised chunking), a minimum that is skipped and a hard maximum.
//
// The hash at a position depends only on the 32 bytes ending there (each step shifts one bit out), never on
// where the current chunk began. So a worker can chunk a segment in the middle of a file on its own, and
// where its cuts meet the cuts coming from the previous segment the two agree from then on: a file cut in
// parallel segments gets exactly the chunks a single pass would give.
import { createHash } from "node:crypto";

export interface ChunkerParams {
  minSize: number;
  avgSize: number;
  maxSize: number;
}

/** The repository default: ~1 MiB average, 256 KiB minimum, 4 MiB maximum. */
export const DEFAULT_CHUNKER: ChunkerParams = { minSize: 256 * 1024, avgSize: 1024 * 1024, maxSize: 4 * 1024 * 1024 };

/** Gear table: entry i is the first 4 bytes (little-endian) of SHA-256("dumont-gear-" + i). Fixed forever. */
export const GEAR: Uint32Array = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) table[i] = createHash("sha256").update(`dumont-gear-${i}`).digest().readUInt32LE(0);
  return table;
})();

/** Chunker parameters with their masks, as the cut finder (and the workers) take them. */
export interface CompiledChunker {
  min: number;
  avg: number;
  max: number;
  maskS: number;
  maskL: number;
  gear: Uint32Array;
}

export function compileChunker(params: ChunkerParams = DEFAULT_CHUNKER): CompiledChunker {
  const { minSize, avgSize, maxSize } = params;
  if (!(Number.isInteger(minSize) && Number.isInteger(avgSize) && Number.isInteger(maxSize))) {
    throw new Error("chunk sizes must be whole numbers of bytes");
  }
  if (!(64 <= minSize && minSize < avgSize && avgSize < maxSize && maxSize <= 64 * 1024 * 1024)) {
    throw new Error(`chunk sizes must satisfy 64 <= min < avg < max <= 64 MiB, got ${minSize}/${avgSize}/${maxSize}`);
  }
  if ((avgSize & (avgSize - 1)) !== 0) throw new Error(`the average chunk size must be a power of two, got ${avgSize}`);
  const bits = Math.round(Math.log2(avgSize));
  // The masks test the top bits: those mix all 32 bytes of the window, the low bits only the last few.
  const top = (n: number): number => (0xffffffff << (32 - n)) | 0;
  return {
    min: minSize,
    avg: avgSize,
    max: maxSize,
    maskS: top(Math.min(31, bits + 2)),
    maskL: top(Math.max(1, bits - 2)),
    gear: GEAR,
  };
}

/**
 * End (file offset) of the chunk that starts at file offset `start`. `buf[i]` holds file byte `base + i`;
 * it must cover [start, min(start + max, fileSize)). Self-contained: workers run it from its source text.
 */
export function findChunkEnd(
  buf: Uint8Array,
  base: number,
  start: number,
  fileSize: number,
  c: CompiledChunker,
): number {
  const end = Math.min(start + c.max, fileSize);
  if (end - start <= c.min) return end;
  const gear = c.gear;
  const maskS = c.maskS;
  const maskL = c.maskL;
  // Warm the window up over the 32 bytes before the first candidate (they lie inside the skipped minimum).
  let h = 0;
  let at = start + c.min - 32 - base;
  const first = start + c.min - base;
  for (; at < first; at++) h = ((h << 1) + gear[buf[at]]) | 0;
  const normal = Math.min(start + c.avg, end) - base;
  const stop = end - base;
  for (; at < normal; at++) {
    h = ((h << 1) + gear[buf[at]]) | 0;
    if ((h & maskS) === 0) return at + base + 1;
  }
  for (; at < stop; at++) {
    h = ((h << 1) + gear[buf[at]]) | 0;
    if ((h & maskL) === 0) return at + base + 1;
  }
  return end;
}

/** Cuts a whole buffer holding a complete file: the lengths of its chunks in order. */
export function chunkLengths(data: Uint8Array, params: ChunkerParams = DEFAULT_CHUNKER): number[] {
  const c = compileChunker(params);
  const out: number[] = [];
  for (let at = 0; at < data.length; ) {
    const end = findChunkEnd(data, 0, at, data.length, c);
    out.push(end - at);
    at = end;
  }
  return out;
}

/** The scan loop of `findChunkEnd` as WebAssembly (see gear-scan-wasm.ts): 3.4-5.2x as fast as the JS loop. */
export { GEAR_SCAN_WASM } from "./gear-scan-wasm.js";

export interface CutScanner {
  /** Where file bytes should be read to: cutting them there needs no copy. */
  window: Buffer;
  /** `findChunkEnd` over `window`, which holds file bytes from `base`. */
  findEnd(base: number, start: number, fileSize: number, c: CompiledChunker): number;
}

/**
 * A read window living in WebAssembly memory plus the fast scan over it; falls back to the JS loop when
 * WebAssembly is unavailable. Self-contained: workers run it from its source text.
 */
export function createCutScanner(
  wasmBase64: string,
  gear: Uint32Array,
  windowSize: number,
  fallback: typeof findChunkEnd,
): CutScanner {
  const ADDRESS = 1024; // after the gear table
  // Typed here: the project's lib settings do not include the WebAssembly declarations.
  interface Wasm {
    Module: new (bytes: Uint8Array) => object;
    Instance: new (module: object) => { exports: Record<string, unknown> };
  }
  try {
    const wasm = (globalThis as unknown as { WebAssembly: Wasm }).WebAssembly;
    const instance = new wasm.Instance(new wasm.Module(Buffer.from(wasmBase64, "base64")));
    const mem = instance.exports.mem as { buffer: ArrayBuffer; grow(pages: number): number };
    const find = instance.exports.find as (a: number, b: number, c: number, d: number, e: number, f: number) => number;
    const pages = Math.ceil((ADDRESS + windowSize) / 65536);
    mem.grow(pages - mem.buffer.byteLength / 65536);
    new Uint32Array(mem.buffer, 0, 256).set(gear);
    const window = Buffer.from(mem.buffer, ADDRESS, windowSize);
    return {
      window,
      findEnd(base, start, fileSize, c) {
        const end = Math.min(start + c.max, fileSize);
        if (end - start <= c.min) return end;
        const off = ADDRESS - base;
        const normal = Math.min(start + c.avg, end);
        const r = find(start + c.min - 32 + off, start + c.min + off, normal + off, end + off, c.maskS, c.maskL);
        return r < 0 ? end : r - off;
      },
    };
  } catch {
    const window = Buffer.allocUnsafeSlow(windowSize);
    return { window, findEnd: (base, start, fileSize, c) => fallback(window, base, start, fileSize, c) };
  }
}
