// Exponential backoff with jitter for reconnecting to the control plane (AWS "equal jitter"):
// half the delay is fixed, half random, so a control-plane restart does not get a thundering herd.
export class ReconnectBackoff {
  private attempt = 0;
  /** When the last session was welcomed, until the next delay is taken. */
  private connectedAt: number | undefined;

  constructor(
    private readonly baseMs = 500,
    private readonly maxMs = 30_000,
    private readonly random: () => number = Math.random,
    /** How long a session must last for its end to start the delays over. */
    private readonly stableMs = 10_000,
  ) {}

  /**
   * A session was welcomed. The delays start over once it has lasted `stableMs`: one that ends at once (a
   * second stream refused right after the welcome) goes on backing off, rather than reconnecting every
   * half second for good.
   */
  connected(now = Date.now()): void {
    this.connectedAt = now;
  }

  next(now = Date.now()): number {
    if (this.connectedAt !== undefined && now - this.connectedAt >= this.stableMs) this.attempt = 0;
    this.connectedAt = undefined;
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** this.attempt);
    this.attempt++;
    return Math.round(ceiling / 2 + this.random() * (ceiling / 2));
  }

  /** After a failure the server told us will not go away soon (bad certificate, wrong protocol). */
  slowest(): number {
    this.connectedAt = undefined;
    this.attempt = Math.ceil(Math.log2(this.maxMs / this.baseMs));
    return this.next();
  }
}
