// Control-plane configuration: flags → env vars → defaults, validated once at start-up with zod.
// A bad value stops the program with a message naming the variable and what to do.
import path from "node:path";
import { pathToFileURL } from "node:url";
import { maxAttemptsFromEnv, parseRepositoryUrl, type RepositoryLocation, s3EndpointFromEnv } from "@dumont/repository";
import { hasRetentionRule, type RetentionPolicy } from "@dumont/repository/retention";
import { z } from "zod";
import { DEFAULT_RATE_LIMIT } from "./api/rate-limit.js";
import { ConfigError } from "./errors.js";

/** What `dumont serve` and `dumont dev` accept, before defaults and validation. */
export interface ControlPlaneOptions {
  dataDir?: string;
  httpPort?: string | number;
  grpcPort?: string | number;
  host?: string;
  publicHost?: string;
  databaseUrl?: string;
  lostAfter?: string | number;
  telemetryInterval?: string | number;
  logLevel?: string;
  blobStore?: string;
  snapshotKeep?: string;
  pruneInterval?: string | number;
  snapshotQuota?: string;
  apiRateLimit?: string | number;
  apiBurst?: string | number;
}

const port = (name: string) =>
  z.coerce
    .number({ error: `${name} must be a port number` })
    .int(`${name} must be a whole number`)
    .min(0, `${name} must be 0..65535 (0 picks a free port)`)
    .max(65535, `${name} must be 0..65535`);

const seconds = (name: string, min: number, max: number) =>
  z.coerce
    .number({ error: `${name} must be a number of seconds` })
    .min(min, `${name} must be at least ${min} seconds`)
    .max(max, `${name} must be at most ${max} seconds`);

/** An optional setting `parse` reads (into a value, or what is wrong with it, said after the setting's name). */
function parsedSetting<T extends object | number>(name: string, parse: (value: string) => T | string) {
  return z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined) return undefined;
      const result = parse(value);
      if (typeof result === "string") {
        ctx.addIssue({ code: "custom", message: `${name} ${result}` });
        return z.NEVER;
      }
      return result;
    });
}

const schema = z.object({
  dataDir: z.string().min(1, "DUMONT_DATA_DIR must not be empty"),
  httpPort: port("DUMONT_HTTP_PORT"),
  grpcPort: port("DUMONT_GRPC_PORT"),
  host: z.string().min(1),
  publicHost: z.string().min(1),
  databaseUrl: z
    .string()
    .regex(/^postgres(ql)?:\/\//, "DATABASE_URL must start with postgres:// (leave it unset for embedded PGlite)")
    .optional(),
  lostAfterSeconds: seconds("DUMONT_LOST_AFTER", 1, 3600),
  telemetryIntervalSeconds: seconds("DUMONT_TELEMETRY_INTERVAL", 0.05, 3600),
  blobStore: z
    .string()
    .regex(/^(file:\/\/\/|s3:\/\/)/, "DUMONT_BLOB_STORE must be file:///absolute/path or s3://bucket/prefix"),
  /** 32 bytes, hex or base64; unset → <data-dir>/master.key, created on first start. Never logged. */
  masterKey: z.string().optional(),
  /** Applied to a workspace after each of its snapshots commits; unset keeps every snapshot. */
  snapshotKeep: parsedSetting("DUMONT_SNAPSHOT_KEEP", parseKeepPolicy),
  /** Every tenant's repository is pruned this often; 0 = never (prune with `dumont snapshot forget --prune`). */
  pruneIntervalSeconds: z.coerce
    .number({ error: "DUMONT_PRUNE_INTERVAL must be a number of seconds" })
    .refine(
      (n) => n === 0 || (n >= 60 && n <= 30 * 86_400),
      "DUMONT_PRUNE_INTERVAL must be 0 (never) or 60..2592000 seconds",
    ),
  /**
   * The most a tenant's repository may hold in packs (bytes): a snapshot starts only below it, and stops once what
   * it sends would pass it. Unset or 0: no quota.
   */
  snapshotQuota: parsedSetting("DUMONT_SNAPSHOT_QUOTA", parseByteSize).transform((size) =>
    size?.bytes === 0 ? undefined : size,
  ),
  /** Sustained API requests a second per key (api/rate-limit.ts); 0 = no limit. */
  apiRateLimit: z.coerce
    .number({ error: "DUMONT_API_RATE_LIMIT must be a number of requests a second" })
    .refine(
      (n) => n === 0 || n >= 0.001,
      "DUMONT_API_RATE_LIMIT must be 0 (no limit) or at least 0.001 requests a second",
    )
    .max(100_000, "DUMONT_API_RATE_LIMIT must be at most 100000 requests a second (0 turns the limit off)"),
  /** Requests a key may make at once after being idle. */
  apiBurst: z.coerce
    .number({ error: "DUMONT_API_BURST must be a whole number of requests" })
    .int("DUMONT_API_BURST must be a whole number of requests")
    .min(1, "DUMONT_API_BURST must be at least 1")
    .max(1_000_000, "DUMONT_API_BURST must be at most 1000000"),
  logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"], {
    error: "DUMONT_LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent",
  }),
});

