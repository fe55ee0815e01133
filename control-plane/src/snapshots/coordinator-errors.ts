// The coordinator's errors, and how a repository's or store's failure is answered through the API: each kind of
// failure to the status an admin's client should see, in the store's own words.
import {
  counted,
  formatBytes,
  isRepositoryError,
  type RepairPacksReport,
  type RepairSnapshotsReport,
  type Repository,
  RepositoryError,
} from "@dumont/repository";
import {
  DataLossError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from "../errors.js";

/** A snapshot message from a lease epoch older than the workspace's (a job since moved to another host). */
export function staleEpoch(got: bigint, want: bigint): Error {
  return new FailedPreconditionError(
    `refused a snapshot message from lease epoch ${got}; the current epoch is ${want}`,
  );
}

/** A prune or repair refused because other work of the tenant runs (here, or elsewhere by its lock). */
export class TenantBusyError extends FailedPreconditionError {}

/**
 * Whether `err` is a `kind`, by its prototype chain. Not `instanceof`: ConnectError's static Symbol.hasInstance,
 * which its subclasses inherit, takes any ConnectError for an instance of each of them (every failure of a
 * scheduled prune was "skipped" at info).
 */
export function isKind<T extends object>(err: unknown, kind: abstract new (...args: never[]) => T): err is T {
  return typeof err === "object" && err !== null && Object.prototype.isPrototypeOf.call(kind.prototype, err);
}

/**
 * A tenant's repository that its key does not open: the control plane's setting (another one's master key, database
 * or blob store), not the caller's doing. FAILED_PRECONDITION to the caller, logged at error for the operator.
 */
export class MisconfiguredError extends FailedPreconditionError {}

/**
 * A pack repair's report, or its refusal of the packs it was asked for as the API says it: a pack the index does
 * not hold (or that vanished while it ran) NOT_FOUND, not an internal error.
 */
export async function packsRepaired(repair: Promise<RepairPacksReport>): Promise<RepairPacksReport> {
  try {
    return await repair;
  } catch (err) {
    if (isRepositoryError(err, "not-found")) throw new NotFoundError(err.message);
    throw err;
  }
}

/**
 * A snapshot repair's report, or its refusal of the snapshots it was asked for as the API says it: one the repository
 * does not hold (forgotten since the catalogue named it) NOT_FOUND, not an internal error.
 */
export async function snapshotsRepaired<T extends RepairSnapshotsReport | undefined>(repair: Promise<T>): Promise<T> {
  try {
    return await repair;
  } catch (err) {
    if (isRepositoryError(err, "not-found")) throw new NotFoundError(err.message);
    throw err;
  }
}

/** A tenant's repository at its quota (CoordinatorTuning.snapshotQuota), saying what to do. */
export function quotaReached(
  tenantId: string,
  stored: number,
  quota: { bytes: number; decimal: boolean },
): ResourceExhaustedError {
  // In the units the quota was given in: "1MB" read back as "976.6 KiB" looked like another number. To the byte
  // where the two read alike rounded ("6.0 MB (6.0 MB stored)": a snapshot stopped a few kB over).
  const units = { decimal: quota.decimal };
  let [of, held] = [formatBytes(quota.bytes, units), formatBytes(stored, units)];
  if (of === held) [of, held] = [quota.bytes, stored].map((n) => `${n.toLocaleString("en-US")} bytes`);
  return new ResourceExhaustedError(
    `tenant ${tenantId}'s snapshots would store over its quota of ${of} (${held} ` +
      "stored and arriving): forget snapshots it no longer needs and prune (`dumont snapshot forget " +
      `--tenant ${tenantId} --keep-last N --prune\`), or raise DUMONT_SNAPSHOT_QUOTA`,
  );
}

/**
 * A catalogued snapshot's read that found something missing: NOT_FOUND when its record is gone (forgotten after its
 * row was read, a restore racing a forget), DATA_LOSS when the record is there and a manifest part is not. Any
 * other error as it is (storeError maps it).
 */
export async function snapshotGone(repository: Repository, id: string, err: unknown): Promise<unknown> {
  if (!isRepositoryError(err, "not-found")) return err;
  const recorded = await repository.hasSnapshot(id).catch(() => true);
  return recorded ? new DataLossError(err.message) : new NotFoundError(`snapshot ${id} was forgotten: ${err.message}`);
}

/** A tenant that has taken no snapshot yet, so has no repository, asked for one by other work (openRepository). */
export class NoRepositoryError extends RepositoryError {
  constructor(tenantId: string) {
    super("not-initialised", `tenant ${tenantId} has no repository yet: its first snapshot makes one`);
  }
}

/** A tenant's repository missing from the store where the catalogue lists its snapshots (openRepository). */
export class RepositoryMissingError extends RepositoryError {
  constructor(url: string, catalogued: number) {
    super(
      "unavailable",
      `${url} holds no repository, but the catalogue lists ${counted(catalogued, "snapshot")} of this tenant ` +
        "there: the blob store is not the one they were written to (a mount that did not come up, another " +
        "bucket or prefix in DUMONT_BLOB_STORE), and none is made in its place. Mount it or mend the setting; " +
        "if those snapshots are gone for good, forget them by id (`dumont snapshot forget ID...`), which drops " +
        "their rows, and the next snapshot starts a new repository",
    );
  }
}

/**
 * A blob store that takes no more writes (its disk full, a quota used up, read-only) as RESOURCE_EXHAUSTED, and
 * one that did not answer (S3 unreachable, failing with 5xx past its retries) as UNAVAILABLE, a repository
 * another process holds (a direct-mode prune of the same store) or this control plane may not write as
 * FAILED_PRECONDITION, a damaged object as DATA_LOSS, a setting that cannot work (a bucket that does not exist)
 * as INVALID_ARGUMENT, a tenant with no repository yet as NOT_FOUND, each with the store's own words (where, and
 * what to do), for the admin who called: the API would otherwise answer "internal error" and leave the reason in
 * the log. Any other error as it is.
 */
export function storeError(err: unknown): unknown {
  if (isRepositoryError(err, "unwritable")) return new ResourceExhaustedError(err.message);
  // The store's setting or credentials (a bucket that does not exist, S3 refusing the keys): said, not hidden as
  // an internal error.
  if (isRepositoryError(err, "invalid-argument")) return new InvalidArgumentError(err.message);
  if (err instanceof NoRepositoryError) return new NotFoundError(err.message);
  if (isRepositoryError(err, "unavailable")) return new UnavailableError(err.message);
  if (isRepositoryError(err, "locked") || isRepositoryError(err, "read-only")) {
    return new FailedPreconditionError(err.message);
  }
  // The tenant's key (unwrapped with this control plane's master key) opens no repository there: the setting, not
  // the data, and not this control plane's bug either.
  if (isRepositoryError(err, "wrong-key")) {
    return new MisconfiguredError(
      `${err.message}. This control plane's key for the tenant is not the one its repository was made with: check ` +
        "that it runs with the master key and database of the control plane that made it, and that its blob store " +
        "(DUMONT_BLOB_STORE, --blob-store) is not another control plane's",
    );
  }
  // A stored object damaged, or a stored manifest that opens but is not one a writer made (a commit's refused
  // manifest is answered INVALID_ARGUMENT before it gets here).
  if (isRepositoryError(err, "corrupt") || isRepositoryError(err, "invalid-manifest")) {
    return new DataLossError(err.message);
  }
  return err;
}
