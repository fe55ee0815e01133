// `dumont serve`'s settings as a user gives them, through the built CLI as a process: an empty variable is unset
// (the default applies), an empty flag is refused naming it, a data dir that is a file is said to be one, and a
// gRPC port already taken fails in our one line, without grpc-js's own log line before it.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it, onTestFinished } from "vitest";

const bin = fileURLToPath(new URL("../../bin/dumont.cjs", import.meta.url));
// Not this machine's database, key or log settings: each test says what it gives.
const { DATABASE_URL: _db, DUMONT_MASTER_KEY: _key, DUMONT_LOG_LEVEL: _level, ...inherited } = process.env;

async function scratchDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "dumont-serve-settings-"));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** `dumont ARGS` run to its end (a refused setting ends it at once), in `cwd`. */
async function dumont(args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string) {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [bin, ...args], {
      env: { ...inherited, ...env },
      cwd,
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const { code, stdout, stderr } = err as { code: number; stdout: string; stderr: string };
    return { code, stdout, stderr };
  }
}

/** Stops `proc` with SIGTERM and waits for it to end. */
async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  proc.kill("SIGTERM");
  await exited;
}

describe("dumont serve: settings", () => {
  it("refuses an empty flag naming it and its variable, and takes an empty variable as unset", async () => {
    const cwd = await scratchDir();
    for (const args of [["--http-port="], ["--data-dir", ""], ["--lost-after", " "], ["--public-host="]]) {
      const flag = args[0].replace(/=$/, "");
      // --log-level loud: taken for unset, the empty flag would not start a control plane (in cwd) but be refused
      // for that, after it.
      const res = await dumont(["serve", ...args, "--log-level", "loud"], {}, cwd);
      expect(res.code, args.join(" ")).toBe(1);
      expect(await readdir(cwd)).toEqual([]);
      expect(res.stderr).toMatch(
        new RegExp(
          `^dumont: invalid configuration: ${flag} \\(DUMONT_[A-Z_]+\\) was given empty: give ${flag} <\\w+>, or leave the flag out for its default\\n$`,
        ),
      );
    }
    // An empty DUMONT_HTTP_PORT is its default, 8000: which --grpc-port 8000 then collides with.
    const res = await dumont(["serve", "--grpc-port", "8000"], { DUMONT_HTTP_PORT: "" });
    expect(res).toMatchObject({ code: 1, stdout: "" });
    expect(res.stderr).toMatch(/^dumont: invalid configuration: .* both name port 8000: give each its own port\n$/);
  }, 60_000);

  it("keeps its state in ./.dumont when DUMONT_DATA_DIR is set empty, not in the working directory", async () => {
    const cwd = await scratchDir();
    const serve = spawn(
      process.execPath,
      [bin, "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--log-level", "warn"],
      { cwd, env: { ...inherited, DUMONT_DATA_DIR: "" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    onTestFinished(() => stop(serve));
    let out = "";
    serve.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    serve.stderr.on("data", (d: Buffer) => {
      out += d.toString();
    });
    await new Promise<void>((resolve, reject) => {
      serve.stdout.on("data", () => /Dumont control plane: /.test(out) && resolve());
      serve.once("exit", (code) => reject(new Error(`dumont serve exited with ${code}:\n${out}`)));
    });
    await stop(serve);
    expect(await readdir(cwd)).toEqual([".dumont"]);
    expect(await readdir(path.join(cwd, ".dumont"))).toEqual(
      expect.arrayContaining(["admin-api-key", "master.key", "pki", "pglite"]),
    );
  }, 60_000);

  it("says a data dir that is a file is not a directory, naming the flag", async () => {
    const dir = await scratchDir();
    const file = path.join(dir, "afile");
    await writeFile(file, "");
    const res = await dumont(["serve", "--data-dir", file, "--http-port", "0", "--grpc-port", "0"]);
    expect(res).toEqual({
      code: 1,
      stdout: "",
      stderr: `dumont: invalid configuration: --data-dir (DUMONT_DATA_DIR) "${file}" is not a directory (a file is there): give a directory, which is made if missing\n`,
    });
    const below = await dumont(["serve", "--http-port", "0", "--grpc-port", "0"], {
      DUMONT_DATA_DIR: path.join(file, "state"),
    });
    expect(below.stderr).toMatch(
      /--data-dir \(DUMONT_DATA_DIR\) ".*afile\/state" is not a directory \(a file is in its path\)/,
    );
  }, 60_000);

  it("fails on a gRPC port already taken in one line, without grpc-js's own log line before it", async () => {
    const dir = await scratchDir();
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    onTestFinished(() => new Promise<void>((resolve) => taken.close(() => resolve())));
    const { port } = taken.address() as AddressInfo;
    const res = await dumont([
      "serve",
      "--data-dir",
      dir,
      "--host",
      "127.0.0.1",
      "--http-port",
      "0",
      "--grpc-port",
      String(port),
    ]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(new RegExp(`^dumont: cannot listen on gRPC port ${port}: .*EADDRINUSE.*\\n$`));
  }, 60_000);
});
