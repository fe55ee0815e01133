// `dumont dev` (what `npm start` runs): a master key from the environment goes to the control plane and not to
// the local agent; the banner reports this start's host; a kill -9 of dev takes its local agent with it, and a
// local agent gone stops dev, saying so; dev reaches its own API and agent over loopback, on this start's ports.
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdir, readFile, rm } from "node:fs/promises";
import { describe, expect, it, onTestFinished } from "vitest";
import { dumontBin, freePort, runNode, stopProcess, tempDir, waitFor } from "../support/processes.js";

/**
 * `dumont dev` on `dir` and those ports (embedded database), once its banner says the host is online; stopped
 * when the test ends. `output()` is what it printed so far.
 */
async function startDev(
  dir: string,
  ports: { http: number; grpc: number },
  extra: string[] = [],
  env: NodeJS.ProcessEnv = {},
): Promise<{ dev: ChildProcess; output: () => string }> {
  const { DATABASE_URL: _, ...inherited } = process.env;
  const args = ["dev", "--data-dir", dir, "--http-port", String(ports.http), "--grpc-port", String(ports.grpc)];
  const dev = spawn(process.execPath, [dumontBin, ...args, ...extra], {
    env: { ...inherited, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  dev.stdout.on("data", (d: Buffer) => {
    out += d.toString();
  });
  dev.stderr.on("data", (d: Buffer) => {
    out += d.toString();
  });
  onTestFinished(() => stopProcess(dev));
  await waitFor(() => /Host online: .*\n/.test(out), 60_000).catch(() => {
    throw new Error(`dumont dev never said its host was online:\n${out}`);
  });
  return { dev, output: () => out };
}

/** The pids of `pid`'s child processes (Linux's /proc). */
async function childrenOf(pid: number): Promise<number[]> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, "utf8");
  return text.trim().split(/\s+/).filter(Boolean).map(Number);
}

describe("dumont dev", () => {
  it("uses DUMONT_MASTER_KEY and keeps it out of the local agent's environment", async () => {
    const dir = await tempDir("dev-command");
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const masterKey = randomBytes(32).toString("hex");
    const [httpPort, grpcPort] = [await freePort(), await freePort()];
    const { dev, output } = await startDev(dir, { http: httpPort, grpc: grpcPort }, [], {
      DUMONT_MASTER_KEY: masterKey,
    });
    const out = output();
    expect(out).toContain("Host online: local");
    // The command the banner suggests works as printed from another directory: this start's port and data dir
    // (for its admin key) are in front of it.
    const suggested = /Try: (.*?) {4}\(Ctrl-C/.exec(out)?.[1];
    expect(suggested).toBe(`DUMONT_API_URL=http://localhost:${httpPort} DUMONT_DATA_DIR=${dir} npx dumont host list`);
    const listed = await runNode(dumontBin, ["host", "list"], {
      DUMONT_API_URL: `http://localhost:${httpPort}`,
      DUMONT_DATA_DIR: dir,
    });
    expect(listed.stderr).toBe("");
    expect(listed.stdout).toMatch(/^h-\S+ +local +admin +online /m);
    // The key came from the environment: no key file was made.
    expect(await readdir(dir)).not.toContain("master.key");
    // The local agent is its child; its environment (as it was started) has no master key.
    const children = await childrenOf(dev.pid!);
    expect(children.length).toBeGreaterThan(0);
    for (const child of children) {
      const environ = await readFile(`/proc/${child}/environ`, "utf8");
      expect(environ).toContain("DUMONT_LOG_LEVEL"); // the agent's, as dev starts it
      expect(environ).not.toContain("DUMONT_MASTER_KEY");
      expect(environ).not.toContain(masterKey);
    }
  }, 90_000);

  it("reports the host as this start's agent sees it, not as the last start left it", async () => {
    const dir = await tempDir("dev-command-restart");
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    // The same ports both times, as `npm start` and then `npm run demo` use: the local agent dials the address
    // it enrolled with.
    const ports = { http: await freePort(), grpc: await freePort() };
    const start = async (extra: string[]) => {
      const { dev, output } = await startDev(dir, ports, extra);
      await stopProcess(dev);
      return /Host online: (.*)\n/.exec(output())?.[1] ?? "";
    };
    expect(await start([])).toMatch(/ — CPU only$/);
    // The host row is still "online" from the first run (nobody marked it lost yet): the banner must wait for the
    // new agent's hello, which reports the simulated GPUs.
    expect(await start(["--demo"])).toMatch(
      / — NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 4090 {2}\[simulated GPUs\]$/,
    );
  }, 120_000);

  it("calls its own API and agent over loopback, whatever --public-host says, and on this start's gRPC port", async () => {
    const dir = await tempDir("dev-command-public-host");
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const ports = { http: await freePort(), grpc: await freePort() };
    // A name this machine cannot resolve: dev failed calling its own API through it (ENOTFOUND).
    const first = await startDev(dir, ports, ["--public-host", "cp.example.invalid"]);
    expect(first.output()).toContain(`Agents:     https://cp.example.invalid:${ports.grpc}`);
    expect(first.output()).toMatch(/Host online: local \(h-[0-9a-f]+\)/);
    await stopProcess(first.dev);
    // Another gRPC port than the local agent enrolled with: it dialled the old one, and dev gave up after 30 s.
    const second = await startDev(dir, { ...ports, grpc: await freePort() });
    expect(second.output()).toMatch(/Host online: local \(h-[0-9a-f]+\)/);
  }, 120_000);

  it("takes its local agent with it when it is killed -9, so the next dev on the data dir starts", async () => {
    const dir = await tempDir("dev-command-kill");
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const ports = { http: await freePort(), grpc: await freePort() };
    const first = await startDev(dir, ports);
    const agents = await childrenOf(first.dev.pid!);
    expect(agents).toHaveLength(1);
    await stopProcess(first.dev, "SIGKILL");
    // Its agent had the data dir's lock: left running, it made the next start fail ("already in use").
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    await waitFor(() => !alive(agents[0]), 15_000);
    const second = await startDev(dir, ports);
    expect(second.output()).toMatch(/Host online: local \(h-[0-9a-f]+\)/);
  }, 120_000);

  it("stops, saying why, with exit code 1, when its local agent is killed", async () => {
    const dir = await tempDir("dev-command-agent-killed");
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const started = await startDev(dir, { http: await freePort(), grpc: await freePort() });
    const [agent] = await childrenOf(started.dev.pid!);
    const exited = new Promise<number | null>((resolve) => started.dev.once("exit", (code) => resolve(code)));
    process.kill(agent, "SIGKILL");
    // It waited for good on an exit already past (and so ignored Ctrl-C and SIGTERM after it).
    expect(await exited).toBe(1);
    expect(started.output()).toMatch(/the local agent stopped \(killed by SIGKILL\); stopping the control plane/);
  }, 120_000);
});
