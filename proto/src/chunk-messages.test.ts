import { randomBytes } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { encodeRestoreChunks, encodeSnapshotChunks, type WireChunk } from "./chunk-messages.js";
import { AgentMessageSchema, ControlMessageSchema } from "./gen/dumont/agent/v1/agent_pb.js";

const chunks: WireChunk[] = [
  { id: randomBytes(32), blob: randomBytes(200_000), plainLength: 1_048_576 },
  { id: randomBytes(32), blob: randomBytes(1), plainLength: 1 },
  { id: randomBytes(32), blob: new Uint8Array(0), plainLength: 0 },
  { id: new Uint8Array(0), blob: randomBytes(130), plainLength: 2 ** 32 - 1 },
];

describe("hand-encoded chunk messages", () => {
  it("encode AgentMessage.snapshot_chunks exactly as protobuf-es does", () => {
    for (const [requestId, epoch, list] of [
      ["req-ü-1", 7n, chunks],
      ["", 0n, []],
      ["r", 2n ** 64n - 1n, chunks.slice(0, 1)],
    ] as const) {
      const encoded = encodeSnapshotChunks(requestId, epoch, list);
      const message = create(AgentMessageSchema, {
        msg: { case: "snapshotChunks", value: { requestId, epoch, chunks: list.map((c) => ({ ...c })) } },
      });
      expect(Buffer.from(encoded).equals(Buffer.from(toBinary(AgentMessageSchema, message)))).toBe(true);
      const decoded = fromBinary(AgentMessageSchema, encoded);
      expect(decoded.msg.case).toBe("snapshotChunks");
      const value = decoded.msg.value as { requestId: string; epoch: bigint; chunks: WireChunk[] };
      expect(value.requestId).toBe(requestId);
      expect(value.epoch).toBe(epoch);
      expect(
        value.chunks.map((c) => [
          Buffer.from(c.id).toString("hex"),
          Buffer.from(c.blob!).toString("hex"),
          c.plainLength,
        ]),
      ).toEqual(
        list.map((c) => [Buffer.from(c.id).toString("hex"), Buffer.from(c.blob!).toString("hex"), c.plainLength]),
      );
    }
  });

  it("encode ControlMessage.restore_chunks, errors and the last flag included, exactly as protobuf-es does", () => {
    const list: WireChunk[] = [
      ...chunks.map((c) => ({ id: c.id, blob: c.blob })),
      { id: randomBytes(32), error: "pack ab12 is gone — ünïcode" },
    ];
    for (const [batch, last] of [
      [3n, true],
      [0n, false],
      [300n, false],
    ] as const) {
      const encoded = encodeRestoreChunks("req-9", batch, last, list);
      const message = create(ControlMessageSchema, {
        msg: { case: "restoreChunks", value: { requestId: "req-9", batch, last, chunks: list.map((c) => ({ ...c })) } },
      });
      expect(Buffer.from(encoded).equals(Buffer.from(toBinary(ControlMessageSchema, message)))).toBe(true);
    }
  });

  it("refuses a plain length that is not a uint32", () => {
    expect(() =>
      encodeSnapshotChunks("r", 1n, [{ id: randomBytes(32), blob: randomBytes(4), plainLength: 2 ** 32 }]),
    ).toThrow(/uint32/);
  });
});
