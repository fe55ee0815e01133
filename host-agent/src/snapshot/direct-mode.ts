// Direct mode: the engine writing straight to a repository URL (file:// or s3://) with no control plane,
// for operators, benchmarks and tests. Same engine and format as the stream through the control plane.
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import {
  acquireLock,
  type BlobStore,
  type MountTables,
  openBlobStore,
  parseRepositoryUrl,
  pathInside,
  Repository,
  realPath,
  refuseUnmountedNewRepository,
  type S3BlobStoreOptions,
} from "@dumont/repository";
import { IGNORE_FILE } from "@dumont/repository/path-patterns";
import type { ChunkerParams } from "./chunker.js";
import {
  type CreateProgress,
  type CreateSnapshotResult,
  createSnapshot,
  listSnapshotSource,
} from "./create-snapshot.js";
import { localIndexPath } from "./local-index.js";
import {
  type RestoreProgress,
  type RestoreSnapshotResult,
  restoreSnapshot,
  restoreThreads,
} from "./restore-snapshot.js";
import { statSourceRoot } from "./source-tree.js";
import { SnapshotWorkerPool } from "./worker-pool.js";

export interface DirectRepositoryOptions {
  /** `file:///abs/path` or `s3://bucket/prefix`. */
  repo: string;
  key: Buffer;
  s3?: S3BlobStoreOptions;
}

export interface DirectCreateOptions extends DirectRepositoryOptions {
  source: string;
  /** Keeps the local index under this directory; without it every file is read every time. */
  stateDir?: string;
  /** Defaults to the absolute source path. */
  workspace?: string;
  /** See CreateSnapshotOptions.exclude. */
  exclude?: readonly string[];
  tenant?: string;
  epoch?: number;
  packSize?: number;
  /** Pack writes in flight (RepositoryWriterOptions.uploadConcurrency; default 3). */
  uploadConcurrency?: number;
  chunker?: ChunkerParams;
  /** See CreateSnapshotOptions.segmentSize. */
  segmentSize?: number;
  pool?: SnapshotWorkerPool;
  onProgress?: (progress: CreateProgress) => void;
  onPackWritten?: (packId: string, bytes: number) => void | Promise<void>;
  signal?: AbortSignal;
  /** How a repository is made where there is none (a create makes one, unlike every other command). */
  create?: CreateRepositoryOptions;
}

export interface DirectRestoreOptions extends DirectRepositoryOptions {
  snapshotId: string;
  target: string;
  allowExternalSymlinks?: boolean;
  /** See RestoreSnapshotOptions.include. */
  include?: readonly string[];
  /** See RestoreSnapshotOptions.owners. */
  owners?: boolean;
  pool?: SnapshotWorkerPool;
  onProgress?: (progress: RestoreProgress) => void;
  signal?: AbortSignal;
  /**
   * Hold a shared repository lock meanwhile (default true), as snapshots and checks do: a prune in another
   * process would otherwise delete or repack packs under the restore, which then fails part-way.
   */
  lock?: boolean;
}

/** The state directory of direct mode: DUMONT_STATE_DIR, else $XDG_STATE_HOME/dumont, else ~/.local/state/dumont. */
export function defaultStateDir(): string {
  if (process.env.DUMONT_STATE_DIR) return resolve(process.env.DUMONT_STATE_DIR);
  const base = process.env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  return join(base, "dumont");
}

/** How `create` makes a repository where there is none. */
export interface CreateRepositoryOptions {
  /**
   * Told when this call made the repository (the CLI says so: a mistyped URL shows at once); `recreated` where the
   * repository was there and had lost only its config, which it made anew (Repository.openOrInit).
   */
  onCreated?: (repository: Repository, recreated: boolean) => void;
  /** fstab and mountinfo (default: this machine's): a file:// repository is not made under an unmounted mount point. */
  mountTables?: MountTables;
}

/** Opens the repository at a URL (creating it when `create` is set and none exists), runs `fn`, closes the store. */
export async function withDirectRepository<T>(
  options: DirectRepositoryOptions & { create?: CreateRepositoryOptions },
  fn: (repository: Repository) => Promise<T>,
): Promise<T> {
  const store: BlobStore = openBlobStore(options.repo, { s3: options.s3 });
  try {
    let repository: Repository;
    if (options.create && !(await Repository.exists(store))) {
      refuseUnmountedNewRepository(options.repo, `--repo ${options.repo}`, options.create.mountTables);
      // Made here unless another process made it meanwhile (openOrInit settles that race).
      const opened = await Repository.openOrInit(store, options.key);
      repository = opened.repository;
      if (opened.created) options.create.onCreated?.(repository, opened.recreated === true);
    } else repository = await Repository.open(store, options.key);
    return await fn(repository);
  } finally {
    await store.close();
  }
}

