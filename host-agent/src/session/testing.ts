// For the session tests (and the bench's transport measurement): a key and a self-signed certificate, as enroll
// and Renew store them.
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

/**
 * A matching ECDSA P-256 key and certificate for host h-1, valid from a minute ago for a day unless told; with
 * `dnsName`, for that name instead (its CN and subject alternative name), which a TLS client can verify.
 */
export async function selfSignedPair(
  validity: { notBefore?: Date; notAfter?: Date; dnsName?: string } = {},
): Promise<{ keyPem: string; certPem: string }> {
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: `CN=${validity.dnsName ?? "h-1"}`,
    notBefore: validity.notBefore ?? new Date(Date.now() - 60_000),
    notAfter: validity.notAfter ?? new Date(Date.now() + 86_400_000),
    keys,
    signingAlgorithm: ALG,
    extensions: validity.dnsName
      ? [new x509.SubjectAlternativeNameExtension([{ type: "dns", value: validity.dnsName }])]
      : [],
  });
  const der = await webcrypto.subtle.exportKey("pkcs8", keys.privateKey);
  return { keyPem: x509.PemConverter.encode(der, "PRIVATE KEY"), certPem: cert.toString("pem") };
}
