// `dumont dev` (what `npm start` runs) with a master key from the environment: the control plane takes it and
// the local agent it starts does not inherit it.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdir, readFile, rm } from "node:fs/promises";
import { describe, expect, it, onTestFinished } from "vitest";
import { dumontBin, freePort, runNode, stopProcess, tempDir, waitFor } from "../support/processes.js";

describe("dumont dev", () => {
  it("uses DUMONT_MASTER_KEY and keeps it out of the local agent's environment", async () => {
    const dir = await tempDir("dev-command");
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const masterKey = randomBytes(32).toString("hex");
    const [httpPort, grpcPort] = [await freePort(), await freePort()];
    const { DATABASE_URL: _, ...env } = process.env; // the embedded database
    const dev = spawn(
      process.execPath,
      [dumontBin, "dev", "--data-dir", dir, "--http-port", String(httpPort), "--grpc-port", String(grpcPort)],
      { env: { ...env, DUMONT_MASTER_KEY: masterKey }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    dev.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    dev.stderr.on("data", (d: Buffer) => {
      out += d.toString();
    });
    onTestFinished(() => stopProcess(dev));
    await waitFor(() => /Host online: local/.test(out), 60_000).catch(() => {
      throw new Error(`dumont dev never said its host was online:\n${out}`);
    });
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
    const children = (await readFile(`/proc/${dev.pid}/task/${dev.pid}/children`, "utf8")).trim().split(/\s+/);
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
    const { DATABASE_URL: _, ...env } = process.env;
    // The same ports both times, as `npm start` and then `npm run demo` use: the local agent dials the address
    // it enrolled with.
    const [httpPort, grpcPort] = [await freePort(), await freePort()];
    const start = async (extra: string[]) => {
      const args = ["dev", "--data-dir", dir, "--http-port", String(httpPort), "--grpc-port", String(grpcPort)];
      const dev = spawn(process.execPath, [dumontBin, ...args, ...extra], { env, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      dev.stdout.on("data", (d: Buffer) => {
        out += d.toString();
      });
      dev.stderr.on("data", (d: Buffer) => {
        out += d.toString();
      });
      await waitFor(() => /Host online: .*\n/.test(out), 60_000).catch(async () => {
        await stopProcess(dev);
        throw new Error(`dumont dev never said its host was online:\n${out}`);
      });
      await stopProcess(dev);
      return /Host online: (.*)\n/.exec(out)?.[1] ?? "";
    };
    expect(await start([])).toMatch(/ — CPU only$/);
    // The host row is still "online" from the first run (nobody marked it lost yet): the banner must wait for the
    // new agent's hello, which reports the simulated GPUs.
    expect(await start(["--demo"])).toMatch(
      / — NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 4090 {2}\[simulated GPUs\]$/,
    );
  }, 120_000);
});