export type ControlPlaneConfig = z.infer<typeof schema>;

export function loadConfig(
  options: ControlPlaneOptions = {},
  env: NodeJS.ProcessEnv = process.env,
): ControlPlaneConfig {
  const dataDir = path.resolve(options.dataDir ?? env.DUMONT_DATA_DIR ?? ".dumont");
  const raw = {
    dataDir,
    httpPort: setting(options.httpPort, env.DUMONT_HTTP_PORT) ?? 8000,
    grpcPort: setting(options.grpcPort, env.DUMONT_GRPC_PORT) ?? 8443,
    host: setting(options.host, env.DUMONT_HOST) ?? "0.0.0.0",
    publicHost: setting(options.publicHost, env.DUMONT_PUBLIC_HOST) ?? "localhost",
    databaseUrl: setting(options.databaseUrl, env.DATABASE_URL),
    lostAfterSeconds: setting(options.lostAfter, env.DUMONT_LOST_AFTER) ?? 10,
    telemetryIntervalSeconds: setting(options.telemetryInterval, env.DUMONT_TELEMETRY_INTERVAL) ?? 5,
    logLevel: setting(options.logLevel, env.DUMONT_LOG_LEVEL) ?? "info",
    blobStore: setting(options.blobStore, env.DUMONT_BLOB_STORE) ?? pathToFileURL(path.join(dataDir, "blobs")).href,
    masterKey: setting(undefined, env.DUMONT_MASTER_KEY),
    snapshotKeep: setting(options.snapshotKeep, env.DUMONT_SNAPSHOT_KEEP),
    pruneIntervalSeconds: setting(options.pruneInterval, env.DUMONT_PRUNE_INTERVAL) ?? 0,
    snapshotQuota: setting(options.snapshotQuota, env.DUMONT_SNAPSHOT_QUOTA),
    apiRateLimit: setting(options.apiRateLimit, env.DUMONT_API_RATE_LIMIT) ?? DEFAULT_RATE_LIMIT.perSecond,
    apiBurst: setting(options.apiBurst, env.DUMONT_API_BURST) ?? DEFAULT_RATE_LIMIT.burst,
  };
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ConfigError(`invalid configuration: ${issue?.message ?? parsed.error.message}`);
  }
  checkBlobStore(parsed.data.blobStore, env);
  return parsed.data;
}

/**
 * The blob store as the snapshot engine will open it, and for s3:// the endpoint and attempts it will use: a
 * bucket name S3 refuses, a DUMONT_S3_ENDPOINT that is no URL or an AWS_MAX_ATTEMPTS that is no count stops
 * the start rather than fail a host's first snapshot.
 */
function checkBlobStore(url: string, env: NodeJS.ProcessEnv): void {
  let location: RepositoryLocation;
  try {
    location = parseRepositoryUrl(url);
  } catch (err) {
    throw new ConfigError(`invalid configuration: DUMONT_BLOB_STORE: ${(err as Error).message}`);
  }
  try {
    if (location.kind === "s3") {
      s3EndpointFromEnv(env);
      maxAttemptsFromEnv(env);
    }
  } catch (err) {
    throw new ConfigError(`invalid configuration: ${(err as Error).message}`);
  }
}

