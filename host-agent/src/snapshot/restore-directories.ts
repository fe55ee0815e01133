// The directories of a restore target, held open. Everything a restore makes is named through the handle of
// the directory it goes into (`/proc/self/fd/<dir fd>/<name>`: openat, which Node's fs lacks), and
// each handle is opened through its parent's with O_NOFOLLOW. A directory of the target swapped for a
// symlink while the restore runs (by anyone: root in a container the target is mounted into) then redirects
// nothing: what was already open keeps writing into the directory it opened, and opening the swapped name
// fails. The restore also keeps the target 0700 while it writes (restoreSnapshot): this holds even against
// those the mode does not stop.
//
// Handles are cached, the least recently used closed past a bound (a workspace may have more directories
// than the process may open files). A handle is leased while a name built from its fd is in use (a worker
// creating files in it): it is never closed, so its fd never names another directory meanwhile.
//
// Without /proc (not Linux, or not mounted), names are plain paths under the target, as before.
import { spawn } from "node:child_process";
import { type BigIntStats, constants } from "node:fs";
import { chmod, type FileHandle, lstat, open, readdir, rm, rmdir, stat, unlink } from "node:fs/promises";
import { join } from "node:path";

/** The longest a restore waits for its flush (syncFilesystem) before it says so and goes on. */
const SYNC_TIMEOUT_MS = 5 * 60 * 1000;

/**
 * How sync ends its line when the kernel answers the flush with a lost write: strerror's words, in the C locale,
 * for EIO, ENOSPC and EDQUOT, as glibc and musl (BusyBox's usual libc) word them.
 */
const KERNEL_WRITE_ERROR =
  /: (Input\/output error|I\/O error|No space left on device|Disk quota exceeded|Quota exceeded)$/m;

/** Idle directory handles kept open; leased ones are kept besides. */
const CACHED_HANDLES = 256;
const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/**
 * The target's filesystem answered its flush with an error (EIO: a write the kernel had taken never reached the
 * disk), as opposed to a flush that could not run or did not finish in time.
 */
export class FlushFailedError extends Error {
  override name = "FlushFailedError";
}

/** A name under the target to create or change; `release` once nothing uses `path` any more. */
export interface Lease {
  path: string;
  release(): void;
}

interface Held {
  handle: Promise<FileHandle>;
  /** The handle's fd, once open. */
  fd?: number;
  leases: number;
}

export class RestoreDirectories {
  private readonly held = new Map<string, Held>(); // by manifest path ("" is the target); oldest use first
  private readonly closing = new Set<Promise<void>>(); // evicted handles being closed
  private closed = false;

  private constructor(
    readonly root: string,
    private readonly rootHandle: FileHandle | undefined,
  ) {
    if (rootHandle) this.held.set("", { handle: Promise.resolve(rootHandle), fd: rootHandle.fd, leases: 1 });
  }

  /** Opens the target `root` (a real path: no symlink in it). */
  static async open(root: string): Promise<RestoreDirectories> {
    if (process.platform !== "linux") return new RestoreDirectories(root, undefined);
    const handle = await open(root, DIR_FLAGS);
    try {
      // /proc/self/fd/<fd> must be this very directory, or names through it would mean something else.
      const [viaProc, own] = await Promise.all([
        stat(`/proc/self/fd/${handle.fd}`).catch(() => undefined),
        handle.stat(),
      ]);
      if (viaProc?.dev === own.dev && viaProc.ino === own.ino) return new RestoreDirectories(root, handle);
    } catch (err) {
      await handle.close();
      throw err;
    }
    await handle.close();
    return new RestoreDirectories(root, undefined);
  }

  /** Whether names go through directory handles (false: plain paths, without /proc). */
  get throughHandles(): boolean {
    return this.rootHandle !== undefined;
  }

  /** The target itself, held open (undefined without /proc). */
  get target(): FileHandle | undefined {
    return this.rootHandle;
  }

