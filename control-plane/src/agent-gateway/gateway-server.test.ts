// The gateway over real TLS on loopback: who may open a session, what a Hello may write to the host row, and how
// a host renews its certificate.
import "reflect-metadata";
import { randomBytes, type webcrypto } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import {
  AgentGateway,
  type AgentMessage,
  AgentMessageSchema,
  CONTROL_PLANE_TLS_NAME,
  type ControlMessage,
  EnrollRequestSchema,
  grpcServiceDefinition,
  isPooledMessageMemory,
  PROTOCOL_VERSION,
  type RenewRequest,
  RenewRequestSchema,
  releaseReceivedMessage,
} from "@dumont/proto";
import * as grpc from "@grpc/grpc-js";
import * as x509 from "@peculiar/x509";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTenant, insertJoinToken } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { getHost, listEvents } from "../db/host-repository.js";
import { openTestDatabase } from "../db/test-database.js";
import { HostLiveness } from "../failover/index.js";
import { createMetrics } from "../metrics.js";
import type { AgentSession } from "./agent-session.js";
import { CertificateAuthority } from "./certificate-authority.js";
import { enrollHost } from "./enrollment.js";
import { AgentGatewayServer } from "./gateway-server.js";
import { TelemetryIngest } from "./telemetry-ingest.js";

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

async function pem(key: webcrypto.CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await crypto.subtle.exportKey("pkcs8", key), "PRIVATE KEY");
}

