// openBlobStore: picks the BlobStore implementation for a repository URL (file:// or s3://). Apart from
// blob-store.ts, so the implementations depend on the interface and nothing depends back on them.
import { isAbsolute, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { BlobStore } from "./blob-store.js";
import { RepositoryError } from "./errors.js";
import { FileBlobStore } from "./file-blob-store.js";
import { hasBadComponent } from "./relative-path.js";
import { S3BlobStore, type S3BlobStoreOptions } from "./s3-blob-store.js";

export interface OpenBlobStoreOptions {
  s3?: S3BlobStoreOptions;
}

/** Where a repository URL points, checked: a local directory, or a bucket and a prefix in it. */
export type RepositoryLocation = { kind: "file"; path: string } | { kind: "s3"; bucket: string; prefix: string };

/** A file repository's location, checked: never the root directory, never a path no file can have. */
function fileLocation(path: string, shown: string): RepositoryLocation {
  // `file://` alone (an unset variable in `file://$REPO`) reads as the root directory: a repository there puts
  // data/, index/ and the rest at the top of the filesystem. No one means that.
  if (resolve(path) === "/") {
    throw new RepositoryError(
      "invalid-argument",
      `repository URL ${shown} names the root directory /; write file:///absolute/path of the repository's own ` +
        "directory (an empty variable in the URL reads as none)",
    );
  }
  if (path.includes("\0")) {
    throw new RepositoryError("invalid-argument", `repository URL ${shown} holds a NUL (%00), which no path holds`);
  }
  return { kind: "file", path };
}

/**
 * Parses `file:///abs/path` (or a plain absolute path) or `s3://bucket/prefix`, touching nothing; throws a
 * RepositoryError ("invalid-argument") saying what to write instead. The control plane checks its
 * DUMONT_BLOB_STORE with it at start, rather than at the first snapshot.
 */
export function parseRepositoryUrl(url: string): RepositoryLocation {
  // What messages show: everything between the scheme and the last "@" hidden, since a secret key written there
  // may hold "/" (AWS's often do) and "@" (a prefix holding an "@" is shown hidden too, only in errors).
  const shown = url.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/).*@/, "$1***@");
  const credentials = () =>
    new RepositoryError(
      "invalid-argument",
      `repository URL ${shown} carries a user name or password before the "@": a repository URL takes none. For ` +
        "S3 give the credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and write " +
        "s3://bucket/prefix",
    );
  if (withoutUserInfo(url) !== url) throw credentials();
  if (url.startsWith("file://")) {
    try {
      // A "?" or "#" ends a URL's path: fileURLToPath drops what follows, so file:///srv/a#1/tenants/t1 and
      // …/t2 were one directory, /srv/a (the control plane adds /tenants/ID to its store's URL).
      // (A bare one at the end too: new URL gives it no search or hash, and it was dropped all the same.)
      const mark = ["?", "#"].find((c) => url.includes(c));
      if (mark !== undefined) {
        throw new RepositoryError(
          "invalid-argument",
          `repository URL ${shown} holds a "${mark}", which ends a file URL's path: write it percent-encoded ` +
            `(${mark === "?" ? "%3F" : "%23"}) where the directory's name holds one`,
        );
      }
      return fileLocation(fileURLToPath(url), shown);
    } catch (err) {
      if (err instanceof RepositoryError) throw err;
      throw new RepositoryError(
        "invalid-argument",
        `repository URL ${shown} is not a valid file URL; write file:///absolute/path`,
        { cause: err },
      );
    }
  }
  if (url.startsWith("s3://")) {
    const rest = url.slice("s3://".length);
    const slash = rest.indexOf("/");
    const bucket = slash < 0 ? rest : rest.slice(0, slash);
    const prefix = slash < 0 ? "" : rest.slice(slash + 1).replace(/\/+$/, "");
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
      // `s3://KEY:SECRET/WITH/SLASHES@bucket/p`: what reads as the bucket is the start of the credentials.
      if (url.includes("@")) throw credentials();
      throw new RepositoryError(
        "invalid-argument",
        `repository URL ${shown} names bucket "${bucket}", which is not a valid S3 bucket name (3-63 of a-z 0-9 . -)`,
      );
    }
    // Taken as written (S3 keys are literal: no percent-decoding). Components that a path would resolve and S3
    // keeps (`a/../c` was stored as `c/...` by one server and listed under `a/../c/` by the store) are refused.
    if (prefix !== "" && hasBadComponent(prefix)) {
      throw new RepositoryError(
        "invalid-argument",
        `repository URL ${shown} has prefix "${url.includes("@") ? "***" : prefix}" with an empty, "." or ".." component; write s3://bucket/a/b`,
      );
    }
    return { kind: "s3", bucket, prefix };
  }
  if (isAbsolute(url)) return fileLocation(url, shown);
  throw new RepositoryError(
    "invalid-argument",
    `repository URL "${shown}" is not supported: use file:///absolute/path or s3://bucket/prefix`,
  );
}

/**
 * `url` with what stands between its "scheme://" and an "@" before the first "/" (user:password@) replaced by
 * "***", so no message repeats a secret written there.
 */
function withoutUserInfo(url: string): string {
  return url.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/]*@/, "$1***@");
}

/** Opens `file:///abs/path` (or a plain absolute path) or `s3://bucket/prefix` (see parseRepositoryUrl). */
export function openBlobStore(url: string, options: OpenBlobStoreOptions = {}): BlobStore {
  const location = parseRepositoryUrl(url);
  return location.kind === "file"
    ? new FileBlobStore(location.path)
    : new S3BlobStore(location.bucket, location.prefix, options.s3);
}
