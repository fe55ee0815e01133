// The through-the-control-plane half of the snapshot benchmark: a real `dumont serve` and a real
// `dumont-agent run` on loopback; snapshots and restores are driven through the control plane's public API
// (the calls `dumont snapshot create|restore` make), so chunks cross the agent's mTLS gRPC stream and land in
// the control plane's file:// blob store.
//
// The API is called from this process, not through the CLI, and timed from the call to its result: a CLI
// process's start (about 0.3 s, a twentieth of a 1 GiB restore) is not part of it. The agent is long-running
// and has its engine loaded (warmUp), so the call is compared with a direct run's engine call (engineSeconds,
// snapshot.ts), which leaves out that process's start and the engine's import likewise.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Client } from "@connectrpc/connect";
import type { api } from "@dumont/proto";
import {
  type AgentProcess,
  type ControlPlaneProcess,
  enrollAgent,
  snapshotApi,
  startAgentProcess,
  startControlPlaneProcess,
  waitFor,
} from "../support/processes.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

export interface StreamRun {
  seconds: number;
  result: Record<string, number | string>;
  /** CPU each side spent during the call (user + system, all threads), from /proc. */
  cpuSeconds: { agent: number; controlPlane: number };
}

export class StreamBench {
  private constructor(
    private readonly cp: ControlPlaneProcess,
    private readonly agent: AgentProcess,
    /** The control plane's blob store directory. */
    readonly blobsDir: string,
    private readonly proxy: TcpProxy | undefined,
    private readonly snapshots: Client<typeof api.SnapshotService>,
  ) {}

  /** With `delayMs`, the agent reaches the control plane through a proxy holding each byte back that long. */
  static async start(work: string, options: { delayMs?: number } = {}): Promise<StreamBench> {
    const cp = await startControlPlaneProcess({ dataDir: join(work, "cp"), env: { DUMONT_LOG_LEVEL: "warn" } });
    const proxy =
      options.delayMs !== undefined ? await startTcpProxy(cp.grpcPort, { delayMs: options.delayMs }) : undefined;
    const hostId = await enrollAgent(cp, join(work, "agent"), "bench", { server: proxy?.url });
    // Telemetry at the agent's default interval (the test helper's 1 s would add database writes to the
    // control plane's share of the two cores). A CPU-only host, as this machine is: the test helper's fake
    // nvidia-smi is a Node script, ~0.1 CPU-s per call (a process start), and one call per 5 s tick took
    // 0.13 CPU-s of the pinned agent's core in a ~5 s streamed snapshot, work the direct runs never do.
    const agent = startAgentProcess(join(work, "agent"), hostId, {
      env: { DUMONT_LOG_LEVEL: "warn", PATH: process.env.PATH },
      telemetryInterval: 5,
    });
    await waitFor(async () => {
      const res = await cp.cli(["host", "list", "--json"]);
      return res.code === 0 && (JSON.parse(res.stdout) as { status: string }[])[0]?.status === "online";
    }, 30_000);
    const snapshots = snapshotApi(cp);
    await snapshots.listSnapshots({}); // the connection is open before the first timed call
    return new StreamBench(cp, agent, join(work, "cp", "blobs"), proxy, snapshots);
  }

  /**
   * An untimed snapshot and restore of a one-file directory under `dir` (removed after), before any timed call.
   * The agent loads its engine on its first snapshot or restore (snapshot-commands.ts, withEngine), which a
   * long-running agent has long done: without this, the first timed call would carry that import. (Its worker
   * pool closes after 30 s idle, as it does in a running agent, so the timed calls may still start one.) The
   * snapshot's few KB stay in the blob store: `storedBytes` counts them.
   */
  async warmUp(dir: string): Promise<void> {
    const source = join(dir, "source");
    const target = join(dir, "restored");
    await mkdir(source, { recursive: true });
    const bytes = randomBytes(4096);
    await writeFile(join(source, "warm-up.bin"), bytes);
    const { result } = await this.snapshot(source);
    await this.restore(String(result.id), target);
    if (!bytes.equals(await readFile(join(target, "warm-up.bin")))) {
      throw new Error("the warm-up restore through the control plane differs from its source");
    }
    await rm(dir, { recursive: true, force: true });
  }

