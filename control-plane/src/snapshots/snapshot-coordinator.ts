// Drives snapshots and restores over agent streams. For a snapshot: TakeSnapshot → the agent offers chunk
// ids → we answer with those the tenant's repository lacks → sealed chunks arrive and go into packs →
// SnapshotCommit: the writer makes everything durable, then the row is inserted — only then is the
// snapshot listed. For a restore: Restore(manifest) → the agent asks for chunks → we stream them from packs.
// The catalogue's rows are made in catalogue-rows.ts; how a store's or repository's failure is answered, in
// coordinator-errors.ts.
import { randomUUID } from "node:crypto";
import { setImmediate } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import {
  AGENT_CAPABILITIES,
  type AgentMessage,
  ControlMessageSchema,
  encodeRestoreChunks,
  releaseReceivedMessage,
  type SnapshotCommit,
  STREAM_BATCH_BYTES,
  STREAM_BUFFERS_KEPT,
  STREAM_MESSAGE_BUFFER_BYTES,
  type WireChunk,
} from "@dumont/proto";
import {
  acquireLock,
  alignedBuffer,
  type BlobStore,
  BufferPool,
  type CheckOptions,
  type CheckReport,
  checkRepository,
  chunkArrivedDamaged,
  counted,
  emptyPruneReport,
  emptyRepairPacksReport,
  emptyRepairSnapshotsReport,
  emptyRepositoryStats,
  forgetSnapshots,
  formatDuration,
  hasRetentionRule,
  IdSet,
  isRepositoryError,
  MAX_CHUNK_LENGTH,
  MAX_MANIFEST_PARTS,
  MAX_OFFER_CHUNK_IDS,
  MAX_RESTORE_REQUEST_IDS,
  type Manifest,
  type ManifestPartBlob,
  ManifestPartsReceiver,
  type MountTables,
  manifestPartEntries,
  openBlobStore,
  type PruneReport,
  pruneAfterForget,
  pruneRepository,
  type RepairIndexReport,
  type RepairPacksReport,
  type RepairSnapshotsReport,
  Repository,
  type RepositoryChunkSource,
  RepositoryIndex,
  type RepositoryStats,
  type RepositoryWriter,
  type RetentionPolicy,
  refuseUnmountedNewRepository,
  repairIndex,
  repairPacks,
  repairSnapshots,
  repositoryStats,
  type SnapshotRecord,
} from "@dumont/repository";
import type { AgentSender, AgentSession } from "../agent-gateway/agent-session.js";
import { type Db, withDatabaseLock } from "../db/database.js";
import { deleteSnapshot, getSnapshot, listSnapshots, repositoryTenants } from "../db/snapshot-repository.js";
import type { SnapshotRow } from "../db/tables.js";
import {
  DataLossError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  statusName,
  UnavailableError,
} from "../errors.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { catalogueRow, recordRow, repairRow, STATS_FIELD, skippedEntries, statCount } from "./catalogue-rows.js";
import { ChunkVerifier } from "./chunk-verifier.js";
import {
  isKind,
  MisconfiguredError,
  NoRepositoryError,
  packsRepaired,
  quotaReached,
  RepositoryMissingError,
  snapshotGone,
  snapshotsRepaired,
  staleEpoch,
  storeError,
  TenantBusyError,
} from "./coordinator-errors.js";
import { DeadlineBlobStore, STORE_CALL_DEADLINE_MS, UnreturnedCalls } from "./deadline-blob-store.js";
import type { TenantKeys } from "./tenant-keys.js";

/** Chunk messages being verified or written before we stop reading the agent's stream (about 1 MiB each). */
const MAX_VERIFYING = 4;
/**
 * Answers to the agent's offers (snapshotNeed) waiting to be sent before its stream is no longer read: an
 * agent that offers on and never reads would otherwise queue answer after answer (up to a message each) in
 * this process's memory. The agent's own pipeline has a few offers out at a time, answered in milliseconds.
 */
const MAX_ANSWERING = 8;

/**
 * An operation whose agent says nothing about it for this long fails (the agent is told to stop a snapshot).
 * An agent reports progress a few times a second while it reads or writes, and answers within a batch.
 */
export const OPERATION_SILENCE_MS = 10 * 60 * 1000;

/**
 * A restore's chunk requests streamed at once, and how many more may wait. The agent keeps a few batches open
 * (its workers and one ahead); each streamed batch holds RESTORE_READ_AHEAD pack reads in flight.
 */
const RESTORE_BATCHES_AT_ONCE = 4;
const MAX_RESTORE_BATCHES_WAITING = 256;
/**
 * The chunk ids those waiting requests may hold between them. One request can carry a message's worth (about
 * 490,000 ids, each ~140 bytes as held here: ~65 MB), so the count alone let an agent pin gigabytes of this
 * process. The agent asks for one window of its restore at a time (at most 16,384 files, about 1 GiB), so
 * nothing of a working agent's ever waits; this is ~35 MB.
 */
const MAX_RESTORE_IDS_WAITING = 256 * 1024;
/** A chunk's bytes in a RestoreChunks message beyond its blob: its id, its pack's and the fields' framing. */
const WIRE_CHUNK_OVERHEAD = 82;

/** Ranged pack reads of a streamed restore: their size and how many are kept in flight. */
const RESTORE_READ_BYTES = 8 * 1024 * 1024;
const RESTORE_READ_AHEAD = 4;

interface RestorePools {
  reads: BufferPool;
  messages: BufferPool;
}

/** How far an operation has got, as the agent reports it (bytes read for a snapshot, written for a restore). */
export interface TransferProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface SnapshotRequest {
  session: AgentSession;
  tenantId: string;
  path: string;
  workspaceId: string;
  /** Checked patterns (checkExcludePatterns) the agent leaves out, after the directory's .dumontignore. */
  exclude?: string[];
  epoch: bigint;
  onProgress?: (progress: TransferProgress) => void;
}

export interface RestoreRequest {
  session: AgentSession;
  snapshot: SnapshotRow;
  target: string;
  /** Checked patterns (checkPathPatterns): restore only what they match. */
  include?: string[];
  /** Leave everything owned by the agent's user (Restore.no_owners). */
  noOwners?: boolean;
  onProgress?: (progress: TransferProgress) => void;
}

export interface RestoreResult {
  files: number;
  bytesWritten: number;
  seconds: number;
  /** The agent's (RestoreProgress.warnings): restored, but worth telling the caller. */
  warnings: string[];
}

export interface ForgetRequest {
  tenantId: string;
  /** At least one rule, or `ids`, or `prune` alone. */
  policy: RetentionPolicy;
  /** Forget exactly these snapshots (full ids) instead of by a policy. */
  ids?: string[];
  /** Only this workspace's snapshots. */
  workspace?: string;
  prune: boolean;
  dryRun: boolean;
}

export interface ForgetResult {
  kept: string[];
  forgotten: string[];
  prune?: PruneReport;
}

/** What tests shorten or stand in for; the control plane takes the defaults. */
export interface CoordinatorTuning {
  /** How long an operation may go without a word from its agent (OPERATION_SILENCE_MS). */
  silenceMs?: number;
  /** How long one call of a tenant's blob store may take (STORE_CALL_DEADLINE_MS). */
  storeCallMs?: number;
  /** How many store calls given up on may still run before no new one starts (STORE_CALLS_UNRETURNED_MAX). */
  storeCallsUnreturnedMax?: number;
  /** Opens the blob store at a tenant's URL (openBlobStore). */
  openStore?: (url: string) => BlobStore;
  /** How soon a tenant is listed again after a commit whose row could not be inserted (RELIST_RETRY_MS). */
  relistRetryMs?: number;
  /** fstab and mountinfo (default: this machine's), read before a tenant's repository is made (mount-points.ts). */
  mountTables?: MountTables;
  /**
   * The most a tenant's repository may hold in packs, in bytes (DUMONT_SNAPSHOT_QUOTA; default none). Checked when a
   * snapshot starts and as its chunks arrive: a tenant at it gets RESOURCE_EXHAUSTED, saying what to forget, in
   * powers of 1000 where `decimal` (the quota was given so), else of 1024.
   */
  snapshotQuota?: { bytes: number; decimal: boolean };
  /** Tenants whose repository and index stay cached (CACHED_TENANTS_MAX), and for how long idle (CACHE_IDLE_MS). */
  cachedTenantsMax?: number;
  cacheIdleMs?: number;
  /** The least a tenant is idle before the cap may evict it (CACHE_MIN_IDLE_MS). */
  cacheMinIdleMs?: number;
}

/**
 * Each tenant's repository (its store: an S3 client, a file store) and index (~150 bytes a chunk) stay cached
 * between operations: reloading the index costs a listing and a read per new index object. Without a bound they
 * grew with every tenant ever served (helper-88). A tenant is evicted once idle for CACHE_IDLE_MS, or, while more
 * than CACHED_TENANTS_MAX are cached, the longest idle past CACHE_MIN_IDLE_MS first; never one with work running or
 * a prune. Its next operation opens it again.
 */
const CACHED_TENANTS_MAX = 64;
const CACHE_IDLE_MS = 15 * 60_000;
const CACHE_MIN_IDLE_MS = 60_000;

/**
 * A snapshot committed to the repository whose catalogue row could not be inserted (the database or its lock
 * unreachable, the store's answer failing) is listed again from the repository this long after, then after
 * twice as long each time that fails too, up to RELIST_RETRY_MAX_MS: not only at the next start.
 */
const RELIST_RETRY_MS = 30_000;
const RELIST_RETRY_MAX_MS = 10 * 60_000;

/** A snapshot, restore, check or relist running for a tenant: named in a prune's refusal, timed for /metrics. */
interface RunningWork {
  /** "snapshot of /work on host h-1", "restore of snapshot 3f2a… into /work on host h-1", "check". */
  what: string;
  kind:
    | "snapshot"
    | "restore"
    | "check"
    | "relist"
    | "repair-index"
    | "repair-packs"
    | "repair-snapshots"
    | "stats"
    | "prune";
  since: number;
}

interface Operation {
  /** The session it runs on: a host's later session must not see its messages or end it (see onSessionClosed). */
  session: AgentSession;
  fail(err: Error): void;
  handle(message: AgentMessage): void;
}

