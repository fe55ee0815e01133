// Writes sealed chunks into packs and commits snapshots: the ChunkSink of direct mode, and what the
// control plane uses to store what agents send. Order of durability: pack, then its index object, then
// (at commit) the manifest, then the snapshot object — so a crash never leaves a snapshot that points at
// missing data, and packs already written are found (and reused) by the next writer.
import { hostname } from "node:os";
import { type BlobWriter, getObject } from "./blob-store.js";
import { copyBytes } from "./copy-bytes.js";
import { counted } from "./counted.js";
import { chunkArrivedDamaged, isRepositoryError, RepositoryError } from "./errors.js";
import { forEachLimited } from "./for-each-limited.js";
import { MAX_MANIFEST_BYTES, MAX_SEALED_MANIFEST_BYTES } from "./limits.js";
import { acquireLock, type HeldLock, putWhileTrusted } from "./lock.js";
import {
  MAX_CHUNK_LENGTH,
  type ManifestEntries,
  type ManifestEntry,
  type ManifestTotals,
  manifestPartEntries,
  RestorableCheck,
} from "./manifest.js";
import { indexKey, newPackId, PackEntryList, packKey, sealIndex, sealPackTrailer } from "./pack.js";
import type { RepositoryAccess } from "./repository-access.js";
import type { RepositoryIndex } from "./repository-index.js";
import { chunkCodec, isObjectId, sha256 } from "./sealing.js";
import { manifestKey, sealSnapshotRecord, snapshotKey } from "./snapshot-record.js";
import type { ChunkSink, ManifestPartBlob, SealedChunk, SnapshotMeta } from "./transfer.js";

export const DEFAULT_PACK_SIZE = 32 * 1024 * 1024;
const MAX_PACK_SIZE = 1024 * 1024 * 1024;
/** The id of a manifest part: the hex SHA-256 of its sealed bytes. */

export interface RepositoryWriterOptions {
  /** A pack is sealed once it holds this many bytes (default 32 MiB). */
  packSize?: number;
  /**
   * Packs being written at once (default 3); `put` waits beyond that, which bounds memory. Each write ends
   * in an fsync (file://) or a round trip (S3); with one in flight the snapshot pipeline stalled on it.
   */
  uploadConcurrency?: number;
  /** Open every chunk on arrival and check its SHA-256 (costs a decrypt + hash per byte). */
  verifyChunks?: boolean;
  /** Take a shared repository lock so a concurrent prune cannot pull packs away (default true). */
  lock?: boolean;
  /**
   * A lock the caller holds and keeps (a prune's exclusive one, for its repack), in place of a shared lock of the
   * writer's own: the writer checks it is still trusted before each index object and refreshes it as it writes,
   * as with its own, and leaves releasing it to the caller.
   */
  heldLock?: HeldLock;
  /** Called after each pack and its index are durable (progress; crash tests). */
  onPackWritten?: (packId: string, bytes: number) => void | Promise<void>;
}

export interface WriterStats {
  packs: number;
  chunks: number;
  /** Bytes of packs, index objects, manifest and snapshot object written. */
  bytesWritten: number;
  /** Bytes of the packs alone (what a prune frees is counted in packs too). */
  packBytes: number;
  /**
   * The chunks it was handed that it did not store, being stored already (by another writer sharing its index: two
   * snapshots of one tenant storing the same bytes at once, each told the chunk was needed), with their stored
   * (sealed) and plain bytes: the sender counted them as new.
   */
  chunksSkipped: number;
  chunkBytesSkipped: number;
  plainBytesSkipped: number;
}

/**
 * A pack being filled: written as it fills where the store can (`writer`, file://), else gathered in `buf` and
 * put whole (S3).
 */
interface OpenPack {
  packId: string;
  writer?: BlobWriter;
  buf?: Buffer;
  entries: PackEntryList;
  size: number;
}

/** Room a pack buffer keeps beyond the pack size, so the blob that crosses it still fits. */
const PACK_SLACK = 4 * 1024 * 1024 + 64 * 1024;

