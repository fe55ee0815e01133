// Repository locks: writers take shared locks, prune takes an exclusive one, so prune never deletes a pack
// that a snapshot in progress is about to reference. A lock is stale when its holder stopped refreshing it
// (judged by the store's own clock: the objects' modification times, not the holders' clocks), or when it
// names a process on this host, in this process's pid namespace and boot, that no longer exists (kill -9), or was
// (holderIsGone). One taken on this machine before it last booted is judged by age, as another host's.
//
// A holder must also stop trusting its own lock before others may count it stale: a process paused for half an
// hour (SIGSTOP, a suspended laptop or VM) finds, when it wakes, a lock that others may have removed, and then
// written under. It judges that by its own clocks, since its last write of the lock that succeeded: after
// LOCK_TRUSTED_FOR_MS (20 minutes; others wait 30 by the store's clock, which can only see the write later) it
// refreshes nothing and does nothing more under the lock. A write made under it (a snapshot's record, a lock
// refresh) counts only if it landed while the lock was still trusted: then it is in the store before anyone
// could remove the lock, and a prune that did would see it.
import { randomBytes } from "node:crypto";
import { type BlobCallOptions, type BlobStore, getObject } from "./blob-store.js";
import { isRepositoryError, RepositoryError, refusedReason } from "./errors.js";
import { ofAnotherBoot, type ProcessIdentity, processIsGone, thisProcess } from "./process-identity.js";
import { ObjectKind, openJson, sealJson } from "./sealing.js";

export const LOCK_STALE_AFTER_MS = 30 * 60 * 1000;
/** How long after its last successful write a holder trusts its lock (see the top of this file). */
export const LOCK_TRUSTED_FOR_MS = LOCK_STALE_AFTER_MS - 10 * 60 * 1000;
const LOCK_REFRESH_AFTER_MS = 5 * 60 * 1000;
/** How often a held lock looks whether its refresh is due. */
const LOCK_TIMER_MS = 60 * 1000;

/**
 * A moment, by the wall clock (which goes on while the process is suspended) and the monotonic one (which
 * does not go back when the wall clock is set back); the time since is the longer of the two.
 */
interface Moment {
  wall: number;
  monotonic: number;
}
const now = (): Moment => ({ wall: Date.now(), monotonic: performance.now() });
const since = (m: Moment): number => Math.max(Date.now() - m.wall, performance.now() - m.monotonic);

/** A lock's content: its holder (judged gone by processIsGone) and what it is for. */
interface LockBody extends ProcessIdentity {
  time: string;
  exclusive: boolean;
  purpose: string;
}

export interface HeldLock {
  readonly key: string;
  /**
   * Rewrites the lock with a fresh time when it is getting old; cheap to call often. Throws once the lock is
   * gone (another process found it stale and removed it): whatever the holder writes from then on is unsafe.
   */
  refresh(): Promise<void>;
  /** Throws unless the lock is still in the store (checked there, each call) and trusted (assertTrusted). */
  assertHeld(): Promise<void>;
  /**
   * Throws once the lock is no longer trusted: unwritten for LOCK_TRUSTED_FOR_MS (the process was paused, or
   * the store took none of its refreshes), found gone, or released. Local and cheap: for loops of writes or deletes.
   */
  assertTrusted(): void;
  /**
   * Stops refreshing and deletes the lock. Never throws: called once the work is done (a snapshot committed,
   * a restore written) or has failed, a store that cannot delete the lock must neither fail finished work nor
   * hide the error that ended it. A lock left so is stale as a dead holder's is (at once for this host's
   * processes once this one has exited; elsewhere after LOCK_STALE_AFTER_MS).
   */
  release(): Promise<void>;
}

/**
 * Whether the holder of a lock is gone, before the lock is stale by age: a process of this boot and pid namespace
 * that no longer exists (processIsGone). Not one of another boot, though processIsGone takes one of this machine
 * id and pid namespace for this machine before it restarted: a clone of this machine running now looks the same
 * (VMs copied from one image without a new /etc/machine-id, a common slip, share it, their hostname often too, and
 * the host's pid namespace has one inode everywhere), and may be live with its refreshes failing a while, trusting
 * its lock and writing under it (LOCK_TRUSTED_FOR_MS, and a write then under way). Such a lock is judged by age,
 * as any other host's: after a restart in the middle of a prune, snapshots wait up to 30 minutes.
 */
