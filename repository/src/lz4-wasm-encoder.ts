// LZ4 block encoding as WebAssembly, into memory the encoder keeps from chunk to chunk: lz4-napi's
// `compressSync` allocates a zeroed worst-case Vec per call and copies the result into a new Node Buffer,
// and on a VM where a first touch of a page costs ~11 µs those allocations were half of a snapshot's page
// faults. The algorithm is LZ4's fast one (lz4.c, LZ4_compress_generic with acceleration 1): a 4096-entry
// hash table of 5-byte sequences, a skip that grows the longer nothing matches, matches extended backwards
// then forwards eight bytes at a time, short literal runs copied as two 8-byte words (lz4.c's wild copy)
// rather than through memory.copy (a call out of the compiled code in V8), and the format's end rules (the
// last 5 bytes are literals, no match starts in the last 12). Any LZ4 decoder reads its output.
//
//   encode(src, srcEnd, dst, dstEnd) -> i32
//
// encodes [src, srcEnd) into [dst, dstEnd) and returns where the output ends, or -1 as soon as it cannot fit:
// the caller gives the room the output must fit in to be worth keeping, and incompressible input stops there.
// The hash table is the memory's first 16 KiB; the input must come after it, with at least 4 bytes of memory
// after its end (the wild copy of a short literal run may read them; lz4-wasm.ts puts the output there).
import { addTo, assembleModule, copyWildOr, failIf, op, roomFor } from "./wasm-assembly.js";

/** Bytes of the hash table at address 0: 4096 positions of 4 bytes. */
export const LZ4_ENCODER_TABLE_BYTES = 16 * 1024;

// Parameters, then locals.
const SRC = 0;
const SRC_END = 1;
const DST = 2;
const DST_END = 3;
const IP = 4;
const ANCHOR = 5;
const REF = 6;
const SLOT = 7;
const STEP = 8;
const SEARCH = 9;
const TOKEN_AT = 10;
const TOKEN = 11;
const LEN = 12;
const MATCH_START = 13;
const MF_LIMIT = 14;
const MATCH_LIMIT = 15;
const DIFF = 16;
const FORWARD = 17;
const FORWARD_SLOT = 18;

const get = op.get;
const set = op.set;
/** Fails unless `DST_END - DST >= need`, for the unsigned i32 `need` leaves on the stack. */
const failUnlessRoom = (need: number[]): number[] =>
  failIf([...get(DST_END), ...get(DST), ...op.sub, ...need, ...op.ltU]);
const loadAt = (local: number, delta = 0): number[] => [
  ...get(local),
  ...(delta ? [...op.const(delta), ...op.add] : []),
];

/**
 * The table slot (byte address) of the 5 bytes at `local + delta`, hashed as lz4.c (LZ4_hash5) and lz4_flex
 * (lz4-napi's encoder) do on 64-bit machines: measured on the bench's text, hashing the 4 bytes a match needs
 * left the output 5% larger than lz4-napi's, 5 bytes makes it the same size. Only asked where 8 bytes can be
 * read.
 */
const slotOf = (local: number, delta = 0): number[] => [
  ...loadAt(local, delta),
  ...op.i64Load(0),
  ...op.i64Const(24n),
  ...op.i64Shl,
  ...op.i64Const(889523592379n),
  ...op.i64Mul,
  ...op.i64Const(BigInt(64 - 12)),
  ...op.i64ShrU,
  ...op.wrapI64,
  ...op.const(2),
  ...op.shl,
];

/** `while (no exit condition holds) body`: each exit leaves an i32 on the stack; `body` runs inside block and loop. */
const loopUntil = (exits: number[][], body: number[]): number[] => [
  ...op.block,
  ...op.loop,
  ...exits.flatMap((exit) => [...exit, ...op.brIf(1)]),
  ...body,
  ...op.br(0),
  ...op.end,
  ...op.end,
];

/** Whether the bytes at IP + delta and REF + delta differ. */
const bytesDiffer = (delta: number): number[] => [
  ...loadAt(IP, delta),
  ...op.load8u(0),
  ...loadAt(REF, delta),
  ...op.load8u(0),
  ...op.ne,
];

/** Moves IP and REF on by `n` together. */
const advance = (n: number): number[] => [...addTo(IP, op.const(n)), ...addTo(REF, op.const(n))];

