// `npm run bench [-- NAME...] [--flags]`: runs the named benchmarks (all available ones when none is
// named) and prints one JSON document on stdout. Progress goes to stderr, so stdout can be piped to jq.
//
//   telemetry   --sessions 1000,5000 --duration 60 --warmup 15 --workers 2 --connect-rate 250
//   agent-idle  --duration 60 --warmup 10
//   snapshot    --size-mib 1024 --runs 3 --keep --skip-stream --skip-restic --stream-delay-ms MS (tests/bench/README.md)
//   lz4         --runs 5 --chunks 64
//   many-files  --files 300000 --keep --skip-stream --skip-restic
//   concurrent-transfers  --rounds 12 --stall-seconds 20 --size-mib 64 (not in the default set: a soak)
//
// Every benchmark runs against the embedded PGlite, or against Postgres when DATABASE_URL is set (one
// fresh database per control plane).
import os from "node:os";
import { parseArgs } from "node:util";
import { AGENT_IDLE_DEFAULTS, runAgentIdleBench } from "./agent-idle.js";
import { CONCURRENT_TRANSFERS_DEFAULTS, runConcurrentTransfersBench } from "./concurrent-transfers.js";
import { runLz4Bench } from "./lz4.js";
import { runManyFilesBench } from "./many-files.js";
import type { BenchOptions } from "./support/bench-options.js";
import { runTelemetryBench, TELEMETRY_DEFAULTS } from "./telemetry.js";

const BENCHES = ["telemetry", "agent-idle", "snapshot", "lz4", "many-files", "concurrent-transfers"] as const;
/** Run only when named. */
const NAMED_ONLY: readonly BenchName[] = ["concurrent-transfers"];
type BenchName = (typeof BENCHES)[number];

