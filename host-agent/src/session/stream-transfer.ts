// The snapshot engine's ChunkSink and ChunkSource over the agent's Connect stream: chunks go to (and come
// from) the control plane's repository in messages cut at STREAM_BATCH_BYTES, each send waiting for the
// stream to drain, so memory stays bounded whatever the workspace size.
import { create } from "@bufbuild/protobuf";
import {
  AgentMessageSchema,
  type ControlMessage,
  type EncodeBuffers,
  type EncodedMessage,
  encodeSnapshotChunks,
  FRAME_HEADER_BYTES,
  MAX_MESSAGE_BYTES,
  RETRY_BUFFER_BYTES,
  type SnapshotNeed,
  STREAM_BATCH_BYTES,
  STREAM_MESSAGE_BUFFER_BYTES,
  type WireChunk,
} from "@dumont/proto";
import type {
  ChunkBuffers,
  ChunkSink,
  ChunkSource,
  FetchedChunk,
  GetChunksOptions,
  ManifestPartBlob,
  SealedChunk,
  SnapshotMeta,
} from "@dumont/repository";
// The subpath, not the package: the session runs from the agent's start, and the package's index loads all of it.
import { BufferPool } from "@dumont/repository/buffer-pool";
import { copyBytes } from "@dumont/repository/copy-bytes";
import { counted } from "@dumont/repository/counted";
import { RESTORE_REQUEST_IDS, SMALLER_SNAPSHOT_ADVICE } from "@dumont/repository/limits";
import { installInPlaceFraming } from "./grpc-framing.js";

/** What the stream classes need from the session. */
export interface StreamPort {
  /** `onWritten`: the message's buffer may be reused (see ControlPlaneSession.send). */
  send(
    message: ReturnType<typeof create<typeof AgentMessageSchema>> | EncodedMessage,
    onWritten?: () => void,
  ): Promise<void>;
  /** Holds the control plane's messages back until the returned function is called (see ControlPlaneSession). */
  pauseInbound?(): () => void;
}

/**
 * A restore stops reading the stream while this many received chunk bytes wait for the engine, and reads
 * again below the second figure: a restore onto a slow disk then holds the control plane back instead of
 * buffering the snapshot in the agent's memory.
 */
const PAUSE_ABOVE_BYTES = 64 * 1024 * 1024;
/** Room the commit message's other fields and framing take beside the manifest. */
const MANIFEST_HEADROOM_BYTES = 64 * 1024;
/**
 * Of that room, what the entries the commit lists as left out may take: 100 of them with 4 KiB paths came to
 * ~0.5 MB, past the headroom, and a message over gRPC's limit ends the agent's whole stream.
 */
const SKIPPED_BYTES = 32 * 1024;

/** The first of `skipped` whose paths and reasons fit in `budget` bytes (filesSkipped still counts them all). */
function skippedWithin<T extends { path: string; reason: string }>(skipped: readonly T[], budget: number): T[] {
  const kept: T[] = [];
  let bytes = 0;
  for (const entry of skipped) {
    bytes += Buffer.byteLength(entry.path) + Buffer.byteLength(entry.reason) + 8;
    if (bytes > budget) break;
    kept.push(entry);
  }
  return kept;
}
const RESUME_BELOW_BYTES = 16 * 1024 * 1024;

/**
 * Chunk messages a snapshot hands to the stream before it waits for grpc-js to call one back. grpc-js writes
 * one message at a time and queues 16 before it pushes back; holding our own queue to a few keeps the encode
 * buffers few, and each new one is fresh memory to fault in (a message is ~1 MiB, up to 4 MiB for one large
 * chunk). Measured, streamed 1 GiB snapshot with agent and control plane on a core each, 4 pairs: 4 in
 * flight against 16+: agent page faults 62k -> 54k, peak RSS 264 -> 239 MiB, wall 0.92-0.99x; 2 in flight
 * was no better than 4.
 */
