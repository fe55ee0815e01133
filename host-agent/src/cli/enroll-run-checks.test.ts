// What `dumont-agent enroll`, `run` and `renew` (the built CLI, as processes) refuse before they reach the
// control plane: a --data-dir they cannot write (enroll would spend the join token and leave a host behind), one
// that other users could slip an identity into, and a --server that is not the agent gateway's https:// URL.
// The "control plane" is a TCP listener that counts who connects: each refusal here must leave it untouched.
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type CliOutcome, outcome } from "@dumont/repository/testing/cli-process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { agentPaths } from "../platform/paths.js";
import { selfSignedPair } from "../session/testing.js";

const bin = fileURLToPath(new URL("../../bin/dumont-agent.js", import.meta.url));
const CA_HASH = `sha256:${"ab".repeat(32)}`;

let root: string;
let listener: net.Server;
let connections = 0;
let server: string;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-enroll-run-checks-"));
  listener = net.createServer((socket) => {
    connections++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  server = `https://127.0.0.1:${(listener.address() as net.AddressInfo).port}`;
});
afterAll(async () => {
  listener.close();
  await fs.rm(root, { recursive: true, force: true });
});

/** Runs the agent (as `asUser`, when given, through setpriv), with the listener's count of connections it made. */
async function agent(args: string[], asUser?: number): Promise<CliOutcome & { connected: number }> {
  const before = connections;
  const env = { ...process.env, DUMONT_SERVER: "", DUMONT_AGENT_DATA_DIR: "", DUMONT_TELEMETRY_INTERVAL: "" };
  const command =
    asUser === undefined
      ? [process.execPath, bin, ...args]
      : [
          "/usr/bin/setpriv",
          `--reuid=${asUser}`,
          `--regid=${asUser}`,
          "--clear-groups",
          process.execPath,
          bin,
          ...args,
        ];
  const child = spawn(command[0] as string, command.slice(1), { env, stdio: ["ignore", "pipe", "pipe"] });
  const result = await outcome(child);
  return { ...result, connected: connections - before };
}

const enroll = (dataDir: string, extra: string[] = [], target = server) => [
  "enroll",
  "--server",
  target,
  "--token",
  "djt_test",
  "--ca-hash",
  CA_HASH,
  "--data-dir",
  dataDir,
  ...extra,
];

/** A data dir with an identity as enroll leaves it (its certificates self-signed: nothing here connects). */
async function enrolledDataDir(name: string): Promise<string> {
  const dir = path.join(root, name);
  const paths = agentPaths(dir);
  await fs.mkdir(paths.identityDir, { recursive: true, mode: 0o700 });
  const pair = await selfSignedPair();
  await fs.writeFile(paths.privateKey, pair.keyPem, { mode: 0o600 });
  // Modes given, not the umask's (002 on many desktops, which the agent would rightly refuse).
  await fs.writeFile(paths.certificate, pair.certPem, { mode: 0o644 });
  await fs.writeFile(paths.caCertificate, pair.certPem, { mode: 0o644 });
  await fs.writeFile(paths.enrollment, JSON.stringify({ hostId: "h-1", server }), { mode: 0o644 });
  return dir;
}

describe("enroll checks its --data-dir before it reaches the control plane", () => {
  it("refuses one under a file, naming --data-dir, and keeps the join token", async () => {
    const file = path.join(root, "afile");
    await fs.writeFile(file, "");
    const res = await agent(enroll(path.join(file, "sub")));
    expect(res).toEqual({
      code: 1,
      out: "",
      err:
        `dumont-agent: --data-dir ${path.join(file, "sub")} cannot be made and written (it, or a directory in its ` +
        "path, is a file): pass a --data-dir this user may create and write; the join token was not used\n",
      connected: 0,
    });
  });

  it.skipIf(process.getuid?.() !== 0 || !existsSync("/usr/bin/setpriv"))(
    "refuses one its user may not write (as nobody, in a directory of root's)",
    async () => {
      const parent = path.join(root, "roots");
      await fs.mkdir(parent, { mode: 0o755 });
      await fs.chmod(root, 0o755);
      const res = await agent(enroll(path.join(parent, "agent")), 65534);
      expect(res.err).toBe(
        `dumont-agent: --data-dir ${path.join(parent, "agent")} cannot be made and written (the user the agent runs ` +
          "as (uid 65534) may not write there): pass a --data-dir this user may create and write; the join token " +
          "was not used\n",
      );
      expect(res.connected).toBe(0);
    },
  );

  it("with --force, refuses an enrolled data dir that other users may write", async () => {
    const dir = await enrolledDataDir("open-enroll");
    await fs.chmod(dir, 0o777);
    const res = await agent(enroll(dir, ["--force"]));
    expect(res.err).toBe(
      `dumont-agent: ${dir}, the agent's data dir, may be written by other users (mode 0777): they could put ` +
        `another host's identity in place of this one's. Run \`chmod go-w ${dir}\` and try again\n`,
    );
    expect(res.connected).toBe(0);
  });
});

