// The agent protocol version (see proto/CHANGELOG.md) and the limits both ends of the stream obey.
export const PROTOCOL_VERSION = 1;
export const SUPPORTED_PROTOCOL_VERSIONS: readonly number[] = [1];

/**
 * Features added to a protocol version after its first release, which an agent announces in Hello.capabilities.
 * An agent without one ignores the fields that ask for it (proto3), so the control plane refuses such a
 * request for that host instead of letting it run differently from what was asked.
 */
export const AGENT_CAPABILITIES = {
  /** TakeSnapshot.exclude, and the workspace's .dumontignore. */
  snapshotExclude: "snapshot.exclude",
  /** Restore.include. */
  restoreInclude: "restore.include",
  /** Restore.no_owners. */
  restoreNoOwners: "restore.no-owners",
  /** Manifests in parts: ManifestPart, TakeSnapshot.max_manifest_parts, Restore.manifest_parts. */
  manifestParts: "manifest.parts",
  /** OpenDownloads, and the Downloads stream: restores on a connection of their own. */
  downloads: "downloads",
} as const;

/**
 * Both ends raise gRPC's 4 MiB default receive limit to this; real messages stay far below it
 * (chunk batches are cut at STREAM_BATCH_BYTES and one chunk is at most 4 MiB).
 */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** Snapshot chunk batches are cut at this many payload bytes. */
export const STREAM_BATCH_BYTES = 1024 * 1024;
/**
 * Size of the reusable buffers chunk messages are encoded into. It holds a full batch with its framing, and
 * a batch of one chunk of up to 2 MiB (a batch is cut before the chunk that would overflow it, unless that
 * chunk is alone; chunks average 1 MiB). A message of one larger chunk (up to 4 MiB) gets a buffer its size.
 */
export const STREAM_MESSAGE_BUFFER_BYTES = 2 * STREAM_BATCH_BYTES + 64 * 1024;
/**
 * Encode buffers the control plane keeps for reuse in a streamed restore: the stream's write queue holds 16
 * messages before it pushes back.
 */
export const STREAM_BUFFERS_KEPT = 18;

/**
 * The agent's grpc-js client keeps messages of up to this many bytes (per call; grpc-js's default is 1 MiB)
 * for a transparent retry, and calls back their writes on the next tick, before they have even been framed.
 * Larger messages are called back once grpc-js has framed and written them: only their buffers can be reused
 * then (the agent's are written from its own memory, see host-agent/src/session/grpc-framing.ts). Chunk
 * messages are about STREAM_BATCH_BYTES, far above this.
 */
export const RETRY_BUFFER_BYTES = 256 * 1024;

/**
 * The name every control-plane server certificate carries. Agents pin the CA by hash and check this
 * name, so the address they dial (IP, DNS, a tunnel) does not have to appear in the certificate.
 */
export const CONTROL_PLANE_TLS_NAME = "dumont-control-plane";

/**
 * HTTP/2 flow-control window for the agent's streams (per stream and per connection). The 64 KiB default
 * caps a stream at window / round trip — tens of MB/s on loopback — far below the engine.
 *
 * Node's http2 stops reading a connection while one of its writes is in progress (nodejs/node#29399). With
 * bulk data both ways on one connection (a snapshot's upload and a restore's download at once), each side
 * could wait on a write the other was not reading, for good, once more was in flight than the kernel's
 * socket buffers hold: with 8 MiB windows a stress test (an upload, a restore and a snapshot at once on one
 * agent) stalled about once in 10-30 rounds. So restores go on a connection of their own (the Downloads
 * stream, AgentSession.bulkSender): each connection carries bulk data one way only, and the window is wide
 * again. It was 1 MiB in between, which held an agent 20 ms away to 28 MB/s each way (snapshot bench,
 * `--stream-delay-ms 10`, 256 MiB); 8 MiB: 136 MB/s up, 179 MB/s down on the same run.
 */
export const FLOW_CONTROL_WINDOW_BYTES = 8 * 1024 * 1024;
