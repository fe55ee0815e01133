// In-place framing against the real grpc-js compression filter: marked messages are framed in the bytes in
// front of them, everything else is copied as grpc-js always did. The e2e snapshot tests send real marked
// messages over TLS to a control plane that checks every chunk's hash.
import { FRAME_HEADER_BYTES, markFrameHeadroom } from "@dumont/proto";
import { describe, expect, it } from "vitest";
import { grpcJsCompressionFilters, installInPlaceFraming } from "./grpc-framing.js";

interface Filter {
  sendMessage(message: Promise<{ message: Buffer; flags?: number }>): Promise<{ message: Buffer }>;
}
const { CompressionFilter } = grpcJsCompressionFilters() as {
  CompressionFilter: new (options: object, shared: object) => Filter;
};

async function frame(message: Buffer): Promise<Buffer> {
  return (await new CompressionFilter({}, {}).sendMessage(Promise.resolve({ message, flags: 0 }))).message;
}

describe("in-place gRPC framing", () => {
  it("installs on the grpc-js version this project pins, once", () => {
    expect(installInPlaceFraming()).toBe(true);
    expect(installInPlaceFraming()).toBe(true);
  });

  it("frames a marked message in the bytes in front of it, without a copy", async () => {
    installInPlaceFraming();
    const memory = Buffer.alloc(FRAME_HEADER_BYTES + 300_000, 0xee);
    const message = markFrameHeadroom(memory.subarray(FRAME_HEADER_BYTES));
    message.fill(7);
    const framed = await frame(message);
    expect(framed.buffer).toBe(memory.buffer);
    expect(framed.byteOffset).toBe(0);
    expect(framed.length).toBe(FRAME_HEADER_BYTES + 300_000);
    expect(framed[0]).toBe(0);
    expect(framed.readUInt32BE(1)).toBe(300_000);
    expect(framed.subarray(FRAME_HEADER_BYTES).every((b) => b === 7)).toBe(true);
  });

  it("copies unmarked messages, and marked ones without room in front, as grpc-js does", async () => {
    installInPlaceFraming();
    for (const message of [Buffer.alloc(300_000, 7), markFrameHeadroom(Buffer.alloc(300_000, 7))]) {
      const framed = await frame(message);
      expect(framed.buffer).not.toBe(message.buffer);
      expect(framed.readUInt32BE(1)).toBe(300_000);
      expect(framed.subarray(FRAME_HEADER_BYTES).equals(message)).toBe(true);
    }
  });
});
