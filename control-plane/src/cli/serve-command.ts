// `dumont serve`: the control plane. `dumont dev` builds on the same options.
import { setFlagsFromString } from "node:v8";
import { type Command, Option } from "commander";
import type { ControlPlaneOptions } from "../config.js";
import type { ControlPlane } from "../control-plane.js";
import { ConfigError } from "../errors.js";
import type { Logger } from "../logger.js";

/** --data-dir and --database-url: where a control plane's state is (serve, dev, master-key rotate). */
export function addStateOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option("--data-dir <dir>", "state: embedded database, CA, admin key (default ./.dumont)").env(
        "DUMONT_DATA_DIR",
      ),
    )
    .addOption(
      new Option("--database-url <url>", "postgres://… (default: embedded PGlite in the data dir)").env("DATABASE_URL"),
    );
}

export function addServeOptions(cmd: Command): Command {
  return addStateOptions(cmd)
    .addOption(
      new Option("--http-port <port>", "Connect API, /healthz, /metrics (default 8000)").env("DUMONT_HTTP_PORT"),
    )
    .addOption(new Option("--grpc-port <port>", "agent gateway, TLS (default 8443)").env("DUMONT_GRPC_PORT"))
    .addOption(new Option("--host <addr>", "address to listen on (default 0.0.0.0)").env("DUMONT_HOST"))
    .addOption(
      new Option("--public-host <name>", "host name agents and browsers use to reach us (default localhost)").env(
        "DUMONT_PUBLIC_HOST",
      ),
    )
    .addOption(
      new Option("--lost-after <seconds>", "a host silent this long is lost (default 10)").env("DUMONT_LOST_AFTER"),
    )
    .addOption(
      new Option("--telemetry-interval <seconds>", "telemetry interval suggested to agents (default 5)").env(
        "DUMONT_TELEMETRY_INTERVAL",
      ),
    )
    .addOption(
      new Option(
        "--blob-store <url>",
        "where snapshots go: file:///abs/path or s3://bucket/prefix (default file://<data-dir>/blobs)",
      ).env("DUMONT_BLOB_STORE"),
    )
    .addOption(
      new Option(
        "--snapshot-keep <rules>",
        "after each snapshot, forget the workspace's older ones but these: last=N,hourly=N,daily=N,weekly=N " +
          "(default: keep all)",
      ).env("DUMONT_SNAPSHOT_KEEP"),
    )
    .addOption(
      new Option("--prune-interval <seconds>", "prune every tenant's repository this often (default 0: never)").env(
        "DUMONT_PRUNE_INTERVAL",
      ),
    )
    .addOption(
      new Option(
        "--snapshot-quota <size>",
        "the most each tenant's repository may store, as 500GB or 512GiB (default: no quota)",
      ).env("DUMONT_SNAPSHOT_QUOTA"),
    )
    .addOption(
      new Option(
        "--api-rate-limit <per-second>",
        "API requests a second each key may make on average (default 20; 0: no limit)",
      ).env("DUMONT_API_RATE_LIMIT"),
    )
    .addOption(
      new Option("--api-burst <requests>", "API requests a key may make at once after being idle (default 100)").env(
        "DUMONT_API_BURST",
      ),
    )
    .addOption(
      new Option("--log-level <level>", "fatal|error|warn|info|debug|trace|silent (default info)").env(
        "DUMONT_LOG_LEVEL",
      ),
    );
}

export async function startFromOptions(opts: ControlPlaneOptions): Promise<{ cp: ControlPlane; log: Logger }> {
  // Let the heap grow to four times what survives a full collection before the next one (V8 otherwise picks
  // a factor from its own speed estimates). Receiving a snapshot churns through about 4 GiB of short-lived
  // Buffers per GiB (TLS and HTTP/2 frames, grpc-js messages, the arrival check's decryption), and V8 counts
  // that memory against the old generation's limit: it ran ~50 full collections per GiB received, about a
  // third of the control plane's CPU. At 2x: about 5, at the same peak RSS (the snapshot bench's stream runs,
  // /metrics). At 4x (the agent's factor too, see its `run`), a streamed restore cost the control plane
  // 1.1-1.4 CPU-s per GiB against 1.5-2.0 s at 2x; its CPU per snapshot did not move, and with 5,000 agent
  // sessions (telemetry bench) its RSS stayed at 1,110 MiB, CPU 33% against 38% of a core.
  setFlagsFromString("--heap-growing-percent=300");
  // Loaded here, not at the top: the whole control plane (database, gateway, stores) takes about half a
  // second to import, which every other `dumont` command (a plain API client) would pay for nothing.
  const [{ loadConfig }, { startControlPlane }, { createLogger }] = await Promise.all([
    import("../config.js"),
    import("../control-plane.js"),
    import("../logger.js"),
  ]);
  const config = loadConfig(opts);
  const log = createLogger(config.logLevel);
  await routeGrpcLogging(log);
  // Read once: the master key does not stay in the environment, where processes this one starts (the local
  // agent of `dumont dev`) would inherit it.
  delete process.env.DUMONT_MASTER_KEY;
  const cp = await startControlPlane(config, log);
  return { cp, log };
}

