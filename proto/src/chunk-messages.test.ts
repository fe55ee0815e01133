import { randomBytes } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  encodeRestoreChunks,
  encodeSnapshotChunks,
  FRAME_HEADER_BYTES,
  hasFrameHeadroom,
  type WireChunk,
} from "./chunk-messages.js";
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
      { id: randomBytes(32), blob: randomBytes(900), pack: randomBytes(32) },
      { id: randomBytes(32), error: "pack ab12 is gone — ünïcode", pack: randomBytes(32) },
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

  it("encode into a buffer the caller provides when one is given, with the same bytes", () => {
    const taken: number[] = [];
    const scratch = Buffer.alloc(400_000, 0xee);
    const buffers = {
      take(size: number) {
        taken.push(size);
        return size <= scratch.length ? scratch : Buffer.alloc(size);
      },
    };
    const encoded = encodeSnapshotChunks("req-1", 5n, chunks, buffers);
    expect(encoded.buffer).toBe(scratch.buffer);
    expect(encoded.byteOffset).toBe(0);
    expect(taken).toEqual([encoded.length]);
    expect(Buffer.from(encoded).equals(Buffer.from(encodeSnapshotChunks("req-1", 5n, chunks)))).toBe(true);
    // The rest of the buffer is left alone.
    expect(scratch.subarray(encoded.length).every((b) => b === 0xee)).toBe(true);

    const restore = encodeRestoreChunks("req-2", 1n, true, chunks, buffers);
    expect(restore.buffer).toBe(scratch.buffer);
    expect(Buffer.from(restore).equals(Buffer.from(encodeRestoreChunks("req-2", 1n, true, chunks)))).toBe(true);
  });

  it("leave room for the gRPC frame header in front when asked, and mark the message", () => {
    const scratch = Buffer.alloc(400_000, 0xee);
    const taken: number[] = [];
    const buffers = {
      frameHeadroom: true,
      take(size: number) {
        taken.push(size);
        return scratch;
      },
    };
    const encoded = encodeSnapshotChunks("req-1", 5n, chunks, buffers);
    expect(taken).toEqual([FRAME_HEADER_BYTES + encoded.length]);
    expect(encoded.buffer).toBe(scratch.buffer);
    expect(encoded.byteOffset).toBe(FRAME_HEADER_BYTES);
    expect(hasFrameHeadroom(encoded)).toBe(true);
    expect(Buffer.from(encoded).equals(Buffer.from(encodeSnapshotChunks("req-1", 5n, chunks)))).toBe(true);
    // Without the option, or without a caller's buffer, there is no headroom and no mark.
    expect(hasFrameHeadroom(encodeSnapshotChunks("req-1", 5n, chunks, { take: () => scratch }))).toBe(false);
    expect(hasFrameHeadroom(encodeSnapshotChunks("req-1", 5n, chunks))).toBe(false);
  });

  it("refuses a plain length that is not a uint32", () => {
    expect(() =>
      encodeSnapshotChunks("r", 1n, [{ id: randomBytes(32), blob: randomBytes(4), plainLength: 2 ** 32 }]),
    ).toThrow(/uint32/);
  });
});
