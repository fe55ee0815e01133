// `npm run bench -- agent-idle`: what a running agent costs its host when no job runs. One control plane,
// one real `dumont-agent run` child (enrolled through a real join token) reporting a simulated GPU box
// through the fake nvidia-smi, measured from /proc over the duration.
import fs from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  enrollAgent,
  startAgentProcess,
  startControlPlaneProcess,
  tempDir,
  testDatabaseUrl,
  waitFor,
} from "../support/processes.js";
import { scrapeMetrics } from "../support/prometheus.js";
import { cpuPercent, cpuTimes, memoryMiB, round } from "./support/proc-stats.js";

export interface AgentIdleBenchOptions {
  durationSeconds: number;
  /** Seconds after the first telemetry arrives before measuring: start-up and JIT are not "idle". */
  warmupSeconds: number;
  telemetryIntervalSeconds: number;
  /** Fake nvidia-smi fixture (tests/fakes/nvidia-smi/fixtures). */
  fixture: string;
  progress: (line: string) => void;
}

export const AGENT_IDLE_DEFAULTS: Omit<AgentIdleBenchOptions, "progress"> = {
  durationSeconds: 60,
  warmupSeconds: 10,
  telemetryIntervalSeconds: 5,
  fixture: "demo",
};

export interface AgentIdleResult {
  durationSeconds: number;
  /** VmRSS at the end, its average and maximum over the measurement, and the process's peak (VmHWM). */
  rssMiB: number;
  rssAvgMiB: number;
  rssMaxMiB: number;
  rssPeakMiB: number;
  /** The agent process itself (all its threads), percent of one core. */
  cpuPercent: number;
  /** Its finished children (one nvidia-smi per sample), percent of one core. */
  childrenCpuPercent: number;
  telemetrySamples: number;
  childCpuMsPerSample: number;
}

export async function runAgentIdleBench(
  o: AgentIdleBenchOptions,
): Promise<{ result: AgentIdleResult; notes: string[] }> {
  const root = await tempDir("bench-agent-idle");
  const db = await testDatabaseUrl();
  o.progress("agent-idle: starting a control plane and enrolling one agent");
  const cp = await startControlPlaneProcess({ dataDir: path.join(root, "cp"), databaseUrl: db.url }).catch(
    async (err: Error) => {
      await db.drop();
      await fs.rm(root, { recursive: true, force: true });
      throw err;
    },
  );
  let agent: ReturnType<typeof startAgentProcess> | undefined;
  try {
    const agentDir = path.join(root, "agent");
    const hostId = await enrollAgent(cp, agentDir, "idle-box");
    agent = startAgentProcess(agentDir, hostId, {
      fixture: o.fixture,
      telemetryInterval: o.telemetryIntervalSeconds,
      // The agent's default level: what a provider's machine runs.
      env: { DUMONT_LOG_LEVEL: "info" },
    });
    const pid = agent.proc.pid as number;
    const received = async () => (await scrapeMetrics(cp.httpUrl)).value("dumont_telemetry_messages_total");
    await waitFor(async () => (await received()) >= 1, 30_000, 200);

    o.progress(`agent-idle: host ${hostId} reporting; warming up for ${o.warmupSeconds} s`);
    await sleep(o.warmupSeconds * 1000);

    o.progress(`agent-idle: measuring for ${o.durationSeconds} s`);
    const before = cpuTimes(pid);
    const receivedBefore = await received();
    const rss: number[] = [];
    const end = performance.now() + o.durationSeconds * 1000;
    while (performance.now() < end) {
      await sleep(Math.min(1000, end - performance.now()));
      rss.push(memoryMiB(pid).rss);
    }
    const after = cpuTimes(pid);
    const samples = (await received()) - receivedBefore;
    const cpu = cpuPercent(before, after);
    const result: AgentIdleResult = {
      durationSeconds: round(after.at - before.at, 1),
      rssMiB: rss.at(-1) ?? Number.NaN,
      rssAvgMiB: round(rss.reduce((a, b) => a + b, 0) / rss.length, 1),
      rssMaxMiB: Math.max(...rss),
      rssPeakMiB: memoryMiB(pid).peak,
      cpuPercent: cpu.self,
      childrenCpuPercent: cpu.children,
      telemetrySamples: samples,
      childCpuMsPerSample: round((1000 * (after.children - before.children)) / Math.max(1, samples), 1),
    };
    o.progress(`agent-idle: ${JSON.stringify(result)}`);
    return {
      result,
      notes: [
        `one \`dumont-agent run\` process, telemetry every ${o.telemetryIntervalSeconds} s, fixture "${o.fixture}" through tests/fakes/nvidia-smi first on PATH`,
        "cpuPercent is the agent process alone (utime+stime of /proc/PID/stat), percent of one core",
        "childrenCpuPercent is cutime+cstime: the one nvidia-smi the agent runs per sample (childCpuMsPerSample each). Here that is the fake, itself a Node process, whose start-up alone costs more than the agent's whole interval; a real nvidia-smi's cost depends on the driver, and it is not the agent's code, so it is reported apart",
        "rssPeakMiB (VmHWM) includes start-up and enrollment-time allocations; rssMaxMiB is the maximum while idle",
      ],
    };
  } finally {
    await agent?.stop();
    await cp.stop();
    await db.drop();
    await fs.rm(root, { recursive: true, force: true });
  }
}
