// The agent's long-lived Connect stream: Hello, then telemetry on a timer and commands from the control
// plane; beside it, once the control plane asks (OpenDownloads), the Downloads stream on a connection of its
// own, where it sends restores. On any failure of either it reconnects with backoff. Writes respect backpressure.
import { EventEmitter } from "node:events";
import { create } from "@bufbuild/protobuf";
import {
  AGENT_CAPABILITIES,
  type AgentMessage,
  AgentMessageSchema,
  type ControlMessage,
  DownloadsRequestSchema,
  type EncodedMessage,
  type Inventory,
  PROTOCOL_VERSION,
  type Telemetry,
} from "@dumont/proto";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../logger.js";
import { AGENT_VERSION } from "../version.js";
import { certificateExpiry, certificateRenewalDue } from "./certificate-renewal.js";
import {
  createGatewayClient,
  type GatewayClient,
  type GatewayClientOptions,
  notSignedByPinnedCa,
} from "./grpc-client.js";
import type { Identity } from "./identity.js";
import { ReconnectBackoff } from "./reconnect-backoff.js";

export interface TelemetrySource {
  inventory(): Promise<Inventory>;
  sample(): Promise<Telemetry>;
}

/** The stream a control-plane message came on. */
export type Inbound = "connect" | "downloads";

export type CommandHandler = (message: ControlMessage, session: ControlPlaneSession, via: Inbound) => void;

/**
 * A Connect stream not welcomed within this long is cancelled and opened again, on a new connection. It also
 * keeps the process alive meanwhile: a call grpc-js put on a dead connection holds no handle open. Generous:
 * a control plane taking thousands of agents back at once after a restart welcomes them late, and cutting
 * them off early would only add reconnects to its load.
 */
const WELCOME_TIMEOUT_MS = 60_000;

/** How often a running agent looks whether its certificate is due for renewal (it also looks before connecting). */
const RENEWAL_CHECK_MS = 12 * 3_600_000;

/** Where the agent's identity lives: its data dir (agent.ts). */
export interface IdentityStore {
  /** The identity stored now (`dumont-agent renew` may have replaced the certificate meanwhile). */
  load(): Promise<Identity>;
  /** Renews the certificate (certificate-renewal.ts), stores it and returns the identity to use from then on. */
  renew(current: Identity): Promise<Identity>;
}

/** Statuses after which retrying quickly is pointless: back off to the slowest rate. */
const PERSISTENT_FAILURES = new Set([
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.INVALID_ARGUMENT,
]);

export class ControlPlaneSession extends EventEmitter {
  private client: GatewayClient;
  /** A second client, for the Downloads stream's own connection; made when first asked for it. */
  private downloadsClient: GatewayClient | undefined;
  private stream: grpc.ClientDuplexStream<AgentMessage, ControlMessage> | undefined;
  private downloads: grpc.ClientReadableStream<ControlMessage> | undefined;
  private readonly backoff = new ReconnectBackoff();
  private telemetryTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Whether a stream was opened on `client` already (a reconnect then makes a new client: see open()). */
  private clientUsed = false;
  private sampling = false;
  private readonly handlers: CommandHandler[] = [];
  private renewalTimer: NodeJS.Timeout | undefined;
  private renewing: Promise<void> | undefined;
  /** Set when a renewal replaced the identity the current clients were made with. */
  private identityRenewed = false;
  /** Milliseconds between telemetry samples in this session (see the constructor's `telemetryInterval`). */
  private telemetryIntervalMs: number;
  /** The last stream failure said at its level since the last welcome; the same again is said at debug. */
  private lastFailure: string | undefined;
  sessionId: string | undefined;

  /**
   * `telemetryInterval`: milliseconds between samples, or what makes them of the control plane's suggestion
   * (Welcome.telemetry_interval_ms, 0 when it makes none) at each welcome (config.ts telemetryIntervalMs).
   * `identityStore`: see refreshIdentity(); without one the identity never changes (tests).
   */
  constructor(
    private identity: Identity,
    private readonly telemetry: TelemetrySource,
    private readonly log: Logger,
    private readonly telemetryInterval: number | ((suggestedMs: number) => number),
    private readonly identityStore?: IdentityStore,
  ) {
    super();
    this.client = this.newClient();
    this.telemetryIntervalMs = typeof telemetryInterval === "number" ? telemetryInterval : telemetryInterval(0);
  }

