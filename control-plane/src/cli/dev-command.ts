// `dumont dev` (what `npm start` runs): a control plane on the embedded defaults plus one local agent
// enrolled through a real join token, as a child process. `--demo` gives that agent simulated GPUs.
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import type { ControlPlaneOptions } from "../config.js";
import { apiClients, DEFAULT_API_URL, DEFAULT_DATA_DIR } from "./api-client.js";
import { hostJson } from "./host-command.js";
import { addServeOptions, givenOptions, startFromOptions, waitForSignal } from "./serve-command.js";

/** Environment variables of the control plane's that the local agent does not get (localAgentEnvironment). */
const CONTROL_PLANE_SECRETS =
  /^(DATABASE_URL|PG.*|DUMONT_MASTER_KEY|DUMONT_REPO_KEY|DUMONT_API_KEY|DUMONT_S3_.*|AWS_.*)$/;

/**
 * The local agent's environment: this one's, but for the control plane's secrets, which are not the agent's nor
 * of what it starts (nvidia-smi, sync, jobs): its database URL and libpq variables (a password in them), blob store credentials, keys, an admin API key.
 * Logging at warn unless DUMONT_LOG_LEVEL says otherwise.
 */
export function localAgentEnvironment(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const kept = Object.fromEntries(Object.entries(env).filter(([name]) => !CONTROL_PLANE_SECRETS.test(name)));
  return { ...kept, DUMONT_LOG_LEVEL: env.DUMONT_LOG_LEVEL ?? "warn" };
}

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const agentBin = path.join(repoRoot, "host-agent/bin/dumont-agent.js");
const fakeNvidiaSmiDir = path.join(repoRoot, "tests/fakes/nvidia-smi");

/**
 * The banner's first command to try, as it works from this shell: with the API's URL and the data directory (for
 * its admin key) in front when they are not the ones the CLI assumes (`--http-port`, `--data-dir`).
 */
export function tryCommand(httpUrl: string, dataDir: string, cwd: string): string {
  const env: string[] = [];
  if (httpUrl !== DEFAULT_API_URL) env.push(`DUMONT_API_URL=${shellWord(httpUrl)}`);
  if (path.resolve(cwd, dataDir) !== path.resolve(cwd, DEFAULT_DATA_DIR))
    env.push(`DUMONT_DATA_DIR=${shellWord(dataDir)}`);
  return [...env, "npx dumont host list"].join(" ");
}

/**
 * The API's URL for the banner's command, one this machine reaches: the public one where that is localhost (the
 * default, which the CLI assumes) and it listens on loopback (`--host 127.0.0.5` is not what localhost reaches),
 * else the address it listens on (a --public-host this machine may not resolve, or not be reached by from
 * inside, as behind NAT).
 */
function tryUrl(cp: { httpUrl: string; localHttpUrl: string }): string {
  const loopback = ["127.0.0.1", "[::1]"].includes(new URL(cp.localHttpUrl).hostname);
  return loopback && new URL(cp.httpUrl).hostname === "localhost" ? cp.httpUrl : cp.localHttpUrl;
}

/** A word as a POSIX shell reads it back: quoted unless it is plainly safe. */
function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

