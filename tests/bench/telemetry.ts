// `npm run bench -- telemetry`: how many agent sessions one control plane holds, and how fast their
// telemetry reaches the database. One `dumont serve` child process (so its CPU and memory are its own),
// N hosts enrolled for real and connected over mTLS gRPC on loopback from a few load-generator
// processes, each host sending Telemetry every interval. Figures come from the control plane's own
// /metrics and from /proc.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { startControlPlaneProcess, tempDir, testDatabaseUrl } from "../support/processes.js";
import { histogramQuantile, type MetricsScrape, scrapeMetrics } from "../support/prometheus.js";
import { AgentFleet } from "./support/agent-fleet.js";
import {
  type CpuTimes,
  cpuPercent,
  cpuTimes,
  machineCpu,
  machineCpuPercent,
  memoryMiB,
  round,
} from "./support/proc-stats.js";

export interface TelemetryBenchOptions {
  /** One run per entry, each against a fresh control plane and database. */
  sessions: number[];
  /** Seconds measured after warm-up. The ingest Summary keeps a 60 s window, so 60 s measures only the run. */
  durationSeconds: number;
  /** Seconds between "every session is held" and the start of the measurement. */
  warmupSeconds: number;
  workers: number;
  /** New sessions per second while ramping up (the whole fleet). */
  connectRate: number;
  telemetryIntervalSeconds: number;
  gpusPerHost: number;
  progress: (line: string) => void;
}

export const TELEMETRY_DEFAULTS: Omit<TelemetryBenchOptions, "progress"> = {
  sessions: [1000, 5000],
  durationSeconds: 60,
  warmupSeconds: 15,
  workers: 2,
  connectRate: 250,
  telemetryIntervalSeconds: 5,
  gpusPerHost: 2,
};

export interface TelemetryRun {
  sessions: number;
  /** Open agent streams at the end of the measurement (`dumont_agent_sessions`), and the lowest seen. */
  held: number;
  heldMin: number;
  /** Ingest latency, agent sample time → database commit, from the control plane's Summary. */
  ingestP50Ms: number;
  ingestP90Ms: number;
  ingestP99Ms: number;
  ingestMeanMs: number;
  /** Telemetry messages the control plane received per second, and what N sessions should send. */
  telemetryPerSecond: number;
  telemetryExpectedPerSecond: number;
  /** Samples received but never committed during the measurement (a failed batch write drops its
   *  samples and logs an error). Approximate by one batch at either edge of the window. */
  telemetryDropped: number;
  /** Batched database writes: how many a second and how long one takes. */
  flushesPerSecond: number;
  flushMeanMs: number;
  flushP99Ms: number;
  cpRssMiB: number;
  cpRssMaxMiB: number;
  /** Includes enrollment and the connection ramp, which the measurement does not. */
  cpRssPeakMiB: number;
  /** Percent of one core; the machine has os.availableParallelism() of them. */
  cpCpuPercent: number;
  loadGeneratorCpuPercent: number;
  loadGeneratorRssMiB: number;
  machineCpuPercent: number;
  /** Machine CPU not used by the control plane or the load generators: a Postgres server when
   *  DATABASE_URL is set, otherwise anything else running here (which makes the figures noisy). */
  otherCpuPercent: number;
  loadGeneratorEventLoopDelayP99Ms: number;
  reconnects: number;
  /** Before the measurement: enrolling every host, then connecting them (the same work a control-plane
   *  restart causes when every agent reconnects), with who was busy meanwhile. */
  setup: {
    enrollSeconds: number;
    enrollPerSecond: number;
    rampSeconds: number;
    rampConnectionsPerSecond: number;
    rampCpCpuPercent: number;
    rampLoadGeneratorCpuPercent: number;
  };
}

export async function runTelemetryBench(
  options: TelemetryBenchOptions,
): Promise<{ results: TelemetryRun[]; notes: string[] }> {
  const results: TelemetryRun[] = [];
  for (const n of options.sessions) results.push(await runOnce(n, options));
  return { results, notes: notes(options) };
}

