// Control-plane configuration: flags → env vars → defaults, validated once at start-up with zod.
// A bad value stops the program with a message naming the flag and the variable, the value given, and what to do.
import { isIP, isIPv6 } from "node:net";
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

/**
 * Each setting as its messages name it: its flag and its environment variable, so that the person reading the
 * message finds it however it was given (as the agent's say `--telemetry-interval (DUMONT_TELEMETRY_INTERVAL)`).
 */
export const SETTING_NAMES = {
  dataDir: "--data-dir (DUMONT_DATA_DIR)",
  httpPort: "--http-port (DUMONT_HTTP_PORT)",
  grpcPort: "--grpc-port (DUMONT_GRPC_PORT)",
  host: "--host (DUMONT_HOST)",
  publicHost: "--public-host (DUMONT_PUBLIC_HOST)",
  databaseUrl: "--database-url (DATABASE_URL)",
  lostAfter: "--lost-after (DUMONT_LOST_AFTER)",
  telemetryInterval: "--telemetry-interval (DUMONT_TELEMETRY_INTERVAL)",
  logLevel: "--log-level (DUMONT_LOG_LEVEL)",
  blobStore: "--blob-store (DUMONT_BLOB_STORE)",
  snapshotKeep: "--snapshot-keep (DUMONT_SNAPSHOT_KEEP)",
  pruneInterval: "--prune-interval (DUMONT_PRUNE_INTERVAL)",
  snapshotQuota: "--snapshot-quota (DUMONT_SNAPSHOT_QUOTA)",
  apiRateLimit: "--api-rate-limit (DUMONT_API_RATE_LIMIT)",
  apiBurst: "--api-burst (DUMONT_API_BURST)",
} as const satisfies Record<keyof ControlPlaneOptions, string>;
const N = SETTING_NAMES;

/** The value given, quoted as it was (a default is a number), for the end of a message. */
const given = (value: unknown) => JSON.stringify(String(value).slice(0, 80));

/**
 * A number written in plain decimal digits ("8000", and where `fraction` "0.5"), in the range `check` accepts
 * (it returns what the value must be, or undefined). Not zod's coercion: Number() also reads "0x46B0", "0b1",
 * "1.8097e4" and " " (0), and a port or an interval nobody wrote in decimal is a mistake to say, not to guess at.
 */
function plainNumber(name: string, example: string, fraction: boolean, check: (n: number) => string | undefined) {
  const syntax = fraction ? /^\s*(\d+(\.\d+)?|\.\d+)\s*$/ : /^\s*\d+\s*$/;
  return z.union([z.string(), z.number()]).transform((value, ctx) => {
    const n = Number(value);
    const problem = !syntax.test(String(value))
      ? `must be written in plain decimal digits (like ${example})`
      : check(n);
    if (problem === undefined) return n;
    ctx.addIssue({ code: "custom", message: `${name} ${problem}, got ${given(value)}` });
    return z.NEVER;
  });
}

const port = (name: string) =>
  plainNumber(name, "8000", false, (n) =>
    n <= 65535 ? undefined : "must be a port number 0..65535 (0 picks a free port)",
  );