/**
 * A flag's value, else the environment's, where an empty or blank value counts as unset (a `VAR=` line in a
 * compose or systemd file, which commander also hands over as the flag's value). Before, an empty
 * DUMONT_API_RATE_LIMIT read as 0 and turned the limit off, and an empty DUMONT_HTTP_PORT as 0: a random port.
 */
function setting<T extends string | number>(flag: T | undefined, env: string | undefined): T | string | undefined {
  const blank = (v: unknown) => v === undefined || (typeof v === "string" && v.trim() === "");
  if (!blank(flag)) return flag;
  return blank(env) ? undefined : env;
}

const KEEP_RULES = { last: "last", hourly: "hourly", daily: "daily", weekly: "weekly" } as const;

/**
 * "last=24,hourly=48,daily=14,weekly=8" (any of the four, at least one above 0) as a retention policy, or what is
 * wrong with it as the end of a sentence.
 */
export function parseKeepPolicy(value: string): RetentionPolicy | string {
  const policy: RetentionPolicy = {};
  for (const part of value.split(",")) {
    const m = /^\s*(\w+)\s*=\s*(\d+)\s*$/.exec(part);
    const rule = m && KEEP_RULES[m[1] as keyof typeof KEEP_RULES];
    if (!m || !rule) {
      return `must be rules like last=24,hourly=48,daily=14,weekly=8 (last, hourly, daily, weekly), got ${JSON.stringify(part)}`;
    }
    if (policy[rule] !== undefined) return `names ${rule} twice`;
    policy[rule] = Number(m[2]);
  }
  if (!hasRetentionRule(policy))
    return "must keep something: at least one rule above 0 (unset it to keep every snapshot)";
  return policy;
}

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  B: 1,
  K: 1e3,
  KB: 1e3,
  M: 1e6,
  MB: 1e6,
  G: 1e9,
  GB: 1e9,
  T: 1e12,
  TB: 1e12,
  KI: 2 ** 10,
  KIB: 2 ** 10,
  MI: 2 ** 20,
  MIB: 2 ** 20,
  GI: 2 ** 30,
  GIB: 2 ** 30,
  TI: 2 ** 40,
  TIB: 2 ** 40,
};

/** A size as given: its bytes, and whether in powers of 1000 (so sizes said back to its giver use those too). */
export interface ByteSize {
  bytes: number;
  decimal: boolean;
}

/**
 * A size as people write it, as a whole number of bytes: "500GB" and "500G" (10^9, as disks and S3 bills count),
 * "512GiB" and "512Gi" (2^30, as Kubernetes quantities), "1.5TB", "0", "1073741824"; or what is wrong with it.
 */
export function parseByteSize(value: string): ByteSize | string {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m?.[2].toUpperCase() ?? "";
  if (!m || !Object.hasOwn(SIZE_UNITS, unit)) {
    return `must be a size like 500GB, 512GiB or 2TB (B, KB, MB, GB, TB powers of 1000; KiB, MiB, GiB, TiB of 1024), got ${JSON.stringify(value.slice(0, 40))}`;
  }
  const bytes = Math.floor(Number(m[1]) * SIZE_UNITS[unit]);
  if (!Number.isSafeInteger(bytes)) return `is too large: at most ${Number.MAX_SAFE_INTEGER} bytes`;
  // "0.5" is no quota of 0 (none at all): a size that rounds to nothing is a mistake, said so.
  if (bytes === 0 && Number(m[1]) > 0) return `must be at least 1 byte, got ${JSON.stringify(value.slice(0, 40))}`;
  // A plain number of bytes says nothing of its giver's units: binary where it counts in 1024s and not 1000s
  // (1073741824), else decimal.
  const plain = unit === "" || unit === "B";
  return { bytes, decimal: plain ? bytes % 1000 === 0 || bytes % 1024 !== 0 : !unit.includes("I") };
}
