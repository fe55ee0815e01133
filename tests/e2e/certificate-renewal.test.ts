// An agent whose certificate has less than a third of its validity left renews it by itself before it connects,
// and the control plane keeps the new one. The agent runs in this process (startAgent, what `dumont-agent run`
// runs) with only its clock moved on 250 days: Date alone is faked, and TLS checks certificates against the real
// time. The control plane is a real process.
import fs from "node:fs/promises";
import path from "node:path";
import { createLogger, loadAgentConfig, type RunningAgent, startAgent } from "@dumont/host-agent";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  type ControlPlaneProcess,
  enrollAgent,
  startControlPlaneProcess,
  tempDir,
  testDatabaseUrl,
} from "../support/processes.js";

const DAY = 86_400_000;

describe("certificate renewal by a running agent", () => {
  let root: string;
  let cp: ControlPlaneProcess;
  let db: Awaited<ReturnType<typeof testDatabaseUrl>>;
  let agent: RunningAgent | undefined;
  let dataDir: string;
  let hostId: string;

  beforeAll(async () => {
    root = await tempDir("e2e-renewal");
    db = await testDatabaseUrl();
    cp = await startControlPlaneProcess({ dataDir: path.join(root, "cp"), databaseUrl: db.url });
    dataDir = path.join(root, "agent");
    hostId = await enrollAgent(cp, dataDir, "renewing");
  });

  afterAll(async () => {
    vi.useRealTimers();
    await agent?.stop();
    await cp?.stop();
    await db?.drop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it("renews before connecting once a third of the validity is left, and connects with the new certificate", async () => {
    const certificate = path.join(dataDir, "identity", "agent.crt");
    const enrolledWith = await fs.readFile(certificate, "utf8");
    vi.useFakeTimers({ toFake: ["Date"], now: Date.now() + 250 * DAY });
    try {
      const config = loadAgentConfig({ dataDir, telemetryInterval: 1, logLevel: "silent" });
      agent = await startAgent(config, createLogger("silent"));
      const running = agent;
      await new Promise((resolve) => running.session.once("connected", resolve));
    } finally {
      vi.useRealTimers();
    }
    expect(await fs.readFile(certificate, "utf8")).not.toBe(enrolledWith);

    const events = JSON.parse((await cp.cli(["host", "events", hostId, "--json"])).stdout) as { message: string }[];
    const messages = events.map((e) => e.message);
    expect(messages).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^certificate renewed, valid until/),
        "the agent now uses its renewed certificate",
      ]),
    );
    // Renewed before the first connection: the session was opened with the new certificate, and no other.
    expect(messages.indexOf("the agent now uses its renewed certificate")).toBeLessThan(
      messages.findIndex((m) => /connected/.test(m)),
    );
    const hosts = JSON.parse((await cp.cli(["host", "list", "--json"])).stdout) as {
      id: string;
      status: string;
      certificateExpiresAt: string;
    }[];
    const host = hosts.find((h) => h.id === hostId);
    expect(host?.status).toBe("online");
    // The control plane dated the new certificate by its own (real) clock: a year from now.
    expect(Date.parse(host!.certificateExpiresAt) - Date.now()).toBeGreaterThan(364 * DAY);
  }, 60_000);
});
