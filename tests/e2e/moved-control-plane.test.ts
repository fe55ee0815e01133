// A control plane that moved (a new name or port) after its hosts enrolled: `dumont-agent run --server` (or
// DUMONT_SERVER) and `renew --server` dial the new address with the same identity, and the enrollment keeps the
// address it was made with. The host enrolls through a TCP proxy that is then closed: its enrolled address is dead.
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  type AgentProcess,
  agentBin,
  type ControlPlaneProcess,
  enrollAgent,
  runNode,
  startAgentProcess,
  startControlPlaneProcess,
  tempDir,
  testDatabaseUrl,
  waitForOnline,
} from "../support/processes.js";
import { startTcpProxy } from "../support/tcp-proxy.js";

describe("a control plane that moved after its hosts enrolled", () => {
  let root: string;
  let cp: ControlPlaneProcess;
  let db: Awaited<ReturnType<typeof testDatabaseUrl>>;
  let agent: AgentProcess | undefined;
  let dataDir: string;
  let hostId: string;
  let enrolledWith: string;
  let movedTo: string;

  beforeAll(async () => {
    root = await tempDir("e2e-moved");
    db = await testDatabaseUrl();
    cp = await startControlPlaneProcess({ dataDir: path.join(root, "cp"), databaseUrl: db.url });
    const proxy = await startTcpProxy(cp.grpcPort);
    enrolledWith = proxy.url;
    movedTo = `https://localhost:${cp.grpcPort}`;
    dataDir = path.join(root, "agent");
    hostId = await enrollAgent(cp, dataDir, "moved", { server: enrolledWith });
    await proxy.close();
  });

  afterAll(async () => {
    await agent?.stop();
    await cp?.stop();
    await db?.drop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it("renews and runs against --server / DUMONT_SERVER, leaving the enrolled address as it was", async () => {
    // An empty DUMONT_SERVER (a service file's `DUMONT_SERVER=`) means the enrolled address.
    const dead = await runNode(agentBin, ["renew", "--data-dir", dataDir], { DUMONT_SERVER: "" });
    expect(dead.code).not.toBe(0);
    expect(dead.stderr).toContain(`cannot reach the control plane at ${enrolledWith}`);

    const renewed = await runNode(agentBin, ["renew", "--data-dir", dataDir, "--server", movedTo, "--json"]);
    expect(renewed.stderr).toBe("");
    expect(JSON.parse(renewed.stdout).hostId).toBe(hostId);

    agent = startAgentProcess(dataDir, hostId, { env: { DUMONT_SERVER: movedTo } });
    const running = agent;
    await waitForOnline(cp, hostId);
    // The agent's log reaches this process through a pipe, maybe after the control plane has seen it online.
    await vi.waitFor(() => expect(running.log()).toContain(`"server":"${movedTo}"`), { timeout: 20_000 });

    const enrollment = JSON.parse(await fs.readFile(path.join(dataDir, "enrollment.json"), "utf8"));
    expect(enrollment).toMatchObject({ hostId, server: enrolledWith });
  });

  it("refuses a --server that is not an agent gateway address before dialing anything, naming flag and variable", async () => {
    for (const [args, env] of [
      [["--server", "http://localhost:8000"], {}],
      [[], { DUMONT_SERVER: "http://localhost:8000" }],
    ] as const) {
      const res = await runNode(agentBin, ["run", "--data-dir", dataDir, ...args], env, 10_000);
      expect(res.code).not.toBe(0);
      expect(res.stderr).toContain(
        "--server (DUMONT_SERVER) must be the control plane's agent gateway, https://HOST:PORT",
      );
    }
    const renew = await runNode(agentBin, ["renew", "--data-dir", dataDir, "--server", "cp.example.com:99999"]);
    expect(renew.code).not.toBe(0);
    expect(renew.stderr).toBe(
      'dumont-agent: --server (DUMONT_SERVER) has no https:// in front: got "cp.example.com:99999"; it must look like ' +
        "https://HOST:8443 (the agent gateway; `dumont host join-token create` prints it)\n",
    );
  });
});
