// The agent's one long-lived Connect stream: Hello, then telemetry on a timer and commands from the
// control plane; on any failure it reconnects with backoff. Writes respect backpressure.
import { EventEmitter } from "node:events";
import { create } from "@bufbuild/protobuf";
import {
  AGENT_CAPABILITIES,
  type AgentMessage,
  AgentMessageSchema,
  type ControlMessage,
  type EncodedMessage,
  type Inventory,
  PROTOCOL_VERSION,
  type Telemetry,
} from "@dumont/proto";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../logger.js";
import { AGENT_VERSION } from "../version.js";
import { createGatewayClient, type GatewayClient } from "./grpc-client.js";
import type { Identity } from "./identity.js";
import { ReconnectBackoff } from "./reconnect-backoff.js";

export interface TelemetrySource {
  inventory(): Promise<Inventory>;
  sample(): Promise<Telemetry>;
}

export type CommandHandler = (message: ControlMessage, session: ControlPlaneSession) => void;

/** Statuses after which retrying quickly is pointless: back off to the slowest rate. */
const PERSISTENT_FAILURES = new Set([
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.INVALID_ARGUMENT,
]);

export class ControlPlaneSession extends EventEmitter {
  private client: GatewayClient;
  private stream: grpc.ClientDuplexStream<AgentMessage, ControlMessage> | undefined;
  private readonly backoff = new ReconnectBackoff();
  private telemetryTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private sampling = false;
  private readonly handlers: CommandHandler[] = [];
  sessionId: string | undefined;

  constructor(
    private readonly identity: Identity,
    private readonly telemetry: TelemetrySource,
    private readonly log: Logger,
    private readonly telemetryIntervalMs: number,
  ) {
    super();
    this.client = createGatewayClient(identity.server, identity.caPem, identity);
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
    void this.open();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    this.stopTelemetry();
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

  private pauses = 0;

  /**
   * Stops taking the control plane's messages until the returned function is called (by every caller that
   * paused): grpc-js then stops reading the HTTP/2 stream, and flow control holds the control plane's sends
   * (a restore's chunks) back. Calling it again is harmless; after a reconnect it does nothing (the new
   * stream was never paused).
   */
  pauseInbound(): () => void {
    const stream = this.stream;
    if (!stream) return () => {};
    if (this.pauses++ === 0) stream.pause();
    let released = false;
    return () => {
      if (released || this.stream !== stream) return;
      released = true;
      if (--this.pauses === 0) stream.resume();
    };
  }

  private async open(): Promise<void> {
    if (this.stopped) return;
    let inventory: Inventory;
    try {
      inventory = await this.telemetry.inventory();
    } catch (err) {
      this.log.error({ err }, "cannot read host inventory; retrying");
      return this.scheduleReconnect(false);
    }
    const stream = this.client.connect();
    this.stream = stream;
    let failedPersistently = false;

    stream.on("data", (message: ControlMessage) => {
      if (message.msg.case === "welcome") {
        this.sessionId = message.msg.value.sessionId;
        this.backoff.reset();
        this.log.info({ hostId: this.hostId, sessionId: this.sessionId }, "connected to the control plane");
        this.startTelemetry();
        this.emit("connected", this.sessionId);
        return;
      }
      for (const handler of this.handlers) {
        try {
          handler(message, this);
        } catch (err) {
          this.log.error({ err, kind: message.msg.case }, "command handler failed");
        }
      }
    });
    stream.on("error", (err: grpc.ServiceError) => {
      failedPersistently = PERSISTENT_FAILURES.has(err.code);
      const level = failedPersistently ? "error" : "warn";
      this.log[level]({ code: grpc.status[err.code], details: err.details }, "control plane stream failed");
    });
    // 'status' is the one event grpc-js always emits when a call ends, whichever side ended it
    // ('close' waits for our writable half too, which a server shutdown never ends).
    stream.on("status", (status: grpc.StatusObject) => {
      if (this.stream !== stream) return;
      if (status.code === grpc.status.OK && !this.stopped) this.log.warn("the control plane closed the stream");
      stream.end();
      this.stream = undefined;
      this.pauses = 0;
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

  private scheduleReconnect(slow: boolean): void {
    if (this.stopped) return;
    const delay = slow ? this.backoff.slowest() : this.backoff.next();
    this.log.info({ inMs: delay }, "reconnecting to the control plane");
    this.reconnectTimer = setTimeout(() => void this.open(), delay);
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