export class RepositoryWriter implements ChunkSink {
  readonly stats: WriterStats = {
    packs: 0,
    chunks: 0,
    bytesWritten: 0,
    packBytes: 0,
    chunksSkipped: 0,
    chunkBytesSkipped: 0,
    plainBytesSkipped: 0,
  };
  /**
   * The committed snapshot's totals as its record holds them (counted here from the manifest, not taken from
   * the sender's stats), once `commit` has returned: the control plane files them in its catalogue. Kept beside
   * ChunkSink's `commit`, whose answer is the id alone.
   */
  get committedTotals(): ManifestTotals | undefined {
    return this.totals;
  }
  private totals: ManifestTotals | undefined;
  /** Packs being filled or written: their chunks count as held (`missing`, `put`) until they are indexed. */
  private readonly pending = new Set<PackEntryList>();
  private current: OpenPack | undefined;
  private readonly freeBuffers: Buffer[] = [];
  private readonly uploads = new Set<Promise<void>>();
  private failure: Error | undefined;
  private closed = false;
  /** Set by `abort({ keep: true })`: the pack being filled is still sealed and written, not dropped. */
  private keeping = false;
  /** Puts under way: an abort that keeps what arrived lets each finish the chunk it is on first. */
  private readonly putting = new Set<Promise<void>>();
  private committing: Promise<string> | undefined;
  /** Manifest parts read back and found whole (missingManifestParts). */
  private readonly partsHeld = new Set<string>();
  /** Packs this writer wrote (and made durable, names and all). */
  private readonly packsWritten = new Set<string>();
  private readonly packSize: number;
  private readonly uploadConcurrency: number;

  private constructor(
    readonly repository: RepositoryAccess,
    readonly index: RepositoryIndex,
    private readonly options: RepositoryWriterOptions,
    private readonly lock: HeldLock | undefined,
  ) {
    this.packSize = options.packSize ?? DEFAULT_PACK_SIZE;
    this.uploadConcurrency = Math.max(1, options.uploadConcurrency ?? 3);
    if (!(this.packSize > 0 && this.packSize <= MAX_PACK_SIZE)) {
      throw new RepositoryError("invalid-argument", `packSize must be 1..${MAX_PACK_SIZE} bytes, got ${this.packSize}`);
    }
  }

  /** Takes the shared lock (unless `lock: false`), then the index from `loadIndex`. */
  static async start(
    repository: RepositoryAccess,
    loadIndex: () => Promise<RepositoryIndex>,
    options: RepositoryWriterOptions = {},
  ): Promise<RepositoryWriter> {
    if (options.heldLock) return new RepositoryWriter(repository, await loadIndex(), options, options.heldLock);
    const lock =
      options.lock === false
        ? undefined
        : await acquireLock(repository.store, repository.key, { exclusive: false, purpose: "a snapshot" });
    try {
      return new RepositoryWriter(repository, await loadIndex(), options, lock);
    } catch (err) {
      await lock?.release();
      throw err;
    }
  }

  async missing(ids: Buffer[]): Promise<Buffer[]> {
    this.assertUsable();
    return ids.filter((id) => !this.index.has(id) && !this.isPending(id));
  }

  put(chunks: SealedChunk[]): Promise<void> {
    const putting = this.putChunks(chunks);
    const settled = putting.then(
      () => {},
      () => {},
    );
    this.putting.add(settled);
    void settled.then(() => this.putting.delete(settled));
    return putting;
  }

  private async putChunks(chunks: SealedChunk[]): Promise<void> {
    this.assertUsable();
    const key = this.repository.key;
    for (const chunk of chunks) {
      // Again for every chunk: `abort` may come while this put waits (the control plane aborts as soon as an
      // agent drops), and a pack opened after it would be left open.
      this.assertUsable();
      if (chunk.id.length !== 32) throw new RepositoryError("invalid-argument", "a chunk id must be 32 bytes");
      if (this.index.has(chunk.id) || this.isPending(chunk.id)) {
        this.stats.chunksSkipped++;
        this.stats.chunkBytesSkipped += chunk.blob.length;
        this.stats.plainBytesSkipped += chunk.plainLength;
        continue;
      }
      if (!(chunk.plainLength > 0 && chunk.plainLength <= MAX_CHUNK_LENGTH)) {
        const hex = chunk.id.toString("hex");
        throw new RepositoryError("invalid-argument", `chunk ${hex} has an impossible length ${chunk.plainLength}`);
      }
      if (this.options.verifyChunks) {
        const problem = chunkCodec.verifyChunk(key, chunk.id, chunk.blob, chunk.plainLength);
        if (problem !== null) throw chunkArrivedDamaged(chunk.id.toString("hex"), problem);
      }
      const buf = this.current?.buf;
      if (buf && this.current && this.current.size + chunk.blob.length > buf.length) await this.sealCurrentPack();
      if (!this.current) {
        const opened = await this.openPack(chunk.blob.length);
        if (this.closed && !this.keeping) {
          await opened.writer?.abort().catch(() => {});
          this.assertUsable();
        }
        this.current = opened;
      }
      const pack = this.current;
      // Copied (or written) now: the caller may reuse the blob's memory as soon as put resolves.
      if (pack.writer) await pack.writer.write(chunk.blob);
      else if (pack.buf) copyBytes(chunk.blob, pack.buf, pack.size);
      pack.entries.push(chunk.id, pack.size, chunk.blob.length, chunk.plainLength);
      pack.size += chunk.blob.length;
      if (pack.size >= this.packSize) await this.sealCurrentPack();
    }
  }