export class SnapshotCoordinator {
  private readonly operations = new Map<string, Operation>();
  private readonly repositories = new Map<string, Promise<Repository>>();
  private readonly indexes = new Map<string, RepositoryIndex>();
  private verifier: ChunkVerifier | undefined;
  /** Problems each tenant's last check found (summed into the dumont_check_problems gauge). */
  private readonly checkProblems = new Map<string, number>();
  private closed = false;
  /** Tenants to list again (see RELIST_RETRY_MS), and when. */
  private readonly relistsDue = new Map<string, NodeJS.Timeout>();
  private readonly relistRetryMs: number;
  /**
   * Snapshots and restores running, and the prune (or repair) running, per tenant. A prune deletes and moves packs, so it
   * needs the tenant's repository to itself: it is refused while operations run, and operations that start
   * during one wait for it. (The repository's own lock says the same across processes, restores included; this
   * lets operations in this process wait for a prune rather than fail.)
   */
  private readonly running = new Map<string, Set<RunningWork>>();
  private readonly pruning = new Map<string, Promise<unknown>>();
  private readonly silenceMs: number;
  private readonly storeCallMs: number;
  /** Every tenant's store calls given up on and not returned (one root, one count: see UnreturnedCalls). */
  private readonly unreturnedStoreCalls: UnreturnedCalls;
  private readonly openStore: (url: string) => BlobStore;
  private readonly mountTables: MountTables | undefined;
  private readonly snapshotQuota: CoordinatorTuning["snapshotQuota"];
  /** Per tenant, each running snapshot's bytes received and not yet written into a pack (for the quota). */
  private readonly unwrittenBytes = new Map<string, Set<() => number>>();
  /** When each cached tenant was last used (see CACHED_TENANTS_MAX). */
  private readonly lastUsed = new Map<string, number>();
  /** Tenants whose repository is in use outside `using` (see borrowing), and by how many. */
  private readonly borrowed = new Map<string, number>();
  /** The prune or repair running for a tenant, and since when (beside `pruning`, for /metrics). */
  private readonly exclusiveWork = new Map<string, RunningWork>();
  private readonly cache: { max: number; idleMs: number; minIdleMs: number };

  constructor(
    private readonly db: Db,
    private readonly tenantKeys: TenantKeys,
    /** e.g. file:///var/lib/dumont/blobs or s3://bucket/prefix; each tenant gets `<base>/tenants/<id>`. */
    private readonly blobStoreUrl: string,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    /** Applied to a workspace after each of its snapshots commits (forget, no prune); none keeps every one. */
    private readonly retention?: RetentionPolicy,
    /** Limits tests shorten, and the store they open (see CoordinatorTuning). */
    tuning: CoordinatorTuning = {},
  ) {
    this.silenceMs = tuning.silenceMs ?? OPERATION_SILENCE_MS;
    this.storeCallMs = tuning.storeCallMs ?? STORE_CALL_DEADLINE_MS;
    this.unreturnedStoreCalls = new UnreturnedCalls(tuning.storeCallsUnreturnedMax, (count) =>
      this.metrics.blobStoreCallsUnreturned.set(count),
    );
    this.openStore = tuning.openStore ?? ((url) => openBlobStore(url));
    this.relistRetryMs = tuning.relistRetryMs ?? RELIST_RETRY_MS;
    this.mountTables = tuning.mountTables;
    this.snapshotQuota = tuning.snapshotQuota;
    this.cache = {
      max: tuning.cachedTenantsMax ?? CACHED_TENANTS_MAX,
      idleMs: tuning.cacheIdleMs ?? CACHE_IDLE_MS,
      minIdleMs: tuning.cacheMinIdleMs ?? CACHE_MIN_IDLE_MS,
    };
    this.metrics.runningWork.sample = () => this.runningWork();
  }

  /** Logs an operation given up on here, and tells its agent to stop it (best effort: it may be gone). */
  private tellAborted(
    session: AgentSession,
    what: "snapshotAborted" | "restoreAborted",
    requestId: string,
    err: Error,
  ): void {
    this.log.warn({ hostId: session.hostId, requestId, reason: err.message }, `${what.replace("Aborted", "")} aborted`);
    void session
      .send(create(ControlMessageSchema, { msg: { case: what, value: { requestId, message: err.message } } }))
      .catch(() => undefined);
  }

  /**
   * A timer that fails an operation once its agent has been silent about it for `silenceMs`; `heard()` on
   * every sign of progress (a message, a batch written or sent). Without it, an agent that stays connected
   * but stops working on an operation (a read stuck on a hung mount) held it, and the tenant's prunes, forever.
   * While `busy()` says this side is still working on what the agent sent (checking chunks, writing packs to a
   * slow store, committing), the agent is not silent, only waiting: the watch starts again instead.
   */
  private silenceWatch(
    what: string,
    hostId: string,
    fail: (err: Error) => void,
    busy: () => boolean = () => false,
  ): { heard(): void; stop(): void } {
    const timer = setTimeout(() => {
      if (busy()) {
        timer.refresh();
        return;
      }
      fail(
        new DeadlineExceededError(
          `host ${hostId} said nothing about the ${what} for ${this.silenceMs / 1000} s; gave up on it`,
        ),
      );
    }, this.silenceMs);
    timer.unref(); // the operation's promise keeps whoever waits on it; a timer alone keeps nothing running
    return { heard: () => void timer.refresh(), stop: () => clearTimeout(timer) };
  }

  /** Stops the arrival check's threads (operations still in flight fail). */
  async close(): Promise<void> {
    this.closed = true;
    for (const timer of this.relistsDue.values()) clearTimeout(timer);
    this.relistsDue.clear();
    await this.verifier?.close();
    for (const tenantId of [...this.repositories.keys()]) this.evict(tenantId);
  }

  /**
   * Runs `work`, which uses the tenant's cached repository outside `using` (a listing of a snapshot's files, a
   * forget: neither waits for a prune nor blocks one), with the tenant kept from eviction meanwhile: eviction closes
   * the store, and an S3 store closed under a read fails it.
   */
  private async borrowing<T>(tenantId: string, work: () => Promise<T>): Promise<T> {
    this.borrowed.set(tenantId, (this.borrowed.get(tenantId) ?? 0) + 1);
    try {
      return await work();
    } finally {
      const left = (this.borrowed.get(tenantId) ?? 1) - 1;
      if (left > 0) this.borrowed.set(tenantId, left);
      else this.borrowed.delete(tenantId);
      if (this.repositories.has(tenantId)) this.lastUsed.set(tenantId, Date.now());
    }
  }

  /** Drops what is cached of idle tenants (see CACHED_TENANTS_MAX), making room for `using`'s. */
  private evictIdle(using: string, now = Date.now()): void {
    const cached = new Set([...this.repositories.keys(), ...this.indexes.keys()]);
    const idle = [...cached]
      .filter((tenantId) => tenantId !== using && !this.running.has(tenantId) && !this.pruning.has(tenantId))
      .filter((tenantId) => !this.borrowed.has(tenantId))
      .map((tenantId) => ({ tenantId, age: now - (this.lastUsed.get(tenantId) ?? 0) }))
      .sort((a, b) => b.age - a.age);
    let over = cached.size + (cached.has(using) ? 0 : 1) - this.cache.max;
    for (const { tenantId, age } of idle) {
      if (age >= this.cache.idleMs || (over > 0 && age >= this.cache.minIdleMs)) {
        this.evict(tenantId);
        over--;
      }
    }
  }

  /** Forgets a tenant's cached repository and index, and closes its store (an S3 client's sockets). */
  private evict(tenantId: string): void {
    const repository = this.repositories.get(tenantId);
    this.repositories.delete(tenantId);
    this.indexes.delete(tenantId);
    this.lastUsed.delete(tenantId);
    void repository?.then((r) => r.store.close()).catch(() => undefined);
  }

  /** The arrival check's threads: started with the first snapshot, started afresh if one has died. */
  private chunkVerifier(): ChunkVerifier {
    if (this.closed) throw new FailedPreconditionError("the control plane is shutting down");
    if (!this.verifier || this.verifier.broken) this.verifier = new ChunkVerifier();
    return this.verifier;
  }

  /** Check's and the repairs' `verify`: chunks verified by the verifier's threads, not on the event loop. */
  private verifyOnThreads(): NonNullable<CheckOptions["verify"]> {
    const verifier = this.chunkVerifier();
    return (key, chunks) => verifier.verify(key, chunks);
  }

  /** Routes agent messages that belong to an operation in flight. */
  onAgentMessage(session: AgentSession, message: AgentMessage): void {
    const requestId = (message.msg.value as { requestId?: string } | undefined)?.requestId;
    if (!requestId) return;
    const op = this.operations.get(requestId);
    // A message for another session's operation is ignored: another host's (host ids are bound to
    // certificates), or this host's earlier session, whose messages may still be arriving. So is one for an
    // operation that is over: the agent was told how it ended (snapshotAborted, restoreAborted, committed), and
    // what it had sent meanwhile still arrives; answering each would only echo that. Logged at debug.
    if (!op || op.session !== session) {
      this.log.debug(
        { host: session.hostId, requestId, message: message.msg.case },
        "agent message for no operation of its session: dropped",
      );
      return;
    }
    op.handle(message);
  }

  /**
   * Fails every operation that was running on a session that closed. By session, not host: a host that
   * reconnects replaces its session, and the old one's close can come much later (a half-open connection ends
   * at its keepalive timeout), by when operations run on the new one.
   */
  onSessionClosed(session: AgentSession): void {
    for (const op of this.operations.values()) {
      if (op.session === session)
        op.fail(new FailedPreconditionError(`host ${session.hostId} disconnected during the operation`));
    }
  }

  /** Takes a snapshot of `req.path` on the agent's host; resolves once it is committed (and listed). */
  async snapshot(req: SnapshotRequest): Promise<SnapshotRow> {
    const requestId = randomUUID();
    const context = {
      tenantId: req.tenantId,
      hostId: req.session.hostId,
      path: req.path,
      workspace: req.workspaceId,
      requestId,
    };
    const row = await this.measured("snapshot", context, () =>
      this.using(req.tenantId, "snapshot", `snapshot of ${req.path} on host ${req.session.hostId}`, () =>
        this.takeSnapshot(req, requestId),
      ),
    );
    if (this.retention) {
      // The snapshot stands whatever happens here: a failed forget is retried after the next one.
      const policy = this.retention;
      await this.forget({ tenantId: req.tenantId, policy, workspace: req.workspaceId, prune: false, dryRun: false })
        .then(({ forgotten }) => {
          if (forgotten.length > 0) this.log.info({ workspace: req.workspaceId, forgotten }, "retention applied");
        })
        .catch((err) => this.log.error({ err, workspace: req.workspaceId }, "retention after a snapshot failed"));
    }
    return row;
  }

  /**
   * Prunes every tenant's repository (the prune interval). A tenant with operations running is left for the
   * next time, as `forget --prune` would be refused.
   */
  async pruneAll(): Promise<void> {
    for (const tenantId of await repositoryTenants(this.db, {})) {
      if (this.closed) return;
      try {
        const { prune } = await this.forget({ tenantId, policy: {}, prune: true, dryRun: false });
        if (prune && prune.bytesFreed > 0) this.log.info({ tenantId, ...prune }, "scheduled prune");
      } catch (err) {
        // Skipped while work runs (here or, by the repository's lock, elsewhere); any other failure, a store that
        // refuses its deletes among them, is an operator's to hear of.
        if (isKind(err, TenantBusyError)) this.log.info({ tenantId, reason: err.rawMessage }, "prune skipped");
        else this.log.error({ err, tenantId }, "scheduled prune failed");
      }
    }
  }

  /** Restores a snapshot onto the agent's host; resolves once the agent reports every file written. */
  async restore(req: RestoreRequest): Promise<RestoreResult> {
    const requestId = randomUUID();
    const context = {
      tenantId: req.snapshot.tenant_id,
      hostId: req.session.hostId,
      snapshotId: req.snapshot.id,
      target: req.target,
      requestId,
    };
    return this.measured("restore", context, () =>
      this.using(
        req.snapshot.tenant_id,
        "restore",
        `restore of snapshot ${req.snapshot.id.slice(0, 12)} into ${req.target} on host ${req.session.hostId}`,
        () => this.runRestore(req, requestId),
      ),
    );
  }