function holderIsGone(holder: LockBody): boolean {
  return !ofAnotherBoot(holder) && processIsGone(holder);
}

export async function acquireLock(
  store: BlobStore,
  key: Buffer,
  options: { exclusive: boolean; purpose: string },
): Promise<HeldLock> {
  const lockKey = `locks/${randomBytes(16).toString("hex")}`;
  let body: LockBody = {
    time: new Date().toISOString(),
    ...thisProcess(),
    exclusive: options.exclusive,
    purpose: options.purpose,
  };
  /** When the last write of the lock that succeeded began (what others judge it by is no earlier). */
  let trustedFrom = now();
  /** When the last write of the lock began (refreshes are spaced by it; a failed one does not count). */
  let written = now();
  try {
    await store.put(lockKey, sealJson(key, ObjectKind.lock, body));
  } catch (err) {
    // The write may have landed all the same (a connection reset after the store took it, a client's time-out, a
    // deadline given up on): a lock left there names this live process, so nobody would count it stale for
    // LOCK_STALE_AFTER_MS, and a prune's would lock the tenant out that long. Removed, as far as the store lets,
    // without waiting: a store that hung on the put would hold the error back for another call's deadline.
    void store.delete(lockKey).catch(() => {});
    // A reader without write access (a read-only mount, a bucket it may only read) fails here first: say so,
    // rather than with the errno of a temp file's name.
    const why = refusedReason(err);
    if (why === undefined) throw err;
    throw new RepositoryError(
      "read-only",
      `cannot take a ${options.exclusive ? "" : "shared "}lock in ${store.url} for ${options.purpose}: ${why}; ` +
        "a lock is an object written under locks/, so this needs write access there",
      { cause: err },
    );
  }
  try {
    // "Now" as the store tells time: our own lock's modification time, just written. A store that does not show
    // what it just took may not show it to others' listings either: no lock is taken there.
    const ours = await store.stat(lockKey);
    if (!ours) {
      throw new RepositoryError(
        "unavailable",
        `${store.url} did not show the lock ${lockKey} just written to it, so others may not see it either; ` +
          "a lock needs a store that reads its own writes (any S3 since 2020, a local disk): try again",
      );
    }
    const now = ours.modified.getTime();
    for await (const info of store.list("locks/")) {
      if (info.key === lockKey) continue;
      const age = now - info.modified.getTime();
      let other: LockBody | undefined;
      try {
        other = openJson(key, ObjectKind.lock, await getObject(store, info.key), `lock ${info.key}`) as LockBody;
      } catch (err) {
        if (isRepositoryError(err, "not-found")) continue; // released meanwhile
        // Unreadable: respected as a lock until it is stale by age; any other failure to read it (the store
        // refusing, a connection reset) fails this acquisition, rather than pass a lock that may be live.
        if (!isRepositoryError(err, "corrupt") && !isRepositoryError(err, "wrong-key")) throw err;
      }
      if (age > LOCK_STALE_AFTER_MS || (other && holderIsGone(other))) {
        // Removed, by shared lock-takers too: a holder that is only paused then finds its lock gone when it
        // wakes, besides no longer trusting it. A prune taking the repository must remove it; a writer goes on
        // if it cannot (the holder's own distrust is enough).
        if (options.exclusive) await store.delete(info.key);
        else await store.delete(info.key).catch(() => {});
        continue;
      }
      if (options.exclusive || !other || other.exclusive) {
        const holder = other
          ? `${other.purpose} (pid ${other.pid} on ${other.hostname} since ${other.time})`
          : `an unreadable lock, ${info.key}`;
        throw new RepositoryError(
          "locked",
          `the repository is locked by ${holder}; wait for it to finish and try again (a lock whose holder ` +
            `died elsewhere, or before this machine restarted, counts as stale once unrefreshed for ` +
            `${LOCK_STALE_AFTER_MS / 60_000} minutes)`,
        );
      }
    }
  } catch (err) {
    await store.delete(lockKey).catch(() => {});
    throw err;
  }
  let released = false;
  let lost: Error | undefined;
  const checkTrust = (): void => {
    if (lost) throw lost;
    const age = since(trustedFrom);
    if (age > LOCK_TRUSTED_FOR_MS) {
      lost = new RepositoryError(
        "locked",
        `this process's repository lock ${lockKey} was last written ${Math.floor(age / 60_000)} minutes ago (the ` +
          "process was paused, or the store took none of its refreshes): others count it stale after " +
          `${LOCK_STALE_AFTER_MS / 60_000} minutes and may have removed it, so what this process writes could be ` +
          "pruned; stopping",
      );
      throw lost;
    }
  };
  const checkHeld = async (): Promise<void> => {
    checkTrust();
    const found = await store.stat(lockKey);
    checkTrust();
    if (found === undefined) {
      lost = new RepositoryError(
        "locked",
        `this process's repository lock ${lockKey} was removed (another process found it stale: unrefreshed ` +
          `for ${LOCK_STALE_AFTER_MS / 60_000} minutes), so what it writes could be pruned; stopping`,
      );
      throw lost;
    }
  };
  // Released, the lock guards nothing: a straggling write of its holder (a call still under way when the work
  // failed and released it) must stop at these rather than land beside a prune that took the repository since.
  // (The refresh below uses the checks without this one: one racing the release ends quietly.)
  const checkNotReleased = (): void => {
    if (released)
      throw new RepositoryError("locked", `this process's repository lock ${lockKey} was released; stopping`);
  };
  const assertTrusted = (): void => {
    checkNotReleased();
    checkTrust();
  };
  const assertHeld = async (): Promise<void> => {
    checkNotReleased();
    await checkHeld();
    checkNotReleased();
  };
  // The refresh under way, if any: release waits for it, or its write (after a round trip to the store to see
  // the lock still there) would put the lock back after the release deleted it, for others to wait out.
  let refreshing: Promise<void> | undefined;
  const rewrite = async (): Promise<void> => {
    await checkHeld(); // not written again once taken away: that would hide the loss
    if (released) return;
    body = { ...body, time: new Date().toISOString() };
    const started = now();
    const before = written;
    written = started;
    try {
      await store.put(lockKey, sealJson(key, ObjectKind.lock, body));
    } catch (err) {
      written = before; // tried again at the timer's next look, not 5 minutes on
      throw err;
    }
    // Landed while the lock was trusted: nobody can have removed it before (a slower write could put back a
    // lock that a prune had removed meanwhile).
    checkTrust();
    trustedFrom = started;
  };
  const refresh = async (): Promise<void> => {
    if (lost) throw lost;
    if (refreshing) return refreshing;
    if (released || since(written) < LOCK_REFRESH_AFTER_MS) return;
    refreshing = rewrite().finally(() => {
      refreshing = undefined;
    });
    return refreshing;
  };
  // A holder that is alive keeps its lock fresh even while it writes nothing (a long run of unchanged data). A
  // failure here is seen by the holder's next refresh or assertHeld if it was the loss of the lock.
  const timer = setInterval(() => refresh().catch(() => {}), LOCK_TIMER_MS);
  timer.unref();
  return {
    key: lockKey,
    refresh,
    assertHeld,
    assertTrusted,
    async release() {
      if (released) return;
      released = true;
      clearInterval(timer);
      await refreshing?.catch(() => {});
      await store.delete(lockKey).catch(() => {});
    },
  };
}

