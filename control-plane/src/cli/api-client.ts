// The CLI talks to the control plane only through the public Connect API, like the dashboard.
import fs from "node:fs";
import path from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { api } from "@dumont/proto";
import { flagParsers } from "@dumont/repository/cli-flags";
import { InvalidArgumentError } from "commander";
import { tenantIdProblem } from "../api/request-fields.js";

export interface ApiOptions {
  apiUrl?: string;
  apiKey?: string;
}

/** Where the CLI looks for the API without --api-url or DUMONT_API_URL (a local `dumont dev` on its defaults). */
export const DEFAULT_API_URL = "http://localhost:8000";
/** The data directory whose admin key the CLI uses without --api-key, DUMONT_API_KEY or DUMONT_DATA_DIR. */
export const DEFAULT_DATA_DIR = ".dumont";

export function apiClients(options: ApiOptions) {
  // An environment variable set empty (`DUMONT_API_KEY= dumont …`) counts as unset, as the shell's own do.
  const env = (name: string) => process.env[name] || undefined;
  const baseUrl = options.apiUrl ?? env("DUMONT_API_URL") ?? DEFAULT_API_URL;
  // Never repeated with what stands before an "@" (up to the last: a password may hold "/" and "@").
  const shown = baseUrl.replace(/^(?:[a-z][a-z0-9+.-]*:\/\/)?.*@/i, "<credentials removed>@");
  if (!URL.canParse(baseUrl) || !/^https?:$/.test(new URL(baseUrl).protocol)) {
    throw new Error(
      `--api-url (DUMONT_API_URL) must be an http:// or https:// URL like http://localhost:8000, got ` +
        JSON.stringify(shown),
    );
  }
  const parsed = new URL(baseUrl);
  if (parsed.username !== "" || parsed.password !== "") {
    // The API reads its key from --api-key alone (a Bearer header): credentials in the URL were never used.
    throw new Error(
      `--api-url (DUMONT_API_URL) ${JSON.stringify(shown)} carries a user name or password: give the address ` +
        "alone, and the API key with --api-key (DUMONT_API_KEY)",
    );
  }
  if (options.apiKey === "") {
    throw new Error(
      "--api-key is empty: give the key (dumont_<id>_<secret>), or leave the flag out to use the default",
    );
  }
  const key = options.apiKey ?? env("DUMONT_API_KEY") ?? readDefaultKey();
  if (!key) {
    throw new Error(
      `no API key: pass --api-key, set DUMONT_API_KEY, or point DUMONT_DATA_DIR at the control plane's data dir ` +
        `(its admin-api-key; now ${dataDir()}, which holds none)`,
    );
  }
  // Checked here, never echoed: Node's own refusal of a header with a line break quoted the whole key.
  if (!/^[\x21-\x7e]+$/.test(key)) {
    const from =
      options.apiKey !== undefined ? "--api-key" : process.env.DUMONT_API_KEY ? "DUMONT_API_KEY" : "the key file";
    throw new Error(
      `${from} is not an API key: it holds a space, line break or other character no key has; give the key ` +
        "(dumont_<id>_<secret>) as it was printed when it was made",
    );
  }
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: "1.1",
    interceptors: [
      (next) => async (req) => {
        req.header.set("authorization", `Bearer ${key}`);
        let res: Awaited<ReturnType<typeof next>>;
        try {
          res = await next(req);
        } catch (err) {
          throw unreachable(err, baseUrl);
        }
        if (!res.stream) return res;
        // A streamed answer (a snapshot's or restore's progress) fails while it is read, after this returned.
        const messages = res.message;
        return {
          ...res,
          message: (async function* () {
            try {
              yield* messages;
            } catch (err) {
              throw unreachable(err, baseUrl);
            }
          })(),
        };
      },
    ],
  });
  return {
    hosts: createClient(api.HostService, transport),
    snapshots: createClient(api.SnapshotService, transport),
    keys: createClient(api.KeyService, transport),
  };
}

/** Node's codes for a TLS certificate the client does not trust. */
const UNTRUSTED_CERTIFICATE = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/** Node's codes for a connection that was made and then dropped (the control plane killed mid-call, say). */
const DROPPED = new Set(["ECONNRESET", "EPIPE", "ERR_STREAM_PREMATURE_CLOSE", "UND_ERR_SOCKET"]);

/**
 * A failure to connect ("[unavailable] connect ECONNREFUSED ...") as a sentence that says what to do; a connection
 * dropped mid-call ("[aborted] aborted", "socket hang up") as one that says what is not known.
 */
