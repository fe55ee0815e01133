// Keeps the telemetry series bounded: raw samples for an hour, then one-minute averages for a week.
import type { Logger } from "../logger.js";
import type { Db } from "./database.js";
import { deleteMetricsBefore, downsampleMetrics } from "./host-repository.js";

export const RAW_RETENTION_MS = 3_600_000;
export const DOWNSAMPLED_RETENTION_MS = 7 * 86_400_000;

export class MetricsRetention {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly intervalMs = 60_000,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      this.running = this.running
        .then(() => this.runOnce())
        .catch((err) => this.log.error({ err }, "metrics retention failed"));
    }, this.intervalMs);
    this.timer.unref();
  }

  async runOnce(now = new Date()): Promise<void> {
    await downsampleMetrics(this.db, new Date(now.getTime() - RAW_RETENTION_MS));
    await deleteMetricsBefore(this.db, new Date(now.getTime() - DOWNSAMPLED_RETENTION_MS));
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.running;
  }
}
