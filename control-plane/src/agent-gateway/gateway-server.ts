// The gRPC agent gateway on :8443. TLS always; Enroll is open to any TLS client (it authenticates with
// a join token), Connect, Downloads and Renew require a client certificate issued by our CA whose serial matches
// the host's (or the one it last renewed to).
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  AgentGateway,
  type AgentMessage,
  type ControlMessage,
  ControlMessageSchema,
  type EnrollRequest,
  type EnrollResponse,
  EnrollResponseSchema,
  grpcServiceDefinition,
  installPooledReceiving,
  MAX_MESSAGE_BYTES,
  PROTOCOL_VERSION,
  type RenewRequest,
  type RenewResponse,
  RenewResponseSchema,
  SUPPORTED_PROTOCOL_VERSIONS,
  widenFlowControlWindows,
} from "@dumont/proto";
import * as grpc from "@grpc/grpc-js";
import type { Db } from "../db/database.js";
import { hasRecentEvent, hostForCertificate, markHostOnline, recordRenewedCertificate } from "../db/host-repository.js";
import type { HostRow } from "../db/tables.js";
import type { HostLiveness } from "../failover/index.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { AgentSession, type AgentStream, type DownloadsStream, SessionRegistry } from "./agent-session.js";
import type { CertificateAuthority } from "./certificate-authority.js";
import { agentFactsProblem, EnrollError, enrollHost } from "./enrollment.js";
import type { TelemetryIngest } from "./telemetry-ingest.js";

const HELLO_TIMEOUT_MS = 10_000;

/** Handles agent messages other than Hello and Telemetry (snapshots, jobs, …). */
export type AgentMessageHandler = (session: AgentSession, message: AgentMessage) => void;

export interface GatewayDeps {
  db: Db;
  ca: CertificateAuthority;
  log: Logger;
  metrics: Metrics;
  liveness: HostLiveness;
  ingest: TelemetryIngest;
  telemetryIntervalMs: number;
  /** Renew is refused this soon after a host's certificate last changed (default RENEW_MIN_INTERVAL_S). */
  renewMinIntervalSeconds?: number;
}

/**
 * An agent renews once in months; one calling Renew in a loop would only add a certificate and a host event per
 * call. A minute still lets an agent that lost a renewal's answer (it died first) renew again soon.
 */
const RENEW_MIN_INTERVAL_S = 60;

export class AgentGatewayServer {
  readonly sessions = new SessionRegistry();
  private readonly server = new grpc.Server({
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    // Ping idle agents so a vanished peer is noticed even without traffic.
    "grpc.keepalive_time_ms": 20_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 5_000,
  });
  private readonly handlers: AgentMessageHandler[] = [];
  private readonly closeHandlers: ((session: AgentSession) => void)[] = [];

  constructor(private readonly deps: GatewayDeps) {
    // A stream paused by backpressure (pauseInbound) carries no heartbeat; its host is not silent for that.
    deps.liveness.countHeldBackAsHeard(() => this.sessions.heldBack());
    this.server.addService(grpcServiceDefinition(AgentGateway), {
      enroll: (call: grpc.ServerUnaryCall<EnrollRequest, EnrollResponse>, cb: grpc.sendUnaryData<EnrollResponse>) =>
        void this.enroll(call, cb),
      connect: (stream: AgentStream) => void this.connect(stream),
      downloads: (stream: DownloadsStream) => void this.downloads(stream),
      renew: (call: grpc.ServerUnaryCall<RenewRequest, RenewResponse>, cb: grpc.sendUnaryData<RenewResponse>) =>
        void this.renew(call, cb),
    });
  }

  onMessage(handler: AgentMessageHandler): void {
    this.handlers.push(handler);
  }

  onSessionClosed(handler: (session: AgentSession) => void): void {
    this.closeHandlers.push(handler);
  }