function parseFlags(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    // Unknown flags are passed through; the snapshot bench's are declared so their values are not read as
    // benchmark names.
    strict: false,
    options: {
      "size-mib": { type: "string" },
      keep: { type: "boolean" },
      "skip-stream": { type: "boolean" },
      "skip-restic": { type: "boolean" },
      "stream-delay-ms": { type: "string" },
      runs: { type: "string" },
      sessions: { type: "string" },
      duration: { type: "string" },
      warmup: { type: "string" },
      workers: { type: "string" },
      "connect-rate": { type: "string" },
      "telemetry-interval": { type: "string" },
      gpus: { type: "string" },
      fixture: { type: "string" },
      chunks: { type: "string" },
      files: { type: "string" },
      rounds: { type: "string" },
      "stall-seconds": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
}

function positiveNumber(flag: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (typeof value !== "string" || !Number.isFinite(n) || n <= 0) {
    throw new Error(`--${flag} must be a positive number, got ${JSON.stringify(value)}`);
  }
  return n;
}

function sessionList(value: unknown): number[] {
  if (value === undefined) return TELEMETRY_DEFAULTS.sessions;
  const list = String(value)
    .split(",")
    .map((s) => Number(s.trim()));
  if (list.length === 0 || list.some((n) => !Number.isInteger(n) || n <= 0)) {
    throw new Error(
      `--sessions must be a comma-separated list of whole numbers like 1000,5000, got ${JSON.stringify(value)}`,
    );
  }
  return list;
}

const progress = (line: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

async function runBench(name: BenchName, options: BenchOptions): Promise<unknown> {
  const f = options.flags;
  switch (name) {
    case "telemetry":
      return runTelemetryBench({
        sessions: sessionList(f.sessions),
        durationSeconds: positiveNumber("duration", f.duration, TELEMETRY_DEFAULTS.durationSeconds),
        warmupSeconds: positiveNumber("warmup", f.warmup, TELEMETRY_DEFAULTS.warmupSeconds),
        workers: Math.round(positiveNumber("workers", f.workers, TELEMETRY_DEFAULTS.workers)),
        connectRate: positiveNumber("connect-rate", f["connect-rate"], TELEMETRY_DEFAULTS.connectRate),
        telemetryIntervalSeconds: positiveNumber(
          "telemetry-interval",
          f["telemetry-interval"],
          TELEMETRY_DEFAULTS.telemetryIntervalSeconds,
        ),
        gpusPerHost: Math.round(positiveNumber("gpus", f.gpus, TELEMETRY_DEFAULTS.gpusPerHost)),
        progress,
      });
    case "agent-idle":
      return runAgentIdleBench({
        durationSeconds: positiveNumber("duration", f.duration, AGENT_IDLE_DEFAULTS.durationSeconds),
        warmupSeconds: positiveNumber("warmup", f.warmup, AGENT_IDLE_DEFAULTS.warmupSeconds),
        telemetryIntervalSeconds: positiveNumber(
          "telemetry-interval",
          f["telemetry-interval"],
          AGENT_IDLE_DEFAULTS.telemetryIntervalSeconds,
        ),
        fixture: typeof f.fixture === "string" ? f.fixture : AGENT_IDLE_DEFAULTS.fixture,
        progress,
      });
    case "lz4":
      return runLz4Bench({
        ...options,
        runs: Math.round(positiveNumber("runs", f.runs, 5)),
        chunks: Math.round(positiveNumber("chunks", f.chunks, 64)),
      });
    case "snapshot": {
      // Another module owns this benchmark; a variable specifier keeps the build independent of it.
      const specifier = "./snapshot.js";
      const mod = (await import(specifier).catch((err: NodeJS.ErrnoException) => {
        if (err.code === "ERR_MODULE_NOT_FOUND" && String(err.message).includes("snapshot.js")) return undefined;
        throw err;
      })) as { runSnapshotBench?: (options: BenchOptions) => Promise<unknown> } | undefined;
      if (!mod?.runSnapshotBench) return { skipped: "tests/bench/snapshot.ts (runSnapshotBench) is not built yet" };
      return mod.runSnapshotBench(options);
    }
    case "many-files":
      return runManyFilesBench(options);
    case "concurrent-transfers":
      return runConcurrentTransfersBench({
        ...options,
        rounds: Math.round(positiveNumber("rounds", f.rounds, CONCURRENT_TRANSFERS_DEFAULTS.rounds)),
        stallSeconds: positiveNumber("stall-seconds", f["stall-seconds"], CONCURRENT_TRANSFERS_DEFAULTS.stallSeconds),
        sizeMiB: positiveNumber("size-mib", f["size-mib"], CONCURRENT_TRANSFERS_DEFAULTS.sizeMiB),
      });
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const { values: flags, positionals } = parseFlags(argv);
  if (flags.help) {
    process.stderr.write(
      `usage: npm run bench -- [${BENCHES.join("|")}...] [--sessions 1000,5000] [--duration S] [--warmup S] [--workers N] [--connect-rate N/s]\n` +
        "       snapshot: [--size-mib N] [--runs N] [--keep] [--skip-stream] [--skip-restic] [--stream-delay-ms MS]\n" +
        "       lz4: [--runs N] [--chunks N]\n" +
        "       many-files: [--files N] [--keep] [--skip-stream] [--skip-restic]\n" +
        "       concurrent-transfers (only when named): [--rounds N] [--stall-seconds S] [--size-mib N]\n",
    );
    return;
  }
  const unknown = positionals.filter((p) => !(BENCHES as readonly string[]).includes(p));
  if (unknown.length > 0) throw new Error(`unknown benchmark ${unknown.join(", ")}; choose from ${BENCHES.join(", ")}`);
  const chosen = positionals.length > 0 ? (positionals as BenchName[]) : BENCHES.filter((b) => !NAMED_ONLY.includes(b));

  const report: Record<string, unknown> = {
    machine: {
      cores: os.availableParallelism(),
      cpu: os.cpus()[0]?.model ?? "unknown",
      memoryGiB: Math.round(os.totalmem() / 2 ** 28) / 4,
      node: process.version,
      database: process.env.DATABASE_URL ? "postgres (DATABASE_URL)" : "pglite (embedded)",
    },
  };
  for (const name of chosen) {
    progress(`${name}: start`);
    report[name === "agent-idle" ? "agentIdle" : name === "concurrent-transfers" ? "concurrentTransfers" : name] =
      await runBench(name, { flags, argv, progress });
  }
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
}

main().catch((err: Error) => {
  process.stderr.write(`bench: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
