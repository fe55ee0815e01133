// Many simulated agents, spread over a few worker processes (agent-fleet-worker.ts), driven from the
// benchmark process over IPC. Each worker enrolls its share for real and runs the agent's own
// ControlPlaneSession per host, so the control plane sees exactly what real agents send.
import { type ChildProcess, fork } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

export type ToWorker =
  | { kind: "enroll"; server: string; caHash: string; tokens: string[]; namePrefix: string; concurrency: number }
  | { kind: "connect"; ratePerSecond: number; telemetryIntervalMs: number; gpusPerHost: number }
  | { kind: "report"; reset: boolean }
  | { kind: "stop" };

export interface WorkerReport {
  /** Sessions that got Welcome and have not dropped since. */
  connected: number;
  /** Welcome received more than once for a host: the session dropped and the agent reconnected. */
  reconnects: number;
  telemetrySamples: number;
  /** The worker's own event-loop delay since the last reset: high values mean the load generator, not
   *  the control plane, is late. */
  eventLoopDelayP99Ms: number;
  eventLoopDelayMaxMs: number;
}

export type FromWorker =
  | { kind: "enrolled"; hosts: number; seconds: number }
  | { kind: "connecting" }
  | ({ kind: "report" } & WorkerReport)
  | { kind: "stopped" }
  | { kind: "error"; message: string };

const WORKER_ENTRY = path.join(path.dirname(fileURLToPath(import.meta.url)), "agent-fleet-worker.js");

class FleetWorker {
  private readonly waiters = new Map<string, { resolve: (m: FromWorker) => void; reject: (e: Error) => void }>();
  private failure: Error | undefined;

  constructor(readonly proc: ChildProcess) {
    proc.on("message", (message: FromWorker) => {
      if (message.kind === "error") return this.fail(new Error(`agent fleet worker: ${message.message}`));
      const waiter = this.waiters.get(message.kind);
      this.waiters.delete(message.kind);
      waiter?.resolve(message);
    });
    proc.on("exit", (code, signal) => this.fail(new Error(`agent fleet worker exited (${code ?? signal})`)));
  }

  get pid(): number {
    return this.proc.pid ?? 0;
  }

  /** Sends a request and waits for the worker's answer of kind `answer`. */
  request<K extends FromWorker["kind"]>(message: ToWorker, answer: K): Promise<Extract<FromWorker, { kind: K }>> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiters.set(answer, { resolve: resolve as (m: FromWorker) => void, reject });
      this.proc.send(message);
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
  }
}

export interface FleetOptions {
  workers: number;
  server: string;
  caHash: string;
  tokens: string[];
  /** Enroll calls in flight per worker. */
  enrollConcurrency?: number;
}

export class AgentFleet {
  private constructor(private readonly workers: FleetWorker[]) {}

  /** Forks the workers and enrolls one host per token (split evenly); resolves when all are enrolled. */
  static async enroll(options: FleetOptions): Promise<{ fleet: AgentFleet; seconds: number }> {
    const count = Math.max(1, Math.min(options.workers, options.tokens.length));
    const workers = Array.from(
      { length: count },
      // The workers' stdout goes to our stderr: stdout carries only the benchmark's JSON.
      () => new FleetWorker(fork(WORKER_ENTRY, [], { stdio: ["ignore", 2, 2, "ipc"] })),
    );
    const fleet = new AgentFleet(workers);
    const started = performance.now();
    try {
      await Promise.all(
        workers.map((w, i) =>
          w.request(
            {
              kind: "enroll",
              server: options.server,
              caHash: options.caHash,
              tokens: options.tokens.filter((_, t) => t % count === i),
              namePrefix: `bench-w${i}`,
              concurrency: options.enrollConcurrency ?? 16,
            },
            "enrolled",
          ),
        ),
      );
    } catch (err) {
      await fleet.stop();
      throw err;
    }
    return { fleet, seconds: (performance.now() - started) / 1000 };
  }

  get pids(): number[] {
    return this.workers.map((w) => w.pid);
  }

  /** Starts every host's session, `ratePerSecond` new connections a second across the fleet. */
  async connect(options: { ratePerSecond: number; telemetryIntervalMs: number; gpusPerHost: number }): Promise<void> {
    const ratePerSecond = options.ratePerSecond / this.workers.length;
    await Promise.all(this.workers.map((w) => w.request({ kind: "connect", ...options, ratePerSecond }, "connecting")));
  }

  /** Sums the workers' counters; event-loop delays are the worst worker's. */
  async report(reset = false): Promise<WorkerReport> {
    const reports = await Promise.all(this.workers.map((w) => w.request({ kind: "report", reset }, "report")));
    return {
      connected: reports.reduce((a, r) => a + r.connected, 0),
      reconnects: reports.reduce((a, r) => a + r.reconnects, 0),
      telemetrySamples: reports.reduce((a, r) => a + r.telemetrySamples, 0),
      eventLoopDelayP99Ms: Math.max(...reports.map((r) => r.eventLoopDelayP99Ms)),
      eventLoopDelayMaxMs: Math.max(...reports.map((r) => r.eventLoopDelayMaxMs)),
    };
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.workers.map(async (w) => {
        if (w.proc.exitCode !== null || w.proc.signalCode !== null) return;
        const exited = new Promise<void>((resolve) => w.proc.once("exit", () => resolve()));
        const kill = setTimeout(() => w.proc.kill("SIGKILL"), 15_000);
        await w.request({ kind: "stop" }, "stopped").catch(() => w.proc.kill("SIGKILL"));
        await exited;
        clearTimeout(kill);
      }),
    );
  }
}