  async listen(host: string, port: number): Promise<number> {
    const { tls } = this.deps.ca;
    // One provider serves both roles (grpc-js's argument names for them are swapped; passing the same
    // object twice sidesteps that).
    const certificates = staticCertificates(
      tls.caPem,
      `${tls.serverCertPem.trim()}\n${tls.caPem.trim()}\n`,
      tls.serverKeyPem,
    );
    const credentials = grpc.experimental.createCertificateProviderServerCredentials(
      certificates,
      certificates,
      // Request a client certificate but do not require one: Enroll callers have none yet.
      false,
    );
    const bound = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(`${host.includes(":") ? `[${host}]` : host}:${port}`, credentials, (err, bound) =>
        err ? reject(new Error(`cannot listen on gRPC port ${port}: ${err.message}`)) : resolve(bound),
      );
    });
    widenFlowControlWindows(this.server);
    // Chunk messages are assembled in pooled shared memory the chunk verifier reads in place (the snapshot
    // coordinator gives it back once the chunks are written).
    installPooledReceiving();
    return bound;
  }

  async close(): Promise<void> {
    for (const session of this.sessions.all()) session.close();
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2000);
      this.server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }

  private async enroll(
    call: grpc.ServerUnaryCall<EnrollRequest, EnrollResponse>,
    cb: grpc.sendUnaryData<EnrollResponse>,
  ): Promise<void> {
    try {
      const { hostId, certificatePem } = await enrollHost(this.deps.db, this.deps.ca, call.request);
      this.deps.metrics.enrollments.inc({ result: "ok" });
      this.deps.log.info({ hostId, name: call.request.name }, "host enrolled");
      cb(null, create(EnrollResponseSchema, { hostId, certificatePem, caChainPem: this.deps.ca.tls.caPem }));
    } catch (err) {
      this.deps.metrics.enrollments.inc({ result: "refused" });
      if (err instanceof EnrollError) {
        this.deps.log.warn({ reason: err.message, peer: call.getPeer() }, "enrollment refused");
        cb({ code: err.code, details: err.message });
      } else {
        this.deps.log.error({ err }, "enrollment failed");
        cb({ code: grpc.status.INTERNAL, details: "enrollment failed on the control plane; see its log" });
      }
    }
  }

  /** The host whose certificate the peer presented, or undefined once the call has been refused. */
  private async authenticate(stream: AgentStream | DownloadsStream, what: string): Promise<HostRow | undefined> {
    const found = await this.hostOfPeer(stream);
    if ("refusal" in found) {
      refuseCall(this.deps.log, stream, what, grpc.status.UNAUTHENTICATED, found.refusal);
      return undefined;
    }
    return found.host;
  }

  /**
   * The host whose client certificate the peer presented (grpc-js gives the certificate only when our CA signed
   * it and it has not expired), or why it is refused. A renewed certificate becomes the host's on first use.
   */
  private async hostOfPeer(
    call: Pick<grpc.ServerUnaryCall<unknown, unknown>, "getAuthContext">,
  ): Promise<{ host: HostRow } | { refusal: string }> {
    const peer = call.getAuthContext().sslPeerCertificate;
    if (!peer) {
      return {
        refusal:
          "a valid client certificate issued by this control plane is required; run `dumont-agent enroll` (an " +
          "agent whose certificate expired must enroll again)",
      };
    }
    const hostId = peer.subject?.CN;
    const serial = String(peer.serialNumber);
    const host = typeof hostId === "string" ? await hostForCertificate(this.deps.db, hostId, serial) : undefined;
    if (!host) return { refusal: "this client certificate is not (or no longer) valid; enroll again" };
    return { host };
  }

  /** Renew: a new certificate for the host whose current (or renewed) certificate the peer presented. */
  private async renew(
    call: grpc.ServerUnaryCall<RenewRequest, RenewResponse>,
    cb: grpc.sendUnaryData<RenewResponse>,
  ): Promise<void> {
    const refuse = (code: grpc.status, details: string) => {
      this.deps.metrics.certificateRenewals.inc({ result: "refused" });
      this.deps.log.warn({ peer: call.getPeer(), reason: details }, "certificate renewal refused");
      cb({ code, details });
    };
    try {
      const found = await this.hostOfPeer(call);
      if ("refusal" in found) return refuse(grpc.status.UNAUTHENTICATED, found.refusal);
      const { host } = found;
      const minInterval = this.deps.renewMinIntervalSeconds ?? RENEW_MIN_INTERVAL_S;
      if (minInterval > 0 && (await hasRecentEvent(this.deps.db, host.id, "certificate", minInterval))) {
        return refuse(
          grpc.status.RESOURCE_EXHAUSTED,
          `this host's certificate changed less than ${minInterval} s ago; renew again later`,
        );
      }
      if (!call.request.csrPem) return refuse(grpc.status.INVALID_ARGUMENT, "csr_pem is required");
      let signed: Awaited<ReturnType<CertificateAuthority["signAgentCsr"]>>;
      try {
        signed = await this.deps.ca.signAgentCsr(call.request.csrPem, host.id);
      } catch (err) {
        return refuse(grpc.status.INVALID_ARGUMENT, (err as Error).message);
      }
      const recorded = await recordRenewedCertificate(this.deps.db, host.id, {
        currentSerial: host.cert_serial,
        nextSerial: signed.serial,
        notAfter: signed.notAfter,
      });
      if (!recorded) {
        return refuse(
          grpc.status.UNAUTHENTICATED,
          "this client certificate was replaced while renewing it (another copy of this host's identity renewed); enroll again",
        );
      }
      this.deps.metrics.certificateRenewals.inc({ result: "ok" });
      this.deps.log.info({ hostId: host.id, notAfter: signed.notAfter.toISOString() }, "agent certificate renewed");
      cb(
        null,
        create(RenewResponseSchema, { certificatePem: signed.certificatePem, caChainPem: this.deps.ca.tls.caPem }),
      );
    } catch (err) {
      this.deps.metrics.certificateRenewals.inc({ result: "failed" });
      this.deps.log.error({ err }, "certificate renewal failed");
      cb({ code: grpc.status.INTERNAL, details: "certificate renewal failed on the control plane; see its log" });
    }
  }

  private async connect(stream: AgentStream): Promise<void> {
    const refuse = (code: grpc.status, details: string) =>
      refuseCall(this.deps.log, stream, "agent stream", code, details);
    const host = await this.authenticate(stream, "agent stream");
    if (!host) return;

    const hello = await firstMessage(stream, HELLO_TIMEOUT_MS);
    if (hello?.msg.case !== "hello") {
      return refuse(grpc.status.INVALID_ARGUMENT, "the first message on the stream must be Hello");
    }
    const h = hello.msg.value;
    if (!SUPPORTED_PROTOCOL_VERSIONS.includes(h.protocolVersion)) {
      return refuse(
        grpc.status.FAILED_PRECONDITION,
        `protocol version ${h.protocolVersion} is not supported; this control plane speaks ${SUPPORTED_PROTOCOL_VERSIONS.join(", ")} — update the agent`,
      );
    }
    if (h.hostId !== host.id) {
      return refuse(
        grpc.status.PERMISSION_DENIED,
        `Hello.host_id ${JSON.stringify(h.hostId.slice(0, 64))} does not match the certificate (${host.id})`,
      );
    }

    const inventory = h.inventory;
    const hostname = inventory?.facts?.hostname ?? host.hostname;
    const factsProblem = agentFactsProblem({ agentVersion: h.agentVersion, hostname });
    if (factsProblem) return refuse(grpc.status.INVALID_ARGUMENT, factsProblem);

    const session = new AgentSession(host.id, randomUUID(), host.tenant_id, stream, new Set(h.capabilities));
    this.sessions.add(session);
    this.deps.metrics.sessions.set(this.sessions.size);
    // Watched from here, before the first await: a stream that closes while the host is marked online still
    // leaves the registry and tells the close handlers.
    let closed = false;
    const finished = () => {
      if (closed) return;
      closed = true;
      this.sessions.remove(session);
      this.deps.metrics.sessions.set(this.sessions.size);
      for (const handler of this.closeHandlers) handler(session);
    };
    stream.on("end", () => {
      finished();
      stream.end();
    });
    stream.on("error", finished);
    stream.on("close", finished);
    await markHostOnline(this.deps.db, host.id, {
      agentVersion: h.agentVersion,
      protocolVersion: h.protocolVersion,
      simulated: inventory?.simulated ?? false,
      hostname,
      now: new Date(),
      certExpiresAt: certificateExpiry(stream),
    });
    if (closed) return; // liveness marks the host lost if no other session comes
    this.deps.liveness.heartbeat(host.id);
    this.deps.log.info(
      { hostId: host.id, sessionId: session.sessionId, agentVersion: h.agentVersion },
      "agent connected",
    );

    // firstMessage() paused the stream; resume only now that a handler is attached.
    stream.on("data", (message: AgentMessage) => this.dispatch(session, message));
    stream.resume();

    await session.send(this.welcome(session.sessionId)).catch(() => undefined);
  }

  /** The first message on each of a session's streams. */
  private welcome(sessionId: string): ControlMessage {
    return create(ControlMessageSchema, {
      msg: {
        case: "welcome",
        value: { sessionId, protocolVersion: PROTOCOL_VERSION, telemetryIntervalMs: this.deps.telemetryIntervalMs },
      },
    });
  }

  /**
   * Joins an agent's Downloads stream to its open session; the first message says it was (a Welcome). The
   * session must be open on this process: with several replicas behind one address (DESIGN §8, not built yet),
   * OpenDownloads will have to carry the address of the replica holding the session, or the second connection
   * may land on another one and be refused here.
   */
  private async downloads(stream: DownloadsStream): Promise<void> {
    const host = await this.authenticate(stream, "downloads stream");
    if (!host) return;
    const session = this.sessions.get(host.id);
    const sessionId = stream.request.sessionId;
    if (!session?.isOpen || session.sessionId !== sessionId) {
      return refuseCall(
        this.deps.log,
        stream,
        "downloads stream",
        grpc.status.FAILED_PRECONDITION,
        `session ${JSON.stringify(sessionId)} of host ${host.id} is not open here: open Connect first, and ` +
          `name the session its Welcome gave`,
      );
    }
    if (!session.attachDownloads(stream, this.welcome(sessionId))) {
      return refuseCall(
        this.deps.log,
        stream,
        "downloads stream",
        grpc.status.ALREADY_EXISTS,
        `session ${sessionId} of host ${host.id} already has a downloads stream`,
      );
    }
    this.deps.log.debug({ hostId: host.id, sessionId }, "agent downloads stream joined");
  }

  /**
   * Closes the streams this replica holds of these hosts: liveness declared them lost while their streams stayed
   * open (their messages held back past lost-after: an nvidia-smi that hangs, a frozen agent). Only a Hello brings a
   * host back online, so left open such a host read as lost until its agent happened to reconnect; closed, the agent
   * reconnects and says Hello at once (or, if it is truly stuck, stays lost).
   */
  closeSessionsOf(hostIds: readonly string[]): void {
    for (const hostId of hostIds) {
      const session = this.sessions.get(hostId);
      if (!session?.isOpen) continue;
      this.deps.log.warn(
        { hostId, sessionId: session.sessionId },
        "host declared lost while its stream was open; closing the stream so its agent reconnects",
      );
      session.close();
    }
  }

  private dispatch(session: AgentSession, message: AgentMessage): void {
    switch (message.msg.case) {
      case "telemetry":
        // The telemetry write stamps last_seen_at itself; a separate heartbeat write of every host each
        // second would queue ahead of telemetry (it was the p99 tail at 5,000 hosts).
        this.deps.ingest.add(session.hostId, message.msg.value);
        return;
      case "hello":
        this.deps.liveness.heartbeat(session.hostId);
        return;
      default:
        this.deps.liveness.heartbeat(session.hostId);
        for (const handler of this.handlers) {
          try {
            handler(session, message);
          } catch (err) {
            this.deps.log.error(
              { err, hostId: session.hostId, kind: message.msg.case },
              "agent message handler failed",
            );
          }
        }
    }
  }
}

