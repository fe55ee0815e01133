// `dumont-agent snapshot …` (the built CLI, as a process) when its output cannot be written: stdout on a full disk
// fails the command with one line and exit 1, naming the snapshot a create saved all the same; a reader that went
// away (`| head -1`) ends it quietly with exit 0. And the error line escapes the control characters it quotes.
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type CliOutcome, outcome, runCli } from "@dumont/repository/testing/cli-process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const bin = fileURLToPath(new URL("../../bin/dumont-agent.js", import.meta.url));
const FULL = "cannot write the output to stdout: ENOSPC (no space left on device)";

let root: string;
let repo: string;
let source: string;
let env: NodeJS.ProcessEnv;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-output-failure-"));
  repo = pathToFileURL(join(root, "repo")).href;
  source = join(root, "src");
  await mkdir(source);
  await writeFile(join(source, "f"), "hi\n");
  env = { ...process.env, DUMONT_REPO_KEY: randomBytes(32).toString("hex"), DUMONT_STATE_DIR: join(root, "state") };
  // The repository made beforehand: each create below says nothing but its outcome on stderr.
  expect((await agent(["snapshot", "create", "--repo", repo, "--source", source], "pipe")).code).toBe(0);
});
afterAll(() => rm(root, { recursive: true, force: true }));

/** Runs the agent with stdout on /dev/full, on a file it may only read, on a gone reader, or on a pipe. */
function agent(args: string[], stdout: "full" | "read-only" | "gone" | "pipe"): Promise<CliOutcome> {
  return runCli(bin, args, env, stdout === "read-only" ? { readOnly: join(source, "f") } : stdout);
}

const listed = async (): Promise<string[]> => {
  const list = await agent(["snapshot", "list", "--repo", repo, "--json"], "pipe");
  expect(list.code).toBe(0);
  return (JSON.parse(list.out) as { id: string }[]).map((s) => s.id);
};

describe.runIf(existsSync("/dev/full"))("dumont-agent snapshot: stdout that cannot be written", () => {
  it.each([[["--json"]], [[]]])(
    "create %j on a full disk: says the snapshot was saved, with its id, in one line; exits 1",
    async (json) => {
      const res = await agent(["snapshot", "create", "--repo", repo, "--source", source, ...json], "full");
      expect(res.code).toBe(1);
      expect(res.err).toMatch(new RegExp(`^dumont-agent: snapshot [0-9a-f]{64} was saved; ${literal(FULL)}\\n$`));
      const id = /snapshot ([0-9a-f]{64})/.exec(res.err)?.[1];
      expect(await listed()).toContain(id);
    },
  );

  it.each([[["--json"]], [[]]])("list %j on a full disk: one line, no stack trace; exits 1", async (json) => {
    const res = await agent(["snapshot", "list", "--repo", repo, ...json], "full");
    expect(res).toEqual({ code: 1, out: "", err: `dumont-agent: ${FULL}\n` });
  });

  it("list on a stdout it may not write (opened for reading): one line; exits 1", async () => {
    const res = await agent(["snapshot", "list", "--repo", repo], "read-only");
    expect(res).toEqual({
      code: 1,
      out: "",
      err: "dumont-agent: cannot write the output to stdout: EBADF (bad file descriptor)\n",
    });
  });

  it("ends quietly, exit 0, when the reader has gone (`| head -1`), a create's snapshot saved", async () => {
    expect(await agent(["snapshot", "list", "--repo", repo], "gone")).toEqual({ code: 0, out: "", err: "" });
    const before = await listed();
    const created = await agent(["snapshot", "create", "--repo", repo, "--source", source, "--json"], "gone");
    expect(created).toEqual({ code: 0, out: "", err: "" });
    expect((await listed()).length).toBe(before.length + 1);
  });
});

// A disk that fills part way through a write takes part of it: Node took that short count for done, and the output
// was cut short with exit 0. A small tmpfs of its own, mounted in a user and mount namespace, fills up here.
const namespaces = spawnSync("unshare", ["--user", "--map-root-user", "--mount", "true"]).status === 0;
describe.runIf(namespaces)("dumont-agent snapshot: stdout on a disk that fills up", () => {
  it("fails with one line and exit 1 when the disk takes only part of the output", async () => {
    const many = join(root, "many");
    await mkdir(many);
    for (let i = 0; i < 200; i++) await writeFile(join(many, `file-${i}`), `${i}\n`);
    const manyRepo = pathToFileURL(join(root, "many-repo")).href;
    const created = await agent(["snapshot", "create", "--repo", manyRepo, "--source", many, "--json"], "pipe");
    const { id } = JSON.parse(created.out) as { id: string };
    // 60 KiB of 64 filled: the listing (some 20 KiB, written at once) gets one page, then ENOSPC.
    const disk = join(root, "disk");
    await mkdir(disk);
    const script =
      'mount -t tmpfs -o size=64k tmpfs "$0" && head -c 61440 /dev/zero > "$0/fill" && exec "$@" > "$0/out"';
    const ls = ["snapshot", "ls", "--repo", manyRepo, "--id", id, "--json"];
    const child = spawn(
      "unshare",
      ["--user", "--map-root-user", "--mount", "sh", "-c", script, disk, process.execPath, bin, ...ls],
      { env, stdio: ["ignore", "pipe", "pipe"] },
    );
    expect(await outcome(child)).toEqual({ code: 1, out: "", err: `dumont-agent: ${FULL}\n` });
  });
});

describe("dumont-agent's error line", () => {
  it("escapes the control characters of what it quotes: a terminal would act on an escape sequence", async () => {
    const odd = join(root, "missing\x1b[2J\x07");
    const res = await agent(["snapshot", "create", "--repo", repo, "--source", odd], "pipe");
    expect(res.code).toBe(1);
    expect(res.err).toContain(`${join(root, "missing")}\\u001b[2J\\u0007`);
    for (const c of ["\x1b", "\x07"]) expect(res.err).not.toContain(c);
  });
});

/** `text` as a regular expression matching it as written. */
function literal(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
