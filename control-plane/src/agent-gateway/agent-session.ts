// One agent's open Connect stream: sends with backpressure, and lets other parts of the control plane
// reach a host by id (the registry).

import type { AgentMessage, ControlMessage, EncodedMessage } from "@dumont/proto";
import type { ServerDuplexStream } from "@grpc/grpc-js";
import { FailedPreconditionError } from "../errors.js";

export type AgentStream = ServerDuplexStream<AgentMessage, ControlMessage>;

export class AgentSession {
  private closed = false;
  private readonly waiters = new Set<(ok: boolean) => void>();

  constructor(
    readonly hostId: string,
    readonly sessionId: string,
    readonly tenantId: string,
    private readonly stream: AgentStream,
    /** What the agent announced in Hello.capabilities (AGENT_CAPABILITIES). */
    private readonly capabilities: ReadonlySet<string> = new Set(),
  ) {
    stream.on("drain", () => this.wake(true));
    stream.on("close", () => this.markClosed());
    stream.on("error", () => this.markClosed());
  }

  get isOpen(): boolean {
    return !this.closed;
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
   * Sends one message. Resolves once the stream accepts more (write() returned true or 'drain'),
   * so a fast producer cannot buffer unbounded data in memory; rejects if the stream closed (a
   * FailedPreconditionError: an operation that loses its host says so to the caller, not "internal error").
   * `onWritten` runs once the message's bytes have been copied on, so its buffer may be reused.
   */
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

  private pauses = 0;

  /**
   * Stops reading the agent's messages until every pause is matched by a resume, so HTTP/2 flow
   * control slows the agent down while we write what it sent.
   */
  pauseInbound(): void {
    if (this.pauses++ === 0) this.stream.pause();
  }

  resumeInbound(): void {
    if (this.pauses > 0 && --this.pauses === 0) this.stream.resume();
  }

  close(): void {
    if (this.closed) return;
    this.markClosed();
    this.stream.end();
  }

  private markClosed(): void {
    this.closed = true;
    this.wake(false);
  }

  private wake(ok: boolean): void {
    for (const w of this.waiters) w(ok);
    this.waiters.clear();
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
}