const MESSAGES_IN_FLIGHT = 4;
type Waiter<T> = { resolve: (v: T) => void; reject: (e: Error) => void };

export class StreamChunkSink implements ChunkSink {
  private batch = 0;
  /**
   * Buffers chunk messages are encoded into, reused once grpc-js has written a message (BufferPool says why:
   * a fresh 1 MiB buffer per message drove the agent's garbage collector). Only for messages larger than
   * RETRY_BUFFER_BYTES: grpc-js calls back a smaller one's write before framing it, so those get their own.
   */
  private readonly buffers = new BufferPool(STREAM_MESSAGE_BUFFER_BYTES, MESSAGES_IN_FLIGHT);
  /**
   * With in-place framing installed (grpc-framing.ts), messages leave room for gRPC's frame header in front;
   * `take` is then asked for that much more than the message, and the pooling test is on the message alone.
   */
  private readonly encodeBuffers: EncodeBuffers = (() => {
    const frameHeadroom = installInPlaceFraming();
    const headroom = frameHeadroom ? FRAME_HEADER_BYTES : 0;
    return {
      frameHeadroom,
      take: (size: number): Buffer =>
        size - headroom > RETRY_BUFFER_BYTES ? this.buffers.take(size) : Buffer.allocUnsafe(size),
    };
  })();
  /** Chunk messages handed to the stream whose writes grpc-js has not called back yet. */
  private inFlight = 0;
  private readonly slotWaiters: Waiter<void>[] = [];
  private readonly needs = new Map<bigint, Waiter<SnapshotNeed>>();
  /** Set when the control plane takes manifest parts by reference (TakeSnapshot.manifest_refs). */
  readonly missingManifestParts?: (ids: string[]) => Promise<string[]>;
  private committed: Waiter<string> | undefined;
  private failed: Error | undefined;

  constructor(
    private readonly port: StreamPort,
    private readonly requestId: string,
    private readonly epoch: bigint,
    /** TakeSnapshot.max_manifest_parts: 0 from a control plane that takes one part only. */
    readonly maxManifestParts = 1,
    /** TakeSnapshot.manifest_refs. */
    manifestRefs = false,
  ) {
    if (manifestRefs) {
      this.missingManifestParts = async (ids) => {
        const offered = ids.map((id) => Buffer.from(id, "hex"));
        const need = await this.offer({ chunkIds: [], manifestIds: offered });
        return need.manifestIds.map((id) => Buffer.from(id).toString("hex"));
      };
    }
  }

  /** Feeds control-plane replies for this request. */
  receive(message: ControlMessage): void {
    const m = message.msg;
    if (m.case === "snapshotNeed") {
      const w = this.needs.get(m.value.batch);
      this.needs.delete(m.value.batch);
      w?.resolve(m.value);
    } else if (m.case === "snapshotCommitted") {
      this.committed?.resolve(m.value.snapshotId);
    }
  }

  /** The stream or the control plane gave up: every pending call fails with `err`. */
  fail(err: Error): void {
    this.failed = err;
    for (const w of this.needs.values()) w.reject(err);
    this.needs.clear();
    this.committed?.reject(err);
    for (const w of this.slotWaiters.splice(0)) w.reject(err);
  }

  async missing(ids: Buffer[]): Promise<Buffer[]> {
    const need = await this.offer({ chunkIds: ids.map((id) => Buffer.from(id)), manifestIds: [] });
    return need.chunkIds.map((id) => Buffer.from(id));
  }

  /** Sends a SnapshotOffer and waits for its SnapshotNeed. */
  private async offer(ids: { chunkIds: Uint8Array[]; manifestIds: Uint8Array[] }): Promise<SnapshotNeed> {
    this.assertOpen();
    const batch = BigInt(++this.batch);
    const answer = new Promise<SnapshotNeed>((resolve, reject) => this.needs.set(batch, { resolve, reject }));
    // If the send below fails, nobody awaits `answer`, and `fail` would reject it unhandled: that killed the
    // agent when the control plane died mid-snapshot.
    answer.catch(() => {});
    await this.port.send(
      create(AgentMessageSchema, {
        msg: {
          case: "snapshotOffer",
          value: { requestId: this.requestId, ...ids, epoch: this.epoch, batch },
        },
      }),
    );
    return answer;
  }

