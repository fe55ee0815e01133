// LZ4 in WebAssembly for chunks: the encoder (lz4-wasm-encoder.ts) and decoder (lz4-wasm-decoder.ts) modules,
// and the code that runs them, each with memory of its own reused from call to call. lz4-napi allocates a new
// output per call (a Rust Vec, copied once more into a Node Buffer); on a VM where the first touch of a page
// costs ~11 µs those allocations were most of the page faults of snapshots and restores. `npm run bench --
// lz4` measures both against lz4-napi on 1 MiB chunks of the snapshot corpus's text, as the codec uses them:
// on the 2-core dev VM, encoding at 1.56-1.67x lz4-napi's speed to the same size, decoding at 3.5-4.3x, and
// almost no page faults where lz4-napi took 14-24k per 64 MiB.
import { LZ4_DECODER_WASM } from "./lz4-wasm-decoder.js";
import { LZ4_ENCODER_TABLE_BYTES, LZ4_ENCODER_WASM } from "./lz4-wasm-encoder.js";

/** The two modules, base64, and the encoder's table size: what a worker thread needs to run them. */
export interface Lz4WasmModules {
  encoder: string;
  encoderTable: number;
  decoder: string;
}

export const LZ4_WASM: Lz4WasmModules = {
  encoder: LZ4_ENCODER_WASM,
  encoderTable: LZ4_ENCODER_TABLE_BYTES,
  decoder: LZ4_DECODER_WASM,
};

/** Encodes LZ4 bodies (see ChunkCodecDeps.lz4Encoder). */
export interface Lz4Encoder {
  /**
   * `plain` as an LZ4 body (4-byte little-endian length prefix, then the block, as lz4-napi's `compressSync`
   * writes it) if that is at most `room` bytes, else null. The body is a view, valid until the next call.
   */
  encode(plain: Buffer, room: number): Buffer | null;
}

/** Decodes LZ4 bodies (see ChunkCodecDeps.lz4Decoder). */
export interface Lz4Decoder {
  /** Room for an LZ4 body of `size` bytes (its 4-byte length prefix included); valid until the next call. */
  input(size: number): Buffer;
  /**
   * Decodes the first `length` bytes put in `input`, which must hold exactly `expected` plain bytes: a view of
   * them (valid until the next call), or why not.
   */
  decode(length: number, expected: number): Buffer | string;
}

/**
 * An encoder and a decoder on the calling thread; undefined where WebAssembly is not available (node
 * --jitless), and the codec then uses lz4-napi. Self-contained (no module-level references), so a worker
 * thread can run it from its source text.
 */
export function createLz4Wasm(modules: Lz4WasmModules): { encoder: Lz4Encoder; decoder: Lz4Decoder } | undefined {
  const PAGE = 65536;
  // Typed here: the project's lib settings do not include the WebAssembly declarations.
  interface Memory {
    buffer: ArrayBuffer;
    grow(pages: number): number;
  }
  interface Wasm {
    Memory: new (descriptor: { initial: number }) => Memory;
    Module: new (bytes: Uint8Array) => object;
    Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
  }
  type Run = (src: number, srcEnd: number, dst: number, dstEnd: number) => number;
  const wasm = (globalThis as unknown as { WebAssembly?: Wasm }).WebAssembly;
  if (!wasm) return undefined;
  /** Its one function, and its memory grown to hold at least `bytes`. */
  const instantiate = (base64: string, name: string): { run: Run; reserve(bytes: number): ArrayBuffer } => {
    const memory = new wasm.Memory({ initial: 0 });
    const instance = new wasm.Instance(new wasm.Module(Buffer.from(base64, "base64")), { m: { mem: memory } });
    return {
      run: instance.exports[name] as Run,
      reserve(bytes) {
        const have = memory.buffer.byteLength;
        if (bytes > have) memory.grow(Math.ceil((bytes - have) / PAGE));
        return memory.buffer;
      },
    };
  };

  // Encoder memory: the hash table, the input, then the output (at a 64-byte boundary).
  const enc = instantiate(modules.encoder, "encode");
  const encoder: Lz4Encoder = {
    encode(plain, room) {
      if (room < 5) return null;
      const input = modules.encoderTable;
      const output = Math.ceil((input + plain.length) / 64) * 64;
      const mem = Buffer.from(enc.reserve(output + room));
      mem.set(plain, input);
      const end = enc.run(input, input + plain.length, output + 4, output + room);
      if (end < 0) return null;
      mem.writeUInt32LE(plain.length, output);
      return mem.subarray(output, end);
    },
  };

  // Decoder memory: the body at 0, the output after `inputRoom`; both only grow.
  const dec = instantiate(modules.decoder, "decode");
  let inputRoom = 0;
  let lastInput = 0;
  const decoder: Lz4Decoder = {
    input(size) {
      if (size > inputRoom) inputRoom = Math.ceil(Math.max(size, 2 * inputRoom) / 64) * 64;
      lastInput = size;
      return Buffer.from(dec.reserve(inputRoom), 0, size);
    },
    decode(length, expected) {
      if (length > lastInput) return `LZ4 body of ${length} bytes was given ${lastInput}`;
      // The length prefix first: the room for the output is reserved only for what the data says it holds (the
      // memory never shrinks, so a wrong `expected` of GiBs would stay).
      if (length < 4 || Buffer.from(dec.reserve(inputRoom)).readUInt32LE(0) !== expected) {
        return `LZ4 data does not hold ${expected} bytes`;
      }
      const mem = Buffer.from(dec.reserve(inputRoom + expected));
      const end = dec.run(4, length, inputRoom, inputRoom + expected);
      if (end < 0) return "LZ4 data does not decompress";
      if (end !== inputRoom + expected) return `chunk is ${end - inputRoom} bytes, expected ${expected}`;
      return mem.subarray(inputRoom, inputRoom + expected);
    },
  };
  return { encoder, decoder };
}