describe("run and renew refuse a data dir other users could slip an identity into", () => {
  it.each([["run"], ["renew"]])("%s: identity/ of mode 0777", async (command) => {
    const dir = await enrolledDataDir(`open-${command}`);
    const identity = agentPaths(dir).identityDir;
    await fs.chmod(identity, 0o777);
    const res = await agent([command, "--data-dir", dir]);
    expect(res.code).toBe(1);
    expect(res.err).toBe(
      `dumont-agent: ${identity}, which holds the agent's key and certificates, may be written by other users ` +
        `(mode 0777): they could put another host's identity in place of this one's. Run \`chmod go-w ${identity}\` ` +
        "and try again\n",
    );
    expect(res.connected).toBe(0);
  });

  it.skipIf(process.getuid?.() !== 0 || !existsSync("/usr/bin/setpriv"))(
    "run: says a data dir its user may not read as that, naming the uid (as nobody, root's data dir of mode 0700)",
    async () => {
      const dir = await enrolledDataDir("roots-only");
      await fs.chmod(root, 0o755);
      await fs.chmod(dir, 0o700);
      const res = await agent(["run", "--data-dir", dir], 65534);
      expect(res.code).toBe(1);
      expect(res.err).toMatch(
        new RegExp(
          `^dumont-agent: --data-dir \\(DUMONT_AGENT_DATA_DIR\\) ${dir} cannot be read by the user the agent runs as ` +
            "\\(uid 65534\\): \\S+ gave EACCES; run the agent as the data dir's owner \\(root for the service\\), or pass a " +
            "data dir this user owns\n$",
        ),
      );
      expect(res.connected).toBe(0);
    },
  );

  it("takes an empty DUMONT_AGENT_DATA_DIR for unset, and refuses an empty --data-dir (both were the working directory)", async () => {
    // agent() runs with DUMONT_AGENT_DATA_DIR="": the default's data dir, not this process's working directory.
    const unset = await agent(["run"]);
    expect(unset.code).toBe(1);
    expect(unset.err).toContain("/var/lib/dumont-agent/enrollment.json");
    expect(unset.err).not.toContain(`${process.cwd()}/enrollment.json`);
    for (const args of [["run", "--data-dir", ""], enroll("")]) {
      expect(await agent(args), args[0]).toEqual({
        code: 1,
        out: "",
        err: "dumont-agent: --data-dir was given empty: give the agent's data dir, or leave the flag out for /var/lib/dumont-agent\n",
        connected: 0,
      });
    }
    expect(existsSync(path.join(process.cwd(), "identity"))).toBe(false);
  });

  it("run: says a --data-dir that is a file is not a directory", async () => {
    const file = path.join(root, "run-on-a-file");
    await fs.writeFile(file, "");
    const res = await agent(["run", "--data-dir", file]);
    expect(res.err).toBe(
      `dumont-agent: --data-dir (DUMONT_AGENT_DATA_DIR) ${file} is not a directory: pass the data dir this host ` +
        "was enrolled into\n",
    );
  });
});

describe("--server must be the agent gateway's https:// URL", () => {
  const shape = "; it must look like https://HOST:8443 (the agent gateway; `dumont host join-token create` prints it)";

  it.each([
    ["localhost:18101", "has no https:// in front"],
    ["https://localhost:18101/foo?x=1", "has a path, query or fragment, which the agent gateway does not take"],
    [
      "https://user:pw@localhost:18101",
      "carries a user name or password, which the agent gateway does not take (and enrollment would store)",
    ],
  ])("enroll refuses %s before it connects", async (value, problem) => {
    const res = await agent(enroll(path.join(root, "never-made"), [], value));
    const shown = JSON.stringify(value.replace("user:pw@", "***@"));
    expect(res).toEqual({
      code: 1,
      out: "",
      err: `dumont-agent: --server ${problem}: got ${shown}${shape}\n`,
      connected: 0,
    });
    expect(existsSync(path.join(root, "never-made"))).toBe(false);
  });

  it("run and renew refuse one that would be retried forever, naming the flag and its variable", async () => {
    const dir = await enrolledDataDir("server-checks");
    for (const command of ["run", "renew"]) {
      const res = await agent([command, "--data-dir", dir, "--server", "zzz"]);
      expect(res.code).toBe(1);
      expect(res.err).toBe(
        `dumont-agent: ${command === "run" ? "invalid configuration: " : ""}--server (DUMONT_SERVER) has no ` +
          `https:// in front: got "zzz"${shape}\n`,
      );
    }
    const viaEnv = spawnSync(process.execPath, [bin, "run", "--data-dir", dir], {
      env: { ...process.env, DUMONT_SERVER: "https://cp:8443/api" },
      encoding: "utf8",
    });
    expect(viaEnv.stderr).toBe(
      `dumont-agent: invalid configuration: --server (DUMONT_SERVER) has a path, query or fragment, which the ` +
        `agent gateway does not take: got "https://cp:8443/api"${shape}\n`,
    );
  });
});