  async put(chunks: SealedChunk[]): Promise<void> {
    this.assertOpen();
    let pending: WireChunk[] = [];
    let bytes = 0;
    const flush = async () => {
      if (pending.length === 0) return;
      // Checked before each message, not only while waiting for a slot: a snapshot the control plane aborted
      // (or whose session ended) sent the rest of its segment, up to tens of MiB, for nothing.
      this.assertOpen();
      while (this.inFlight >= MESSAGES_IN_FLIGHT) {
        await new Promise<void>((resolve, reject) => this.slotWaiters.push({ resolve, reject }));
        this.assertOpen();
      }
      // Encoded now, in one copy: grpc-js may serialise a queued message after put() resolved, and the
      // engine reuses (or transfers to a worker, emptying) the chunk's memory as soon as put() resolves.
      const message = encodeSnapshotChunks(this.requestId, this.epoch, pending, this.encodeBuffers);
      pending = [];
      bytes = 0;
      this.inFlight++;
      await this.port.send(message, () => {
        this.inFlight--;
        this.buffers.give(message);
        this.slotWaiters.shift()?.resolve();
      });
    };
    for (const c of chunks) {
      if (bytes > 0 && bytes + c.blob.length > STREAM_BATCH_BYTES) await flush();
      pending.push({ id: c.id, blob: c.blob, plainLength: c.plainLength });
      bytes += c.blob.length;
    }
    await flush();
  }

  async commit(manifestParts: readonly ManifestPartBlob[], meta: SnapshotMeta): Promise<string> {
    this.assertOpen();
    if (manifestParts.length === 0 || manifestParts.length > Math.max(1, this.maxManifestParts)) {
      throw new Error(
        `a manifest of ${manifestParts.length} parts; the control plane takes 1 to ${Math.max(1, this.maxManifestParts)}`,
      );
    }
    if (!this.missingManifestParts && manifestParts.some((part) => !Buffer.isBuffer(part))) {
      throw new Error("a manifest part named by id, to a control plane that takes sealed parts only");
    }
    // As a message: the sealed part, or the id of one the control plane holds.
    const wire = (part: ManifestPartBlob) =>
      Buffer.isBuffer(part)
        ? { part, storedId: new Uint8Array() }
        : { part: new Uint8Array(), storedId: Buffer.from(part.stored, "hex") };
    // A message over gRPC's limit would not fail this snapshot alone: it would end the agent's whole stream.
    for (const blob of manifestParts) {
      if (Buffer.isBuffer(blob) && blob.length > MAX_MESSAGE_BYTES - MANIFEST_HEADROOM_BYTES) {
        throw new Error(
          `the sealed manifest is ${(blob.length / 2 ** 20).toFixed(1)} MiB, more than the agent's stream ` +
            `carries in one message (${MAX_MESSAGE_BYTES / 2 ** 20} MiB): ${SMALLER_SNAPSHOT_ADVICE}`,
        );
      }
    }
    const last = manifestParts.length - 1;
    for (let index = 0; index < last; index++) {
      await this.port.send(
        create(AgentMessageSchema, {
          msg: {
            case: "snapshotManifestPart",
            value: { requestId: this.requestId, index, ...wire(manifestParts[index]), epoch: this.epoch },
          },
        }),
      );
      this.assertOpen();
    }
    const lastPart = wire(manifestParts[last]);
    const done = new Promise<string>((resolve, reject) => {
      this.committed = { resolve, reject };
    });
    done.catch(() => {}); // as in `missing`: awaited below only if the send succeeds
    const s = meta.stats;
    await this.port.send(
      create(AgentMessageSchema, {
        msg: {
          case: "snapshotCommit",
          value: {
            requestId: this.requestId,
            manifest: lastPart.part,
            manifestStoredId: lastPart.storedId,
            manifestParts: manifestParts.length,
            epoch: this.epoch,
            stats: s
              ? {
                  files: BigInt(s.files),
                  bytesRead: BigInt(s.bytesRead),
                  bytesNew: BigInt(s.bytesNew),
                  bytesStored: BigInt(s.bytesStored),
                  chunksNew: BigInt(s.chunksNew),
                  seconds: s.seconds,
                  filesSkipped: BigInt(s.filesSkipped ?? 0),
                  skipped: skippedWithin(s.skipped ?? [], SKIPPED_BYTES),
                }
              : undefined,
          },
        },
      }),
    );
    return done;
  }

