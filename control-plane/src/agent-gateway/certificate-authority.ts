// The control plane's own CA (ECDSA P-256, @peculiar/x509 over WebCrypto; no openssl shell-out).
// It signs the gRPC server certificate and every agent's client certificate. Agents pin it by the
// SHA-256 of its DER encoding ("sha256:<hex>"), which travels in the install command.
// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata polyfill first.
import "reflect-metadata";
import { createHash, randomBytes, webcrypto } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { CONTROL_PLANE_TLS_NAME } from "@dumont/proto";
import { readSecretFile, writeFileAtomic } from "@dumont/repository";
import * as x509 from "@peculiar/x509";

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALGORITHM = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const SIGNING = { name: "ECDSA", hash: "SHA-256" } as const;
const DAY_MS = 86_400_000;
/** How long an agent's client certificate is valid; agents renew it with the last third left (Renew). */
const AGENT_CERTIFICATE_DAYS = 365;

export interface TlsMaterial {
  caPem: string;
  caHash: string;
  serverCertPem: string;
  serverKeyPem: string;
}

export class CertificateAuthority {
  private constructor(
    private readonly caCert: x509.X509Certificate,
    private readonly caKeys: CryptoKeyPair,
    readonly tls: TlsMaterial,
  ) {}

  /** Loads the CA from `<dataDir>/pki`, creating it (and the server certificate) on first start. */
  static async loadOrCreate(dataDir: string, extraNames: string[] = []): Promise<CertificateAuthority> {
    const dir = path.join(dataDir, "pki");
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    const files = {
      caCert: path.join(dir, "ca.crt"),
      caKey: path.join(dir, "ca.key"),
      serverCert: path.join(dir, "server.crt"),
      serverKey: path.join(dir, "server.key"),
    };
    let caCert: x509.X509Certificate;
    let caKeys: CryptoKeyPair;
    if (await exists(files.caCert)) {
      caCert = new x509.X509Certificate(await fs.readFile(files.caCert, "utf8"));
      caKeys = {
        privateKey: await importPrivateKey(await readSecretFile(files.caKey)),
        publicKey: await caCert.publicKey.export(ALGORITHM, ["verify"]),
      };
    } else {
      caKeys = await generateKeyPair();
      caCert = await x509.X509CertificateGenerator.createSelfSigned({
        serialNumber: serial(),
        name: "CN=Dumont control plane CA",
        notBefore: new Date(Date.now() - DAY_MS),
        notAfter: new Date(Date.now() + 3650 * DAY_MS),
        keys: caKeys,
        signingAlgorithm: SIGNING,
        extensions: [
          new x509.BasicConstraintsExtension(true, 0, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
          await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
        ],
      });
      await writeFileAtomic(files.caKey, await exportPrivateKey(caKeys.privateKey), 0o600);
      await writeFileAtomic(files.caCert, caCert.toString("pem"), 0o644);
    }

    const ca = new CertificateAuthority(caCert, caKeys, {
      caPem: caCert.toString("pem"),
      caHash: caHashOf(caCert.toString("pem")),
      serverCertPem: "",
      serverKeyPem: "",
    });

    const names = [...new Set([CONTROL_PLANE_TLS_NAME, "localhost", os.hostname(), ...extraNames])];
    const existing = (await exists(files.serverCert)) ? await fs.readFile(files.serverCert, "utf8") : undefined;
    if (existing && (await exists(files.serverKey)) && serverCertCovers(existing, names)) {
      ca.tls.serverCertPem = existing;
      ca.tls.serverKeyPem = await readSecretFile(files.serverKey);
    } else {
      const keys = await generateKeyPair();
      const cert = await ca.issue(keys.publicKey, `CN=${CONTROL_PLANE_TLS_NAME}`, "server", 825, names);
      ca.tls.serverKeyPem = await exportPrivateKey(keys.privateKey);
      ca.tls.serverCertPem = cert;
      await writeFileAtomic(files.serverKey, ca.tls.serverKeyPem, 0o600);
      await writeFileAtomic(files.serverCert, cert, 0o644);
    }
    return ca;
  }

  /**
   * Signs an agent's CSR. The CSR's own subject is ignored: the certificate names the host id the
   * control plane chose, so an agent cannot claim another host's identity.
   */
  async signAgentCsr(
    csrPem: string,
    hostId: string,
  ): Promise<{ certificatePem: string; serial: string; notAfter: Date }> {
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem);
    } catch {
      throw new Error("csr_pem is not a PEM-encoded PKCS#10 certificate signing request");
    }
    if (!(await csr.verify())) throw new Error("csr_pem signature does not verify; generate a fresh CSR");
    const publicKey = await csr.publicKey.export(ALGORITHM, ["verify"]).catch(() => {
      throw new Error("csr_pem must carry an ECDSA P-256 public key");
    });
    const certificatePem = await this.issue(publicKey, `CN=${hostId}`, "client", AGENT_CERTIFICATE_DAYS);
    const certificate = new x509.X509Certificate(certificatePem);
    return { certificatePem, serial: certificate.serialNumber, notAfter: certificate.notAfter };
  }

  private async issue(
    publicKey: CryptoKey,
    subject: string,
    usage: "server" | "client",
    days: number,
    dnsNames: string[] = [],
  ): Promise<string> {
    const extensions: x509.Extension[] = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension(
        [usage === "server" ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth],
        false,
      ),
      await x509.AuthorityKeyIdentifierExtension.create(this.caKeys.publicKey),
    ];
    if (dnsNames.length > 0) {
      extensions.push(
        new x509.SubjectAlternativeNameExtension(
          dnsNames.flatMap((name) => [{ type: isIp(name) ? ("ip" as const) : ("dns" as const), value: name }]),
        ),
      );
    }
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject,
      issuer: this.caCert.subject,
      notBefore: new Date(Date.now() - 3_600_000),
      notAfter: new Date(Date.now() + days * DAY_MS),
      publicKey,
      signingKey: this.caKeys.privateKey,
      signingAlgorithm: SIGNING,
      extensions,
    });
    return cert.toString("pem");
  }
}

/** "sha256:<hex>" of the CA certificate's DER bytes — what `--ca-hash` pins. */
export function caHashOf(caPem: string): string {
  const der = Buffer.from(new x509.X509Certificate(caPem).rawData);
  return `sha256:${createHash("sha256").update(der).digest("hex")}`;
}

function serverCertCovers(pem: string, names: string[]): boolean {
  const cert = new x509.X509Certificate(pem);
  if (cert.notAfter.getTime() - Date.now() < 30 * DAY_MS) return false;
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  const have = new Set(san?.names.items.map((n) => n.value) ?? []);
  return names.every((n) => have.has(n));
}

function isIp(name: string): boolean {
  return /^\d+\.\d+\.\d+\.\d+$/.test(name) || name.includes(":");
}

function serial(): string {
  // Positive 16-byte serial (top bit cleared).
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString("hex");
}

async function generateKeyPair(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALGORITHM, true, ["sign", "verify"])) as CryptoKeyPair;
}

async function exportPrivateKey(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", key));
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

async function importPrivateKey(pem: string): Promise<CryptoKey> {
  const der = x509.PemConverter.decode(pem)[0];
  if (!der) throw new Error("CA private key file is not PEM");
  return webcrypto.subtle.importKey("pkcs8", der, ALGORITHM, true, ["sign"]);
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}