  async snapshot(path: string): Promise<StreamRun> {
    return this.timed("snapshot", async () => {
      const s = await lastEvent(this.snapshots.createSnapshotStream({ hostId: this.agent.hostId, path }), (e) =>
        e.event.case === "snapshot" ? e.event.value : undefined,
      );
      return {
        id: s.id,
        files: Number(s.files),
        bytesRead: Number(s.bytesRead),
        bytesNew: Number(s.bytesNew),
        bytesStored: Number(s.bytesStored),
        chunksNew: Number(s.chunksNew),
      };
    });
  }

  async restore(snapshotId: string, target: string): Promise<StreamRun> {
    return this.timed("restore", async () => {
      const r = await lastEvent(
        this.snapshots.restoreSnapshotStream({ snapshotId, hostId: this.agent.hostId, target }),
        (e) => (e.event.case === "done" ? e.event.value : undefined),
      );
      return { files: Number(r.files), bytesWritten: Number(r.bytesWritten) };
    });
  }

  /** Bytes in the control plane's blob store. */
  async storedBytes(): Promise<number> {
    return dirSize(this.blobsDir);
  }

  /** Puts every thread of the agent on CPUs `agent` and the control plane's on `controlPlane` (taskset lists). */
  pin(agent: string, controlPlane: string): void {
    pinProcess(this.agent.proc.pid, agent);
    pinProcess(this.cp.proc.pid, controlPlane);
  }

  /** The agent process's peak resident memory so far (VmHWM from /proc, MiB). */
  async agentRssMiB(): Promise<number> {
    return rssMiB(this.agent.proc.pid);
  }

  /** The control plane process's peak resident memory so far (VmHWM from /proc, MiB). */
  async controlPlaneRssMiB(): Promise<number> {
    return rssMiB(this.cp.proc.pid);
  }

  async stop(): Promise<void> {
    await this.agent.stop();
    await this.proxy?.close();
    await this.cp.stop();
  }

  private async timed(what: string, call: () => Promise<StreamRun["result"]>): Promise<StreamRun> {
    const cpu0 = [await cpuSeconds(this.agent.proc.pid), await cpuSeconds(this.cp.proc.pid)];
    const started = process.hrtime.bigint();
    let result: StreamRun["result"];
    try {
      result = await call();
    } catch (err) {
      throw new Error(`the ${what} through the control plane failed: ${(err as Error).message}`);
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const cpu1 = [await cpuSeconds(this.agent.proc.pid), await cpuSeconds(this.cp.proc.pid)];
    return {
      seconds,
      result,
      cpuSeconds: { agent: round(cpu1[0] - cpu0[0]), controlPlane: round(cpu1[1] - cpu0[1]) },
    };
  }
}

/** The result a progress stream ends with (its other events are progress). */
async function lastEvent<E, R>(events: AsyncIterable<E>, pick: (event: E) => R | undefined): Promise<R> {
  let result: R | undefined;
  for await (const event of events) result = pick(event) ?? result;
  if (result === undefined) throw new Error("the stream ended without its result");
  return result;
}

/** User + system CPU seconds of a process so far (all its threads), from /proc/PID/stat. */
async function cpuSeconds(pid: number | undefined): Promise<number> {
  if (!pid) return 0;
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}

/** Peak resident memory (VmHWM) of a process, in MiB. */
async function rssMiB(pid: number | undefined): Promise<number> {
  if (!pid) return 0;
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
  const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return Math.round(kb / 1024);
}

async function dirSize(root: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(root, { withFileTypes: true, recursive: true }).catch(() => [])) {
    if (entry.isFile()) total += (await stat(join(entry.parentPath, entry.name))).size;
  }
  return total;
}

/** Whether `taskset` (util-linux) is there to pin processes to CPUs. */
export function canPin(): boolean {
  return spawnSync("taskset", ["--version"]).status === 0;
}

/** Sets the CPU affinity of every thread of process `pid` (a taskset list: "0", "1", "0-1"). */
export function pinProcess(pid: number | undefined, cpus: string): void {
  const res = spawnSync("taskset", ["-a", "-p", "-c", cpus, String(pid)], { encoding: "utf8" });
  if (pid === undefined || res.status !== 0) {
    throw new Error(
      `taskset could not pin process ${pid} to CPUs ${cpus}: ${res.stderr?.trim() || res.error?.message}`,
    );
  }
}
