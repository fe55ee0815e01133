// Hand-written wire encoding for the two messages that carry snapshot bytes: AgentMessage.snapshot_chunks
// and ControlMessage.restore_chunks. protobuf-es encodes nested messages by copying each level's bytes
// into its parent (a ChunkBlob, then SnapshotChunks, then AgentMessage, then the final join): four copies
// of every chunk, plus the allocations that drive the garbage collector. These encoders size the message
// first and write each chunk once. The bytes are exactly what the schema says (chunk-messages.test.ts
// decodes them with the generated code); grpc-service.ts passes an EncodedMessage through unchanged.
// Keep the field numbers here in step with dumont/agent/v1/agent.proto.

/** A message already in wire form, to be sent as it is. */
export type EncodedMessage = Uint8Array & { readonly __encodedMessage: true };

export function isEncodedMessage(value: unknown): value is EncodedMessage {
  return value instanceof Uint8Array;
}

export interface WireChunk {
  id: Uint8Array;
  blob?: Uint8Array;
  plainLength?: number;
  error?: string;
  /** Restore only: the 32-byte id of the pack the chunk was read from (ChunkBlob.pack). */
  pack?: Uint8Array;
}

// AgentMessage.snapshot_chunks = 11; ControlMessage.restore_chunks = 12.
const AGENT_SNAPSHOT_CHUNKS = 11;
const CONTROL_RESTORE_CHUNKS = 12;
// SnapshotChunks: request_id = 1, chunks = 2, epoch = 3.
// RestoreChunks: request_id = 1, chunks = 2, batch = 3, last = 4.
// ChunkBlob: id = 1, blob = 2, plain_length = 3, error = 4, pack = 5.

const WIRE_VARINT = 0;
const WIRE_LEN = 2;

/**
 * Where an encoder writes: `take(size)` gives a buffer of at least `size` bytes (the message is a view of its
 * start). The sender hands it back once the stream is done with the message's bytes (a grpc-js server
 * frames every message into a buffer of its own before its write callback; the agent's client side calls
 * back a large message only once HTTP/2 has written it, see StreamChunkSink), so bulk transfers reuse a few
 * buffers instead of allocating one per message.
 */
export interface EncodeBuffers {
  take(size: number): Buffer;
  /**
   * Leave the 5 bytes in front of the message free for gRPC's frame header, and mark the message with
   * FRAME_HEADROOM: a sender that has taught grpc-js to frame such messages in place (the agent, see its
   * session/grpc-framing.ts) then sends them without grpc-js's copy of every message into a fresh buffer.
   */
  frameHeadroom?: boolean;
}

/** gRPC's frame header: a compressed flag and the message length (big-endian). */
export const FRAME_HEADER_BYTES = 5;

/**
 * Set (true) on a message whose FRAME_HEADER_BYTES in front of it, in the same memory, are the sender's to
 * overwrite with the frame header. Symbol.for, so the one in grpc-framing.ts's patch is the same symbol.
 */
export const FRAME_HEADROOM: unique symbol = Symbol.for("dumont.grpc.frameHeadroom") as never;

/** Whether `message` carries FRAME_HEADROOM (and so the memory in front of it is free for the header). */
export function hasFrameHeadroom(message: Uint8Array): boolean {
  return (
    (message as { [FRAME_HEADROOM]?: boolean })[FRAME_HEADROOM] === true && message.byteOffset >= FRAME_HEADER_BYTES
  );
}

/** Marks `message` (or a new view of the same bytes) as carrying frame headroom. */
export function markFrameHeadroom<T extends Uint8Array>(message: T): T {
  (message as { [FRAME_HEADROOM]?: boolean })[FRAME_HEADROOM] = true;
  return message;
}

/** AgentMessage { snapshot_chunks { request_id, chunks, epoch } } in wire form. */
export function encodeSnapshotChunks(
  requestId: string,
  epoch: bigint,
  chunks: readonly WireChunk[],
  buffers?: EncodeBuffers,
): EncodedMessage {
  return encodeChunkMessage(AGENT_SNAPSHOT_CHUNKS, requestId, chunks, [[3, epoch]], false, buffers);
}

/** ControlMessage { restore_chunks { request_id, chunks, batch, last } } in wire form. */
export function encodeRestoreChunks(
  requestId: string,
  batch: bigint,
  last: boolean,
  chunks: readonly WireChunk[],
  buffers?: EncodeBuffers,
): EncodedMessage {
  return encodeChunkMessage(CONTROL_RESTORE_CHUNKS, requestId, chunks, [[3, batch]], last, buffers);
}

