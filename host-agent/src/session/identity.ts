// The agent's enrolled identity as stored in its data dir, and the control plane's address.
import { createPrivateKey, X509Certificate } from "node:crypto";
import fs from "node:fs/promises";
import { isIP } from "node:net";
import { readSecretFile, SecretFileModeError, syncDirectory, writeFileAtomic } from "@dumont/repository/atomic-file";
import { type AgentPaths, agentPaths } from "../platform/paths.js";

export interface Identity {
  hostId: string;
  server: string;
  keyPem: string;
  certPem: string;
  caPem: string;
}

/** Where `--server` points, for the messages that refuse it or cannot reach it. */
export const SERVER_HINT =
  "the control plane's agent gateway, https://HOST:PORT (port 8443 by default; `dumont host join-token create` prints it)";

/** The parts of a server address: `scheme://user@host:port/rest`, each but the host optional. */
interface ServerParts {
  scheme?: string;
  userinfo?: string;
  host: string;
  port?: string;
  rest: string;
}

function splitServer(server: string): ServerParts | undefined {
  // By hand rather than with URL: URL drops an explicit default port (https://cp:443 would have dialled 8443)
  // and reads "localhost:18101" as the scheme "localhost:".
  const match =
    /^(?:([a-z][a-z0-9+.-]*):\/\/)?(?:([^@/?#]*)@)?(\[[0-9a-f:.]+\]|[^[\]/?#@:]*)(?::([^/?#]*))?(.*)$/i.exec(
      server.trim(),
    );
  if (!match) return undefined;
  const [, scheme, userinfo, host = "", port, rest = ""] = match;
  return { scheme, userinfo, host: host.replace(/^\[|\]$/g, ""), port, rest };
}

/**
 * What is wrong with a `--server` value given now (`flag` names it, with its variable when it has one), or
 * undefined: it must be an https:// URL with a host, a port or none, and nothing else. Enrollment stores it, and
 * `run` dials it for months, so a typo is refused here, where its author sees it, rather than retried forever.
 */
export function serverUrlProblem(server: string, flag = "--server"): string | undefined {
  const parts = splitServer(server);
  // Credentials are not echoed back: the message lands in terminals and logs.
  const shown = JSON.stringify(parts?.userinfo ? server.replace(`${parts.userinfo}@`, "***@") : server);
  const shape = "; it must look like https://HOST:8443 (the agent gateway; `dumont host join-token create` prints it)";
  // The agent gateway speaks TLS only: an http:// URL is most likely the API's (port 8000), which would fail later
  // with a TLS "wrong version number" that names neither.
  if (parts?.scheme?.toLowerCase() === "http") return `${flag} must be ${SERVER_HINT}, got ${shown}`;
  const problem = !parts
    ? "is not a URL"
    : parts.scheme === undefined
      ? "has no https:// in front"
      : parts.scheme.toLowerCase() !== "https"
        ? `uses ${parts.scheme}://, not https://`
        : parts.userinfo !== undefined
          ? "carries a user name or password, which the agent gateway does not take (and enrollment would store)"
          : !parts.host
            ? "names no host"
            : !isHostName(parts.host)
              ? `has the host ${JSON.stringify(parts.host)}, which is neither a DNS name nor an IP address`
              : parts.port !== undefined &&
                  !(/^\d{1,5}$/.test(parts.port) && Number(parts.port) >= 1 && Number(parts.port) <= 65535)
                ? `has the port ${JSON.stringify(parts.port)}, not a number from 1 to 65535`
                : parts.rest !== "" && parts.rest !== "/"
                  ? "has a path, query or fragment, which the agent gateway does not take"
                  : undefined;
  return problem && `${flag} ${problem}: got ${shown}${shape}`;
}

/**
 * A host a URL may name: an IP address, or a DNS name of letters, digits, "-", "_" and "." (non-ASCII letters
 * too: an IDN, which the resolver turns into punycode). `cp example` or `cp%41` was stored, then retried for good.
 */
function isHostName(host: string): boolean {
  if (isIP(host)) return !host.includes("%");
  return host.length <= 253 && /^[\p{L}\p{N}_-]+(\.[\p{L}\p{N}_-]+)*\.?$/u.test(host);
}

/** A `--server` value that serverUrlProblem() accepts, written the one way enrollment stores it. */
export function normalizeServerUrl(server: string): string {
  const { host, port } = parseServer(server);
  return `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/**
 * Parses a server address to dial: what `--server` takes (serverUrlProblem), and also what enrollments made
 * before that check may have stored (`host:port`, `grpcs://host:port`, a path), which still dial.
 */
export function parseServer(server: string): { host: string; port: number; target: string } {
  const parts = splitServer(server);
  if (!parts?.host || (parts.scheme !== undefined && !/^(https|grpcs)$/i.test(parts.scheme))) {
    throw new Error(serverUrlProblem(server) ?? `--server must be ${SERVER_HINT}, got ${JSON.stringify(server)}`);
  }
  const port = parts.port ? Number(parts.port) : 8443;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(serverUrlProblem(server) ?? `--server has a bad port, got ${JSON.stringify(server)}`);
  }
  const { host } = parts;
  return { host, port, target: `${host.includes(":") ? `[${host}]` : host}:${port}` };
}

/**
 * The identity enrolled in `dataDir`. `server`, when given, is the gateway address to dial instead of the one
 * enrolled with (`run --server`: the control plane moved); the enrollment file is left as it is.
 */
export async function loadIdentity(dataDir: string, server?: string): Promise<Identity> {
  const paths = agentPaths(dataDir);
  await refuseUnsafeDataDir(paths);
  let enrollment: { hostId?: unknown; server?: unknown };
  try {
    enrollment = JSON.parse(await fs.readFile(paths.enrollment, "utf8"));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new Error(`this agent is not enrolled (no ${paths.enrollment}); run \`dumont-agent enroll\` first`);
    }
    throw new Error(`${paths.enrollment} is unreadable or not JSON: ${(err as Error).message}; enroll again`);
  }
  if (typeof enrollment.hostId !== "string" || typeof enrollment.server !== "string") {
    throw new Error(`${paths.enrollment} lacks hostId/server; enroll again with \`dumont-agent enroll --force\``);
  }
  // A renewal a crash interrupted is finished (or dropped) first, so the key and certificate read below match.
  // completeRenewal() throws only while one is in progress (renewal.pem is there).
  await completeRenewal(paths).catch((err: Error) => {
    throw new Error(`cannot finish the renewal of the agent's certificate in ${paths.identityDir}: ${err.message}`);
  });
  const [keyPem, certPem, caPem] = await Promise.all([
    readSecretFile(paths.privateKey),
    fs.readFile(paths.certificate, "utf8"),
    fs.readFile(paths.caCertificate, "utf8"),
  ]).catch((err: Error) => {
    if (err instanceof SecretFileModeError) throw err;
    throw new Error(`agent identity files are missing in ${paths.identityDir} (${err.message}); enroll again`);
  });
  if (!keyMatches(certPem, keyPem)) {
    throw new Error(
      `${paths.certificate} is not the certificate of the key in ${paths.privateKey} (copied from another host, ` +
        "or read while another agent process installed a renewal); start again, or enroll again with --force",
    );
  }
  return { hostId: enrollment.hostId, server: server ?? enrollment.server, keyPem, certPem, caPem };
}

/**
 * Stores a renewed key and certificate (certificate-renewal.ts) so that a crash at any point, or another agent
 * process loading or renewing the identity meanwhile, leaves one matching pair the control plane accepts: both
 * go into one file first (`renewal.pem`, written atomically), which completeRenewal() then copies over agent.key
 * and agent.crt before removing it. Every load of the identity runs completeRenewal() first, so a copy a crash
 * interrupted is redone, and until it is done the control plane still accepts the current certificate.
 */
export async function storeRenewedIdentity(paths: AgentPaths, keyPem: string, certPem: string): Promise<void> {
  await writeFileAtomic(paths.renewal, `${keyPem.trim()}\n${certPem.trim()}\n`, 0o600);
  await completeRenewal(paths);
}

/** Installs a stored renewal (see storeRenewedIdentity); does nothing when there is none. */
export async function completeRenewal(paths: AgentPaths): Promise<void> {
  let renewal: string;
  try {
    // Looked for first: readSecretFile() checks the directory before the file, and a complaint about it would
    // speak of a renewal when none is in progress.
    await fs.access(paths.renewal);
    renewal = await readSecretFile(paths.renewal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  const key = /-----BEGIN PRIVATE KEY-----[^-]+-----END PRIVATE KEY-----/.exec(renewal)?.[0];
  const cert = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(renewal)?.[0];
  if (!key || !cert || !keyMatches(cert, key)) {
    // Not ours to finish (written by hand, or damaged): the current pair stays, and the next renewal replaces it.
    await fs.unlink(paths.renewal).catch(() => {});
    return;
  }
  await writeFileAtomic(paths.privateKey, `${key}\n`, 0o600);
  await writeFileAtomic(paths.certificate, `${cert}\n`, 0o644);
  await fs.unlink(paths.renewal).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== "ENOENT") throw err; // another process finished it first
  });
  await syncDirectory(paths.identityDir);
}

