// `dumont-agent`: enroll this machine, run the session, and operate snapshots directly.
import { setFlagsFromString } from "node:v8";
import { oneLineErrors } from "@dumont/repository/cli-flags";
import { flushStdout, watchStdout } from "@dumont/repository/cli-output";
import { Command, Option } from "commander";
import { AGENT_VERSION } from "../version.js";

/** `run` and `renew`: the gateway to dial instead of the enrolled one (see AgentRunOptions.server). */
const serverOption = (): Option =>
  new Option(
    "--server <url>",
    "dial this agent gateway (https://HOST:PORT) instead of the one enrolled with, e.g. after the control plane moved",
  ).env("DUMONT_SERVER");

/** Where the agent keeps its identity and state unless told otherwise. */
const DEFAULT_DATA_DIR = "/var/lib/dumont-agent";

/**
 * A command's --data-dir: an empty DUMONT_AGENT_DATA_DIR (an empty `Environment=` line) counts as unset, and an
 * empty flag (a shell variable that expanded to nothing) is refused. Either was the working directory: `enroll`
 * wrote the host's private key wherever it ran (`/` for a service, a git checkout).
 */
function dataDirOf(cmd: Command): string {
  const value = cmd.getOptionValue("dataDir") as string | undefined;
  if (value !== undefined && value.trim() !== "") return value;
  if (value !== undefined && cmd.getOptionValueSource("dataDir") === "cli") {
    throw new Error(
      `--data-dir was given empty: give the agent's data dir, or leave the flag out for ${DEFAULT_DATA_DIR}`,
    );
  }
  return DEFAULT_DATA_DIR;
}