  /** Entry `path` of the manifest ("a/b/c"), named through its parent directory's handle. */
  async entry(path: string): Promise<Lease> {
    const now = this.entryNow(path);
    if (now) return now;
    const slash = path.lastIndexOf("/");
    const held = await this.lease(slash < 0 ? "" : path.slice(0, slash));
    return this.leaseOf(held, path.slice(slash + 1));
  }

  /**
   * Runs `use` with the name of manifest entry `path` ("a/b/c"), leased for the call. An error of `use` names the
   * entry as the snapshot has it ('logs/run 1.txt'), not by the name it was reached through
   * ('/proc/self/fd/19/run 1.txt', which means nothing to whoever reads it).
   */
  async withEntry<T>(path: string, use: (at: string) => Promise<T>): Promise<T> {
    const lease = await this.entry(path);
    try {
      return await use(lease.path);
    } catch (err) {
      throw namingEntry(err, lease.path, path);
    } finally {
      lease.release();
    }
  }

  /**
   * `entry` without waiting, when the parent directory's handle is open already (most of a restore: files come
   * directory by directory); undefined otherwise. Saves a restore of 100,000 small files ~0.3 s of its thread.
   */
  entryNow(path: string): Lease | undefined {
    if (!this.rootHandle) return { path: join(this.root, ...path.split("/")), release: () => {} };
    if (this.closed) return undefined;
    const slash = path.lastIndexOf("/");
    const parent = slash < 0 ? "" : path.slice(0, slash);
    const held = this.held.get(parent);
    if (held?.fd === undefined) return undefined;
    this.held.delete(parent); // to the back: most recently used
    this.held.set(parent, held);
    held.leases++;
    return this.leaseOf(held, path.slice(slash + 1));
  }

  /** A lease of `held` (counted already) naming `name` in it. */
  private leaseOf(held: Held, name: string): Lease {
    let released = false;
    return {
      path: `/proc/self/fd/${held.fd}/${name}`,
      release: () => {
        if (released) return;
        released = true;
        this.unlease(held);
      },
    };
  }

  /**
   * Opens directory `path`'s handle ahead of use (kept while fewer than CACHED_HANDLES are idle), so that the
   * files made in it later need not wait for it: opened in the middle of a restore, behind the file creates
   * queued on libuv's threads, a directory's handle held its batch back from the workers.
   */
  async prepare(path: string): Promise<void> {
    if (this.rootHandle) this.unlease(await this.lease(path));
  }

  /** Runs `use` with directory `path`'s own handle (chmod, utimes). */
  async withDirectory<T>(path: string, use: (dir: FileHandle) => Promise<T>): Promise<T> {
    if (!this.rootHandle) {
      const dir = await open(join(this.root, ...path.split("/")), DIR_FLAGS);
      try {
        return await use(dir);
      } finally {
        await dir.close();
      }
    }
    const held = await this.lease(path);
    try {
      return await use(await held.handle);
    } finally {
      this.unlease(held);
    }
  }

  /**
   * The names in the target, read through its handle: the very directory the restore writes into, whatever
   * its path names by now (a check by path could judge one directory empty and the restore write into another).
   */
  async targetNames(): Promise<string[]> {
    return readdir(this.rootHandle ? `/proc/self/fd/${this.rootHandle.fd}` : this.root);
  }

