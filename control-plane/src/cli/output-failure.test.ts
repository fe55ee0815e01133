// `dumont …` (the built CLI, as a process, against a `dumont dev` and its local agent) when its output cannot be
// written: stdout on a full disk fails the command with one line and exit 1, naming the snapshot a create saved all
// the same; a reader that went away (`| head -1`) ends it quietly with exit 0.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type CliOutcome, runCli } from "@dumont/repository/testing/cli-process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const bin = fileURLToPath(new URL("../../bin/dumont.cjs", import.meta.url));
const FULL = "cannot write the output to stdout: ENOSPC (no space left on device)";

let root: string;
let dev: ChildProcess | undefined;
let hostId: string;
let workspace: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-output-failure-"));
  workspace = join(root, "ws");
  await mkdir(workspace);
  await writeFile(join(workspace, "f"), "hi\n");
  const dataDir = join(root, "data");
  const { DATABASE_URL: _, ...inherited } = process.env;
  // Ports 0: free ones, which the banner names.
  const args = ["dev", "--data-dir", dataDir, "--http-port", "0", "--grpc-port", "0", "--host", "127.0.0.1"];
  dev = spawn(process.execPath, [bin, ...args, "--public-host", "127.0.0.1"], {
    env: inherited,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let banner = "";
  dev.stdout?.on("data", (d) => {
    banner += String(d);
  });
  dev.stderr?.on("data", (d) => {
    banner += String(d);
  });
  const until = Date.now() + 90_000;
  while (!/Host online: .*\n/.test(banner)) {
    if (dev.exitCode !== null || Date.now() > until)
      throw new Error(`dumont dev never had its host online:\n${banner}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  hostId = /Host online: \S+ \((h-[0-9a-f]+)\)/.exec(banner)?.[1] ?? "";
  const apiUrl = /API: +(http:\/\/\S+)/.exec(banner)?.[1] ?? "";
  const apiKey = (await readFile(join(dataDir, "admin-api-key"), "utf8")).trim();
  env = { ...inherited, DUMONT_API_URL: apiUrl, DUMONT_API_KEY: apiKey };
}, 120_000);

afterAll(async () => {
  if (dev && dev.exitCode === null) {
    const exited = new Promise((resolve) => dev?.once("exit", resolve));
    dev.kill("SIGTERM");
    await exited;
  }
  await rm(root, { recursive: true, force: true });
});

/** Runs `dumont` with stdout on /dev/full, on a pipe whose reader has gone ("gone"), or on a pipe read to the end. */
function dumont(args: string[], stdout: "full" | "gone" | "pipe"): Promise<CliOutcome> {
  return runCli(bin, args, env, stdout);
}

const listed = async (): Promise<string[]> => {
  const list = await dumont(["snapshot", "list", "--json"], "pipe");
  expect(list.code).toBe(0);
  return (JSON.parse(list.out) as { id: string }[]).map((s) => s.id);
};

describe.runIf(existsSync("/dev/full"))("dumont: stdout that cannot be written", () => {
  it.each([[["--json"]], [[]]])(
    "snapshot create %j on a full disk: says the snapshot was saved, with its id, in one line; exits 1",
    async (json) => {
      const res = await dumont(["snapshot", "create", "--host", hostId, "--path", workspace, ...json], "full");
      expect(res.code).toBe(1);
      expect(res.err).toMatch(new RegExp(`^dumont: snapshot [0-9a-f]{64} was saved; ${literal(FULL)}\\n$`));
      const id = /snapshot ([0-9a-f]{64})/.exec(res.err)?.[1];
      expect(await listed()).toContain(id);
    },
  );

  it.each([[["snapshot", "list", "--json"]], [["snapshot", "list"]], [["host", "list"]], [["key", "list", "--json"]]])(
    "%j on a full disk: one line, no stack trace; exits 1",
    async (args) => {
      expect(await dumont(args, "full")).toEqual({ code: 1, out: "", err: `dumont: ${FULL}\n` });
    },
  );

  it("ends quietly, exit 0, when the reader has gone (`| head -1`), a create's snapshot saved", async () => {
    expect(await dumont(["host", "list"], "gone")).toEqual({ code: 0, out: "", err: "" });
    const before = await listed();
    const created = await dumont(["snapshot", "create", "--host", hostId, "--path", workspace, "--json"], "gone");
    expect(created).toEqual({ code: 0, out: "", err: "" });
    expect((await listed()).length).toBe(before.length + 1);
  });

  it("fails as before where the command fails first: its own error, not the output's", async () => {
    const res = await dumont(["snapshot", "ls", "abcd"], "full");
    expect(res).toMatchObject({ code: 1, out: "" });
    expect(res.err).toMatch(/^dumont: \[not_found\] [^\n]*\n$/);
  });
});

/** `text` as a regular expression matching it as written. */
function literal(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
