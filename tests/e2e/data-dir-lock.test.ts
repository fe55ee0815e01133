// One process per data dir. A second `dumont serve` or `dumont dev` on a data dir that a running one holds stops
// before it opens the embedded database (it used to run beside it, on the same PGlite files), naming the process
// to stop; the first goes on untouched; a kill -9 of the holder leaves no stale lock behind. A second
// `dumont-agent run` on an enrolled data dir (the same host connecting twice) stops the same way, and so does an
// `enroll --force` under a running agent.
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  agentBin,
  type ControlPlaneProcess,
  dumontBin,
  enrollAgent,
  freePort,
  hostApi,
  runNode,
  startAgentProcess,
  startControlPlaneProcess,
  stopProcess,
  tempDir,
  waitForOnline,
} from "../support/processes.js";

describe.skipIf(process.platform !== "linux")("one process per data dir", () => {
  let root: string;
  let dataDir: string;
  let cp: ControlPlaneProcess | undefined;

  beforeAll(async () => {
    root = await tempDir("e2e-data-dir-lock");
    dataDir = path.join(root, "cp");
  });
  afterAll(async () => {
    await cp?.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it("refuses a second serve or dev on it, naming the holder; after a kill -9 of the holder it starts again", async () => {
    // Embedded PGlite whatever DATABASE_URL says: with Postgres, replicas sharing a database are the design.
    const first = await startControlPlaneProcess({ dataDir });
    cp = first;
    const made = await first.cli(["key", "create", "--role", "provider", "--tenant", "acme", "--json"]);
    expect(made.code).toBe(0);
    const { id } = JSON.parse(made.stdout) as { id: string };

    const ports = async () => ["--http-port", String(await freePort()), "--grpc-port", String(await freePort())];
    for (const command of ["serve", "dev"]) {
      const second = await runNode(
        dumontBin,
        [command, "--data-dir", dataDir, "--host", "127.0.0.1", ...(await ports())],
        {
          DATABASE_URL: "",
          DUMONT_LOG_LEVEL: "silent",
        },
      );
      expect(second.code, `${command}: ${second.stdout}${second.stderr}`).not.toBe(0);
      expect(second.stderr).toContain(
        `the embedded database in ${path.join(dataDir, "pglite")} is already open in process ${first.proc.pid}`,
      );
      expect(second.stderr).toContain("--data-dir");
    }
    // The first one never noticed.
    expect((await fetch(`${first.httpUrl}/healthz`)).ok).toBe(true);
    const listed = await first.cli(["key", "list", "--json"]);
    expect((JSON.parse(listed.stdout) as { id: string }[]).map((k) => k.id)).toContain(id);

    await stopProcess(first.proc, "SIGKILL");
    cp = await startControlPlaneProcess({ dataDir });
    const after = await cp.cli(["key", "list", "--json"]);
    expect(after.code).toBe(0);
    expect((JSON.parse(after.stdout) as { id: string }[]).map((k) => k.id)).toContain(id);
  });

  it("refuses a second agent on an enrolled data dir, naming the running one, which stays online", async () => {
    const control = cp!;
    const agentDir = path.join(root, "agent");
    const hostId = await enrollAgent(control, agentDir, "gpu-1");
    const agent = startAgentProcess(agentDir, hostId);
    try {
      const status = async () => (await hostApi(control).listHosts({})).hosts.find((h) => h.id === hostId)?.status;
      await waitForOnline(control, hostId);
      const second = await runNode(agentBin, ["run", "--data-dir", agentDir], { DUMONT_LOG_LEVEL: "silent" });
      expect(second.code, second.stdout + second.stderr).not.toBe(0);
      expect(second.stderr).toContain(`the agent data dir ${agentDir} is already in use by process ${agent.proc.pid}`);
      expect(agent.proc.exitCode).toBeNull();
      expect(await status()).toBe("online");
      // Nor can the data dir be enrolled again under it (a new identity would take its host away mid-session).
      const enrolled = await fs.readFile(path.join(agentDir, "enrollment.json"), "utf8");
      const token = JSON.parse((await control.cli(["host", "join-token", "create", "--json"])).stdout) as {
        token: string;
        caHash: string;
      };
      const again = await runNode(agentBin, [
        "enroll",
        ...["--server", control.grpcUrl, "--token", token.token, "--ca-hash", token.caHash],
        ...["--data-dir", agentDir, "--force"],
      ]);
      expect(again.code).not.toBe(0);
      expect(again.stderr).toContain(`the agent data dir ${agentDir} is in use by process ${agent.proc.pid} (`);
      expect(again.stderr).toContain("an agent running on it: stop it before enrolling this data dir again");
      expect(await fs.readFile(path.join(agentDir, "enrollment.json"), "utf8")).toBe(enrolled);
      expect(await status()).toBe("online");
    } finally {
      await agent.stop();
    }
  });
});
