// The agent's command handling with a fake session in place of the control plane: what it refuses before any
// work, and what a dropped session does to an operation in flight. The engine and its worker threads are real.
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { type AgentMessage, ControlMessageSchema, isEncodedMessage } from "@dumont/proto";
import { chunkCodec, generateRepositoryKey, sealManifest } from "@dumont/repository";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../logger.js";
import type { ControlPlaneSession } from "./control-plane-session.js";
import { SnapshotCommands } from "./snapshot-commands.js";

/** A session that records what the agent sends, and lets the test play the control plane. */
class FakeSession extends EventEmitter {
  sent: AgentMessage[] = [];
  private handler: ((message: unknown, session: unknown, via: "connect") => void) | undefined;
  answer: (message: AgentMessage) => void = () => {};
  onCommand(handler: (message: unknown, session: unknown, via: "connect") => void): void {
    this.handler = handler;
  }
  async send(message: AgentMessage | Uint8Array, onWritten?: () => void): Promise<void> {
    onWritten?.();
    if (isEncodedMessage(message)) return;
    this.sent.push(message as AgentMessage);
    this.answer(message as AgentMessage);
  }
  pauseInbound(): () => void {
    return () => {};
  }
  command(msg: MessageInitShape<typeof ControlMessageSchema>["msg"]): void {
    this.handler?.(create(ControlMessageSchema, { msg }), this, "connect");
  }
  /** The first message the agent sent that is `what`, waited for up to 30 s (a busy machine is slow, not wrong). */
  async waitFor(what: (m: AgentMessage) => boolean): Promise<AgentMessage> {
    for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
      const found = this.sent.find(what);
      if (found) return found;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error("the agent never sent it");
  }
}

/** A snapshot of one 20 kB file, f.bin: its key, its one chunk and its sealed manifest. */
function oneFileSnapshot() {
  const key = generateRepositoryKey();
  const plain = randomBytes(20_000);
  const chunk = chunkCodec.sealChunk(key, plain);
  const manifest = sealManifest(key, {
    version: 1,
    entries: [
      {
        type: "file",
        path: "f.bin",
        mode: 0o644,
        mtimeNs: "0",
        size: plain.length,
        chunks: [chunk.id.toString("hex")],
        lengths: [plain.length],
      },
    ],
  });
  return { key, chunk, manifest };
}

const doneWith = (requestId: string) => (m: AgentMessage) =>
  m.msg.case === "restoreProgress" && m.msg.value.requestId === requestId && m.msg.value.done;

