// In-place gRPC framing for the agent's chunk messages.
//
// grpc-js (1.14, client side) frames every outgoing message by allocating a fresh Buffer of its length + 5
// and copying the message behind the 5-byte header (CompressionFilter's IdentityHandler.writeMessage). For a
// snapshot that is a GiB of short-lived 1 MiB Buffers. The copy itself is the least of it: V8 starts a full
// collection each time such ArrayBuffer memory grows past its soft limit (about 30 per streamed GiB on the
// agent's main isolate here), and every fresh Buffer is page-faulted in. Measured with the agent pinned to
// one core and the control plane to the other, a streamed 1 GiB snapshot: agent CPU 4.43-4.64 s with
// in-place framing against 5.99-7.31 s without; wall 5.21-5.57 s against 6.69-8.67 s (2 runs each).
//
// Messages that our encoders mark with FRAME_HEADROOM carry 5 spare bytes in front of them in the same
// memory (proto/src/chunk-messages.ts). This module wraps the identity handler's writeMessage so that, for
// those only, it writes the header into the spare bytes and hands grpc-js a view of header + message: no
// allocation, no copy. Everything else (unmarked messages, compression) goes through grpc-js unchanged.
//
// Why it is safe for the pooled buffers StreamChunkSink reuses: they are all larger than the retry buffer
// (RETRY_BUFFER_BYTES), so grpc-js calls back their write only after HTTP/2 has written them, and the sink
// gives a buffer back to its pool only then (it did so already when grpc-js copied).
//
// grpc-js does not export the handler: it is reached through its compression filter module, whose shape is
// checked first. If the shape is not what this expects (another grpc-js version), nothing is patched, the
// sink asks for no headroom, and messages are copied as before.
import { createRequire } from "node:module";
import { FRAME_HEADER_BYTES, hasFrameHeadroom } from "@dumont/proto";

type WriteMessage = (message: Buffer, compress: boolean) => Promise<Buffer>;

const PATCHED = Symbol.for("dumont.grpc.inPlaceFraming");
let installed: boolean | undefined;

/** Teaches grpc-js to frame marked messages in place (once per process); whether it could. */
export function installInPlaceFraming(): boolean {
  installed ??= patchIdentityHandler();
  return installed;
}

/** grpc-js's compression filter module (not part of its public API; the tests frame through it too). */
export function grpcJsCompressionFilters(): { CompressionFilter?: unknown } {
  const require = createRequire(import.meta.url);
  return require(require.resolve("@grpc/grpc-js").replace(/index\.js$/, "compression-filter.js"));
}

function patchIdentityHandler(): boolean {
  let handler: { writeMessage?: unknown } & Record<symbol, unknown>;
  try {
    const filters = grpcJsCompressionFilters() as {
      CompressionFilter?: new (options: object, shared: object) => { sendCompression?: object };
    };
    if (typeof filters.CompressionFilter !== "function") return false;
    // A fresh filter starts with an IdentityHandler; its prototype is the one every call uses.
    const identity = new filters.CompressionFilter({}, {}).sendCompression;
    if (identity?.constructor?.name !== "IdentityHandler") return false;
    handler = Object.getPrototypeOf(identity);
  } catch {
    return false;
  }
  if (handler[PATCHED] === true) return true;
  const original = handler.writeMessage;
  if (typeof original !== "function" || original.length !== 2) return false;
  const framed: WriteMessage = function (this: unknown, message, compress) {
    if (compress || !Buffer.isBuffer(message) || !hasFrameHeadroom(message)) {
      return (original as WriteMessage).call(this, message, compress);
    }
    const out = Buffer.from(
      message.buffer,
      message.byteOffset - FRAME_HEADER_BYTES,
      message.length + FRAME_HEADER_BYTES,
    );
    out[0] = 0; // not compressed
    out.writeUInt32BE(message.length, 1);
    return Promise.resolve(out);
  };
  handler.writeMessage = framed;
  handler[PATCHED] = true;
  return true;
}