async function runOnce(n: number, o: TelemetryBenchOptions): Promise<TelemetryRun> {
  const root = await tempDir("bench-telemetry");
  const db = await testDatabaseUrl();
  o.progress(`telemetry: ${n} sessions: starting a control plane (${db.url ? "postgres" : "pglite"})`);
  const cp = await startControlPlaneProcess({
    dataDir: path.join(root, "cp"),
    databaseUrl: db.url,
    // The control plane refuses a lost-after under twice the interval it suggests (a healthy host would flap).
    lostAfterSeconds: Math.max(10, 2 * o.telemetryIntervalSeconds),
    // One log line per enrollment and connection is noise at this scale, and costs the control plane CPU.
    env: { DUMONT_LOG_LEVEL: "warn", DUMONT_TELEMETRY_INTERVAL: String(o.telemetryIntervalSeconds) },
  }).catch(async (err: Error) => {
    await db.drop();
    await fs.rm(root, { recursive: true, force: true });
    throw err;
  });
  let fleet: AgentFleet | undefined;
  try {
    const cpPid = cp.proc.pid as number;
    o.progress(`telemetry: creating ${n} join tokens`);
    const { tokens, caHash } = await createJoinTokens(cp.httpUrl, cp.adminKey, n);

    o.progress(`telemetry: enrolling ${n} hosts from ${o.workers} worker processes`);
    const enrolled = await AgentFleet.enroll({ workers: o.workers, server: cp.grpcUrl, caHash, tokens });
    fleet = enrolled.fleet;

    o.progress(`telemetry: connecting ${n} sessions at ${o.connectRate}/s`);
    const rampStart = performance.now();
    const rampBefore = { cp: cpuTimes(cpPid), generators: fleet.pids.map(cpuTimes) };
    await fleet.connect({
      ratePerSecond: o.connectRate,
      telemetryIntervalMs: o.telemetryIntervalSeconds * 1000,
      gpusPerHost: o.gpusPerHost,
    });
    const rampLimitMs = Math.max(60_000, (5000 * n) / o.connectRate);
    while ((await scrapeMetrics(cp.httpUrl)).value("dumont_agent_sessions") < n) {
      if (performance.now() - rampStart > rampLimitMs) {
        o.progress(`telemetry: not every session connected within ${rampLimitMs / 1000} s; measuring what is held`);
        break;
      }
      await sleep(500);
    }
    const rampSeconds = (performance.now() - rampStart) / 1000;
    const ramp = {
      cpCpuPercent: cpuPercent(rampBefore.cp, cpuTimes(cpPid)).self,
      loadGeneratorCpuPercent: generatorCpu(rampBefore.generators, fleet.pids.map(cpuTimes)),
    };

    o.progress(`telemetry: warming up for ${o.warmupSeconds} s`);
    await sleep(o.warmupSeconds * 1000);

    o.progress(`telemetry: measuring for ${o.durationSeconds} s`);
    await fleet.report(true);
    const before = {
      metrics: await scrapeMetrics(cp.httpUrl),
      cp: cpuTimes(cpPid),
      generators: fleet.pids.map(cpuTimes),
      machine: machineCpu(),
    };
    const rss: number[] = [];
    const held: number[] = [];
    const end = performance.now() + o.durationSeconds * 1000;
    while (performance.now() < end) {
      await sleep(Math.min(5000, end - performance.now()));
      rss.push(memoryMiB(cpPid).rss);
      held.push((await scrapeMetrics(cp.httpUrl)).value("dumont_agent_sessions"));
    }
    const after = {
      metrics: await scrapeMetrics(cp.httpUrl),
      cp: cpuTimes(cpPid),
      generators: fleet.pids.map(cpuTimes),
      machine: machineCpu(),
    };
    const generator = await fleet.report();
    const seconds = after.cp.at - before.cp.at;

    const delta = (name: string) => after.metrics.value(name) - before.metrics.value(name);
    const quantileMs = (m: MetricsScrape, q: string) =>
      round(1000 * m.value("dumont_telemetry_ingest_latency_seconds", { quantile: q }), 1);
    const flushes = delta("dumont_telemetry_flush_seconds_count");
    const run: TelemetryRun = {
      sessions: n,
      held: held.at(-1) ?? 0,
      heldMin: Math.min(...held),
      ingestP50Ms: quantileMs(after.metrics, "0.5"),
      ingestP90Ms: quantileMs(after.metrics, "0.9"),
      ingestP99Ms: quantileMs(after.metrics, "0.99"),
      ingestMeanMs: round(
        (1000 * delta("dumont_telemetry_ingest_latency_seconds_sum")) /
          delta("dumont_telemetry_ingest_latency_seconds_count"),
        1,
      ),
      telemetryPerSecond: round(delta("dumont_telemetry_messages_total") / seconds, 1),
      telemetryExpectedPerSecond: round(n / o.telemetryIntervalSeconds, 1),
      // Batches in flight at either edge can make the difference slightly negative: that is zero drops.
      telemetryDropped: Math.max(
        0,
        delta("dumont_telemetry_messages_total") - delta("dumont_telemetry_ingest_latency_seconds_count"),
      ),
      flushesPerSecond: round(flushes / seconds, 2),
      flushMeanMs: round((1000 * delta("dumont_telemetry_flush_seconds_sum")) / flushes, 1),
      flushP99Ms: round(
        1000 *
          histogramQuantile(
            before.metrics.buckets("dumont_telemetry_flush_seconds"),
            after.metrics.buckets("dumont_telemetry_flush_seconds"),
            0.99,
          ),
        1,
      ),
      cpRssMiB: rss.at(-1) ?? Number.NaN,
      cpRssMaxMiB: Math.max(...rss),
      cpRssPeakMiB: memoryMiB(cpPid).peak,
      cpCpuPercent: cpuPercent(before.cp, after.cp).self,
      loadGeneratorCpuPercent: generatorCpu(before.generators, after.generators),
      loadGeneratorRssMiB: round(
        fleet.pids.reduce((sum, pid) => sum + memoryMiB(pid).rss, 0),
        1,
      ),
      machineCpuPercent: machineCpuPercent(before.machine, after.machine),
      otherCpuPercent: 0,
      loadGeneratorEventLoopDelayP99Ms: generator.eventLoopDelayP99Ms,
      reconnects: generator.reconnects,
      setup: {
        enrollSeconds: round(enrolled.seconds, 1),
        enrollPerSecond: round(n / enrolled.seconds, 0),
        rampSeconds: round(rampSeconds, 1),
        rampConnectionsPerSecond: round(n / rampSeconds, 0),
        rampCpCpuPercent: ramp.cpCpuPercent,
        rampLoadGeneratorCpuPercent: ramp.loadGeneratorCpuPercent,
      },
    };
    run.otherCpuPercent = round(Math.max(0, run.machineCpuPercent - run.cpCpuPercent - run.loadGeneratorCpuPercent), 1);
    o.progress(`telemetry: ${JSON.stringify(run)}`);
    return run;
  } catch (err) {
    o.progress(`telemetry: failed; the control plane's last log lines:\n${cp.log().slice(-4000)}`);
    throw err;
  } finally {
    await fleet?.stop();
    await cp.stop();
    await db.drop();
    await fs.rm(root, { recursive: true, force: true });
  }
}

