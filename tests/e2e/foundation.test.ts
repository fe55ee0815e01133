// The foundation end to end, with real processes: a control plane, two agents with fake nvidia-smi,
// enrollment over TLS with a pinned CA, mTLS session, telemetry through the API, liveness, restarts.
import fs from "node:fs/promises";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import {
  AgentGateway,
  type AgentMessage,
  AgentMessageSchema,
  CONTROL_PLANE_TLS_NAME,
  type ControlMessage,
  grpcServiceDefinition,
} from "@dumont/proto";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type AgentProcess,
  agentBin,
  type ControlPlaneProcess,
  enrollAgent,
  hostApi,
  runNode,
  startAgentProcess,
  startControlPlaneProcess,
  stopProcess,
  tempDir,
  testDatabaseUrl,
  waitFor,
} from "../support/processes.js";

interface HostJson {
  id: string;
  name: string;
  tenantId: string;
  status: string;
  agentVersion: string;
  lastSeenAt: string | null;
  certificateExpiresAt: string | null;
  gpus: {
    index: number;
    uuid: string;
    model: string;
    memoryTotalMiB: number | null;
    memoryUsedMiB: number | null;
    utilizationPercent: number | null;
    temperatureC: number | null;
    powerW: number | null;
  }[];
  cpu: { cores: number; utilizationPercent: number | null } | null;
  memory: { totalBytes: number; usedBytes: number } | null;
  disk: { totalBytes: number; usedBytes: number } | null;
}

// No telemetry goes out while a sample's nvidia-smi runs (given up to 4 s: the fake one has taken over 4 s to start
// under CI's load), and a host marked lost stays lost until it reconnects: lost-after must outlast one slow sample,
// or a live agent reads as lost for the rest of the file (helper-86 reproduced it with one 4.5 s call).
const LOST_AFTER_S = 8;
const INTERVAL_S = 1;

