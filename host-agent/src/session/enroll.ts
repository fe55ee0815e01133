// `dumont-agent enroll`: pin the CA by hash, send a CSR with the join token, store the identity.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { EnrollRequestSchema, type EnrollResponse } from "@dumont/proto";
// The subpath alone: the package root would load the snapshot engine and the S3 client for a one-shot enroll.
import { writeFileAtomic } from "@dumont/repository/atomic-file";
import { lockDirectory } from "@dumont/repository/directory-lock";
import { type AgentPaths, agentPaths } from "../platform/paths.js";
import { AGENT_VERSION } from "../version.js";
import { discoverCa, generateKeyAndCsr } from "./ca-discovery.js";
import { checkIssuedCertificate } from "./certificate-renewal.js";
import { createGatewayClient, unaryGatewayCall } from "./grpc-client.js";
import { normalizeServerUrl, refuseUnsafeDataDir, serverUrlProblem } from "./identity.js";

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
  const serverProblem = serverUrlProblem(options.server);
  if (serverProblem) throw new Error(serverProblem);
  const paths = agentPaths(options.dataDir);
  if (!options.force) {
    const existing = await fs.readFile(paths.enrollment, "utf8").catch(() => undefined);
    if (existing) {
      const hostId = (JSON.parse(existing) as { hostId?: string }).hostId;
      throw new Error(`this data dir is already enrolled as ${hostId}; pass --force to enroll it as a new host`);
    }
  }
  if (!options.token) throw new Error("--token is required (from `dumont host join-token create`)");
  // Before the control plane is asked: it spends the join token and records the host, and an identity that
  // cannot then be stored leaves a host no agent can ever connect as.
  await prepareDataDir(paths);
  // An agent running on this data dir holds its lock (agent.ts): a new identity under it would take its host
  // away mid-session. Held until the new identity is written, so none starts meanwhile either.
  const lock = await lockDirectory(
    paths.dataDir,
    (holder) =>
      `the agent data dir ${options.dataDir} is in use by ${holder}, an agent running on it: stop it before ` +
      "enrolling this data dir again",
  );
  try {
    return await enrollUnlocked(options, paths);
  } finally {
    await lock.release();
  }
}

/**
 * Makes the data dir and identity/ (0700: the key goes there) and writes and removes a file in each, as the
 * identity will be written (writeFileAtomic: a temp file renamed, the directory synced), so that a data dir this
 * user may not write, a file in its path, a read-only or full filesystem are found before the join token is
 * spent. An existing data dir others could write into is refused too (refuseUnsafeDataDir).
 */
async function prepareDataDir(paths: AgentPaths): Promise<void> {
  // One that is a file is left to mkdir below, whose refusal speaks of --data-dir as enroll takes it.
  if ((await fs.stat(paths.dataDir).catch(() => undefined))?.isDirectory()) await refuseUnsafeDataDir(paths);
  try {
    await fs.mkdir(paths.identityDir, { recursive: true, mode: 0o700 });
    for (const dir of [paths.identityDir, paths.dataDir]) {
      const probe = path.join(dir, ".enroll-probe");
      await writeFileAtomic(probe, "", 0o600);
      await fs.unlink(probe);
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const uid = process.getuid?.();
    const reason =
      e.code === "ENOTDIR" || e.code === "EEXIST"
        ? "it, or a directory in its path, is a file"
        : e.code === "EACCES" || e.code === "EPERM"
          ? `the user the agent runs as${uid === undefined ? "" : ` (uid ${uid})`} may not write there`
          : e.code === "EROFS"
            ? "its filesystem is read-only"
            : e.code === "ENOSPC" || e.code === "EDQUOT"
              ? "its filesystem is full"
              : e.message;
    throw new Error(
      `--data-dir ${paths.dataDir} cannot be made and written (${reason}): pass a --data-dir this user may create ` +
        "and write; the join token was not used",
    );
  }
}

async function enrollUnlocked(options: EnrollOptions, paths: AgentPaths): Promise<{ hostId: string }> {
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
  await writeFileAtomic(paths.privateKey, keyPem, 0o600);
  await writeFileAtomic(paths.certificate, response.certificatePem, 0o644);
  await writeFileAtomic(paths.caCertificate, response.caChainPem || caPem, 0o644);
  // Written last: its presence means the identity files are complete.
  await writeFileAtomic(
    paths.enrollment,
    `${JSON.stringify({ hostId: response.hostId, server: normalizeServerUrl(options.server), name: options.name ?? null, enrolledAt: new Date().toISOString() }, null, 2)}\n`,
    0o644,
  );
  return { hostId: response.hostId };
}