describe("SnapshotCommands", () => {
  let root: string;
  let session: FakeSession;
  let commands: SnapshotCommands;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "dumont-commands-"));
    session = new FakeSession();
    commands = new SnapshotCommands(
      session as unknown as ControlPlaneSession,
      join(root, "state"),
      createLogger("silent"),
    );
  });
  afterAll(async () => {
    await commands.close();
    await rm(root, { recursive: true, force: true });
  });

  it("refuses a restore into a running one's target, a request id in use and a short key; a drop ends the first", async () => {
    const { key, chunk, manifest } = oneFileSnapshot();
    const target = join(root, "target");
    const restore = (requestId: string, tenantKey: Uint8Array, into = target) =>
      session.command({
        case: "restore",
        value: { requestId, snapshotId: "s".repeat(64), target: into, manifest, manifestParts: 1, tenantKey },
      });
    // The first asks for its chunk, which never comes: it runs.
    restore("r1", key);
    await session.waitFor((m) => m.msg.case === "restoreChunkRequest" && m.msg.value.requestId === "r1");
    const errorOf = async (requestId: string) => {
      const m = (await session.waitFor(doneWith(requestId))).msg;
      return m.case === "restoreProgress" ? m.value.error : "";
    };
    restore("r2", key, join(target, "inside"));
    expect(await errorOf("r2")).toMatch(
      /the restore target .*\/target\/inside overlaps the restore running on .*\/target/,
    );
    // Another name for the same directory, through a symlink, overlaps just as well.
    await symlink(target, join(root, "target-link"));
    restore("r2b", key, join(root, "target-link", "new"));
    expect(await errorOf("r2b")).toMatch(
      /the restore target .*\/target-link\/new overlaps the restore running on .*\/target;/,
    );
    const sentBefore = session.sent.length;
    restore("r1", key, join(root, "elsewhere"));
    // The same request id again: refused, and the one running is not disturbed (it reports nothing yet; it has
    // nothing to report before its chunk comes, so no wait could let a wrong report pass).
    await session.waitFor(doneWith("r1"));
    const refused = session.sent.slice(sentBefore).filter(doneWith("r1"));
    expect(refused).toHaveLength(1);
    const [{ msg }] = refused;
    expect(msg.case === "restoreProgress" && msg.value.error).toMatch(/request r1 is already running on this host/);
    restore("r3", key.subarray(0, 16), join(root, "third"));
    expect(await errorOf("r3")).toBe("tenant_key must be 32 bytes (an AES-256 key), got 16");

    // The session drops: the first stops, and takes back what it wrote, so the same restore can run again.
    const before = session.sent.filter(doneWith("r1")).length;
    session.emit("disconnected");
    const stopped = () => session.sent.filter(doneWith("r1")).length > before;
    for (const deadline = Date.now() + 30_000; !stopped() && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(session.sent.filter(doneWith("r1")).length).toBe(before + 1);
    expect(await readdir(target)).toEqual([]);
    // The control plane gives up on a restore (restore_aborted): the agent stops it and takes back its files.
    restore("r5", key);
    await session.waitFor((m) => m.msg.case === "restoreChunkRequest" && m.msg.value.requestId === "r5");
    session.command({ case: "restoreAborted", value: { requestId: "r5", message: "the host said nothing" } });
    expect(await errorOf("r5")).toMatch(/the control plane aborted the restore: the host said nothing/);
    expect(await readdir(target)).toEqual([]);
    session.answer = (m) => {
      if (m.msg.case === "restoreChunkRequest") {
        const { requestId, batch } = m.msg.value;
        setImmediate(() =>
          session.command({
            case: "restoreChunks",
            value: { requestId, batch, last: true, chunks: [{ id: chunk.id, blob: chunk.blob }] },
          }),
        );
      }
    };
    restore("r4", key);
    expect(await errorOf("r4")).toBe("");
    expect(await readdir(target)).toEqual(["f.bin"]);
    session.answer = () => {};
  });

  it("refuses a Restore whose abort came first (the abort on one stream, the Restore on the other)", async () => {
    const { key, manifest } = oneFileSnapshot();
    const target = join(root, "aborted-early");
    session.command({ case: "restoreAborted", value: { requestId: "e1", message: "gave up" } });
    session.command({
      case: "restore",
      value: { requestId: "e1", snapshotId: "s".repeat(64), target, manifest, manifestParts: 1, tenantKey: key },
    });
    const done = (await session.waitFor(doneWith("e1"))).msg;
    expect(done.case === "restoreProgress" && done.value.error).toBe("the control plane aborted request e1");
    // It never asked for a chunk nobody would send, and holds no operation: the same id may run later.
    expect(session.sent.some((m) => m.msg.case === "restoreChunkRequest" && m.msg.value.requestId === "e1")).toBe(
      false,
    );
    await expect(readdir(target)).rejects.toThrow(/ENOENT/);
  });

  it("takes max_manifest_parts 0 (a control plane of before parts) as one part", async () => {
    const source = join(root, "source");
    await mkdir(source, { recursive: true });
    await writeFile(join(source, "a.txt"), "hello\n");
    session.answer = (m) => {
      if (m.msg.case === "snapshotOffer") {
        const { requestId, batch, chunkIds } = m.msg.value;
        setImmediate(() => session.command({ case: "snapshotNeed", value: { requestId, batch, chunkIds } }));
      } else if (m.msg.case === "snapshotCommit") {
        const { requestId } = m.msg.value;
        setImmediate(() =>
          session.command({ case: "snapshotCommitted", value: { requestId, snapshotId: "c".repeat(64) } }),
        );
      }
    };
    session.command({
      case: "takeSnapshot",
      value: {
        requestId: "s1",
        path: source,
        workspaceId: "w",
        tenantKey: generateRepositoryKey(),
        maxManifestParts: 0,
      },
    });
    const commit = await session.waitFor(
      (m) => (m.msg.case === "snapshotCommit" || m.msg.case === "snapshotFailed") && m.msg.value.requestId === "s1",
    );
    expect(commit.msg.case).toBe("snapshotCommit");
    session.answer = () => {};
  });

  it("on close, stops what runs and waits for it to end (a restore takes back its files), then refuses more", async () => {
    const own = new FakeSession();
    const closing = new SnapshotCommands(
      own as unknown as ControlPlaneSession,
      join(root, "state-2"),
      createLogger("silent"),
    );
    const { key, manifest } = oneFileSnapshot();
    const target = join(root, "closing-target");
    const restore = (requestId: string) =>
      own.command({
        case: "restore",
        value: { requestId, snapshotId: "s".repeat(64), target, manifest, manifestParts: 1, tenantKey: key },
      });
    // Its chunk never comes: the restore waits, its target made.
    restore("c1");
    await own.waitFor((m) => m.msg.case === "restoreChunkRequest" && m.msg.value.requestId === "c1");
    await closing.close();
    // Ended before close resolved: reported, and its target emptied.
    const [ended] = own.sent.filter(doneWith("c1"));
    expect(ended?.msg.case === "restoreProgress" && ended.msg.value.error).toBe("the agent is shutting down");
    expect(await readdir(target)).toEqual([]);
    restore("c2");
    const refused = (await own.waitFor(doneWith("c2"))).msg;
    expect(refused.case === "restoreProgress" && refused.value.error).toBe("the agent is shutting down");
  });
});
