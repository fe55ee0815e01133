// Buffers telemetry from every session and writes it in batches: thousands of agents reporting every
// few seconds become a handful of transactions per second instead of thousands.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { GpuInfo, Telemetry } from "@dumont/proto";
import type { Db } from "../db/database.js";
import { recordTelemetry, type TelemetryRecord } from "../db/host-repository.js";
import type { GpuState } from "../db/tables.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";

const MAX_BATCH = 1000;
/**
 * Samples of one host waiting to be written, at most. An agent sends one every few seconds and a sample waits
 * ~20 ms, so a well-behaved host never has more than one; past this, a host's further samples are dropped
 * (counted) until its waiting ones are written: one agent sending in a loop cannot grow the buffer, nor push
 * every other host's samples back behind its own.
 */
export const MAX_PENDING_PER_HOST = 4;
/**
 * How long a sample may wait for others to share its write. Each write costs about a millisecond of
 * event-loop time whatever its size, so writing every sample alone saturates the loop at ~1,000 samples/s
 * (measured: p99 3.9 s at 5,000 hosts); 20 ms of coalescing keeps it to at most ~50 writes a second.
 */
const COALESCE_MS = 20;

/**
 * Writes are serialised through one queue: a sample waits at most COALESCE_MS for company, and samples
 * arriving during a write join the next batch, so batches grow with load by themselves. Heartbeat writes share
 * the queue (`serialize`), so two writers never update the same host rows in different orders (which
 * deadlocked on Postgres).
 */
export class TelemetryIngest {
  private buffer: TelemetryRecord[] = [];
  /** Samples in `buffer` by host (see MAX_PENDING_PER_HOST). */
  private readonly pending = new Map<string, number>();
  private writing = false;
  private timer: NodeJS.Timeout | undefined;
  private queue: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {}

  add(hostId: string, telemetry: Telemetry): void {
    if (this.closed) return;
    this.metrics.telemetryMessages.inc();
    const waiting = this.pending.get(hostId) ?? 0;
    if (waiting >= MAX_PENDING_PER_HOST) {
      this.metrics.telemetryDropped.inc();
      return;
    }
    this.pending.set(hostId, waiting + 1);
    this.buffer.push(toRecord(hostId, telemetry));
    if (!this.writing && !this.timer) this.timer = setTimeout(() => void this.flush(), COALESCE_MS);
  }

  /** Runs other host-row writes (liveness heartbeats) in the same queue as telemetry batches. */
  serialize<T>(work: () => Promise<T>): Promise<T> {
    const result = this.queue.then(work);
    this.queue = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** Writes one batch of what is buffered (all of it once closed). */
  async flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.writing) return this.queue;
    this.writing = true;
    try {
      const batch = this.buffer.splice(0, MAX_BATCH);
      for (const r of batch) {
        const left = (this.pending.get(r.hostId) ?? 1) - 1;
        if (left > 0) this.pending.set(r.hostId, left);
        else this.pending.delete(r.hostId);
      }
      if (batch.length > 0) await this.serialize(() => this.write(batch));
    } finally {
      this.writing = false;
    }
    // What arrived meanwhile goes next: at once if a full batch is waiting, else after the coalescing delay.
    if (this.buffer.length >= MAX_BATCH || (this.closed && this.buffer.length > 0)) return this.flush();
    if (this.buffer.length > 0 && !this.timer) this.timer = setTimeout(() => void this.flush(), COALESCE_MS);
  }

  private async write(batch: TelemetryRecord[]): Promise<void> {
    const end = this.metrics.telemetryFlushSeconds.startTimer();
    try {
      await this.writeRecords(batch);
    } finally {
      end();
    }
  }

  /**
   * Writes `records` in one transaction. When the database refuses them for what they hold, their hosts are
   * halved until the one at fault is alone: it loses its samples, every other host keeps its own and its
   * last_seen_at, which liveness reads. One host at fault in a batch of n costs about 2·log2(n) more writes; the
   * records are grouped by host only then, not on every flush.
   */
  private async writeRecords(records: TelemetryRecord[]): Promise<void> {
    try {
      await recordTelemetry(this.db, records, new Date());
    } catch (err) {
      const refused = refusedForItsData(err);
      const hosts = refused ? byHost(records) : [];
      if (hosts.length > 1) {
        const half = Math.ceil(hosts.length / 2);
        await this.writeRecords(hosts.slice(0, half).flat());
        await this.writeRecords(hosts.slice(half).flat());
        return;
      }
      // Telemetry is a time series: a lost batch leaves a gap, it corrupts nothing. Say so loudly.
      this.metrics.telemetryDropped.inc(records.length);
      if (refused) {
        // The SQLSTATE only: a message may quote the value refused, and sample values stay out of the log.
        const code = (err as { code: string }).code;
        this.log.warn(
          { hostId: records[0]?.hostId, samples: records.length, code },
          "the database refused this host's telemetry; its samples dropped",
        );
      } else {
        // The database itself failed (unreachable, shutting down): host by host would fail alike.
        this.log.error({ err, samples: records.length }, "telemetry batch write failed; samples dropped");
      }
      return;
    }
    const now = Date.now();
    for (const r of records) this.metrics.telemetryIngestLatency.observe(Math.max(0, now - r.at.getTime()) / 1000);
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.buffer.length > 0 || this.writing) {
      await this.flush();
      await this.queue;
    }
    clearTimeout(this.timer);
  }
}