  /**
   * Forgets a tenant's snapshots by a retention policy (the catalogue row goes first, then the repository's
   * snapshot object), then prunes if asked. No host is involved.
   */
  async forget(req: ForgetRequest): Promise<ForgetResult> {
    return this.borrowing(req.tenantId, () => this.forgetNow(req));
  }

  private async forgetNow(req: ForgetRequest): Promise<ForgetResult> {
    const { tenantId } = req;
    if (req.ids?.length && !hasRetentionRule(req.policy) && !req.prune) {
      // The way out of RepositoryMissingError where the store was replaced on purpose: forgetting the snapshots
      // it lost by id drops their rows, there being nothing of them to delete. Asked of the store itself, not of
      // a repository opened before it went (cached, and failing since): then dropped, for the next snapshot to
      // make one anew once no row names the old.
      try {
        if (!(await this.repositoryThere(tenantId))) {
          this.evict(tenantId);
          return await this.forgetCatalogued(tenantId, req.ids, req.dryRun);
        }
      } catch (err) {
        throw storeError(err);
      }
    }
    // A prune alone of a tenant with no repository yet (none is made for it) has nothing to free.
    const pruneAlone = !req.ids?.length && !hasRetentionRule(req.policy);
    const open = () => (pruneAlone ? this.existingRepository(tenantId) : this.repositoryOf(tenantId));
    const nothing: ForgetResult = { kept: [], forgotten: [], ...(req.prune ? { prune: emptyPruneReport() } : {}) };
    if (!req.prune || req.dryRun) {
      try {
        const repo = await open();
        if (!repo) return nothing;
        const result = await this.forgetIn(repo, req);
        // A dry run's prune counts what the forget would remove as gone: what the two would free together.
        const assumeForgotten = new Set(result.forgotten);
        return req.prune
          ? { ...result, prune: await pruneRepository(repo, { dryRun: true, assumeForgotten }) }
          : result;
      } catch (err) {
        throw storeError(err);
      }
    }
    return this.exclusively(tenantId, "prune", "prune", async () => {
      const repo = await open();
      if (!repo) return nothing;
      const result = await this.forgetIn(repo, req);
      // The tenant's cached chunk index needs no reset: the refresh at the start of every operation drops the
      // packs whose index objects vanished and reads the repacked ones (Repository.loadIndex).
      const prune = await pruneAfterForget(result.forgotten, () => pruneRepository(repo));
      if (prune.bytesFreed > 0) this.metrics.pruneBytesFreed.inc(prune.bytesFreed);
      this.log.info({ tenantId, ...prune }, "repository pruned");
      return { ...result, prune };
    });
  }

  /**
   * A repair's report; the tenant's cached chunk index dropped if the repair fails part way (its caller gone, the
   * store failing), as after one that changed something: what it rebuilt or rewrote before it stopped is not known.
   */
  private async dropIndexIfFailed<T>(tenantId: string, repairing: Promise<T>): Promise<T> {
    try {
      return await repairing;
    } catch (err) {
      // Not for a refusal before anything was changed (a lock held elsewhere, a pack named that is not there): a
      // fresh index costs a read of every index object.
      if (!isRepositoryError(err, "locked") && !isRepositoryError(err, "not-found")) {
        this.indexes.delete(tenantId); // nothing uses it: the tenant is ours alone
        this.log.warn({ tenantId, reason: (err as Error).message }, "repair stopped part way; cached index dropped");
      }
      throw err;
    }
  }

  /**
   * Rebuilds a tenant's lost or damaged index objects from its packs' headers and removes those whose pack is
   * gone (repairIndex). It needs the repository to itself as a prune does; a dry run only reads, as a check.
   * The cached chunk index is dropped after a repair that rebuilt anything (the refresh at each operation's start
   * reads only index objects of packs it does not know: one rebuilt for a pack it knew by a damaged size would
   * not be read again); removed ones' packs the refresh drops itself.
   */
  async repairIndex(tenantId: string, options: { dryRun: boolean; signal?: AbortSignal }): Promise<RepairIndexReport> {
    const nothing: RepairIndexReport = { packs: 0, rebuilt: [], removed: [], unrepairable: [] };
    // The chunks a pack's header lists are verified by the verifier's threads, as check's are.
    const verify = this.verifyOnThreads();
    const { signal } = options;
    if (options.dryRun) {
      return this.using(tenantId, "repair-index", "index repair (dry run)", async () => {
        const repository = await this.existingRepository(tenantId);
        return repository ? repairIndex(repository, { dryRun: true, verify, signal }) : nothing;
      });
    }
    return this.exclusively(tenantId, "repair-index", "repair the index", async () => {
      const repository = await this.existingRepository(tenantId);
      if (!repository) return nothing;
      const report = await this.dropIndexIfFailed(tenantId, repairIndex(repository, { verify, signal }));
      const { rebuilt, removed, unrepairable } = report;
      if (rebuilt.length > 0) this.indexes.delete(tenantId); // nothing uses it: the tenant is ours alone
      if (rebuilt.length + removed.length + unrepairable.length > 0) {
        this.log.warn({ tenantId, rebuilt, removed, unrepairable }, "index repaired");
      }
      return report;
    });
  }

  /**
   * Rewrites a tenant's packs some of whose chunks do not verify without those chunks (repairPacks): every pack,
   * or those `packs` names (ids or unique prefixes). It needs the repository to itself as a prune does; a dry run
   * only reads, as a check. The cached chunk index is dropped after a repair that rewrote a pack, as after an index
   * repair: the next snapshot must find a damaged chunk's other copy, or ask its agent for the chunk again, never
   * take it for stored in a pack that is gone. (The refresh at each operation's start would see to that too, the
   * rewritten packs' index objects being gone; a fresh load is the plainer guarantee, at one load per repair.)
   */
  async repairPacks(
    tenantId: string,
    options: { dryRun: boolean; packs?: readonly string[]; signal?: AbortSignal },
  ): Promise<RepairPacksReport> {
    const packs = options.packs?.length ? options.packs : undefined;
    const { signal } = options;
    // Each chunk is verified by the verifier's threads, as check's are.
    const verify = this.verifyOnThreads();
    const open = async () => {
      const repository = await this.existingRepository(tenantId);
      // Packs named of a repository that is not there: not "nothing to repair", which would say they were read.
      if (!repository && packs) throw new NotFoundError(`tenant ${tenantId} has no repository: it holds no packs`);
      return repository;
    };
    if (options.dryRun) {
      return this.using(tenantId, "repair-packs", "pack repair (dry run)", async () => {
        const repository = await open();
        return repository
          ? packsRepaired(repairPacks(repository, { dryRun: true, packs, verify, signal }))
          : emptyRepairPacksReport();
      });
    }
    return this.exclusively(tenantId, "repair-packs", "repair the packs", async () => {
      const repository = await open();
      if (!repository) return emptyRepairPacksReport();
      const report = await this.dropIndexIfFailed(
        tenantId,
        packsRepaired(repairPacks(repository, { packs, verify, signal })),
      );
      const { repaired, skipped, lost } = report;
      if (repaired.length > 0) this.indexes.delete(tenantId); // nothing uses it: the tenant is ours alone
      if (repaired.length + skipped.length > 0) {
        this.log.warn(
          {
            tenantId,
            rewritten: repaired.map((p) => p.pack),
            damaged: repaired.reduce((n, p) => n + p.damaged.length, 0),
            skipped,
            lost,
          },
          repaired.length > 0 ? "packs repaired" : "packs left unrepaired",
        );
      }
      return report;
    });
  }

  /**
   * Replaces a tenant's snapshots some of whose files' data is gone for good with snapshots without those files
   * (repairSnapshots): every snapshot, or those `ids` names (ids or unique prefixes in this tenant's repository: the
   * API resolves the ids it is given to tenants through the catalogue, so each tenant is asked for its own). It needs
   * the repository to itself as a prune does; a dry run only reads, as a check.
   *
   * The catalogue follows the repository as for a commit and a forget: each repaired snapshot's row goes in once its
   * record is committed (so `snapshot list` shows it while the repair goes on), and, with `forget`, the damaged
   * one's row goes before its record. The tenant's catalogue lock is held for the whole repair, as a forget holds it
   * for a forget: a relisting elsewhere between a row's drop and its record's delete would list the damaged
   * snapshot again. A repair reads manifests, not packs, and nothing else of the tenant runs meanwhile.
   */
  async repairSnapshots(
    tenantId: string,
    options: {
      dryRun: boolean;
      forget?: boolean;
      ids?: readonly string[];
      /** The caller gone: the repair stops between snapshots (each it saved is whole, and a run again goes on). */
      signal?: AbortSignal;
    },
  ): Promise<RepairSnapshotsReport> {
    const ids = options.ids?.length ? options.ids : undefined;
    const { signal } = options;
    const open = async () => {
      const repository = await this.existingRepository(tenantId);
      // Snapshots named of a repository that is not there: not "nothing to repair", which would say they were read.
      if (!repository && ids) throw new NotFoundError(`tenant ${tenantId} has no repository: it holds no snapshots`);
      return repository;
    };
    if (options.dryRun) {
      return this.using(tenantId, "repair-snapshots", "snapshot repair (dry run)", async () => {
        const repository = await open();
        return repository
          ? snapshotsRepaired(
              repairSnapshots(repository, { dryRun: true, forget: options.forget === true, ids, signal }),
            )
          : emptyRepairSnapshotsReport();
      });
    }
    return this.exclusively(tenantId, "repair-snapshots", "repair the snapshots", async () => {
      const repository = await open();
      if (!repository) return emptyRepairSnapshotsReport();
      // A tenant with nothing to repair (most, in a repair of every tenant) is read once, without the catalogue's
      // lock: on Postgres that lock holds one of a few connections, and other replicas' commits of the tenant wait
      // on it. That read holds a shared lock only, so another replica's snapshot may be writing a pack beside it:
      // its refusals (a pack without an index object while chunks are missing) are judged again by the repair
      // itself, under the exclusive lock, not taken from it.
      const planned = await snapshotsRepaired(
        repairSnapshots(repository, { ids, dryRun: true, signal }).catch((err: unknown) => {
          if (isRepositoryError(err, "corrupt")) return undefined;
          throw err;
        }),
      );
      const report =
        planned && planned.repaired.length === 0
          ? planned
          : await this.changingCatalogue(tenantId, () =>
              snapshotsRepaired(
                repairSnapshots(repository, {
                  ids,
                  forget: options.forget === true,
                  signal,
                  onRepaired: (repaired, damaged) => this.catalogueRepaired(tenantId, repaired, damaged),
                  // A row that cannot be dropped stops the repair with its record still there: this tenant's
                  // error (the others are repaired), and a run again goes on (it finds the repair made).
                  beforeDelete: (id) =>
                    deleteSnapshot(this.db, tenantId, id).catch((err: unknown) => {
                      throw new UnavailableError(
                        `the catalogue could not drop the row of snapshot ${id} (${(err as Error).message}), so it was ` +
                          "not forgotten: run the repair again",
                      );
                    }),
                }),
              ),
            );
      const forgotten = report.repaired.filter((r) => r.forgotten).map((r) => r.snapshot);
      if (forgotten.length > 0) this.metrics.snapshotsForgotten.inc(forgotten.length);
      if (report.repaired.length + report.unrepairable.length > 0) {
        this.log.warn(
          {
            tenantId,
            repaired: report.repaired.map((r) => ({
              damaged: r.snapshot,
              repaired: r.repaired,
              files: r.filesRemoved,
            })),
            forgotten,
            unrepairable: report.unrepairable.map((u) => u.snapshot),
          },
          report.repaired.length > 0 ? "snapshots repaired" : "snapshots left unrepaired",
        );
      }
      return report;
    });
  }

