// Prometheus metrics, served at /metrics. One registry per control-plane instance (tests run several).
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry, Summary } from "prom-client";

export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "dumont_process_" });
  return {
    registry,
    sessions: new Gauge({ name: "dumont_agent_sessions", help: "Agent streams currently open", registers: [registry] }),
    telemetryMessages: new Counter({
      name: "dumont_telemetry_messages_total",
      help: "Telemetry messages received from agents",
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
    enrollments: new Counter({
      name: "dumont_enrollments_total",
      help: "Enroll calls by result",
      labelNames: ["result"],
      registers: [registry],
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
