// The one interface every repository location implements, and the URL parser that picks an implementation.
import { isAbsolute } from "node:path";
import { fileURLToPath } from "node:url";
import { RepositoryError } from "./errors.js";
import { FileBlobStore } from "./file-blob-store.js";
import { S3BlobStore, type S3BlobStoreOptions } from "./s3-blob-store.js";

export interface BlobInfo {
  /** Key relative to the store's root, `/`-separated (e.g. `data/ab/ab12…`). */
  key: string;
  size: number;
  modified: Date;
}

/**
 * A flat namespace of immutable objects. Every `put` is atomic: readers see the whole object or nothing
 * (temp file + fsync + rename on disk; one complete PutObject on S3).
 */
export interface BlobStore {
  /** Where the store lives, without credentials (`file:///…`, `s3://bucket/prefix`). */
  readonly url: string;
  /** Writes the object; with `ifAbsent`, leaves an existing object alone and returns false. */
  put(key: string, data: Buffer | readonly Buffer[], options?: { ifAbsent?: boolean }): Promise<boolean>;
  /** Reads a whole object; a missing one throws RepositoryError "not-found". */
  get(key: string): Promise<Buffer>;
  /**
   * Reads `length` bytes at `offset`; a short object throws RepositoryError "corrupt". With `into` (at least
   * `length` bytes), a store may read into it and return a view of it, sparing an allocation.
   */
  getRange(key: string, offset: number, length: number, into?: Buffer): Promise<Buffer>;
  stat(key: string): Promise<BlobInfo | undefined>;
  /** Every object whose key starts with `prefix`, in no particular order. */
  list(prefix: string): AsyncIterable<BlobInfo>;
  /** Removes the object; removing a missing object is not an error. */
  delete(key: string): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional: memory for a large object that this store writes with the least copying (page-aligned on
   * file://, so packs go to disk with O_DIRECT straight from it). Writers that reuse buffers take them here.
   */
  allocate?(size: number): Buffer;
}

export interface OpenBlobStoreOptions {
  s3?: S3BlobStoreOptions;
}

/** Opens `file:///abs/path` (or a plain absolute path) or `s3://bucket/prefix`. */
export function openBlobStore(url: string, options: OpenBlobStoreOptions = {}): BlobStore {
  if (url.startsWith("file://")) {
    let path: string;
    try {
      path = fileURLToPath(url);
    } catch (err) {
      throw new RepositoryError(
        "invalid-argument",
        `repository URL ${url} is not a valid file URL; write file:///absolute/path`,
        { cause: err },
      );
    }
    return new FileBlobStore(path);
  }
  if (url.startsWith("s3://")) {
    const rest = url.slice("s3://".length);
    const slash = rest.indexOf("/");
    const bucket = slash < 0 ? rest : rest.slice(0, slash);
    const prefix = slash < 0 ? "" : rest.slice(slash + 1).replace(/\/+$/, "");
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
      throw new RepositoryError(
        "invalid-argument",
        `repository URL ${url} names bucket "${bucket}", which is not a valid S3 bucket name (3-63 of a-z 0-9 . -)`,
      );
    }
    return new S3BlobStore(bucket, prefix, options.s3);
  }
  if (isAbsolute(url)) return new FileBlobStore(url);
  throw new RepositoryError(
    "invalid-argument",
    `repository URL "${url}" is not supported: use file:///absolute/path or s3://bucket/prefix`,
  );
}

/** Rejects keys that could leave the store's root. */
export function assertBlobKey(key: string): void {
  if (
    key.length === 0 ||
    key.startsWith("/") ||
    key.includes("\\") ||
    key.includes("\0") ||
    key.split("/").some((part) => part === "" || part === "." || part === "..")
  ) {
    throw new RepositoryError("invalid-argument", `invalid object key ${JSON.stringify(key)}`);
  }
}
