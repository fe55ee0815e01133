// A few lines of WebAssembly binary encoding, enough to assemble small hot loops from readable instructions
// here rather than keep opaque blobs or need a wasm toolchain (the build machine has none): the chunker's gear
// scan (host-agent, gear-scan-wasm.ts) and the LZ4 block encoder and decoder (lz4-wasm-encoder.ts,
// lz4-wasm-decoder.ts).
// Opcodes: https://webassembly.github.io/spec/core/binary/instructions.html

export const I32 = 0x7f;

/** The instructions the modules use, as bytes. Memory accesses take the static offset (< 128) where one is useful. */
export const op = {
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  if: [0x04, 0x40],
  else: [0x05],
  end: [0x0b],
  return: [0x0f],
  br: (depth: number) => [0x0c, depth],
  brIf: (depth: number) => [0x0d, depth],
  get: (local: number) => [0x20, local],
  set: (local: number) => [0x21, local],
  tee: (local: number) => [0x22, local],
  load: [0x28, 2, 0], // i32.load align=4
  load32: [0x28, 0, 0], // i32.load, unaligned
  i64Load: (offset: number) => [0x29, 0, offset], // i64.load, unaligned
  load8u: (offset: number) => [0x2d, 0, offset], // i32.load8_u
  load16u: [0x2f, 0, 0], // i32.load16_u, unaligned, little-endian
  store: [0x36, 0, 0], // i32.store, unaligned
  store8: [0x3a, 0, 0], // i32.store8
  store16: [0x3b, 0, 0], // i32.store16, unaligned, little-endian
  i64Store: (offset: number) => [0x37, 0, offset], // i64.store, unaligned
  const: (n: number) => [0x41, ...signedLeb128(n)],
  i64Const: (n: bigint) => [0x42, ...signedLeb128Big(BigInt.asIntN(64, n))],
  eqz: [0x45],
  eq: [0x46],
  ne: [0x47],
  ltU: [0x49],
  gtU: [0x4b],
  leU: [0x4d],
  geU: [0x4f],
  add: [0x6a],
  sub: [0x6b],
  mul: [0x6c],
  and: [0x71],
  or: [0x72],
  xor: [0x73],
  shl: [0x74],
  shrU: [0x76],
  i64Ctz: [0x7a],
  i64Mul: [0x7e],
  i64Xor: [0x85],
  i64Shl: [0x86],
  i64ShrU: [0x88],
  wrapI64: [0xa7], // i32.wrap_i64
  memoryCopy: [0xfc, 10, 0, 0], // memory.copy (bulk memory): dst, src, n
  memoryFill: [0xfc, 11, 0], // memory.fill (bulk memory): dst, byte, n
};

// Pieces built from those, over i32 locals, shared by the modules.

/** local += the number `n` leaves on the stack. */
export const addTo = (local: number, n: number[]): number[] => [...op.get(local), ...n, ...op.add, ...op.set(local)];

/** Returns -1 from the function when `condition` (an i32 it leaves on the stack) holds. */
export const failIf = (condition: number[]): number[] => [
  ...condition,
  ...op.if,
  ...op.const(-1),
  ...op.return,
  ...op.end,
];

/** Whether [at, end) (two locals holding addresses) holds at least the number `n` leaves on the stack. */
export const roomFor = (at: number, end: number, n: number[]): number[] => [
  ...op.get(end),
  ...op.get(at),
  ...op.sub,
  ...n,
  ...op.geU,
];

/** Copies 16 bytes from the address `from` leaves on the stack to the address in local `dst`, as two 8-byte words. */
export const copy16 = (dst: number, from: number[]): number[] =>
  [0, 8].flatMap((k) => [...op.get(dst), ...from, ...op.i64Load(k), ...op.i64Store(k)]);

/**
 * Copies `length` (a local) bytes from the address `from` leaves on the stack to the address in local `dst`:
 * as 16 bytes in two 8-byte words when `wild` holds (a wild copy: bytes past `length` are overwritten and
 * read; the caller's condition vouches for the room on both sides), else with memory.copy, which V8
 * compiles to a call out of the module's code, costly for a few bytes.
 */
export const copyWildOr = (dst: number, from: number[], length: number, wild: number[]): number[] => [
  ...wild,
  ...op.if,
  ...copy16(dst, from),
  ...op.else,
  ...op.get(dst),
  ...from,
  ...op.get(length),
  ...op.memoryCopy,
  ...op.end,
];

export function unsignedLeb128(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

export function signedLeb128(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) return [...out, byte];
    out.push(byte | 0x80);
  }
}

function signedLeb128Big(n: bigint): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = Number(n & 0x7fn);
    n >>= 7n;
    if ((n === 0n && (byte & 0x40) === 0) || (n === -1n && (byte & 0x40) !== 0)) return [...out, byte];
    out.push(byte | 0x80);
  }
}

const vector = (items: number[][]): number[] => [...unsignedLeb128(items.length), ...items.flat()];
const section = (id: number, body: number[]): number[] => [id, ...unsignedLeb128(body.length), ...body];
const name = (text: string): number[] => vector([...Buffer.from(text)].map((b) => [b]));

export interface FunctionModule {
  /** The one function's export name. */
  name: string;
  /** Its i32 parameters, then its extra i32 locals, numbered on from the parameters. */
  params: number;
  locals: number;
  /** Its body, ending with the `end` of the function; it returns one i32. */
  body: number[];
  /** The module's memory: exported as `mem` (the module owns it), or imported as `m.mem` (the caller's). */
  memory: "export" | "import";
}

/** A module of one i32 function and one memory, as binary. */
export function assembleModule(f: FunctionModule): Buffer {
  const code = [...vector([[f.locals, I32]]), ...f.body];
  const memoryType = [0x00, 0x00]; // no maximum, minimum 0 pages (the caller grows it)
  return Buffer.from([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
    ...section(1, vector([[0x60, ...vector(Array(f.params).fill([I32])), ...vector([[I32]])]])), // type 0
    ...(f.memory === "import" ? section(2, vector([[...name("m"), ...name("mem"), 0x02, ...memoryType]])) : []),
    ...section(3, vector([[0]])), // function 0 has type 0
    ...(f.memory === "export" ? section(5, vector([memoryType])) : []),
    ...section(7, vector([[...name(f.name), 0x00, 0], ...(f.memory === "export" ? [[...name("mem"), 0x02, 0]] : [])])),
    ...section(10, vector([[...unsignedLeb128(code.length), ...code]])),
  ]);
}
