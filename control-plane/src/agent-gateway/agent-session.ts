// One agent's open Connect stream (and its Downloads stream, when it opened one): sends with backpressure,
// and lets other parts of the control plane reach a host by id (the registry).

import { create } from "@bufbuild/protobuf";
import {
  AGENT_CAPABILITIES,
  type AgentMessage,
  type ControlMessage,
  ControlMessageSchema,
  type DownloadsRequest,
  type EncodedMessage,
} from "@dumont/proto";
import type { ServerDuplexStream, ServerWritableStream } from "@grpc/grpc-js";
import { FailedPreconditionError } from "../errors.js";

export type AgentStream = ServerDuplexStream<AgentMessage, ControlMessage>;
/** How long a restore waits for the agent to open its Downloads stream once asked. */
export const DOWNLOADS_OPEN_TIMEOUT_MS = 10_000;
/** The agent's Downloads stream (a second connection for the control plane's bulk sends). */
export type DownloadsStream = ServerWritableStream<DownloadsRequest, ControlMessage>;

/** Where a message to one agent goes: its session (the Connect stream) or its Downloads stream. */
export interface AgentSender {
  /** See AgentSession.send. */
  send(message: ControlMessage | EncodedMessage, onWritten?: () => void): Promise<void>;
  /** Which connection: "connect" or "downloads" (a metric label). */
  readonly connection: "connect" | "downloads";
}

/** Writes to one server stream with backpressure; fails the writes waiting on it once it closes. */
class Outbound implements AgentSender {
  private closed = false;
  private readonly waiters = new Set<(ok: boolean) => void>();

  constructor(
    private readonly hostId: string,
    readonly stream: AgentStream | DownloadsStream,
    readonly connection: "connect" | "downloads",
    onClosed: () => void,
  ) {
    stream.on("drain", () => this.wake(true));
    const closed = () => {
      if (this.closed) return;
      this.markClosed();
      onClosed();
    };
    stream.on("close", closed);
    stream.on("error", closed);
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  async send(message: ControlMessage | EncodedMessage, onWritten?: () => void): Promise<void> {
    if (this.closed) throw new FailedPreconditionError(`host ${this.hostId} is not connected`);
    // An EncodedMessage goes through the serializer unchanged (grpc-service.ts). The write callback runs once
    // grpc-js has framed the message into its own buffer and handed it to HTTP/2 (or the write failed): a
    // grpc-js server frames synchronously in sendMessage. (Not so on the client: there the retry layer calls
    // back a small message's write on the next tick, before the framing copy; the agent does not reuse.)
    if (this.stream.write(message as ControlMessage, onWritten && (() => onWritten()))) return;
    const ok = await new Promise<boolean>((resolve) => this.waiters.add(resolve));
    if (!ok) throw new FailedPreconditionError(`host ${this.hostId} disconnected while sending`);
  }

  end(): void {
    if (this.closed) return;
    this.markClosed();
    this.stream.end();
  }

  private markClosed(): void {
    this.closed = true;
    for (const w of this.waiters) w(false);
    this.waiters.clear();
  }

  private wake(ok: boolean): void {
    for (const w of this.waiters) w(ok);
    this.waiters.clear();
  }
}

export class AgentSession implements AgentSender {
  readonly connection = "connect";
  private readonly control: Outbound;
  private downloadsOut: Outbound | undefined;
  /** Restores waiting for the Downloads stream the agent was asked to open (OpenDownloads sent while any wait). */
  private readonly downloadsWaiters = new Set<(out: Outbound | undefined) => void>();

  constructor(
    readonly hostId: string,
    readonly sessionId: string,
    readonly tenantId: string,
    private readonly stream: AgentStream,
    /** What the agent announced in Hello.capabilities (AGENT_CAPABILITIES). */
    private readonly capabilities: ReadonlySet<string> = new Set(),
  ) {
    this.control = new Outbound(hostId, stream, "connect", () => this.closeDownloads());
  }

  get isOpen(): boolean {
    return this.control.isOpen;
  }

  /**
   * Refuses (FailedPrecondition) a request that needs `capability` when this agent did not announce it: an
   * older agent would ignore the fields asking for it and do something other than what was asked.
   */
  require(capability: string, what: string): void {
    if (this.capabilities.has(capability)) return;
    throw new FailedPreconditionError(
      `host ${this.hostId} runs an agent too old to ${what} (it does not announce "${capability}"): update the ` +
        `agent on that host, or ask without it`,
    );
  }

  /**
   * Sends one message on the Connect stream. Resolves once the stream accepts more (write() returned true or
   * 'drain'), so a fast producer cannot buffer unbounded data in memory; rejects if the stream closed (a
   * FailedPreconditionError: an operation that loses its host says so to the caller, not "internal error").
   * `onWritten` runs once the message's bytes have been copied on, so its buffer may be reused.
   */
  send(message: ControlMessage | EncodedMessage, onWritten?: () => void): Promise<void> {
    return this.control.send(message, onWritten);
  }