/** Writes LEN's excess over 15 as length bytes (255 while at least 255 is left, then the rest) at DST. */
const writeLengthBytes = [
  ...addTo(LEN, op.const(-15)),
  ...loopUntil(
    [[...get(LEN), ...op.const(255), ...op.ltU]],
    [...get(DST), ...op.const(255), ...op.store8, ...addTo(DST, op.const(1)), ...addTo(LEN, op.const(-255))],
  ),
  ...get(DST),
  ...get(LEN),
  ...op.store8,
  ...addTo(DST, op.const(1)),
];

/** TOKEN |= (LEN < 15 ? LEN : 15) << shift, writing the length bytes when LEN >= 15. */
const lengthIntoToken = (shift: number): number[] => [
  ...get(LEN),
  ...op.const(15),
  ...op.ltU,
  ...op.if,
  ...get(TOKEN),
  ...get(LEN),
  ...op.const(shift),
  ...op.shl,
  ...op.or,
  ...set(TOKEN),
  ...op.else,
  ...get(TOKEN),
  ...op.const(15 << shift),
  ...op.or,
  ...set(TOKEN),
  ...writeLengthBytes,
  ...op.end,
];

/**
 * A token at DST for LEN literals, then the literals from ANCHOR. With `wild`, a run of at most 16 is copied
 * as 16 bytes when the output has room for them: the bytes past the run are overwritten by what follows it
 * (the match offset at least), and those read past it lie before the end of the input or in the output area
 * that follows the input in memory (see lz4-wasm.ts). The block's last literals are copied exactly.
 */
const literals = (wild: boolean): number[] => [
  ...get(DST),
  ...set(TOKEN_AT),
  ...addTo(DST, op.const(1)),
  ...op.const(0),
  ...set(TOKEN),
  ...get(LEN),
  ...set(MATCH_START), // the literal count: lengthIntoToken uses up LEN
  ...lengthIntoToken(4),
  ...(wild
    ? copyWildOr(DST, get(ANCHOR), MATCH_START, [
        ...[...get(MATCH_START), ...op.const(17), ...op.ltU],
        ...[...roomFor(DST, DST_END, op.const(16)), ...op.and],
      ])
    : [...get(DST), ...get(ANCHOR), ...get(MATCH_START), ...op.memoryCopy]),
  ...addTo(DST, get(MATCH_START)),
];

/**
 * Room the literals need at most, plus `more`: the token, LEN bytes, and (LEN - 15) / 255 + 1 length bytes,
 * over-counted as LEN / 128 + 1.
 */
const literalsRoom = (more: number): number[] => [
  ...get(LEN),
  ...get(LEN),
  ...op.const(7),
  ...op.shrU,
  ...op.add,
  ...op.const(2 + more),
  ...op.add,
];