  /**
   * A repaired snapshot's catalogue row, inserted as a commit's is (repairRow): at the time of the damaged
   * snapshot's row, so `snapshot list` shows the repair right after the snapshot it replaces. One there already (a
   * repair reused: left by a run cut short, or made for another snapshot of the same files) is the same snapshot. A
   * row that cannot be inserted stops the repair before the damaged snapshot is forgotten, and the tenant is listed
   * again from the repository shortly.
   */
  private async catalogueRepaired(tenantId: string, repaired: SnapshotRecord, damaged: SnapshotRecord): Promise<void> {
    await this.db
      .insertInto("snapshots")
      .values(repairRow(tenantId, repaired, [damaged.id]))
      .onConflict((oc) => oc.column("id").doNothing())
      .execute()
      .catch((err: unknown) => {
        this.log.error(
          { err, snapshotId: repaired.id, tenantId, repairedFrom: repaired.repairedFrom },
          "repaired snapshot committed to the blob store but not catalogued; it is listed again from there shortly",
        );
        this.relistSoon(tenantId);
        // This tenant's error, not the request's: the other tenants are repaired, and their reports answered.
        throw new UnavailableError(
          `snapshot ${repaired.id}, the repair of ${damaged.id}, is in the blob store but the catalogue could not ` +
            `list it (${(err as Error).message}): it is listed again from there shortly, and ${damaged.id} was not ` +
            "forgotten; run the repair again",
        );
      });
  }

  /**
   * Runs `work` with the tenant's repository to itself (a prune, a repair): refused while snapshots,
   * restores or checks of the tenant run, or another such work does; operations that start meanwhile wait for it.
   * `verb` says what to do again once they have ended.
   */
  private async exclusively<T>(
    tenantId: string,
    kind: keyof typeof EXCLUSIVE_WORK,
    verb: string,
    work: () => Promise<T>,
  ): Promise<T> {
    // Checked and claimed before the first await, so no snapshot starts between the check and the work.
    const busy = [...(this.running.get(tenantId) ?? [])];
    if (busy.length > 0 || this.pruning.has(tenantId)) {
      const one = busy.length === 1;
      const other = this.exclusiveWork.get(tenantId);
      throw new TenantBusyError(
        busy.length > 0
          ? `${counted(busy.length, "snapshot, restore or check", "snapshots, restores or checks")} of tenant ` +
              `${tenantId} ${one ? "is" : "are"} running (${describeRunning(busy)}); ${verb} again when ` +
              `${one ? "it has" : "they have"} ended`
          : `a prune or repair of tenant ${tenantId} is already running` +
              (other ? ` (${describeRunning([other])})` : ""),
      );
    }
    const running = work();
    this.pruning.set(tenantId, running);
    this.exclusiveWork.set(tenantId, { kind, what: EXCLUSIVE_WORK[kind], since: Date.now() });
    try {
      return await running;
    } catch (err) {
      if (isRepositoryError(err, "locked")) throw new TenantBusyError(`tenant ${tenantId}: ${err.message}`);
      throw storeError(err);
    } finally {
      this.pruning.delete(tenantId);
      this.exclusiveWork.delete(tenantId);
    }
  }

  /** Drops the rows of snapshots `ids` whose repository is missing (see forget); each must be catalogued. */
  private forgetCatalogued(tenantId: string, ids: string[], dryRun: boolean): Promise<ForgetResult> {
    return this.changingCatalogue(tenantId, async () => {
      // Asked again under the catalogue's lock: a store mounted meanwhile holds these snapshots, and a forget of
      // them is the repository's to do (forgetIn).
      if (await this.repositoryThere(tenantId)) {
        throw new UnavailableError("the tenant's repository is back in the blob store: forget those snapshots again");
      }
      const unique = [...new Set(ids)];
      for (const id of unique) {
        if (!(await getSnapshot(this.db, id, { tenantId }))) throw new NotFoundError(`no snapshot ${id}`);
      }
      if (!dryRun) {
        for (const id of unique) await deleteSnapshot(this.db, tenantId, id);
        this.metrics.snapshotsForgotten.inc(unique.length);
        this.log.warn(
          { tenantId, forgotten: unique },
          "snapshots forgotten from the catalogue: their repository is missing",
        );
      }
      return { kept: [], forgotten: unique };
    });
  }

  private async forgetIn(repository: Repository, req: ForgetRequest): Promise<ForgetResult> {
    if (!hasRetentionRule(req.policy) && !req.ids?.length) return { kept: [], forgotten: [] };
    const { tenantId } = req;
    return this.changingCatalogue(tenantId, async () => {
      // The policy judges the repository's snapshots; each must be one `snapshot list` shows, or keep-last 1
      // could keep an unlisted one and forget the only listed one.
      await this.listUnlisted(tenantId, repository);
      const result = await forgetSnapshots(repository, {
        policy: req.policy,
        ids: req.ids,
        workspace: req.workspace,
        dryRun: req.dryRun,
        beforeDelete: (id) => deleteSnapshot(this.db, tenantId, id),
      }).catch((err: unknown) => {
        // An id no snapshot has any more (forgotten meanwhile by another caller), a workspace none is of: not there.
        throw isRepositoryError(err, "not-found") ? new NotFoundError(err.message) : err;
      });
      if (result.forgotten.length > 0 && !req.dryRun) {
        this.metrics.snapshotsForgotten.inc(result.forgotten.length);
        this.log.info({ tenantId, forgotten: result.forgotten, kept: result.kept.length }, "snapshots forgotten");
      }
      return result;
    });
  }

  /**
   * Runs `change` (a forget, a relisting, a commit's row) holding the tenant's catalogue lock, in this process
   * and, with Postgres, in every replica sharing the database. Two at once could undo each other: a relisting
   * that read the repository before a forget on another replica deleted a snapshot's record would list it again,
   * without its data, and for good if it was the tenant's last.
   */
  private changingCatalogue<T>(tenantId: string, change: () => Promise<T>): Promise<T> {
    // A lock lost while the change ran (its session ended) may have let another replica's change overlap it:
    // the tenant is listed again from the repository shortly, which puts right a row one left or took wrongly.
    return withDatabaseLock(this.db, `dumont catalogue ${tenantId}`, change, {
      onLost: () => this.relistSoon(tenantId),
    });
  }

  /**
   * Gives a catalogue row to each snapshot that has none, from its record in the repository (the source of
   * truth): a control plane stopped between the repository's commit and the row's insert leaves a whole snapshot
   * that nobody can list, restore or forget. Removes the rows of snapshots whose records are gone. Rows
   * catalogued before the control plane kept sizes get theirs from the same records. Run at start for every
   * tenant with a key, and before each forget.
   */
  async relistAll(): Promise<void> {
    for (const tenantId of await repositoryTenants(this.db, {})) {
      if (this.closed) return;
      // One tenant's store failing (S3 unreachable, a damaged record) does not keep the others unlisted.
      await this.relist(tenantId).catch((err) =>
        this.log.error({ err, tenantId }, "could not list this tenant's snapshots again"),
      );
    }
  }

  private relist(tenantId: string): Promise<void> {
    return this.using(tenantId, "relist", "listing of the repository's snapshots", async () => {
      const repository = await this.existingRepository(tenantId);
      if (repository) await this.changingCatalogue(tenantId, () => this.listUnlisted(tenantId, repository));
    });
  }

  /** Lists the tenant again in `delayMs` (see RELIST_RETRY_MS), and later again while that fails. */
  private relistSoon(tenantId: string, delayMs = this.relistRetryMs): void {
    if (this.closed || this.relistsDue.has(tenantId)) return;
    const timer = setTimeout(() => {
      this.relistsDue.delete(tenantId);
      this.relist(tenantId).then(
        () => this.log.info({ tenantId }, "tenant's snapshots listed again from the repository"),
        (err: unknown) => {
          const next = Math.min(2 * delayMs, RELIST_RETRY_MAX_MS);
          this.log.error({ err, tenantId, retryInMs: next }, "could not list this tenant's snapshots again");
          this.relistSoon(tenantId, next);
        },
      );
    }, delayMs);
    timer.unref();
    this.relistsDue.set(tenantId, timer);
  }

  private async listUnlisted(tenantId: string, repository: Repository): Promise<void> {
    const rows = await listSnapshots(this.db, { tenantId });
    const listed = new Set(rows.map((r) => r.id));
    const sizeless = new Set(rows.filter((r) => r.bytes_total === null).map((r) => r.id));
    // A record that does not open (damaged in the store) is logged, and its row, if it has one, kept: it is
    // there, `check` names it, and forgetting it by id removes it. Failing here failed every forget of the
    // tenant, that one's too, and with them every prune.
    const unreadable = new Set<string>();
    const records = await repository.listSnapshots({
      // (One forgotten since it was listed is left out by the listing itself.)
      onCorrupt: (snapshotId, err) => {
        unreadable.add(snapshotId);
        this.log.error(
          { tenantId, snapshotId, reason: err.message },
          "a snapshot record in the blob store does not open: forget it (`dumont snapshot forget`); check names it",
        );
      },
    });
    // The other way too: a row whose record is gone lists a snapshot nobody can restore. A row is only ever
    // inserted once its record is in the repository (and catalogue changes run one at a time), so a record
    // missing from a listing made after the rows were read was deleted: by a forget whose delete was given up on
    // and landed after a relisting had put its row back, or by a direct-mode forget on the same store.
    const recorded = new Set([...records.map((r) => r.id), ...unreadable]);
    const gone = rows.filter((row) => !recorded.has(row.id));
    if (recorded.size === 0 && gone.length > 0) {
      // Not one record where the catalogue lists some: more likely the wrong store (a mount that did not come up,
      // leaving its empty directory; another bucket or prefix) than every snapshot forgotten behind its back.
      this.log.error(
        { tenantId, catalogued: gone.length, store: repository.store.url },
        "the blob store holds no snapshots of this tenant while the catalogue lists some: rows kept; is it the right store?",
      );
      return;
    }
    for (const row of gone) {
      await deleteSnapshot(this.db, tenantId, row.id).then(
        () =>
          this.log.warn(
            { snapshotId: row.id, tenantId },
            "catalogued snapshot is no longer in the blob store; its row is removed",
          ),
        (err: unknown) =>
          this.log.error({ err, snapshotId: row.id, tenantId }, "could not remove the row of a snapshot gone"),
      );
    }
    for (const record of records) {
      if (sizeless.has(record.id)) await this.fillSize(tenantId, record.id, record.totals.bytes);
      if (listed.has(record.id)) continue;
      // One record the catalogue cannot hold is logged and left unlisted, not the end of every forget and
      // prune of the tenant: it stays in the repository, and what it references stays too.
      await this.db
        .insertInto("snapshots")
        .values(record.repairedFrom === undefined ? recordRow(tenantId, record) : repairRow(tenantId, record, []))
        // A commit finishing meanwhile inserts the same row (see commit).
        .onConflict((oc) => oc.column("id").doNothing())
        .execute()
        .then(
          () =>
            this.log.warn(
              { snapshotId: record.id, tenantId },
              "snapshot in the blob store had no catalogue row; listed again",
            ),
          (err: unknown) =>
            this.log.error(
              { err, snapshotId: record.id, tenantId },
              "snapshot in the blob store has no catalogue row and cannot be given one; left unlisted",
            ),
        );
    }
  }