const seconds = (name: string, min: number, max: number) =>
  plainNumber(name, "10 or 0.5", true, (n) =>
    n >= min && n <= max ? undefined : `must be a number of seconds from ${min} to ${max}`,
  );

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
  dataDir: z.string().min(1, `${N.dataDir} must not be empty`),
  httpPort: port(N.httpPort),
  grpcPort: port(N.grpcPort),
  host: z.string().min(1),
  /** As agents and browsers reach us: a DNS name or an IP address, IPv6 without brackets (urlHost adds them). */
  publicHost: z.string().transform((value, ctx) => {
    const host = parsePublicHost(value);
    if (host.ok) return host.host;
    ctx.addIssue({ code: "custom", message: `${N.publicHost} ${host.problem}` });
    return z.NEVER;
  }),
  databaseUrl: z
    .string()
    .optional()
    .superRefine((url, ctx) => {
      if (url === undefined || /^postgres(ql)?:\/\//.test(url)) return;
      // Its scheme only: the rest of a database URL may hold a password.
      const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:/.exec(url)?.[0];
      ctx.addIssue({
        code: "custom",
        message: `${N.databaseUrl} must start with postgres:// (leave it unset for embedded PGlite), got ${scheme ? `a ${scheme} URL` : "no URL"}`,
      });
    }),
  lostAfterSeconds: seconds(N.lostAfter, 1, 3600),
  // At most half of --lost-after's most, which must be twice it.
  telemetryIntervalSeconds: seconds(N.telemetryInterval, 0.05, 1800),
  blobStore: z.string().superRefine((url, ctx) => {
    if (/^(file:\/\/\/|s3:\/\/)/.test(url)) return;
    // Shown as the repository's messages show a URL: what stands before an "@" may be a secret.
    const shown = url.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)?.*@/, "$1***@");
    ctx.addIssue({
      code: "custom",
      message: `${N.blobStore} must be file:///absolute/path or s3://bucket/prefix, got ${given(shown)}`,
    });
  }),
  /** 32 bytes, hex or base64; unset → <data-dir>/master.key, created on first start. Never logged. */
  masterKey: z.string().optional(),
  /** Applied to a workspace after each of its snapshots commits; unset keeps every snapshot. */
  snapshotKeep: parsedSetting(N.snapshotKeep, parseKeepPolicy),
  /** Every tenant's repository is pruned this often; 0 = never (prune with `dumont snapshot forget --prune`). */
  pruneIntervalSeconds: plainNumber(N.pruneInterval, "86400", true, (n) =>
    n === 0 || (n >= 60 && n <= 30 * 86_400) ? undefined : "must be 0 (never) or 60..2592000 seconds",
  ),
  /**
   * The most a tenant's repository may hold in packs (bytes): a snapshot starts only below it, and stops once what
   * it sends would pass it. Unset: no quota. Decided: 0 is refused rather than read as "no quota" (as it once
   * was, undocumented): a quota of nothing reads as "store nothing", the opposite, and unset already says none.
   */
  snapshotQuota: parsedSetting(N.snapshotQuota, (value) => {
    const size = parseByteSize(value);
    if (typeof size === "object" && size.bytes === 0)
      return `must be above 0, got ${given(value)}: leave it unset for no quota`;
    return size;
  }),
  /** Sustained API requests a second per key (api/rate-limit.ts); 0 = no limit. */
  apiRateLimit: plainNumber(N.apiRateLimit, "20 or 0.5", true, (n) =>
    n === 0 || (n >= 0.001 && n <= 100_000)
      ? undefined
      : "must be 0 (no limit) or from 0.001 to 100000 requests a second",
  ),
  /** Requests a key may make at once after being idle. */
  apiBurst: plainNumber(N.apiBurst, "100", false, (n) =>
    n >= 1 && n <= 1_000_000 ? undefined : "must be a number of requests from 1 to 1000000",
  ),
  logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"], {
    error: (issue) =>
      `${N.logLevel} must be one of fatal, error, warn, info, debug, trace, silent, got ${given(issue.input)}`,
  }),
});

export type ControlPlaneConfig = z.infer<typeof schema>;

export function loadConfig(
  options: ControlPlaneOptions = {},
  env: NodeJS.ProcessEnv = process.env,
): ControlPlaneConfig {
  // Through `setting` like the rest: an empty DUMONT_DATA_DIR put master.key, pki/ and the database in the working
  // directory (path.resolve("")). The CLI refuses an empty --data-dir itself (serve-command's givenOptions).
  const dataDir = path.resolve(setting(options.dataDir, env.DUMONT_DATA_DIR) ?? ".dumont");
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
  const problem = settingsConflict(parsed.data);
  if (problem) throw new ConfigError(`invalid configuration: ${problem}`);
  checkBlobStore(parsed.data.blobStore, env);
  return parsed.data;
}

/** What is wrong with settings valid alone but not together, naming both; undefined when nothing. */
function settingsConflict(c: ControlPlaneConfig): string | undefined {
  // The HTTP server would fail to listen after the gateway took the port, blamed on another process.
  if (c.httpPort !== 0 && c.httpPort === c.grpcPort) {
    return `${N.httpPort} and ${N.grpcPort} both name port ${c.httpPort}: give each its own port`;
  }
  // An agent samples once an interval; with less than two intervals of silence allowed, a sample a little late
  // (or the wait before the next) declares a healthy host lost, its stream closed, and it comes back: it flapped.
  // Agents raise a suggestion under a second to one (host-agent's SUGGESTED_INTERVAL_BOUNDS): judged by what they
  // will send at, not by what is suggested.
  const sent = Math.max(1, c.telemetryIntervalSeconds);
  if (c.lostAfterSeconds < 2 * sent) {
    return (
      `${N.lostAfter} ${c.lostAfterSeconds} is less than twice ${N.telemetryInterval} ${c.telemetryIntervalSeconds}` +
      `${sent !== c.telemetryIntervalSeconds ? " (agents send at most once a second)" : ""}: ` +
      "hosts would be declared lost between their samples; give --lost-after " +
      `${2 * sent} or more${sent === c.telemetryIntervalSeconds ? ", or a shorter --telemetry-interval" : ""}`
    );
  }
  return undefined;
}