/** When the client certificate a call was opened with expires, or undefined if it cannot be read. */
function certificateExpiry(call: Pick<grpc.ServerUnaryCall<unknown, unknown>, "getAuthContext">): Date | undefined {
  const validTo = call.getAuthContext().sslPeerCertificate?.valid_to;
  const at = validTo ? new Date(validTo) : undefined;
  return at && !Number.isNaN(at.getTime()) ? at : undefined;
}

/** Ends a call with a status (grpc-js turns an 'error' event on a server stream into the call's status). */
function refuseCall(
  log: Logger,
  stream: AgentStream | DownloadsStream,
  what: string,
  code: grpc.status,
  details: string,
): void {
  log.warn({ peer: stream.getPeer(), reason: details }, `${what} refused`);
  stream.emit("error", Object.assign(new Error(details), { code, details }));
}

/** Waits for the first message and leaves the stream paused, so nothing is emitted before a handler exists. */
function firstMessage(stream: AgentStream, timeoutMs: number): Promise<AgentMessage | undefined> {
  return new Promise((resolve) => {
    const done = (m: AgentMessage | undefined) => {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.off("error", onEnd);
      resolve(m);
    };
    const onData = (m: AgentMessage) => {
      stream.pause();
      done(m);
    };
    const onEnd = () => done(undefined);
    const timer = setTimeout(() => done(undefined), timeoutMs);
    stream.on("data", onData);
    stream.on("end", onEnd);
    stream.on("error", onEnd);
  });
}

/**
 * A grpc-js CertificateProvider that hands out fixed PEMs. Listeners are called on the next tick:
 * grpc-js registers its watcher only after adding the listener, and would miss a synchronous call.
 */
function staticCertificates(
  caPem: string,
  certChainPem: string,
  keyPem: string,
): grpc.experimental.CertificateProvider {
  const ca = { caCertificate: Buffer.from(caPem) };
  const identity = { certificate: Buffer.from(certChainPem), privateKey: Buffer.from(keyPem) };
  return {
    addCaCertificateListener: (listener) => setImmediate(() => listener(ca)),
    removeCaCertificateListener: () => {},
    addIdentityCertificateListener: (listener) => setImmediate(() => listener(identity)),
    removeIdentityCertificateListener: () => {},
  };
}
