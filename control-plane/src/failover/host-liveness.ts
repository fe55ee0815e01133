// Host liveness, in one place (Nomad's heartbeat.go is the model): every agent message counts as a
// heartbeat; a host silent for `lostAfter` is marked lost with an event; a Hello brings it back online.
// Heartbeats are kept in memory and written in batches so thousands of hosts cost a few queries a second.
import type { Db } from "../db/database.js";
import { markSilentHostsLost, touchHosts } from "../db/host-repository.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";

export interface HostLivenessOptions {
  lostAfterSeconds: number;
  /** How often to flush heartbeats and look for silent hosts. Default: lostAfter / 5, at most 1 s. */
  checkIntervalMs?: number;
  onLost?: (hostIds: string[]) => void;
  /** Runs a heartbeat write; the control plane queues it behind telemetry writes to the same rows. */
  serializeWrites?: <T>(work: () => Promise<T>) => Promise<T>;
}

export class HostLiveness {
  private readonly heard = new Set<string>();
  private readonly startedAt = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly options: HostLivenessOptions,
  ) {}

  /** Record that a host sent something just now. */
  heartbeat(hostId: string): void {
    this.heard.add(hostId);
  }

  start(): void {
    const interval = this.options.checkIntervalMs ?? Math.min(1000, (this.options.lostAfterSeconds * 1000) / 5);
    this.timer = setInterval(() => {
      this.running = this.running
        .then(async () => {
          await this.check();
        })
        .catch((err) => this.log.error({ err }, "liveness check failed"));
    }, interval);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.running;
    await this.flushHeartbeats();
  }

  /** One pass: write heartbeats, then declare silent hosts lost. */
  async check(now = new Date()): Promise<string[]> {
    await this.flushHeartbeats(now);
    const lostAfterMs = this.options.lostAfterSeconds * 1000;
    // Right after a restart every host looks silent; give agents lostAfter to reconnect first.
    if (now.getTime() - this.startedAt < lostAfterMs) return [];
    const markLost = () =>
      markSilentHostsLost(this.db, new Date(now.getTime() - lostAfterMs), this.options.lostAfterSeconds);
    const lost = await (this.options.serializeWrites ? this.options.serializeWrites(markLost) : markLost());
    if (lost.length > 0) {
      this.metrics.hostsLost.inc(lost.length);
      this.log.warn({ hosts: lost }, "hosts lost");
      this.options.onLost?.(lost);
    }
    return lost;
  }

  private async flushHeartbeats(now = new Date()): Promise<void> {
    if (this.heard.size === 0) return;
    const ids = [...this.heard];
    this.heard.clear();
    ids.sort();
    const write = () => touchHosts(this.db, ids, now);
    await (this.options.serializeWrites ? this.options.serializeWrites(write) : write());
  }
}