  /** A row's size, catalogued before sizes were kept, from its record; a failure is logged, the row left as it is. */
  private async fillSize(tenantId: string, id: string, bytes: number): Promise<void> {
    await this.db
      .updateTable("snapshots")
      .set({ bytes_total: bytes })
      .where("id", "=", id)
      .where("tenant_id", "=", tenantId)
      .where("bytes_total", "is", null)
      .execute()
      .catch((err: unknown) =>
        this.log.error({ err, snapshotId: id, tenantId }, "could not record the size of a snapshot listed without one"),
      );
  }

  /**
   * Verifies a tenant's repository (checkRepository), counted as an operation so no prune pulls packs away
   * meanwhile. The chunks are checked by the verifier's threads, as arriving chunks are: this thread keeps
   * reading the agents' streams (a check reads the tenant's whole repository, ~1 CPU-s a GB).
   */
  async check(tenantId: string, options: CheckOptions): Promise<CheckReport> {
    const verify = this.verifyOnThreads();
    let report: CheckReport;
    try {
      report = await this.using(tenantId, "check", "check", async () => {
        const repository = await this.existingRepository(tenantId); // none yet: nothing in it can be broken
        if (!repository)
          return { ok: true, snapshots: 0, packs: 0, packsRead: 0, chunks: 0, bytesChecked: 0, problems: [] };
        return checkRepository(repository, { ...options, verify });
      });
    } catch (err) {
      // Not a sound store either: the gauge keeps what the last check that ran found, and this counts.
      this.metrics.checks.inc({ result: "failed" });
      this.logFailure("check failed", { tenantId }, err);
      throw err;
    }
    this.metrics.checks.inc({ result: report.problems.length === 0 ? "sound" : "problems" });
    if (report.problems.length > 0) {
      this.log.warn({ tenantId, problems: report.problems.length }, "check found problems");
    }
    this.checkProblems.set(tenantId, report.problems.length);
    this.metrics.checkProblems.set([...this.checkProblems.values()].reduce((a, b) => a + b, 0));
    return report;
  }

  /**
   * What a tenant's repository holds (repositoryStats), from its records and its cached index brought up to date;
   * counted as an operation, so no prune changes the packs while they are summed. A tenant without a repository
   * holds nothing.
   */
  async stats(tenantId: string): Promise<RepositoryStats> {
    return this.using(tenantId, "stats", "stats", async () => {
      const repository = await this.existingRepository(tenantId);
      if (!repository) return emptyRepositoryStats();
      // The cached index brought up to date where there is one; else a throwaway one: a stats of every tenant must
      // not load every tenant's index into the cache.
      return repositoryStats(repository, this.indexes.get(tenantId));
    });
  }

  /** Runs an operation on a tenant's repository once no prune of it is running, counted while it runs. */
  private async using<T>(
    tenantId: string,
    kind: RunningWork["kind"],
    what: string,
    work: () => Promise<T>,
  ): Promise<T> {
    for (let prune = this.pruning.get(tenantId); prune; prune = this.pruning.get(tenantId)) {
      await prune.catch(() => {});
    }
    const mine: RunningWork = { kind, what, since: Date.now() };
    let works = this.running.get(tenantId);
    if (!works) {
      works = new Set();
      this.running.set(tenantId, works);
    }
    works.add(mine);
    try {
      return await work();
    } catch (err) {
      throw storeError(err);
    } finally {
      works.delete(mine);
      if (works.size === 0 && this.running.get(tenantId) === works) this.running.delete(tenantId);
      if (this.repositories.has(tenantId)) this.lastUsed.set(tenantId, Date.now());
    }
  }

  /** What runs now, for /metrics: how many of each kind, and since when the oldest of each has. */
  runningWork(): { kind: RunningWork["kind"]; count: number; oldestSince: number }[] {
    const byKind = new Map<RunningWork["kind"], { count: number; oldestSince: number }>();
    for (const works of [...this.running.values(), this.exclusiveWork.values()]) {
      for (const w of works) {
        const seen = byKind.get(w.kind);
        if (seen) {
          seen.count++;
          seen.oldestSince = Math.min(seen.oldestSince, w.since);
        } else byKind.set(w.kind, { count: 1, oldestSince: w.since });
      }
    }
    return [...byKind].map(([kind, v]) => ({ kind, ...v }));
  }

  /** A committed snapshot's manifest, read from its tenant's repository (no agent involved). */
  async readManifest(snapshot: SnapshotRow): Promise<Manifest> {
    return this.borrowing(snapshot.tenant_id, () => this.readManifestNow(snapshot));
  }

  private async readManifestNow(snapshot: SnapshotRow): Promise<Manifest> {
    try {
      const repository = await this.repositoryOf(snapshot.tenant_id);
      try {
        return await repository.readManifest(await repository.findSnapshot(snapshot.id));
      } catch (err) {
        throw await snapshotGone(repository, snapshot.id, err);
      }
    } catch (err) {
      throw storeError(err);
    }
  }

  /**
   * Counts an operation by result, and a failure by the code its caller gets; times the ones that succeed; logs
   * each failure with what it was (`context`: tenant, host, path, request id: the agent's log lines carry the same
   * request id) and a restore's completion (a snapshot's commit is logged where it commits).
   */
  private async measured<T>(
    operation: "snapshot" | "restore",
    context: Record<string, unknown>,
    work: () => Promise<T>,
  ): Promise<T> {
    const [count, seconds, success] =
      operation === "snapshot"
        ? [this.metrics.snapshots, this.metrics.snapshotSeconds, "committed"]
        : [this.metrics.restores, this.metrics.restoreSeconds, "completed"];
    const stop = seconds.startTimer();
    try {
      const result = await work();
      const took = stop();
      count.inc({ result: success });
      if (operation === "restore") this.log.info({ ...context, seconds: took }, "restore completed");
      return result;
    } catch (err) {
      count.inc({ result: "failed" });
      this.metrics.snapshotFailures.inc({ operation, code: statusName(err) });
      this.logFailure(`${operation} failed`, context, err);
      throw err;
    }
  }

  /**
   * A failure, with `context` and the code its caller got: at warn with the reason the caller was told (a
   * ConnectError), or at error with its stack (anything else: a bug, or a failure nobody translated, which the
   * API's interceptor logs too).
   */
  private logFailure(what: string, context: Record<string, unknown>, err: unknown): void {
    const code = statusName(err);
    if (isKind(err, MisconfiguredError)) this.log.error({ ...context, code, reason: err.rawMessage }, what);
    else if (err instanceof ConnectError && code !== "INTERNAL") {
      this.log.warn({ ...context, code, reason: err.rawMessage }, what);
    } else this.log.error({ ...context, code, err }, what);
  }

