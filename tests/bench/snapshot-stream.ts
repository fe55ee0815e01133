// The through-the-control-plane half of the snapshot benchmark: a real `dumont serve` and a real
// `dumont-agent run` on loopback; snapshots and restores are driven with the `dumont snapshot` CLI, so
// chunks cross the agent's mTLS gRPC stream and land in the control plane's file:// blob store.
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import {
  type AgentProcess,
  type ControlPlaneProcess,
  enrollAgent,
  startAgentProcess,
  startControlPlaneProcess,
  waitFor,
} from "../support/processes.js";

export interface StreamRun {
  seconds: number;
  result: Record<string, number | string>;
}

export class StreamBench {
  private constructor(
    private readonly cp: ControlPlaneProcess,
    private readonly agent: AgentProcess,
    private readonly blobs: string,
  ) {}

  static async start(work: string): Promise<StreamBench> {
    const cp = await startControlPlaneProcess({ dataDir: join(work, "cp"), env: { DUMONT_LOG_LEVEL: "warn" } });
    const hostId = await enrollAgent(cp, join(work, "agent"), "bench");
    const agent = startAgentProcess(join(work, "agent"), hostId, { env: { DUMONT_LOG_LEVEL: "warn" } });
    await waitFor(async () => {
      const res = await cp.cli(["host", "list", "--json"]);
      return res.code === 0 && (JSON.parse(res.stdout) as { status: string }[])[0]?.status === "online";
    }, 30_000);
    return new StreamBench(cp, agent, join(work, "cp", "blobs"));
  }

  async snapshot(path: string): Promise<StreamRun> {
    return this.timed(["snapshot", "create", "--host", this.agent.hostId, "--path", path, "--json"]);
  }

  async restore(snapshotId: string, target: string): Promise<StreamRun> {
    return this.timed(["snapshot", "restore", snapshotId, "--host", this.agent.hostId, "--target", target, "--json"]);
  }

  /** Bytes in the control plane's blob store. */
  async storedBytes(): Promise<number> {
    return dirSize(this.blobs);
  }

  /** Resident memory of the agent process now (kB from /proc → MiB). */
  async agentRssMiB(): Promise<number> {
    return rssMiB(this.agent.proc.pid);
  }

  async stop(): Promise<void> {
    await this.agent.stop();
    await this.cp.stop();
  }

  private async timed(args: string[]): Promise<StreamRun> {
    const started = process.hrtime.bigint();
    const res = await this.cp.cli(args);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    if (res.code !== 0) throw new Error(`dumont ${args.join(" ")} failed: ${res.stderr}`);
    return { seconds, result: JSON.parse(res.stdout) };
  }
}

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
