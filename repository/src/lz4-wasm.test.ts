import { randomBytes } from "node:crypto";
import { compressSync, uncompressSync } from "lz4-napi";
import { describe, expect, it } from "vitest";
import { createLz4Wasm, LZ4_WASM, type Lz4Decoder } from "./lz4-wasm.js";

/** Decodes `body` (lz4-napi's form: 4-byte length prefix, then the block) expecting `expected` bytes. */
function decodeWith(decoder: Lz4Decoder, body: Buffer, expected: number): Buffer | string {
  decoder.input(body.length).set(body);
  const out = decoder.decode(body.length, expected);
  return typeof out === "string" ? out : Buffer.from(out); // a copy: the view is reused by the next call
}

/** A deterministic pseudo-random byte source (xorshift32), so a failing case can be replayed. */
function prng(seed: number): () => number {
  let x = seed || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) & 0xff;
  };
}

/** Bytes that LZ4 encodes with every kind of sequence: long and short literals, near and far matches. */
function samples(): [string, Buffer][] {
  const next = prng(7);
  const csv = Array.from(
    { length: 30_000 },
    (_, i) => `${i},${(i * 7919) % 1000},0.${(i * 31) % 97},label_${i % 13}\n`,
  );
  const period = (p: number, n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i % p) * 37));
  const mixed = Buffer.concat(
    Array.from({ length: 200 }, (_, i) =>
      i % 3 === 0 ? randomBytes(1 + ((i * 97) % 300)) : Buffer.from(`repeat ${i % 7} `.repeat(1 + (i % 40))),
    ),
  );
  return [
    ["one byte", Buffer.from([42])],
    ["a word", Buffer.from("hello")],
    ["a run of one byte (offset 1)", Buffer.alloc(100_000, 7)],
    ...[2, 3, 5, 7, 8, 9, 15, 16, 17, 40].map((p): [string, Buffer] => [`period ${p}`, period(p, 5_000 + p)]),
    ["incompressible", randomBytes(70_000)],
    ["CSV text", Buffer.from(csv.join(""))],
    ["literals and matches of every length", mixed],
    ["short pseudo-random words", Buffer.from(Array.from({ length: 20_000 }, () => 97 + (next() % 4)))],
  ];
}

describe("LZ4 block decoder (WebAssembly)", () => {
  it("decodes what lz4-napi encodes, byte for byte, reusing its memory across sizes", () => {
    const decoder = createLz4Wasm(LZ4_WASM)?.decoder;
    expect(decoder).toBeDefined();
    if (!decoder) return;
    for (const [what, plain] of [...samples(), ...samples().reverse()]) {
      const out = decodeWith(decoder, compressSync(plain), plain.length);
      expect(typeof out === "string" ? out : out.equals(plain), what).toBe(true);
    }
    // Every length from 0 to 300 bytes of repetitive text (the tail rules of short blocks).
    const text = Buffer.from("abcabcabd".repeat(40));
    for (let n = 0; n <= 300; n++) {
      const plain = text.subarray(0, n);
      const out = decodeWith(decoder, compressSync(plain), n);
      expect(typeof out === "string" ? `${n}: ${out}` : out.equals(plain)).toBe(true);
    }
  });

  it("refuses a wrong length, a truncated block and garbage, without throwing", () => {
    const decoder = createLz4Wasm(LZ4_WASM)?.decoder;
    if (!decoder) throw new Error("WebAssembly is missing");
    const plain = Buffer.from("the quick brown fox jumps over the lazy dog, again and again; ".repeat(300));
    const body = compressSync(plain);
    expect(decodeWith(decoder, body, plain.length - 1)).toMatch(/does not hold/);
    // The prefix claims the right length but the block holds one byte less or more.
    const shorter = compressSync(plain.subarray(0, plain.length - 1));
    shorter.writeUInt32LE(plain.length, 0);
    expect(decodeWith(decoder, shorter, plain.length)).toMatch(/expected|does not decompress/);
    for (let cut = 0; cut < body.length; cut += 7) {
      const out = decodeWith(decoder, body.subarray(0, cut), plain.length);
      expect(typeof out, `cut at ${cut}`).toBe("string");
    }
    // Damaged blocks (the AES-GCM tag stops these in a repository; the decoder must not trust it): each
    // decodes to an error or to exactly `expected` bytes, and never to anything outside its output.
    const next = prng(99);
    for (let i = 0; i < 2000; i++) {
      const damaged = Buffer.from(body);
      for (let k = 0; k < 1 + (i % 4); k++) damaged[4 + (((next() << 8) | next()) % (body.length - 4))] = next();
      const out = decodeWith(decoder, damaged, plain.length);
      if (typeof out !== "string") expect(out.length).toBe(plain.length);
    }
    for (let i = 0; i < 500; i++) {
      const garbage = Buffer.concat([Buffer.from([0x00, 0x10, 0, 0]), Buffer.from(Array.from({ length: 64 }, next))]);
      const out = decodeWith(decoder, garbage, 4096);
      if (typeof out !== "string") expect(out.length).toBe(4096);
    }
    // A length longer than the whole output is refused as soon as it is: 255-bytes that would add up past
    // 4 GiB never get to wrap around.
    const endless = Buffer.concat([Buffer.from([16, 0, 0, 0, 0xf0]), Buffer.alloc(20_000, 0xff), Buffer.from([1])]);
    expect(decodeWith(decoder, endless, 16)).toBe("LZ4 data does not decompress");
    // After all that, it still decodes.
    expect(decodeWith(decoder, body, plain.length)).toEqual(plain);
  });
});