function encodeChunkMessage(
  outerField: number,
  requestId: string,
  chunks: readonly WireChunk[],
  numbers: [number, bigint][],
  last: boolean,
  buffers: EncodeBuffers | undefined,
): EncodedMessage {
  const requestIdBytes = Buffer.from(requestId, "utf8");
  const errors = chunks.map((c) => (c.error ? Buffer.from(c.error, "utf8") : undefined));
  const chunkSizes = chunks.map((c, i) => chunkBlobSize(c, errors[i]));
  let inner = requestIdBytes.length > 0 ? lengthField(requestIdBytes.length) : 0;
  for (const size of chunkSizes) inner += lengthField(size);
  for (const [, value] of numbers) if (value !== 0n) inner += 1 + varintSize(value);
  if (last) inner += 2;
  const total = lengthField(inner);
  const out = !buffers
    ? Buffer.allocUnsafe(total)
    : buffers.frameHeadroom
      ? markFrameHeadroom(
          buffers.take(FRAME_HEADER_BYTES + total).subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + total),
        )
      : buffers.take(total).subarray(0, total);
  let at = writeTag(out, 0, outerField, WIRE_LEN);
  at = writeVarint(out, at, BigInt(inner));
  if (requestIdBytes.length > 0) at = writeBytes(out, at, 1, requestIdBytes);
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i];
    at = writeTag(out, at, 2, WIRE_LEN);
    at = writeVarint(out, at, BigInt(chunkSizes[i]));
    if (c.id.length > 0) at = writeBytes(out, at, 1, c.id);
    if (c.blob && c.blob.length > 0) at = writeBytes(out, at, 2, c.blob);
    if (c.plainLength) {
      at = writeTag(out, at, 3, WIRE_VARINT);
      at = writeVarint(out, at, BigInt(c.plainLength));
    }
    const error = errors[i];
    if (error && error.length > 0) at = writeBytes(out, at, 4, error);
    if (c.pack && c.pack.length > 0) at = writeBytes(out, at, 5, c.pack);
  }
  // Fields in field-number order, as protobuf-es writes them (so the bytes are identical).
  for (const [field, value] of numbers) {
    if (value === 0n) continue;
    at = writeTag(out, at, field, WIRE_VARINT);
    at = writeVarint(out, at, value);
  }
  if (last) {
    at = writeTag(out, at, 4, WIRE_VARINT);
    out[at++] = 1;
  }
  if (at !== total) throw new Error(`chunk message encoding wrote ${at} bytes, expected ${total}`);
  return out as Uint8Array as EncodedMessage;
}

function chunkBlobSize(c: WireChunk, error: Buffer | undefined): number {
  if (
    c.plainLength !== undefined &&
    !(Number.isInteger(c.plainLength) && c.plainLength >= 0 && c.plainLength < 2 ** 32)
  ) {
    throw new Error(`plainLength must be a uint32, got ${c.plainLength}`);
  }
  let size = 0;
  if (c.id.length > 0) size += lengthField(c.id.length);
  if (c.blob && c.blob.length > 0) size += lengthField(c.blob.length);
  if (c.plainLength) size += 1 + varintSize(BigInt(c.plainLength));
  if (error && error.length > 0) size += lengthField(error.length);
  if (c.pack && c.pack.length > 0) size += lengthField(c.pack.length);
  return size;
}

/** Bytes of a length-delimited field with a one-byte tag (field numbers below 16). */
function lengthField(length: number): number {
  return 1 + varintSize(BigInt(length)) + length;
}

function varintSize(value: bigint): number {
  if (value < 0n || value >= 1n << 64n) throw new Error(`varint out of range: ${value}`);
  let size = 1;
  while (value >= 0x80n) {
    value >>= 7n;
    size++;
  }
  return size;
}

function writeTag(out: Buffer, at: number, field: number, wire: number): number {
  return writeVarint(out, at, BigInt((field << 3) | wire));
}

function writeVarint(out: Buffer, at: number, value: bigint): number {
  while (value >= 0x80n) {
    out[at++] = Number(value & 0x7fn) | 0x80;
    value >>= 7n;
  }
  out[at++] = Number(value);
  return at;
}

function writeBytes(out: Buffer, at: number, field: number, bytes: Uint8Array): number {
  at = writeTag(out, at, field, WIRE_LEN);
  at = writeVarint(out, at, BigInt(bytes.length));
  // Not out.set: blobs may sit in a SharedArrayBuffer, which V8 copies one byte at a time when the offsets
  // are not aligned alike (1.6 vs 10 GB/s); fill is one memcpy (see @dumont/repository copy-bytes.ts).
  if (bytes.length > 0) out.fill(bytes, at, at + bytes.length);
  return at + bytes.length;
}
