// When the agent renews its certificate. The renewal itself runs against a real control plane in
// tests/e2e/certificate-renewal.test.ts.
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import fs from "node:fs/promises";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { CONTROL_PLANE_TLS_NAME } from "@dumont/proto";
import * as x509 from "@peculiar/x509";
import { describe, expect, it } from "vitest";
import {
  certificateExpiry,
  certificateRenewalDue,
  checkIssuedCertificate,
  renewCertificate,
} from "./certificate-renewal.js";
import { selfSignedPair } from "./testing.js";

const DAY = 86_400_000;

describe("certificateRenewalDue", () => {
  it("is due once less than a third of the validity is left, and after expiry", async () => {
    const issued = new Date("2026-01-01T00:00:00Z");
    const pem = (await selfSignedPair({ notBefore: issued, notAfter: new Date(issued.getTime() + 300 * DAY) })).certPem;
    expect(certificateExpiry(pem).toISOString()).toBe("2026-10-28T00:00:00.000Z");
    expect(certificateRenewalDue(pem, new Date(issued.getTime() + DAY))).toBe(false);
    expect(certificateRenewalDue(pem, new Date(issued.getTime() + 199 * DAY))).toBe(false);
    expect(certificateRenewalDue(pem, new Date(issued.getTime() + 201 * DAY))).toBe(true);
    expect(certificateRenewalDue(pem, new Date(issued.getTime() + 400 * DAY))).toBe(true);
  });
});

describe("checkIssuedCertificate", () => {
  it("refuses one that is not valid now, expired or not yet, and takes one that is", async () => {
    const now = new Date("2026-12-05T12:00:00Z");
    const check = async (notBefore: Date, notAfter: Date) => {
      const { keyPem, certPem } = await selfSignedPair({ notBefore, notAfter });
      // Self-signed: its own CA, as the pinned one.
      const identity = { hostId: "h-1", server: "127.0.0.1:1", keyPem, certPem, caPem: certPem };
      return () => checkIssuedCertificate(certPem, keyPem, identity, "the renewed certificate", now);
    };
    const at = (days: number) => new Date(now.getTime() + days * DAY);
    expect(await check(at(-1), at(365))).not.toThrow();
    const { certPem } = await selfSignedPair();
    const other = await selfSignedPair();
    expect(() =>
      checkIssuedCertificate(certPem, other.keyPem, { hostId: "h-1", caPem: certPem }, "the enrollment's certificate"),
    ).toThrow("the enrollment's certificate is not for the key this agent sent; nothing was changed");
    expect(await check(at(-400), at(-35))).toThrow(/is not valid now \(from .* to .*; check this host's clock\)/);
    expect(await check(at(2), at(365))).toThrow(/is not valid now/);
  });
});

describe("renewCertificate against another control plane", () => {
  /** A CA of its own and a server certificate it signed for the gateway's TLS name, sent as a chain. */
  async function otherControlPlane(): Promise<{ keyPem: string; chainPem: string }> {
    const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
    const generate = async () =>
      (await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    const [caKeys, serverKeys] = [await generate(), await generate()];
    const notBefore = new Date(Date.now() - 60_000);
    const notAfter = new Date(Date.now() + DAY);
    const ca = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: "01",
      name: "CN=another control plane's CA",
      notBefore,
      notAfter,
      keys: caKeys,
      signingAlgorithm: alg,
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
    });
    const server = await x509.X509CertificateGenerator.create({
      serialNumber: "02",
      subject: `CN=${CONTROL_PLANE_TLS_NAME}`,
      issuer: ca.subject,
      notBefore,
      notAfter,
      publicKey: serverKeys.publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: alg,
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: "dns", value: CONTROL_PLANE_TLS_NAME }])],
    });
    const der = await webcrypto.subtle.exportKey("pkcs8", serverKeys.privateKey);
    return {
      keyPem: x509.PemConverter.encode(der, "PRIVATE KEY"),
      chainPem: `${server.toString("pem")}\n${ca.toString("pem")}`,
    };
  }

  it("says that the pinned CA did not sign its certificate, and what to do, in one line", async () => {
    // `dumont dev` started again on the same port with another data dir: a real TLS server whose CA is not the
    // one this agent pinned.
    const other = await otherControlPlane();
    const server = tls.createServer({ key: other.keyPem, cert: other.chainPem, ALPNProtocols: ["h2"] });
    server.on("tlsClientError", () => {});
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-renew-other-cp-"));
    try {
      const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const own = await selfSignedPair();
      const identity = { hostId: "h-1", server: url, ...own, caPem: (await selfSignedPair()).certPem };
      await expect(renewCertificate(dataDir, identity, 5_000)).rejects.toThrow(
        `the control plane at ${url} presents a certificate that this agent's pinned CA (identity/ca.crt in its ` +
          "data dir) did not sign: it is another control plane, or one set up again since this host enrolled; " +
          "enroll this host again against it (`dumont-agent enroll --force`), or pass the --server of the one it " +
          "enrolled with",
      );
    } finally {
      server.close();
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });
});
