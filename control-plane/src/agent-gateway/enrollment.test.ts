import "reflect-metadata";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { EnrollRequestSchema } from "@dumont/proto";
import { status } from "@grpc/grpc-js";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApiKey } from "../api/auth.js";
import { ensureTenant, insertJoinToken, revokeApiKey } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { getHost } from "../db/host-repository.js";
import { openTestDatabase } from "../db/test-database.js";
import { CertificateAuthority, caHashOf } from "./certificate-authority.js";
import { EnrollError, enrollHost } from "./enrollment.js";

async function csr(): Promise<string> {
  const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = await crypto.subtle.generateKey(alg, true, ["sign", "verify"]);
  const req = await x509.Pkcs10CertificateRequestGenerator.create({
    name: "CN=claims-to-be-someone-else",
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
  });
  return req.toString("pem");
}

describe("enrollment", () => {
  let db: Db;
  let close: () => Promise<void>;
  let ca: CertificateAuthority;
  let dir: string;

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-ca-"));
    ca = await CertificateAuthority.loadOrCreate(dir);
    await ensureTenant(db, "prov", "A provider");
  });
  afterAll(async () => {
    await close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  const request = async (token: string, name = "gpu-box-1") =>
    create(EnrollRequestSchema, { joinToken: token, csrPem: await csr(), name, agentVersion: "0.1.0" });

  it("issues a client certificate naming the host id it chose, for the token's tenant", async () => {
    await insertJoinToken(db, { token: "t-ok", tenantId: "prov", expiresAt: new Date(Date.now() + 60_000) });
    const { hostId, certificatePem } = await enrollHost(db, ca, await request("t-ok"));
    const cert = new x509.X509Certificate(certificatePem);
    expect(cert.subject).toBe(`CN=${hostId}`);
    expect(await cert.verify({ publicKey: new x509.X509Certificate(ca.tls.caPem).publicKey })).toBe(true);
    const host = await getHost(db, hostId);
    expect(host).toMatchObject({ tenant_id: "prov", name: "gpu-box-1", status: "lost" });
    expect(host!.cert_serial).toBe(cert.serialNumber);
    expect(host!.cert_expires_at?.getTime()).toBe(cert.notAfter.getTime());
    // `dumont host events` starts with the enrollment.
    const events = await db
      .selectFrom("host_events")
      .select(["kind", "message"])
      .where("host_id", "=", hostId)
      .execute();
    expect(events).toEqual([{ kind: "enrolled", message: 'as "gpu-box-1", agent 0.1.0' }]);
  });

  it("refuses a used token, an expired token and an unknown token without creating a host", async () => {
    await insertJoinToken(db, { token: "t-once", tenantId: "prov", expiresAt: new Date(Date.now() + 60_000) });
    await enrollHost(db, ca, await request("t-once"));
    const hostsBefore = (await db.selectFrom("hosts").select("id").execute()).length;
    await expect(enrollHost(db, ca, await request("t-once"))).rejects.toThrow(/already used/);

    await insertJoinToken(db, { token: "t-old", tenantId: "prov", expiresAt: new Date(Date.now() - 1000) });
    await expect(enrollHost(db, ca, await request("t-old"))).rejects.toThrow(/has expired/);
    await expect(enrollHost(db, ca, await request("t-never"))).rejects.toThrow(/not valid/);
    // Made with a key revoked since (one that leaked): no host, and the agent is told why.
    const revoked = await createApiKey(db, "prov", "provider", "leaked");
    await revokeApiKey(db, revoked.id, new Date());
    await insertJoinToken(db, {
      token: "t-leaked",
      tenantId: "prov",
      expiresAt: new Date(Date.now() + 60_000),
      createdByKey: revoked.id,
    });
    await expect(enrollHost(db, ca, await request("t-leaked"))).rejects.toMatchObject({
      code: status.PERMISSION_DENIED,
      message:
        "the API key the join token was made with has been revoked or has expired, and the token with it; create a " +
        "new one with `dumont host join-token create` and run enroll again",
    });
    expect((await db.selectFrom("hosts").select("id").execute()).length).toBe(hostsBefore);
  });

  it("looks at the token before the CSR: a caller without a valid one gets nothing verified or signed", async () => {
    const junk = create(EnrollRequestSchema, { joinToken: "t-none", csrPem: "not a csr", name: "x" });
    await expect(enrollHost(db, ca, junk)).rejects.toMatchObject({
      code: status.PERMISSION_DENIED,
      message: expect.stringMatching(/^the join token is not valid/),
    });
  });

  it("lets exactly one of two racing enrollments use a token", async () => {
    await insertJoinToken(db, { token: "t-race", tenantId: "prov", expiresAt: new Date(Date.now() + 60_000) });
    const results = await Promise.allSettled([
      enrollHost(db, ca, await request("t-race", "racer-a")),
      enrollHost(db, ca, await request("t-race", "racer-b")),
    ]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
  });

  it("validates the request: token, CSR, name, hostname and agent version", async () => {
    await insertJoinToken(db, { token: "t-bad", tenantId: "prov", expiresAt: new Date(Date.now() + 60_000) });
    const noToken = create(EnrollRequestSchema, { csrPem: await csr() });
    await expect(enrollHost(db, ca, noToken)).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    const junkCsr = create(EnrollRequestSchema, { joinToken: "t-bad", csrPem: "not a csr", name: "x" });
    await expect(enrollHost(db, ca, junkCsr)).rejects.toThrow(/PKCS#10/);
    await expect(enrollHost(db, ca, await request("t-bad", "bad name; rm -rf /"))).rejects.toThrow(EnrollError);
    const hugeHost = create(EnrollRequestSchema, {
      joinToken: "t-bad",
      csrPem: await csr(),
      name: "fine-name",
      facts: { hostname: "h".repeat(1_000_000) },
    });
    await expect(enrollHost(db, ca, hugeHost)).rejects.toMatchObject({
      code: status.INVALID_ARGUMENT,
      message: expect.stringMatching(/^hostname must be at most 253 printable characters \(got 1000000\)/),
    });
    const hugeVersion = create(EnrollRequestSchema, {
      joinToken: "t-bad",
      csrPem: await csr(),
      name: "fine-name",
      agentVersion: "1\n2",
    });
    await expect(enrollHost(db, ca, hugeVersion)).rejects.toThrow(/agent_version must be at most 64/);
    // The token survived the refused attempts.
    await expect(enrollHost(db, ca, await request("t-bad", "fine-name"))).resolves.toHaveProperty("hostId");
  });

  it("refuses to load a CA or server key that other users may read or write, naming the file and the fix", async () => {
    const loose = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-ca-loose-"));
    try {
      await CertificateAuthority.loadOrCreate(loose);
      expect((await fs.stat(path.join(loose, "pki", "ca.key"))).mode & 0o777).toBe(0o600);
      for (const file of ["ca.key", "server.key"]) {
        const key = path.join(loose, "pki", file);
        await fs.chmod(key, 0o644);
        const err = await CertificateAuthority.loadOrCreate(loose).catch((e: Error) => e);
        expect((err as Error).message).toMatch(
          `${key} is open to other users (mode 0644): run \`chmod 600 ${key}\` and start again`,
        );
        await fs.chmod(key, 0o600);
      }
      await expect(CertificateAuthority.loadOrCreate(loose)).resolves.toBeInstanceOf(CertificateAuthority);
    } finally {
      await fs.rm(loose, { recursive: true, force: true });
    }
  });

  it("reloads the same CA from disk, so the pinned hash survives restarts", async () => {
    const again = await CertificateAuthority.loadOrCreate(dir);
    expect(again.tls.caHash).toBe(ca.tls.caHash);
    expect(caHashOf(ca.tls.caPem)).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(again.tls.serverCertPem).toBe(ca.tls.serverCertPem);
  });
});
