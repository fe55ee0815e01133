import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { ApiRateLimiter, RateLimitedError } from "./rate-limit.js";

/** A limiter on a clock the test moves. */
function limiter(perSecond: number, burst: number) {
  const clock = { now: 1000 };
  let limited = 0;
  const l = new ApiRateLimiter(
    { perSecond, burst },
    () => clock.now,
    () => limited++,
  );
  const allowed = (key: string): boolean => {
    try {
      l.take(key);
      return true;
    } catch (err) {
      if (!(err instanceof RateLimitedError)) throw err;
      return false;
    }
  };
  return { l, clock, allowed, limited: () => limited };
}

describe("ApiRateLimiter", () => {
  it("allows a burst, then the sustained rate, per key", () => {
    const { clock, allowed, limited } = limiter(2, 3);
    expect([1, 2, 3, 4].map(() => allowed("a"))).toEqual([true, true, true, false]);
    expect(allowed("b")).toBe(true); // another key has its own bucket
    clock.now += 0.5; // one more request's worth at 2 a second
    expect([allowed("a"), allowed("a")]).toEqual([true, false]);
    clock.now += 60; // idle: back to a full burst, no more
    expect([1, 2, 3, 4].map(() => allowed("a"))).toEqual([true, true, true, false]);
    expect(limited()).toBe(3);
  });

  it("refuses with RESOURCE_EXHAUSTED, naming the key, the limit and when to retry (Retry-After)", () => {
    const { l, clock } = limiter(0.1, 1);
    l.take("k1");
    clock.now += 2; // 0.2 of a request back: 8 s to go
    let refused: unknown;
    try {
      l.take("k1");
    } catch (err) {
      refused = err;
    }
    const err = ConnectError.from(refused);
    expect(err.code).toBe(Code.ResourceExhausted);
    expect(err.rawMessage).toBe(
      "too many requests with API key k1: at most 0.1 a second, in bursts of up to 1; retry in 8 s",
    );
    expect(err.metadata.get("retry-after")).toBe("8");
  });

  it("forgets keys idle long enough to be full again once it tracks many", () => {
    const { l, clock, allowed } = limiter(10, 5);
    for (let i = 0; i < 10_000; i++) l.take(`idle-${i}`);
    expect(l.size).toBe(10_000);
    clock.now += 1; // every idle key is full again (1 s x 10 a second > 5)
    expect(allowed("busy")).toBe(true);
    expect(l.size).toBe(1);
  });

  it("holds a tenant's keys of one role together to 5 times one key's limit: new keys bring no fresh budget", () => {
    // Any key may make keys of its own role: one made only for its fresh bucket would otherwise multiply the limit.
    const { l, clock } = limiter(1, 2);
    const served = (key: string) => {
      try {
        l.take(key, { id: "acme", role: "consumer" });
        return true;
      } catch (err) {
        if (!(err instanceof RateLimitedError)) throw err;
        return false;
      }
    };
    const results = Array.from({ length: 20 }, (_, i) => served(`k${i}`)); // 20 keys, one call each
    expect(results.filter(Boolean)).toHaveLength(10); // the tenant's burst: 5 x 2
    let refused: unknown;
    try {
      l.take("k99", { id: "acme", role: "consumer" });
    } catch (err) {
      refused = err;
    }
    expect(ConnectError.from(refused).rawMessage).toBe(
      "too many requests with the consumer keys of tenant acme together: at most 5 a second, in bursts of up to 10; retry in 1 s",
    );
    expect(served("other")).toBe(false);
    l.take("k0", { id: "another-tenant", role: "consumer" }); // another tenant's budget is its own
    l.take("p0", { id: "acme", role: "provider" }); // and its provider's: a consumer's keys cannot starve it
    for (let i = 0; i < 20; i++) l.take(`a${i}`, { id: "admin", role: "admin" }); // operators': key by key only
    clock.now += 1; // 5 requests' worth back for the tenant
    expect(Array.from({ length: 6 }, (_, i) => served(`n${i}`))).toEqual([true, true, true, true, true, false]);
  });

  it("refuses a limit that would refuse everything", () => {
    expect(() => new ApiRateLimiter({ perSecond: 0, burst: 10 })).toThrow(/perSecond > 0/);
    expect(() => new ApiRateLimiter({ perSecond: 1, burst: 0 })).toThrow(/burst >= 1/);
  });
});
