// The agent's two connections to the control plane, through a TCP proxy on loopback that can cut either one:
// Connect (the session, snapshot uploads) from the start, Downloads (restores) from the first restore on.
// Losing either ends the session; the agent comes back with both, and restores work again.
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type AgentProcess,
  type ControlPlaneProcess,
  startControlPlaneProcess,
  startOnlineAgent,
  tempDir,
  testDatabaseUrl,
  waitFor,
} from "../support/processes.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { describeTree, makeWorkspace } from "../support/workspace.js";

describe("the agent's Connect and Downloads connections", () => {
  let root: string;
  let cp: ControlPlaneProcess;
  let agent: AgentProcess;
  let proxy: TcpProxy;
  let db: Awaited<ReturnType<typeof testDatabaseUrl>>;
  let workspace: string;
  let snapshotId: string;

  const cli = async (args: string[]) => {
    const res = await cp.cli(args);
    if (res.code !== 0) throw new Error(`dumont ${args.join(" ")} failed: ${res.stderr}`);
    return JSON.parse(res.stdout);
  };
  let restores = 0;
  /** Restores the workspace's snapshot into a new directory and checks it byte for byte. */
  const restoreChecked = async () => {
    const target = path.join(root, `restored-${++restores}`);
    await cli(["snapshot", "restore", snapshotId, "--host", agent.hostId, "--target", target, "--json"]);
    expect(await describeTree(target)).toEqual(await describeTree(workspace));
  };
  /**
   * Cuts the proxied connection `which` (oldest first), then waits for the agent to say `said` and to be welcomed
   * to a new session: on one connection, until the next restore asks for the second.
   */
  const cutAndRecover = async (which: number, said: RegExp) => {
    const open = proxy.connections();
    expect(open).toHaveLength(2);
    const logged = agent.log().length;
    open[which].cut();
    // Within keepalive (15 s + 10 s) at worst: Node's http2 can miss a connection reset until a ping goes
    // unanswered. One run of about 30 saw no reaction from either side for 30 s, for reasons not found.
    try {
      await waitFor(async () => {
        const log = agent.log().slice(logged);
        return said.test(log) && /connected to the control plane/.test(log) && proxy.connections().length === 1;
      }, 60_000);
    } catch (err) {
      throw new Error(
        `${(err as Error).message}; agent log since the cut:\n${agent.log().slice(logged).slice(-4000)}\n` +
          `control plane log:\n${cp.log().slice(-4000)}`,
      );
    }
  };

  beforeAll(async () => {
    root = await tempDir("e2e-connections");
    db = await testDatabaseUrl();
    cp = await startControlPlaneProcess({ dataDir: path.join(root, "cp"), databaseUrl: db.url });
    proxy = await startTcpProxy(cp.grpcPort);
    workspace = path.join(root, "workspace");
    await makeWorkspace(workspace);
    agent = await startOnlineAgent(cp, path.join(root, "agent"), "proxied", { server: proxy.url });
    snapshotId = (await cli(["snapshot", "create", "--host", agent.hostId, "--path", workspace, "--json"])).id;
  });

  afterAll(async () => {
    await agent?.stop();
    await proxy?.close();
    await cp?.stop();
    await db?.drop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it("opens Downloads at the first restore; when it is cut, the session ends, and both come back", async () => {
    expect(proxy.connections()).toHaveLength(1);
    await restoreChecked();
    expect(proxy.connections()).toHaveLength(2);
    // Whichever side sees the cut first ends the session: the agent (its Downloads call ends) or the control
    // plane (which then closes Connect). One run of the clean-clone CI saw the second; the test wanted the first.
    await cutAndRecover(1, /the downloads stream ended; reconnecting|the control plane closed the stream/);
    await restoreChecked();
  }, 120_000);

  it("when Connect is cut, the control plane ends Downloads with the session, and both come back", async () => {
    expect(proxy.connections()).toHaveLength(2);
    await cutAndRecover(0, /control plane stream failed|the downloads stream ended; reconnecting/);
    await restoreChecked();
    expect(proxy.connections()).toHaveLength(2);
  }, 120_000);
});
