import { describe, expect, it } from "vitest";
import { ReconnectBackoff } from "./reconnect-backoff.js";

describe("ReconnectBackoff", () => {
  it("doubles up to the cap, with at most half of each delay random", () => {
    const low = new ReconnectBackoff(500, 8000, () => 0);
    expect([1, 2, 3, 4, 5, 6].map(() => low.next())).toEqual([250, 500, 1000, 2000, 4000, 4000]);
    const high = new ReconnectBackoff(500, 8000, () => 0.999999);
    expect([1, 2, 3, 4, 5].map(() => high.next())).toEqual([500, 1000, 2000, 4000, 8000]);
  });

  it("starts over after a successful connection", () => {
    const b = new ReconnectBackoff(500, 8000, () => 0);
    b.next();
    b.next();
    b.reset();
    expect(b.next()).toBe(250);
  });

  it("jumps to the cap for failures that will not clear soon", () => {
    const b = new ReconnectBackoff(500, 30_000, () => 0);
    expect(b.slowest()).toBe(15_000);
  });
});