  async abort(): Promise<void> {
    // The control plane ends its half-written snapshot when it sees SnapshotFailed (sent by the caller), keeping
    // the chunks that reached it for the next attempt. A put still sending stops at its next message.
    this.failed ??= new Error("the snapshot was aborted");
  }

  private assertOpen(): void {
    if (this.failed) throw this.failed;
  }
}

/** Size of one receive buffer: 8 MiB, the worker pool's unit (about 7 chunks of the ~1 MiB average). */
const RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024;

export class StreamChunkSource implements ChunkSource {
  private batch = 0;
  private readonly queues = new Map<bigint, ChunkQueue>();
  /** Chunk bytes received and not yet taken by the engine, over every batch. */
  private queuedBytes = 0;
  /** Set while inbound messages are held back. */
  private releaseInbound: (() => void) | undefined;
  /** Set once the session ended: every later call fails with it, at once (see `fail`). */
  private failed: Error | undefined;

  constructor(
    private readonly port: StreamPort,
    private readonly requestId: string,
    private readonly snapshotId: string,
    /** The manifest's sealed parts, in order (ManifestParts collects those sent ahead of the Restore). */
    private readonly manifestBlobs: Buffer[],
    /**
     * Where chunks are copied as they arrive (the agent passes its worker pool's shared buffers, as direct
     * mode reads packs into them): the restore engine then hands whole buffers to its workers without
     * copying, and each gRPC message can be collected as soon as it is read. A buffer goes back through
     * `release` only if no chunk in it was taken; once one is, it is the engine's (it recycles the buffer
     * after writing its batch).
     */
    private readonly buffers?: ChunkBuffers,
    /** Told once per batch that had chunks dropped (see `receive`). */
    private readonly warn?: (message: string) => void,
    /** Whether the control plane answers `otherCopy` (Restore.other_copies). */
    readonly otherCopies = false,
  ) {}

  receive(message: ControlMessage): void {
    if (this.failed || message.msg.case !== "restoreChunks") return;
    const v = message.msg.value;
    const q = this.queues.get(v.batch);
    if (!q) return;
    for (const c of v.chunks) {
      // Only a chunk the batch asked for and has not had yet is queued: the engine counts a file's chunks
      // down once per delivery, so a duplicate standing in for a chunk never sent would finish the file
      // with a hole of zeros. What is dropped is never delivered, and the engine fails the files it leaves.
      if (!q.expect(c.id)) continue;
      const id = Buffer.from(c.id); // a copy: a view would keep the whole message alive
      // The pack it was read from, which the engine names where the chunk does not verify (none from an older
      // control plane).
      const pack = c.pack.length === 32 ? Buffer.from(c.pack).toString("hex") : undefined;
      if (c.error) q.push({ id, error: c.error, pack });
      else q.push({ id, blob: q.store(c.blob), pack });
    }
    // A receive buffer never spans two batches: the engine writes (and recycles) a buffer with its batch.
    if (v.last) {
      const { dropped, missing } = q.end();
      if (dropped > 0) {
        this.warn?.(
          `restore ${this.requestId}: the control plane sent ${counted(dropped, "chunk")} in batch ${v.batch} that were ` +
            `not requested or came twice (dropped); ${counted(missing, "requested chunk")} never came`,
        );
      }
    }
    // Never while the engine waits on a batch: the chunks it waits for would be held back too.
    if (
      !this.releaseInbound &&
      this.queuedBytes > PAUSE_ABOVE_BYTES &&
      ![...this.queues.values()].some((q) => q.waiting)
    ) {
      this.releaseInbound = this.port.pauseInbound?.();
    }
  }

