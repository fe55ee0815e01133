import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type AgentMessage,
  AgentMessageSchema,
  ControlMessageSchema,
  isEncodedMessage,
  MAX_MESSAGE_BYTES,
  RETRY_BUFFER_BYTES,
  STREAM_BATCH_BYTES,
} from "@dumont/proto";
import {
  type ChunkBuffers,
  chunkCodec,
  generateRepositoryKey,
  type ManifestEntry,
  RESTORE_REQUEST_IDS,
  sealManifestParts,
} from "@dumont/repository";
import { describe, expect, it } from "vitest";
import { RestoreDamagedError, restoreSnapshot } from "../snapshot/restore-snapshot.js";
import { SnapshotWorkerPool } from "../snapshot/worker-pool.js";
import { StreamChunkSink, StreamChunkSource, type StreamPort } from "./stream-transfer.js";

/**
 * A port that, like grpc-js with a busy stream, serialises messages only later: what was sent is read
 * back (pre-encoded chunk batches decoded) only when the test looks.
 */
function lazyPort() {
  const sent: unknown[] = [];
  const port: StreamPort = { send: async (m) => void sent.push(m) };
  const messages = (): AgentMessage[] =>
    sent.map((m) => (isEncodedMessage(m) ? fromBinary(AgentMessageSchema, m) : (m as AgentMessage)));
  return { port, messages };
}

