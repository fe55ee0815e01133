// openBlobStore: picks the BlobStore implementation for a repository URL (file:// or s3://). Apart from
// blob-store.ts, so the implementations depend on the interface and nothing depends back on them.
import { isAbsolute } from "node:path";
import { fileURLToPath } from "node:url";
import type { BlobStore } from "./blob-store.js";
import { RepositoryError } from "./errors.js";
import { FileBlobStore } from "./file-blob-store.js";
import { hasBadComponent } from "./relative-path.js";
import { S3BlobStore, type S3BlobStoreOptions } from "./s3-blob-store.js";

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
    // Taken as written (S3 keys are literal: no percent-decoding). Components that a path would resolve and S3
    // keeps (`a/../c` was stored as `c/...` by one server and listed under `a/../c/` by the store) are refused.
    if (prefix !== "" && hasBadComponent(prefix)) {
      throw new RepositoryError(
        "invalid-argument",
        `repository URL ${url} has prefix "${prefix}" with an empty, "." or ".." component; write s3://bucket/a/b`,
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