export function registerDevCommand(program: Command): void {
  addServeOptions(program.command("dev").description("control plane + one local agent, for trying Dumont out"))
    .option("--demo", "give the local agent simulated GPUs (a fake nvidia-smi), clearly labelled simulated")
    .action(async (opts: ControlPlaneOptions & { demo?: boolean }, cmd: Command) => {
      const { cp, log } = await startFromOptions({ logLevel: "warn", ...givenOptions(cmd, opts) });
      // Loaded here, as startFromOptions loads the control plane: not on every other command's start.
      const [{ devAdminKey }, { ADMIN_TENANT }] = await Promise.all([
        import("../api/auth.js"),
        import("../control-plane.js"),
      ]);
      const { key: adminKey, replaced } = cp.newAdminKey
        ? { key: cp.newAdminKey }
        : await devAdminKey(cp.db, cp.adminKeyFile, ADMIN_TENANT);
      if (replaced) log.warn({ file: cp.adminKeyFile }, `made a new admin key for dumont dev: ${replaced}`);
      // This machine's own address, not the public host's: that is for agents and browsers elsewhere, and may be a
      // name this machine does not resolve (--public-host cp.example.invalid failed with ENOTFOUND).
      const clients = apiClients({ apiUrl: cp.localHttpUrl, apiKey: adminKey });
      const dataDir = path.dirname(cp.adminKeyFile);
      const agentDir = path.join(dataDir, "local-agent");

      const env = localAgentEnvironment(process.env);
      if (opts.demo) {
        env.PATH = `${fakeNvidiaSmiDir}${path.delimiter}${env.PATH ?? ""}`;
        env.DUMONT_FAKE_NVIDIA_SMI_FIXTURE = env.DUMONT_FAKE_NVIDIA_SMI_FIXTURE ?? "demo";
      }
      if (!fs.existsSync(path.join(agentDir, "enrollment.json"))) {
        const token = await clients.hosts.createJoinToken({ ttlSeconds: 600 });
        await runToCompletion(
          agentBin,
          [
            "enroll",
            "--server",
            cp.localGrpcUrl,
            "--token",
            token.token,
            "--ca-hash",
            token.caHash,
            "--data-dir",
            agentDir,
            "--name",
            opts.demo ? "local-demo" : "local",
          ],
          env,
        );
      }
      // --exit-with-stdin and a pipe this process holds: if it dies without stopping the agent (kill -9), the
      // agent stops too, rather than staying on with the data dir the next `dumont dev` needs.
      // --server: this start's gateway, whatever the agent enrolled with. A `dumont dev --grpc-port N` after one on
      // another port had the agent dial the old one, and dev wait 30 s and say only that it never came online.
      const agentArgs = [
        "run",
        "--data-dir",
        agentDir,
        "--server",
        cp.localGrpcUrl,
        "--exit-with-stdin",
        ...(opts.demo ? ["--simulated"] : []),
      ];
      const agentStarted = Date.now();
      const agent = spawn(process.execPath, [agentBin, ...agentArgs], { env, stdio: ["pipe", "inherit", "inherit"] });
      // Listened for at once: a child's exit is an event, missed by a listener added after it (killed by a signal,
      // exitCode stays null; waiting on "exit" then would wait for good, Ctrl-C and SIGTERM with it).
      const agentExited = new Promise<string>((resolve) =>
        agent.once("exit", (code, signal) => resolve(signal ? `killed by ${signal}` : `exit code ${code}`)),
      );

      const host = await waitForLocalHost(clients, agentDir, agent, agentStarted);
      process.stdout.write(
        [
          "",
          "Dumont is running.",
          `  API:        ${cp.httpUrl}  (Connect; e.g. curl -H 'Authorization: Bearer KEY' -H 'content-type: application/json' -d '{}' ${cp.httpUrl}/dumont.api.v1.HostService/ListHosts)`,
          `  Metrics:    ${cp.httpUrl}/metrics   Health: ${cp.httpUrl}/healthz`,
          `  Agents:     ${cp.grpcUrl}  (CA ${cp.caHash})`,
          `  Admin key:  ${adminKey}  (saved in ${cp.adminKeyFile}${replaced ? `; a new one: ${replaced}` : ""})`,
          `  Host online: ${host.name} (${host.id}) — ${host.gpus.length ? host.gpus.map((g) => g.model).join(", ") : "CPU only"}${host.simulated ? "  [simulated GPUs]" : ""}`,
          "",
          `Try: ${tryCommand(tryUrl(cp), dataDir, process.cwd())}    (Ctrl-C stops the control plane and the agent)`,
          "",
        ].join("\n"),
      );

      const stopWaiting = new AbortController();
      const agentGone = await Promise.race([waitForSignal(log, stopWaiting.signal).then(() => undefined), agentExited]);
      stopWaiting.abort(); // a Ctrl-C from here on ends the process, even while the control plane closes
      if (agentGone === undefined) {
        agent.kill("SIGTERM");
        await agentExited;
      } else {
        // Decided: the local agent is half of what `dev` runs; without it the command has failed, and says so
        // (exit 1) rather than serving on quietly or ending as if asked to.
        log.error({ agent: agentGone }, `the local agent stopped (${agentGone}); stopping the control plane`);
        process.exitCode = 1;
      }
      await cp.close();
    });
}

function runToCompletion(bin: string, args: string[], env: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env, stdio: ["ignore", "ignore", "inherit"] });
    child.once("error", reject);
    child.once("exit", (code) =>
      code === 0 ? resolve() : reject(new Error(`local agent enroll exited with ${code}`)),
    );
  });
}

/**
 * The local host once this agent has sent its first telemetry (a sample taken since `since`, ms): its GPUs come
 * with it. A host row left online by the last `dumont dev` on this data directory would otherwise pass at once,
 * with the last run's GPUs (a `dumont dev --demo` after a plain one showed "CPU only").
 */
async function waitForLocalHost(
  clients: ReturnType<typeof apiClients>,
  agentDir: string,
  agent: ChildProcess,
  since: number,
) {
  const { hostId } = JSON.parse(fs.readFileSync(path.join(agentDir, "enrollment.json"), "utf8")) as { hostId: string };
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    // (Killed by a signal, exitCode stays null: signalCode says.)
    if (agent.exitCode !== null || agent.signalCode !== null) {
      throw new Error(`the local agent exited with ${agent.signalCode ?? agent.exitCode}`);
    }
    // The samples first: a listing made after one arrived shows at least that sample's GPUs.
    const { points } = await clients.hosts.getHostMetrics({ hostId, sinceSeconds: 600 });
    if (points.some((p) => p.at && timestampDate(p.at).getTime() >= since)) {
      const host = (await clients.hosts.listHosts({})).hosts.find((h) => h.id === hostId);
      if (host?.status === "online" && host.cpu) return hostJson(host);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error("the local agent did not come online within 30 s; see its log above");
}