const body = [
  // A fresh table: the same input always encodes the same way.
  ...op.const(0),
  ...op.const(0),
  ...op.const(LZ4_ENCODER_TABLE_BYTES),
  ...op.memoryFill,
  ...get(SRC),
  ...set(ANCHOR),
  ...get(SRC),
  ...set(IP),
  ...get(SRC_END),
  ...op.const(12),
  ...op.sub,
  ...set(MF_LIMIT),
  ...get(SRC_END),
  ...op.const(5),
  ...op.sub,
  ...set(MATCH_LIMIT),
  ...op.block, // $last: to the final literals
  // Fewer than 13 bytes: literals only.
  ...get(SRC_END),
  ...get(SRC),
  ...op.sub,
  ...op.const(13),
  ...op.ltU,
  ...op.brIf(0),
  ...slotOf(IP),
  ...get(IP),
  ...get(SRC),
  ...op.sub,
  ...op.store,
  ...addTo(IP, op.const(1)),
  ...op.loop, // $sequence
  ...op.const(1),
  ...set(STEP),
  ...op.const(1 << 6),
  ...set(SEARCH),
  ...get(IP),
  ...set(FORWARD),
  ...slotOf(IP),
  ...set(FORWARD_SLOT),
  // Find a match: a position the table remembers for the same hash, within 64 KiB, with the same 4 bytes.
  // As in lz4.c, the next position and its slot are worked out before this one is tested, so the two
  // overlap; the block's last candidate may go untested (it then ends in literals).
  ...op.block, // $found
  ...op.loop, // $search
  ...get(FORWARD),
  ...set(IP),
  ...get(FORWARD_SLOT),
  ...set(SLOT),
  ...addTo(FORWARD, get(STEP)),
  ...get(SEARCH),
  ...op.const(6),
  ...op.shrU,
  ...set(STEP),
  ...addTo(SEARCH, op.const(1)),
  ...get(FORWARD),
  ...get(MF_LIMIT),
  ...op.gtU,
  ...op.brIf(3), // $last
  ...get(SLOT),
  ...op.load32,
  ...get(SRC),
  ...op.add,
  ...set(REF),
  ...slotOf(FORWARD),
  ...set(FORWARD_SLOT),
  ...get(SLOT),
  ...get(IP),
  ...get(SRC),
  ...op.sub,
  ...op.store,
  ...get(IP),
  ...get(REF),
  ...op.sub,
  ...op.const(65536),
  ...op.ltU,
  ...op.if,
  ...get(REF),
  ...op.load32,
  ...get(IP),
  ...op.load32,
  ...op.eq,
  ...op.brIf(2), // $found
  ...op.end,
  ...op.br(0),
  ...op.end,
  ...op.end,
  // Extend it backwards over bytes that were going to be literals.
  ...loopUntil(
    [[...get(IP), ...get(ANCHOR), ...op.leU], [...get(REF), ...get(SRC), ...op.leU], bytesDiffer(-1)],
    advance(-1),
  ),
  // The literals before it, and its offset.
  ...get(IP),
  ...get(ANCHOR),
  ...op.sub,
  ...set(LEN),
  ...failUnlessRoom(literalsRoom(2 + 1 + 5)), // offset, then at least a token and the last 5 literals
  ...literals(true),
  ...get(DST),
  ...get(IP),
  ...get(REF),
  ...op.sub,
  ...op.store16,
  ...addTo(DST, op.const(2)),
  // Extend it forwards: 8 bytes at a time, then the first differing byte of the word (or byte by byte near the end).
  ...advance(4),
  ...get(IP),
  ...set(MATCH_START),
  ...op.block, // $extended
  ...loopUntil(
    [[...get(MATCH_LIMIT), ...get(IP), ...op.sub, ...op.const(8), ...op.ltU]],
    [
      // DIFF = the number of equal low bits of the two words (64 when they are the same).
      ...get(IP),
      ...op.i64Load(0),
      ...get(REF),
      ...op.i64Load(0),
      ...op.i64Xor,
      ...op.i64Ctz,
      ...op.wrapI64,
      ...op.tee(DIFF),
      ...op.const(64),
      ...op.ltU,
      ...op.if,
      // The first differing byte is the lowest set byte of the difference (little-endian).
      ...get(DIFF),
      ...op.const(3),
      ...op.shrU,
      ...get(IP),
      ...op.add,
      ...set(IP),
      ...op.br(3), // if, loop, block: to $extended
      ...op.end,
      ...advance(8),
    ],
  ),
  ...loopUntil([[...get(IP), ...get(MATCH_LIMIT), ...op.geU], bytesDiffer(0)], advance(1)),
  ...op.end,
  // Its length (4 is implied), then the token is complete.
  ...get(IP),
  ...get(MATCH_START),
  ...op.sub,
  ...set(LEN),
  // Length bytes (over-counted as above), then at least a token and the last 5 literals.
  ...failUnlessRoom([...get(LEN), ...op.const(7), ...op.shrU, ...op.const(1 + 1 + 5), ...op.add]),
  ...lengthIntoToken(0),
  ...get(TOKEN_AT),
  ...get(TOKEN),
  ...op.store8,
  ...get(IP),
  ...set(ANCHOR),
  ...get(IP),
  ...get(MF_LIMIT),
  ...op.gtU,
  ...op.brIf(1), // $last
  // Remember the position two bytes back as well (lz4.c does): it finds more matches for little work.
  ...slotOf(IP, -2),
  ...get(IP),
  ...op.const(2),
  ...op.sub,
  ...get(SRC),
  ...op.sub,
  ...op.store,
  ...op.br(0), // $sequence
  ...op.end,
  ...op.end,
  // The last literals.
  ...get(SRC_END),
  ...get(ANCHOR),
  ...op.sub,
  ...set(LEN),
  ...failUnlessRoom(literalsRoom(0)),
  ...literals(false),
  ...get(TOKEN_AT),
  ...get(TOKEN),
  ...op.store8,
  ...get(DST),
  ...op.end,
];

/** The module, base64 (see lz4-wasm.ts for the code that runs it). It imports its memory as `m.mem`. */
export const LZ4_ENCODER_WASM: string = assembleModule({
  name: "encode",
  params: 4,
  locals: 15,
  body,
  memory: "import",
}).toString("base64");
