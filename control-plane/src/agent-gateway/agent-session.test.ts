// AgentSession over a stand-in for grpc-js's server stream (an EventEmitter with write/pause/resume): what
// a send does when the agent goes away. The real stream is exercised end to end in tests/e2e.
import { EventEmitter } from "node:events";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { AgentSession, type AgentStream } from "./agent-session.js";

function fullStream(): EventEmitter & { writes: number } {
  const stream = Object.assign(new EventEmitter(), { writes: 0 });
  // Every write fills the buffer: a send then waits for 'drain' (or for the stream to close).
  const write = (): boolean => {
    stream.writes++;
    return false;
  };
  Object.assign(stream, { write, pause() {}, resume() {}, end() {} });
  return stream;
}

describe("AgentSession.require", () => {
  it("refuses, as FailedPrecondition naming the host and the capability, what the agent did not announce", () => {
    const stream = fullStream() as unknown as AgentStream;
    const current = new AgentSession("h-1", "s-1", "t-1", stream, new Set(["restore.include"]));
    expect(() => current.require("restore.include", "restore only what --include names")).not.toThrow();
    const older = new AgentSession("h-2", "s-2", "t-1", stream);
    const err = (() => {
      try {
        older.require("restore.include", "restore only what --include names");
      } catch (e) {
        return e;
      }
    })();
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((err as ConnectError).message).toMatch(
      /host h-2 runs an agent too old to restore only what --include names \(it does not announce "restore\.include"\): update the agent/,
    );
  });
});

describe("AgentSession.send", () => {
  it("waits for drain, and fails as FailedPrecondition naming the host when the stream closes meanwhile", async () => {
    const stream = fullStream();
    const session = new AgentSession("h-1", "s-1", "t-1", stream as unknown as AgentStream);
    const drained = session.send({} as never);
    stream.emit("drain");
    await expect(drained).resolves.toBeUndefined();

    const waiting = session.send({} as never);
    stream.emit("close");
    const err = await waiting.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((err as ConnectError).message).toMatch(/host h-1 disconnected while sending/);

    const late = await session.send({} as never).catch((e: unknown) => e);
    expect((late as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((late as ConnectError).message).toMatch(/host h-1 is not connected/);
    expect(stream.writes).toBe(2);
  });
});