  private async takeSnapshot(req: SnapshotRequest, requestId: string): Promise<SnapshotRow> {
    if (!req.path.startsWith("/"))
      throw new InvalidArgumentError(`path must be absolute, got ${JSON.stringify(req.path)}`);
    const key = await this.tenantKeys.get(req.tenantId);
    const repository = await this.repository(req.tenantId, key, { make: true });
    // Every chunk is opened and its SHA-256 checked on arrival (an agent cannot store a chunk under a wrong
    // id, which would corrupt other snapshots through dedup): by the verifier's threads, so the writer does not.
    const verifier = this.chunkVerifier();
    const writer = await repository.writer({ index: this.index(req.tenantId), refreshIndex: true });
    // The quota: the packs the tenant holds now (the index just brought up to date), and what this snapshot adds.
    // The packs the tenant's index holds (the writers of its snapshots add theirs as they write them) and what its
    // running snapshots received and have not written yet, this one's among them: N at once share the room left.
    const quota = this.snapshotQuota;
    const index = this.index(req.tenantId);
    let received = 0;
    const unwritten = () => Math.max(0, received - writer.stats.packBytes);
    const arriving = this.unwrittenBytes.get(req.tenantId) ?? new Set<() => number>();
    const stored = () => {
      let bytes = index.packBytes;
      for (const more of arriving) bytes += more();
      return bytes;
    };
    if (quota !== undefined && stored() >= quota.bytes) {
      await writer.abort();
      throw quotaReached(req.tenantId, stored(), quota);
    }
    arriving.add(unwritten);
    this.unwrittenBytes.set(req.tenantId, arriving);
    const stopCounting = () => {
      arriving.delete(unwritten);
      if (arriving.size === 0 && this.unwrittenBytes.get(req.tenantId) === arriving) {
        this.unwrittenBytes.delete(req.tenantId);
      }
    };
    /** Chunk messages in hand (being checked or waiting to be written); the stream is paused above MAX_VERIFYING. */
    let outstanding = 0;
    /** Answers to offers not yet sent; the stream is paused above MAX_ANSWERING. */
    let answering = 0;
    /**
     * Whether this snapshot paused the stream for its answers. Resumed when they are sent, or when the snapshot ends:
     * an agent that stopped reading never takes them, and its stream, paused for good, read nothing else (its
     * telemetry, its other operations) while liveness counted the host as heard.
     */
    let answersPaused = false;
    const resumeAnswers = () => {
      if (!answersPaused) return;
      answersPaused = false;
      session.resumeInbound();
    };
    /** The manifest's parts sent ahead of the commit: no more than a real manifest takes, whatever the agent sends. */
    const manifestParts = new ManifestPartsReceiver<{ stored: string }>();
    /**
     * The chunk ids this snapshot answered it lacks: the only chunks the agent may send. Others are refused, so an
     * agent cannot fill a tenant's repository with chunks no snapshot asked for (each would pass the arrival check,
     * being a well-sealed chunk of the tenant's key). Kept until the end, as an agent may send a chunk twice
     * (asked twice while its first copy was queued; the writer drops the second). About 40 bytes a new chunk.
     */
    const asked = new IdSet();
    const session = req.session;
    return new Promise<SnapshotRow>((resolve, reject) => {
      // Each batch of chunks is checked by the verifier's threads as it arrives, then written in order. With
      // more than MAX_VERIFYING batches in hand we stop reading the agent's stream, so HTTP/2 flow control
      // pushes back on the agent instead of buffering here.
      let chain: Promise<void> = Promise.resolve();
      let finished = false;
      /**
       * The commit, once it runs: it needs nothing more from the agent, so a failure from the agent's side
       * (its stream closing, a late message) waits for it rather than abort the writer under it. Aborting there
       * released the repository's lock and the tenant's count while the commit went on: a prune could delete
       * the new packs, and the snapshot was listed without them, its caller told it had failed.
       */
      let committing: Promise<SnapshotRow> | undefined;
      const finish = (err: Error | undefined, row?: SnapshotRow) => {
        if (finished) return;
        if (err && committing) {
          const settled = chain; // the commit's work and its own failure handling (never rejects)
          void settled.then(() => finish(err));
          return;
        }
        finished = true;
        this.operations.delete(requestId);
        stopCounting(); // what it sent is in the index now, or dropped
        silence.stop();
        resumeAnswers();
        if (err) {
          // What arrived and checked out is kept: the batches already in hand are written (a commit among them
          // is not run), and the pack being filled is sealed (abort's keep), so the agent's next attempt sends
          // none of it again. The caller hears of the failure once the writer has let go of the repository's
          // lock, and the tenant counts the snapshot as running until then: a prune started on hearing it is not
          // refused "locked". With a store that stopped answering, that is after its calls' deadlines.
          void chain
            .then(() => writer.abort({ keep: true }))
            .catch(() => undefined)
            .then(() => reject(err));
        } else resolve(row!);
      };
      /** Gives up on the snapshot and tells the agent to stop sending it (once; not after it ended otherwise). */
      const abandon = (err: Error) => {
        if (finished) return;
        if (committing) return finish(err); // after the commit, whose outcome is the agent's answer
        finish(err);
        this.tellAborted(session, "snapshotAborted", requestId, err);
      };
      /** Work of the agent's in the chain below, not yet done (see silenceWatch). */
      let inHand = 0;
      /**
       * Offers being looked up in the store: work of this side too, which the agent waits for (offered manifest
       * parts are read back, a manifest's worth for a large unchanged workspace). Not the sending of the answer:
       * an agent that stopped reading its stream would keep that waiting for ever, and the watch must end it.
       */
      let lookingUp = 0;
      const silence = this.silenceWatch(
        "snapshot",
        session.hostId,
        (err) => abandon(err),
        () => inHand > 0 || lookingUp > 0,
      );
      const serial = (work: () => Promise<void>) => {
        inHand++;
        chain = chain
          .then(work)
          .then(() => silence.heard())
          .catch(abandon)
          .finally(() => {
            inHand--;
          });
      };
      this.operations.set(requestId, {
        session,
        fail: (err) => finish(err),
        handle: (message) => {
          silence.heard();
          const m = message.msg;
          if (m.case === "snapshotOffer") {
            if (m.value.epoch !== req.epoch) return abandon(staleEpoch(m.value.epoch, req.epoch));
            const batch = m.value.batch;
            if (m.value.chunkIds.length > MAX_OFFER_CHUNK_IDS) {
              return abandon(
                new InvalidArgumentError(
                  `the agent offered ${m.value.chunkIds.length} chunk ids at once; at most ${MAX_OFFER_CHUNK_IDS}`,
                ),
              );
            }
            const badId = m.value.chunkIds.find((id) => id.length !== 32);
            if (badId) {
              return abandon(
                new InvalidArgumentError(`the agent offered a chunk id of ${badId.length} bytes; chunk ids are 32`),
              );
            }
            const ids = m.value.chunkIds.map((id) => Buffer.from(id));
            const parts = m.value.manifestIds.map((id) => Buffer.from(id).toString("hex"));
            if (parts.length > MAX_MANIFEST_PARTS || parts.some((id) => id.length !== 64)) {
              return abandon(
                new InvalidArgumentError(
                  `the agent offered ${parts.length} manifest part ids; at most ${MAX_MANIFEST_PARTS}, of 32 bytes each`,
                ),
              );
            }
            // Answered at once, not behind the chunks still being written: waiting for them turned every
            // batch into a full stop of the pipeline. A chunk offered while an earlier copy is still queued
            // is asked for twice at worst, and the writer drops the second copy.
            if (++answering > MAX_ANSWERING && !answersPaused && !finished) {
              answersPaused = true;
              session.pauseInbound();
            }
            void (async () => {
              try {
                lookingUp++;
                let need: Buffer[];
                let needParts: string[];
                try {
                  need = ids.length > 0 ? await writer.missing(ids) : [];
                  needParts = parts.length > 0 ? await writer.missingManifestParts(parts) : [];
                } finally {
                  lookingUp--;
                }
                silence.heard();
                for (const id of need) asked.add(id);
                const manifestIds = needParts.map((id) => Buffer.from(id, "hex"));
                await session.send(
                  create(ControlMessageSchema, {
                    msg: { case: "snapshotNeed", value: { requestId, chunkIds: need, batch, manifestIds } },
                  }),
                );
              } finally {
                if (--answering <= MAX_ANSWERING) resumeAnswers();
              }
            })().catch(abandon); // the agent waits for this answer: it must hear that none is coming
          } else if (m.case === "snapshotChunks") {
            if (m.value.epoch !== req.epoch) return abandon(staleEpoch(m.value.epoch, req.epoch));
            const wrong = m.value.chunks.find((c) => !(c.plainLength > 0 && c.plainLength <= MAX_CHUNK_LENGTH));
            if (wrong) {
              // Refused before the verifier opens it: the length sizes what decompressing it may take.
              return abandon(
                new InvalidArgumentError(
                  `the agent sent a chunk of ${wrong.plainLength} bytes; a chunk holds 1 to ${MAX_CHUNK_LENGTH}`,
                ),
              );
            }
            const chunks = m.value.chunks.map((c) => ({
              id: Buffer.from(c.id),
              blob: Buffer.from(c.blob.buffer, c.blob.byteOffset, c.blob.byteLength),
              plainLength: c.plainLength,
            }));
            const unasked = chunks.find((c) => !asked.has(c.id));
            if (unasked) {
              return abandon(
                new InvalidArgumentError(
                  `the agent sent chunk ${unasked.id.toString("hex").slice(0, 64)}, which this snapshot did not ` +
                    "ask for: an agent offers its chunks' ids and sends only those the answer says are lacking",
                ),
              );
            }
            const bytes = chunks.reduce((sum, c) => sum + c.blob.length, 0);
            this.metrics.snapshotBytesReceived.inc(bytes);
            received += bytes;
            if (quota !== undefined && stored() > quota.bytes) {
              // What arrived before is kept (the next snapshot, after a forget and prune, reuses it).
              return abandon(quotaReached(req.tenantId, stored(), quota));
            }
            const verified = verifier.verify(key, chunks);
            verified.catch(() => {});
            if (++outstanding === MAX_VERIFYING + 1) session.pauseInbound();
            serial(async () => {
              try {
                const problems = await verified;
                const bad = problems.findIndex((p) => p !== null);
                if (bad >= 0) throw chunkArrivedDamaged(chunks[bad].id.toString("hex"), problems[bad]!);
                await writer.put(chunks);
                // Checked and copied into a pack: the message's pooled memory is free for the next one.
                releaseReceivedMessage(m.value.chunks[0]?.blob);
              } finally {
                if (outstanding-- === MAX_VERIFYING + 1) session.resumeInbound();
              }
            });
          } else if (m.case === "snapshotManifestPart") {
            if (m.value.epoch !== req.epoch) return abandon(staleEpoch(m.value.epoch, req.epoch));
            const part = manifestPartOf(m.value.part, m.value.storedId);
            const refused = typeof part === "string" ? part : manifestParts.add(m.value.index, part);
            if (refused) return abandon(new InvalidArgumentError(`the agent sent ${refused}`));
          } else if (m.case === "snapshotCommit") {
            if (m.value.epoch !== req.epoch) return abandon(staleEpoch(m.value.epoch, req.epoch));
            const commit = m.value;
            const last = manifestPartOf(commit.manifest, commit.manifestStoredId);
            if (typeof last === "string") return abandon(new InvalidArgumentError(`the agent committed ${last}`));
            const parts = manifestParts.complete(last, commit.manifestParts);
            if (!parts) {
              return abandon(
                new InvalidArgumentError(
                  `the agent committed a manifest of ${commit.manifestParts} parts and sent ${manifestParts.received + 1}`,
                ),
              );
            }
            serial(async () => {
              // Failed while this waited its turn (a batch before it refused, the agent gone): the chunks ahead of
              // it are still written, to be kept, but nothing is committed, whatever the manifest names.
              if (finished) return;
              const committed = (async () => {
                const row = await this.commit(writer, commit, parts, req);
                // Told when it can be, not waited for (an agent that stops reading would hold the operation);
                // the snapshot stands either way (the agent offers its chunks again next time).
                void session
                  .send(
                    create(ControlMessageSchema, {
                      msg: { case: "snapshotCommitted", value: { requestId, snapshotId: row.id } },
                    }),
                  )
                  .catch((err: Error) =>
                    this.log.warn(
                      { hostId: session.hostId, snapshotId: row.id, reason: err.message },
                      "snapshot committed; the agent could not be told",
                    ),
                  );
                return row;
              })();
              committing = committed;
              try {
                finish(undefined, await committed);
              } finally {
                committing = undefined;
              }
            });
          } else if (m.case === "snapshotProgress") {
            req.onProgress?.({ bytesDone: Number(m.value.bytesRead), bytesTotal: Number(m.value.bytesToRead) });
          } else if (m.case === "snapshotFailed") {
            finish(
              new FailedPreconditionError(`the agent could not snapshot ${req.path}: ${agentText(m.value.message)}`),
            );
          }
        },
      });
      session
        .send(
          create(ControlMessageSchema, {
            msg: {
              case: "takeSnapshot",
              value: {
                requestId,
                path: req.path,
                workspaceId: req.workspaceId,
                epoch: req.epoch,
                tenantKey: key,
                tenantId: req.tenantId,
                exclude: req.exclude ?? [],
                maxManifestParts: MAX_MANIFEST_PARTS,
                manifestRefs: true,
              },
            },
          }),
        )
        .catch((err: Error) => finish(err));
    });
  }

  private async runRestore(req: RestoreRequest, requestId: string): Promise<RestoreResult> {
    if (!req.target.startsWith("/")) {
      throw new InvalidArgumentError(`target must be absolute, got ${JSON.stringify(req.target)}`);
    }
    const started = Date.now();
    const key = await this.tenantKeys.get(req.snapshot.tenant_id);
    const repository = await this.repository(req.snapshot.tenant_id, key);
    // A shared lock, as direct mode's restore takes: a prune elsewhere (another replica, direct mode on the same
    // store) cannot repack or delete the packs it reads meanwhile; one running is waited for by nobody, and
    // this restore is refused "locked", to be run again. (This process's own prunes wait on `using`.)
    const lock = await acquireLock(repository.store, key, { exclusive: false, purpose: "a restore" });
    try {
      return await this.streamRestore(req, requestId, repository, key, started);
    } finally {
      await lock.release();
    }
  }