function generatorCpu(before: CpuTimes[], after: CpuTimes[]): number {
  return round(
    after.reduce((sum, a, i) => sum + cpuPercent(before[i] ?? a, a).self, 0),
    1,
  );
}

/** N one-time join tokens through the public Connect API (JSON over HTTP, as curl would send it). */
async function createJoinTokens(
  httpUrl: string,
  adminKey: string,
  n: number,
): Promise<{ tokens: string[]; caHash: string }> {
  const tokens: string[] = [];
  let caHash = "";
  let next = 0;
  const createNext = async (): Promise<void> => {
    while (next++ < n) {
      const res = await fetch(`${httpUrl}/dumont.api.v1.HostService/CreateJoinToken`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${adminKey}` },
        body: JSON.stringify({ ttlSeconds: 3600 }),
      });
      if (!res.ok) throw new Error(`CreateJoinToken answered ${res.status}: ${await res.text()}`);
      const body = (await res.json()) as { token: string; caHash: string };
      tokens.push(body.token);
      caHash = body.caHash;
    }
  };
  await Promise.all(Array.from({ length: 8 }, createNext));
  return { tokens, caHash };
}

function notes(o: TelemetryBenchOptions): string[] {
  return [
    `machine: ${os.availableParallelism()} cores (${os.cpus()[0]?.model ?? "unknown"}), ${round(os.totalmem() / 2 ** 30, 1)} GiB, node ${process.version}; the control plane, the database and the load generators share these cores`,
    "CPU figures are percent of one core (100 = one core busy); machineCpuPercent is everything on the machine",
    `each simulated host runs the agent's own ControlPlaneSession (Hello, then Telemetry every ${o.telemetryIntervalSeconds} s with ${o.gpusPerHost} GPUs) over its own gRPC channel: one TLS connection per host, because the control plane identifies a host by its client certificate and a channel has one`,
    `hosts are spread over ${o.workers} load-generator processes; each worker enrolls its hosts for real (one join token and one Enroll per host) but reuses one key pair and CSR for all of them (key generation costs ~3 ms a host); the certificates are distinct, one per host id`,
    `sessions connect at ${o.connectRate}/s; each sends its first telemetry on Welcome, so the ramp spreads the sessions' send times over the interval`,
    "ingest latency is the control plane's dumont_telemetry_ingest_latency_seconds Summary (agent sample time to database commit; 60 s window, read at the end of the measurement); ingestMeanMs is sum/count over the measurement alone; the load generator stamps each sample just before writing it, so its own event-loop delay (loadGeneratorEventLoopDelayP99Ms) does not enter the latency",
    "no separate client-side latency: the protocol has no acknowledgement of telemetry, so only the control plane can see the commit",
    "flush* figures are the control plane's batched telemetry writes (dumont_telemetry_flush_seconds): one transaction inserting every sample of the batch and updating each host's latest state",
  ];
}
