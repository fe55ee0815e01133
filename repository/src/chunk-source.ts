// Reads sealed chunks out of packs for restore: the ChunkSource of direct mode (and of the control plane
// when it streams a restore to an agent). Neighbouring chunks of a pack are fetched in one ranged read.
import { PAGE } from "./aligned-memory.js";
import { isRepositoryError, readShowsDamage } from "./errors.js";
import { packKey } from "./pack.js";
import type { RepositoryAccess } from "./repository-access.js";
import type { ChunkLocation, RepositoryIndex } from "./repository-index.js";
import {
  type ChunkBuffers,
  type ChunkSource,
  type FetchedChunk,
  type GetChunksOptions,
  NO_OTHER_COPY,
  NOT_INDEXED,
} from "./transfer.js";

export interface ChunkSourceOptions {
  /** Ranged reads kept in flight ahead of the consumer (default 4). */
  readAhead?: number;
  /**
   * Largest single ranged read, with the room to widen it to whole pages (default 8 MiB): a read buffer of
   * this size always does. A store may then read around the page cache (FileBlobStore.getRange).
   */
  maxRead?: number;
  /** Unneeded bytes between two chunks worth reading over instead of issuing a second request (default 1 MiB). */
  maxGap?: number;
  /**
   * Where read buffers come from (default: fresh ones). A buffer the store did not read into (S3 returns its
   * own) goes back through `release`.
   */
  readBuffers?: ChunkBuffers;
}

/** What widening a read to whole pages can add: part of a page before it and part of one after. */
const READ_SLACK = 2 * PAGE;

interface PlannedRead {
  packId: string;
  start: number;
  end: number;
  items: { id: Buffer; offset: number; length: number }[];
}

export class RepositoryChunkSource implements ChunkSource {
  readonly otherCopies = true;
  private readonly index: Promise<RepositoryIndex>;
  /**
   * For each chunk held more than once and asked for again (`otherCopy`), how far down its copies
   * (`RepositoryIndex.locations`) it was given since it was last asked for without: the first copy is where such
   * a request reads it, and each `otherCopy` gives the next. A number, not the packs: an agent may ask so for every
   * chunk of a snapshot. (A copy the index gained between two requests, from a refresh after a racing snapshot
   * stored the chunk too, comes first in the list and is not tried: rare, and only where the control plane's
   * shared index is refreshed during a restore.)
   */
  private readonly given = new Map<string, number>();

  /**
   * `index` may still be loading: `get` and `ready` wait for it, so a restore reads and opens its manifest
   * meanwhile. On S3 the index is one GET per pack object, the manifest two more.
   */
  constructor(
    readonly repository: RepositoryAccess,
    index: RepositoryIndex | Promise<RepositoryIndex>,
    private readonly options: ChunkSourceOptions = {},
  ) {
    this.index = Promise.resolve(index);
    this.index.catch(() => {}); // a restore that fails before asking never sees it; `ready` and `get` rethrow
  }

  async ready(): Promise<void> {
    await this.index;
  }

  async readManifest(snapshotId: string): Promise<{ snapshotId: string; manifestBlobs: Buffer[] }> {
    const record = await this.repository.findSnapshot(snapshotId);
    return { snapshotId: record.id, manifestBlobs: await this.repository.readManifestBlobs(record) };
  }

  /** The copy of chunk `hex` after the last it was given from (noted as given), or undefined. */
  private otherCopy(index: RepositoryIndex, hex: string): ChunkLocation | undefined {
    const copies = index.locations(hex);
    if (copies.length < 2) return undefined; // nothing noted for the many chunks held once
    const next = (this.given.get(hex) ?? 0) + 1;
    if (next >= copies.length) return undefined;
    this.given.set(hex, next);
    return copies[next];
  }

