// The one error type of the repository format; `code` lets callers (CLI, control plane edge) map it.

export type RepositoryErrorCode =
  | "not-found" // an object, snapshot or chunk is absent
  | "not-initialised" // no repository at this location
  | "wrong-key" // the key does not open this repository
  | "corrupt" // stored bytes fail authentication, hashing or parsing
  | "invalid-manifest" // a manifest that must not be restored (unsafe paths, bad structure)
  | "invalid-argument" // a caller passed something unusable (URL, key, option)
  | "locked" // another process holds a conflicting lock
  | "incomplete"; // a commit references chunks that are not durable

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

/** A chunk that failed the arrival check (it does not open, or does not hash to its id). */
export function chunkArrivedDamaged(idHex: string, problem: string): RepositoryError {
  return new RepositoryError("corrupt", `chunk ${idHex} arrived damaged: ${problem}`);
}