  /** The session ended: pending and later `get`s fail with `err` (the first one given), and nothing more is read. */
  fail(err: Error): void {
    this.failed ??= err;
    for (const q of this.queues.values()) q.fail(this.failed);
    this.resumeInbound();
  }

  /** Bytes entered (positive) or left (negative) the queues; reading resumes once few are left. */
  private account(bytes: number): void {
    this.queuedBytes += bytes;
    if (this.queuedBytes < RESUME_BELOW_BYTES) this.resumeInbound();
  }

  private resumeInbound(): void {
    const release = this.releaseInbound;
    this.releaseInbound = undefined;
    release?.();
  }

  async readManifest(snapshotId: string): Promise<{ snapshotId: string; manifestBlobs: Buffer[] }> {
    if (snapshotId !== this.snapshotId && !this.snapshotId.startsWith(snapshotId)) {
      throw new Error(`this restore carries snapshot ${this.snapshotId}, not ${snapshotId}`);
    }
    return { snapshotId: this.snapshotId, manifestBlobs: this.manifestBlobs };
  }

  async *get(ids: Buffer[], options: GetChunksOptions = {}): AsyncIterable<FetchedChunk> {
    const otherCopies = options.otherCopy === true;
    if (otherCopies && !this.otherCopies) throw new Error("the control plane cannot send other copies of chunks");
    // In requests of at most RESTORE_REQUEST_IDS, one after another: the control plane refuses larger ones.
    for (let at = 0; at < ids.length || at === 0; at += RESTORE_REQUEST_IDS) {
      yield* this.request(ids.slice(at, at + RESTORE_REQUEST_IDS), otherCopies);
    }
  }

  private async *request(ids: Buffer[], otherCopies: boolean): AsyncIterable<FetchedChunk> {
    // Nothing is sent once the session is gone: the request would go out on the next session, which ignores
    // it, and the engine would wait for good.
    if (this.failed) throw this.failed;
    const batch = BigInt(++this.batch);
    // A consumer waiting on an empty queue must never find the stream paused (its chunks would not come).
    const queue = new ChunkQueue(
      ids,
      (bytes) => this.account(bytes),
      () => this.resumeInbound(),
      this.buffers,
    );
    this.queues.set(batch, queue);
    try {
      await this.port.send(
        create(AgentMessageSchema, {
          msg: {
            case: "restoreChunkRequest",
            value: { requestId: this.requestId, batch, chunkIds: ids, otherCopies },
          },
        }),
      );
      yield* queue;
    } finally {
      this.queues.delete(batch);
      this.account(-queue.drop());
    }
  }
}

/**
 * An async queue of fetched chunks for one request batch; tells its owner the bytes that enter and leave, and
 * copies blobs into receive buffers when it has them (see StreamChunkSource's `buffers`).
 */
