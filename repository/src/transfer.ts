// The two seams between the snapshot engine and wherever the repository lives: the agent writes through a
// ChunkSink and restores through a ChunkSource. Direct mode uses RepositoryWriter / RepositoryChunkSource;
// the agent's gRPC stream implements them to reach the control plane, which stores with the same classes.
import type { ManifestEntries } from "./manifest.js";

/** A chunk in its stored form: sealed (maybe LZ4, always AES-256-GCM) by the agent, never re-processed. */
export interface SealedChunk {
  /** SHA-256 of the plain chunk (32 bytes). */
  id: Buffer;
  blob: Buffer;
  plainLength: number;
}

/**
 * A part of a snapshot's manifest as `ChunkSink.commit` takes it: sealed (sealManifestParts), or the hex id of a
 * sealed part the repository already holds (see `missingManifestParts`). Parts seal deterministically, so a part
 * unchanged since an earlier snapshot is that very object: naming it spares sealing and sending it again.
 */
export type ManifestPartBlob = Buffer | { stored: string };

/** What the creator of a snapshot says about it; recorded in the snapshot object. */
export interface SnapshotMeta {
  /** The workspace the snapshot was taken of (an id from the control plane, or the source path in direct mode). */
  workspace: string;
  /** Lease epoch the snapshot was taken under (fencing); 0 in direct mode. */
  epoch: number;
  tenant: string;
  /** ISO 8601; defaults to the commit time. */
  time?: string;
  hostname?: string;
  /** Absolute path of the source directory on its host. */
  source?: string;
  stats?: SnapshotStats;
  /** The snapshot this one repairs (`repair-snapshots`): SnapshotRecord.repairedFrom. */
  repairedFrom?: string;
}

export interface SnapshotStats {
  files: number;
  bytesRead: number;
  bytesNew: number;
  bytesStored: number;
  chunksNew: number;
  seconds: number;
  /** How many entries of the source were left out (absent in snapshots taken before this was recorded). */
  filesSkipped?: number;
  /** The first MAX_SKIPPED_LISTED of them, with the reason (absent when there are none). */
  skipped?: SkippedEntry[];
}

/** An entry of the source left out of a snapshot: unreadable, changed while read, or a socket, FIFO or device. */
export interface SkippedEntry {
  /** Relative to the source directory, "/"-separated. */
  path: string;
  reason: string;
}

/**
 * How many skipped entries a snapshot lists by name (its record, the agent's commit message, the control
 * plane's row); the count covers the rest. Bounds a record and a message whatever the source holds.
 */
export const MAX_SKIPPED_LISTED = 100;
/** The longest reason a listed skipped entry carries (a longer one is cut to this many characters). */
export const MAX_SKIPPED_REASON = 1024;

export interface ChunkSink {
  /** The ids (of those given) the repository lacks; only these need `put`. Dedup is per repository. */
  missing(ids: Buffer[]): Promise<Buffer[]>;
  /**
   * Stores sealed chunks; resolves when they are accepted (not necessarily durable until `commit`). The
   * caller reuses the memory of `id` and `blob` once this resolves: copy anything kept beyond that.
   */
  put(chunks: SealedChunk[]): Promise<void>;
  /**
   * Of these manifest parts (hex ids of sealed parts, as an earlier snapshot stored them), the ones the
   * repository does not hold. A part it holds can then be committed as `{ stored: id }` instead of sealed and
   * sent again. Absent where parts cannot be committed so (a control plane from before that).
   */
  missingManifestParts?(ids: string[]): Promise<string[]>;
  /**
   * Makes every chunk durable, then records the snapshot whose manifest is these parts, in order
   * (sealManifestParts); resolves to its id. Nothing is listed before. `manifest`, when given, is what those
   * parts hold, built by the caller in this process (direct mode): it is checked as it is, not opened again.
   */
  commit(manifestParts: readonly ManifestPartBlob[], meta: SnapshotMeta, manifest?: ManifestEntries): Promise<string>;
  /** The most manifest parts `commit` takes (MAX_MANIFEST_PARTS when unset). */
  readonly maxManifestParts?: number;
  /**
   * Gives up: nothing becomes visible; chunks already durable stay for the next attempt to reuse. With `keep`,
   * chunks put but not yet durable are made so first where the sink can (a repository writer seals the pack it
   * is filling), for that attempt to reuse too.
   */
  abort(options?: { keep?: boolean }): Promise<void>;
}

export type FetchedChunk =
  | { id: Buffer; blob: Buffer; pack?: string; error?: undefined }
  | { id: Buffer; blob?: undefined; pack?: string; error: string };

/**
 * Where a ChunkSource puts the blobs it reads or receives, when its consumer wants them in memory of its own
 * (the agent's restore passes its worker pool's shared buffers: the blobs then reach the workers without a
 * copy). A blob's memory belongs to the consumer once it is yielded; a buffer the source did not hand out goes
 * back through `release`.
 */
export interface ChunkBuffers {
  allocate(size: number): Buffer;
  release(buffer: Buffer): void;
}

/** What `ChunkSource.get` yields, as its error, for a chunk asked for again (`otherCopy`) that no other pack holds. */
export const NO_OTHER_COPY = "no other pack holds a copy of it";

/** What `ChunkSource.get` yields, as its error, for a chunk the repository index holds no copy of: none to ask for. */
export const NOT_INDEXED = "the repository index has no such chunk";

export interface GetChunksOptions {
  /**
   * Each chunk from a copy this source has not given it from yet: the restore asks so for chunks that did not
   * verify (a damaged pack, while another pack holds the chunk too: two snapshots that raced to store it, a
   * repack cut short). A chunk with no such copy left is yielded with the error NO_OTHER_COPY. Only where
   * `otherCopies` is set.
   */
  otherCopy?: boolean;
}

export interface ChunkSource {
  /** The sealed parts of a snapshot's manifest, in order (`snapshotId` may be a unique prefix), and the full id. */
  readManifest(snapshotId: string): Promise<{ snapshotId: string; manifestBlobs: Buffer[] }>;
  /**
   * Yields each requested chunk once, in any order. A chunk that is damaged or gone is yielded with `error`
   * (and no blob) so the caller can name the files it affects; a failure that says nothing of the data (the
   * store unreachable) throws instead, failing the whole restore. A blob may be a view into a larger buffer
   * (a pack read, a received message, a receive buffer), so a caller must not transfer or detach its memory.
   * The agent's restore copies each blob at once, unless it already sits in memory the workers share
   * (ChunkBuffers: RepositoryChunkSource's `readBuffers`, StreamChunkSource's receive buffers).
   */
  get(ids: Buffer[], options?: GetChunksOptions): AsyncIterable<FetchedChunk>;
  /** Whether `get` takes `otherCopy` (a control plane from before it does not). */
  readonly otherCopies?: boolean;
  /**
   * Settles once `get` can start (a source that loads an index meanwhile); rejects if it never can. A
   * restore asks after opening the manifest and before it writes anything.
   */
  ready?(): Promise<void>;
}
