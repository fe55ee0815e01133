// Pooled assembly of large incoming gRPC messages: the receiving twin of the agent's in-place framing
// (host-agent/src/session/grpc-framing.ts).
//
// grpc-js (1.14) assembles every incoming message from the pieces HTTP/2 hands it (about 8 KiB each, whatever
// the frame size) by keeping the pieces and joining them with Buffer.concat into a fresh Buffer of its length + 5.
// For the control plane receiving a snapshot that is a GiB of fresh Buffers of 0.25 to 4 MiB, whose memory
// drives V8's collections and is page-faulted in again and again (~12 µs a page on the dev VM); the chunk
// verifier then copied every message once more, into memory it could hand to its threads. Measured on the dev
// VM, the bench's 1 GiB corpus snapshotted through a `dumont dev` control plane and agent on the same two cores
// (3 pairs, taking turns): the control plane's main thread 1.89-2.00 CPU-s without this, 1.60-1.81 with it; the
// snapshot 4.38-4.41 s without, 4.07-4.16 s with. On the agent's side (restore chunks, copied into its receive
// buffers as each message arrives) the same made no difference that showed through the noise, so it is not used.
//
// installPooledReceiving() wraps grpc-js's StreamDecoder so that a message of POOLED_MESSAGE_MIN_BYTES or more
// is copied piece by piece, as it arrives, into memory taken from a pool of SharedArrayBuffers. What a message
// decodes to then views that shared memory: the verifier's threads read the chunks where they are, and the
// receiver gives the memory back with releaseReceivedMessage once nothing reads it any more. Memory that is
// never given back is only garbage, collected like any Buffer's; the pool then makes more. Smaller messages, and
// everything else grpc-js does, are unchanged.
//
// grpc-js does not export the decoder: it is reached through its module file, whose shape is checked first. If
// the shape is not what this expects (another grpc-js version), nothing is patched and messages are assembled
// as before.
import { createRequire } from "node:module";

/** Uncompressed messages at least this long (chunk batches, about 1 MiB) are assembled in pooled memory. */
export const POOLED_MESSAGE_MIN_BYTES = 64 * 1024;
/**
 * The size of pooled memory: room for the largest chunk message (a batch, or one chunk of up to 4 MiB), so any
 * message fits any idle piece; a larger message gets a piece of its own size. Only the bytes a message fills are
 * ever touched: a piece costs resident memory for the largest message it held, not for its size.
 */
const CAPACITY = 8 * 1024 * 1024;
/**
 * Idle pieces kept for reuse. What is lent out is bounded by flow control: a control plane receiving a 1 GiB
 * snapshot held at most 21 messages at once (MAX_VERIFYING in hand, the rest in the stream's 8 MiB window).
 */
const MAX_IDLE = 24;

const PATCHED = Symbol.for("dumont.grpc.pooledReceiving");
const TARGET = Symbol("dumont.grpc.pooledTarget");

/** grpc-js's StreamDecoder states (stream-decoder.js's ReadState). */
const NO_DATA = 0;
const READING_SIZE = 1;
const READING_MESSAGE = 2;

/** The fields of grpc-js's StreamDecoder that its `write` uses (checked on a fresh decoder before patching). */
interface DecoderState {
  readState: number;
  readCompressFlag: Buffer;
  readPartialSize: Buffer;
  readSizeRemaining: number;
  readMessageSize: number;
  readPartialMessage: Buffer[];
  readMessageRemaining: number;
  maxReadMessageLength: number;
  [TARGET]?: Buffer;
}

const idle: SharedArrayBuffer[] = [];
/** Memory lent out and not yet given back: giving back twice, or memory not from here, does nothing. */
const lent = new WeakSet<SharedArrayBuffer>();
let installed: boolean | undefined;

/** Wraps grpc-js's message decoding (once per process; client and server calls alike); whether it could. */
export function installPooledReceiving(): boolean {
  installed ??= patchStreamDecoder();
  return installed;
}

/**
 * Gives back the pooled memory `bytes` views (any part of a received message), once nothing will read it: not
 * the message, not anything decoded from it. Memory not from the pool, or already given back, is ignored.
 */
export function releaseReceivedMessage(bytes: Uint8Array | undefined): void {
  const memory = bytes?.buffer;
  if (!(memory instanceof SharedArrayBuffer) || !lent.has(memory)) return;
  lent.delete(memory);
  if (memory.byteLength === CAPACITY && idle.length < MAX_IDLE) idle.push(memory);
}

/** Whether `bytes` views pooled memory that is lent out (for the tests). */
export function isPooledMessageMemory(bytes: Uint8Array): boolean {
  return bytes.buffer instanceof SharedArrayBuffer && lent.has(bytes.buffer);
}

/** A Buffer of exactly `size` bytes over pooled shared memory. */
function take(size: number): Buffer {
  let memory = size <= CAPACITY ? idle.pop() : undefined;
  memory ??= new SharedArrayBuffer(Math.max(size, CAPACITY));
  lent.add(memory);
  return Buffer.from(memory, 0, size);
}

