// When each API key was last used (api_keys.last_used_at, shown by `dumont key list`): what tells an operator or a
// tenant which keys nothing uses any more, before revoking them or when a tenant reaches its key limit.
//
// Decisions: the time is kept to the minute, as GitHub and AWS show theirs: a replica writes a key's time at most
// once a minute, so a script calling many times a second costs one small UPDATE a minute, not one a call. The
// write does not hold the request up and its failure fails no call (it is logged); a replica stopped within the
// minute loses at most that minute's mark. Several replicas each write their own marks; the stored time only
// moves forward (markApiKeyUsed).
import { markApiKeyUsed } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import type { Logger } from "../logger.js";

/** How often a replica writes one key's last use: the precision `last_used_at` has. */
export const KEY_USE_RESOLUTION_MS = 60_000;
/** Past this many keys remembered, those not written for a resolution are forgotten (their next use writes). */
const SWEEP_AT = 10_000;

export class KeyUses {
  /** Key id → when (ms on `now`'s clock) this replica last wrote its use. */
  private readonly written = new Map<string, number>();
  private readonly writing = new Set<Promise<void>>();

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Notes that key `keyId` carried an authenticated call now; writes it unless written within the minute. */
  record(keyId: string): void {
    const now = this.now();
    const last = this.written.get(keyId);
    if (last !== undefined && now - last < KEY_USE_RESOLUTION_MS) return;
    this.written.set(keyId, now);
    if (this.written.size > SWEEP_AT) this.sweep(now);
    const write = markApiKeyUsed(this.db, keyId, new Date(now))
      .catch((err: unknown) => {
        this.written.delete(keyId); // the next call tries again
        this.log.warn(
          { keyId, err: err instanceof Error ? err.message : String(err) },
          "could not record an API key's use",
        );
      })
      .finally(() => this.writing.delete(write));
    this.writing.add(write);
  }

  /** Resolves once every write begun has ended: before the database closes, and in tests. */
  async settled(): Promise<void> {
    while (this.writing.size > 0) await Promise.all(this.writing);
  }

  private sweep(now: number): void {
    for (const [id, at] of this.written) if (now - at >= KEY_USE_RESOLUTION_MS) this.written.delete(id);
  }
}
