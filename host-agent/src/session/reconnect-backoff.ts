// Exponential backoff with jitter for reconnecting to the control plane (AWS "equal jitter"):
// half the delay is fixed, half random, so a control-plane restart does not get a thundering herd.
export class ReconnectBackoff {
  private attempt = 0;

  constructor(
    private readonly baseMs = 500,
    private readonly maxMs = 30_000,
    private readonly random: () => number = Math.random,
  ) {}

  next(): number {
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** this.attempt);
    this.attempt++;
    return Math.round(ceiling / 2 + this.random() * (ceiling / 2));
  }

  /** After a failure the server told us will not go away soon (bad certificate, wrong protocol). */
  slowest(): number {
    this.attempt = Math.ceil(Math.log2(this.maxMs / this.baseMs));
    return this.next();
  }

  reset(): void {
    this.attempt = 0;
  }
}
