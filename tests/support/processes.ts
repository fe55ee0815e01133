// Real processes for cross-process tests: the control plane (`dumont serve`), agents
// (`dumont-agent run`), and the CLIs — spawned from the built bins, on loopback ports.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type Client, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { api } from "@dumont/proto";
import pg from "pg";

const here = path.dirname(fileURLToPath(import.meta.url));
/** The repository root, whether this runs as TypeScript (tests/support) or compiled (tests/dist/support). */
export const repoRoot = path.resolve(here, here.includes(`${path.sep}dist${path.sep}`) ? "../../.." : "../..");
export const dumontBin = path.join(repoRoot, "control-plane/bin/dumont.cjs");
export const agentBin = path.join(repoRoot, "host-agent/bin/dumont-agent.js");
export const fakeNvidiaSmiDir = path.join(repoRoot, "tests/fakes/nvidia-smi");

export async function tempDir(prefix: string): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), `dumont-${prefix}-`));
}

/** Ports freePort has handed out in this process: never twice. */
const handedOut = new Set<number>();

/**
 * A port for a server a test starts, free now: a random one below the kernel's ephemeral range. A port from
 * `listen(0)` is an ephemeral one, which the kernel may give to any outgoing connection (of the tests running
 * beside this one) before the process it was picked for binds it: CI saw `dumont dev` fail with EADDRINUSE so.
 * Below that range only another pick can take it.
 */
export async function freePort(): Promise<number> {
  const below = ephemeralPortsFrom();
  for (let tries = 0; tries < 200; tries++) {
    const port = LOWEST_TEST_PORT + Math.floor(Math.random() * (below - LOWEST_TEST_PORT));
    if (handedOut.has(port) || !(await bindable(port))) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`no free port between ${LOWEST_TEST_PORT} and ${below} after 200 tries`);
}

const LOWEST_TEST_PORT = 10_000;

/** The first port of the kernel's ephemeral range (net.ipv4.ip_local_port_range; Linux's default 32768). */
function ephemeralPortsFrom(): number {
  try {
    const first = Number.parseInt(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8"), 10);
    if (first > LOWEST_TEST_PORT + 1000) return first;
  } catch {}
  return 32_768;
}

/** Whether a server could listen on `port` on every address now (as the control plane does, on 0.0.0.0). */
function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "0.0.0.0", () => server.close(() => resolve(true)));
  });
}

/**
 * A database URL for one control plane. Without DATABASE_URL: undefined (embedded PGlite).
 * With it: a fresh database on that server, so parallel test files never share state.
 */
export async function testDatabaseUrl(): Promise<{ url?: string; drop: () => Promise<void> }> {
  const base = process.env.DATABASE_URL;
  if (!base) return { url: undefined, drop: async () => {} };
  const name = `dumont_test_${randomBytes(6).toString("hex")}`;
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = new URL(base);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: base });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runNode(
  bin: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 30_000,
): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [bin, ...args],
      { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

export interface ControlPlaneProcess {
  httpUrl: string;
  grpcUrl: string;
  grpcPort: number;
  httpPort: number;
  dataDir: string;
  adminKey: string;
  proc: ChildProcess;
  /** `dumont …` against this control plane as admin. */
  cli(args: string[]): Promise<CommandResult>;
  stop(): Promise<void>;
  /** Once stopped: the same control plane started again, with its options, data dir and ports. */
  startAgain(): Promise<ControlPlaneProcess>;
  log(): string;
}

export interface ControlPlaneProcessOptions {
  dataDir: string;
  httpPort?: number;
  grpcPort?: number;
  databaseUrl?: string;
  lostAfterSeconds?: number;
  env?: NodeJS.ProcessEnv;
}

export async function startControlPlaneProcess(options: ControlPlaneProcessOptions): Promise<ControlPlaneProcess> {
  const httpPort = options.httpPort ?? (await freePort());
  const grpcPort = options.grpcPort ?? (await freePort());
  const args = [
    "serve",
    "--data-dir",
    options.dataDir,
    "--http-port",
    String(httpPort),
    "--grpc-port",
    String(grpcPort),
    "--host",
    "127.0.0.1",
    "--lost-after",
    String(options.lostAfterSeconds ?? 10),
  ];
  const env: NodeJS.ProcessEnv = { ...process.env, DUMONT_LOG_LEVEL: "info", ...options.env };
  if (options.databaseUrl) env.DATABASE_URL = options.databaseUrl;
  else delete env.DATABASE_URL;
  const proc = spawn(process.execPath, [dumontBin, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  proc.stdout?.on("data", (d) => {
    output += d;
  });
  proc.stderr?.on("data", (d) => {
    output += d;
  });
  const httpUrl = `http://127.0.0.1:${httpPort}`;
  try {
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`control plane exited with ${proc.exitCode}:\n${output}`);
      const res = await fetch(`${httpUrl}/healthz`).catch(() => undefined);
      return res?.ok === true;
    }, 60_000);
  } catch (err) {
    // Not left running for the rest of the run (nobody holds it to stop it): its output says why it did not answer.
    await stopProcess(proc);
    throw err;
  }
  const adminKey = (await fs.readFile(path.join(options.dataDir, "admin-api-key"), "utf8")).trim();
  return {
    httpUrl,
    grpcUrl: `https://127.0.0.1:${grpcPort}`,
    grpcPort,
    httpPort,
    dataDir: options.dataDir,
    adminKey,
    proc,
    cli: (cliArgs) => runNode(dumontBin, cliArgs, { DUMONT_API_URL: httpUrl, DUMONT_API_KEY: adminKey }),
    stop: () => stopProcess(proc),
    startAgain: () => startControlPlaneProcess({ ...options, httpPort, grpcPort }),
    log: () => output,
  };
}

