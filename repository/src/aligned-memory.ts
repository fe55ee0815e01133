// Page-aligned memory, which O_DIRECT reads and writes need. A Buffer from Node's allocator is only 16-byte
// aligned, and JavaScript cannot see an address; the memory of a WebAssembly instance starts on a page
// boundary, so memory made here is a WebAssembly memory's, and remembered: `isPageAligned` is how a store
// knows it may read into a buffer with O_DIRECT.

/** The alignment O_DIRECT asks of memory, file offsets and lengths; 4096 covers every common device. */
export const PAGE = 4096;
const WASM_PAGE = 65536;

const aligned = new WeakSet<ArrayBufferLike>();

/**
 * V8 reserves ~10 GiB of address space (guard pages) for every WebAssembly memory and has ~1 TiB for all of
 * them in a process; an allocation past that first forces up to three full collections, then fails. Memory
 * made here stops at this many live memories (the worker threads' own memories need some of the room too)
 * and is ordinary memory beyond it: O_DIRECT reads then fall back to buffered ones. A direct 1 GiB snapshot
 * and restore had at most 18 live; the control plane's concurrent restores take 6 each.
 */
const MAX_LIVE_MEMORIES = 48;
let live = 0;
const collected = new FinalizationRegistry<undefined>(() => {
  live--;
});

// Typed here: the project's lib settings do not include the WebAssembly declarations.
type MemoryConstructor = new (d: {
  initial: number;
  maximum?: number;
  shared?: boolean;
}) => {
  buffer: ArrayBuffer | SharedArrayBuffer;
};

/**
 * At least `size` bytes (rounded up to 64 KiB) starting on a page boundary; shared between threads with
 * `shared`. Where no WebAssembly memory can be had (no WebAssembly, MAX_LIVE_MEMORIES reached, or V8 refuses
 * one), the memory is ordinary and `isPageAligned` says so.
 */
export function alignedMemory(size: number, options: { shared: true }): SharedArrayBuffer;
export function alignedMemory(size: number, options?: { shared?: false }): ArrayBuffer;
export function alignedMemory(size: number, options: { shared?: boolean } = {}): ArrayBuffer | SharedArrayBuffer {
  const pages = Math.max(1, Math.ceil(size / WASM_PAGE));
  const Memory = (globalThis as unknown as { WebAssembly?: { Memory: MemoryConstructor } }).WebAssembly?.Memory;
  if (Memory && live < MAX_LIVE_MEMORIES) {
    try {
      const { buffer } = options.shared
        ? new Memory({ initial: pages, maximum: pages, shared: true })
        : new Memory({ initial: pages });
      aligned.add(buffer);
      live++;
      collected.register(buffer, undefined);
      return buffer;
    } catch {
      // fall through to ordinary memory
    }
  }
  return options.shared ? new SharedArrayBuffer(pages * WASM_PAGE) : new ArrayBuffer(pages * WASM_PAGE);
}

/** A Buffer of exactly `size` bytes over page-aligned memory (see alignedMemory). */
export function alignedBuffer(size: number): Buffer {
  return Buffer.from(alignedMemory(size), 0, size);
}

/** WebAssembly memories made here that are not yet collected (for tests and metrics). */
export function liveAlignedMemories(): number {
  return live;
}

/** Whether `buf` starts on a page boundary of memory made by alignedMemory. */
export function isPageAligned(buf: Uint8Array): boolean {
  return aligned.has(buf.buffer) && buf.byteOffset % PAGE === 0;
}
