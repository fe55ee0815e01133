// Renewing the agent's client certificate before it expires: Renew on the agent gateway, over the current
// certificate, with a fresh key and CSR each time. The control plane accepts the current certificate until the
// new one is first presented; storeRenewedIdentity (identity.ts) swaps the new pair in crash-safely.
import { X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { RenewRequestSchema, type RenewResponse } from "@dumont/proto";
import { agentPaths } from "../platform/paths.js";
import { createGatewayClient, unaryGatewayCall } from "./grpc-client.js";
import { type Identity, keyMatches, storeRenewedIdentity } from "./identity.js";

/** A certificate is renewed once less than this share of its validity is left (122 days of 365). */
const RENEW_WITH_LEFT = 1 / 3;

/** When a certificate expires. */
export function certificateExpiry(certPem: string): Date {
  return new Date(new X509Certificate(certPem).validTo);
}

/** Whether the certificate has less than a third of its validity left (or has expired). */
export function certificateRenewalDue(certPem: string, now = new Date()): boolean {
  const certificate = new X509Certificate(certPem);
  const from = Date.parse(certificate.validFrom);
  const to = Date.parse(certificate.validTo);
  return to - now.getTime() < (to - from) * RENEW_WITH_LEFT;
}

/**
 * Asks the control plane for a new certificate under the current one and stores it with its new key
 * (storeRenewedIdentity); returns the identity to use from now on. Throws with the control plane's reason.
 */
export async function renewCertificate(dataDir: string, identity: Identity, timeoutMs = 15_000): Promise<Identity> {
  // Loaded on demand, as by `enroll`: the running agent needs @peculiar/x509 only for this, once in months.
  const { generateKeyAndCsr } = await import("./ca-discovery.js");
  const { keyPem, csrPem } = await generateKeyAndCsr("dumont-agent");
  const client = createGatewayClient(identity.server, identity.caPem, identity, { ownConnection: true });
  let response: RenewResponse;
  try {
    const request = create(RenewRequestSchema, { csrPem });
    response = await unaryGatewayCall<RenewResponse>(
      (metadata, options, callback) => client.renew(request, metadata, options, callback),
      {
        server: identity.server,
        timeoutMs,
        what: "certificate renewal",
        pinnedCa: true,
        unimplemented: "the control plane does not offer certificate renewal yet (update it)",
      },
    );
  } finally {
    client.close();
  }
  const certPem = response.certificatePem;
  checkIssuedCertificate(certPem, keyPem, identity);
  await storeRenewedIdentity(agentPaths(dataDir), keyPem, certPem);
  return { ...identity, keyPem, certPem };
}

/** How far ahead of this host's clock a renewed certificate may start (clocks differ a little). */
const CLOCK_SKEW_MS = 5 * 60_000;

/**
 * Refuses a certificate the control plane issued (renewed, or at enrollment: `what`) that is not for this host,
 * not for the new key, not signed by the pinned CA, or not valid now (expired, or from a time ahead of this
 * host's clock by more than CLOCK_SKEW_MS): stored, it would replace a good pair, or make an identity, that no
 * handshake takes.
 */
export function checkIssuedCertificate(
  certPem: string,
  keyPem: string,
  identity: Pick<Identity, "hostId" | "caPem">,
  what = "the renewed certificate",
  now = new Date(),
): void {
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(certPem);
  } catch {
    throw new Error(`${what} is no readable certificate; nothing was changed`);
  }
  const problem = !keyMatches(certPem, keyPem)
    ? "is not for the key this agent sent"
    : !certificate.verify(new X509Certificate(identity.caPem).publicKey)
      ? "is not signed by the control plane's CA this agent pinned"
      : !certificate.subject.split("\n").includes(`CN=${identity.hostId}`)
        ? `does not name this host (${identity.hostId})`
        : !(
              Date.parse(certificate.validFrom) <= now.getTime() + CLOCK_SKEW_MS &&
              Date.parse(certificate.validTo) > now.getTime()
            )
          ? `is not valid now (from ${certificate.validFrom} to ${certificate.validTo}; check this host's clock)`
          : undefined;
  if (problem) throw new Error(`${what} ${problem}; nothing was changed`);
}
