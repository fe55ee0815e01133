// Prometheus metrics, served at /metrics. One registry per control-plane instance (tests run several).
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry, Summary } from "prom-client";

/** Snapshots and restores take from under a second (a small workspace) to an hour (hundreds of GiB). */
const OPERATION_SECONDS_BUCKETS = [0.5, 1, 2.5, 5, 15, 30, 60, 120, 300, 900, 1800, 3600];

/** What runs now of each kind (SnapshotCoordinator.runningWork), read at each scrape. */
export interface RunningWorkSample {
  kind: string;
  count: number;
  /** When the oldest of them started (ms since the epoch). */
  oldestSince: number;
}

export function createMetrics() {
  const registry = new Registry();
  /** Set by the snapshot coordinator once it is made; the gauges below read it when /metrics is scraped. */
  const runningWork: { sample?: () => RunningWorkSample[] } = {};
  // Node's own metrics under our prefix: dumont_process_cpu_user_seconds_total, dumont_nodejs_heap_size_used_bytes…
  collectDefaultMetrics({ register: registry, prefix: "dumont_" });
  return {
    registry,
    sessions: new Gauge({ name: "dumont_agent_sessions", help: "Agent streams currently open", registers: [registry] }),
    telemetryMessages: new Counter({
      name: "dumont_telemetry_messages_total",
      help: "Telemetry messages received from agents",
      registers: [registry],
    }),
    telemetryDropped: new Counter({
      name: "dumont_telemetry_dropped_total",
      help: "Telemetry samples dropped: their host already had several waiting to be written, or the database refused or failed their write",
      registers: [registry],
    }),
    telemetryIngestLatency: new Summary({
      name: "dumont_telemetry_ingest_latency_seconds",
      help: "From the agent's sample time to the database commit",
      percentiles: [0.5, 0.9, 0.99],
      maxAgeSeconds: 60,
      ageBuckets: 3,
      registers: [registry],
    }),
    telemetryFlushSeconds: new Histogram({
      name: "dumont_telemetry_flush_seconds",
      help: "Time to write one telemetry batch",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    hostsLost: new Counter({ name: "dumont_hosts_lost_total", help: "Hosts declared lost", registers: [registry] }),
    apiRequestsLimited: new Counter({
      name: "dumont_api_requests_limited_total",
      help: "API requests refused because their key was over its rate limit (DUMONT_API_RATE_LIMIT, DUMONT_API_BURST)",
      registers: [registry],
    }),
    // Snapshot bytes/s (DESIGN §8) is rate() of these counters: sealed chunk bytes, as they cross the agent stream.
    snapshotBytesReceived: new Counter({
      name: "dumont_snapshot_bytes_received_total",
      help: "Sealed chunk bytes agents sent for snapshots (only chunks the repository lacked travel)",
      registers: [registry],
    }),
    snapshotManifestParts: new Counter({
      name: "dumont_snapshot_manifest_parts_total",
      help: "Manifest parts of committed snapshots, by how the agent sent them: sealed, or named by the id of a part the repository held (stored)",
      labelNames: ["form"],
      registers: [registry],
    }),
    restoreBytesSent: new Counter({
      name: "dumont_restore_bytes_sent_total",
      help: "Sealed chunk bytes streamed to agents for restores, by connection (downloads: the agent's second one)",
      labelNames: ["connection"] as const,
      registers: [registry],
    }),
    snapshots: new Counter({
      name: "dumont_snapshots_total",
      help: "Snapshots through the control plane, by result (committed or failed)",
      labelNames: ["result"],
      registers: [registry],
    }),
    restores: new Counter({
      name: "dumont_restores_total",
      help: "Restores through the control plane, by result (completed or failed)",
      labelNames: ["result"],
      registers: [registry],
    }),
    snapshotFailures: new Counter({
      name: "dumont_snapshot_failures_total",
      help:
        "Snapshots and restores through the control plane that failed, by operation and the status code their caller " +
        "got: INVALID_ARGUMENT, NOT_FOUND and FAILED_PRECONDITION are mostly the caller's (a typo, a host gone); " +
        "UNAVAILABLE, RESOURCE_EXHAUSTED, DATA_LOSS, DEADLINE_EXCEEDED and INTERNAL the operator's",
      labelNames: ["operation", "code"] as const,
      registers: [registry],
    }),
    runningWork,
    snapshotWorkRunning: new Gauge({
      name: "dumont_snapshot_work_running",
      help: "Snapshots, restores, checks and repairs running now, by kind",
      labelNames: ["kind"] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const w of runningWork.sample?.() ?? []) this.set({ kind: w.kind }, w.count);
      },
    }),
    snapshotWorkOldestSeconds: new Gauge({
      name: "dumont_snapshot_work_oldest_seconds",
      help:
        "How long the oldest snapshot, restore, check or repair running now has run, by kind: a stuck one " +
        "shows here long before its deadline",
      labelNames: ["kind"] as const,
      registers: [registry],
      collect() {
        this.reset();
        const now = Date.now();
        for (const w of runningWork.sample?.() ?? []) this.set({ kind: w.kind }, (now - w.oldestSince) / 1000);
      },
    }),
    snapshotSeconds: new Histogram({
      name: "dumont_snapshot_duration_seconds",
      help: "From the request to the commit, for committed snapshots",
      buckets: OPERATION_SECONDS_BUCKETS,
      registers: [registry],
    }),
    restoreSeconds: new Histogram({
      name: "dumont_restore_duration_seconds",
      help: "From the request to the agent's report that every file is written, for completed restores",
      buckets: OPERATION_SECONDS_BUCKETS,
      registers: [registry],
    }),
    snapshotsForgotten: new Counter({
      name: "dumont_snapshots_forgotten_total",
      help: "Snapshots forgotten (by a forget, by id or by a retention policy)",
      registers: [registry],
    }),
    pruneBytesFreed: new Counter({
      name: "dumont_prune_bytes_freed_total",
      help: "Bytes of packs and leftovers prunes deleted from the blob store, less what they rewrote",
      registers: [registry],
    }),
    checkProblems: new Gauge({
      name: "dumont_check_problems",
      // No tenant label: /metrics answers anyone who reaches the API port, and tenant ids are not theirs to
      // list. Which tenant it is, `dumont snapshot check` (admin) says.
      help: "Problems the last check of each tenant's blob store found, over every tenant checked (0 = sound)",
      registers: [registry],
    }),
    checks: new Counter({
      name: "dumont_checks_total",
      help:
        "Checks of a tenant's blob store, by result: sound, problems (dumont_check_problems says how many) or " +
        "failed (the check could not run to its end: the store unavailable, say; the log names the tenant)",
      labelNames: ["result"] as const,
      registers: [registry],
    }),
    blobStoreCallsUnreturned: new Gauge({
      name: "dumont_blob_store_calls_unreturned",
      help:
        "Blob store calls given up on (past their deadline) that have not returned yet; at 4 no new call starts " +
        "(a hung store: check it)",
      registers: [registry],
    }),
    enrollments: new Counter({
      name: "dumont_enrollments_total",
      help: "Enroll calls by result",
      labelNames: ["result"],
      registers: [registry],
    }),
    certificateRenewals: new Counter({
      name: "dumont_certificate_renewals_total",
      help: "Renew calls (agents renewing their client certificates) by result",
      labelNames: ["result"],
      registers: [registry],
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
