// When the agent renews its certificate. The renewal itself runs against a real control plane in
// tests/e2e/certificate-renewal.test.ts.
import { describe, expect, it } from "vitest";
import { certificateExpiry, certificateRenewalDue } from "./certificate-renewal.js";
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
