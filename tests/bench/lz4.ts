// LZ4 for chunks: the WebAssembly encoder and decoder (repository/src/lz4-wasm.ts) against lz4-napi, on
// 1 MiB chunks of the snapshot corpus's kinds of content, used as the chunk codec uses them: encoding keeps a
// result only if it is at least 1/32 smaller (the WebAssembly encoder is told that room and stops there);
// decoding puts the plain bytes into a buffer the caller reuses (the wasm decoder's body is put into its
// memory first, as the codec decrypts it there).
import { createRequire } from "node:module";
import { createLz4Wasm, LZ4_WASM } from "@dumont/repository";
import type { BenchOptions } from "./support/bench-options.js";
import { csvText, logText, noise, sourceText } from "./support/corpus-text.js";

const CHUNK = 1024 * 1024;

interface Lz4Napi {
  compressSync(data: Buffer): Buffer;
  uncompressSync(data: Buffer): Buffer;
}

interface Side {
  encodeMBps: number;
  decodeMBps: number;
  /** Bytes the chunks take as the codec stores them (LZ4 where that saves 1/32, else raw). */
  bytesStored: number;
  /** Minor page faults of this process over all the side's runs (fresh memory touched). */
  pageFaults: number;
}

export async function runLz4Bench(options: BenchOptions & { runs?: number; chunks?: number }): Promise<object> {
  const lz4 = createRequire(import.meta.url)("lz4-napi") as Lz4Napi;
  const wasm = createLz4Wasm(LZ4_WASM);
  if (!wasm) return { skipped: "WebAssembly is not available in this Node" };
  const runs = options.runs ?? 5;
  const count = options.chunks ?? 64;
  const kinds: [string, (i: number) => Buffer][] = [
    ["csv", (i) => csvText(CHUNK, 5000 + i)],
    ["log", (i) => logText(CHUNK, 6000 + i)],
    ["source", (i) => sourceText(CHUNK, 7000 + i)],
    ["incompressible", (i) => noise(`lz4-bench:${i}`, CHUNK)],
  ];
  const out = Buffer.alloc(CHUNK);
  const room = CHUNK - (CHUNK >> 5);
  const report: Record<string, { napi: Side; wasm: Side; wasmVsNapi: { encode: number; decode: number } }> = {};
  for (const [kind, make] of kinds) {
    options.progress(`lz4: ${kind}, ${count} chunks of 1 MiB, ${runs} runs each way`);
    const chunks = Array.from({ length: count }, (_, i) => make(i));
    const napiBodies = chunks.map((c) => lz4.compressSync(c));
    const wasmBodies = chunks.map((c) => {
      const body = wasm.encoder.encode(c, room);
      return body ? Buffer.from(body) : undefined;
    });
    const stored = (bodies: (Buffer | undefined)[]) =>
      bodies.reduce((n, b, i) => n + (b && b.length <= room ? b.length : chunks[i].length), 0);
    // Each step of each run times one side, then the other: drift on this machine hits both alike.
    const times = {
      napiEncode: [] as number[],
      wasmEncode: [] as number[],
      napiDecode: [] as number[],
      wasmDecode: [] as number[],
    };
    const faults = { napi: 0, wasm: 0 };
    const timed = (side: "napi" | "wasm", list: number[], work: () => void) => {
      const f0 = process.resourceUsage().minorPageFault;
      const t0 = process.hrtime.bigint();
      work();
      list.push(Number(process.hrtime.bigint() - t0) / 1e9);
      faults[side] += process.resourceUsage().minorPageFault - f0;
    };
    for (let r = 0; r < runs; r++) {
      timed("napi", times.napiEncode, () => {
        for (const c of chunks) {
          const body = lz4.compressSync(c);
          if (body.length <= room) out.fill(body, 0, body.length);
        }
      });
      timed("wasm", times.wasmEncode, () => {
        for (const c of chunks) {
          const body = wasm.encoder.encode(c, room);
          if (body) out.fill(body, 0, body.length);
        }
      });
      timed("napi", times.napiDecode, () => {
        for (const body of napiBodies) {
          if (body.length > room) continue; // stored raw: nothing to decode
          const plain = lz4.uncompressSync(body);
          out.fill(plain, 0, plain.length);
        }
      });
      timed("wasm", times.wasmDecode, () => {
        for (const body of wasmBodies) {
          if (!body) continue;
          wasm.decoder.input(body.length).set(body);
          const plain = wasm.decoder.decode(body.length, CHUNK);
          if (typeof plain === "string") throw new Error(`the wasm decoder refused its own ${kind} chunk: ${plain}`);
          out.fill(plain, 0, plain.length);
        }
      });
    }
    const megabytes = (count * CHUNK) / 1e6;
    const rate = (list: number[]) => Math.round(megabytes / median(list));
    // Incompressible chunks are stored raw by both, so nothing is decoded: no decode rate to report.
    const decodes = wasmBodies.some((b) => b);
    const napi: Side = {
      encodeMBps: rate(times.napiEncode),
      decodeMBps: decodes ? rate(times.napiDecode) : 0,
      bytesStored: stored(napiBodies),
      pageFaults: faults.napi,
    };
    const wasmSide: Side = {
      encodeMBps: rate(times.wasmEncode),
      decodeMBps: decodes ? rate(times.wasmDecode) : 0,
      bytesStored: stored(wasmBodies),
      pageFaults: faults.wasm,
    };
    report[kind] = {
      napi,
      wasm: wasmSide,
      wasmVsNapi: {
        encode: round2(wasmSide.encodeMBps / napi.encodeMBps),
        decode: decodes ? round2(wasmSide.decodeMBps / napi.decodeMBps) : 0,
      },
    };
  }
  return { chunkBytes: CHUNK, chunksPerKind: count, runs, kinds: report };
}

function median(list: number[]): number {
  const sorted = [...list].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}