  /** Makes the target's entries durable (an fsync of the directory itself). */
  async syncTarget(): Promise<void> {
    if (this.rootHandle) return this.rootHandle.sync();
    const dir = await open(this.root, DIR_FLAGS);
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  /**
   * Makes everything written into the target durable: a syncfs(2) of its filesystem, through `sync -f` (Node has
   * no syncfs; coreutils' and BusyBox's both take `-f`; elsewhere than Linux, a plain `sync`). One call flushes
   * what thousands of small files left in the page cache, where an fsync of each would commit the journal for
   * each; the large files' O_DIRECT writes still need it for their sizes and extents. The child gets the
   * target's own handle as its stdin and flushes `/proc/self/fd/0`: the directory the restore wrote into, not
   * whatever its path names by then (a symlink swapped in, which `sync` would follow, as root).
   *
   * Throws where it cannot (no `sync` on PATH, an error the kernel reports for the flush), with the reason; and
   * where it has not finished in `timeoutMs` or `signal` aborts: a flush may wait on a device that no longer
   * answers (the child, asleep in the kernel, is then killed and left to go once the kernel lets it).
   */
  async syncFilesystem(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    const { timeoutMs = SYNC_TIMEOUT_MS, signal } = options;
    const viaHandle = process.platform === "linux" && this.rootHandle !== undefined;
    const args = process.platform !== "linux" ? [] : ["-f", viaHandle ? "/proc/self/fd/0" : this.root];
    // In the C locale: its error is read for the kernel's words (strerror's) below. With PATH alone of this
    // process's environment: nothing else of it (a key, credentials) is sync's business.
    const child = spawn("sync", args, {
      stdio: [viaHandle ? this.rootHandle!.fd : "ignore", "ignore", "pipe"],
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C" },
    });
    let stderr = "";
    child.stderr?.setEncoding("utf8").on("data", (text: string) => {
      if (stderr.length < 4096) stderr += text;
    });
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        const fail = (why: string, cause?: unknown) =>
          reject(new Error(`cannot flush ${this.root} to disk: ${why}`, { cause }));
        child.on("error", (err: NodeJS.ErrnoException) =>
          fail(err.code === "ENOENT" ? "no sync command on PATH" : err.message, err),
        );
        child.on("close", (code, by) => {
          const why = stderr.trim() || `sync exited with ${code ?? by}`;
          if (code === 0) resolve();
          // The kernel answered the flush with a writeback error (Linux reports them to syncfs since 5.8). By
          // its words, as sync prints strerror: a sync that failed otherwise (an old one without -f) is no sign
          // of lost writes.
          else if (KERNEL_WRITE_ERROR.test(stderr)) {
            reject(new FlushFailedError(`cannot flush ${this.root} to disk: ${why}`));
          } else fail(why);
        });
        timer = setTimeout(() => fail(`sync did not finish in ${timeoutMs / 1000} s`), timeoutMs);
        onAbort = () => fail("the restore was stopped while it flushed", signal?.reason);
        if (signal?.aborted) onAbort();
        else signal?.addEventListener("abort", onAbort, { once: true });
      });
    } finally {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener("abort", onAbort);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
        child.stderr?.destroy();
        child.unref();
      }
    }
  }

  /**
   * Removes everything in the target (what a failed restore wrote) but the entry named `keep`, through handles:
   * each directory is opened with O_NOFOLLOW through its parent's handle and emptied through its own, then
   * removed by its one-component name. Node's recursive rm resolves every path from the top again, so a
   * directory swapped for a symlink while it ran had it delete what the link pointed at, outside the target, as
   * root. Directories are made writable first (the restore made them, and gives read-only ones their mode last:
   * as another user than root it could not empty them). What cannot be removed is left, and its names returned.
   */
  async emptyTarget(keep?: string): Promise<string[]> {
    if (!this.rootHandle) {
      for (const name of await readdir(this.root).catch(() => [])) {
        if (name !== keep) await rm(join(this.root, name), { recursive: true, force: true }).catch(() => {});
      }
    } else await emptyThroughHandle(`/proc/self/fd/${this.rootHandle.fd}`, keep);
    return (await this.targetNames().catch(() => [] as string[])).filter((name) => name !== keep);
  }

  /**
   * The entries of the target changed (their ctime) after `afterMs` (ms since the epoch): the first `listed` of
   * them by path ("a/b"), a directory before what is in it, and how many there are. Top-level names `skip`
   * accepts are left out. Read only: entries are lstat'ed and directories opened with O_NOFOLLOW through their
   * parent's handle, as emptyTarget does, and never chmod'ed (that would change their ctime). A directory that
   * cannot be listed (one the restore made 0311, as another user than root) is judged by its own ctime: nothing
   * was added to it or removed from it since.
   */
  async changedAfter(
    afterMs: number,
    skip: (name: string) => boolean,
    listed = 3,
  ): Promise<{ paths: string[]; count: number }> {
    const found: Changed = { after: BigInt(Math.floor(afterMs)) * 1_000_000n, listed, paths: [], count: 0 };
    const top = this.rootHandle ? `/proc/self/fd/${this.rootHandle.fd}` : this.root;
    await changedUnder(top, "", found, skip, this.rootHandle !== undefined);
    return { paths: found.paths, count: found.count };
  }

  /** Closes every handle (leases outstanding or not: the restore is over). */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.held.values()];
    this.held.clear();
    await Promise.allSettled([...all.map(async (h) => (await h.handle).close()), ...this.closing]);
  }

  /** Directory `path`'s entry, leased (opened through its parent's handle when not held). */
  private async lease(path: string): Promise<Held> {
    if (this.closed) throw new Error("the restore is over");
    const held = this.held.get(path);
    if (held) {
      this.held.delete(path); // to the back: most recently used
      this.held.set(path, held);
      held.leases++;
      held.fd ??= (await held.handle).fd; // an open that failed throws here for every waiter
      return held;
    }
    const slash = path.lastIndexOf("/");
    const parentPath = slash < 0 ? "" : path.slice(0, slash);
    const name = path.slice(slash + 1);
    const opening = (async () => {
      const parent = await this.lease(parentPath);
      try {
        return await open(`/proc/self/fd/${(await parent.handle).fd}/${name}`, DIR_FLAGS);
      } catch (err) {
        throw replacedDirectory(path, err);
      } finally {
        this.unlease(parent);
      }
    })();
    const opened: Held = { handle: opening, leases: 1 };
    this.held.set(path, opened);
    try {
      opened.fd ??= (await opening).fd;
    } catch (err) {
      if (this.held.get(path) === opened) this.held.delete(path);
      throw err;
    }
    this.evict();
    return opened;
  }

  private unlease(held: Held): void {
    held.leases--;
    this.evict();
  }

  /** Closes the least recently used idle handles past CACHED_HANDLES. */
  private evict(): void {
    let excess = this.held.size - CACHED_HANDLES;
    for (const [path, held] of this.held) {
      if (excess <= 0) break;
      if (held.leases > 0) continue;
      this.held.delete(path);
      excess--;
      const closing = held.handle.then((h) => h.close()).catch(() => {});
      this.closing.add(closing);
      void closing.finally(() => this.closing.delete(closing));
    }
  }
}

