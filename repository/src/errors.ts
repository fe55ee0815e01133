// The one error type of the repository format; `code` lets callers (CLI, control plane edge) map it.

export type RepositoryErrorCode =
  | "not-found" // an object, snapshot or chunk is absent
  | "not-initialised" // no repository at this location
  | "wrong-key" // the key does not open this repository
  | "corrupt" // stored bytes fail authentication, hashing or parsing
  | "invalid-manifest" // a manifest that must not be restored (unsafe paths, bad structure)
  | "invalid-argument" // a caller passed something unusable (URL, key, option)
  | "locked" // another process holds a conflicting lock
  | "unwritable" // the store takes no more writes: its disk is full, a quota is used up, it is read-only
  | "read-only" // this process may not write there (permissions, a read-only mount) where it must (a lock)
  | "incomplete" // a commit references chunks that are not durable
  // The store did not answer, or failed the request after its retries (a connection refused, a timeout, S3's
  // 5xx or throttling): nothing is known of the data, and the same call may succeed later.
  | "unavailable";

export class RepositoryError extends Error {
  override name = "RepositoryError";
  constructor(
    readonly code: RepositoryErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function isRepositoryError(err: unknown, code?: RepositoryErrorCode): err is RepositoryError {
  return err instanceof RepositoryError && (code === undefined || err.code === code);
}

/**
 * A RepositoryError that says something of what was read (it is damaged, absent, sealed with another key, not
 * a manifest to restore...), as opposed to a store that did not answer ("unavailable"): what a caller that
 * reports unreadable objects and goes on (check, prune, listing) may report; the rest it lets fail the call.
 */
export function isObjectError(err: unknown): err is RepositoryError {
  return isRepositoryError(err) && OBJECT_ERRORS.has(err.code);
}

/**
 * The codes that say something of an object read: not what a store's refusal says (the credentials, a
 * permission: "invalid-argument", "read-only") or its silence ("unavailable"), which fail the call instead.
 */
const OBJECT_ERRORS: ReadonlySet<RepositoryErrorCode> = new Set([
  "not-found",
  "corrupt",
  "wrong-key",
  "invalid-manifest",
]);

/**
 * Whether a pack read's failure says the data is damaged or gone: the pack is missing, shorter than its index
 * says, or the disk cannot read it (EIO). Such a read costs the chunks in it: a restore goes on without them,
 * naming the files, and a check reports them. Any other failure (a connection refused, a timeout, S3's 5xx
 * after its retries, refused credentials, a permission) says nothing of the data: the restore or check fails
 * whole and can simply run again, rather than call the data damaged.
 */
export function readShowsDamage(err: Error): boolean {
  return (
    isRepositoryError(err, "not-found") ||
    isRepositoryError(err, "corrupt") ||
    (err as NodeJS.ErrnoException).code === "EIO"
  );
}

/** A chunk that failed the arrival check (it does not open, or does not hash to its id). */
export function chunkArrivedDamaged(idHex: string, problem: string): RepositoryError {
  return new RepositoryError("corrupt", `chunk ${idHex} arrived damaged: ${problem}`);
}

/** Why a filesystem refuses writes, by errno, for the refusals that trying again as it is cannot get past. */
const UNWRITABLE: Record<string, string> = {
  ENOSPC: "no space left on the device",
  EDQUOT: "the disk quota is used up",
  EROFS: "the filesystem is read-only",
};

/** "no space left on the device (ENOSPC)" for a write its filesystem refused so, else undefined. */
export function unwritableReason(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const why = typeof code === "string" && Object.hasOwn(UNWRITABLE, code) ? UNWRITABLE[code] : undefined;
  return why === undefined ? undefined : `${why} (${code})`;
}

/**
 * A write (or delete) into `url` that failed because the store takes no more writes (a full disk, a quota, a
 * read-only mount), as an "unwritable" RepositoryError naming the store and what to do; one this process may not
 * make (EACCES, EPERM: the directory's owner or mode, an immutable file) as a "read-only" one, saying whose write
 * access it needs; any other error as it is.
 */
export function writeFailure(url: string, key: string, err: unknown): unknown {
  if (isRepositoryError(err)) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === "EACCES" || code === "EPERM") {
    const who = process.getuid ? `the user this runs as (uid ${process.getuid()})` : "the user this runs as";
    return new RepositoryError(
      "read-only",
      `cannot write ${url}/${key}: ${REFUSED[code]} (${code}). Give ${who} write access to the repository's ` +
        "directory and everything in it (or run as its owner), and try again" +
        (code === "EPERM" ? "; EPERM also comes of an immutable file (lsattr) or a filesystem without hard links" : ""),
      { cause: err },
    );
  }
  const why = unwritableReason(err);
  if (why === undefined) return err;
  const remedy = (err as NodeJS.ErrnoException).code === "EROFS" ? "Mount it read-write" : "Make room there";
  return new RepositoryError(
    "unwritable",
    `cannot write ${url}/${key}: ${why}. ${remedy} and try again: what was written before this is kept, ` +
      "and the next try reuses it",
    { cause: err },
  );
}

/** Errors that say this process may not write into a store at all, with what each means. */
const REFUSED: Record<string, string> = {
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "the filesystem is read-only",
};

/**
 * Why a store refused a write for want of permission (an errno above, itself or as the cause of a RepositoryError
 * made from it; S3's HTTP 403), else undefined: a full disk or a dropped connection is not this.
 */
export function refusedReason(err: unknown): string | undefined {
  for (let e = err; e instanceof Error; e = e.cause) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === "string" && Object.hasOwn(REFUSED, code)) return `${REFUSED[code]} (${code})`;
    if ((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 403) {
      return "access denied (HTTP 403)";
    }
  }
  return undefined;
}