function unreachable(err: unknown, baseUrl: string): unknown {
  // An error the server sent is its answer, whatever its words.
  if (!(err instanceof ConnectError) || err.isWireError) return err;
  const cause = err.cause as NodeJS.ErrnoException | undefined;
  const wrongAddress = (message: string) => new ConnectError(message, Code.Unavailable, undefined, undefined, err);
  // The wrong address, each in its own words rather than "[internal]" and OpenSSL's: https:// to the API's plain
  // HTTP port, or to the agents' gateway (whose certificate only agents trust), or a URL with a path.
  if (cause?.code === "EPROTO") {
    return wrongAddress(
      `what answers at ${baseUrl} does not speak TLS (${cause.code}): the control plane's API is plain HTTP ` +
        "(--api-url http://HOST:8000) unless a proxy in front of it serves TLS",
    );
  }
  if (typeof cause?.code === "string" && UNTRUSTED_CERTIFICATE.has(cause.code)) {
    return wrongAddress(
      `the server at ${baseUrl} presents a certificate this machine does not trust (${cause.message}): if that is ` +
        "the agents' gateway (port 8443), the API is on the HTTP port (--api-url http://HOST:8000); a proxy serving " +
        "the API over TLS needs a certificate this machine trusts (NODE_EXTRA_CA_CERTS=the file of its CA)",
    );
  }
  if (err.code === Code.Unimplemented && /^HTTP 404$/.test(err.rawMessage)) {
    return wrongAddress(
      `there is no Dumont API at ${baseUrl} (HTTP 404): give --api-url (DUMONT_API_URL) the API's base URL, ` +
        "http://HOST:8000, with no path",
    );
  }
  const dropped =
    (typeof cause?.code === "string" && DROPPED.has(cause.code)) ||
    /^(aborted|socket hang up|premature close|terminated|other side closed)$/i.test(err.rawMessage);
  if (dropped && err.code !== Code.DeadlineExceeded && err.code !== Code.Canceled) {
    return new ConnectError(
      `the connection to ${baseUrl} closed before the answer was whole (${cause?.code ?? err.rawMessage}). If ` +
        "that is the control plane's API and the call reached it, whether it did what was asked is not known: look " +
        "(`dumont snapshot list`, `dumont host list`) before asking again; if it is not its API (the agents' port, " +
        "TLS where it serves plain HTTP), point --api-url (DUMONT_API_URL) at it",
      Code.Unavailable,
      undefined,
      undefined,
      err,
    );
  }
  if (err.code !== Code.Unavailable || typeof cause?.code !== "string") return err;
  return new ConnectError(
    `cannot reach the control plane at ${baseUrl} (${cause.code}): start it, or point --api-url (DUMONT_API_URL) ` +
      "at it",
    Code.Unavailable,
    undefined,
    undefined,
    err,
  );
}

/** DUMONT_DATA_DIR, or the default where it is unset, empty or blank (as the control plane reads it). */
function dataDir(): string {
  return process.env.DUMONT_DATA_DIR?.trim() || DEFAULT_DATA_DIR;
}

/** Convenience for a local `dumont dev`: use the admin key it wrote, if we are next to it. */
function readDefaultKey(): string | undefined {
  const dir = dataDir();
  try {
    return fs.readFileSync(path.join(dir, "admin-api-key"), "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

const { once, nonEmpty } = flagParsers(InvalidArgumentError);
/**
 * `--tenant`, as every command takes it: given once, never empty (an empty one would mean "every tenant"), and
 * checked as the API would check it, so its refusal names the flag rather than the API's tenant_id.
 */
export const tenantFlag = once("--tenant", (value: string) => {
  const problem = tenantIdProblem(nonEmpty("--tenant", "a tenant id")(value), "--tenant");
  if (problem !== undefined) throw new InvalidArgumentError(problem);
  return value;
});

/** "90s", "10m", "1h", "7d" or plain seconds → seconds. */
export function parseDuration(
  flag: string,
  value: string,
  /** Seconds the flag takes, and how its refusal states them (e.g. "60s..7d"): checked here, as typed. */
  range?: { min: number; max: number; shown: string },
): number {
  const m = /^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$/.exec(value.trim());
  if (!m) throw new Error(`${flag} must be a duration like 90s, 10m, 1h or 7d, got ${JSON.stringify(value)}`);
  const unit = { s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? "s") as "s" | "m" | "h" | "d"];
  const seconds = Math.round(Number(m[1]) * unit);
  if (range && (seconds < range.min || seconds > range.max)) {
    throw new Error(`${flag} must be ${range.shown}, got ${JSON.stringify(value)}`);
  }
  return seconds;
}