describe("LZ4 block encoder (WebAssembly)", () => {
  const encoder = createLz4Wasm(LZ4_WASM)?.encoder;
  const decoder = createLz4Wasm(LZ4_WASM)?.decoder;
  /** Room for any encoding of `n` bytes (LZ4's worst case is n + n/255 + 16). */
  const ample = (n: number) => n + (n >> 7) + 32;
  const encode = (plain: Buffer, room = ample(plain.length)): Buffer | null => {
    const body = encoder?.encode(plain, room);
    return body ? Buffer.from(body) : null; // a copy: the view is reused by the next call
  };

  it("writes blocks lz4-napi and the WebAssembly decoder read back byte for byte, about as small as lz4-napi's", () => {
    expect(encoder && decoder).toBeDefined();
    if (!decoder) return;
    for (const [what, plain] of samples()) {
      const body = encode(plain);
      if (!body) throw new Error(`${what}: did not fit in ample room`);
      expect(uncompressSync(body).equals(plain), what).toBe(true);
      const decoded = decodeWith(decoder, body, plain.length);
      expect(typeof decoded === "string" ? decoded : decoded.equals(plain), what).toBe(true);
      // The same algorithm as lz4-napi's (lz4_flex): within a few percent of its size.
      if (plain.length > 1000) expect(body.length, what).toBeLessThanOrEqual(compressSync(plain).length * 1.05 + 16);
    }
    // Every length from 0 to 300 bytes (the format's end rules: 5 literals last, no match in the last 12).
    const text = Buffer.from("abcabcabd, and again: abcabcabd".repeat(20));
    for (let n = 0; n <= 300; n++) {
      const plain = text.subarray(0, n);
      const body = encode(plain);
      expect(body && uncompressSync(body).equals(plain), `${n} bytes`).toBe(true);
      const block = body?.subarray(4) ?? Buffer.alloc(0);
      if (n >= 13) expect(block.subarray(block.length - 5).equals(plain.subarray(n - 5)), `${n} bytes`).toBe(true);
    }
  });

  it("gives up when the output would not fit the room given, and encodes an input the same way every time", () => {
    const noise = randomBytes(100_000);
    expect(encode(noise, noise.length - (noise.length >> 5))).toBeNull();
    expect(encode(noise, 4)).toBeNull();
    const text = samples().find(([what]) => what === "CSV text")?.[1] ?? Buffer.alloc(0);
    const body = encode(text);
    if (!body) throw new Error("CSV text did not fit in ample room");
    // Room is judged a few bytes ahead (length bytes are over-counted), never past what was given.
    expect(encode(text, body.length + 16)?.equals(body)).toBe(true);
    expect(encode(text, body.length - 1)).toBeNull();
    // Near the limit, short literal runs are copied exactly rather than as 16-byte words: never past the room.
    for (const [what, plain] of samples().filter(([w]) => w === "CSV text" || w.startsWith("literals and"))) {
      const whole = encode(plain);
      if (!whole) throw new Error(`${what} did not fit in ample room`);
      for (let room = whole.length - 40; room < whole.length + 40; room++) {
        const fitted = encode(plain, room);
        if (fitted) expect(fitted.length, what).toBeLessThanOrEqual(room);
        if (fitted) expect(uncompressSync(fitted).equals(plain), what).toBe(true);
      }
    }
    // Between two encodings of the same input, another one: the hash table starts afresh for each.
    encode(Buffer.from("something else entirely, ".repeat(1000)));
    expect(encode(text)?.equals(body)).toBe(true);
  });
});
