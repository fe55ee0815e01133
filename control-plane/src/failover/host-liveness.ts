// Host liveness, in one place (Nomad's heartbeat.go is the model): every agent message counts as a
// heartbeat; a host silent for `lostAfter` is marked lost with an event; a Hello brings it back online.
// Heartbeats are kept in memory and written in batches so thousands of hosts cost a few queries a second.
//
// After a control-plane restart every host looks silent until its agent reconnects, and a large fleet needs
// a while for that (each session is a TLS handshake and a transaction: 50-140 a second were measured, so
// 5,000 agents take up to ~100 s). So nothing is declared lost until the reconnect wave has settled: no
// host came back for a full lostAfter, and at least lostAfter since start. The wait is capped at
// START_GRACE_CAP x lostAfter, so a flapping fleet cannot hold detection off for ever.
import type { Db } from "../db/database.js";
import { markSilentHostsLost, touchHosts } from "../db/host-repository.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";

/** The start-up grace ends at the latest this many lostAfter periods after start. */
export const START_GRACE_CAP = 10;

export interface HostLivenessOptions {
  lostAfterSeconds: number;
  /** When the process started (ms since the epoch); tests set it. Default: now. */
  startedAt?: number;
  /** How often to flush heartbeats and look for silent hosts. Default: lostAfter / 5, at most 1 s. */
  checkIntervalMs?: number;
  onLost?: (hostIds: string[]) => void;
  /** Runs a heartbeat write; the control plane queues it behind telemetry writes to the same rows. */
  serializeWrites?: <T>(work: () => Promise<T>) => Promise<T>;
}

export class HostLiveness {
  private readonly heard = new Set<string>();
  private readonly startedAt: number;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  /** Start-up grace: hosts heard since start, and when the last of them was first heard. */
  private graceOver = false;
  private readonly back = new Set<string>();
  private lastBackAt: number;

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly options: HostLivenessOptions,
  ) {
    this.startedAt = options.startedAt ?? Date.now();
    this.lastBackAt = this.startedAt;
  }

  private heldBack: () => Iterable<string> = () => [];

  /**
   * Hosts this control plane holds back (it stopped reading their streams while it writes what they sent:
   * snapshot chunks behind a slow blob store): silent because of us, so counted as heard at every check. A
   * host whose connection dies meanwhile leaves `hosts` when its stream closes (keepalive pings find it).
   */
  countHeldBackAsHeard(hosts: () => Iterable<string>): void {
    this.heldBack = hosts;
  }

  /** Record that a host sent something (just now, unless `now` says otherwise). */
  heartbeat(hostId: string, now = Date.now()): void {
    this.heard.add(hostId);
    if (!this.graceOver && !this.back.has(hostId)) {
      this.back.add(hostId);
      this.lastBackAt = Math.max(this.lastBackAt, now);
    }
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
    for (const hostId of this.heldBack()) this.heartbeat(hostId, now.getTime());
    await this.flushHeartbeats(now);
    const lostAfterMs = this.options.lostAfterSeconds * 1000;
    if (!this.graceOver) {
      const t = now.getTime();
      const settled = t - this.startedAt >= lostAfterMs && t - this.lastBackAt >= lostAfterMs;
      if (!settled && t - this.startedAt < START_GRACE_CAP * lostAfterMs) return [];
      this.graceOver = true;
      this.back.clear();
      this.log.info(
        { graceSeconds: (t - this.startedAt) / 1000 },
        "start-up grace over; silent hosts can be declared lost",
      );
    }
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
