// Per-key request limits on the API (DESIGN §8): a token bucket for each API key, `perSecond` requests a second
// on average with bursts of up to `burst`. A request over the limit is answered RESOURCE_EXHAUSTED (HTTP 429)
// with a Retry-After header, before its handler runs.
//
// Decisions: a key is charged only once it is authenticated (a wrong secret under someone's key id must not use
// up their budget); a streaming call counts once, when it starts; buckets live in the replica's memory, so
// behind several replicas a key gets up to that many times the limit (the simple choice until one is needed).
// A tenant's keys of one role together have a bucket too, TENANT_LIMIT_FACTOR times a key's: a tenant runs
// several clients, but a key made only for a fresh bucket (any key may make keys of its own role) gets it no
// more. Per role, so a consumer's keys cannot starve its provider (who could then not revoke them). Not for
// admins: the operators' keys are theirs, and a runaway automation must not throttle the person revoking it.
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

/** What a tenant's keys may make together, as a multiple of one key's limit. */
export const TENANT_LIMIT_FACTOR = 5;

/** Past this many buckets, those of keys idle long enough to be full again are forgotten. */
const SWEEP_AT = 10_000;

interface Bucket {
  tokens: number;
  /** Seconds (on `now`'s clock) when `tokens` was computed. */
  at: number;
  limit: RateLimit;
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

  /**
   * Counts one request of key `keyId` (of `tenant`, whose keys of that role share a bucket too), or throws
   * RateLimitedError naming the limit reached and when to retry; a refused request is charged to neither.
   */
  take(keyId: string, tenant?: { id: string; role: string }): void {
    const now = this.now();
    const key = this.bucket(`key ${keyId}`, this.limit, now);
    const shared =
      tenant === undefined || tenant.role === "admin"
        ? undefined
        : this.bucket(`tenant ${tenant.id} ${tenant.role}`, this.tenantLimit, now);
    for (const [bucket, who] of [
      [key, `API key ${keyId}`],
      [shared, `the ${tenant?.role} keys of tenant ${tenant?.id} together`],
    ] as const) {
      if (!bucket || bucket.tokens >= 1) continue;
      this.onLimited();
      throw new RateLimitedError(who, bucket.limit, (1 - bucket.tokens) / bucket.limit.perSecond);
    }
    key.tokens -= 1;
    if (shared) shared.tokens -= 1;
    if (this.buckets.size > SWEEP_AT) this.sweep(now);
  }

  private get tenantLimit(): RateLimit {
    return { perSecond: this.limit.perSecond * TENANT_LIMIT_FACTOR, burst: this.limit.burst * TENANT_LIMIT_FACTOR };
  }

  /** The bucket `name`, refilled to `now`. */
  private bucket(name: string, limit: RateLimit, now: number): Bucket {
    const bucket = this.buckets.get(name) ?? { tokens: limit.burst, at: now, limit };
    bucket.tokens = this.refilled(bucket, now);
    bucket.at = now;
    this.buckets.set(name, bucket);
    return bucket;
  }

  /** Keys tracked (for tests and the sweep). */
  get size(): number {
    return this.buckets.size;
  }

  /** A bucket's tokens at `now`: refilled at perSecond since it was last counted, up to the burst. */
  private refilled(bucket: Bucket, now: number): number {
    return Math.min(bucket.limit.burst, bucket.tokens + (now - bucket.at) * bucket.limit.perSecond);
  }

  private sweep(now: number): void {
    for (const [key, bucket] of this.buckets) {
      if (this.refilled(bucket, now) >= bucket.limit.burst) this.buckets.delete(key);
    }
  }
}

export class RateLimitedError extends ConnectError {
  constructor(
    /** Whose limit: "API key <id>", or "the API keys of tenant <id> together". */
    who: string,
    limit: RateLimit,
    readonly retryAfterSeconds: number,
  ) {
    const retry = Math.max(1, Math.ceil(retryAfterSeconds));
    super(
      `too many requests with ${who}: at most ${limit.perSecond} a second, in bursts of up to ${limit.burst}; ` +
        `retry in ${retry} s`,
      Code.ResourceExhausted,
      { "retry-after": String(retry) },
    );
  }
}
