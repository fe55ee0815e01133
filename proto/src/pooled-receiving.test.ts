// grpc-js's message decoder with pooled assembly: every message comes out byte for byte as the stream framed it,
// however the bytes are cut into pieces, and large ones in pooled shared memory that is reused once given back.
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  grpcJsStreamDecoder,
  installPooledReceiving,
  isPooledMessageMemory,
  POOLED_MESSAGE_MIN_BYTES,
  releaseReceivedMessage,
} from "./index.js";

interface Decoder {
  write(data: Buffer): Buffer[];
}

const { StreamDecoder } = grpcJsStreamDecoder() as { StreamDecoder: new (maxReadMessageLength: number) => Decoder };

/** gRPC's framing: a compressed flag, the length (big-endian), the message. */
function frame(message: Buffer, compressed = 0): Buffer {
  const header = Buffer.alloc(5);
  header[0] = compressed;
  header.writeUInt32BE(message.length, 1);
  return Buffer.concat([header, message]);
}

/** `bytes` cut into pieces of 1 to `most` bytes (a deterministic mix, single bytes that split headers included). */
function cut(bytes: Buffer, most: number, seed: number): Buffer[] {
  const pieces: Buffer[] = [];
  let state = seed;
  for (let at = 0; at < bytes.length; ) {
    state = (state * 1103515245 + 12345) >>> 0;
    const size = state % 7 === 0 ? 1 : 1 + (state % most);
    pieces.push(bytes.subarray(at, at + size));
    at += size;
  }
  return pieces;
}

describe("pooled receiving", () => {
  it("patches grpc-js's decoder, once", () => {
    expect(installPooledReceiving()).toBe(true);
    expect(installPooledReceiving()).toBe(true);
  });

  it("gives every message exactly as framed, however the stream is cut, large uncompressed ones in pooled memory", () => {
    installPooledReceiving();
    const sizes = [0, 1, 100, POOLED_MESSAGE_MIN_BYTES - 1, POOLED_MESSAGE_MIN_BYTES, 1_048_579, 9 * 1024 * 1024, 7];
    const messages = sizes.map((size) => randomBytes(size));
    const stream = Buffer.concat(messages.map((m, i) => frame(m, i % 2)));
    for (const [most, seed] of [
      [8192, 1],
      [300, 2],
      [stream.length, 3],
      [70_000, 4],
    ]) {
      const decoder = new StreamDecoder(-1);
      const out = cut(stream, most, seed).flatMap((piece) => decoder.write(piece));
      expect(out.map((m) => m.length)).toEqual(sizes.map((size) => size + 5));
      out.forEach((framed, i) => {
        expect(framed.equals(frame(messages[i], i % 2))).toBe(true);
        expect(isPooledMessageMemory(framed)).toBe(sizes[i] >= POOLED_MESSAGE_MIN_BYTES && i % 2 === 0);
      });
      for (const framed of out) releaseReceivedMessage(framed);
    }
  });

  it("reuses memory given back, never memory still lent, and ignores a second give-back", () => {
    installPooledReceiving();
    const decoder = new StreamDecoder(-1);
    const large = () => {
      const [framed] = decoder.write(frame(randomBytes(200_000)));
      return framed;
    };
    const first = large();
    const second = large();
    expect(second.buffer).not.toBe(first.buffer);
    releaseReceivedMessage(first.subarray(5, 10)); // any view of it will do
    releaseReceivedMessage(first);
    expect(isPooledMessageMemory(first)).toBe(false);
    const third = large();
    expect(third.buffer).toBe(first.buffer);
    const fourth = large(); // the second give-back put nothing back twice
    expect(fourth.buffer).not.toBe(first.buffer);
    expect(fourth.buffer).not.toBe(second.buffer);
    releaseReceivedMessage(Buffer.from("not from the pool"));
    for (const framed of [second, third, fourth]) releaseReceivedMessage(framed);
  });

  it("still refuses a message over the receiver's limit, before taking memory for it", () => {
    installPooledReceiving();
    const decoder = new StreamDecoder(100_000);
    expect(() => decoder.write(frame(randomBytes(100_001)).subarray(0, 5))).toThrow(
      "Received message larger than max (100001 vs 100000)",
    );
  });
});