  /** runRestore's work under its lock: the manifest to the agent, then the chunks it asks for. */
  private async streamRestore(
    req: RestoreRequest,
    requestId: string,
    repository: Repository,
    key: Buffer,
    started: number,
  ): Promise<RestoreResult> {
    const index = await repository.loadIndex({ into: this.index(req.snapshot.tenant_id) });
    // Pack reads and outgoing messages reuse a few buffers for the whole restore (see BufferPool).
    // Page-aligned, so the file store reads packs into them around the page cache (FileBlobStore.getRange).
    const reads = new BufferPool(RESTORE_READ_BYTES, RESTORE_READ_AHEAD + 2, alignedBuffer);
    const pools: RestorePools = { reads, messages: new BufferPool(STREAM_MESSAGE_BUFFER_BYTES, STREAM_BUFFERS_KEPT) };
    const source: RepositoryChunkSource = await repository.chunkSource({
      index,
      readAhead: RESTORE_READ_AHEAD,
      maxRead: RESTORE_READ_BYTES,
      readBuffers: { allocate: (size) => reads.take(size), release: (buffer) => reads.give(buffer) },
    });
    let manifestBlobs: Buffer[];
    try {
      ({ manifestBlobs } = await source.readManifest(req.snapshot.id));
    } catch (err) {
      throw await snapshotGone(repository, req.snapshot.id, err);
    }
    // The chunks of this snapshot's files: the only ones its restore sends. An agent of the tenant asking for
    // others (of other hosts' or workspaces' snapshots, found by their ids: SHA-256 of content it may guess) is
    // refused: a restore reads its own snapshot, not the tenant's whole repository.
    const allowed = await manifestChunkIds(key, manifestBlobs, `manifest of snapshot ${req.snapshot.id}`);
    const session = req.session;
    if (manifestBlobs.length > 1) {
      session.require(
        AGENT_CAPABILITIES.manifestParts,
        `restore a snapshot of over ~12,000 files (a manifest in parts)`,
      );
    }
    // Every message of the restore goes one way, in order: on the agent's Downloads connection.
    const out = await session.bulkSender();
    return new Promise((resolve, reject) => {
      let finished = false;
      /**
       * The agent's chunk requests: RESTORE_BATCHES_AT_ONCE streamed at once (each holds pack reads in flight),
       * the rest waiting in order; more waiting than an agent ever asks for is a broken agent.
       */
      let streaming = 0;
      const waiting: (() => void)[] = [];
      /** The chunk ids the waiting requests hold (MAX_RESTORE_IDS_WAITING). */
      let idsWaiting = 0;
      const finish = (err: Error | undefined, result?: Omit<RestoreResult, "seconds">) => {
        if (finished) return;
        finished = true;
        this.operations.delete(requestId);
        silence.stop();
        waiting.length = 0;
        if (err) reject(err);
        else resolve({ ...result!, seconds: (Date.now() - started) / 1000 });
      };
      /** Fails the restore here and tells the agent to stop it (it would wait on chunks nobody sends). */
      const abandon = (err: Error) => {
        if (finished) return;
        finish(err);
        this.tellAborted(session, "restoreAborted", requestId, err);
      };
      const silence = this.silenceWatch("restore", session.hostId, abandon);
      const stream = (batch: bigint, ids: Buffer[], otherCopy: boolean) => {
        streaming++;
        void this.streamChunks(out, source, pools, { requestId, batch, ids, otherCopy }, () => finished, silence.heard)
          .catch(abandon)
          .finally(() => {
            streaming--;
            waiting.shift()?.();
          });
      };
      this.operations.set(requestId, {
        session,
        fail: (err) => finish(err),
        handle: (message) => {
          silence.heard();
          const m = message.msg;
          if (m.case === "restoreChunkRequest") {
            const batch = m.value.batch;
            if (m.value.chunkIds.length > MAX_RESTORE_REQUEST_IDS) {
              abandon(
                new InvalidArgumentError(
                  `the agent asked for ${m.value.chunkIds.length} chunks in one request; at most ${MAX_RESTORE_REQUEST_IDS}`,
                ),
              );
              return;
            }
            const ids = m.value.chunkIds.map((id) => Buffer.from(id));
            // (An id the repository does not hold at all is answered as missing, as before: nothing to give away.)
            const foreign = ids.find((id) => !allowed.has(id) && index.has(id));
            if (foreign) {
              abandon(
                new InvalidArgumentError(
                  `the agent asked for chunk ${foreign.toString("hex").slice(0, 64)}, which no file of snapshot ` +
                    `${req.snapshot.id.slice(0, 12)} holds: a restore is sent its snapshot's chunks only`,
                ),
              );
              return;
            }
            const { otherCopies } = m.value;
            if (streaming < RESTORE_BATCHES_AT_ONCE) stream(batch, ids, otherCopies);
            else if (waiting.length >= MAX_RESTORE_BATCHES_WAITING) {
              abandon(
                new InvalidArgumentError(
                  `the agent asked for more than ${RESTORE_BATCHES_AT_ONCE + MAX_RESTORE_BATCHES_WAITING} batches of chunks at once`,
                ),
              );
            } else if (idsWaiting + ids.length > MAX_RESTORE_IDS_WAITING) {
              abandon(
                new InvalidArgumentError(
                  `the agent asked for ${idsWaiting + ids.length} chunks in requests beyond the ` +
                    `${RESTORE_BATCHES_AT_ONCE} being answered; at most ${MAX_RESTORE_IDS_WAITING} may wait`,
                ),
              );
            } else {
              idsWaiting += ids.length;
              waiting.push(() => {
                idsWaiting -= ids.length;
                stream(batch, ids, otherCopies);
              });
            }
          } else if (m.case === "restoreProgress" && !m.value.done) {
            req.onProgress?.({ bytesDone: Number(m.value.bytesWritten), bytesTotal: Number(m.value.bytesTotal) });
          } else if (m.case === "restoreProgress" && m.value.done) {
            // The proto's bounds, held to whatever the agent sends: they go back to the API's caller.
            const warnings = m.value.warnings
              .slice(0, MAX_RESTORE_WARNINGS)
              .map((w) => agentText(w, MAX_RESTORE_WARNING_TEXT));
            if (m.value.error) {
              // A failure that kept what it could (damaged files named) may have warnings too: the error says them.
              const also = warnings.length > 0 ? ` (also: ${warnings.join("; ")})` : "";
              const message = `restore failed on host ${session.hostId}: ${agentText(m.value.error + also)}`;
              // Files whose data did not verify, or was missing: the store's data is damaged (DATA_LOSS, what
              // alerts watch for), not the request or the host.
              finish(m.value.damagedFiles > 0n ? new DataLossError(message) : new FailedPreconditionError(message));
            } else {
              finish(undefined, { files: Number(m.value.files), bytesWritten: Number(m.value.bytesWritten), warnings });
            }
          }
        },
      });
      const last = manifestBlobs.length - 1;
      (async () => {
        // The parts before the last go first, in order; the Restore carries the last and the count. Each part
        // the agent takes is progress (a large manifest on a slow link is not silence); once the restore has
        // been given up on, nothing more goes (the agent refuses a Restore whose abort came first, too).
        for (let index = 0; index < last; index++) {
          if (finished) return;
          await out.send(
            create(ControlMessageSchema, {
              msg: { case: "restoreManifestPart", value: { requestId, index, part: manifestBlobs[index] } },
            }),
          );
          silence.heard();
        }
        if (finished) return;
        await out.send(
          create(ControlMessageSchema, {
            msg: {
              case: "restore",
              value: {
                requestId,
                snapshotId: req.snapshot.id,
                target: req.target,
                manifest: manifestBlobs[last],
                manifestParts: manifestBlobs.length,
                tenantKey: key,
                epoch: BigInt(req.snapshot.epoch),
                include: req.include ?? [],
                noOwners: req.noOwners ?? false,
                otherCopies: true,
              },
            },
          }),
        );
      })().catch((err: Error) => finish(err));
    });
  }

  private async streamChunks(
    out: AgentSender,
    source: RepositoryChunkSource,
    pools: RestorePools,
    /** What the agent asked for: `otherCopy`, each chunk from a copy not sent it before (RepositoryChunkSource). */
    { requestId, batch, ids, otherCopy }: { requestId: string; batch: bigint; ids: Buffer[]; otherCopy: boolean },
    /** True once the restore has ended: what is left is not read. */
    ended: () => boolean,
    /** Called as each message goes out (the agent took the last one: the restore moves). */
    sent: () => void,
  ): Promise<void> {
    let pending: WireChunk[] = [];
    let bytes = 0; // the blobs' (what the metric counts)
    let size = 0; // the message's, near enough: blobs, ids and error texts (an answer of errors alone grows too)
    // The source yields the chunks of one read buffer after another: once a chunk comes from a new buffer, the
    // previous one is finished, and it goes back to the pool when the message holding its last chunks is encoded.
    let current: Uint8Array | undefined;
    let finished: Uint8Array[] = [];
    const flush = async (last: boolean) => {
      // Encoded now, in one copy (grpc-js serialises a queued message later): the blobs' read buffers are free
      // from here on, the message's buffer once grpc-js has framed it.
      const message = encodeRestoreChunks(requestId, batch, last, pending, pools.messages);
      this.metrics.restoreBytesSent.inc({ connection: out.connection }, bytes);
      for (const buffer of finished) pools.reads.give(buffer);
      finished = [];
      pending = [];
      bytes = 0;
      size = 0;
      await out.send(message, () => pools.messages.give(message));
      sent();
    };
    for await (const chunk of source.get(ids, { otherCopy })) {
      if (ended()) return;
      if (chunk.blob && chunk.blob.buffer !== current?.buffer) {
        if (current) finished.push(current);
        current = chunk.blob;
      }
      const length = chunk.blob?.length ?? 0;
      const entry = length + WIRE_CHUNK_OVERHEAD + (chunk.error === undefined ? 0 : Buffer.byteLength(chunk.error));
      if (size > 0 && size + entry > STREAM_BATCH_BYTES) await flush(false);
      // With the pack it came from (or failed to), for the agent to name where the chunk does not verify.
      const pack = chunk.pack === undefined ? undefined : Buffer.from(chunk.pack, "hex");
      pending.push(chunk.blob ? { id: chunk.id, blob: chunk.blob, pack } : { id: chunk.id, error: chunk.error, pack });
      bytes += length;
      size += entry;
    }
    if (current) finished.push(current);
    await flush(true);
  }

