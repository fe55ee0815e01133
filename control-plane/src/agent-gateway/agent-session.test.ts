// AgentSession over a stand-in for grpc-js's server stream (an EventEmitter with write/pause/resume): what
// a send does when the agent goes away. The real stream is exercised end to end in tests/e2e.
import { EventEmitter } from "node:events";
import { Code, ConnectError } from "@connectrpc/connect";
import type { ControlMessage } from "@dumont/proto";
import { describe, expect, it } from "vitest";
import { AgentSession, type AgentStream, type DownloadsStream, SessionRegistry } from "./agent-session.js";

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

describe("AgentSession.bulkSender", () => {
  const welcome = { msg: { case: "welcome" } } as never;
  /** A stream that takes every write and records what was written. */
  const openStream = () => {
    const stream = Object.assign(fullStream(), { written: [] as unknown[], ended: 0 });
    Object.assign(stream, {
      write: (m: unknown) => {
        stream.written.push(m);
        return true;
      },
      end: () => stream.ended++,
    });
    return stream;
  };

  it("asks an agent that announces it to open its Downloads stream once, and sends there after its Welcome", async () => {
    const control = openStream();
    const session = new AgentSession("h-1", "s-1", "t-1", control as unknown as AgentStream, new Set(["downloads"]));
    const [a, b] = [session.bulkSender(), session.bulkSender()];
    await new Promise((resolve) => setImmediate(resolve));
    // Two restores starting at once: one OpenDownloads.
    expect(control.written.map((m) => (m as ControlMessage).msg.case)).toEqual(["openDownloads"]);

    const downloads = openStream();
    expect(session.attachDownloads(downloads as unknown as DownloadsStream, welcome)).toBe(true);
    // One at a time: a second is refused and left alone.
    const second = openStream();
    expect(session.attachDownloads(second as unknown as DownloadsStream, welcome)).toBe(false);
    expect(second.written).toEqual([]);
    const [outA, outB] = await Promise.all([a, b]);
    expect(outA).toBe(outB);
    expect(outA.connection).toBe("downloads");
    await outA.send({ msg: { case: "restore" } } as never);
    expect(downloads.written).toEqual([welcome, { msg: { case: "restore" } }]);
    expect(control.written).toHaveLength(1);
    // Opened once, it stays: the next restore asks for nothing.
    expect(await session.bulkSender()).toBe(outA);
    expect(control.written).toHaveLength(1);
  });

  it("sends on the Connect stream to an agent that does not announce it", async () => {
    const control = openStream();
    const session = new AgentSession("h-1", "s-1", "t-1", control as unknown as AgentStream);
    const out = await session.bulkSender();
    expect(out).toBe(session);
    expect(out.connection).toBe("connect");
    expect(control.written).toEqual([]);
  });

  it("fails a restore clearly when the agent does not open it in time, or disconnects first", async () => {
    const control = openStream();
    const session = new AgentSession("h-1", "s-1", "t-1", control as unknown as AgentStream, new Set(["downloads"]));
    const late = await session.bulkSender(20).catch((e: unknown) => e);
    expect((late as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((late as ConnectError).message).toMatch(
      /host h-1 did not open its downloads connection within 0\.02 s; check that it can open a second connection/,
    );
    // Asked again by the next restore.
    const waiting = session.bulkSender();
    await new Promise((resolve) => setImmediate(resolve));
    expect(control.written).toHaveLength(2);
    control.emit("close");
    expect(((await waiting.catch((e: unknown) => e)) as ConnectError).message).toMatch(
      /host h-1 disconnected before the restore started/,
    );
  });

  it("fails in time when the agent has stopped reading its stream: the ask itself cannot go out", async () => {
    // Its OpenDownloads waited for a drain that never came, outside the timeout: a restore, holding its tenant's
    // lock and count (no prune could run), waited until the connection closed.
    const stream = fullStream();
    const session = new AgentSession("h-1", "s-1", "t-1", stream as unknown as AgentStream, new Set(["downloads"]));
    const outcome = await Promise.race([
      session.bulkSender(20).catch((e: unknown) => e),
      new Promise((resolve) => setTimeout(() => resolve("still waiting after 2 s"), 2_000)),
    ]);
    expect((outcome as ConnectError).message).toMatch(
      /host h-1 did not open its downloads connection within 0\.02 s; .*that it still reads its stream/,
    );
    expect(stream.writes).toBe(1);
  });

  it("lives and dies with the session: its end closes the session, and the session's end ends it", async () => {
    const control = openStream();
    const session = new AgentSession("h-1", "s-1", "t-1", control as unknown as AgentStream, new Set(["downloads"]));
    const downloads = fullStream(); // every write fills it: a send waits for 'drain'
    session.attachDownloads(downloads as unknown as DownloadsStream, welcome);
    const bulk = await session.bulkSender();
    const waiting = bulk.send({} as never);
    downloads.emit("close");
    expect(((await waiting.catch((e: unknown) => e)) as ConnectError).message).toMatch(/host h-1 disconnected/);
    expect(session.isOpen).toBe(false);
    expect(control.ended).toBe(1);
    expect(session.attachDownloads(openStream() as unknown as DownloadsStream, welcome)).toBe(false);

    const other = new AgentSession("h-2", "s-2", "t-1", openStream() as unknown as AgentStream, new Set(["downloads"]));
    const ended = openStream();
    other.attachDownloads(ended as unknown as DownloadsStream, welcome);
    other.close();
    expect(ended.ended).toBe(1);
  });
});

describe("SessionRegistry.heldBack", () => {
  it("names the hosts whose streams this side paused, until every pause is resumed", () => {
    const registry = new SessionRegistry();
    const a = new AgentSession("h-a", "s-a", "t-1", fullStream() as unknown as AgentStream);
    const b = new AgentSession("h-b", "s-b", "t-1", fullStream() as unknown as AgentStream);
    registry.add(a);
    registry.add(b);
    expect(registry.heldBack()).toEqual([]);
    a.pauseInbound();
    a.pauseInbound(); // two operations of the host, each behind the blob store
    expect(registry.heldBack()).toEqual(["h-a"]);
    a.resumeInbound();
    expect(registry.heldBack()).toEqual(["h-a"]);
    a.resumeInbound();
    expect(registry.heldBack()).toEqual([]);
  });
});
