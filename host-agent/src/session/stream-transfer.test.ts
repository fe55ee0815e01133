import { create, fromBinary } from "@bufbuild/protobuf";
import { type AgentMessage, AgentMessageSchema, ControlMessageSchema, isEncodedMessage } from "@dumont/proto";
import { describe, expect, it } from "vitest";
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

describe("StreamChunkSink", () => {
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
    const source = new StreamChunkSource(port, "r4", "abcdef", Buffer.from("manifest"));
    const got: { id: string; blob?: number[]; error?: string }[] = [];
    const reading = (async () => {
      for await (const c of source.get([Buffer.alloc(32, 1), Buffer.alloc(32, 2)])) {
        got.push({ id: c.id.toString("hex").slice(0, 2), blob: c.blob ? [...c.blob] : undefined, error: c.error });
      }
    })();
    await new Promise((r) => setImmediate(r));
    const batch = (messages()[0]!.msg.value as { batch: bigint }).batch;
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
      manifestBlob: Buffer.from("manifest"),
    });
  });
});