  private async commit(
    writer: RepositoryWriter,
    commit: SnapshotCommit,
    manifestParts: ManifestPartBlob[],
    req: SnapshotRequest,
  ): Promise<SnapshotRow> {
    const s = commit.stats;
    const skipped = skippedEntries(s);
    // What is new is what this snapshot added to the store: the agent's count of what it sent, less the chunks its
    // writer did not store, which another snapshot of the tenant stored meanwhile (two snapshots of the same bytes
    // at once, each told the chunk was needed). Both snapshots counted them as theirs.
    const already = writer.stats;
    const counts = {
      files: statCount(s?.files, "files"),
      bytesRead: statCount(s?.bytesRead, "bytes_read"),
      bytesNew: Math.max(0, statCount(s?.bytesNew, "bytes_new") - already.plainBytesSkipped),
      bytesStored: Math.max(0, statCount(s?.bytesStored, "bytes_stored") - already.chunkBytesSkipped),
      chunksNew: Math.max(0, statCount(s?.chunksNew, "chunks_new") - already.chunksSkipped),
      seconds: s?.seconds ?? 0,
      filesSkipped: skipped.filesSkipped,
    };
    if (!(Number.isFinite(counts.seconds) && counts.seconds >= 0)) {
      throw new InvalidArgumentError(`${STATS_FIELD}: seconds must be a finite number ≥ 0, got ${counts.seconds}`);
    }
    // The record lists what was left out, as a direct-mode snapshot's does (see createSnapshot).
    const stats = skipped.filesSkipped > 0 ? { ...counts, skipped: skipped.skipped } : counts;
    // The repository commit verifies the manifest and makes every pack durable before the snapshot object.
    const id = await writer
      .commit(manifestParts, {
        workspace: req.workspaceId,
        epoch: Number(req.epoch),
        tenant: req.tenantId,
        source: req.path,
        hostname: req.session.hostId,
        stats,
      })
      .catch((err: unknown) => {
        // A manifest the repository refuses (a chunk never sent, an unsafe path, a part that does not open as the
        // agent sealed it): the agent's snapshot is wrong, and the caller hears why, not "internal error" (a
        // stored manifest read back wrong elsewhere is damage, DATA_LOSS, as storeError says).
        if (isRepositoryError(err, "incomplete") || isRepositoryError(err, "invalid-manifest")) {
          throw new InvalidArgumentError(
            `host ${req.session.hostId} committed a manifest the repository refuses: ${err.message}`,
          );
        }
        throw err;
      });
    const stored = manifestParts.filter((part) => !Buffer.isBuffer(part)).length;
    this.metrics.snapshotManifestParts.inc({ form: "sealed" }, manifestParts.length - stored);
    this.metrics.snapshotManifestParts.inc({ form: "stored" }, stored);
    const row = catalogueRow({
      id,
      tenantId: req.tenantId,
      hostId: req.session.hostId,
      workspace: req.workspaceId,
      path: req.path,
      epoch: Number(req.epoch),
      files: counts.files,
      // Counted by the writer from the manifest it just checked, as the record holds it.
      bytesTotal: writer.committedTotals?.bytes ?? null,
      stats,
      // Set here, not by the column default, so the answer to this request and later listings agree.
      createdAt: new Date(),
    });
    // The row goes in as a change of the catalogue, after any forget under way: a forget between the
    // repository's commit and this insert (a retention after another snapshot of the workspace) may have found
    // the snapshot (listUnlisted), judged it older and forgotten it, row and record. Its row is then not put
    // back for a snapshot that is gone: it was committed, and forgotten as the policy says.
    const listed = await this.changingCatalogue(req.tenantId, async () => {
      const repository = await this.repositoryOf(req.tenantId);
      if (!(await repository.hasSnapshot(id))) return "forgotten" as const;
      // Inserted already only if a forget found the snapshot in the repository first (listUnlisted) and kept
      // it: that row is the same snapshot, and what `list` shows, so it is the answer.
      const inserted = await this.db
        .insertInto("snapshots")
        .values(row)
        .onConflict((oc) => oc.column("id").doNothing())
        .returning("id")
        .executeTakeFirst();
      return inserted ? undefined : await getSnapshot(this.db, id, { tenantId: req.tenantId });
    }).catch((err: unknown) => {
      // The snapshot is whole in the repository; only its row is missing, and nobody could list, restore or forget
      // it until the next start's relisting. It is listed again from the repository shortly (relistSoon).
      this.log.error(
        { err, snapshotId: id, tenantId: req.tenantId, workspace: req.workspaceId },
        "snapshot committed to the blob store but not catalogued; it is listed again from there shortly",
      );
      this.relistSoon(req.tenantId);
      throw err;
    });
    if (listed === "forgotten") {
      this.log.info(
        { snapshotId: id, hostId: req.session.hostId, workspace: req.workspaceId },
        "snapshot committed and forgotten at once by a forget that ran meanwhile (its retention policy)",
      );
    } else if (listed) {
      return listed;
    } else {
      this.log.info(
        {
          snapshotId: id,
          tenantId: req.tenantId,
          hostId: req.session.hostId,
          path: req.path,
          workspace: req.workspaceId,
          ...counts,
        },
        "snapshot committed",
      );
    }
    return { ...row, skipped: skipped.skipped };
  }

  /**
   * The tenant's chunk index, kept between operations and refreshed at the start of each (only new index
   * objects are read): without it every snapshot re-read every index object of the tenant's repository.
   * It holds about 100 bytes per chunk (~100 MB per TB stored) for as long as the control plane runs.
   */
  private index(tenantId: string): RepositoryIndex {
    let index = this.indexes.get(tenantId);
    if (!index) {
      index = new RepositoryIndex();
      this.indexes.set(tenantId, index);
    }
    return index;
  }

  /** The tenant's repository, or undefined where it has none yet (NoRepositoryError: none is made but by a snapshot). */
  private existingRepository(tenantId: string): Promise<Repository | undefined> {
    return this.repositoryOf(tenantId).catch((err: unknown) => {
      if (err instanceof NoRepositoryError) return undefined;
      throw err;
    });
  }

  private async repositoryOf(tenantId: string): Promise<Repository> {
    return this.repository(tenantId, await this.tenantKeys.get(tenantId));
  }

  /**
   * The tenant's repository, made by its first snapshot; but not made again where the catalogue lists snapshots
   * of the tenant. There was a repository then, and this store is not it: a mount that did not come up (its
   * empty mount point), another bucket or prefix. Made there, the tenant's next snapshots went to the wrong disk,
   * hidden under the mount once it came back.
   */
  private async openRepository(tenantId: string, store: BlobStore, key: Buffer, make: boolean): Promise<Repository> {
    if (!(await Repository.exists(store))) {
      const catalogued = await listSnapshots(this.db, { tenantId });
      if (catalogued.length > 0) throw new RepositoryMissingError(store.url, catalogued.length);
      // Made by a snapshot only: a prune, check or relisting of a tenant whose first snapshot never got that far
      // (or whose store is not mounted) made one, on whatever disk was there.
      if (!make) throw new NoRepositoryError(tenantId);
      // Nor on the filesystem below an fstab mount point that is not mounted now: the tenant's snapshots would go
      // to the machine's own disk, hidden under the mount once it comes back.
      refuseUnmountedNewRepository(store.url, `the tenant's blob store ${store.url}`, this.mountTables);
      // Another replica may make it meanwhile. A prefix holding objects but no config is not the caller's doing.
      const opened = await Repository.openOrInit(store, key).catch((err: unknown) => {
        if (!isRepositoryError(err, "invalid-argument")) throw err;
        throw new MisconfiguredError(
          `${err.message}. The control plane makes a tenant's repository only where nothing is: move what is ` +
            `there out of the tenant's prefix, or check the blob store's setting (DUMONT_BLOB_STORE)`,
        );
      });
      if (opened.recreated) {
        this.log.warn(
          { tenantId, store: store.url, repository: opened.repository.id },
          "the tenant's repository had lost its config; made a new one, as its objects open with the tenant's key",
        );
      }
      return opened.repository;
    }
    return Repository.open(store, key);
  }

  /**
   * Whether the tenant's repository is in the store, asked of the store itself (a store of its own, closed after:
   * an S3 one holds a client), not of a repository opened and cached before.
   */
  private async repositoryThere(tenantId: string): Promise<boolean> {
    const store = this.tenantStore(tenantId);
    try {
      return await Repository.exists(store);
    } finally {
      await store.close();
    }
  }

  /** The tenant's part of the blob store, every call with a deadline: a store that stops answering fails the operations waiting on it. */
  private tenantStore(tenantId: string): BlobStore {
    return new DeadlineBlobStore(this.openStore(`${this.blobStoreUrl.replace(/\/+$/, "")}/tenants/${tenantId}`), {
      deadlineMs: this.storeCallMs,
      unreturned: this.unreturnedStoreCalls,
    });
  }

  /** The tenant's repository (cached); `make`: made if there is none yet (a snapshot's), else NoRepositoryError. */
  private repository(tenantId: string, key: Buffer, options: { make?: boolean } = {}): Promise<Repository> {
    this.lastUsed.set(tenantId, Date.now());
    this.evictIdle(tenantId);
    let repo = this.repositories.get(tenantId);
    if (!repo) {
      const store = this.tenantStore(tenantId);
      repo = this.openRepository(tenantId, store, key, options.make === true);
      const opening = repo;
      // Forgotten once failed (before any caller hears, so one that asks again opens it again), its store closed.
      opening.catch(() => {
        void store.close().catch(() => undefined);
        if (this.repositories.get(tenantId) !== opening) return;
        this.repositories.delete(tenantId);
        this.lastUsed.delete(tenantId);
      });
      this.repositories.set(tenantId, repo);
    }
    if (!options.make) return repo;
    // A snapshot that found another caller's opening under way, which makes none: opened again, to be made.
    return repo.catch((err: unknown) => {
      if (err instanceof NoRepositoryError) return this.repository(tenantId, key, options);
      throw err;
    });
  }
}

/**
 * A manifest part as the agent sent it (ManifestPart, or SnapshotCommit's last part): its sealed bytes, or the
 * id of a part the repository holds; a string saying what is wrong with it otherwise.
 */
function manifestPartOf(part: Uint8Array, storedId: Uint8Array): Uint8Array | { stored: string } | string {
  if (storedId.length === 0) return part;
  if (storedId.length !== 32 || part.length > 0) {
    return `a manifest part with a ${storedId.length}-byte stored id and ${part.length} bytes (a 32-byte id or bytes, not both)`;
  }
  return { stored: Buffer.from(storedId).toString("hex") };
}

/** Most of an agent's error text an API error carries (it travels in a header for gRPC clients). */
const MAX_AGENT_TEXT = 4096;
/** The most warnings of a restore passed on, and the most of each (RestoreProgress.warnings). */
const MAX_RESTORE_WARNINGS = 8;
const MAX_RESTORE_WARNING_TEXT = 1024;

/** How a refusal names the work that has a tenant's repository to itself. */
const EXCLUSIVE_WORK = {
  prune: "prune",
  "repair-index": "index repair",
  "repair-packs": "pack repair",
  "repair-snapshots": "snapshot repair",
} as const;

/** The first few of `works`, each with how long it has run: "snapshot of /work on host h-1, for 3m05s". */
function describeRunning(works: RunningWork[], now = Date.now()): string {
  const shown = works
    .slice(0, 3)
    .map((w) => `${w.what}, for ${formatDuration((now - w.since) / 1000)}`)
    .join("; ");
  return works.length > 3 ? `${shown}; and ${works.length - 3} more` : shown;
}

/**
 * An agent's error text (a snapshot's failure, a restore's, naming damaged files) cut to MAX_AGENT_TEXT, or `max`
 * characters: an agent may send up to a message's size, which no API error should carry.
 */
function agentText(text: string, max = MAX_AGENT_TEXT): string {
  if (text.length <= max) return text;
  return `${text.slice(0, max)}… (${text.length - max} more characters; see the agent's log)`;
}

/**
 * The distinct chunk ids of a manifest's files, in an IdSet (32 raw bytes each in one buffer): about 40 bytes a
 * chunk (a Set of hex strings took ~120), for a restore of a million chunks. Of a manifest's parts, opened one at a
 * time, the event loop let run between them: opened whole, a manifest of a million files held this thread for
 * ~4 s (every agent's stream waiting) and ~400 MiB at once.
 */
async function manifestChunkIds(key: Buffer, blobs: readonly Buffer[], what: string): Promise<IdSet> {
  const ids = new IdSet();
  for (const entries of manifestPartEntries(key, blobs, what)) {
    for (const e of entries) if (e.type === "file") for (const hex of e.chunks) ids.add(hex);
    await setImmediate();
  }
  return ids;
}