/**
 * The repository's directory, when a file:// repository lies inside the source (`--source ~ --repo
 * file://$HOME/backup`): left out, saying so. Stored, each snapshot would hold the packs of the ones before it,
 * and be read while it is written. A repository that is the source itself is refused.
 */
function repositoryInSource(source: string, repo: string): ReadonlyMap<string, string> | undefined {
  let repoPath: string;
  try {
    // file:///path, or the plain absolute path the repository also takes
    const location = parseRepositoryUrl(repo);
    if (location.kind !== "file") return undefined;
    repoPath = realPath(location.path);
  } catch {
    return undefined; // not a repository URL: opening the repository says so
  }
  const sourcePath = realPath(source);
  if (repoPath === sourcePath) {
    throw new Error(`--repo ${repo} is the source directory itself: keep the repository outside what it backs up`);
  }
  const rel = pathInside(sourcePath, repoPath);
  if (rel === undefined) return undefined;
  const reason = `the repository this snapshot is written to; list "/${rel}/" in ${IGNORE_FILE} to leave it out without a word`;
  return new Map([[rel, reason]]);
}

export async function createDirectSnapshot(options: DirectCreateOptions): Promise<CreateSnapshotResult> {
  const source = resolve(options.source);
  // Before the repository is opened, which makes one where there is none: a mistyped source must not leave a new
  // repository behind (sealed with whatever key was at hand) for the next command to find empty.
  await statSourceRoot(source);
  // The workers start and the source is listed while the repository opens and the writer loads its index,
  // which on S3 is round trips (a second snapshot of 1 GiB into s3rver: 2.32 -> 2.24 s, medians of 5 pairs).
  const leaveOut = repositoryInSource(source, options.repo);
  const pool = options.pool ?? new SnapshotWorkerPool();
  const listing = listSnapshotSource(source, options.exclude, undefined, leaveOut);
  listing.catch(() => {}); // awaited by createSnapshot; unawaited if the repository fails to open
  try {
    return await withDirectRepository({ ...options, create: options.create ?? {} }, async (repository) => {
      const writer = await repository.writer({
        packSize: options.packSize,
        uploadConcurrency: options.uploadConcurrency,
        onPackWritten: options.onPackWritten,
      });
      const scope = `${repository.id}\n${source}`;
      return createSnapshot({
        source,
        listing,
        sink: writer,
        key: options.key,
        meta: { workspace: options.workspace ?? source, epoch: options.epoch ?? 0, tenant: options.tenant ?? "local" },
        localIndex: options.stateDir ? { file: localIndexPath(options.stateDir, scope), scope } : undefined,
        exclude: options.exclude,
        chunker: options.chunker,
        segmentSize: options.segmentSize,
        pool,
        onProgress: options.onProgress,
        signal: options.signal,
      });
    });
  } finally {
    if (!options.pool) await pool.close();
  }
}

export async function restoreDirectSnapshot(options: DirectRestoreOptions): Promise<RestoreSnapshotResult> {
  const pool = options.pool ?? new SnapshotWorkerPool({ threads: restoreThreads() });
  try {
    return await withDirectRepository(options, async (repository) => {
      const lock =
        options.lock === false
          ? undefined
          : await acquireLock(repository.store, repository.key, { exclusive: false, purpose: "a restore" });
      try {
        return await restoreSnapshot({
          snapshotId: options.snapshotId,
          // Packs are read straight into memory the workers share: the blobs reach them without a copy.
          source: await repository.chunkSource({ readBuffers: pool.chunkBuffers }),
          key: options.key,
          target: options.target,
          allowExternalSymlinks: options.allowExternalSymlinks,
          include: options.include,
          owners: options.owners,
          pool,
          onProgress: options.onProgress,
          signal: options.signal,
        });
      } finally {
        await lock?.release();
      }
    });
  } finally {
    if (!options.pool) await pool.close();
  }
}