  /** Makes every chunk put so far durable (packs and their index objects). */
  async flush(): Promise<void> {
    this.assertUsable();
    await this.sealCurrentPack();
    await Promise.allSettled([...this.uploads]);
    this.throwIfFailed();
  }

  /**
   * A part counts as held only once read back and found to hash to its id: one damaged in the store (a bit
   * flipped, cut short) is reported missing, so the agent seals and sends it again and the commit replaces the
   * damaged copy. Held on existence alone, an agent's local index kept naming it, and every later snapshot of
   * the workspace either failed (the control plane reads named parts back at commit) or was committed unable
   * to restore (direct mode, which does not). Reading them costs what one restore's manifest read does.
   */
  async missingManifestParts(ids: string[]): Promise<string[]> {
    this.assertUsable();
    // Each part is read once for this writer however often it is asked about (an agent of the control plane
    // may name one many times, in one offer or many): held stays held while the writer's lock keeps prunes out.
    const unread = [...new Set(ids)].filter((id) => isObjectId(id) && !this.partsHeld.has(id));
    await forEachLimited(unread, 8, async (id) => {
      const blob = await getObject(this.repository.store, manifestKey(id)).catch((err) => absentOr(err, true));
      if (blob && sha256(blob).toString("hex") === id) this.partsHeld.add(id);
    });
    return ids.filter((id) => !this.partsHeld.has(id));
  }

  async commit(
    manifestParts: readonly ManifestPartBlob[],
    meta: SnapshotMeta,
    built?: ManifestEntries,
  ): Promise<string> {
    const committing = this.commitOnce(manifestParts, meta, built);
    this.committing = committing;
    return committing;
  }

