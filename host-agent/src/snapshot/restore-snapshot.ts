// Restores a snapshot from a ChunkSource into an empty directory (or one a killed restore left: the target is
// checked and claimed in restore-target.ts). The manifest is checked for unsafe paths first; every chunk is
// decrypted, decompressed and hash-checked by the workers, which then write it into the files this thread
// created (a file is finished here once all its chunks are in). Nothing is written through a symlink:
// directories and files are created fresh (O_EXCL | O_NOFOLLOW), each through the handle of the directory it
// goes into (RestoreDirectories), and symlinks are created last. A damaged chunk does not stop the restore: the
// files it breaks are removed and named.
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { chmod, type FileHandle, lchown, link, lutimes, mkdir, open, symlink, unlink } from "node:fs/promises";
import { availableParallelism } from "node:os";
import {
  type ChunkSource,
  checkPathPatterns,
  copyBytes,
  counted,
  type FetchedChunk,
  formatBytes,
  IncludedSelection,
  type ManifestEntry,
  type ManifestRoot,
  manifestPartEntries,
  NO_OTHER_COPY,
  NOT_INDEXED,
  nothingIncluded,
  type Ownership,
  RestorableCheck,
  unwritableReason,
} from "@dumont/repository";
import { FlushFailedError, type Lease, RestoreDirectories } from "./restore-directories.js";
import {
  type ClaimedTarget,
  claimTarget,
  isMarkerName,
  isRestoreMarker,
  prepareTarget,
  RESTORE_MARKER,
} from "./restore-target.js";
import { type NewFiles, SnapshotWorkerPool, type WriteFailure } from "./worker-pool.js";

export interface RestoreSnapshotOptions {
  /** Snapshot id (or a unique prefix, if the source resolves them). */
  snapshotId: string;
  source: ChunkSource;
  key: Buffer;
  /** A new or empty directory. */
  target: string;
  pool?: SnapshotWorkerPool;
  /** Create symlinks that point outside the target (refused by default). */
  allowExternalSymlinks?: boolean;
  /**
   * Restore only what these patterns match (gitignore syntax, relative to the snapshot's directory; a
   * directory with all under it), with the directories holding it. Nothing matching is an error.
   */
  include?: readonly string[];
  /**
   * Give files, directories and symlinks the owners their snapshot recorded (chown needs root). Default: when
   * this process runs as root, as the agent does; otherwise everything belongs to whoever restores it.
   */
  owners?: boolean;
  onProgress?: (progress: RestoreProgress) => void;
  signal?: AbortSignal;
}

export interface RestoreProgress {
  filesDone: number;
  filesTotal: number;
  bytesWritten: number;
  bytesTotal: number;
}

export interface RestoreSnapshotResult {
  snapshotId: string;
  files: number;
  dirs: number;
  symlinks: number;
  bytesWritten: number;
  seconds: number;
  /** Of `seconds`, the flush of what was written to disk at the end (see afterRestore). */
  flushSeconds?: number;
  /**
   * Worth telling whoever restores: the target held what an interrupted restore left, cleared first; what was
   * written could not be flushed to disk.
   */
  warnings?: string[];
}

export interface DamagedFile {
  path: string;
  reason: string;
  chunk?: string;
  pack?: string;
}

/** Thrown after a restore that could not write some files correctly; those files were removed. */
export class RestoreDamagedError extends Error {
  override name = "RestoreDamagedError";
  constructor(
    readonly damaged: DamagedFile[],
    readonly result: RestoreSnapshotResult,
  ) {
    const shown = damaged
      .slice(0, 5)
      .map(
        (d) =>
          `${JSON.stringify(d.path)} (${d.chunk ? `chunk ${d.chunk.slice(0, 12)}` : "data"}` +
          `${d.pack ? ` in pack ${d.pack.slice(0, 12)}` : ""}: ${d.reason})`,
      );
    super(
      `restore of snapshot ${result.snapshotId.slice(0, 12)} found damaged data; ${counted(damaged.length, "file")} could not be ` +
        `restored and ${damaged.length === 1 ? "was" : "were"} left out: ${shown.join("; ")}${damaged.length > 5 ? `; and ${damaged.length - 5} more` : ""}`,
    );
  }
}

type FileEntry = Extract<ManifestEntry, { type: "file" }>;

interface FileState {
  entry: FileEntry;
  handle?: FileHandle;
  /** The same file opened again with O_DIRECT, for the page-aligned middles of large writes. */
  direct?: FileHandle;
  remaining: number;
  /** A one-chunk file: the worker that writes its chunk creates, writes and finishes it (see NewFiles). */
  byWorker?: boolean;
  /** Its name for the worker that creates it, held until that worker is done with it. */
  at?: Lease;
  /** Settles once the file is created (or creating it, or an earlier file, failed). */
  ready?: Promise<void>;
  damaged?: DamagedFile;
  done?: boolean;
}

interface Destination {
  file: FileState;
  offset: number;
  length: number;
}

/**
 * A window of the restore holds at most this many files that are opened here (those of more than one chunk:
 * each holds a file descriptor or two until it is whole), this many files in all, and about this many bytes.
 * One-chunk files are created and finished by the worker that writes them, so many fit in a window: they
 * are then written alongside the large files (see `interleave`).
 */
const WINDOW_OPEN_FILES = 512;
const WINDOW_FILES = 16384;
const WINDOW_BYTES = 1024 * 1024 * 1024;
const TASK_BYTES = 8 * 1024 * 1024;
/**
 * Files at least this large get an O_DIRECT fd as well (see `openAndWrite`). Restored bytes then skip the
 * page cache: a decision, since the job's first read of a large file comes from disk; in exchange restore
 * runs at device speed instead of the kernel's buffered-write speed, and does not evict the host's cache.
 */
const DIRECT_FILE_BYTES = 1024 * 1024;
const O_DIRECT = process.platform === "linux" ? constants.O_DIRECT : undefined;
/**
 * How many times a chunk that does not verify is asked for again, each time from another copy (a source with
 * `otherCopies`): more copies of one chunk than this are not made by anything short of a bug.
 */