/**
 * Runs work under a lock taken for it (acquireLock's options) and releases the lock once work has ended, however
 * it ended. work must have waited for every call of its own under way: nothing it started may write after the
 * release.
 */
export async function withLock<T>(
  store: BlobStore,
  key: Buffer,
  options: { exclusive: boolean; purpose: string },
  work: (lock: HeldLock) => Promise<T>,
): Promise<T> {
  const lock = await acquireLock(store, key, options);
  try {
    return await work(lock);
  } finally {
    await lock.release();
  }
}

/**
 * Puts `key`, then takes it back (as if unwritten) and fails if it landed after `lock` stopped being trusted: by
 * then a prune may have removed the lock as stale and deleted what the object names (a pack an index object
 * names, the packs a record's manifest needs).
 */
export async function putWhileTrusted(
  store: BlobStore,
  lock: HeldLock | undefined,
  key: string,
  data: Buffer,
  what: string,
  options?: BlobCallOptions,
): Promise<void> {
  await store.put(key, data, options);
  try {
    lock?.assertTrusted();
  } catch (err) {
    const kept = await store.delete(key).then(
      () => false,
      () => true,
    );
    if (!kept) throw err;
    throw new RepositoryError(
      "locked",
      `${(err as Error).message}; ${what}, ${key}, could not be taken back: run check on the repository`,
      { cause: err },
    );
  }
}
