// Enrollment crypto: the agent's key pair and CSR (the private key never leaves the host), and discovery
// of the control plane's CA pinned by the hash from the install command. Only `enroll` loads this (and
// @peculiar/x509 with it), which keeps the running agent's memory small.
// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata polyfill first.
import "reflect-metadata";
import { createHash, webcrypto } from "node:crypto";
import tls from "node:tls";
import { CONTROL_PLANE_TLS_NAME } from "@dumont/proto";
import * as x509 from "@peculiar/x509";
import { parseServer, SERVER_HINT } from "./identity.js";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALGORITHM = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

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
      reject(
        new Error(
          `cannot reach the control plane at ${host}:${port}: ${err.code ?? err.message}; check --server, which must be ` +
            `${SERVER_HINT}, and that this machine can reach that port`,
        ),
      ),
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