  /** A gRPC client to the control plane with this host's identity (`ownConnection`: see GatewayClientOptions). */
  private newClient(options?: GatewayClientOptions): GatewayClient {
    return createGatewayClient(this.identity.server, this.identity.caPem, this.identity, options);
  }

  get hostId(): string {
    return this.identity.hostId;
  }

  get connected(): boolean {
    return this.sessionId !== undefined;
  }

  onCommand(handler: CommandHandler): void {
    this.handlers.push(handler);
  }

  start(): void {
    if (this.identityStore) {
      this.renewalTimer = setInterval(() => void this.renewIfDue(), RENEWAL_CHECK_MS);
      this.renewalTimer.unref();
    }
    this.openSoon();
  }

  /**
   * Opens the stream, in the background: a failure to open (a client shut down meanwhile) is logged and retried,
   * never an unhandled rejection, which would end the agent.
   */
  private openSoon(): void {
    this.open().catch((err: unknown) => {
      if (this.stopped) return;
      this.log.error({ err }, "cannot open the stream to the control plane; retrying");
      this.scheduleReconnect(false);
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    // A renewal in flight is not waited for: its files are stored crash-safely (identity.ts).
    clearInterval(this.renewalTimer);
    this.stopTelemetry();
    this.downloads?.cancel();
    const stream = this.stream;
    if (stream) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 1000);
        stream.once("status", () => {
          clearTimeout(t);
          resolve();
        });
        stream.end();
      });
      stream.cancel();
    }
    this.client.close();
    this.downloadsClient?.close();
  }

  /**
   * Sends a message, waiting while the stream's buffer is full. Rejects when not connected; callers
   * that must not lose data retry after the next 'connected' event. `onWritten` runs when grpc-js calls
   * back the write: for a message larger than RETRY_BUFFER_BYTES that is once HTTP/2 has written it (framed
   * in place, see grpc-framing.ts, or copied by grpc-js), so the message's buffer may be reused (for a
   * smaller one it may be sooner).
   */
  async send(message: AgentMessage | EncodedMessage, onWritten?: () => void): Promise<void> {
    const stream = this.stream;
    if (!stream || !this.connected) throw new Error("not connected to the control plane");
    // An EncodedMessage goes through the serializer unchanged (grpc-service.ts).
    if (stream.write(message as AgentMessage, onWritten && (() => onWritten()))) return;
    await new Promise<void>((resolve, reject) => {
      const onDrain = () => {
        cleanup();
        resolve();
      };
      const onGone = () => {
        cleanup();
        reject(new Error("the stream to the control plane closed while sending"));
      };
      const cleanup = () => {
        stream.off("drain", onDrain);
        stream.off("status", onGone);
        stream.off("error", onGone);
      };
      stream.on("drain", onDrain);
      stream.on("status", onGone);
      stream.on("error", onGone);
    });
  }

  private readonly pauses: Record<Inbound, number> = { connect: 0, downloads: 0 };

  /**
   * Stops taking the control plane's messages on one stream (`via`: the one a restore's chunks come on) until
   * the returned function is called (by every caller that paused): grpc-js then stops reading that HTTP/2
   * stream, and flow control holds the control plane's sends (a restore's chunks) back. Calling it again is
   * harmless; after a reconnect it does nothing (the new stream was never paused).
   */
  pauseInbound(via: Inbound = "connect"): () => void {
    const inbound = () => (via === "connect" ? this.stream : this.downloads);
    const stream = inbound();
    if (!stream) return () => {};
    if (this.pauses[via]++ === 0) stream.pause();
    let released = false;
    return () => {
      if (released || inbound() !== stream) return;
      released = true;
      if (--this.pauses[via] === 0) stream.resume();
    };
  }

  private dispatch(message: ControlMessage, via: Inbound): void {
    for (const handler of this.handlers) {
      try {
        handler(message, this, via);
      } catch (err) {
        this.log.error({ err, kind: message.msg.case }, "command handler failed");
      }
    }
  }

  /**
   * Renews the client certificate once it has a third of its validity left. The session goes on with the
   * connection it has; the next connection presents the new certificate, and the control plane accepts the old
   * one until then. A failure is logged and tried again at the next connection or check.
   */
  private renewIfDue(): Promise<void> {
    const store = this.identityStore;
    if (!store || this.stopped || !certificateRenewalDue(this.identity.certPem)) return Promise.resolve();
    this.renewing ??= (async () => {
      const expires = certificateExpiry(this.identity.certPem);
      try {
        this.identity = await store.renew(this.identity);
        this.identityRenewed = true;
        this.log.info(
          { hostId: this.hostId, expiresAt: certificateExpiry(this.identity.certPem).toISOString() },
          "client certificate renewed",
        );
      } catch (err) {
        const daysLeft = Math.floor((expires.getTime() - Date.now()) / 86_400_000);
        this.log[daysLeft < 14 ? "error" : "warn"](
          { err: (err as Error).message, expiresAt: expires.toISOString(), daysLeft },
          "cannot renew the client certificate yet; trying again later (once it expires the agent must enroll again)",
        );
      } finally {
        this.renewing = undefined;
      }
    })();
    return this.renewing;
  }

  /**
   * Before each connection: takes up a certificate renewed on disk since the last one (by `dumont-agent renew`;
   * the first connection uses the identity just loaded), then renews it if due. Each connection thus presents
   * the newest certificate, which the control plane then keeps.
   */
  private async refreshIdentity(): Promise<void> {
    const store = this.identityStore;
    if (!store) return;
    if (this.clientUsed) await this.reloadIdentity(store);
    await this.renewIfDue();
  }

  private async reloadIdentity(store: IdentityStore): Promise<void> {
    try {
      const stored = await store.load();
      if (stored.hostId !== this.hostId) {
        this.log.warn(
          { hostId: this.hostId, storedHostId: stored.hostId },
          "the data dir was enrolled again as another host; restart the agent to run as that host",
        );
      } else if (stored.certPem !== this.identity.certPem) {
        this.identity = stored;
        this.identityRenewed = true;
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "cannot read the agent's identity again; keeping the one loaded");
    }
  }

  private async open(): Promise<void> {
    if (this.stopped) return;
    await this.refreshIdentity();
    if (this.stopped) return;
    let inventory: Inventory;
    try {
      inventory = await this.telemetry.inventory();
    } catch (err) {
      this.log.error({ err }, "cannot read host inventory; retrying");
      return this.scheduleReconnect(false);
    }
    // Stopped while the inventory was read (it can take a while): no stream after stop(), and its client is
    // closed already.
    if (this.stopped) return;
    if (this.clientUsed || this.identityRenewed) {
      // A new connection for every new session. When the control plane dies mid-upload, Node's http2 can miss
      // the connection's end (nodejs/node#61304: a read error does not close the session), and grpc-js would
      // put the next call on that dead connection: seen as an agent that never came back (and, holding no
      // handle, exited) after a control-plane restart while one of its two connections had seen the end.
      this.client.close();
      this.client = this.newClient();
      this.downloadsClient?.close();
      this.downloadsClient = undefined;
      this.identityRenewed = false;
    }
    this.clientUsed = true;
    const stream = this.client.connect();
    this.stream = stream;
    let failedPersistently = false;
    const welcomeTimer = setTimeout(() => {
      this.log.warn({ afterMs: WELCOME_TIMEOUT_MS }, "the control plane did not welcome the stream; reconnecting");
      stream.cancel();
    }, WELCOME_TIMEOUT_MS);

    stream.on("data", (message: ControlMessage) => {
      if (message.msg.case === "welcome") {
        clearTimeout(welcomeTimer);
        this.sessionId = message.msg.value.sessionId;
        this.backoff.connected();
        this.lastFailure = undefined;
        const interval = this.telemetryInterval;
        this.telemetryIntervalMs =
          typeof interval === "number" ? interval : interval(message.msg.value.telemetryIntervalMs);
        this.log.info(
          {
            hostId: this.hostId,
            sessionId: this.sessionId,
            server: this.identity.server,
            telemetryIntervalMs: this.telemetryIntervalMs,
          },
          "connected to the control plane",
        );
        this.startTelemetry();
        this.emit("connected", this.sessionId);
        return;
      }
      if (message.msg.case === "openDownloads") {
        if (!this.downloads && this.sessionId) this.openDownloads(stream, this.sessionId);
        return;
      }
      this.dispatch(message, "connect");
    });
    stream.on("error", (err: grpc.ServiceError) => {
      failedPersistently = PERSISTENT_FAILURES.has(err.code);
      // Another control plane at the enrolled address is said in words, and once until a session is welcomed:
      // every retry fails the same way (the same grpc-js line was logged every 5 s, forever).
      const otherControlPlane =
        err.code === grpc.status.UNAVAILABLE ? notSignedByPinnedCa(err.details ?? "", this.identity.server) : undefined;
      if (otherControlPlane) {
        const level = otherControlPlane === this.lastFailure ? "debug" : "error";
        this.log[level]({ code: grpc.status[err.code] }, otherControlPlane);
        this.lastFailure = otherControlPlane;
        return;
      }
      const level = failedPersistently ? "error" : "warn";
      this.log[level]({ code: grpc.status[err.code], details: err.details }, "control plane stream failed");
    });
    // 'status' is the one event grpc-js always emits when a call ends, whichever side ended it
    // ('close' waits for our writable half too, which a server shutdown never ends).
    stream.on("status", (status: grpc.StatusObject) => {
      clearTimeout(welcomeTimer);
      if (this.stream !== stream) return;
      if (status.code === grpc.status.OK && !this.stopped) this.log.warn("the control plane closed the stream");
      stream.end();
      this.stream = undefined;
      this.pauses.connect = 0;
      const downloads = this.downloads;
      this.downloads = undefined;
      this.pauses.downloads = 0;
      downloads?.cancel();
      const wasConnected = this.connected;
      this.sessionId = undefined;
      this.stopTelemetry();
      if (wasConnected) this.emit("disconnected");
      this.scheduleReconnect(failedPersistently);
    });

    stream.write(
      create(AgentMessageSchema, {
        msg: {
          case: "hello",
          value: {
            hostId: this.hostId,
            agentVersion: AGENT_VERSION,
            protocolVersion: PROTOCOL_VERSION,
            inventory,
            capabilities: Object.values(AGENT_CAPABILITIES),
          },
        },
      }),
    );
  }

  /**
   * Opens the Downloads stream for the session `control` was welcomed to, which then stays open with it. Its
   * end, however it comes, ends the session (both streams reconnect): the control plane may have sent part of
   * a restore on it, and it fails a restore waiting for it to join.
   */
  private openDownloads(control: grpc.ClientDuplexStream<AgentMessage, ControlMessage>, sessionId: string): void {
    this.downloadsClient ??= this.newClient({ ownConnection: true });
    const stream = this.downloadsClient.downloads(create(DownloadsRequestSchema, { sessionId }));
    this.downloads = stream;
    let joined = false;
    stream.on("data", (message: ControlMessage) => {
      if (!joined && message.msg.case === "welcome") {
        joined = true;
        this.log.debug({ sessionId }, "downloads stream joined");
        return;
      }
      this.dispatch(message, "downloads");
    });
    stream.on("error", () => {}); // 'status' says how it ended
    stream.on("status", (status: grpc.StatusObject) => {
      if (this.downloads !== stream) return;
      this.downloads = undefined;
      this.pauses.downloads = 0;
      if (this.stream !== control || this.stopped) return; // the session has ended already
      this.log.warn(
        { code: grpc.status[status.code], details: status.details },
        "the downloads stream ended; reconnecting both streams",
      );
      control.cancel();
    });
  }

  private scheduleReconnect(slow: boolean): void {
    if (this.stopped) return;
    const delay = slow ? this.backoff.slowest() : this.backoff.next();
    this.log.info({ inMs: delay }, "reconnecting to the control plane");
    this.reconnectTimer = setTimeout(() => this.openSoon(), delay);
  }

  private startTelemetry(): void {
    this.stopTelemetry();
    const tick = () => void this.sendTelemetry();
    tick();
    this.telemetryTimer = setInterval(tick, this.telemetryIntervalMs);
  }

  private stopTelemetry(): void {
    if (this.telemetryTimer) clearInterval(this.telemetryTimer);
    this.telemetryTimer = undefined;
  }

  private async sendTelemetry(): Promise<void> {
    // A sample still being read or a full stream means the previous one has not left: skip, don't pile up.
    if (this.sampling || !this.connected) return;
    this.sampling = true;
    try {
      const sample = await this.telemetry.sample();
      await this.send(create(AgentMessageSchema, { msg: { case: "telemetry", value: sample } }));
    } catch (err) {
      if (this.connected) this.log.warn({ err }, "telemetry sample not sent");
    } finally {
      this.sampling = false;
    }
  }
}