  private async commitOnce(
    manifestParts: readonly ManifestPartBlob[],
    meta: SnapshotMeta,
    built?: ManifestEntries,
  ): Promise<string> {
    await this.flush();
    // A part named by id must be in the repository; it is read back (and held to its id) when its entries are to
    // be checked here, as they are when they come from elsewhere.
    const manifestBlobs = await this.partsInHand(manifestParts, built === undefined);
    // One pass over the entries: what this process built as built, what arrives from elsewhere (an agent's
    // stream) opened part by part. Paths that could never be restored are refused on arrival (whether outward
    // symlinks are acceptable is the restorer's call), and so is a chunk the repository does not hold. Only
    // each path and its kind are held across parts: a manifest of 300,000 files opened whole was ~115 MB.
    const check = new RestorableCheck();
    const totals: ManifestTotals = { files: 0, dirs: 0, symlinks: 0, bytes: 0, chunks: 0 };
    const absent: string[] = [];
    // A chunk listed at another length than it has: the file could never be restored (the restore finds the
    // chunk's plain length wrong), and the snapshot's size, counted from the lengths, would be what the sender
    // says.
    let misfit: string | undefined;
    /** Packs holding the snapshot's chunks: the names of those another writer wrote are made durable below. */
    const packsNamed = new Set<string>();
    const visit = (e: ManifestEntry): void => {
      check.add(e);
      if (e.type === "dir") totals.dirs++;
      else if (e.type === "symlink") totals.symlinks++;
      else {
        totals.files++;
        totals.bytes += e.size;
        totals.chunks += e.chunks.length;
        for (const [i, id] of e.chunks.entries()) {
          const stored = this.index.plainLengthOf(id);
          if (stored < 0) absent.push(`${id} (in ${e.path})`);
          else packsNamed.add(this.index.packIdOf(id)!);
          if (stored >= 0 && stored !== e.lengths[i] && misfit === undefined) {
            misfit = `${JSON.stringify(e.path)} lists chunk ${id} as ${counted(e.lengths[i], "byte")}; it holds ${stored}`;
          }
        }
      }
    };
    if (built) for (const e of built.entries) visit(e);
    else {
      const blobs = manifestBlobs.map((blob) => blob ?? Buffer.alloc(0)); // every part is in hand without `built`
      let opened = 0;
      try {
        for (const part of manifestPartEntries(this.repository.key, blobs)) {
          for (const e of part) visit(e);
          opened++;
        }
      } catch (err) {
        // A part as the caller sealed it (an agent's, over the stream) that does not open is the caller's manifest
        // refused, not damage in the repository: only a stored part read back here is that.
        if (isRepositoryError(err, "corrupt") && Buffer.isBuffer(manifestParts[opened])) {
          throw new RepositoryError(
            "invalid-manifest",
            `manifest part ${opened + 1} of ${manifestParts.length}, as given, does not open: ${err.message}`,
            { cause: err },
          );
        }
        throw err;
      }
    }
    check.finish();
    if (misfit !== undefined) throw new RepositoryError("invalid-manifest", `the manifest is wrong: ${misfit}`);
    if (absent.length > 0) {
      throw new RepositoryError(
        "incomplete",
        `the manifest references ${counted(absent.length, "chunk")} the repository does not hold, e.g. ${absent[0]}`,
      );
    }
    const store = this.repository.store;
    const manifests = manifestParts.map((part, i) => {
      if (!Buffer.isBuffer(part)) return part.stored; // held (partsInHand): no prune runs while this writer's lock is held
      const blob = manifestBlobs[i];
      if (!blob) throw new Error("unreachable: a sealed part is always in hand");
      return sha256(blob).toString("hex");
    });
    // Parts hold different paths, so no two are the same object; readers refuse a record naming one twice.
    if (new Set(manifests).size !== manifests.length) {
      throw new RepositoryError(
        "invalid-manifest",
        "the manifest names one part twice: its parts hold different paths, so are all different",
      );
    }
    const partsWritten = new Set<string>();
    for (const [i, blob] of manifestBlobs.entries()) {
      if (!Buffer.isBuffer(manifestParts[i]) || !blob) continue;
      const manifestId = manifests[i];
      // Parts are sealed deterministically (sealManifestParts): an earlier snapshot's unchanged part is already
      // there under the same id (a hash of these very bytes), and is not written again, once read back and
      // found to be those bytes (a damaged copy is replaced by this one). Prune cannot remove it meanwhile:
      // it runs only under an exclusive lock, and this writer holds a shared one.
      if ((await store.stat(manifestKey(manifestId)))?.size === blob.length) {
        const held = await getObject(store, manifestKey(manifestId)).catch(() => undefined);
        if (held?.equals(blob)) continue;
      }
      await store.put(manifestKey(manifestId), blob);
      partsWritten.add(manifestId);
      this.stats.bytesWritten += blob.length;
    }
    // What the record names that this writer did not write was written by another, which may have been killed
    // after its rename and before it made the name durable: a power loss could take that away from under this
    // record (on file://, one fsync per directory: ~13 ms for all 256 of data/ on the dev VM's ext4).
    const reused = [
      ...[...packsNamed].filter((p) => !this.packsWritten.has(p)).flatMap((p) => [packKey(p), indexKey(p)]),
      ...manifests.filter((m) => !partsWritten.has(m)).map(manifestKey),
    ];
    if (reused.length > 0) await store.syncEntries?.(reused);
    const { id, sealed } = sealSnapshotRecord(this.repository.key, {
      time: meta.time ?? new Date().toISOString(),
      workspace: meta.workspace,
      epoch: meta.epoch,
      tenant: meta.tenant,
      hostname: meta.hostname ?? hostname(),
      ...(meta.source !== undefined ? { source: meta.source } : {}),
      manifests,
      totals,
      ...(meta.stats ? { stats: meta.stats } : {}),
      ...(meta.repairedFrom !== undefined ? { repairedFrom: meta.repairedFrom } : {}),
    });
    // The last moment an abort can still stop it: from here the snapshot exists (abort waits for it). And the
    // lock must still be ours: had a prune found it stale and removed it, it may have deleted packs this
    // snapshot references.
    this.assertUsable();
    await this.lock?.assertHeld();
    // And it must land while the lock is still trusted: a record that took longer may have landed after a prune
    // removed the lock as stale and listed the snapshots, deleting what it names.
    await putWhileTrusted(this.repository.store, this.lock, snapshotKey(id), sealed, "its record");
    this.stats.bytesWritten += sealed.length;
    this.closed = true;
    this.totals = totals;
    if (!this.options.heldLock) await this.lock?.release();
    return id;
  }

