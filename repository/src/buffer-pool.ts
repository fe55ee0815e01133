// Reusable buffers for bulk transfers (pack reads and chunk messages on the agent stream).
//
// Node allocates every large Buffer outside V8's heap and reports it as "external memory"; V8 answers each
// few tens of MiB of it with a full (mark-compact) collection. Streaming a 1 GiB restore allocated about
// 3 GiB that way on the control plane (pack reads, message encoding, grpc-js framing), and full collections
// took a fifth of its main thread. Buffers taken here and given back once their bytes have been copied on are
// allocated once per transfer instead.

export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly owned = new WeakSet<ArrayBufferLike>();

  /**
   * @param size the usual request; smaller requests get a buffer of this size, larger ones their own size.
   * @param keep at most this many buffers wait in the pool; more given back are left to the collector.
   * @param allocate makes a new buffer (page-aligned ones for O_DIRECT reads: alignedBuffer).
   */
  constructor(
    readonly size: number,
    private readonly keep: number,
    private readonly allocate: (size: number) => Buffer = (n) => Buffer.allocUnsafeSlow(n),
  ) {
    if (!(Number.isInteger(size) && size > 0))
      throw new Error(`pool buffer size must be a positive integer, got ${size}`);
    if (!(Number.isInteger(keep) && keep >= 0))
      throw new Error(`pool keep must be a non-negative integer, got ${keep}`);
  }

  /** A buffer of at least `size` bytes, whose contents are unspecified. */
  take(size: number = this.size): Buffer {
    for (let i = this.free.length - 1; i >= 0; i--) {
      const buffer = this.free[i];
      if (buffer.length >= size) {
        this.free.splice(i, 1);
        return buffer;
      }
    }
    const buffer = this.allocate(Math.max(size, this.size));
    this.owned.add(buffer.buffer);
    return buffer;
  }

  /**
   * Returns a buffer taken from this pool (or any view of one) for reuse. The caller must hold no view of it
   * any more. Memory the pool did not hand out is ignored, so callers need not tell the two apart.
   */
  give(buffer: Uint8Array): void {
    if (!this.owned.has(buffer.buffer) || this.free.length >= this.keep) return;
    const whole = Buffer.from(buffer.buffer, 0, buffer.buffer.byteLength);
    if (!this.free.some((b) => b.buffer === whole.buffer)) this.free.push(whole);
  }

  /** Buffers waiting in the pool (for tests and metrics). */
  get idle(): number {
    return this.free.length;
  }
}