export async function main(argv: string[]): Promise<void> {
  watchStdout();
  const program = new Command("dumont-agent")
    .description("Dumont host agent: puts this machine's GPUs on the Dumont cloud")
    .version(AGENT_VERSION)
    .configureOutput(oneLineErrors("dumont-agent"));

  program
    .command("enroll")
    .description("enroll this machine with a control plane using a one-time join token")
    .requiredOption("--server <url>", "the control plane's gRPC address, e.g. https://cp.example.com:8443")
    .requiredOption("--token <token>", "one-time join token from `dumont host join-token create`")
    .requiredOption("--ca-hash <sha256:hex>", "the control plane CA's hash, from the install command")
    .addOption(
      new Option("--data-dir <dir>", "where the agent keeps its identity and state")
        .env("DUMONT_AGENT_DATA_DIR")
        .default(DEFAULT_DATA_DIR),
    )
    .option("--name <name>", "a name for this host (default: its hostname)")
    .option("--force", "enroll again even if this data dir is already enrolled")
    .option("--json", 'print {"hostId"} as JSON')
    .action(async (opts, cmd: Command) => {
      // Loaded on demand: the long-running `run` never needs enrollment crypto (@peculiar/x509).
      const { enroll } = await import("../session/enroll.js");
      const { hostId } = await enroll({
        server: opts.server,
        token: opts.token,
        caHash: opts.caHash,
        dataDir: dataDirOf(cmd),
        name: opts.name,
        force: opts.force,
      });
      process.stdout.write(opts.json ? `${JSON.stringify({ hostId })}\n` : `${hostId}\n`);
    });

  program
    .command("renew")
    .description(
      "renew this host's client certificate now (`run` does it by itself once a third of its validity is left)",
    )
    .addOption(
      new Option("--data-dir <dir>", "the enrolled data dir").env("DUMONT_AGENT_DATA_DIR").default(DEFAULT_DATA_DIR),
    )
    .addOption(serverOption())
    .option("--json", 'print {"hostId","expiresAt"} as JSON')
    .action(async (opts, cmd: Command) => {
      const [{ loadIdentity }, { certificateExpiry, renewCertificate }, { serverOptionProblem }] = await Promise.all([
        import("../session/identity.js"),
        import("../session/certificate-renewal.js"),
        import("../config.js"),
      ]);
      const server: string | undefined = opts.server || undefined; // DUMONT_SERVER= (empty): the enrolled one
      const problem = server === undefined ? undefined : serverOptionProblem(server);
      if (problem) throw new Error(problem);
      const dataDir = dataDirOf(cmd);
      const renewed = await renewCertificate(dataDir, await loadIdentity(dataDir, server));
      const result = { hostId: renewed.hostId, expiresAt: certificateExpiry(renewed.certPem).toISOString() };
      process.stdout.write(
        opts.json
          ? `${JSON.stringify(result)}\n`
          : `${result.hostId}: certificate renewed, valid until ${result.expiresAt}; a running agent uses it from its next connection\n`,
      );
    });

  program
    .command("run")
    .description("connect to the control plane and serve it until stopped")
    .addOption(
      new Option("--data-dir <dir>", "the enrolled data dir (default /var/lib/dumont-agent)").env(
        "DUMONT_AGENT_DATA_DIR",
      ),
    )
    .addOption(
      new Option(
        "--telemetry-interval <seconds>",
        "seconds between telemetry samples (default: what the control plane suggests, else 5)",
      ).env("DUMONT_TELEMETRY_INTERVAL"),
    )
    .addOption(new Option("--log-level <level>", "fatal|error|warn|info|debug|trace|silent").env("DUMONT_LOG_LEVEL"))
    .addOption(serverOption())
    .option("--simulated", "label this host's GPUs as simulated (dev --demo)")
    .addOption(
      // For a parent that starts the agent as its child (`dumont dev`): it holds the write end of the agent's
      // stdin, and when it ends, however it ends (kill -9 too), the kernel closes it and the agent stops with it
      // instead of living on, an orphan holding the data dir the parent's next start needs.
      new Option("--exit-with-stdin", "stop when standard input closes (for a parent process)").hideHelp(),
    )
    .action(async (opts, cmd: Command) => {
      // Let the heap grow to four times what survives a full collection before the next one. V8 counts the
      // Buffers a streamed restore receives (TLS records, gRPC messages, up to 64 MiB of chunks waiting for the
      // engine) against the old generation's limit, and at its default factor that started a full collection
      // for every ~25 MB received: 40-49 per GiB, about a fifth of the agent's CPU. At 4x: 12-14 per GiB, and
      // the agent's CPU per streamed GiB restored 3.1-4.4 s against 4.0-5.0 s (agent and control plane pinned to
      // a core each), its peak RSS in the snapshot bench 385-402 MiB against 384. The control plane sets the same.
      setFlagsFromString("--heap-growing-percent=300");
      // Loaded on demand, like every command's code: zod and pino alone cost the snapshot commands ~100 ms.
      const [{ loadAgentConfig }, { createLogger }] = await Promise.all([
        import("../config.js"),
        import("../logger.js"),
      ]);
      const config = loadAgentConfig({
        dataDir: dataDirOf(cmd),
        telemetryInterval: opts.telemetryInterval || undefined, // DUMONT_TELEMETRY_INTERVAL= (empty): not given
        logLevel: opts.logLevel,
        simulated: opts.simulated,
        server: opts.server || undefined, // DUMONT_SERVER= (empty): the enrolled one
      });
      const log = createLogger(config.logLevel);
      const { startAgent } = await import("../agent.js");
      const agent = await startAgent(config, log);
      await new Promise<void>((resolve) => {
        let stopping = false;
        const shutdown = (signal: string) => {
          if (stopping) return;
          stopping = true;
          log.info({ signal }, "stopping");
          agent.stop().finally(() => {
            if (opts.exitWithStdin) process.stdin.destroy(); // it would keep the process alive
            resolve();
          });
        };
        process.once("SIGINT", () => shutdown("SIGINT"));
        process.once("SIGTERM", () => shutdown("SIGTERM"));
        if (opts.exitWithStdin) {
          process.stdin.once("close", () => shutdown("stdin closed"));
          process.stdin.resume(); // read (and drop) whatever comes, to see its end
        }
      });
    });

  // The snapshot engine and repository code are loaded only by commands that use them, which keeps the
  // resident agent (`run`) small.
  if (!["run", "enroll", "renew"].includes(argv[2] ?? "")) {
    const { registerSnapshotCommands } = await import("./snapshot-command.js");
    registerSnapshotCommands(program);
  }
  await program.parseAsync(argv);
  // A command's output that did not reach stdout (a full disk) fails it, rather than exiting 0 with it lost.
  await flushStdout();
}