  /**
   * Each part's sealed bytes: as given, or read from the repository for a part named by id when `read` (else
   * only checked to be there, and undefined). A part that is not there, or not what its id says, is refused; so
   * is a part named twice (parts hold different paths: no manifest repeats one), and parts that are more bytes
   * together than a manifest seals to, before any is read: a few bytes of ids naming one large stored part over
   * and over would otherwise have this process read and hold gigabytes.
   */
  private async partsInHand(parts: readonly ManifestPartBlob[], read: boolean): Promise<(Buffer | undefined)[]> {
    const store = this.repository.store;
    const what = (i: number) => `manifest part ${i + 1} of ${parts.length}`;
    const notThere = (i: number, id: string) =>
      new RepositoryError(
        "incomplete",
        `${what(i)}, manifests/${id}, is not in the repository (pruned since the snapshot that stored it?)`,
      );
    const first = new Map<string, number>();
    for (const [i, part] of parts.entries()) {
      if (Buffer.isBuffer(part)) continue;
      if (!isObjectId(part.stored)) {
        throw new RepositoryError(
          "invalid-argument",
          `${what(i)} is named by ${JSON.stringify(part.stored)}, not a hex id`,
        );
      }
      const earlier = first.get(part.stored);
      if (earlier !== undefined) {
        throw new RepositoryError(
          "invalid-argument",
          `${what(i)} names manifests/${part.stored}, as part ${earlier + 1} did; a manifest's parts are all different`,
        );
      }
      first.set(part.stored, i);
    }
    // Settled whole, then the first refusal in part order: the same manifest always fails the same way.
    const settled = async <T>(each: (part: ManifestPartBlob, i: number) => Promise<T>): Promise<T[]> => {
      const results = await Promise.allSettled(parts.map(each));
      const refused = results.find((r) => r.status === "rejected");
      if (refused) throw refused.reason;
      return results.map((r) => (r as PromiseFulfilledResult<T>).value);
    };
    const sizes = await settled(async (part, i) => {
      if (Buffer.isBuffer(part)) return part.length;
      const info = await store.stat(manifestKey(part.stored));
      if (info === undefined) throw notThere(i, part.stored);
      return info.size;
    });
    const total = sizes.reduce((sum, size) => sum + size, 0);
    if (total > MAX_SEALED_MANIFEST_BYTES) {
      throw new RepositoryError(
        "invalid-argument",
        `the manifest's ${parts.length} parts are ${total} bytes together, more than a manifest of ` +
          `${MAX_MANIFEST_BYTES / 2 ** 20} MiB seals to`,
      );
    }
    if (!read) return parts.map((part) => (Buffer.isBuffer(part) ? part : undefined));
    return settled(async (part, i) => {
      if (Buffer.isBuffer(part)) return part;
      const blob = await getObject(store, manifestKey(part.stored)).catch((err) => absentOr(err));
      if (blob === undefined) throw notThere(i, part.stored);
      if (!sha256(blob).equals(Buffer.from(part.stored, "hex"))) {
        throw new RepositoryError("corrupt", `${what(i)}, manifests/${part.stored}, does not hash to its id`);
      }
      return blob;
    });
  }