/** A host as a URL writes it: an IPv6 address in brackets. */
export function urlHost(host: string): string {
  return isIPv6(host) ? `[${host}]` : host;
}

/**
 * The public host as given, checked: a DNS name or an IP address (IPv6 with or without brackets), which goes into
 * URLs (join tokens, the banner) and the server certificate. An unusable one ("bad host") was taken, and join
 * tokens carried a URL no agent could dial.
 */
export function parsePublicHost(value: string): { ok: true; host: string } | { ok: false; problem: string } {
  const text = value.trim();
  const bare = /^\[(.*)\]$/.exec(text)?.[1] ?? text;
  if (isIP(bare)) {
    if (bare.includes("%")) {
      return {
        ok: false,
        problem: `${given(value)} has a zone (%…), which no URL an agent dials may hold: give a global address or a name`,
      };
    }
    // An address to listen on, not one anybody can reach.
    if (/^(0\.0\.0\.0|::|0:0:0:0:0:0:0:0)$/.test(bare)) {
      return {
        ok: false,
        problem: `${given(value)} is an address that means any address (to listen on): give the name or address hosts reach this machine by`,
      };
    }
    return { ok: true, host: bare };
  }
  // Underscores too: Docker Compose service names and internal DNS use them (cp_1.internal), and agents dial them.
  // A trailing dot (an absolute name) is dropped.
  const label = /^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$/;
  const name = text.endsWith(".") ? text.slice(0, -1) : text;
  if (bare === text && name.length <= 253 && name.split(".").every((l) => label.test(l)))
    return { ok: true, host: name };
  return {
    ok: false,
    problem: `must be a DNS name (like cp.example.com) or an IP address (10.0.0.5, ::1 or [::1]), got ${given(value)}`,
  };
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
    throw new ConfigError(`invalid configuration: ${N.blobStore}: ${(err as Error).message}`);
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
  // Trimmed: a stray space in a compose or systemd file ("/srv/dumont ") was another directory, a new database and
  // master key without a word (and the CLI, which trims, read the key of the one meant).
  const value = (v: T | string | undefined) => (typeof v === "string" ? v.trim() : v);
  const blank = (v: unknown) => v === undefined || v === "";
  if (!blank(value(flag))) return value(flag);
  return blank(value(env)) ? undefined : value(env);
}

const KEEP_RULES = { last: "last", hourly: "hourly", daily: "daily", weekly: "weekly" } as const;

/** The most a rule may keep: what `dumont snapshot forget --keep-last` takes (the API's counts are uint32). */
export const MAX_KEEP = 0xffffffff;

/**
 * "last=24,hourly=48,daily=14,weekly=8" (any of the four, at least one above 0) as a retention policy, or what is
 * wrong with it as the end of a sentence, quoting the whole value given (a part alone, `""` for a stray comma,
 * left its reader to guess where it came from).
 */
export function parseKeepPolicy(value: string): RetentionPolicy | string {
  const policy: RetentionPolicy = {};
  const got = `got ${JSON.stringify(value.slice(0, 120))}`;
  for (const part of value.split(",")) {
    if (part.trim() === "") return `has an empty rule (a stray comma?): write last=24,daily=7, ${got}`;
    const m = /^\s*(\w+)\s*=\s*(\d+)\s*$/.exec(part);
    const rule = m && KEEP_RULES[m[1] as keyof typeof KEEP_RULES];
    if (!m || !rule) {
      return `must be rules like last=24,hourly=48,daily=14,weekly=8 (last, hourly, daily, weekly); ${JSON.stringify(part.trim().slice(0, 40))} is none, ${got}`;
    }
    if (policy[rule] !== undefined) return `names ${rule} twice, ${got}`;
    const n = Number(m[2]);
    if (n > MAX_KEEP) return `keeps at most ${MAX_KEEP} snapshots a rule, ${got}`;
    policy[rule] = n;
  }
  if (!hasRetentionRule(policy))
    return `must keep something: at least one rule above 0 (unset it to keep every snapshot), ${got}`;
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
  if (!Number.isSafeInteger(bytes))
    return `is too large: at most ${Number.MAX_SAFE_INTEGER} bytes, got ${JSON.stringify(value.slice(0, 40))}`;
  // "0.5" is no quota of 0 (none at all): a size that rounds to nothing is a mistake, said so.
  if (bytes === 0 && Number(m[1]) > 0) return `must be at least 1 byte, got ${JSON.stringify(value.slice(0, 40))}`;
  // A plain number of bytes says nothing of its giver's units: binary where it counts in 1024s and not 1000s
  // (1073741824), else decimal.
  const plain = unit === "" || unit === "B";
  return { bytes, decimal: plain ? bytes % 1000 === 0 || bytes % 1024 !== 0 : !unit.includes("I") };
}
