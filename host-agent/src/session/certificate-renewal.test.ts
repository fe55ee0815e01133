// When the agent renews its certificate. The renewal itself runs against a real control plane in
// tests/e2e/certificate-renewal.test.ts.
import { describe, expect, it } from "vitest";
import { certificateExpiry, certificateRenewalDue, checkIssuedCertificate } from "./certificate-renewal.js";
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
