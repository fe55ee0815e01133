// The systemd unit the README installs (host-agent/packaging/dumont-agent.service): systemd reads every line of
// it (where systemd-analyze is there to ask), and the command it starts is one this agent takes.
import { execFile } from "node:child_process";
import { copyFile, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);
const unitFile = fileURLToPath(new URL("../../packaging/dumont-agent.service", import.meta.url));
const agentBin = fileURLToPath(new URL("../../bin/dumont-agent.js", import.meta.url));

/** Whether a command can be run here. */
async function have(command: string): Promise<boolean> {
  return run(command, ["--version"]).then(
    () => true,
    () => false,
  );
}

describe("the agent's systemd unit", () => {
  it("starts `dumont-agent run` from /opt/dumont with the data dir enroll wrote, and options the agent takes", async () => {
    const unit = await readFile(unitFile, "utf8");
    const execStart = /^ExecStart=(.*)$/m.exec(unit)?.[1].split(" ") ?? [];
    expect(execStart.slice(0, 3)).toEqual(["/usr/bin/env", "node", "/opt/dumont/host-agent/bin/dumont-agent.js"]);
    const args = execStart.slice(3);
    expect(args).toEqual(["run", "--data-dir", "/var/lib/dumont-agent"]);
    // Every option it passes is one `run` lists.
    const help = await run(process.execPath, [agentBin, "run", "--help"]);
    expect(help.stdout).toContain("Usage: dumont-agent run");
    for (const flag of args.filter((a) => a.startsWith("--"))) expect(help.stdout).toContain(`${flag} <`);
    // An empty DUMONT_SERVER means the enrolled address (config.test.ts, moved-control-plane.test.ts).
    expect(unit).toMatch(/^Environment=DUMONT_SERVER=$/m);
  });

  it.skipIf(process.platform !== "linux")("is read by systemd without a complaint", async () => {
    if (!(await have("systemd-analyze"))) return; // no systemd here: nothing to ask
    const dir = await mkdtemp(join(tmpdir(), "dumont-unit-"));
    try {
      const copy = join(dir, "dumont-agent.service");
      await copyFile(unitFile, copy);
      const verified = await run("systemd-analyze", ["verify", copy]).catch((err: { stderr?: string }) => ({
        stderr: `${err.stderr ?? err}`,
      }));
      expect(verified.stderr).toBe("");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
