// The agent's enrolled identity as stored in its data dir, and the control plane's address.
import { createPrivateKey, X509Certificate } from "node:crypto";
import fs from "node:fs/promises";
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

/** Parses `--server`: `https://host:port`, `grpcs://host:port` or `host:port`. */
export function parseServer(server: string): { host: string; port: number; target: string } {
  const withScheme = /^[a-z]+:\/\//i.test(server) ? server : `https://${server}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new Error(`--server must look like https://HOST:PORT, got ${JSON.stringify(server)}`);
  }
  // The agent gateway speaks TLS only: an http:// URL is most likely the API's (port 8000), which would fail later
  // with a TLS "wrong version number" that names neither.
  if (!/^(https|grpcs):$/i.test(url.protocol)) {
    throw new Error(`--server must be ${SERVER_HINT}, got ${JSON.stringify(server)}`);
  }
  const port = url.port ? Number(url.port) : 8443;
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (!host) throw new Error(`--server must name a host, got ${JSON.stringify(server)}`);
  return { host, port, target: `${host.includes(":") ? `[${host}]` : host}:${port}` };
}

/**
 * The identity enrolled in `dataDir`. `server`, when given, is the gateway address to dial instead of the one
 * enrolled with (`run --server`: the control plane moved); the enrollment file is left as it is.
 */
export async function loadIdentity(dataDir: string, server?: string): Promise<Identity> {
  const paths = agentPaths(dataDir);
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

/** Whether the certificate is for this private key. */
export function keyMatches(certPem: string, keyPem: string): boolean {
  try {
    return new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}