  /**
   * Gives up: what was written stays for the next writer to reuse, or a prune to remove. A commit in progress
   * either stops before its snapshot object or completes, and is waited for; so are uploads, so the lock is
   * released only once nothing of this writer is still being written.
   *
   * With `keep`, the pack being filled is sealed and written too (its index object after it, as any pack's),
   * unless the writer has failed: every chunk put before the abort is then in the repository for the next
   * snapshot to reuse. The control plane keeps so when an agent drops mid-snapshot (up to a pack's worth, 32 MiB,
   * was otherwise sent again). A put under way finishes the chunk it is on first; nothing after the abort is put.
   */
  async abort(options: { keep?: boolean } = {}): Promise<void> {
    this.closed = true;
    this.keeping = options.keep === true && this.committing === undefined;
    if (this.keeping) {
      await Promise.all([...this.putting]);
      await this.sealCurrentPack().catch(() => {}); // a failed writer drops it there (sealCurrentPack)
    }
    const open = this.current;
    this.current = undefined;
    await open?.writer?.abort().catch(() => {});
    await this.committing?.catch(() => {});
    while (this.uploads.size > 0) await Promise.allSettled([...this.uploads]);
    if (!this.options.heldLock) await this.lock?.release();
  }

  private async openPack(firstBlob: number): Promise<OpenPack> {
    const packId = newPackId();
    const store = this.repository.store;
    const entries = new PackEntryList();
    this.pending.add(entries);
    if (store.openWriter) return { packId, writer: await store.openWriter(packKey(packId)), entries, size: 0 };
    const standard = this.packSize + PACK_SLACK;
    const allocate = (size: number): Buffer => store.allocate?.(size) ?? Buffer.allocUnsafeSlow(size);
    const buf = firstBlob <= standard ? (this.freeBuffers.pop() ?? allocate(standard)) : allocate(firstBlob);
    return { packId, buf, entries, size: 0 };
  }

  private async sealCurrentPack(): Promise<void> {
    const pack = this.current;
    if (!pack || pack.entries.count === 0) return;
    this.current = undefined;
    while (this.uploads.size >= this.uploadConcurrency) await Promise.race(this.uploads);
    if (this.failure || (this.closed && !this.keeping)) {
      // Nothing else holds this pack now (an abort came while we waited, or an upload failed): close and remove
      // its temp file before giving up.
      await pack.writer?.abort().catch(() => {});
      this.assertUsable();
    }
    const upload: Promise<void> = this.writePack(pack)
      .catch((err: unknown) => {
        this.failure ??= err instanceof Error ? err : new Error(String(err));
      })
      .finally(() => this.uploads.delete(upload));
    this.uploads.add(upload);
  }

  private async writePack(pack: OpenPack): Promise<void> {
    const { store, key } = this.repository;
    const packId = pack.packId;
    const trailer = sealPackTrailer(key, pack.entries);
    const packSize = pack.size + trailer.length;
    if (pack.writer) {
      try {
        await pack.writer.write(trailer);
        await pack.writer.commit();
      } catch (err) {
        await pack.writer.abort().catch(() => {});
        throw err;
      }
    } else if (pack.buf) {
      await store.put(packKey(packId), [pack.buf.subarray(0, pack.size), trailer]);
      if (pack.buf.length === this.packSize + PACK_SLACK && this.freeBuffers.length < this.uploadConcurrency) {
        this.freeBuffers.push(pack.buf);
      }
    }
    const index = sealIndex(key, { packId, packSize, entries: pack.entries });
    // An index object names its pack as stored, and every later writer takes its chunks for stored: it must not
    // land after a prune that removed this writer's lock as stale took the pack for an orphan and deleted it.
    this.lock?.assertTrusted();
    await putWhileTrusted(this.repository.store, this.lock, indexKey(packId), index, "the pack's index object");
    this.index.addList(packId, packSize, pack.entries);
    this.packsWritten.add(packId);
    this.pending.delete(pack.entries);
    this.stats.packs++;
    this.stats.chunks += pack.entries.count;
    this.stats.bytesWritten += packSize + index.length;
    this.stats.packBytes += packSize;
    await this.lock?.refresh();
    await this.options.onPackWritten?.(packId, packSize);
  }

  private isPending(id: Buffer): boolean {
    for (const entries of this.pending) if (entries.has(id)) return true;
    return false;
  }

  private assertUsable(): void {
    if (this.closed) throw new RepositoryError("invalid-argument", "this writer has already committed or aborted");
    this.throwIfFailed();
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }
}

/**
 * undefined for a blob that is not there (or, with `damaged`, one the store says is cut short); any other failure
 * to read it is thrown as it is.
 */
function absentOr(err: unknown, damaged = false): undefined {
  if (isRepositoryError(err, "not-found") || (damaged && isRepositoryError(err, "corrupt"))) return undefined;
  throw err;
}