describe("foundation: enroll, stream, telemetry, liveness", () => {
  let root: string;
  let cp: ControlPlaneProcess;
  let db: Awaited<ReturnType<typeof testDatabaseUrl>>;
  const agents: AgentProcess[] = [];

  const hosts = async (): Promise<HostJson[]> => {
    const res = await cp.cli(["host", "list", "--json"]);
    expect(res.stderr).toBe("");
    expect(res.code).toBe(0);
    return JSON.parse(res.stdout) as HostJson[];
  };
  const hostById = async (id: string) => (await hosts()).find((h) => h.id === id);

  beforeAll(async () => {
    root = await tempDir("e2e-foundation");
    db = await testDatabaseUrl();
    cp = await startControlPlaneProcess({
      dataDir: path.join(root, "cp"),
      databaseUrl: db.url,
      lostAfterSeconds: LOST_AFTER_S,
      // What it suggests to agents (these set their own): lost-after must be at least twice it.
      env: { DUMONT_TELEMETRY_INTERVAL: String(INTERVAL_S) },
    });
    const a = await enrollAgent(cp, path.join(root, "agent-a"), "a100-box");
    const b = await enrollAgent(cp, path.join(root, "agent-b"), "h100-mig-box");
    agents.push(
      startAgentProcess(path.join(root, "agent-a"), a, { fixture: "a100-sxm4-80gb-x8", telemetryInterval: INTERVAL_S }),
    );
    agents.push(
      startAgentProcess(path.join(root, "agent-b"), b, { fixture: "h100-mig", telemetryInterval: INTERVAL_S }),
    );
  });

  afterAll(async () => {
    for (const a of agents) await a.stop();
    await cp?.stop();
    await db?.drop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it("shows both enrolled hosts online with their GPUs, nulls where the driver said N/A", async () => {
    const [a, b] = agents as [AgentProcess, AgentProcess];
    // GPUs too: a sample whose nvidia-smi (a Node process here) did not start within the agent's 4 s has host
    // metrics and no GPUs, and the next one has them.
    await waitFor(async () => {
      const list = await hosts();
      return list.filter((h) => h.status === "online" && h.cpu !== null && h.gpus.length > 0).length === 2;
    }, 20_000);
    const list = await hosts();
    expect(list.map((h) => h.id).sort()).toEqual([a.hostId, b.hostId].sort());

    const boxA = list.find((h) => h.id === a.hostId)!;
    expect(boxA.name).toBe("a100-box");
    expect(boxA.tenantId).toBe("admin"); // the tenant of the key that made its join token
    // The certificate it connected with: a year from enrollment.
    const certificateDays = (Date.parse(boxA.certificateExpiresAt!) - Date.now()) / 86_400_000;
    expect(certificateDays).toBeGreaterThan(364);
    expect(certificateDays).toBeLessThan(366);
    expect(boxA.agentVersion).toMatch(/^\d+\.\d+\.\d+/);
    expect(boxA.gpus).toHaveLength(8);
    expect(boxA.gpus.map((g) => g.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(boxA.gpus[0]!.model).toContain("A100");
    expect(boxA.gpus[0]!.memoryTotalMiB).toBe(81920);
    expect(new Set(boxA.gpus.map((g) => g.uuid)).size).toBe(8);
    expect(boxA.cpu!.cores).toBeGreaterThan(0);
    expect(boxA.memory!.totalBytes).toBeGreaterThan(boxA.memory!.usedBytes);
    expect(boxA.disk!.totalBytes).toBeGreaterThan(0);

    const boxB = list.find((h) => h.id === b.hostId)!;
    expect(boxB.gpus).toHaveLength(2);
    const mig = boxB.gpus.find((g) => g.index === 0)!;
    expect(mig.model).toContain("H100");
    expect(mig.utilizationPercent).toBeNull(); // [N/A] under MIG: null, never 0 or NaN
    expect(mig.temperatureC).toBe(34);
    expect(boxB.gpus.find((g) => g.index === 1)!.utilizationPercent).toBe(0);
  });

  it("serves the telemetry series through the API", async () => {
    const [a] = agents as [AgentProcess];
    await waitFor(async () => {
      const res = await cp.cli(["host", "metrics", a.hostId, "--since", "10m", "--json"]);
      return res.code === 0 && (JSON.parse(res.stdout) as unknown[]).length >= 3;
    }, 15_000);
    const res = await cp.cli(["host", "metrics", a.hostId, "--since", "10m", "--json"]);
    const points = JSON.parse(res.stdout) as { at: string; resolution: string; gpus: { index: number }[] }[];
    expect(points.every((p) => p.resolution === "raw")).toBe(true);
    expect(points[0]!.gpus).toHaveLength(8);
    const times = points.map((p) => Date.parse(p.at));
    expect([...times].sort((x, y) => x - y)).toEqual(times);

    const unknown = await cp.cli(["host", "metrics", "h-doesnotexist", "--json"]);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain("not found");
  });

  it("refuses a reused join token, a wrong CA hash and an unreachable server, each with one sentence", async () => {
    const token = JSON.parse((await cp.cli(["host", "join-token", "create", "--json"])).stdout) as {
      token: string;
      caHash: string;
      grpcUrl: string;
      expiresAt: string;
      installCommand: string;
    };
    expect(token.installCommand).toContain(token.token);
    expect(token.installCommand).toContain(token.caHash);
    expect(Date.parse(token.expiresAt) - Date.now()).toBeGreaterThan(50 * 60_000);
    const enroll = (dir: string, caHash: string, server = token.grpcUrl) =>
      runNode(agentBin, [
        "enroll",
        "--server",
        server,
        "--token",
        token.token,
        "--ca-hash",
        caHash,
        "--data-dir",
        path.join(root, dir),
      ]);

    const wrongHash = await enroll("wrong-ca", `sha256:${"ab".repeat(32)}`);
    expect(wrongHash.code).not.toBe(0);
    expect(wrongHash.stderr).toMatch(/did not present a CA matching --ca-hash/);

    const unreachable = await enroll("unreachable", token.caHash, "https://127.0.0.1:1");
    expect(unreachable.code).not.toBe(0);
    expect(unreachable.stderr).toMatch(
      /cannot reach the control plane at 127\.0\.0\.1:1: ECONNREFUSED; check --server/,
    );
    // The API's URL instead of the agent gateway's: refused before any connection, saying which URL to give.
    const apiUrl = await enroll("api-url", token.caHash, cp.httpUrl);
    expect(apiUrl.code).not.toBe(0);
    expect(apiUrl.stderr).toMatch(/--server must be the control plane's agent gateway, https:\/\/HOST:PORT/);

    const first = await enroll("first-use", token.caHash);
    expect(first.code).toBe(0);
    const reuse = await enroll("second-use", token.caHash);
    expect(reuse.code).not.toBe(0);
    expect(reuse.stderr).toMatch(/join token was already used/);
    expect(reuse.stderr.trim().split("\n")).toHaveLength(1);
    // The refused enrollment created no host and left no identity behind.
    await expect(fs.access(path.join(root, "second-use", "enrollment.json"))).rejects.toThrow();
  });

  it("refuses a stream without a client certificate, and one with an unsupported protocol version", async () => {
    const caPem = await fs.readFile(path.join(root, "agent-a", "identity", "ca.crt"));
    const Client = grpc.makeGenericClientConstructor(grpcServiceDefinition(AgentGateway), "AgentGateway");
    const options = { "grpc.ssl_target_name_override": CONTROL_PLANE_TLS_NAME };

    const anonymous = new Client(`127.0.0.1:${cp.grpcPort}`, grpc.credentials.createSsl(caPem), options);
    const noCert = await streamOutcome(anonymous, helloFor("h-whoever", 1));
    expect(noCert.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(noCert.details).toMatch(/client certificate/);

    const [a] = agents as [AgentProcess];
    const id = path.join(a.dataDir, "identity");
    const withCert = new Client(
      `127.0.0.1:${cp.grpcPort}`,
      grpc.credentials.createSsl(
        caPem,
        await fs.readFile(path.join(id, "agent.key")),
        await fs.readFile(path.join(id, "agent.crt")),
      ),
      options,
    );
    const oldProtocol = await streamOutcome(withCert, helloFor(a.hostId, 999));
    expect(oldProtocol.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(oldProtocol.details).toMatch(/protocol version 999 is not supported/);

    const impostor = await streamOutcome(withCert, helloFor("h-someoneelse", 1));
    expect(impostor.code).toBe(grpc.status.PERMISSION_DENIED);
    anonymous.close();
    withCert.close();
  });

  it("marks a kill -9'd agent lost within lost-after plus one interval, and records the event", async () => {
    const b = agents[1]!;
    await waitFor(async () => (await hostById(b.hostId))?.status === "online", 10_000);
    // Watched through the API from this process: each look through the CLI is a process of its own, which on a
    // slow machine took long enough to count for much of the time measured.
    const hostsApi = hostApi(cp);
    const statusOf = async (id: string) => (await hostsApi.listHosts({})).hosts.find((h) => h.id === id)?.status;
    const killedAt = Date.now();
    await stopProcess(b.proc, "SIGKILL");
    await waitFor(async () => (await statusOf(b.hostId)) === "lost", 20_000, 50);
    const detectedAfterS = (Date.now() - killedAt) / 1000;
    // lost-after + one telemetry interval + one liveness tick, and room for a busy machine
    expect(detectedAfterS).toBeLessThan(LOST_AFTER_S + INTERVAL_S + 5);
    const events = JSON.parse((await cp.cli(["host", "events", b.hostId, "--json"])).stdout) as { kind: string }[];
    expect(events.map((e) => e.kind)).toEqual(["enrolled", "online", "lost"]);
    // The other agent is unaffected.
    expect((await hostById(agents[0]!.hostId))?.status).toBe("online");

    // It comes back online on reconnect.
    agents[1] = startAgentProcess(b.dataDir, b.hostId, { fixture: "h100-mig", telemetryInterval: INTERVAL_S });
    await waitFor(async () => (await hostById(b.hostId))?.status === "online", 15_000);
    const after = JSON.parse((await cp.cli(["host", "events", b.hostId, "--json"])).stdout) as { kind: string }[];
    expect(after.map((e) => e.kind)).toEqual(["enrolled", "online", "lost", "online"]);
  });

  it("survives a control-plane restart: agents reconnect, no duplicate hosts, no lost data", async () => {
    const before = await hosts();
    const a = agents[0]!;
    const metricsBefore = JSON.parse(
      (await cp.cli(["host", "metrics", a.hostId, "--since", "1h", "--json"])).stdout,
    ) as unknown[];
    // Agent a's certificate is renewed while it runs; it keeps its session, and its next connection (after the
    // restart) presents the new certificate, which the control plane then keeps.
    const certificate = path.join(a.dataDir, "identity", "agent.crt");
    const oldCertificate = await fs.readFile(certificate, "utf8");
    const renewed = await runNode(agentBin, ["renew", "--data-dir", a.dataDir, "--json"]);
    expect(renewed.stderr).toBe("");
    const { hostId, expiresAt } = JSON.parse(renewed.stdout) as { hostId: string; expiresAt: string };
    expect(hostId).toBe(a.hostId);
    expect(Date.parse(expiresAt) - Date.now()).toBeGreaterThan(364 * 86_400_000);
    expect(await fs.readFile(certificate, "utf8")).not.toBe(oldCertificate);

    await cp.stop();
    const stoppedAt = Date.now();
    cp = await cp.startAgain();
    const metricCount = async () =>
      (JSON.parse((await cp.cli(["host", "metrics", a.hostId, "--since", "1h", "--json"])).stdout) as unknown[]).length;
    // The row says online from before the stop, and a report stored between the reads above and the stop would
    // pass for the new session's: only one stamped after the stop is.
    // The agent retries with backoff of up to 30 s between attempts: a slow restart can cost it one long wait.
    await waitFor(async () => {
      const h = await hostById(a.hostId);
      return h?.status === "online" && Date.parse(h.lastSeenAt!) > stoppedAt;
    }, 60_000);
    // Telemetry flows again on the new session, on top of everything stored before the restart.
    const stored = await metricCount();
    expect(stored).toBeGreaterThanOrEqual(metricsBefore.length);
    await waitFor(async () => (await metricCount()) > stored, 10_000);
    const after = await hosts();
    expect(after.map((h) => h.id).sort()).toEqual(before.map((h) => h.id).sort());
    expect(a.log()).toMatch(/reconnecting to the control plane/);
    const events = JSON.parse((await cp.cli(["host", "events", a.hostId, "--json"])).stdout) as { message: string }[];
    expect(events.map((e) => e.message)).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^certificate renewed, valid until/),
        "the agent now uses its renewed certificate",
      ]),
    );
  }, 150_000);
});

function helloFor(hostId: string, protocolVersion: number): AgentMessage {
  return create(AgentMessageSchema, {
    msg: { case: "hello", value: { hostId, agentVersion: "test", protocolVersion } },
  });
}

/** Opens a Connect stream, sends `first`, and reports how the server ended it. */
function streamOutcome(client: grpc.Client, first: AgentMessage): Promise<{ code: grpc.status; details: string }> {
  return new Promise((resolve) => {
    const stream = (
      client as unknown as { connect: () => grpc.ClientDuplexStream<AgentMessage, ControlMessage> }
    ).connect();
    stream.on("data", () => {});
    stream.on("error", () => {});
    stream.on("status", (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details }));
    stream.write(first);
  });
}