/** Waits until `done()` holds, looking every 5 ms, for up to 30 s. */
async function until(done: () => boolean): Promise<void> {
  for (const deadline = Date.now() + 30_000; !done() && Date.now() < deadline; ) {
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The batch number of a chunk request (or offer) the agent sent. */
const batchOf = (m: AgentMessage) => (m.msg.value as { batch: bigint }).batch;

describe("StreamChunkSink", () => {
  it("leaves no unhandled rejection when the stream dies during an offer's or a commit's send", async () => {
    // The control plane killed mid-snapshot: the send fails, then the session fails the sink. The answer
    // nobody awaits any more must not reject unhandled (Node exits on that: it killed the agent).
    const unhandled: unknown[] = [];
    const record = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", record);
    try {
      const closed = new Error("the stream to the control plane closed while sending");
      const sink = new StreamChunkSink({ send: () => Promise.reject(closed) }, "r0", 0n);
      await expect(sink.missing([Buffer.alloc(32, 1)])).rejects.toBe(closed);
      await expect(sink.commit([Buffer.alloc(8)], { workspace: "w", epoch: 0, tenant: "t" })).rejects.toBe(closed);
      sink.fail(new Error("the stream to the control plane closed"));
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(unhandled).toEqual([]);
    } finally {
      process.off("unhandledRejection", record);
    }
  });

  it("sends the chunk bytes as they were at put(), even if the engine reuses the memory afterwards", async () => {
    const { port, messages } = lazyPort();
    const sink = new StreamChunkSink(port, "r1", 3n);
    const shared = new ArrayBuffer(8);
    const bytes = new Uint8Array(shared);
    bytes.set([1, 2, 3, 4, 5, 6, 7, 8]);
    await sink.put([
      { id: Buffer.alloc(32, 1), blob: Buffer.from(shared, 0, 4), plainLength: 4 },
      { id: Buffer.alloc(32, 2), blob: Buffer.from(shared, 4, 4), plainLength: 4 },
    ]);
    // The engine now transfers the buffer to a worker (detaching it) — simulated with structuredClone.
    structuredClone(shared, { transfer: [shared] });
    const msg = messages()[0]!;
    expect(msg.msg.case).toBe("snapshotChunks");
    const chunks = msg.msg.case === "snapshotChunks" ? msg.msg.value.chunks : [];
    expect(chunks.map((c) => [...c.blob])).toEqual([
      [1, 2, 3, 4],
      [5, 6, 7, 8],
    ]);
    expect(msg.msg.value && (msg.msg.value as { epoch: bigint }).epoch).toBe(3n);
  });

  it("reuses a large message's buffer once its write is called back, and never a small one's", async () => {
    // grpc-js calls back a write of at most RETRY_BUFFER_BYTES before it has framed the message, and a
    // larger one only after: reusing a small message's buffer would change bytes not yet sent.
    const sent: { message: Uint8Array; written?: () => void }[] = [];
    const port: StreamPort = {
      send: async (message, written) => void sent.push({ message: message as Uint8Array, written }),
    };
    const sink = new StreamChunkSink(port, "r3", 0n);
    const chunk = (n: number, size: number) => ({
      id: Buffer.alloc(32, n),
      blob: Buffer.alloc(size, n),
      plainLength: size,
    });
    const blobs = (m: Uint8Array) => {
      const msg = fromBinary(AgentMessageSchema, m);
      return msg.msg.case === "snapshotChunks" ? msg.msg.value.chunks.map((c) => [c.blob.length, c.blob[0]]) : [];
    };
    const large = RETRY_BUFFER_BYTES + 1024;

    await sink.put([chunk(1, large)]);
    await sink.put([chunk(2, large)]);
    expect(sent[1].message.buffer).not.toBe(sent[0].message.buffer);
    expect(blobs(sent[0].message)).toEqual([[large, 1]]);
    sent[0].written?.();
    await sink.put([chunk(3, large)]);
    expect(sent[2].message.buffer).toBe(sent[0].message.buffer); // reused
    expect(blobs(sent[2].message)).toEqual([[large, 3]]);
    expect(blobs(sent[1].message)).toEqual([[large, 2]]); // not yet called back: untouched

    await sink.put([chunk(4, 1000)]);
    sent[3].written?.();
    await sink.put([chunk(5, 1000)]);
    expect(blobs(sent[3].message)).toEqual([[1000, 4]]);
    expect(blobs(sent[4].message)).toEqual([[1000, 5]]);
  });

  it("holds a snapshot back while four chunk messages wait for grpc-js, and fails it if the stream goes", async () => {
    const written: (() => void)[] = [];
    const port: StreamPort = { send: async (_message, onWritten) => void written.push(onWritten!) };
    const sink = new StreamChunkSink(port, "r5", 0n);
    // Eight messages' worth: each chunk is a batch of its own.
    const chunks = Array.from({ length: 8 }, (_, n) => ({
      id: Buffer.alloc(32, n),
      blob: Buffer.alloc(STREAM_BATCH_BYTES, n),
      plainLength: STREAM_BATCH_BYTES,
    }));
    let done = false;
    const put = sink.put(chunks).then(() => {
      done = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(written).toHaveLength(4);
    expect(done).toBe(false);
    written[0]();
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(written).toHaveLength(5); // one called back, one more sent
    for (let i = 1; i < 4; i++) written[i]();
    await put;
    expect(written).toHaveLength(8);

    const stuck = sink.put(chunks.slice(0, 5));
    await new Promise((resolve) => setTimeout(resolve, 20));
    const gone = new Error("the stream to the control plane closed");
    sink.fail(gone);
    await expect(stuck).rejects.toBe(gone);
  });

  it("stops sending a put's chunks at the next message once the snapshot is aborted or its session fails", async () => {
    for (const stop of ["fail", "abort"] as const) {
      const sent: unknown[] = [];
      let sink: StreamChunkSink | undefined;
      // grpc-js takes each message at once (room in its buffer); the control plane aborts after the first.
      const port: StreamPort = {
        send: async (message, onWritten) => {
          sent.push(message);
          onWritten?.();
          if (stop === "fail") sink!.fail(new Error("the control plane aborted the snapshot"));
          else await sink!.abort();
        },
      };
      sink = new StreamChunkSink(port, "r6", 0n);
      const chunks = Array.from({ length: 6 }, (_, n) => ({
        id: Buffer.alloc(32, n),
        blob: Buffer.alloc(STREAM_BATCH_BYTES, n),
        plainLength: STREAM_BATCH_BYTES,
      }));
      await expect(sink.put(chunks)).rejects.toThrow(
        stop === "fail" ? "aborted the snapshot" : "the snapshot was aborted",
      );
      expect(sent).toHaveLength(1);
    }
  });

  it("cuts chunk batches at the stream batch size and answers offers by batch number", async () => {
    const { port, messages } = lazyPort();
    const sink = new StreamChunkSink(port, "r2", 0n);
    const big = Buffer.alloc(700 * 1024, 7);
    await sink.put([1, 2, 3].map((n) => ({ id: Buffer.alloc(32, n), blob: big, plainLength: big.length })));
    expect(
      messages()
        .filter((m) => m.msg.case === "snapshotChunks")
        .map((m) => (m.msg.value as { chunks: unknown[] }).chunks.length),
    ).toEqual([1, 1, 1]);

    const missing = sink.missing([Buffer.alloc(32, 9)]);
    await new Promise((r) => setImmediate(r));
    const offer = messages().at(-1)!;
    expect(offer.msg.case).toBe("snapshotOffer");
    sink.receive(
      create(ControlMessageSchema, {
        msg: {
          case: "snapshotNeed",
          value: { requestId: "r2", batch: (offer.msg.value as { batch: bigint }).batch, chunkIds: [] },
        },
      }),
    );
    await expect(missing).resolves.toEqual([]);
  });

  it("refuses a manifest too large for one message, instead of sending what would end the stream", async () => {
    const { port, messages } = lazyPort();
    const sink = new StreamChunkSink(port, "r4", 0n);
    const meta = { workspace: "w", epoch: 0, tenant: "t" };
    await expect(sink.commit([Buffer.alloc(MAX_MESSAGE_BYTES)], meta)).rejects.toThrow(
      /sealed manifest is 16\.0 MiB, more than the agent's stream carries in one message \(16 MiB\)/,
    );
    expect(messages()).toEqual([]);
  });

  it("sends a manifest's parts in order ahead of the commit, which carries the last and the count", async () => {
    const { port, messages } = lazyPort();
    const sink = new StreamChunkSink(port, "r7", 5n, 3);
    const meta = { workspace: "w", epoch: 5, tenant: "t" };
    const parts = [Buffer.from("part one"), Buffer.from("part two"), Buffer.from("part three")];
    await expect(sink.commit([...parts, Buffer.from("four")], meta)).rejects.toThrow(
      "a manifest of 4 parts; the control plane takes 1 to 3",
    );
    const committed = sink.commit(parts, meta);
    await new Promise((resolve) => setTimeout(resolve, 10));
    sink.receive(create(ControlMessageSchema, { msg: { case: "snapshotCommitted", value: { snapshotId: "s1" } } }));
    await expect(committed).resolves.toBe("s1");
    expect(messages().map((m) => [m.msg.case, m.msg.value])).toEqual([
      ["snapshotManifestPart", expect.objectContaining({ requestId: "r7", index: 0, part: parts[0], epoch: 5n })],
      ["snapshotManifestPart", expect.objectContaining({ requestId: "r7", index: 1, part: parts[1], epoch: 5n })],
      ["snapshotCommit", expect.objectContaining({ requestId: "r7", manifest: parts[2], manifestParts: 3 })],
    ]);
  });

  it("fails pending calls when the stream goes away", async () => {
    const { port } = lazyPort();
    const sink = new StreamChunkSink(port, "r3", 0n);
    const missing = sink.missing([Buffer.alloc(32)]);
    sink.fail(new Error("the stream to the control plane closed"));
    await expect(missing).rejects.toThrow(/closed/);
    await expect(sink.put([])).rejects.toThrow(/closed/);
  });
});

describe("StreamChunkSource", () => {
  it("yields each chunk of a batch (views into the message, left intact), and ends on the last message", async () => {
    const { port, messages } = lazyPort();
    const source = new StreamChunkSource(port, "r4", "abcdef", [Buffer.from("manifest")]);
    const got: { id: string; blob?: number[]; error?: string }[] = [];
    const reading = (async () => {
      for await (const c of source.get([Buffer.alloc(32, 1), Buffer.alloc(32, 2)])) {
        got.push({ id: c.id.toString("hex").slice(0, 2), blob: c.blob ? [...c.blob] : undefined, error: c.error });
      }
    })();
    await new Promise((r) => setImmediate(r));
    const batch = batchOf(messages()[0]!);
    const wire = Buffer.from([9, 9, 8, 8]);
    source.receive(
      create(ControlMessageSchema, {
        msg: {
          case: "restoreChunks",
          value: {
            requestId: "r4",
            batch,
            last: true,
            chunks: [
              { id: Buffer.alloc(32, 1), blob: wire.subarray(0, 2) },
              { id: Buffer.alloc(32, 2), error: "pack damaged" },
            ],
          },
        },
      }),
    );
    await reading;
    expect(got).toEqual([
      { id: "01", blob: [9, 9], error: undefined },
      { id: "02", blob: undefined, error: "pack damaged" },
    ]);
    expect([...wire]).toEqual([9, 9, 8, 8]);
    await expect(source.readManifest("abc")).resolves.toEqual({
      snapshotId: "abcdef",
      manifestBlobs: [Buffer.from("manifest")],
    });
  });
});

describe("StreamChunkSource with many small chunks", () => {
  it("yields 20,000 chunks in order while more arrive, however far the reader falls behind, asked in two requests", async () => {
    const { port, messages } = lazyPort();
    const source = new StreamChunkSource(port, "r5", "s", [Buffer.from("manifest")]);
    const ids = Array.from({ length: 20_000 }, (_, i) => {
      const id = Buffer.alloc(32);
      id.writeUInt32BE(i);
      return id;
    });
    const got: number[] = [];
    const reading = (async () => {
      for await (const c of source.get(ids)) {
        got.push(c.id.readUInt32BE(0));
        // A slow reader: the queue grows past the point where its taken part is dropped, then drains.
        if (got.length % 2_500 === 0) await new Promise((r) => setTimeout(r, 5));
      }
    })();
    // Asked for in requests of at most RESTORE_REQUEST_IDS, one after the other; each answered in pieces.
    const requested: number[] = [];
    for (let asked = 0; asked < ids.length; ) {
      await until(() => messages().length > requested.length);
      const m = messages()[requested.length]!.msg;
      if (m.case !== "restoreChunkRequest") throw new Error(`expected a chunk request, got ${m.case}`);
      requested.push(m.value.chunkIds.length);
      const wanted = m.value.chunkIds.map((id) => Buffer.from(id));
      for (let from = 0; from < wanted.length; from += 7_000) {
        const chunks = wanted.slice(from, from + 7_000).map((id) => ({ id, blob: id.subarray(0, 4) }));
        const last = from + 7_000 >= wanted.length;
        source.receive(
          create(ControlMessageSchema, {
            msg: { case: "restoreChunks", value: { requestId: "r5", batch: m.value.batch, last, chunks } },
          }),
        );
        await new Promise((r) => setTimeout(r, 1));
      }
      asked += wanted.length;
    }
    await reading;
    expect(got).toEqual(ids.map((_, i) => i));
    expect(requested).toEqual([RESTORE_REQUEST_IDS, ids.length - RESTORE_REQUEST_IDS]);
  });
});

describe("StreamChunkSource with receive buffers", () => {
  const MiB = 1024 * 1024;
  function countingBuffers() {
    const allocated: Buffer[] = [];
    const released: ArrayBufferLike[] = [];
    const buffers: ChunkBuffers = {
      allocate: (size) => {
        const b = Buffer.alloc(size);
        allocated.push(b);
        return b;
      },
      release: (b) => void released.push(b.buffer),
    };
    return { buffers, allocated, released };
  }
  /** The ids `message` gives its chunks. */
  const idsOf = (count: number) => Array.from({ length: count }, (_, i) => Buffer.alloc(32, i));
  const message = (batch: bigint, sizes: number[], last: boolean, fill = 7) =>
    create(ControlMessageSchema, {
      msg: {
        case: "restoreChunks",
        value: {
          requestId: "r6",
          batch,
          last,
          chunks: sizes.map((size, i) => ({ id: Buffer.alloc(32, i), blob: Buffer.alloc(size, fill + i) })),
        },
      },
    });

  it("copies chunks into the buffers as they arrive, filling one before the next, never across batches", async () => {
    const { port, messages } = lazyPort();
    const { buffers, allocated, released } = countingBuffers();
    const source = new StreamChunkSource(port, "r6", "abcdef", [Buffer.from("m")], buffers);
    const taken: Buffer[] = [];
    const reading = (async () => {
      for await (const c of source.get(idsOf(4))) taken.push(c.blob!);
      for await (const c of source.get(idsOf(1))) taken.push(c.blob!);
    })();
    await new Promise((r) => setImmediate(r));
    const m1 = message(batchOf(messages()[0]!), [3 * MiB, 3 * MiB, 3 * MiB, 9 * MiB], true);
    source.receive(m1);
    // The copied chunks do not keep the message's memory: overwriting it changes nothing the engine gets.
    for (const c of (m1.msg.value as { chunks: { blob: Uint8Array }[] }).chunks.slice(0, 3)) c.blob.fill(0);
    await new Promise((r) => setImmediate(r));
    source.receive(message(batchOf(messages()[1]!), [1024], true, 1));
    await reading;
    expect(taken.map((b) => [b.length, b[0], b.at(-1)])).toEqual([
      [3 * MiB, 7, 7],
      [3 * MiB, 8, 8],
      [3 * MiB, 9, 9],
      [9 * MiB, 10, 10],
      [1024, 1, 1],
    ]);
    // Two 3 MiB chunks fill the first 8 MiB buffer, the third starts another; a chunk larger than a buffer
    // stays where it is; the next batch starts a buffer of its own.
    expect(allocated).toHaveLength(3);
    expect(taken[1]!.buffer).toBe(taken[0]!.buffer);
    expect(taken[1]!.byteOffset - taken[0]!.byteOffset).toBe(3 * MiB);
    expect(taken[2]!.buffer).toBe(allocated[1]!.buffer);
    expect(allocated.some((b) => b.buffer === taken[3]!.buffer)).toBe(false);
    expect(taken[4]!.buffer).toBe(allocated[2]!.buffer);
    expect(released).toEqual([]); // every buffer went to the engine
  });

  it("releases the buffers no chunk was taken from when the engine stops reading, and only those", async () => {
    const { port, messages } = lazyPort();
    const { buffers, allocated, released } = countingBuffers();
    const source = new StreamChunkSource(port, "r6", "abcdef", [Buffer.from("m")], buffers);
    const iterator = source.get(idsOf(3))[Symbol.asyncIterator]();
    const first = iterator.next();
    await new Promise((r) => setImmediate(r));
    source.receive(message(batchOf(messages()[0]!), [5 * MiB, 5 * MiB, 5 * MiB], false));
    expect((await first).value.blob.length).toBe(5 * MiB);
    await iterator.return!(undefined);
    expect(allocated).toHaveLength(3);
    expect(released).toEqual([allocated[1]!.buffer, allocated[2]!.buffer]);
  });
});

describe("StreamChunkSource backpressure", () => {
  /** Chunk ids from..from+count-1 (under 256). */
  const idsOf = (count: number, from = 0) => Array.from({ length: count }, (_, i) => Buffer.alloc(32, from + i));
  const chunksMessage = (batch: bigint, count: number, size: number, last: boolean, from = 0) =>
    create(ControlMessageSchema, {
      msg: {
        case: "restoreChunks",
        value: {
          requestId: "r5",
          batch,
          last,
          chunks: idsOf(count, from).map((id) => ({ id, blob: Buffer.alloc(size) })),
        },
      },
    });
  /** A port that counts pauses, like ControlPlaneSession.pauseInbound. */
  function pausingPort() {
    const { port, messages } = lazyPort();
    const state = { paused: 0, pauses: 0 };
    port.pauseInbound = () => {
      state.paused++;
      state.pauses++;
      let released = false;
      return () => {
        if (!released) state.paused--;
        released = true;
      };
    };
    return { port, messages, state };
  }

  it("holds the stream back while over 64 MiB wait for the engine, and reads again once it has taken them", async () => {
    const { port, messages, state } = pausingPort();
    const source = new StreamChunkSource(port, "r5", "abcdef", [Buffer.from("m")]);
    const iterator = source.get(idsOf(70))[Symbol.asyncIterator]();
    const first = iterator.next(); // sends the request, then waits on the empty queue
    await new Promise((r) => setImmediate(r));
    const batch = batchOf(messages()[0]!);
    source.receive(chunksMessage(batch, 40, 1024 * 1024, false));
    expect(state.paused).toBe(0); // 40 MiB waiting: still reading
    source.receive(chunksMessage(batch, 30, 1024 * 1024, true, 40));
    expect(state.paused).toBe(1); // 70 MiB: held back
    await first;
    for (let taken = 1; taken < 50; taken++) await iterator.next();
    expect(state.paused).toBe(1); // 20 MiB left
    for (let taken = 50; taken < 56; taken++) await iterator.next();
    expect(state.paused).toBe(0); // below 16 MiB: reading again
    expect(state.pauses).toBe(1);
    while (!(await iterator.next()).done);
  });

  it("does not pause while the engine waits on a batch, pauses once it does not, and resumes if the stream fails", async () => {
    const { port, messages, state } = pausingPort();
    const source = new StreamChunkSource(port, "r5", "abcdef", [Buffer.from("m")]);
    const a = source.get(idsOf(80))[Symbol.asyncIterator]();
    const b = source.get(idsOf(1))[Symbol.asyncIterator]();
    const firstA = a.next();
    const firstB = b.next();
    await new Promise((r) => setImmediate(r));
    const [batchA, batchB] = messages().map(batchOf);
    // Batch A's chunks pile up while the engine also waits on batch B: holding the stream back would hold
    // B's chunks back too.
    source.receive(chunksMessage(batchA!, 70, 1024 * 1024, false));
    expect(state.paused).toBe(0);
    source.receive(chunksMessage(batchB!, 1, 10, true));
    expect((await firstB).done).toBe(false);
    expect((await b.next()).done).toBe(true);
    expect((await firstA).done).toBe(false);
    // Nobody waits now: more of A is held back.
    source.receive(chunksMessage(batchA!, 10, 1024 * 1024, false, 70));
    expect(state.paused).toBe(1);
    source.fail(new Error("the stream to the control plane closed"));
    expect(state.paused).toBe(0);
    await expect(
      (async () => {
        for (;;) if ((await a.next()).done) return;
      })(),
    ).rejects.toThrow(/closed/);
  });
});

describe("StreamChunkSource against a control plane that misbehaves", () => {
  const restoreChunks = (batch: bigint, chunks: { id: Buffer; blob: Buffer }[], last = true) =>
    create(ControlMessageSchema, { msg: { case: "restoreChunks", value: { requestId: "r8", batch, last, chunks } } });

  it("yields only the chunks a batch asked for, once each: a duplicate or a stranger is dropped, unaccounted", async () => {
    const { port, messages } = lazyPort();
    const state = { paused: 0 };
    port.pauseInbound = () => {
      state.paused++;
      return () => void state.paused--;
    };
    const warnings: string[] = [];
    const source = new StreamChunkSource(port, "r8", "s", [Buffer.from("m")], undefined, (w) => warnings.push(w));
    const [x, y, stranger] = [1, 2, 3].map((n) => Buffer.alloc(32, n));
    const iterator = source.get([x!, y!])[Symbol.asyncIterator]();
    const first = iterator.next();
    await new Promise((r) => setImmediate(r));
    const batch = batchOf(messages()[0]!);
    source.receive(restoreChunks(batch, [{ id: x!, blob: Buffer.from("x") }], false));
    expect((await first).value.id).toEqual(x);
    // X again, 70 times 1 MiB, where Y was due, and a chunk nobody asked for: were their bytes counted as
    // waiting for the engine (which waits on nothing now), the stream would be held back.
    const mib = Buffer.alloc(1024 * 1024, 7);
    source.receive(
      restoreChunks(batch, [
        ...Array.from({ length: 70 }, () => ({ id: x!, blob: mib })),
        { id: stranger!, blob: mib },
      ]),
    );
    expect(state.paused).toBe(0);
    expect(await iterator.next()).toEqual({ done: true, value: undefined });
    expect(warnings).toEqual([
      "restore r8: the control plane sent 71 chunks in batch 1 that were not requested or came twice (dropped); " +
        "1 requested chunk never came",
    ]);
  });

  it("fails a restore whose batch got a duplicate chunk in place of another, naming the file, not zeros", async () => {
    const key = generateRepositoryKey();
    const plain = [Buffer.alloc(4096, 1), Buffer.alloc(4096, 2)];
    const sealed = plain.map((p) => chunkCodec.sealChunk(key, p));
    const entries: ManifestEntry[] = [
      {
        type: "file",
        path: "two-chunks.bin",
        mode: 0o644,
        mtimeNs: "0",
        size: 8192,
        chunks: sealed.map((c) => c.id.toString("hex")),
        lengths: [4096, 4096],
      },
    ];
    // A control plane answering each request with its first chunk twice: [X, X] where [X, Y] was asked for.
    let source: StreamChunkSource | undefined;
    const port: StreamPort = {
      send: async (m) => {
        const msg = m as AgentMessage;
        if (msg.msg.case !== "restoreChunkRequest") return;
        const { batch, chunkIds } = msg.msg.value;
        const first = sealed.find((c) => c.id.equals(chunkIds[0]!))!;
        setImmediate(() => source!.receive(restoreChunks(batch, [first, first])));
      },
    };
    source = new StreamChunkSource(port, "r8", "s", sealManifestParts(key, entries));
    const pool = new SnapshotWorkerPool({ threads: 0 });
    const target = await mkdtemp(join(tmpdir(), "dumont-stream-restore-"));
    try {
      const failure = await restoreSnapshot({ snapshotId: "s", source, key, target, pool }).catch((e) => e);
      expect(failure).toBeInstanceOf(RestoreDamagedError);
      expect((failure as RestoreDamagedError).damaged).toEqual([
        { path: "two-chunks.bin", reason: "the source never delivered some of its chunks" },
      ]);
      expect(await readdir(target)).toEqual([]); // the half-written file was taken away
    } finally {
      await pool.close();
      await rm(target, { recursive: true, force: true });
    }
  });

  it("fails a get() after the session ended at once, sending nothing, and ignores what still arrives", async () => {
    const { port, messages } = lazyPort();
    const source = new StreamChunkSource(port, "r8", "s", [Buffer.from("m")]);
    const pending = source.get([Buffer.alloc(32, 1)])[Symbol.asyncIterator]();
    const waiting = pending.next();
    await new Promise((r) => setImmediate(r));
    const closed = new Error("the stream to the control plane closed");
    source.fail(closed);
    // A chunk read before the session was torn down is no answer: the batch fails, it does not go on.
    source.receive(restoreChunks(batchOf(messages()[0]!), [{ id: Buffer.alloc(32, 1), blob: Buffer.from("x") }]));
    await expect(waiting).rejects.toBe(closed);
    // The engine between two windows when the session ended: its next request must not go out (on the
    // next session, which would ignore it) to be waited on for good.
    const later = source.get([Buffer.alloc(32, 2)])[Symbol.asyncIterator]();
    await expect(later.next()).rejects.toBe(closed);
    expect(messages()).toHaveLength(1);
    source.fail(new Error("a second failure"));
    const afterSecond = source.get([Buffer.alloc(32, 3)])[Symbol.asyncIterator]();
    await expect(afterSecond.next()).rejects.toBe(closed); // the first failure stands
  });
});

describe("the agent's stream against oversized messages", () => {
  it("a blob too large for a receive buffer mid-batch does not make the pool hand out one buffer twice", async () => {
    // a, then 9 MiB for the chunk of b (a control plane misbehaving), then c: the engine hands the buffer a is in
    // on when it meets b's blob (not in it), and the source copied c into that buffer after, handed on again.
    const key = generateRepositoryKey();
    const a = chunkCodec.sealChunk(key, Buffer.alloc(4096, 1));
    const c = chunkCodec.sealChunk(key, Buffer.alloc(4096, 3));
    const bId = Buffer.alloc(32, 2);
    const file = (path: string, id: Buffer): ManifestEntry => ({
      type: "file",
      path,
      mode: 0o644,
      mtimeNs: "0",
      size: 4096,
      chunks: [id.toString("hex")],
      lengths: [4096],
    });
    const entries = [file("a.bin", a.id), file("b.bin", bId), file("c.bin", c.id)];
    let source: StreamChunkSource | undefined;
    const answer = (batch: bigint, last: boolean, chunks: { id: Buffer; blob: Buffer }[]) =>
      source!.receive(
        create(ControlMessageSchema, {
          msg: { case: "restoreChunks", value: { requestId: "r", batch, last, chunks } },
        }),
      );
    const port: StreamPort = {
      send: async (m) => {
        const msg = (m as AgentMessage).msg;
        if (msg.case !== "restoreChunkRequest") return;
        const { batch } = msg.value;
        setImmediate(() => answer(batch, false, [a, { id: bId, blob: Buffer.alloc(9 * 2 ** 20, 1) }]));
        setTimeout(() => answer(batch, true, [c]), 200);
      },
    };
    const pool = new SnapshotWorkerPool({ threads: 1 });
    source = new StreamChunkSource(port, "r", "s", sealManifestParts(key, entries), pool.chunkBuffers);
    const target = await mkdtemp(join(tmpdir(), "dumont-oversized-"));
    try {
      await expect(restoreSnapshot({ snapshotId: "s", source, key, target, pool })).rejects.toBeInstanceOf(
        RestoreDamagedError,
      );
      expect(pool.buffer(1024).buffer).not.toBe(pool.buffer(1024).buffer);
    } finally {
      await pool.close();
      await rm(target, { recursive: true, force: true });
    }
  });

  it("keeps a commit under the message limit whatever the entries left out say (their count kept whole)", async () => {
    const { port, messages } = lazyPort();
    const sink = new StreamChunkSink(port, "r", 0n, 1);
    const manifest = Buffer.alloc(MAX_MESSAGE_BYTES - 64 * 1024); // the largest a commit takes
    const skipped = Array.from({ length: 100 }, (_, i) => ({
      path: `${"d/".repeat(2000)}f${i}`,
      reason: "x".repeat(1024),
    }));
    const stats = { files: 1, bytesRead: 0, bytesNew: 0, bytesStored: 0, chunksNew: 0, seconds: 1, filesSkipped: 100 };
    void sink
      .commit([manifest], { workspace: "w", epoch: 0, tenant: "t", stats: { ...stats, skipped } })
      .catch(() => {});
    await new Promise((r) => setTimeout(r, 10));
    const [commit] = messages();
    expect(commit.msg.case).toBe("snapshotCommit");
    expect(toBinary(AgentMessageSchema, commit).length).toBeLessThanOrEqual(MAX_MESSAGE_BYTES); // 17.2 MB before
    if (commit.msg.case === "snapshotCommit") {
      expect(commit.msg.value.stats?.filesSkipped).toBe(100n);
      expect(commit.msg.value.stats?.skipped.length).toBeGreaterThan(0);
    }
  });
});
