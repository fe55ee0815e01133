// `dumont-agent enroll`: pin the CA by hash, send a CSR with the join token, store the identity.
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import { create } from "@bufbuild/protobuf";
import { EnrollRequestSchema, type EnrollResponse } from "@dumont/proto";
// The subpath alone: the package root would load the snapshot engine and the S3 client for a one-shot enroll.
import { writeFileAtomic } from "@dumont/repository/atomic-file";
import { lockDirectory } from "@dumont/repository/directory-lock";
import { agentPaths } from "../platform/paths.js";
import { AGENT_VERSION } from "../version.js";
import { discoverCa, generateKeyAndCsr } from "./ca-discovery.js";
import { checkIssuedCertificate } from "./certificate-renewal.js";
import { createGatewayClient, unaryGatewayCall } from "./grpc-client.js";

export interface EnrollOptions {
  server: string;
  token: string;
  caHash: string;
  dataDir: string;
  name?: string;
  force?: boolean;
  timeoutMs?: number;
}

export async function enroll(options: EnrollOptions): Promise<{ hostId: string }> {
  const paths = agentPaths(options.dataDir);
  if (!options.force) {
    const existing = await fs.readFile(paths.enrollment, "utf8").catch(() => undefined);
    if (existing) {
      const hostId = (JSON.parse(existing) as { hostId?: string }).hostId;
      throw new Error(`this data dir is already enrolled as ${hostId}; pass --force to enroll it as a new host`);
    }
  }
  if (!options.token) throw new Error("--token is required (from `dumont host join-token create`)");
  // An agent running on this data dir holds its lock (agent.ts): a new identity under it would take its host
  // away mid-session. Held until the new identity is written, so none starts meanwhile either.
  const lock = existsSync(options.dataDir)
    ? await lockDirectory(
        options.dataDir,
        (holder) =>
          `the agent data dir ${options.dataDir} is in use by ${holder}, an agent running on it: stop it before ` +
          "enrolling this data dir again",
      )
    : undefined;
  try {
    return await enrollUnlocked(options, paths);
  } finally {
    await lock?.release();
  }
}

async function enrollUnlocked(
  options: EnrollOptions,
  paths: ReturnType<typeof agentPaths>,
): Promise<{ hostId: string }> {
  const timeoutMs = options.timeoutMs ?? 15_000;
  const caPem = await discoverCa(options.server, options.caHash, timeoutMs);
  const { keyPem, csrPem } = await generateKeyAndCsr("dumont-agent");

  const client = createGatewayClient(options.server, caPem);
  let response: EnrollResponse;
  try {
    const request = create(EnrollRequestSchema, {
      joinToken: options.token,
      csrPem,
      name: options.name ?? "",
      agentVersion: AGENT_VERSION,
      facts: {
        hostname: os.hostname(),
        os: `${os.type()} ${os.release()}`,
        arch: os.arch(),
        cpuCores: os.availableParallelism(),
        memoryBytes: BigInt(os.totalmem()),
      },
    });
    response = await unaryGatewayCall<EnrollResponse>(
      (metadata, callOptions, callback) => client.enroll(request, metadata, callOptions, callback),
      { server: options.server, timeoutMs, what: "enrollment" },
    );
  } finally {
    client.close();
  }

  // Checked before anything is written: a certificate this agent cannot use would be found only at its next
  // start, and blamed on the identity files ("copied from another host").
  checkIssuedCertificate(
    response.certificatePem,
    keyPem,
    { hostId: response.hostId, caPem: response.caChainPem || caPem }, // the CA it will be renewed under
    "the enrollment's certificate",
  );
  await fs.mkdir(paths.identityDir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(paths.privateKey, keyPem, 0o600);
  await writeFileAtomic(paths.certificate, response.certificatePem, 0o644);
  await writeFileAtomic(paths.caCertificate, response.caChainPem || caPem, 0o644);
  // Written last: its presence means the identity files are complete.
  await writeFileAtomic(
    paths.enrollment,
    `${JSON.stringify({ hostId: response.hostId, server: options.server, name: options.name ?? null, enrolledAt: new Date().toISOString() }, null, 2)}\n`,
    0o644,
  );
  return { hostId: response.hostId };
}