class ChunkQueue implements AsyncIterable<FetchedChunk> {
  /**
   * Chunks from `head` on are queued. Taken by moving `head`, not by items.shift(): shift copies the rest of a
   * large array, and a restore of 300,000 small files queued that many (6.5 s of the agent's main thread in
   * two restores, against none).
   */
  private items: (FetchedChunk | undefined)[] = [];
  private head = 0;
  private done = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;
  /** The receive buffer being filled, and how much of it is. */
  private fill: Buffer | undefined;
  private filled = 0;
  /** Receive buffers none of whose chunks the consumer has taken yet: still this queue's to release. */
  private readonly untaken = new Set<ArrayBufferLike>();
  /**
   * The ids requested and not yet received, as binary strings (a 32-byte key, cheap for batches of thousands
   * of chunks); freed when the batch ends. A set, not counts: a source yields each requested chunk once
   * (ChunkSource.get), and the restore engine asks for each id once a batch.
   */
  private expected: Set<string> | undefined;
  /** Chunks received that were not expected (see `expect`). */
  private dropped = 0;

  constructor(
    ids: readonly Buffer[],
    private readonly account: (bytes: number) => void,
    private readonly onWait: () => void,
    private readonly buffers?: ChunkBuffers,
  ) {
    this.expected = new Set();
    for (const id of ids) this.expected.add(id.toString("latin1"));
  }

  /**
   * Whether a chunk with this id is to be queued: requested by this batch and not received yet (it is then
   * no longer expected). One that is not is counted as dropped; after the batch ended, nothing is expected.
   */
  expect(id: Uint8Array): boolean {
    const key = Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString("latin1");
    if (this.expected?.delete(key)) return true;
    this.dropped++;
    return false;
  }

  /** The blob to queue for `bytes` (a view into a received message): a copy in a receive buffer if there are any. */
  store(bytes: Uint8Array): Buffer {
    if (!this.buffers || bytes.length > RECEIVE_BUFFER_BYTES) {
      // Left in the message, and the buffer being filled is done with: the engine, seeing a blob not in it, hands
      // that buffer on (and back to the pool once written), so chunks copied into it after would go into memory
      // given back, handed out twice.
      this.fill = undefined;
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
    if (!this.fill || this.filled + bytes.length > this.fill.length) {
      this.fill = this.buffers.allocate(RECEIVE_BUFFER_BYTES);
      this.filled = 0;
      this.untaken.add(this.fill.buffer);
    }
    copyBytes(bytes, this.fill, this.filled);
    const blob = this.fill.subarray(this.filled, this.filled + bytes.length);
    this.filled += bytes.length;
    return blob;
  }

  /** Whether its consumer is waiting for the next chunk. */
  get waiting(): boolean {
    return this.wake !== undefined;
  }

  push(item: FetchedChunk): void {
    this.items.push(item);
    this.account(item.blob?.length ?? 0);
    this.wakeUp();
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Empties the queue (its consumer is gone); returns the bytes it held. */
  drop(): number {
    let bytes = 0;
    for (let i = this.head; i < this.items.length; i++) bytes += this.items[i]?.blob?.length ?? 0;
    this.items = [];
    this.head = 0;
    for (const buffer of this.untaken) this.buffers?.release(Buffer.from(buffer));
    this.untaken.clear();
    this.fill = undefined;
    return bytes;
  }

  /** The next queued chunk, if any; the taken part of the array is dropped once it is most of it. */
  private take(): FetchedChunk | undefined {
    if (this.head === this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 4096 && 2 * this.head >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** The batch's last message came: returns the chunks dropped and the requested ones that never came. */
  end(): { dropped: number; missing: number } {
    if (this.done) return { dropped: 0, missing: 0 }; // a second "last": reported once already
    const missing = this.expected?.size ?? 0;
    this.expected = undefined;
    this.done = true;
    this.fill = undefined;
    this.wakeUp();
    return { dropped: this.dropped, missing };
  }

  fail(err: Error): void {
    this.error = err;
    this.wakeUp();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<FetchedChunk> {
    for (;;) {
      const item = this.take();
      if (item) {
        this.account(-(item.blob?.length ?? 0));
        if (item.blob) this.untaken.delete(item.blob.buffer);
        yield item;
        continue;
      }
      if (this.error) throw this.error;
      if (this.done) return;
      this.onWait();
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = undefined;
    }
  }
}