export interface AgentProcess {
  hostId: string;
  dataDir: string;
  proc: ChildProcess;
  stop(): Promise<void>;
  log(): string;
}

function adminTransport(cp: ControlPlaneProcess) {
  return createConnectTransport({
    baseUrl: cp.httpUrl,
    httpVersion: "1.1",
    interceptors: [
      (next) => async (req) => {
        req.header.set("authorization", `Bearer ${cp.adminKey}`);
        return next(req);
      },
    ],
  });
}

/** A client of the control plane's SnapshotService, as admin (what `dumont snapshot …` uses). */
export function snapshotApi(cp: ControlPlaneProcess): Client<typeof api.SnapshotService> {
  return createClient(api.SnapshotService, adminTransport(cp));
}

/**
 * A client of the control plane's HostService, as admin (what `dumont host …` uses): for watching a host's
 * status closely, where starting a CLI process for each look would take longer than what is timed.
 */
export function hostApi(cp: ControlPlaneProcess): Client<typeof api.HostService> {
  return createClient(api.HostService, adminTransport(cp));
}

/**
 * Creates a join token through the CLI and enrolls a data dir with it; returns the host id. `server`
 * overrides the address the agent is given (e.g. a proxy in front of the control plane).
 */
export async function enrollAgent(
  cp: ControlPlaneProcess,
  dataDir: string,
  name: string,
  options: { server?: string } = {},
): Promise<string> {
  const token = await cp.cli(["host", "join-token", "create", "--json"]);
  if (token.code !== 0) throw new Error(`join-token create failed: ${token.stderr}`);
  const t = JSON.parse(token.stdout) as { token: string; caHash: string; grpcUrl: string };
  const res = await runNode(agentBin, [
    "enroll",
    "--server",
    options.server ?? cp.grpcUrl,
    "--token",
    t.token,
    "--ca-hash",
    t.caHash,
    "--data-dir",
    dataDir,
    "--name",
    name,
  ]);
  if (res.code !== 0) throw new Error(`enroll failed: ${res.stderr}`);
  return res.stdout.trim();
}

export function startAgentProcess(
  dataDir: string,
  hostId: string,
  options: { fixture?: string; telemetryInterval?: number; env?: NodeJS.ProcessEnv } = {},
): AgentProcess {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${fakeNvidiaSmiDir}${path.delimiter}${process.env.PATH ?? ""}`,
    DUMONT_FAKE_NVIDIA_SMI_FIXTURE: options.fixture ?? "demo",
    DUMONT_LOG_LEVEL: "info",
    ...options.env,
  };
  const proc = spawn(
    process.execPath,
    [agentBin, "run", "--data-dir", dataDir, "--telemetry-interval", String(options.telemetryInterval ?? 1)],
    { env, stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  proc.stdout?.on("data", (d) => {
    output += d;
  });
  proc.stderr?.on("data", (d) => {
    output += d;
  });
  return { hostId, dataDir, proc, stop: () => stopProcess(proc), log: () => output };
}

/** Waits until `hostId` is online in the control plane's host list (its agent connected and reporting). */
export async function waitForOnline(cp: ControlPlaneProcess, hostId: string, timeoutMs = 20_000): Promise<void> {
  await waitFor(
    async () => (await hostApi(cp).listHosts({})).hosts.find((h) => h.id === hostId)?.status === "online",
    timeoutMs,
  );
}

/** Enrolls `dataDir` as `name`, starts its agent and waits until the host is online. */
export async function startOnlineAgent(
  cp: ControlPlaneProcess,
  dataDir: string,
  name: string,
  options: { server?: string } = {},
): Promise<AgentProcess> {
  const agent = startAgentProcess(dataDir, await enrollAgent(cp, dataDir, name, options));
  try {
    await waitForOnline(cp, agent.hostId);
  } catch (err) {
    await agent.stop();
    throw err;
  }
  return agent;
}

export async function stopProcess(proc: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  proc.kill(signal);
  const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

export async function waitFor(
  check: () => Promise<boolean> | boolean,
  timeoutMs: number,
  intervalMs = 100,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (err) {
      lastError = err;
      if (err instanceof Error && err.message.startsWith("control plane exited")) throw err;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms${lastError ? `: ${String(lastError)}` : ""}`);
}
