// LZ4 block decoding (https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md) as WebAssembly, into
// memory the decoder keeps from chunk to chunk. lz4-napi's `uncompressSync` returns a fresh Buffer per call
// (a Rust Vec, then copied once more into a Node Buffer): on a restore that is two new allocations per
// compressible chunk, and on a VM where a first touch of a page costs ~11 µs those page faults were 44% of
// the agent's faults in a streamed restore. Measured on 400 chunks of the bench's text: 2.37 GB/s for this
// decoder with the copies in and out, against 1.3-1.6 GB/s for lz4-napi and one copy.
//
//   decode(src, srcEnd, dst, dstEnd) -> i32
//
// decodes the block in [src, srcEnd) into [dst, dstEnd) and returns where the output ends, or -1 when the
// block is malformed or would write outside [dst, dstEnd) or read outside [src, srcEnd). Short literals and
// matches are copied 16 bytes at a time while that stays inside both ranges (the bytes past their end are
// overwritten by what follows), long ones with memory.copy, overlapping matches 8 bytes at a time when the
// offset allows and byte by byte when it does not. The encoder is lz4-wasm-encoder.ts; lz4-napi remains for
// threads without WebAssembly (node --jitless).
import { addTo, assembleModule, copy16, copyWildOr, failIf, op, roomFor } from "./wasm-assembly.js";

// Parameters, then locals.
const SRC = 0;
const SRC_END = 1;
const DST = 2;
const DST_END = 3;
const START = 4;
const TOKEN = 5;
const LEN = 6;
const BYTE = 7;
const OFFSET = 8;
const FROM = 9;

const get = op.get;

/** A length's extension bytes: 255 adds 255 and goes on, anything else adds itself and ends it. */
const extendLength = [
  ...op.loop,
  ...failIf([...get(SRC), ...get(SRC_END), ...op.geU]),
  ...get(SRC),
  ...op.load8u(0),
  ...op.tee(BYTE),
  ...addTo(LEN, []),
  ...addTo(SRC, op.const(1)),
  // No length can exceed the whole output: this also keeps LEN from wrapping around on hostile input.
  ...failIf([...get(LEN), ...get(DST_END), ...get(START), ...op.sub, ...op.gtU]),
  ...get(BYTE),
  ...op.const(255),
  ...op.eq,
  ...op.brIf(0),
  ...op.end,
];

/** LEN from the token's `nibble` (the instructions that isolate it), extended when it is 15. */
const lengthFrom = (nibble: number[]): number[] => [
  ...get(TOKEN),
  ...nibble,
  ...op.set(LEN),
  ...get(LEN),
  ...op.const(15),
  ...op.eq,
  ...op.if,
  ...extendLength,
  ...op.end,
];

/** Fails unless LEN bytes fit in [at, end). */
const failUnlessFits = (at: number, end: number): number[] =>
  failIf([...get(LEN), ...get(end), ...get(at), ...op.sub, ...op.gtU]);

/** `for (k = 0; k < LEN; k += step) copy step bytes from FROM + k to DST + k` (step 8: i64 words; 1: bytes). */
const copyForward = (step: 8 | 1): number[] => [
  ...op.const(0),
  ...op.set(BYTE),
  ...op.loop,
  ...get(DST),
  ...get(BYTE),
  ...op.add,
  ...get(FROM),
  ...get(BYTE),
  ...op.add,
  ...(step === 8 ? [...op.i64Load(0), ...op.i64Store(0)] : [...op.load8u(0), ...op.store8]),
  ...get(BYTE),
  ...op.const(step),
  ...op.add,
  ...op.tee(BYTE),
  ...get(LEN),
  ...op.ltU,
  ...op.brIf(0),
  ...op.end,
];

const body = [
  ...get(DST),
  ...op.set(START),
  ...op.block,
  ...op.loop,
  // The token: literal length in the high four bits, match length - 4 in the low four.
  ...failIf([...get(SRC), ...get(SRC_END), ...op.geU]),
  ...get(SRC),
  ...op.load8u(0),
  ...op.set(TOKEN),
  ...addTo(SRC, op.const(1)),
  ...lengthFrom([...op.const(4), ...op.shrU]),
  // Literals.
  ...failUnlessFits(SRC, SRC_END),
  ...failUnlessFits(DST, DST_END),
  ...copyWildOr(DST, get(SRC), LEN, [
    ...[...get(LEN), ...op.const(16), ...op.leU],
    ...[...roomFor(SRC, SRC_END, op.const(16)), ...op.and],
    ...[...roomFor(DST, DST_END, op.const(16)), ...op.and],
  ]),
  ...addTo(SRC, get(LEN)),
  ...addTo(DST, get(LEN)),
  // The last sequence has literals only.
  ...get(SRC),
  ...get(SRC_END),
  ...op.eq,
  ...op.brIf(1),
  // The match: a 2-byte little-endian offset back into the output, then its length.
  ...failIf([...get(SRC_END), ...get(SRC), ...op.sub, ...op.const(2), ...op.ltU]),
  ...get(SRC),
  ...op.load16u,
  ...op.set(OFFSET),
  ...addTo(SRC, op.const(2)),
  ...failIf([...get(OFFSET), ...op.eqz]),
  ...failIf([...get(OFFSET), ...get(DST), ...get(START), ...op.sub, ...op.gtU]),
  ...lengthFrom([...op.const(15), ...op.and]),
  ...addTo(LEN, op.const(4)),
  ...failUnlessFits(DST, DST_END),
  ...get(DST),
  ...get(OFFSET),
  ...op.sub,
  ...op.set(FROM),
  // Short, and the source 8 or more bytes back: two words (the second reads what the first wrote, if need be).
  ...get(LEN),
  ...op.const(16),
  ...op.leU,
  ...get(OFFSET),
  ...op.const(8),
  ...op.geU,
  ...op.and,
  ...roomFor(DST, DST_END, op.const(16)),
  ...op.and,
  ...op.if,
  ...copy16(DST, get(FROM)),
  ...op.else,
  // Not overlapping.
  ...get(OFFSET),
  ...get(LEN),
  ...op.geU,
  ...op.if,
  ...get(DST),
  ...get(FROM),
  ...get(LEN),
  ...op.memoryCopy,
  ...op.else,
  // Overlapping (a repeated pattern): words while each reads only bytes already written, else bytes.
  ...get(OFFSET),
  ...op.const(8),
  ...op.geU,
  ...roomFor(DST, DST_END, [...get(LEN), ...op.const(8), ...op.add]),
  ...op.and,
  ...op.if,
  ...copyForward(8),
  ...op.else,
  ...copyForward(1),
  ...op.end,
  ...op.end,
  ...op.end,
  ...addTo(DST, get(LEN)),
  ...op.br(0),
  ...op.end,
  ...op.end,
  ...get(DST),
  ...op.end,
];

/** The module, base64 (see lz4-wasm.ts for the code that runs it). It imports its memory as `m.mem`. */
export const LZ4_DECODER_WASM: string = assembleModule({
  name: "decode",
  params: 4,
  locals: 6,
  body,
  memory: "import",
}).toString("base64");