/**
 * Refuses a data dir into which another user could slip an identity of their own, for `run` and `renew` (through
 * loadIdentity) and for `enroll` on an existing data dir: the data dir, identity/ and the files in them that
 * exist, when a group or other users may write them, or when they belong to a user other than the agent's own
 * (or root). A user who could replace identity/ or enrollment.json makes a root agent connect as their host,
 * and an owner may chmod it open again at will whatever its mode says now, so sshd's StrictModes rule: owner
 * and root only. The sticky bit is no excuse here, as it is for readSecretFile(): it would still let others
 * create what is missing (renewal.pem, which the next load installs). Also says when the data dir is a file.
 */
export async function refuseUnsafeDataDir(paths: AgentPaths): Promise<void> {
  const uid = process.getuid?.();
  const inspect = async (file: string) =>
    fs.stat(file).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOTDIR" && file === paths.dataDir) return "ENOTDIR" as const;
      if (err.code === "ENOENT" || err.code === "ENOTDIR") return undefined; // not there: what needs it says so
      if (err.code === "EACCES" || err.code === "EPERM") {
        throw new Error(
          `--data-dir (DUMONT_AGENT_DATA_DIR) ${paths.dataDir} cannot be read by the user the agent runs as ` +
            `(uid ${uid ?? "?"}): ${file} gave ${err.code}; run the agent as the data dir's owner (root for the ` +
            "service), or pass a data dir this user owns",
        );
      }
      throw err;
    });
  const dataDir = await inspect(paths.dataDir);
  if (dataDir === "ENOTDIR" || (dataDir && !dataDir.isDirectory())) {
    throw new Error(
      `--data-dir (DUMONT_AGENT_DATA_DIR) ${paths.dataDir} is not a directory${dataDir === "ENOTDIR" ? " (a part of its path is a file)" : ""}: pass the data dir this host was enrolled into`,
    );
  }
  if (!dataDir) return;
  const entries: [string, string][] = [
    [paths.dataDir, "the agent's data dir,"],
    [paths.enrollment, ""],
    [paths.identityDir, "which holds the agent's key and certificates,"],
    [paths.privateKey, ""],
    [paths.certificate, ""],
    [paths.caCertificate, ""],
    [paths.renewal, ""],
  ];
  for (const [file, role] of entries) {
    const st = file === paths.dataDir ? dataDir : await inspect(file);
    if (!st || st === "ENOTDIR") continue;
    const mode = st.mode & 0o7777;
    if (mode & 0o022) {
      throw new Error(
        `${file}${role ? `, ${role}` : ""} may be written by other users (mode 0${mode.toString(8)}): they could put ` +
          `another host's identity in place of this one's. Run \`chmod go-w ${file}\` and try again`,
      );
    }
    if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
      throw new Error(
        `${file}${role ? `, ${role}` : ""} belongs to the user of uid ${st.uid}, not to the one the agent runs as ` +
          `(uid ${uid}) nor root: that user could put another host's identity in place of this one's. Run ` +
          `\`chown -R ${uid} ${paths.dataDir}\` (or run the agent as uid ${st.uid}) and try again`,
      );
    }
  }
}

/** Whether the certificate is for this private key. */
export function keyMatches(certPem: string, keyPem: string): boolean {
  try {
    return new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}