/** Empties the directory named `dir` (a /proc/self/fd name) but `keep` entry by entry, never following a link. */
async function emptyThroughHandle(dir: string, keep?: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (entry.name === keep) continue;
    const at = `${dir}/${entry.name}`;
    if (entry.isDirectory()) {
      // Swapped for a link meanwhile: unlinked below. One its owner may not read (0311): made readable first.
      const sub =
        (await open(at, DIR_FLAGS).catch(() => undefined)) ??
        ((await chmodUnreadable(at)) ? await open(at, DIR_FLAGS).catch(() => undefined) : undefined);
      if (sub) {
        try {
          await sub.chmod(0o700).catch(() => {}); // through its handle: the directory just opened, no link
          await emptyThroughHandle(`/proc/self/fd/${sub.fd}`);
        } finally {
          await sub.close();
        }
        await rmdir(at).catch(() => {});
        continue;
      }
    }
    await unlink(at).catch(() => rmdir(at).catch(() => {}));
  }
}

/** What changedAfter collects: entries changed after `after` (ns), the first `listed` of them named. */
interface Changed {
  after: bigint;
  listed: number;
  paths: string[];
  count: number;
}

/** How many entries of one directory changedUnder stats at once. */
const STAT_BATCH = 64;

/**
 * Adds the entries under directory `dir` (a /proc/self/fd name through handles, else a path; `rel` its path in
 * the target) changed after `found.after` (ns) to `found`. Through handles, a subdirectory is opened with
 * O_NOFOLLOW by its one-component name and walked through its own handle, never by a path resolved again.
 */
