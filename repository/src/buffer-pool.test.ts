import { describe, expect, it } from "vitest";
import { BufferPool } from "./buffer-pool.js";

describe("BufferPool", () => {
  it("hands back what was given back, whole, instead of allocating", () => {
    const pool = new BufferPool(1024, 2);
    const a = pool.take(100);
    expect(a.length).toBe(1024);
    pool.give(a.subarray(10, 20)); // a view is enough to return the buffer
    expect(pool.idle).toBe(1);
    const again = pool.take(1024);
    expect(again.buffer).toBe(a.buffer);
    expect(again.length).toBe(1024);
    expect(pool.idle).toBe(0);
  });

  it("gives a larger request its own size, and reuses it only for requests it fits", () => {
    const pool = new BufferPool(1024, 4);
    const big = pool.take(5000);
    expect(big.length).toBe(5000);
    const small = pool.take(10);
    pool.give(small);
    pool.give(big);
    expect(pool.take(4000).buffer).toBe(big.buffer);
    expect(pool.take(4000).buffer).not.toBe(small.buffer);
  });

  it("keeps at most `keep` buffers, ignores memory it did not hand out and a buffer given back twice", () => {
    const pool = new BufferPool(64, 2);
    const taken = [pool.take(), pool.take(), pool.take()];
    for (const b of taken) pool.give(b);
    expect(pool.idle).toBe(2);
    pool.give(Buffer.alloc(64));
    expect(pool.idle).toBe(2);

    const once = new BufferPool(64, 4);
    const b = once.take();
    once.give(b);
    once.give(b);
    expect(once.idle).toBe(1);
  });

  it("refuses nonsense sizes", () => {
    expect(() => new BufferPool(0, 1)).toThrow(/positive integer/);
    expect(() => new BufferPool(10, -1)).toThrow(/non-negative/);
  });
});
