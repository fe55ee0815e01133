// Running a CLI (`dumont-agent`, `dumont`) as a process with its stdout where a test needs it: on a full disk, on a
// file it may only read, on a pipe whose reader has gone, or on a pipe read to the end.
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";

/** Where the CLI's stdout goes: /dev/full, a file opened for reading only (its path), a gone reader, or a pipe. */
export type StdoutTo = "full" | { readOnly: string } | "gone" | "pipe";

export interface CliOutcome {
  code: number | null;
  out: string;
  err: string;
}

/** Runs `node bin args…` with `env`, its stdout as `stdout` says; what it printed, and its exit code. */
export function runCli(bin: string, args: string[], env: NodeJS.ProcessEnv, stdout: StdoutTo): Promise<CliOutcome> {
  const fd =
    stdout === "full"
      ? openSync("/dev/full", "w")
      : typeof stdout === "object"
        ? openSync(stdout.readOnly, "r")
        : "pipe";
  const child = spawn(process.execPath, [bin, ...args], { env, stdio: ["ignore", fd, "pipe"] });
  if (typeof fd === "number") closeSync(fd);
  if (stdout === "gone") child.stdout?.destroy();
  return outcome(child);
}

/** What `child` printed, and its exit code. */
export async function outcome(child: ChildProcess): Promise<CliOutcome> {
  let out = "";
  let err = "";
  child.stdout?.on("data", (d) => {
    out += String(d);
  });
  child.stderr?.on("data", (d) => {
    err += String(d);
  });
  const code = await new Promise<number | null>((resolve) => child.on("close", (c) => resolve(c)));
  return { code, out, err };
}
