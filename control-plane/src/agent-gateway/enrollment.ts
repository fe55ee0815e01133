// Enroll: a one-time join token and a CSR become a host row and a client certificate, atomically.
import { randomBytes } from "node:crypto";
import type { EnrollRequest } from "@dumont/proto";
import { status } from "@grpc/grpc-js";
import { checkJoinToken, consumeJoinToken } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { insertEvent, insertHost } from "../db/host-repository.js";
import type { CertificateAuthority } from "./certificate-authority.js";

export class EnrollError extends Error {
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
  }
}

export function newHostId(): string {
  return `h-${randomBytes(8).toString("hex")}`;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const CONTROL_CHARACTER = /[\p{Cc}\u2028\u2029]/u;

/**
 * What is wrong with the agent version or hostname an agent reports (in Enroll and in every Hello), or
 * undefined: they are stored on the host row, shown by `dumont host list` and written to the log, so they
 * must be short single lines. The message names the field and the length, never echoes the value.
 */
export function agentFactsProblem(facts: { agentVersion: string; hostname: string }): string | undefined {
  if (facts.agentVersion.length > 64 || CONTROL_CHARACTER.test(facts.agentVersion)) {
    return `agent_version must be at most 64 printable characters (got ${facts.agentVersion.length}); update the agent`;
  }
  if (facts.hostname.length > 253 || CONTROL_CHARACTER.test(facts.hostname)) {
    return `hostname must be at most 253 printable characters (got ${facts.hostname.length}); give the machine a plain host name`;
  }
  return undefined;
}

function joinTokenRefused(reason: "unknown" | "used" | "expired" | "key-gone"): EnrollError {
  const why = {
    unknown: "the join token is not valid",
    used: "the join token was already used",
    expired: "the join token has expired",
    "key-gone": "the API key the join token was made with has been revoked or has expired, and the token with it",
  }[reason];
  return new EnrollError(
    status.PERMISSION_DENIED,
    `${why}; create a new one with \`dumont host join-token create\` and run enroll again`,
  );
}

export async function enrollHost(
  db: Db,
  ca: CertificateAuthority,
  request: EnrollRequest,
  now = new Date(),
): Promise<{ hostId: string; certificatePem: string }> {
  if (!request.joinToken) {
    throw new EnrollError(status.INVALID_ARGUMENT, "join_token is required (from `dumont host join-token create`)");
  }
  if (!request.csrPem) throw new EnrollError(status.INVALID_ARGUMENT, "csr_pem is required");
  const hostname = request.facts?.hostname ?? "";
  const factsProblem = agentFactsProblem({ agentVersion: request.agentVersion, hostname });
  if (factsProblem) throw new EnrollError(status.INVALID_ARGUMENT, factsProblem);
  const name = request.name || hostname || "host";
  if (!NAME.test(name)) {
    throw new EnrollError(
      status.INVALID_ARGUMENT,
      `name must be 1-63 letters, digits, '.', '_' or '-' starting with a letter or digit, got ${JSON.stringify(name)}`,
    );
  }
  // The token first: a caller without a valid one gets no CSR verified and no certificate signed. Using it
  // happens below, atomically with creating the host (two agents racing with one token cannot both win).
  const usable = await checkJoinToken(db, request.joinToken, now);
  if (!usable.ok) throw joinTokenRefused(usable.reason);
  const hostId = newHostId();
  let signed: Awaited<ReturnType<CertificateAuthority["signAgentCsr"]>>;
  try {
    signed = await ca.signAgentCsr(request.csrPem, hostId);
  } catch (err) {
    throw new EnrollError(status.INVALID_ARGUMENT, (err as Error).message);
  }
  await db.transaction().execute(async (tx) => {
    const use = await consumeJoinToken(tx, request.joinToken, hostId, now);
    if (!use.ok) throw joinTokenRefused(use.reason);
    await insertHost(tx, {
      id: hostId,
      tenantId: use.tenantId,
      name,
      hostname,
      agentVersion: request.agentVersion,
      certSerial: signed.serial,
      certExpiresAt: signed.notAfter,
    });
    await insertEvent(tx, hostId, "enrolled", `as ${JSON.stringify(name)}, agent ${request.agentVersion}`);
  });
  return { hostId, certificatePem: signed.certificatePem };
}
