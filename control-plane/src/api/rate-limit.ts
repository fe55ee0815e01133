// Per-key request limits on the API (DESIGN §8): a token bucket for each API key, `perSecond` requests a second
// on average with bursts of up to `burst`. A request over the limit is answered RESOURCE_EXHAUSTED (HTTP 429)
// with a Retry-After header, before its handler runs.
//
// Decisions: a key is charged only once it is authenticated (a wrong secret under someone's key id must not use
// up their budget); a streaming call counts once, when it starts; buckets live in the replica's memory, so
// behind several replicas a key gets up to that many times the limit (the simple choice until one is needed).
import { Code, ConnectError } from "@connectrpc/connect";

export interface RateLimit {
  /** Sustained requests a second, per key. */
  perSecond: number;
  /** Requests a key may make at once after being idle. */
  burst: number;
}

/**
 * Generous for people and their scripts (a CLI command makes a few calls; a script polling every second uses a
 * twentieth), tight enough that one runaway client cannot keep the database busy for everyone.
 */
export const DEFAULT_RATE_LIMIT: RateLimit = { perSecond: 20, burst: 100 };

/** Past this many buckets, those of keys idle long enough to be full again are forgotten. */
const SWEEP_AT = 10_000;

interface Bucket {
  tokens: number;
  /** Seconds (on `now`'s clock) when `tokens` was computed. */
  at: number;
}

export class ApiRateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    readonly limit: RateLimit,
    private readonly now: () => number = () => performance.now() / 1000,
    private readonly onLimited: () => void = () => {},
  ) {
    if (!(limit.perSecond > 0) || !(limit.burst >= 1)) {
      throw new RangeError(`a rate limit needs perSecond > 0 and burst >= 1, got ${JSON.stringify(limit)}`);
    }
  }

  /** Counts one request of key `keyId`, or throws RateLimitedError (naming the key and when to retry). */
  take(keyId: string): void {
    const now = this.now();
    const bucket = this.buckets.get(keyId) ?? { tokens: this.limit.burst, at: now };
    bucket.tokens = this.refilled(bucket, now);
    bucket.at = now;
    this.buckets.set(keyId, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      if (this.buckets.size > SWEEP_AT) this.sweep(now);
      return;
    }
    this.onLimited();
    throw new RateLimitedError(keyId, this.limit, (1 - bucket.tokens) / this.limit.perSecond);
  }

  /** Keys tracked (for tests and the sweep). */
  get size(): number {
    return this.buckets.size;
  }

  /** A bucket's tokens at `now`: refilled at perSecond since it was last counted, up to the burst. */
  private refilled(bucket: Bucket, now: number): number {
    return Math.min(this.limit.burst, bucket.tokens + (now - bucket.at) * this.limit.perSecond);
  }

  private sweep(now: number): void {
    for (const [key, bucket] of this.buckets) {
      if (this.refilled(bucket, now) >= this.limit.burst) this.buckets.delete(key);
    }
  }
}

export class RateLimitedError extends ConnectError {
  constructor(
    keyId: string,
    limit: RateLimit,
    readonly retryAfterSeconds: number,
  ) {
    const retry = Math.max(1, Math.ceil(retryAfterSeconds));
    super(
      `too many requests with API key ${keyId}: at most ${limit.perSecond} a second, in bursts of up to ${limit.burst}; ` +
        `retry in ${retry} s`,
      Code.ResourceExhausted,
      { "retry-after": String(retry) },
    );
  }
}
