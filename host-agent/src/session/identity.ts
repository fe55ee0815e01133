// The agent's identity: an ECDSA P-256 key generated on the host (it never leaves), a CSR for it,
// and discovery of the control plane's CA pinned by the hash from the install command.
// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata polyfill first.
import "reflect-metadata";
import { createHash, webcrypto } from "node:crypto";
import fs from "node:fs/promises";
import tls from "node:tls";
import { CONTROL_PLANE_TLS_NAME } from "@dumont/proto";
import * as x509 from "@peculiar/x509";
import { agentPaths } from "../platform/paths.js";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALGORITHM = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

export interface Identity {
  hostId: string;
  server: string;
  keyPem: string;
  certPem: string;
  caPem: string;
}

export async function generateKeyAndCsr(commonName: string): Promise<{ keyPem: string; csrPem: string }> {
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${commonName}`,
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
  });
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  return { keyPem: x509.PemConverter.encode(der, "PRIVATE KEY"), csrPem: csr.toString("pem") };
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

export function normalizeCaHash(hash: string): string {
  const hex = hash.replace(/^sha256:/i, "").toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new Error(
      `--ca-hash must be sha256:<64 hex digits> as printed by the install command, got ${JSON.stringify(hash)}`,
    );
  }
  return `sha256:${hex}`;
}

/**
 * Opens a TLS connection without trusting anything, takes the CA certificate the server presents in
 * its chain, and accepts it only if its SHA-256 equals the pinned hash (kubeadm's discovery model).
 */
export async function discoverCa(server: string, expectedHash: string, timeoutMs = 10_000): Promise<string> {
  const { host, port } = parseServer(server);
  const expected = normalizeCaHash(expectedHash);
  const chain = await new Promise<tls.DetailedPeerCertificate>((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      servername: CONTROL_PLANE_TLS_NAME,
      rejectUnauthorized: false,
      ALPNProtocols: ["h2"],
      timeout: timeoutMs,
    });
    socket.once("secureConnect", () => {
      const cert = socket.getPeerCertificate(true);
      socket.end();
      resolve(cert);
    });
    socket.once("timeout", () => {
      socket.destroy();
      reject(new Error(`cannot reach the control plane at ${host}:${port}: timed out after ${timeoutMs / 1000}s`));
    });
    socket.once("error", (err: NodeJS.ErrnoException) =>
      reject(new Error(`cannot reach the control plane at ${host}:${port}: ${err.code ?? err.message}`)),
    );
  });
  const seen: string[] = [];
  let cert: tls.DetailedPeerCertificate | undefined = chain;
  while (cert?.raw) {
    const hash = `sha256:${createHash("sha256").update(cert.raw).digest("hex")}`;
    if (hash === expected) return x509.PemConverter.encode(cert.raw, "CERTIFICATE");
    seen.push(hash);
    if (cert.issuerCertificate === cert) break;
    cert = cert.issuerCertificate;
  }
  throw new Error(
    `the control plane at ${host}:${port} did not present a CA matching --ca-hash ${expected} (saw ${seen.join(", ") || "none"}); check the install command, or you may be talking to the wrong server`,
  );
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
  const [keyPem, certPem, caPem] = await Promise.all([
    fs.readFile(paths.privateKey, "utf8"),
    fs.readFile(paths.certificate, "utf8"),
    fs.readFile(paths.caCertificate, "utf8"),
  ]).catch((err: Error) => {
    throw new Error(`agent identity files are missing in ${paths.identityDir} (${err.message}); enroll again`);
  });
  return { hostId: enrollment.hostId, server: enrollment.server, keyPem, certPem, caPem };
}
