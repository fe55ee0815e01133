// For tests: `dumont-agent ARGS` run in this process, its output captured (no process start per call).
import { Command } from "commander";
import { vi } from "vitest";
import { registerSnapshotCommands } from "./snapshot-command.js";

/** Runs the agent's snapshot commands with `args`: what they printed, and the exit code. */
export async function runAgentCli(...args: string[]): Promise<{ out: string; err: string; code: number }> {
  const program = new Command("dumont-agent").exitOverride();
  registerSnapshotCommands(program);
  let out = "";
  let err = "";
  const o = vi.spyOn(process.stdout, "write").mockImplementation((s, ...rest: unknown[]) => {
    out += String(s);
    // Written: its callback, as a real stream calls it (a command awaits it to know its output got out).
    const written = rest.find((a) => typeof a === "function") as (() => void) | undefined;
    if (written) queueMicrotask(written);
    return true;
  });
  const e = vi.spyOn(process.stderr, "write").mockImplementation((s) => {
    err += String(s);
    return true;
  });
  process.exitCode = 0;
  try {
    await program.parseAsync(["node", "dumont-agent", ...args]);
  } catch (error) {
    err += `${(error as Error).message}\n`;
    const code = (error as { exitCode?: unknown }).exitCode;
    process.exitCode = Number.isInteger(code) ? (code as number) : 1;
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = 0;
  return { out, err, code };
}