/** A batch's records as one list per host, hosts in the order they first appear. */
function byHost(batch: TelemetryRecord[]): TelemetryRecord[][] {
  const hosts = new Map<string, TelemetryRecord[]>();
  for (const r of batch) {
    const list = hosts.get(r.hostId);
    if (list) list.push(r);
    else hosts.set(r.hostId, [r]);
  }
  return [...hosts.values()];
}

/**
 * A refusal of what the rows hold (SQLSTATE class 22, data exception, or 23, integrity constraint violation,
 * such as a host row deleted under its samples), which other rows need not share; not a failure of the
 * database itself.
 */
function refusedForItsData(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && (code.startsWith("22") || code.startsWith("23"));
}

/** At most this many GPUs of one sample are kept (a machine has 8, 16 at most); the rest are dropped. */
export const MAX_GPUS_PER_SAMPLE = 64;
/** Longest GPU uuid or model kept; longer ones are cut (real ones are under 100 characters). */
export const MAX_GPU_TEXT = 256;
/** How far back an agent's timestamp may lie before the sample is stamped with the time it arrived. */
const MAX_SAMPLE_AGE_MS = 86_400_000;

/**
 * Turns what an agent sent into a record the database accepts, whatever the agent sent: a value the database
 * refuses (a uint64 beyond bigint, an invalid date) would fail the host's write and with it its last_seen_at,
 * so liveness would declare it lost (and cost its whole batch a retry host by host, see writeRecords).
 * Non-finite or out-of-range measurements become null, counters are capped, texts and lists bounded (and texts
 * rid of NUL).
 */
function toRecord(hostId: string, t: Telemetry): TelemetryRecord {
  const gpus = t.gpus.slice(0, MAX_GPUS_PER_SAMPLE).map(toGpuState);
  const now = Date.now();
  const sent = t.at ? timestampDate(t.at).getTime() : Number.NaN;
  // An agent clock far off (or a timestamp that is no date at all) must not poison the series.
  const at = Number.isFinite(sent) && sent <= now + 60_000 && sent >= now - MAX_SAMPLE_AGE_MS ? sent : now;
  return {
    hostId,
    at: new Date(at),
    latest: {
      gpus,
      cpu: { cores: t.cpuCores, utilizationPercent: percentOrNull(t.cpuPercent) },
      memory: { totalBytes: count(t.memoryTotalBytes), usedBytes: count(t.memoryUsedBytes) },
      disk: { totalBytes: count(t.diskTotalBytes), usedBytes: count(t.diskUsedBytes) },
    },
    gpus: gpus.map((g) => ({
      index: g.index,
      utilizationPercent: g.utilizationPercent,
      memoryUsedMiB: g.memoryUsedMiB,
      temperatureC: g.temperatureC,
      powerW: g.powerW,
    })),
  };
}

export function toGpuState(g: GpuInfo): GpuState {
  return {
    index: g.index,
    uuid: gpuText(g.uuid),
    model: gpuText(g.model),
    memoryTotalMiB: optionalCount(g.memoryTotalMib),
    memoryUsedMiB: optionalCount(g.memoryUsedMib),
    utilizationPercent: percentOrNull(g.utilizationPercent),
    temperatureC: finiteOrNull(g.temperatureC),
    powerW: finiteOrNull(g.powerW),
  };
}

/** Bounded, and without NUL: Postgres refuses "\u0000" in jsonb, and with it the host's whole write. */
function gpuText(v: string): string {
  return v.slice(0, MAX_GPU_TEXT).replaceAll("\0", "");
}

/** A uint64 as a number the database's bigint and JSON both hold exactly. */
function count(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

function optionalCount(v: bigint | undefined): number | null {
  return v === undefined ? null : count(v);
}

function percentOrNull(v: number | undefined): number | null {
  return v === undefined || !Number.isFinite(v) || v < 0 || v > 100 ? null : v;
}

/** Finite and within what a double's sum of a minute's samples still holds finitely. */
function finiteOrNull(v: number | undefined): number | null {
  return v === undefined || !Number.isFinite(v) || Math.abs(v) > 1e9 ? null : v;
}
