// Repository locks: writers take shared locks, prune takes an exclusive one, so prune never deletes a pack
// that a snapshot in progress is about to reference. A lock is stale when its holder stopped refreshing it,
// or when it names a process on this host that no longer exists (kill -9).
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { BlobStore } from "./blob-store.js";
import { RepositoryError } from "./errors.js";
import { ObjectKind, openJson, sealJson } from "./sealing.js";

export const LOCK_STALE_AFTER_MS = 30 * 60 * 1000;
const LOCK_REFRESH_AFTER_MS = 5 * 60 * 1000;

interface LockBody {
  time: string;
  hostname: string;
  pid: number;
  exclusive: boolean;
  purpose: string;
}

export interface HeldLock {
  readonly key: string;
  /** Rewrites the lock with a fresh time when it is getting old; cheap to call often. */
  refresh(): Promise<void>;
  /** Stops refreshing and deletes the lock. */
  release(): Promise<void>;
}

export async function acquireLock(
  store: BlobStore,
  key: Buffer,
  options: { exclusive: boolean; purpose: string },
): Promise<HeldLock> {
  const lockKey = `locks/${randomBytes(16).toString("hex")}`;
  let body: LockBody = {
    time: new Date().toISOString(),
    hostname: hostname(),
    pid: process.pid,
    exclusive: options.exclusive,
    purpose: options.purpose,
  };
  let written = Date.now();
  await store.put(lockKey, sealJson(key, ObjectKind.lock, body));
  try {
    for await (const info of store.list("locks/")) {
      if (info.key === lockKey) continue;
      let other: LockBody;
      try {
        other = openJson(key, ObjectKind.lock, await store.get(info.key), `lock ${info.key}`) as LockBody;
      } catch {
        continue; // vanished or unreadable: not a lock we must respect
      }
      if (isStale(other)) {
        if (options.exclusive) await store.delete(info.key);
        continue;
      }
      if (options.exclusive || other.exclusive) {
        throw new RepositoryError(
          "locked",
          `the repository is locked by ${other.purpose} (pid ${other.pid} on ${other.hostname} since ${other.time}); ` +
            "wait for it to finish and try again",
        );
      }
    }
  } catch (err) {
    await store.delete(lockKey).catch(() => {});
    throw err;
  }
  let released = false;
  const refresh = async (): Promise<void> => {
    if (released || Date.now() - written < LOCK_REFRESH_AFTER_MS) return;
    body = { ...body, time: new Date().toISOString() };
    written = Date.now();
    await store.put(lockKey, sealJson(key, ObjectKind.lock, body));
  };
  // A holder that is alive keeps its lock fresh even while it writes nothing (a long run of unchanged data).
  const timer = setInterval(() => refresh().catch(() => {}), LOCK_REFRESH_AFTER_MS);
  timer.unref();
  return {
    key: lockKey,
    refresh,
    async release() {
      if (released) return;
      released = true;
      clearInterval(timer);
      await store.delete(lockKey);
    },
  };
}

function isStale(lock: LockBody): boolean {
  if (Date.now() - Date.parse(lock.time) > LOCK_STALE_AFTER_MS) return true;
  if (lock.hostname === hostname() && lock.pid !== process.pid) {
    try {
      process.kill(lock.pid, 0);
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === "ESRCH";
    }
  }
  return false;
}
