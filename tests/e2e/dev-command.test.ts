// `dumont dev` (what `npm start` runs) with a master key from the environment: the control plane takes it and
// the local agent it starts does not inherit it.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdir, readFile, rm } from "node:fs/promises";
import { describe, expect, it, onTestFinished } from "vitest";
import { dumontBin, freePort, stopProcess, tempDir, waitFor } from "../support/processes.js";

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
});
