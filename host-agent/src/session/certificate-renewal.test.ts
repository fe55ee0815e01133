// When the agent renews its certificate. The renewal itself runs against a real control plane in
// tests/e2e/certificate-renewal.test.ts.
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { describe, expect, it } from "vitest";
import { certificateExpiry, certificateRenewalDue } from "./certificate-renewal.js";

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const DAY = 86_400_000;

async function certificate(notBefore: Date, notAfter: Date): Promise<string> {
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=h-1",
    notBefore,
    notAfter,
    keys,
    signingAlgorithm: ALG,
  });
  return cert.toString("pem");
}

describe("certificateRenewalDue", () => {
  it("is due once less than a third of the validity is left, and after expiry", async () => {
    const issued = new Date("2026-01-01T00:00:00Z");
    const pem = await certificate(issued, new Date(issued.getTime() + 300 * DAY));
    expect(certificateExpiry(pem).toISOString()).toBe("2026-10-28T00:00:00.000Z");
    expect(certificateRenewalDue(pem, new Date(issued.getTime() + DAY))).toBe(false);
    expect(certificateRenewalDue(pem, new Date(issued.getTime() + 199 * DAY))).toBe(false);
    expect(certificateRenewalDue(pem, new Date(issued.getTime() + 201 * DAY))).toBe(true);
    expect(certificateRenewalDue(pem, new Date(issued.getTime() + 400 * DAY))).toBe(true);
  });
});