  /**
   * Joins the agent's Downloads stream (a connection of its own) to this session. It lives and dies with the
   * session: ended when the session closes, and closing the session when it fails (the agent then reconnects
   * both), so an operation never loses half its messages to a stream that went away without noticing.
   * `welcome` is written first, before any restore waiting for the stream can send. Returns false, touching
   * nothing, when the session is closed or already has one.
   */
  attachDownloads(stream: DownloadsStream, welcome: ControlMessage): boolean {
    if (!this.isOpen || this.downloadsOut?.isOpen) return false;
    const out = new Outbound(this.hostId, stream, "downloads", () => this.close());
    this.downloadsOut = out;
    out.send(welcome).catch(() => undefined); // its write goes first; a failure closes the session
    for (const w of this.downloadsWaiters) w(out);
    this.downloadsWaiters.clear();
    return true;
  }

  /**
   * Where an operation that sends much to the agent (a restore) sends all its messages, chosen once per
   * operation so they keep their order: the agent's Downloads stream, which it is asked to open (OpenDownloads)
   * the first time one is needed and which then stays open with the session; the Connect stream for an agent
   * of before it. Two connections, because Node's HTTP/2 stops reading a connection while one of its writes is
   * in progress (protocol.ts, FLOW_CONTROL_WINDOW_BYTES): with bulk data both ways on one connection, a
   * snapshot's upload and a restore's download at once could each wait on the other for good. Opened on demand,
   * not with every session: an idle host (most of them) holds one connection, not two.
   *
   * Rejects (FailedPrecondition) when an agent that announces the stream has not opened it within `timeoutMs`
   * (a restore then fails clearly rather than risk the one connection), or when the session closes meanwhile.
   */
  async bulkSender(timeoutMs = DOWNLOADS_OPEN_TIMEOUT_MS): Promise<AgentSender> {
    if (this.downloadsOut?.isOpen) return this.downloadsOut;
    if (!this.capabilities.has(AGENT_CAPABILITIES.downloads)) return this;
    let waiter: ((out: Outbound | undefined) => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    const joined = new Promise<Outbound | undefined | "timeout">((resolve) => {
      waiter = resolve;
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    const first = this.downloadsWaiters.size === 0;
    this.downloadsWaiters.add(waiter!);
    try {
      if (first) {
        // Not awaited on its own: an agent that stopped reading its stream would hold the send, and the restore
        // waiting here with its tenant's lock, for good. The timeout covers it; a failed send ends every wait.
        this.send(create(ControlMessageSchema, { msg: { case: "openDownloads", value: {} } })).catch(() => {
          for (const waiting of this.downloadsWaiters) waiting(undefined);
        });
      }
      const out = await joined;
      if (out === "timeout") {
        throw new FailedPreconditionError(
          `host ${this.hostId} did not open its downloads connection within ${timeoutMs / 1000} s; check that it ` +
            `can open a second connection to the control plane's gRPC port, that it still reads its stream, and ` +
            `see the agent's log`,
        );
      }
      if (!out) throw new FailedPreconditionError(`host ${this.hostId} disconnected before the restore started`);
      return out;
    } finally {
      clearTimeout(timer);
      this.downloadsWaiters.delete(waiter!);
    }
  }

  private pauses = 0;

  /**
   * Stops reading the agent's messages until every pause is matched by a resume, so HTTP/2 flow
   * control slows the agent down while we write what it sent.
   */
  pauseInbound(): void {
    if (this.pauses++ === 0) this.stream.pause();
  }

  /** Whether this side has stopped reading the agent's messages (pauseInbound). */
  get inboundPaused(): boolean {
    return this.pauses > 0;
  }

  resumeInbound(): void {
    if (this.pauses > 0 && --this.pauses === 0) this.stream.resume();
  }

  close(): void {
    this.closeDownloads();
    this.control.end();
  }

  private closeDownloads(): void {
    this.downloadsOut?.end();
    for (const w of this.downloadsWaiters) w(undefined);
    this.downloadsWaiters.clear();
  }
}

/** The sessions this replica holds, by host id. A newer session for a host replaces the older. */
export class SessionRegistry {
  private readonly sessions = new Map<string, AgentSession>();

  add(session: AgentSession): void {
    const previous = this.sessions.get(session.hostId);
    this.sessions.set(session.hostId, session);
    previous?.close();
  }

  remove(session: AgentSession): void {
    if (this.sessions.get(session.hostId) === session) this.sessions.delete(session.hostId);
  }

  get(hostId: string): AgentSession | undefined {
    return this.sessions.get(hostId);
  }

  get size(): number {
    return this.sessions.size;
  }

  all(): AgentSession[] {
    return [...this.sessions.values()];
  }

  /** The hosts whose streams are paused on this side (AgentSession.inboundPaused). */
  heldBack(): string[] {
    return this.all()
      .filter((s) => s.inboundPaused)
      .map((s) => s.hostId);
  }
}