/**
 * grpc-js's own log lines (it writes "E No address added out of total 1 resolved" to stderr before failing a bind
 * whose error we report ourselves, in one line) go to our logger at debug, seen with --log-level debug. One who
 * asked grpc-js for its logging (GRPC_VERBOSITY, GRPC_TRACE) gets it as grpc-js writes it. Process-wide, hence
 * here and not in startControlPlane, which tests start several of in one process.
 */
async function routeGrpcLogging(log: Logger): Promise<void> {
  const env = process.env;
  if (env.GRPC_VERBOSITY || env.GRPC_NODE_VERBOSITY || env.GRPC_TRACE || env.GRPC_NODE_TRACE) return;
  const grpc = await import("@grpc/grpc-js");
  grpc.setLogger({
    error: (...args: unknown[]) => {
      const text = args.map(String).join(" ");
      // Only the bind failure we say ourselves is quietened; anything else grpc-js reports is an error here too.
      if (/No address added out of total/.test(text)) log.debug({ grpc: text }, "grpc-js");
      else log.error({ grpc: text }, "grpc-js");
    },
  });
}

/**
 * The command's options as loadConfig takes them. commander hands an empty variable (`DUMONT_HTTP_PORT=` in a
 * compose file) over as the flag's value: that one is unset, as documented. An empty flag on the command line
 * (`--http-port=`, `--data-dir ''`: a variable that expanded to nothing) is refused, naming it, rather than quietly
 * taken for the default: for --data-dir that is another directory's state than the one meant.
 */
export function givenOptions<T extends object>(cmd: Command, opts: T): T {
  const given = { ...opts } as Record<string, unknown>;
  for (const option of cmd.options) {
    const key = option.attributeName();
    const value = given[key];
    if (typeof value !== "string" || value.trim() !== "") continue;
    if (cmd.getOptionValueSource(key) === "cli") {
      const env = option.envVar ? ` (${option.envVar})` : "";
      throw new ConfigError(
        `invalid configuration: ${option.long}${env} was given empty: give ${option.flags}, or leave the flag out for its default`,
      );
    }
    delete given[key];
  }
  return given as T;
}

export function registerServeCommand(program: Command): void {
  addServeOptions(program.command("serve").description("run the control plane")).action(
    async (opts: ControlPlaneOptions, cmd: Command) => {
      const { cp, log } = await startFromOptions(givenOptions(cmd, opts));
      if (cp.newAdminKey) {
        process.stdout.write(
          `\nAdmin API key (shown once; also saved with mode 0600 to ${cp.adminKeyFile}):\n  ${cp.newAdminKey}\n\n`,
        );
      }
      process.stdout.write(`Dumont control plane: API ${cp.httpUrl}  agents ${cp.grpcUrl}  CA ${cp.caHash}\n`);
      await waitForSignal(log);
      await cp.close();
    },
  );
}

/**
 * Resolves on the first SIGINT or SIGTERM, or when `cancel` aborts (`dumont dev` whose agent stopped). Its
 * listeners go either way: a second Ctrl-C while the control plane closes (or after `dev` stopped waiting) then
 * ends the process at once, as the default action does, rather than being swallowed by a listener nobody awaits.
 * A signal within ECHO_MS of the first is taken for the same Ctrl-C, not a second one: `npm start` forwards the
 * terminal's SIGINT to this process, which had it from the terminal already, and the close would be skipped.
 */
export function waitForSignal(log: Logger, cancel?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      process.off("SIGINT", onInterrupt);
      process.off("SIGTERM", onTerminate);
      cancel?.removeEventListener("abort", onCancel);
      resolve();
    };
    const stop = (signal: string) => {
      log.info({ signal }, "shutting down (a second Ctrl-C stops at once)");
      const echo = () => {};
      process.on("SIGINT", echo);
      process.on("SIGTERM", echo);
      setTimeout(() => {
        process.off("SIGINT", echo);
        process.off("SIGTERM", echo);
      }, ECHO_MS).unref();
      done();
    };
    const onInterrupt = () => stop("SIGINT");
    const onTerminate = () => stop("SIGTERM");
    const onCancel = () => done();
    process.on("SIGINT", onInterrupt);
    process.on("SIGTERM", onTerminate);
    cancel?.addEventListener("abort", onCancel);
    if (cancel?.aborted) done();
  });
}

/** How long after the first signal another is taken for the same one (see waitForSignal). */
export const ECHO_MS = 1000;