/** grpc-js's stream-decoder module (not part of its public API; the tests decode through it too). */
export function grpcJsStreamDecoder(): { StreamDecoder?: unknown } {
  const require = createRequire(import.meta.url);
  return require(require.resolve("@grpc/grpc-js").replace(/index\.js$/, "stream-decoder.js"));
}

function patchStreamDecoder(): boolean {
  let proto: { write?: unknown } & Record<symbol, unknown>;
  try {
    const { StreamDecoder } = grpcJsStreamDecoder() as { StreamDecoder?: new (max: number) => DecoderState };
    if (typeof StreamDecoder !== "function") return false;
    const fresh = new StreamDecoder(-1);
    const shaped =
      fresh.readState === NO_DATA &&
      Buffer.isBuffer(fresh.readCompressFlag) &&
      Buffer.isBuffer(fresh.readPartialSize) &&
      fresh.readPartialSize.length === 4 &&
      fresh.readSizeRemaining === 4 &&
      fresh.readMessageSize === 0 &&
      Array.isArray(fresh.readPartialMessage) &&
      fresh.readMessageRemaining === 0 &&
      fresh.maxReadMessageLength === -1;
    if (!shaped) return false;
    proto = StreamDecoder.prototype as unknown as typeof proto;
  } catch {
    return false;
  }
  if (proto[PATCHED] === true) return true;
  if (typeof proto.write !== "function" || proto.write.length !== 1) return false;
  proto.write = pooledWrite;
  proto[PATCHED] = true;
  return true;
}

/**
 * grpc-js's StreamDecoder.write, state for state, except that a message of POOLED_MESSAGE_MIN_BYTES or more is
 * copied into pooled memory as its pieces arrive instead of being joined at its end. Returns the messages
 * completed by `data`, each with its 5-byte frame header (compressed flag, length), as grpc-js's does.
 */
function pooledWrite(this: DecoderState, data: Buffer): Buffer[] {
  const result: Buffer[] = [];
  let readHead = 0;
  while (readHead < data.length) {
    switch (this.readState) {
      case NO_DATA:
        this.readCompressFlag = data.subarray(readHead, readHead + 1);
        readHead += 1;
        this.readState = READING_SIZE;
        this.readPartialSize.fill(0);
        this.readSizeRemaining = 4;
        this.readMessageSize = 0;
        this.readMessageRemaining = 0;
        this.readPartialMessage = [];
        this[TARGET] = undefined;
        break;
      case READING_SIZE: {
        const toRead = Math.min(data.length - readHead, this.readSizeRemaining);
        data.copy(this.readPartialSize, 4 - this.readSizeRemaining, readHead, readHead + toRead);
        this.readSizeRemaining -= toRead;
        readHead += toRead;
        if (this.readSizeRemaining === 0) {
          this.readMessageSize = this.readPartialSize.readUInt32BE(0);
          if (this.maxReadMessageLength !== -1 && this.readMessageSize > this.maxReadMessageLength) {
            throw new Error(
              `Received message larger than max (${this.readMessageSize} vs ${this.maxReadMessageLength})`,
            );
          }
          this.readMessageRemaining = this.readMessageSize;
          if (this.readMessageRemaining > 0) {
            this.readState = READING_MESSAGE;
            // A compressed message (flag 1; our peers send none) goes the usual way: it is inflated into memory
            // of zlib's own anyway.
            if (this.readMessageSize >= POOLED_MESSAGE_MIN_BYTES && this.readCompressFlag[0] === 0) {
              const target = take(this.readMessageSize + 5);
              target[0] = this.readCompressFlag[0];
              target.fill(this.readPartialSize, 1, 5);
              this[TARGET] = target;
            }
          } else {
            result.push(Buffer.concat([this.readCompressFlag, this.readPartialSize], 5));
            this.readState = NO_DATA;
          }
        }
        break;
      }
      case READING_MESSAGE: {
        const toRead = Math.min(data.length - readHead, this.readMessageRemaining);
        const target = this[TARGET];
        if (target) {
          // `fill` with a Buffer is one memcpy, into shared memory too (Buffer.copy and set go a byte at a time
          // there when the two sides are not aligned alike).
          const at = 5 + this.readMessageSize - this.readMessageRemaining;
          target.fill(data.subarray(readHead, readHead + toRead), at, at + toRead);
        } else {
          this.readPartialMessage.push(data.subarray(readHead, readHead + toRead));
        }
        this.readMessageRemaining -= toRead;
        readHead += toRead;
        if (this.readMessageRemaining === 0) {
          if (target) {
            result.push(target);
            this[TARGET] = undefined;
          } else {
            const framed = [this.readCompressFlag, this.readPartialSize, ...this.readPartialMessage];
            result.push(Buffer.concat(framed, this.readMessageSize + 5));
          }
          this.readState = NO_DATA;
        }
        break;
      }
      default:
        throw new Error("Unexpected read state");
    }
  }
  return result;
}
