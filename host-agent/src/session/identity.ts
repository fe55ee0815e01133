// The agent's enrolled identity as stored in its data dir, and the control plane's address.
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

/** Parses `--server`: `https://host:port`, `grpcs://host:port` or `host:port`. */
export function parseServer(server: string): { host: string; port: number; target: string } {
  const withScheme = /^[a-z]+:\/\//i.test(server) ? server : `https://${server}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new Error(`--server must look like https://HOST:PORT, got ${JSON.stringify(server)}`);
  }
  const port = url.port ? Number(url.port) : 8443;
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (!host) throw new Error(`--server must name a host, got ${JSON.stringify(server)}`);
  return { host, port, target: `${host.includes(":") ? `[${host}]` : host}:${port}` };
}

export async function loadIdentity(dataDir: string): Promise<Identity> {
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
  return { hostId: enrollment.hostId, server: enrollment.server, keyPem, certPem, caPem };
}

/**
 * Stores a renewed key and certificate (certificate-renewal.ts) so that a crash at any point leaves one complete
 * pair the control plane accepts:
 *
 *   1. agent.key.next, then agent.crt.next, each written atomically (the certificate's presence means the pair
 *      is complete);
 *   2. agent.key.next renamed over agent.key, then agent.crt.next over agent.crt.
 *
 * completeRenewal() runs before every load of the identity: with agent.crt.next present it finishes step 2; with
 * only agent.key.next it drops it (the control plane still accepts the current certificate until the new one is
 * first presented, and the next renewal issues another).
 */
export async function storeRenewedIdentity(paths: AgentPaths, keyPem: string, certPem: string): Promise<void> {
  await writeFileAtomic(paths.renewedPrivateKey, keyPem, 0o600);
  await writeFileAtomic(paths.renewedCertificate, certPem, 0o644);
  await completeRenewal(paths);
}

/** Finishes (or drops) a renewal a crash interrupted; see storeRenewedIdentity. Does nothing when none was. */
export async function completeRenewal(paths: AgentPaths): Promise<void> {
  if (await exists(paths.renewedCertificate)) {
    if (await exists(paths.renewedPrivateKey)) await fs.rename(paths.renewedPrivateKey, paths.privateKey);
    await fs.rename(paths.renewedCertificate, paths.certificate);
    await syncDirectory(paths.identityDir);
  } else if (await exists(paths.renewedPrivateKey)) {
    await fs.unlink(paths.renewedPrivateKey);
    await syncDirectory(paths.identityDir);
  }
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}