async function changedUnder(
  dir: string,
  rel: string,
  found: Changed,
  skip: (name: string) => boolean,
  throughHandles: boolean,
): Promise<void> {
  // Unlistable: judged by its own ctime. In order, so that the paths named are the same from one try to the next.
  const names = (await readdir(dir).catch(() => [] as string[])).sort();
  for (let i = 0; i < names.length; i += STAT_BATCH) {
    const batch = names.slice(i, i + STAT_BATCH).filter((name) => rel !== "" || !skip(name));
    // Gone meanwhile, or not to be stat'ed (a directory without search permission): judged by the directory.
    const infos = await Promise.all(
      batch.map((name) => lstat(`${dir}/${name}`, { bigint: true }).catch(() => undefined)),
    );
    for (const [n, name] of batch.entries()) {
      const info = infos[n];
      if (!info) continue;
      const path = rel === "" ? name : `${rel}/${name}`;
      if (!info.isDirectory()) {
        noteChanged(info, path, found);
        continue;
      }
      const sub = throughHandles ? await open(`${dir}/${name}`, DIR_FLAGS).catch(() => undefined) : undefined;
      try {
        // Through its handle, what is walked is the directory whose ctime is judged (a swap meanwhile: not it).
        noteChanged(sub ? await sub.stat({ bigint: true }) : info, path, found);
        if (sub || !throughHandles) {
          await changedUnder(sub ? `/proc/self/fd/${sub.fd}` : `${dir}/${name}`, path, found, skip, throughHandles);
        }
      } finally {
        await sub?.close();
      }
    }
  }
}

function noteChanged(info: BigIntStats, path: string, found: Changed): void {
  if (info.ctimeNs <= found.after) return;
  found.count++;
  if (found.paths.length < found.listed) found.paths.push(path);
}

/** Linux's O_PATH (not among Node's constants): a handle that names a file without opening it to read. */
const O_PATH = 0o10000000;

/**
 * Makes the directory at `at` (a /proc/self/fd name) its owner's to read and write, through an O_PATH handle
 * (which needs no read permission, and follows no link); false where that cannot be done (not Linux, not a
 * directory, not the restore's to change).
 */
async function chmodUnreadable(at: string): Promise<boolean> {
  if (process.platform !== "linux") return false;
  const handle = await open(at, O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch(() => undefined);
  if (!handle) return false;
  try {
    await chmod(`/proc/self/fd/${handle.fd}`, 0o700);
    return true;
  } catch {
    return false;
  } finally {
    await handle.close();
  }
}

/**
 * `err` (a system error, or linkOrCopy's own) with `at`, quoted in its message as Node quotes paths, and in its
 * `path` and `dest` fields, replaced by the entry's `path`; its code stays (unwritableReason reads it).
 */
function namingEntry(err: unknown, at: string, path: string): unknown {
  if (!(err instanceof Error)) return err;
  const e = err as NodeJS.ErrnoException & { dest?: string };
  e.message = e.message.replaceAll(`'${at}'`, `'${path}'`);
  if (e.path === at) e.path = path;
  if (e.dest === at) e.dest = path;
  return err;
}

/** Why directory `path` of the target could not be opened: replaced (a symlink, a file) or the error. */
function replacedDirectory(path: string, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ELOOP" || code === "ENOTDIR" || code === "ENOENT") {
    return new Error(
      `directory ${JSON.stringify(path)} of the restore target was replaced or removed while the restore ran ` +
        `(${code}); nothing was written through it. Restore again into a directory nobody else writes to`,
    );
  }
  return new Error(`cannot open directory ${JSON.stringify(path)} of the restore target: ${(err as Error).message}`);
}
