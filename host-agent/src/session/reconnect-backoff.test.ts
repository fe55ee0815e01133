import { describe, expect, it } from "vitest";
import { ReconnectBackoff } from "./reconnect-backoff.js";

describe("ReconnectBackoff", () => {
  it("doubles up to the cap, with at most half of each delay random", () => {
    const low = new ReconnectBackoff(500, 8000, () => 0);
    expect([1, 2, 3, 4, 5, 6].map(() => low.next())).toEqual([250, 500, 1000, 2000, 4000, 4000]);
    const high = new ReconnectBackoff(500, 8000, () => 0.999999);
    expect([1, 2, 3, 4, 5].map(() => high.next())).toEqual([500, 1000, 2000, 4000, 8000]);
  });

  it("starts over after a session that lasted, not after one that ended at once", () => {
    const b = new ReconnectBackoff(500, 8000, () => 0, 30_000);
    b.next();
    b.next();
    b.connected(0);
    expect(b.next(31_000)).toBe(250); // lasted 31 s: over
    b.next();
    b.next();
    // Welcomed, then dropped a moment later, again and again: it keeps backing off (it reset to 250 before).
    b.connected(100_000);
    expect(b.next(100_200)).toBe(2000);
    b.connected(102_000);
    expect(b.next(102_100)).toBe(4000);
  });

  it("jumps to the cap for failures that will not clear soon", () => {
    const b = new ReconnectBackoff(500, 30_000, () => 0);
    expect(b.slowest()).toBe(15_000);
  });
});