describe("AgentGatewayServer", () => {
  let db: Db;
  let closeDb: () => Promise<void>;
  let dir: string;
  let ca: CertificateAuthority;
  let gateway: AgentGatewayServer;
  let port: number;
  let host: { id: string; keyPem: string; certPem: string; serial: string };
  const Client = grpc.makeGenericClientConstructor(grpcServiceDefinition(AgentGateway), "AgentGateway");
  const clients: grpc.Client[] = [];

  const client = (identity?: { keyPem: string; certPem: string }, at = port) => {
    const c = new Client(
      `127.0.0.1:${at}`,
      grpc.credentials.createSsl(
        Buffer.from(ca.tls.caPem),
        identity ? Buffer.from(identity.keyPem) : null,
        identity ? Buffer.from(identity.certPem) : null,
      ),
      { "grpc.ssl_target_name_override": CONTROL_PLANE_TLS_NAME },
    );
    clients.push(c);
    return c;
  };

  /** Calls Renew with `identity` (at `at`, a port: this describe's gateway by default). */
  const renewal = async (identity: { keyPem: string; certPem: string } | undefined, csrPem?: string, at = port) => {
    const keys = (await crypto.subtle.generateKey(ALG, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=x", keys, signingAlgorithm: ALG });
    const c = client(identity, at) as unknown as {
      renew: (r: RenewRequest, cb: (err: grpc.ServiceError | null, res?: { certificatePem: string }) => void) => void;
    };
    return new Promise<{ keyPem: string; certPem: string } | grpc.ServiceError>((resolve) =>
      c.renew(create(RenewRequestSchema, { csrPem: csrPem ?? csr.toString("pem") }), async (err, res) =>
        resolve(err ?? { keyPem: await pem(keys.privateKey), certPem: res?.certificatePem ?? "" }),
      ),
    );
  };

  /** A gateway on this test's database and CA (Renew's limit at its default, and a liveness of its own, unless told). */
  const newGateway = (options: { renewMinIntervalSeconds?: number; liveness?: HostLiveness } = {}) => {
    const log = pino({ level: "silent" });
    const metrics = createMetrics();
    return new AgentGatewayServer({
      db,
      ca,
      log,
      metrics,
      liveness: new HostLiveness(db, log, metrics, { lostAfterSeconds: 60 }),
      ingest: new TelemetryIngest(db, log, metrics),
      telemetryIntervalMs: 1000,
      ...options,
    });
  };

  beforeAll(async () => {
    ({ db, close: closeDb } = await openTestDatabase());
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-gw-"));
    ca = await CertificateAuthority.loadOrCreate(dir);
    await ensureTenant(db, "prov", "A provider");
    await insertJoinToken(db, { token: "t-gw", tenantId: "prov", expiresAt: new Date(Date.now() + 60_000) });
    const keys = (await crypto.subtle.generateKey(ALG, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: "CN=agent",
      keys,
      signingAlgorithm: ALG,
    });
    const enrolled = await enrollHost(
      db,
      ca,
      create(EnrollRequestSchema, { joinToken: "t-gw", csrPem: csr.toString("pem"), name: "box", agentVersion: "1" }),
    );
    host = {
      id: enrolled.hostId,
      keyPem: await pem(keys.privateKey),
      certPem: enrolled.certificatePem,
      serial: new x509.X509Certificate(enrolled.certificatePem).serialNumber,
    };
    gateway = newGateway({ renewMinIntervalSeconds: 0 });
    port = await gateway.listen("127.0.0.1", 0);
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await gateway?.close();
    await closeDb();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("refuses a self-made certificate that copies an enrolled host's id and serial", async () => {
    const keys = (await crypto.subtle.generateKey(ALG, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    const forged = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: host.serial,
      name: `CN=${host.id}`,
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 86_400_000),
      keys,
      signingAlgorithm: ALG,
    });
    const outcome = await streamOutcome(
      client({ keyPem: await pem(keys.privateKey), certPem: forged.toString("pem") }),
      hello(host.id),
    );
    expect(outcome.code).toBe(grpc.status.UNAUTHENTICATED);
  });

  it("refuses a Hello whose agent version or hostname is not a short line of text, and stores none of it", async () => {
    const huge = await streamOutcome(client(host), hello(host.id, { agentVersion: "v".repeat(1_000_000) }));
    expect(huge.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(huge.details).toMatch(/agent_version must be at most 64 printable characters/);
    expect(huge.details.length).toBeLessThan(300);

    const newline = await streamOutcome(client(host), hello(host.id, { hostname: "box\nFAKE LOG LINE" }));
    expect(newline.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(newline.details).toMatch(/hostname must be at most 253 printable characters/);

    const impostor = await streamOutcome(client(host), hello(`h-${"x".repeat(1_000_000)}`));
    expect(impostor.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(impostor.details.length).toBeLessThan(300);

    const row = await getHost(db, host.id);
    expect(row).toMatchObject({ agent_version: "1", status: "lost" });
  });

  it("renews a host's certificate: the old one serves until the new one is first used, then only the new one", async () => {
    const serialOf = (certPem: string) => new x509.X509Certificate(certPem).serialNumber;

    expect(await renewal(undefined)).toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    expect(await renewal(host, "not a csr")).toMatchObject({ code: grpc.status.INVALID_ARGUMENT });

    // A first renewal whose answer the agent never stored, then a second: only the second one counts.
    const lost = (await renewal(host)) as { keyPem: string; certPem: string };
    const renewed = (await renewal(host)) as { keyPem: string; certPem: string };
    const cert = new x509.X509Certificate(renewed.certPem);
    expect(cert.subject).toBe(`CN=${host.id}`);
    expect(await cert.verify({ publicKey: await new x509.X509Certificate(ca.tls.caPem).publicKey.export() })).toBe(
      true,
    );
    expect(await getHost(db, host.id)).toMatchObject({
      cert_serial: host.serial,
      next_cert_serial: serialOf(renewed.certPem),
    });

    // Until the new certificate is used, the old one still opens sessions; the lost one never does.
    expect((await streamOutcome(client(host), hello(host.id))).code).toBe("welcome");
    expect((await streamOutcome(client(lost), hello(host.id))).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await streamOutcome(client(renewed), hello(host.id))).code).toBe("welcome");
    expect(await getHost(db, host.id)).toMatchObject({
      cert_serial: serialOf(renewed.certPem),
      next_cert_serial: null,
    });
    const old = await streamOutcome(client(host), hello(host.id));
    expect(old).toMatchObject({ code: grpc.status.UNAUTHENTICATED, details: expect.stringMatching(/no longer/) });
    expect(await renewal(host)).toMatchObject({ code: grpc.status.UNAUTHENTICATED });

    const events = (await listEvents(db, host.id)).filter((e) => e.kind === "certificate").map((e) => e.message);
    expect(events).toEqual([
      expect.stringMatching(/^certificate renewed, valid until \d{4}-/),
      expect.stringMatching(/^certificate renewed, valid until /),
      "the agent now uses its renewed certificate",
    ]);
    host = { ...host, ...renewed, serial: serialOf(renewed.certPem) };
  });

  it("refuses a renewal within a minute of the host's certificate last changing", async () => {
    const limited = newGateway();
    try {
      const limitedPort = await limited.listen("127.0.0.1", 0);
      // The test above renewed this host's certificate and used the new one moments ago.
      expect(await renewal(host, undefined, limitedPort)).toMatchObject({
        code: grpc.status.RESOURCE_EXHAUSTED,
        details: "this host's certificate changed less than 60 s ago; renew again later",
      });
      expect(await getHost(db, host.id)).toMatchObject({ next_cert_serial: null });
    } finally {
      await limited.close();
    }
  });

  it("hands an agent's large messages to the handlers in pooled memory, and small ones in ordinary memory", async () => {
    // What the gateway's listen sets up for the snapshot coordinator: chunk messages assembled in shared
    // memory its chunk verifier reads in place (proto's pooled-receiving.ts; the coordinator's tests give it back).
    const received: AgentMessage[] = [];
    const handler = (_session: AgentSession, message: AgentMessage) => {
      if (message.msg.case === "snapshotChunks") received.push(message);
    };
    gateway.onMessage(handler);
    const large = randomBytes(100_000);
    const small = randomBytes(1_000);
    const chunks = (blob: Buffer) =>
      create(AgentMessageSchema, {
        msg: {
          case: "snapshotChunks",
          value: { requestId: "r1", chunks: [{ id: randomBytes(32), blob, plainLength: blob.length }] },
        },
      });
    const stream = (
      client(host) as unknown as { connect: () => grpc.ClientDuplexStream<AgentMessage, ControlMessage> }
    ).connect();
    stream.on("error", () => {});
    stream.on("data", (m: ControlMessage) => {
      if (m.msg.case !== "welcome") return;
      stream.write(chunks(large));
      stream.write(chunks(small));
    });
    stream.write(hello(host.id));
    await expect.poll(() => received.length, { timeout: 5000 }).toBe(2);
    stream.cancel();
    const blobs = received.map((m) =>
      m.msg.case === "snapshotChunks" ? m.msg.value.chunks[0].blob : new Uint8Array(),
    );
    expect(Buffer.from(blobs[0]).equals(large)).toBe(true);
    expect(isPooledMessageMemory(blobs[0])).toBe(true);
    expect(Buffer.from(blobs[1]).equals(small)).toBe(true);
    expect(isPooledMessageMemory(blobs[1])).toBe(false);
    releaseReceivedMessage(blobs[0]);
    expect(isPooledMessageMemory(blobs[0])).toBe(false);
  });

  it("welcomes the enrolled host's own Hello", async () => {
    const outcome = await streamOutcome(client(host), hello(host.id));
    expect(outcome.code).toBe("welcome");
    const row = await getHost(db, host.id);
    expect(row).toMatchObject({ status: "online", agent_version: "0.1.0", hostname: "box-1" });
    // The expiry of the certificate the session was opened with (the renewed one, after the test above).
    expect(row?.cert_expires_at?.getTime()).toBe(new x509.X509Certificate(host.certPem).notAfter.getTime());
  });

  it("keeps a host online while the gateway holds its stream back past the liveness limit, and not once it reads again", async () => {
    const liveness = new HostLiveness(db, pino({ level: "silent" }), createMetrics(), {
      lostAfterSeconds: 10,
      startedAt: Date.now() - 600_000, // the start-up grace is over
    });
    const holding = newGateway({ liveness });
    try {
      const holdingPort = await holding.listen("127.0.0.1", 0);
      // What the snapshot coordinator does while chunks wait on a slow blob store: it stops reading the stream.
      let held: AgentSession | undefined;
      holding.onMessage((session) => {
        session.pauseInbound();
        held = session;
      });
      const stream = (
        client(host, holdingPort) as unknown as { connect: () => grpc.ClientDuplexStream<AgentMessage, ControlMessage> }
      ).connect();
      stream.on("error", () => {});
      stream.on("data", (m: ControlMessage) => {
        if (m.msg.case !== "welcome") return;
        const blob = randomBytes(1_000);
        stream.write(
          create(AgentMessageSchema, {
            msg: {
              case: "snapshotChunks",
              value: { requestId: "r2", chunks: [{ id: randomBytes(32), blob, plainLength: 1_000 }] },
            },
          }),
        );
      });
      stream.write(hello(host.id));
      await expect.poll(() => held, { timeout: 5000 }).toBeDefined();
      const t0 = Date.now();
      await liveness.check(new Date(t0)); // writes what the host was last heard at: its Hello and its chunks
      expect(await liveness.check(new Date(t0 + 30_000))).toEqual([]);
      expect(await getHost(db, host.id)).toMatchObject({ status: "online" });
      // Read again, and silent for longer than the limit: lost, as any host.
      held?.resumeInbound();
      expect(await liveness.check(new Date(t0 + 60_000))).toEqual([host.id]);
      stream.cancel();
    } finally {
      await holding.close();
    }
  });

  it("closes the open stream of a host declared lost, so that its agent reconnects and is online again", async () => {
    let gateway: ReturnType<typeof newGateway> | undefined;
    const liveness = new HostLiveness(db, pino({ level: "silent" }), createMetrics(), {
      lostAfterSeconds: 10,
      startedAt: Date.now() - 600_000,
      onLost: (hostIds) => gateway?.closeSessionsOf(hostIds),
    });
    gateway = newGateway({ liveness });
    try {
      const at = await gateway.listen("127.0.0.1", 0);
      const stream = (
        client(host, at) as unknown as { connect: () => grpc.ClientDuplexStream<AgentMessage, ControlMessage> }
      ).connect();
      stream.on("error", () => {});
      let welcomed = false;
      stream.on("data", (m: ControlMessage) => {
        if (m.msg.case === "welcome") welcomed = true;
      });
      const ended = new Promise<void>((resolve) => stream.on("end", () => resolve()));
      stream.write(hello(host.id));
      await expect.poll(() => welcomed, { timeout: 20_000 }).toBe(true);
      // The agent's messages held back past lost-after (a hung nvidia-smi): lost, though its stream is open.
      const t0 = Date.now();
      await liveness.check(new Date(t0));
      expect(await liveness.check(new Date(t0 + 60_000))).toEqual([host.id]);
      await ended; // closed by the control plane: the agent reconnects, and its Hello marks it online
      expect(gateway.sessions.get(host.id)).toBeUndefined();
    } finally {
      await gateway.close();
    }
  });
});

function hello(hostId: string, over: { agentVersion?: string; hostname?: string } = {}): AgentMessage {
  return create(AgentMessageSchema, {
    msg: {
      case: "hello",
      value: {
        hostId,
        agentVersion: over.agentVersion ?? "0.1.0",
        protocolVersion: PROTOCOL_VERSION,
        inventory: { facts: { hostname: over.hostname ?? "box-1" } },
      },
    },
  });
}

/** Opens a Connect stream, sends `first`, and reports how the server ended it ("welcome" if it welcomed it). */
function streamOutcome(
  client: grpc.Client,
  first: AgentMessage,
): Promise<{ code: grpc.status | "welcome"; details: string }> {
  return new Promise((resolve) => {
    const stream = (
      client as unknown as { connect: () => grpc.ClientDuplexStream<AgentMessage, ControlMessage> }
    ).connect();
    stream.on("data", (m: ControlMessage) => {
      if (m.msg.case === "welcome") {
        resolve({ code: "welcome", details: "" });
        stream.cancel();
      }
    });
    stream.on("error", () => {});
    stream.on("status", (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details }));
    stream.write(first);
  });
}