  /**
   * As ChunkSource.get; `avoidPacks` (not with `otherCopy`) reads each chunk from its first copy in none of those
   * packs where it has one (a prune reading the copies that stay), else from its first.
   */
  async *get(
    ids: Buffer[],
    options: GetChunksOptions & { avoidPacks?: ReadonlySet<string> } = {},
  ): AsyncIterable<FetchedChunk> {
    const { avoidPacks } = options;
    const maxRead = (this.options.maxRead ?? 8 * 1024 * 1024) - READ_SLACK;
    const maxGap = this.options.maxGap ?? 1024 * 1024;
    const index = await this.index;
    const byPack = new Map<string, { id: Buffer; offset: number; length: number }[]>();
    const seen = new Set<string>();
    for (const id of ids) {
      const hex = id.toString("hex");
      if (seen.has(hex)) continue;
      seen.add(hex);
      // Asked for as any chunk (the next window of a restore sharing it): read from the first pack again.
      if (!options.otherCopy && this.given.size > 0) this.given.delete(hex);
      const loc = options.otherCopy
        ? this.otherCopy(index, hex)
        : avoidPacks
          ? (index.locations(hex).find((c) => !avoidPacks.has(c.packId)) ?? index.get(hex))
          : index.get(hex);
      if (!loc) {
        yield { id, error: options.otherCopy ? NO_OTHER_COPY : NOT_INDEXED };
        continue;
      }
      let list = byPack.get(loc.packId);
      if (!list) {
        list = [];
        byPack.set(loc.packId, list);
      }
      list.push({ id, offset: loc.offset, length: loc.length });
    }
    const reads: PlannedRead[] = [];
    for (const [packId, items] of byPack) {
      items.sort((a, b) => a.offset - b.offset);
      let read: PlannedRead | undefined;
      for (const item of items) {
        const end = item.offset + item.length;
        if (read && item.offset - read.end <= maxGap && end - read.start <= maxRead) {
          read.end = Math.max(read.end, end);
          read.items.push(item);
        } else {
          read = { packId, start: item.offset, end, items: [item] };
          reads.push(read);
        }
      }
    }
    const store = this.repository.store;
    const { readBuffers } = this.options;
    // Reads that landed in a read buffer: one never handed to the consumer goes back if it stops early.
    const pooled = new WeakMap<Buffer, Buffer>();
    const fetchRead = (read: PlannedRead): Promise<Buffer | Error> => {
      const length = read.end - read.start;
      const into = readBuffers?.allocate(length + READ_SLACK);
      return store.getRange(packKey(read.packId), read.start, length, into).then(
        (got) => {
          if (into && got.buffer !== into.buffer) readBuffers!.release(into);
          else if (into) pooled.set(got, into);
          return got;
        },
        (err: unknown) => {
          if (into) readBuffers!.release(into);
          return err instanceof Error ? err : new Error(String(err));
        },
      );
    };
    const readAhead = Math.max(1, this.options.readAhead ?? 4);
    const inFlight: Promise<Buffer | Error>[] = [];
    let next = 0;
    while (next < reads.length && inFlight.length < readAhead) inFlight.push(fetchRead(reads[next++]));
    try {
      for (const read of reads) {
        const result = await inFlight.shift()!;
        if (next < reads.length) inFlight.push(fetchRead(reads[next++]));
        if (result instanceof Error && !readShowsDamage(result)) throw result;
        if (result instanceof Error && read.items.length > 1 && !isRepositoryError(result, "not-found")) {
          // One chunk cut short or placed past the pack's end failed the read it shared with its neighbours: each
          // is read alone, so only the chunks that cannot be read are lost, and only their files named damaged.
          // (Not a pack that is gone: all of it is.) Into memory of its own size, not a read buffer each.
          for (const item of read.items) {
            const alone = await store
              .getRange(packKey(read.packId), item.offset, item.length)
              .catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))));
            if (alone instanceof Error && !readShowsDamage(alone)) throw alone;
            yield alone instanceof Error
              ? { id: item.id, pack: read.packId, error: `pack ${read.packId} could not be read: ${alone.message}` }
              : { id: item.id, pack: read.packId, blob: alone.subarray(0, item.length) };
          }
          continue;
        }
        for (const item of read.items) {
          if (result instanceof Error) {
            yield { id: item.id, pack: read.packId, error: `pack ${read.packId} could not be read: ${result.message}` };
          } else {
            const at = item.offset - read.start;
            yield { id: item.id, pack: read.packId, blob: result.subarray(at, at + item.length) };
          }
        }
      }
    } finally {
      // The consumer stopped early, or a read failed: the reads still in flight are nobody's.
      for (const rest of inFlight.splice(0)) {
        void rest.then((got) => {
          const into = got instanceof Error ? undefined : pooled.get(got);
          if (into) readBuffers!.release(into);
        });
      }
    }
  }
}
