// The one interface every repository location implements (openBlobStore in open-blob-store.ts picks one).
import { RepositoryError } from "./errors.js";
import { MAX_STORED_OBJECT_BYTES } from "./limits.js";
import { hasBadComponent } from "./relative-path.js";

export interface BlobInfo {
  /** Key relative to the store's root, `/`-separated (e.g. `data/ab/ab12…`). */
  key: string;
  size: number;
  modified: Date;
}

/** What every call of a BlobStore may be given. */
export interface BlobCallOptions {
  /**
   * Aborted once the caller has given up on the call (the control plane's deadline, DeadlineBlobStore): the store
   * stops it where it can and fails it "unavailable". A write or delete not made by then is never made: file://
   * looks before its rename or unlink (a call that hung in the kernel, on a mount that stopped answering, stops
   * there when it returns); S3 cancels the request (a PUT whose whole body the server had taken may still land).
   */
  signal?: AbortSignal;
}

/** What BlobStore.get may be given. */
export interface GetOptions extends BlobCallOptions {
  /** The most bytes the object may hold (see BlobStore.get). */
  maxBytes?: number;
}

/**
 * Reads an object that is not a pack (config, a lock, a snapshot record, a manifest part, an index object) whole,
 * refused past MAX_STORED_OBJECT_BYTES before any of it is read.
 */
export function getObject(store: BlobStore, key: string): Promise<Buffer> {
  return store.get(key, { maxBytes: MAX_STORED_OBJECT_BYTES });
}

/** The error of an object over the `maxBytes` it was read with (each store's get). */
export function objectTooLarge(url: string, key: string, size: number, maxBytes: number): RepositoryError {
  return new RepositoryError(
    "corrupt",
    `${url}/${key} is ${size} bytes, more than any object of its kind holds (${maxBytes}): not one a writer made`,
  );
}

/**
 * A flat namespace of immutable objects. Every `put` is atomic: readers see the whole object or nothing
 * (temp file + fsync + rename on disk; one complete PutObject on S3).
 */
export interface BlobStore {
  /** Where the store lives, without credentials (`file:///…`, `s3://bucket/prefix`). */
  readonly url: string;
  /** Writes the object; with `ifAbsent`, leaves an existing object alone and returns false. */
  put(
    key: string,
    data: Buffer | readonly Buffer[],
    options?: { ifAbsent?: boolean } & BlobCallOptions,
  ): Promise<boolean>;
  /**
   * Reads a whole object; a missing one throws RepositoryError "not-found", and one larger than `maxBytes`
   * "corrupt" (naming it, before any of it is read: no object a writer made is, and its size would be allocated).
   */
  get(key: string, options?: GetOptions): Promise<Buffer>;
  /**
   * Reads `length` bytes at `offset`; a short object throws RepositoryError "corrupt". With `into` (at least
   * `length` bytes), a store may read into it and return a view of it, sparing an allocation.
   */
  getRange(key: string, offset: number, length: number, into?: Buffer, options?: BlobCallOptions): Promise<Buffer>;
  stat(key: string, options?: BlobCallOptions): Promise<BlobInfo | undefined>;
  /** Every object whose key starts with `prefix`, in no particular order (`signal`: the whole listing's). */
  list(prefix: string, options?: BlobCallOptions): AsyncIterable<BlobInfo>;
  /** Removes the object; removing a missing object is not an error. */
  delete(key: string, options?: BlobCallOptions): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional: memory for a large object that this store writes with the least copying (page-aligned on
   * file://, so packs go to disk with O_DIRECT straight from it). Writers that reuse buffers take them here.
   */
  allocate?(size: number): Buffer;
  /**
   * Optional: writes a large object as it comes, in pieces, instead of from one buffer holding all of it
   * (file:// does; S3 takes `put`). Nothing is visible under `key` until `commit` has made it durable whole.
   * `signal` covers the writer's whole life: once aborted, its commit fails and leaves nothing.
   */
  openWriter?(key: string, options?: BlobCallOptions): Promise<BlobWriter>;
  /**
   * Optional: deletes what writes cut short by a crash left under `prefix` (temp files on file://; S3 writes
   * are whole PutObjects and leave nothing), of those last written over `olderThanMs` ago (default 0: all).
   * Only safe where no write is running: prune calls it under the exclusive lock for the prefixes only lock
   * holders write to, and for locks/ (written by whoever takes a lock, prune's lock or not) with an age.
   */
  removeAbandoned?(prefix: string, options?: { olderThanMs?: number }): Promise<{ count: number; bytes: number }>;
  /**
   * Optional: makes the directory entries of `keys` durable, whether made or deleted, for a caller whose next
   * write must not outlive them in a crash (prune: an index object's deletion before its pack's; a snapshot's
   * record: objects it names that an earlier writer, killed before its own sync, left). file:// fsyncs their
   * directories; an S3 PUT or DELETE is durable once it returns.
   */
  syncEntries?(keys: readonly string[]): Promise<void>;
}

/** An object being written piece by piece (see BlobStore.openWriter). */
export interface BlobWriter {
  /** Appends `data`, which may be reused once this resolves. */
  write(data: Buffer): Promise<void>;
  /** Makes the object durable, then visible under its key, whole. */
  commit(): Promise<void>;
  /** Drops what was written; the key is left as it was. */
  abort(): Promise<void>;
}

/**
 * Throws RepositoryError "unavailable" if `signal` was aborted: `what` (of `url`/`key`) was given up on by its
 * caller, and is not done (see BlobCallOptions).
 */
export function assertNotGivenUp(signal: AbortSignal | undefined, url: string, key: string, what: string): void {
  if (signal?.aborted) {
    throw new RepositoryError("unavailable", `${url}/${key}: ${what} was given up on by its caller; not done`);
  }
}

/** Rejects keys that could leave the store's root. */
export function assertBlobKey(key: string): void {
  if (key.length === 0 || key.startsWith("/") || key.includes("\\") || key.includes("\0") || hasBadComponent(key)) {
    throw new RepositoryError("invalid-argument", `invalid object key ${JSON.stringify(key)}`);
  }
}