export const MAX_COPY_ROUNDS = 4;
/** Room for one more blob past TASK_BYTES (a 4 MiB chunk plus its envelope; larger ones get their own buffer). */
const MAX_BLOB = 4 * 1024 * 1024 + 64;

/**
 * Worker threads for a restore: one more than the cores. A worker's O_DIRECT writes are synchronous, so it
 * sleeps while the device takes the bytes; the extra worker opens the next batch meanwhile. Measured on the
 * 2-core dev VM (7 paired 1 GiB restores): 3 workers 8% faster than 2 at the same CPU; 4 slower again.
 */
export function restoreThreads(): number {
  return availableParallelism() + 1;
}

export async function restoreSnapshot(given: RestoreSnapshotOptions): Promise<RestoreSnapshotResult> {
  const started = performance.now();
  const options = { ...given, owners: given.owners ?? process.geteuid?.() === 0 };
  const { snapshotId, manifestBlobs } = await options.source.readManifest(options.snapshotId);
  const what = `manifest of snapshot ${snapshotId}`;
  const plan = planRestore(options, snapshotId, manifestBlobs, what);
  await options.source.ready?.(); // a repository's index, loaded while the manifest was read
  const root = await prepareTarget(options.target);
  const dirs = await RestoreDirectories.open(root);
  let claimed: ClaimedTarget;
  try {
    claimed = await claimTarget(dirs, options.target, snapshotId);
  } catch (err) {
    await dirs.close();
    // A full disk (or quota, or read-only mount) already for the marker: nothing was written.
    throw targetUnwritable(err, options.target, plan.room, "Nothing was written") ?? err;
  }
  // Only this user may enter the target while the restore writes into it (without /proc, by path: a directory
  // swapped for a symlink meanwhile could redirect a write); its own mode comes back at the end.
  const chmodTarget = (mode: number) => (dirs.target ? dirs.target.chmod(mode) : chmod(root, mode));
  /** Runs `use` on the target's own handle (without /proc, one opened for the call). */
  const onTarget = async (use: (handle: FileHandle) => Promise<void>): Promise<void> => {
    if (dirs.target) return use(dirs.target);
    const handle = await open(root, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    try {
      await use(handle);
    } finally {
      await handle.close();
    }
  };
  let locked: number | undefined; // the target's own mode, once it is 0700
  let restored = false; // all restored, or all but damaged files: the target then takes the snapshot's root
  let pool: SnapshotWorkerPool | undefined;
  /** What a failed restore wrote and could not remove. */
  let left: string[] = [];
  try {
    // Not ours to change (another user's empty directory): restored as before.
    if (
      await chmodTarget(0o700).then(
        () => true,
        () => false,
      )
    )
      locked = claimed.originalMode;
    pool = options.pool ?? new SnapshotWorkerPool({ threads: restoreThreads() });
    const result = await restoreInto(dirs, plan, snapshotId, manifestBlobs, what, pool, options, started);
    await afterRestore(dirs, claimed, result, started, options.signal);
    options.signal?.throwIfAborted(); // stopped while it flushed: taken back, as at any other point
    restored = true;
    return result;
  } catch (caught) {
    let err = caught;
    // One that restored all it could and names damaged files (RestoreDamagedError) keeps the rest, once flushed.
    if (err instanceof RestoreDamagedError) {
      const unflushed = await afterRestore(dirs, claimed, err.result, started, options.signal).then(
        () => undefined,
        (e: unknown) => e,
      );
      if (unflushed === undefined) {
        restored = true;
        throw err;
      }
      err = unflushed;
    }
    // A restore that fails part-way (the stream drops, the disk fills, it is cancelled, the disk fails its
    // flush) takes back what it wrote: the target is empty again, and the same restore can simply run again.
    left = (await dirs.emptyTarget(RESTORE_MARKER)).filter((name) => !isMarkerName(name));
    if (left.length === 0) {
      throw targetUnwritable(err, options.target, plan.room, "What was restored so far has been removed") ?? err;
    }
    const notRemoved =
      `Not all it wrote could be removed (${left.slice(0, 3).join(", ")}` +
      `${left.length > 3 ? `, and ${left.length - 3} more` : ""}): ${RESTORE_MARKER} stays in ${options.target}, ` +
      "so it reads as an interrupted restore's, which the next restore into it clears";
    // A full disk's error says what is left behind itself (as its outcome); any other gets it appended.
    const unwritable = targetUnwritable(err, options.target, plan.room, notRemoved);
    const why = err instanceof Error ? err.message : String(err);
    throw new RestoreLeftBehindError(unwritable?.message ?? `${why}. ${notRemoved}`, unwritable ?? err, notRemoved);
  } finally {
    // The target becomes the snapshot's directory (as rsync's `src/ dst/`): its owner, mode and time, so a
    // workspace moved to another host is its user's to write in, not root's. Where the manifest does not say
    // (or the restore failed and emptied it), the target's own mode comes back.
    const own = restored ? plan.root : undefined;
    const ownerAndMode = async (): Promise<void> => {
      if (own && options.owners && hasOwner(own)) await onTarget((h) => h.chown(...ownerArgs(own))).catch(() => {});
      await chmodTarget(own ? own.mode : (locked as number)).catch(() => {});
    };
    // A whole restore takes them before its marker goes, so a kill in between cannot leave a target that reads
    // as whole yet is root's and 0700. Unless that mode would keep this process from removing the marker (one
    // that is not root, and a mode without the owner's write and search).
    const early = own !== undefined && (process.geteuid?.() === 0 || (own.mode & 0o300) === 0o300);
    if (locked !== undefined && early) await ownerAndMode();
    // Over, one way or the other: the marker goes (after what a failed restore wrote, so a kill while that is
    // removed leaves it for the next restore to finish the job), before the target's time is set below. Unless
    // some of that could not be removed: the marker then stays, flagging the target as not a whole restore.
    await claimed.finish({ keepMarker: left.length > 0 });
    if (locked !== undefined) {
      if (!early) await ownerAndMode();
      if (own) {
        const t = timeArg(nsToSeconds(own.mtimeNs));
        await onTarget((h) => h.utimes(t, t)).catch(() => {});
        // Durable too, with the marker's removal: a power loss must not leave the target root's and 0700.
        await dirs.syncTarget().catch(() => {});
      }
    }
    await dirs.close();
    if (options.pool === undefined) await pool?.close();
  }
}

/**
 * What a restore that wrote all it could does before its marker goes: makes it durable. Removed while the files
 * were still in the page cache, the marker would let a power loss right after leave empty or short files that
 * nothing flags; flushed first, a loss before the flush leaves the marker, and the next restore starts over. One
 * syncfs at the end: a flush in the background every 128 MiB written left the last one little to do, but slowed
 * the writes as much while the disk caught up (1 GiB on the dev VM: 2.64–2.78 s against 2.19–2.53 s). Where the
 * flush cannot run or does not finish in time, the restore is still done (its writes all returned) and says so.
 * Where the disk answers it with an error, some of what the writes handed the kernel never reached the disk, and
 * reading it back may not give it: the restore fails, and is taken back as any failed one.
 * `result` (the restore's, begun at `started`) gets its time with the flush's, and the warnings for the caller:
 * that, and an interrupted restore's files cleared first.
 */
async function afterRestore(
  dirs: RestoreDirectories,
  claimed: ClaimedTarget,
  result: RestoreSnapshotResult,
  started: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const warnings = claimed.tookOver ? [claimed.tookOver] : [];
  warnings.push(...(result.warnings ?? [])); // the restore's own (chunks read from other copies)
  const flushing = performance.now();
  await dirs.syncFilesystem({ signal }).catch((err: Error) => {
    if (err instanceof FlushFailedError) {
      throw new Error(
        `${err.message}: the disk did not take all that was restored, so restored files may not read back as ` +
          "they were; restore again, onto a disk that works",
        { cause: err },
      );
    }
    warnings.push(`${err.message}; a power loss soon could leave restored files empty or short`);
  });
  result.flushSeconds = (performance.now() - flushing) / 1000;
  result.seconds = (performance.now() - started) / 1000;
  if (warnings.length > 0) result.warnings = warnings;
}

/**
 * `err`, where the target's filesystem takes no more writes (a full disk, a quota, a read-only mount), as an
 * Error saying so, what became of the restore (`outcome`) and how much it needs; undefined for any other error.
 */
function targetUnwritable(err: unknown, target: string, room: number, outcome: string): Error | undefined {
  const why = unwritableReason(err);
  if (why === undefined) return undefined;
  // A read-only filesystem is not a matter of room.
  const remedy =
    (err as NodeJS.ErrnoException).code === "EROFS"
      ? "mount it read-write, or restore elsewhere"
      : `the restore needs ${formatBytes(room)} there: make room and restore again`;
  return new Error(`cannot restore into ${target}: ${why}. ${outcome}; ${remedy}`, { cause: err });
}

/** The disk a file of `size` bytes takes, in whole blocks (the usual 4 KiB: 50,000 files of 5 bytes take ~200 MB). */
function blocksOf(size: number): number {
  return Math.ceil(size / DISK_BLOCK) * DISK_BLOCK;
}
const DISK_BLOCK = 4096;

/**
 * A worker's failure to write file `path` as an Error with its code (unwritableReason reads it), naming the file
 * as the snapshot has it (not by the /proc name it was created through), as onEntry does.
 */
function targetRefused(failure: WriteFailure, path: string): Error {
  const message = failure.at ? failure.message.replaceAll(`'${failure.at}'`, `'${path}'`) : failure.message;
  return onEntry(Object.assign(new Error(message), { code: failure.code }), path) as Error;
}

/** `err` from work on entry `path` through its handle (no name in the message): the message names it. */
function onEntry(err: unknown, path: string): unknown {
  if (err instanceof Error && !err.message.includes(`'${path}'`)) err.message = `'${path}': ${err.message}`;
  return err;
}

async function restoreInto(
  dirs: RestoreDirectories,
  plan: RestorePlan,
  snapshotId: string,
  manifestBlobs: readonly Buffer[],
  what: string,
  pool: SnapshotWorkerPool,
  options: RestoreSnapshotOptions,
  started: number,
): Promise<RestoreSnapshotResult> {
  const progress: RestoreProgress = {
    filesDone: 0,
    filesTotal: plan.files,
    bytesWritten: 0,
    bytesTotal: plan.bytes,
  };
  for (const d of plan.dirs) {
    await dirs.withEntry(d.path, (at) => mkdir(at, { mode: 0o700 }));
    await dirs.prepare(d.path);
  }

  // The files, a window at a time, from the manifest's parts opened again one by one: only the part being
  // read and the window are held (a manifest of 300,000 files held whole was ~115 MB of objects).
  const damaged: DamagedFile[] = [];
  /** Chunks that did not verify where first read and were written from another copy: chunk → that first pack. */
  const recovered = new Map<string, string | undefined>();
  let window: FileEntry[] = [];
  let bytes = 0;
  let opened = 0;
  const flush = async (): Promise<void> => {
    options.signal?.throwIfAborted();
    await restoreWindow(window, dirs, pool, options, progress, { damaged, recovered });
    window = [];
    bytes = 0;
    opened = 0;
  };
  // A hard link is made only to a file listing the same chunks (FORMAT.md): what a link names is seen before it,
  // and what it lists is kept for the files links name only. A manifest whose link lists others (damaged, or a
  // writer's bug) gets that file written from its own chunks, checked as every file's are.
  const linkedTo = new Set(plan.linked.values());
  const contentOf = new Map<string, string>();
  // A digest of what the file lists, not the list: a file of 50,000 chunks names 3 MB of ids.
  const content = (e: FileEntry) => {
    const hash = createHash("sha256").update(`${e.size}:`);
    for (const id of e.chunks) hash.update(id);
    return hash.digest("base64");
  };
  for (const part of manifestPartEntries(options.key, manifestBlobs, what)) {
    for (const e of part) {
      if (e.type !== "file" || !plan.selected(e.path, false)) continue;
      if (linkedTo.has(e.path)) contentOf.set(e.path, content(e));
      const first = plan.linked.get(e.path);
      if (first !== undefined) {
        if (contentOf.get(first) === content(e)) continue;
        plan.linked.delete(e.path);
        progress.bytesTotal += e.size;
      }
      if (window.length > 0 && !(window.length < WINDOW_FILES && opened < WINDOW_OPEN_FILES && bytes < WINDOW_BYTES)) {
        await flush();
      }
      window.push(e);
      if (e.chunks.length !== 1) opened++;
      bytes += e.size;
    }
  }
  if (window.length > 0) await flush();

  // Hard links, once the files they name are whole: one inode again, as in the source.
  const damagedPaths = new Set(damaged.map((d) => d.path));
  for (const [path, first] of plan.linked) {
    options.signal?.throwIfAborted();
    if (damagedPaths.has(first)) {
      damaged.push({ path, reason: `a hard link to ${JSON.stringify(first)}, which could not be restored` });
      damagedPaths.add(path); // a link to this link (a manifest may chain them) is damaged too
      continue;
    }
    await dirs.withEntry(first, (existing) => dirs.withEntry(path, (at) => linkOrCopy(existing, at)));
    progress.filesDone++;
  }

  for (const l of plan.links) {
    await dirs.withEntry(l.path, async (at) => {
      await symlink(l.target, at);
      // The link itself: lchown follows nothing.
      if (options.owners && hasOwner(l)) await lchown(at, ...ownerArgs(l)).catch(ownerRefused);
      const t = timeArg(nsToSeconds(l.mtimeNs));
      await lutimes(at, t, t).catch(() => {}); // not every filesystem can time-stamp a link
    });
  }
  // Directory modes and times last (deepest first): writing into them would change their mtime, and a
  // read-only mode would stop the writes.
  for (const d of [...plan.dirs].reverse()) {
    await dirs
      .withDirectory(d.path, async (dir) => {
        if (options.owners && hasOwner(d)) await dir.chown(...ownerArgs(d)).catch(ownerRefused);
        await dir.chmod(d.mode);
        const t = timeArg(nsToSeconds(d.mtimeNs));
        await dir.utimes(t, t);
      })
      .catch((err: unknown) => {
        throw onEntry(err, d.path);
      });
  }

  const result: RestoreSnapshotResult = {
    snapshotId,
    files: plan.files - damaged.length,
    dirs: plan.dirs.length,
    symlinks: plan.links.length,
    bytesWritten: progress.bytesWritten,
    seconds: (performance.now() - started) / 1000,
  };
  const fromCopies = otherCopiesWarning(recovered);
  if (fromCopies) result.warnings = [fromCopies];
  if (damaged.length > 0) throw new RestoreDamagedError(damaged, result);
  return result;
}

/**
 * What the restore tells its caller when it read chunks from other copies: it is whole, but the repository holds
 * damaged data, which `check` finds and `repair-packs` mends (a prune that would delete the good copy stops).
 */
function otherCopiesWarning(recovered: ReadonlyMap<string, string | undefined>): string | undefined {
  const chunks = recovered.size;
  if (chunks === 0) return undefined;
  const packs = [...new Set(recovered.values())].filter((p) => p !== undefined).sort();
  const named =
    packs.length === 0
      ? ""
      : ` (pack${packs.length === 1 ? "" : "s"} ${packs
          .slice(0, 5)
          .map((p) => p.slice(0, 12))
          .join(", ")}${packs.length > 5 ? ", ..." : ""})`;
  return (
    `${counted(chunks, "chunk")} did not verify where first read${named} and ${chunks === 1 ? "was" : "were"} ` +
    "restored from another copy: the repository holds damaged data; `snapshot check` finds it and " +
    "`snapshot repair-packs` mends it"
  );
}

type DirEntry = Extract<ManifestEntry, { type: "dir" }>;
type LinkEntry = Extract<ManifestEntry, { type: "symlink" }>;

/** What a restore learns from a first reading of the whole manifest, before it writes anything. */
interface RestorePlan {
  /** The snapshot's directory itself: the target's mode, time and owner at the end (older manifests: none). */
  root?: ManifestRoot;
  /** Whether an entry is restored (--include), by its path and whether it is a directory. */
  selected: (path: string, dir: boolean) => boolean;
  /** Hard links to make, path -> the earlier file it is (linkOf), where that file is restored too. */
  linked: Map<string, string>;
  files: number;
  /** What the files written (not linked) hold. */
  bytes: number;
  /**
   * The disk the restore takes, near enough, for a target that fills: each file written in whole 4 KiB blocks, and
   * a block a directory (a sparse file's holes are counted as data).
   */
  room: number;
  dirs: DirEntry[];
  links: LinkEntry[];
}

/**
 * Reads the manifest's parts once, one at a time: checks the whole one's structure (RestorableCheck), applies
 * --include (IncludedSelection: nothing selected is an error), refuses an outward link among those selected
 * unless allowed, counts the files and bytes to restore, and keeps the directories and links to make. Files are
 * read again, part by part, as they are restored.
 */
function planRestore(
  options: RestoreSnapshotOptions,
  snapshotId: string,
  manifestBlobs: readonly Buffer[],
  what: string,
): RestorePlan {
  const check = new RestorableCheck({ allowExternalSymlinks: options.allowExternalSymlinks });
  const include = options.include?.length
    ? new IncludedSelection(checkPathPatterns(options.include, "include"))
    : undefined;
  let files = 0;
  let bytes = 0;
  let room = 0;
  let matched = 0;
  const dirs: DirEntry[] = [];
  const links: LinkEntry[] = [];
  let root: ManifestRoot | undefined;
  const hardLinks: FileEntry[] = [];
  for (const part of manifestPartEntries(options.key, manifestBlobs, what, (r) => (root = r))) {
    for (const e of part) {
      check.add(e);
      // A restore's marker an older agent snapshotted (a target mid-restore): never written back, or a later
      // restore into the tree would take it for its own.
      if (isRestoreMarker(e.path)) continue;
      if (e.type === "dir") dirs.push(e);
      if (include && !include.add(e.path, e.type === "dir")) continue;
      matched++;
      if (e.type === "symlink") links.push(e);
      else if (e.type === "file") {
        files++;
        if (e.linkOf === undefined) {
          bytes += e.size;
          room += blocksOf(e.size);
        } else hardLinks.push(e);
      }
    }
  }
  check.finish();
  // Outward links are judged only among those this restore writes (`links`: the ones --include selects), and
  // after "nothing matches": a link left out of a partial restore is no reason to refuse it.
  if (include && matched === 0) throw nothingIncluded(snapshotId, options.include ?? []);
  check.refuseOutwardLinks(links.map((l) => l.path));
  // A hard link is made where the file it names is restored too; otherwise it is written, as any file.
  const linked = new Map<string, string>();
  const selected = (path: string, dir: boolean) => !isRestoreMarker(path) && (include?.matches(path, dir) ?? true);
  const kept = include?.finish();
  for (const e of hardLinks) {
    if (selected(e.linkOf!, false)) linked.set(e.path, e.linkOf!);
    else {
      bytes += e.size;
      room += blocksOf(e.size);
    }
  }
  // Directories are kept when matched or when they hold something that is (files and links only when matched).
  const made = kept ? dirs.filter((d) => kept.has(d.path)) : dirs;
  room += made.length * DISK_BLOCK;
  return { root, selected, linked, files, bytes, room, dirs: made, links };
}

async function restoreWindow(
  files: FileEntry[],
  dirs: RestoreDirectories,
  pool: SnapshotWorkerPool,
  options: RestoreSnapshotOptions,
  progress: RestoreProgress,
  /** Where the window adds the files it could not restore, and the chunks it restored from other copies. */
  { damaged, recovered }: { damaged: DamagedFile[]; recovered: Map<string, string | undefined> },
): Promise<void> {
  const states: FileState[] = files.map((entry) => ({ entry, remaining: entry.chunks.length }));
  const destinations = new Map<string, Destination[]>();
  // A file is finished (mode, times, close) as soon as its last chunk is written, while others still arrive.
  const finishing: Promise<void>[] = [];
  let opening: Promise<void> = Promise.resolve();
  let direct = O_DIRECT !== undefined;
  const finish = (state: FileState): void => {
    state.done = true;
    const handle = state.handle!;
    const directHandle = state.direct;
    state.handle = undefined;
    state.direct = undefined;
    const t = timeArg(nsToSeconds(state.entry.mtimeNs));
    finishing.push(
      (async () => {
        try {
          await directHandle?.close();
          if (options.owners && hasOwner(state.entry)) {
            await handle.chown(...ownerArgs(state.entry)).catch(ownerRefused);
          }
          await handle.chmod(fileMode(state.entry.mode));
          await handle.utimes(t, t);
        } catch (err) {
          throw onEntry(err, state.entry.path);
        } finally {
          await handle.close();
        }
        progress.filesDone++;
      })(),
    );
  };
  try {
    // Files are created one at a time, in the background while chunks already flow: creating files in one
    // directory takes its inode lock, and parallel creates only spun on it in the kernel (measured: 13% of
    // a restore's CPU with four at once). A batch waits for the files it writes to.
    for (const state of states) {
      if (state.entry.chunks.length === 1) {
        state.byWorker = true;
        continue;
      }
      opening = opening.then(async () => {
        state.handle = await dirs.withEntry(state.entry.path, (at) =>
          open(at, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600),
        );
        // At its final size from the start: the writes then never extend the file (less filesystem work).
        if (state.entry.size > 0) {
          await state.handle.truncate(state.entry.size).catch((err: unknown) => {
            throw onEntry(err, state.entry.path);
          });
        }
        if (direct && state.entry.size >= DIRECT_FILE_BYTES) {
          // Through /proc/self/fd: the very file just created, whatever happens to its name meanwhile.
          state.direct = await open(`/proc/self/fd/${state.handle.fd}`, constants.O_WRONLY | O_DIRECT!).catch(() => {
            direct = false; // no /proc, or a filesystem without O_DIRECT (tmpfs): the page cache it is
            return undefined;
          });
        }
        if (state.entry.chunks.length === 0) finish(state);
      });
      state.ready = opening;
    }
    opening.catch(() => {}); // awaited below; failures surface there
    for (const state of states) {
      const entry = state.entry;
      let offset = 0;
      for (let i = 0; i < entry.chunks.length; i++) {
        const hex = entry.chunks[i];
        let list = destinations.get(hex);
        if (!list) {
          list = [];
          destinations.set(hex, list);
        }
        list.push({ file: state, offset, length: entry.lengths[i] });
        offset += entry.lengths[i];
      }
    }

    // A chunk that does not verify, or whose pack cannot be read, is asked for again from another copy where the
    // source has them (otherCopies: a chunk two racing snapshots both stored, or a repack cut short, is in two
    // packs), after every batch of the round is written. Its files are named damaged only once no copy is left,
    // with the first copy's fault, the pack it was in, and how many others failed too. (One whose files are all
    // named damaged already is not asked for again.)
    const copies = options.source.otherCopies === true;
    const failures = new Map<string, { reason: string; pack: string | undefined; copies: number }>();
    let retry = new Set<string>();
    let round = 0;
    const markDamaged = (hex: string, reason: string, pack: string | undefined): void => {
      let first = failures.get(hex);
      // (A chunk the index holds no copy of has none to ask for: its files are named at once.)
      if (copies && reason !== NO_OTHER_COPY && reason !== NOT_INDEXED) {
        if (first) first.copies++;
        else {
          first = { reason, pack, copies: 1 };
          failures.set(hex, first);
        }
        if (round < MAX_COPY_ROUNDS && destinations.get(hex)?.some((d) => !d.file.damaged)) {
          retry.add(hex);
          return;
        }
      }
      const damage = !first
        ? { reason, pack }
        : {
            reason:
              first.copies === 1
                ? `${first.reason}; ${NO_OTHER_COPY}`
                : `${first.reason}; ${counted(first.copies - 1, "other copy", "other copies")} failed too`,
            pack: first.pack,
          };
      for (const d of destinations.get(hex) ?? [])
        d.file.damaged ??= { path: d.file.entry.path, ...damage, chunk: hex };
    };

    // Batches being opened and written at once (one per worker, one filling).
    const maxInflight = Math.max(2, pool.threads + 1);
    const inflight: Promise<void>[] = [];
    let failure: unknown;
    // The batch being filled: blobs are copied in as they arrive (a source may reuse its read buffers), or,
    // when the source read them into memory the workers share (direct mode), the batch is that read buffer
    // (`borrowed`) and nothing is copied.
    let data: Buffer | undefined;
    let borrowed = false;
    let ranges: number[] = [];
    let hexes: string[] = [];
    let packs: (string | undefined)[] = [];
    let taskBytes = 0;

    // The workers open, verify and write each batch themselves (the plain bytes never come back to this
    // thread); here we only decide where each chunk goes and account for what was written.
    const submit = (
      batchData: Buffer,
      batchRanges: number[],
      batchHexes: string[],
      batchPacks: (string | undefined)[],
      recycle: boolean,
    ): Promise<void> => {
      const lengths = new Int32Array(batchHexes.length);
      const ids = Buffer.allocUnsafeSlow(32 * batchHexes.length);
      const destStart = new Int32Array(batchHexes.length + 1);
      const dests: number[] = [];
      const targets: Destination[] = [];
      // One-chunk files the worker creates: dest fd -1 - i is file i here.
      const paths: string[] = [];
      const modes: number[] = [];
      const mtimes: number[] = [];
      const owners: number[] | undefined = options.owners ? [] : undefined;
      for (let i = 0; i < batchHexes.length; i++) {
        const list = destinations.get(batchHexes[i]) ?? [];
        // Every use of a chunk id has the same length unless the manifest lies; then the odd ones are marked.
        lengths[i] = list[0]?.length ?? -1;
        ids.write(batchHexes[i], 32 * i, "hex");
        destStart[i] = targets.length;
        for (const d of list) {
          if (d.file.damaged) continue;
          if (d.length !== lengths[i]) {
            d.file.damaged = {
              path: d.file.entry.path,
              reason: `chunk is ${lengths[i]} bytes where the manifest also says ${d.length}`,
              chunk: batchHexes[i],
            };
            continue;
          }
          targets.push(d);
          if (d.file.byWorker) {
            dests.push(-1 - paths.length, -1, 0);
            paths.push(d.file.at!.path);
            modes.push(fileMode(d.file.entry.mode));
            mtimes.push(nsToSeconds(d.file.entry.mtimeNs));
            owners?.push(...ownerArgs(d.file.entry));
          } else {
            dests.push(d.file.handle!.fd, d.file.direct?.fd ?? -1, d.offset);
          }
        }
      }
      destStart[batchHexes.length] = targets.length;
      const creates: NewFiles | undefined =
        paths.length > 0
          ? {
              paths,
              modes: Int32Array.from(modes),
              mtimes: Float64Array.from(mtimes),
              ...(owners ? { owners: Float64Array.from(owners) } : {}),
            }
          : undefined;
      const run = pool.writeChunks(
        options.key,
        batchData,
        Int32Array.from(batchRanges),
        ids,
        lengths,
        destStart,
        Float64Array.from(dests),
        creates,
        { recycle },
      );
      const releaseNames = (): void => {
        for (const d of targets) {
          d.file.at?.release();
          d.file.at = undefined;
        }
      };
      return run
        .finally(releaseNames)
        .then((written) => {
          const failedWrites = new Map(written.writeErrors);
          for (let i = 0; i < batchHexes.length; i++) {
            const error = written.errors[i];
            if (error !== null) {
              markDamaged(batchHexes[i], error, batchPacks[i]); // every file the chunk belongs to
              continue;
            }
            const first = failures.get(batchHexes[i]);
            for (let k = destStart[i]; k < destStart[i + 1]; k++) {
              const d = targets[k];
              const writeError = failedWrites.get(k);
              if (writeError !== undefined) {
                // Whatever the target's filesystem refused (a full disk, a name too long for it, two names that
                // are one there, an I/O error) is no damage in the snapshot: the restore stops, takes back what
                // it wrote and says why (restoreSnapshot), as for a file opened on this thread.
                failure ??= targetRefused(writeError, d.file.entry.path);
                d.file.damaged ??= { path: d.file.entry.path, reason: `cannot write: ${writeError.message}` };
                continue;
              }
              progress.bytesWritten += d.length;
              if (first) recovered.set(batchHexes[i], first.pack); // written, from another copy
              if (--d.file.remaining > 0 || d.file.damaged) continue;
              if (!d.file.byWorker) finish(d.file);
              else {
                d.file.done = true; // created, written, moded, timed and closed by the worker
                progress.filesDone++;
              }
            }
          }
          options.onProgress?.(progress);
        })
        .catch((err: unknown) => {
          failure ??= err;
        });
    };

    const flush = async (): Promise<void> => {
      if (hexes.length === 0) return;
      const batchData = data!.subarray(0, taskBytes);
      const batchRanges = ranges;
      const batchHexes = hexes;
      const batchPacks = packs;
      data = undefined;
      borrowed = false;
      ranges = [];
      hexes = [];
      packs = [];
      taskBytes = 0;
      try {
        for (const hex of batchHexes) {
          for (const d of destinations.get(hex) ?? []) {
            await d.file.ready;
            if (d.file.byWorker && !d.file.at) {
              d.file.at = dirs.entryNow(d.file.entry.path) ?? (await dirs.entry(d.file.entry.path));
            }
          }
        }
      } catch (err) {
        pool.recycle(batchData.buffer); // a file of the batch could not be made: the restore ends here
        throw err;
      }
      // A read buffer can hold far more work than its size says: 8 MiB of compressed source files is 500
      // files to create, of compressed CSV 25 MiB to write. Parts of it go to different workers (they share
      // the buffer), and the buffer is recycled once every part is written.
      const cuts = pool.threads >= 1 && pool.isShared(batchData.buffer) ? splitBatch(batchHexes, destinations) : [];
      const whole = cuts.length === 0; // one part: writeChunks recycles the buffer itself
      const parts: Promise<void>[] = [];
      let from = 0;
      for (const to of [...cuts, batchHexes.length]) {
        parts.push(
          submit(
            batchData,
            batchRanges.slice(2 * from, 2 * to),
            batchHexes.slice(from, to),
            batchPacks.slice(from, to),
            whole,
          ),
        );
        from = to;
      }
      inflight.push(...parts);
      if (!whole) void Promise.all(parts).then(() => pool.recycle(batchData.buffer));
      while (inflight.length >= maxInflight) await inflight.shift();
      if (failure) throw failure;
    };

    /** Takes one round's chunks as they come, in batches to the workers; the last batch is submitted on return. */
    const receive = async (chunks: AsyncIterable<FetchedChunk>): Promise<void> => {
      for await (const fetched of chunks) {
        const blob = fetched.blob;
        // A read buffer met for the first time is this restore's from here: given back if it stops before the
        // buffer is the batch (once it is, `data`'s own recycling covers it).
        const arriving = blob && pool.isShared(blob.buffer) && data?.buffer !== blob.buffer ? blob.buffer : undefined;
        try {
          options.signal?.throwIfAborted();
          // A batch per read buffer: it goes back to the pool once its batch is written.
          if (arriving && data) await flush();
        } catch (err) {
          if (arriving) pool.recycle(arriving);
          throw err;
        }
        const hex = fetched.id.toString("hex");
        if (blob === undefined) {
          markDamaged(hex, fetched.error, fetched.pack);
          continue;
        }
        if (pool.isShared(blob.buffer)) {
          if (!data) {
            data = Buffer.from(blob.buffer);
            borrowed = true;
          }
          ranges.push(blob.byteOffset, blob.length);
          taskBytes = Math.max(taskBytes, blob.byteOffset + blob.length);
          hexes.push(hex);
          packs.push(fetched.pack);
          continue;
        }
        if (borrowed || (data && taskBytes + blob.length > data.length)) await flush();
        data ??= pool.buffer(Math.max(TASK_BYTES + MAX_BLOB, blob.length));
        copyBytes(blob, data, taskBytes);
        ranges.push(taskBytes, blob.length);
        hexes.push(hex);
        packs.push(fetched.pack);
        taskBytes += blob.length;
        if (taskBytes >= TASK_BYTES) await flush();
      }
      await flush();
    };

    try {
      let ids = interleave(states, destinations).map((hex) => Buffer.from(hex, "hex"));
      for (;;) {
        await receive(options.source.get(ids, round > 0 ? { otherCopy: true } : undefined));
        if (!copies) break;
        // Which chunks did not verify is known once the workers have written every batch.
        await Promise.all(inflight.splice(0));
        if (failure || retry.size === 0) break;
        options.signal?.throwIfAborted();
        round++;
        ids = [...retry].map((hex) => Buffer.from(hex, "hex"));
        retry = new Set();
      }
    } finally {
      await Promise.allSettled(inflight);
      if (data) pool.recycle(data.buffer);
    }
    if (failure) throw failure;

    await opening; // every file exists (a chunk-less one is finished then), or the error is thrown here
    await Promise.all(finishing);
    for (const state of states) {
      if (state.done) continue;
      state.damaged ??= { path: state.entry.path, reason: "the source never delivered some of its chunks" };
      damaged.push(state.damaged);
      // A file the worker creates exists only once it is whole (a failed one is removed there).
      if (state.byWorker) continue;
      const handle = state.handle!;
      state.handle = undefined;
      await state.direct?.close();
      state.direct = undefined;
      await handle.close();
      await dirs.withEntry(state.entry.path, (at) => unlink(at));
    }
    options.onProgress?.(progress);
  } finally {
    await opening.catch(() => {});
    await Promise.allSettled(finishing);
    for (const state of states) {
      state.at?.release();
      await state.direct?.close().catch(() => {});
      await state.handle?.close().catch(() => {});
    }
  }
}

/**
 * The window's chunk ids in the order to fetch them: those of one-chunk files spread evenly, by bytes, among
 * those of larger files, rather than after them. Creating small files is work for the CPU and the
 * filesystem's metadata (about 0.2 ms a file on the dev VM, most of it in ext4's inode allocation), while
 * large files are written with O_DIRECT, which leaves the CPU waiting on the disk; in manifest order a
 * workspace's source tree came last and its 2,000 files took 0.4 s of a 3 s restore on their own. The
 * source fetches packs in the order their chunks first appear, so this mixes the packs as well.
 */
function interleave(states: FileState[], destinations: Map<string, Destination[]>): string[] {
  const small: string[] = [];
  const large: string[] = [];
  let smallBytes = 0;
  let largeBytes = 0;
  const seen = new Set<string>();
  const bytesOf = (hex: string): number => destinations.get(hex)?.[0]?.length ?? 0;
  for (const state of states) {
    for (const hex of state.entry.chunks) {
      if (seen.has(hex)) continue;
      seen.add(hex);
      const bytes = bytesOf(hex);
      if (state.byWorker) {
        small.push(hex);
        smallBytes += bytes;
      } else {
        large.push(hex);
        largeBytes += bytes;
      }
    }
  }
  if (small.length === 0 || large.length === 0) return large.length === 0 ? small : large;
  const out: string[] = [];
  let i = 0;
  let j = 0;
  let doneSmall = 0;
  let doneLarge = 0;
  // Take from whichever list is behind, as a share of its own bytes (+1: empty chunks move on too).
  while (i < small.length || j < large.length) {
    const takeSmall =
      j === large.length ||
      (i < small.length && (doneSmall + 1) * (largeBytes + 1) <= (doneLarge + 1) * (smallBytes + 1));
    if (takeSmall) {
      out.push(small[i]);
      doneSmall += bytesOf(small[i++]);
    } else {
      out.push(large[j]);
      doneLarge += bytesOf(large[j++]);
    }
  }
  return out;
}

/** Files a worker creates, and plain bytes it writes, in one part of a batch (see `splitBatch`). */
const PART_CREATES = 64;
const PART_BYTES = TASK_BYTES;

/**
 * Where to cut a batch's chunks into parts of at most PART_CREATES files created by the worker or PART_BYTES
 * of plain bytes written (at least one chunk each); empty when it is one part.
 */
function splitBatch(hexes: string[], destinations: Map<string, Destination[]>): number[] {
  const cuts: number[] = [];
  let creates = 0;
  let bytes = 0;
  for (let i = 0; i < hexes.length; i++) {
    const list = destinations.get(hexes[i]) ?? [];
    const newCreates = list.filter((d) => d.file.byWorker).length;
    const newBytes = list.reduce((sum, d) => sum + d.length, 0);
    if (i > 0 && (creates + newCreates > PART_CREATES || bytes + newBytes > PART_BYTES)) {
      cuts.push(i);
      creates = 0;
      bytes = 0;
    }
    creates += newCreates;
    bytes += newBytes;
  }
  return cuts;
}

/**
 * A restored file's mode: without setuid and setgid. Where owners are not given back (an older manifest, a
 * restore not running as root) a file comes back owned by whoever restores it, and the agent runs as root: a
 * tenant's setuid program would become a setuid-root one. Where they are, the bits stay off all the same: a
 * workspace moved to another host is data, not programs to run with another user's rights.
 */
function fileMode(mode: number): number {
  return mode & ~0o6000;
}

/**
 * A restore that failed (or was stopped) and could not take back all it wrote: `cause` is why it failed,
 * `leftBehind` says what stays and what to do; the message says both.
 */
export class RestoreLeftBehindError extends Error {
  constructor(
    message: string,
    cause: unknown,
    readonly leftBehind: string,
  ) {
    super(message, { cause });
    this.name = "RestoreLeftBehindError";
  }
}

/**
 * Makes `at` a hard link to the restored file `existing`; where the filesystem will not (no hard links, or the
 * file at its link limit), a copy of it with its mode, times and owner. Both are names under the target through
 * directory handles; the copy opens `existing` with O_NOFOLLOW and only as the regular file restored there.
 */
export async function linkOrCopy(existing: string, at: string): Promise<void> {
  try {
    await link(existing, at); // link(2) does not follow a symlink at `existing`
    return;
  } catch (err) {
    if (!["EPERM", "EMLINK", "ENOTSUP", "EOPNOTSUPP", "EXDEV"].includes((err as NodeJS.ErrnoException).code ?? "")) {
      throw err;
    }
  }
  const from = await open(existing, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = await from.stat({ bigint: true });
    if (!st.isFile()) throw new Error(`'${existing}' is no longer the file restored there`);
    const to = await open(at, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      const buf = Buffer.allocUnsafe(1024 * 1024);
      for (let position = 0; ; ) {
        const { bytesRead } = await from.read(buf, 0, buf.length, position);
        if (bytesRead === 0) break;
        for (let done = 0; done < bytesRead; ) {
          done += (await to.write(buf, done, bytesRead - done, position + done)).bytesWritten;
        }
        position += bytesRead;
      }
      // As the file it copies, which a restore already gave its owner.
      await to.chown(Number(st.uid), Number(st.gid)).catch(() => {});
      await to.chmod(Number(st.mode) & 0o7777);
      // To the microsecond (a Date keeps only milliseconds).
      await to.utimes(timeArg(nsToSeconds(st.atimeNs)), timeArg(nsToSeconds(st.mtimeNs)));
    } finally {
      await to.close();
    }
  } finally {
    await from.close();
  }
}

function hasOwner(e: Ownership): boolean {
  return e.uid !== undefined || e.gid !== undefined;
}

/**
 * An owner the system will not give (root in a user namespace, where ids outside its map are EINVAL; a
 * filesystem without owners, EPERM): the entry stays as created, as tar and restic leave it. Anything else is
 * an error of the restore.
 */
function ownerRefused(err: NodeJS.ErrnoException): void {
  if (err.code !== "EINVAL" && err.code !== "EPERM") throw err;
}

/** chown's arguments for an entry's owner: -1 leaves a missing one as it is. */
function ownerArgs(e: Ownership): [number, number] {
  return [e.uid ?? -1, e.gid ?? -1];
}

/** Seconds for utimes: Node reads a negative number as "now", a numeric string as it is (times before 1970). */
function timeArg(seconds: number): number | string {
  return seconds < 0 ? String(seconds) : seconds;
}

/**
 * Seconds for utimes from nanoseconds since 1970, aimed at the middle of their microsecond. libuv cuts the
 * number it is given to whole microseconds (toward zero), and a double's own error near today's dates is ~0.24
 * µs: the plain quotient put about half of all times one microsecond early (a time set to the millisecond read
 * back as .122999). Times are restored to the microsecond, as libuv allows (FORMAT.md).
 */
export function nsToSeconds(ns: string | bigint): number {
  const n = BigInt(ns);
  const us = n / 1000n - (n % 1000n < 0n ? 1n : 0n); // whole microseconds, rounded down (also before 1970)
  const seconds = Number(us / 1_000_000n) + Number(us % 1_000_000n) / 1e6;
  return seconds + (seconds < 0 ? -0.5e-6 : 0.5e-6);
}
