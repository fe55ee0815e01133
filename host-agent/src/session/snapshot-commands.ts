// Runs the control plane's TakeSnapshot and Restore commands on this host with the snapshot engine,
// moving chunks over the session's streams (stream-transfer.ts). One worker pool serves every operation.
import os from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { AgentMessageSchema, type ControlMessage, type Restore, type TakeSnapshot } from "@dumont/proto";
import { MAX_MANIFEST_PARTS } from "@dumont/repository/limits";
import { ManifestPartsReceiver } from "@dumont/repository/manifest-parts";
import { realPath } from "@dumont/repository/real-path";
import type { Logger } from "../logger.js";
import type { RestoreDamagedError, SnapshotWorkerPool } from "../snapshot/index.js";
import type { ControlPlaneSession, Inbound } from "./control-plane-session.js";
import { StreamChunkSink, StreamChunkSource, type StreamPort } from "./stream-transfer.js";

const PROGRESS_INTERVAL_MS = 250;
/** Snapshots and restores run at once at most (each may hold hundreds of MiB); more are refused, saying so. */
export const MAX_OPERATIONS = 4;
/** Aborts of requests not (yet) running that are remembered (see SnapshotCommands.abortedEarly). */
const MAX_ABORTED_KEPT = 64;
/** A tenant key is an AES-256 key. */
const TENANT_KEY_BYTES = 32;
/** Text the control plane sent, echoed in a log line or back to it: cut here. */
const MAX_ECHOED_TEXT = 1024;
/** The most warnings a RestoreProgress carries (agent.proto). */
const MAX_RESTORE_WARNINGS = 8;
/** How soon the last report of a burst goes out when the interval held it back (see progressReporter). */
const PROGRESS_HEARTBEAT_MS = 5_000;
/**
 * The worker pool (threads, their heaps and batch buffers: ~300 MiB after a 1 GiB snapshot) is shut down
 * this long after the last operation, so an idle agent goes back to its idle footprint.
 */
const POOL_IDLE_MS = 30_000;

/** A snapshot or restore running here: what it works on, and how to stop it. */
interface Operation {
  kind: "snapshot" | "restore";
  /** The snapshot's source or the restore's target, resolved. */
  path: string;
  /** `path` with the symlinks in it resolved (realPath): what overlaps are judged on. */
  real: string;
  abort: AbortController;
}

export class SnapshotCommands {
  private pool: SnapshotWorkerPool | undefined;
  private running = 0;
  private readonly operations = new Map<string, Operation>();
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly sinks = new Map<string, StreamChunkSink>();
  private readonly sources = new Map<string, StreamChunkSource>();
  /**
   * Manifest parts the control plane sent ahead of a Restore, by request id; the Restore takes them. Kept
   * here, not by the source: the Restore's engine starts after an await, and the parts are already read.
   */
  private readonly manifestParts = new Map<string, ManifestPartsReceiver>();
  /**
   * Requests the control plane aborted before they ran here (the newest MAX_ABORTED_KEPT): a restore's abort
   * goes on the Connect stream and its Restore on the Downloads one, so the abort may come first; the Restore
   * is then refused rather than run with nobody answering its chunk requests.
   */
  private readonly abortedEarly = new Set<string>();
  /** The TakeSnapshot and Restore handlers running (see `close`). */
  private readonly handlers = new Set<Promise<void>>();
  private closed = false;

  constructor(
    private readonly session: ControlPlaneSession,
    private readonly stateDir: string,
    private readonly log: Logger,
  ) {
    session.onCommand((message, _session, via) => this.handle(message, via));
    // A dropped stream fails every operation in flight; the control plane retries with a new request.
    session.on("disconnected", () => {
      const err = new Error("the stream to the control plane closed");
      for (const requestId of this.operations.keys()) this.stop(requestId, err);
      this.manifestParts.clear();
    });
  }

  /**
   * Stops every operation in flight and waits for each to end (a failed restore takes back its files, a
   * snapshot's local index is written whole or not at all) before the worker pool goes: nothing is left
   * half done in the agent's state directory or a restore target, and nothing new starts.
   */
  async close(): Promise<void> {
    this.closed = true;
    const err = new Error("the agent is shutting down");
    for (const requestId of this.operations.keys()) this.stop(requestId, err);
    while (this.handlers.size > 0) await Promise.allSettled([...this.handlers]);
    clearTimeout(this.idleTimer);
    await this.pool?.close();
  }

  /** Keeps a command's handler until it ends, for `close`. */
  private track(handler: Promise<void>): void {
    this.handlers.add(handler);
    void handler.finally(() => this.handlers.delete(handler));
  }

  private handle(message: ControlMessage, via: Inbound): void {
    const m = message.msg;
    switch (m.case) {
      case "takeSnapshot":
        this.track(this.takeSnapshot(m.value));
        return;
      case "restore":
        this.track(this.restore(m.value, via));
        return;
      case "snapshotNeed":
      case "snapshotCommitted":
        this.sinks.get(m.value.requestId)?.receive(message);
        return;
      case "snapshotAborted":
      case "restoreAborted": {
        const what = m.case === "snapshotAborted" ? "snapshot" : "restore";
        const reason = m.value.message.slice(0, MAX_ECHOED_TEXT);
        if (!this.operations.has(m.value.requestId)) {
          if (this.abortedEarly.size >= MAX_ABORTED_KEPT) {
            this.abortedEarly.delete(this.abortedEarly.values().next().value as string);
          }
          this.abortedEarly.add(m.value.requestId);
          this.manifestParts.delete(m.value.requestId);
        }
        this.stop(m.value.requestId, new Error(`the control plane aborted the ${what}: ${reason}`));
        return;
      }
      case "restoreChunks":
        this.sources.get(m.value.requestId)?.receive(message);
        return;
      case "restoreManifestPart": {
        let held = this.manifestParts.get(m.value.requestId);
        if (!held) {
          // Parts of restores that never came are not kept for ever: only the newest few requests' (a Restore
          // follows its parts at once, and at most MAX_OPERATIONS run).
          if (this.manifestParts.size >= MAX_OPERATIONS) {
            this.manifestParts.delete(this.manifestParts.keys().next().value as string);
          }
          held = new ManifestPartsReceiver();
          this.manifestParts.set(m.value.requestId, held);
        }
        held.add(m.value.index, m.value.part); // a refusal fails the Restore that follows
        return;
      }
    }
  }

  private throttled<P>(
    initial: P,
    message: (progress: P) => ReturnType<typeof create<typeof AgentMessageSchema>>,
  ): ProgressReporter<P> {
    // One progress message in flight at most: while the stream is full they would only pile up behind it.
    let sending = false;
    return progressReporter(initial, (p) => {
      if (sending) return;
      sending = true;
      this.session
        .send(message(p))
        .catch(() => undefined)
        .finally(() => {
          sending = false;
        });
    });
  }

  /** Stops an operation in flight: its stream ends fail, and its engine is aborted. */
  private stop(requestId: string, err: Error): void {
    this.sinks.get(requestId)?.fail(err);
    this.sources.get(requestId)?.fail(err);
    this.operations.get(requestId)?.abort.abort(err);
  }

  /**
   * Registers an operation, or says why it cannot run: its request id already runs, MAX_OPERATIONS run, or its
   * path overlaps a restore's target (a restore empties its target when it fails, and two restores into one
   * target each took the other's files for theirs), or a restore's target overlaps a running snapshot's source.
   */
  private begin(requestId: string, kind: Operation["kind"], target: string): Operation {
    if (this.closed) throw new Error("the agent is shutting down");
    if (this.operations.has(requestId)) throw new Error(`request ${requestId} is already running on this host`);
    if (this.abortedEarly.delete(requestId)) throw new Error(`the control plane aborted request ${requestId}`);
    if (this.operations.size >= MAX_OPERATIONS) {
      throw new Error(`this host runs ${MAX_OPERATIONS} snapshots and restores already; try again when one ends`);
    }
    const inside = (a: string, b: string) => a === b || a.startsWith(b.endsWith(path.sep) ? b : b + path.sep);
    // On the paths with their links resolved: a snapshot's source and a restore's target may each be a symlink to
    // a directory, and two names for one directory overlap.
    const real = realPath(target);
    for (const other of this.operations.values()) {
      if (kind === "snapshot" && other.kind === "snapshot") continue;
      if (inside(real, other.real) || inside(other.real, real)) {
        const what = kind === "restore" ? "the restore target" : "the snapshot source";
        throw new Error(`${what} ${target} overlaps the ${other.kind} running on ${other.path}; wait for it to end`);
      }
    }
    const op: Operation = { kind, path: target, real, abort: new AbortController() };
    this.operations.set(requestId, op);
    return op;
  }

  /**
   * The engine (and its worker pool) is loaded on the first operation: an idle agent never pays for it.
   * Runs `work` with it; the pool is closed once no operation has used it for POOL_IDLE_MS.
   */
  private async withEngine<T>(
    work: (engine: typeof import("../snapshot/index.js") & { pool: SnapshotWorkerPool }) => Promise<T>,
  ): Promise<T> {
    clearTimeout(this.idleTimer);
    this.running++;
    try {
      const engine = await import("../snapshot/index.js");
      if (this.pool?.broken) {
        // A worker died: the pool fails every request from then on. The operations on it fail; later ones
        // get a new pool.
        void this.pool.close();
        this.pool = undefined;
      }
      this.pool ??= new engine.SnapshotWorkerPool();
      return await work({ ...engine, pool: this.pool });
    } finally {
      if (--this.running === 0) {
        this.idleTimer = setTimeout(() => {
          const pool = this.pool;
          this.pool = undefined;
          void pool?.close().then(() => this.log.debug("snapshot workers stopped after being idle"));
        }, POOL_IDLE_MS);
        this.idleTimer.unref();
      }
    }
  }

  private async takeSnapshot(cmd: TakeSnapshot): Promise<void> {
    // 0 is a control plane of before manifest parts: one part (proto CHANGELOG).
    const maxParts = Math.min(MAX_MANIFEST_PARTS, Math.max(1, cmd.maxManifestParts));
    const sink = new StreamChunkSink(this.session, cmd.requestId, cmd.epoch, maxParts, cmd.manifestRefs);
    let op: Operation | undefined;
    const started = Date.now();
    const progress = this.throttled({ bytesRead: 0, bytesToRead: 0 }, (p) =>
      create(AgentMessageSchema, {
        msg: {
          case: "snapshotProgress",
          value: { requestId: cmd.requestId, bytesRead: BigInt(p.bytesRead), bytesToRead: BigInt(p.bytesToRead) },
        },
      }),
    );
    try {
      if (!path.isAbsolute(cmd.path)) throw new Error(`path must be absolute, got ${JSON.stringify(cmd.path)}`);
      checkTenantKey(cmd.tenantKey);
      op = this.begin(cmd.requestId, "snapshot", path.resolve(cmd.path));
      this.sinks.set(cmd.requestId, sink);
      const signal = op.abort.signal;
      const scope = `control-plane:${cmd.tenantId}\n${path.resolve(cmd.path)}`;
      const result = await this.withEngine(({ createSnapshot, localIndexPath, pool }) =>
        createSnapshot({
          source: cmd.path,
          sink,
          key: Buffer.from(cmd.tenantKey),
          meta: { workspace: cmd.workspaceId, epoch: Number(cmd.epoch), tenant: cmd.tenantId, hostname: os.hostname() },
          pool,
          exclude: cmd.exclude,
          // The stream's put waits on the control plane (flow control, its arrival check): two more sealed
          // segments keep the workers busy meanwhile. Agent and control plane pinned to a core each, 1 GiB:
          // the agent's idle time during a snapshot fell from 0.49 to 0.34 s (medians of 10 paired runs),
          // 7 runs of 10 faster. Direct mode's file sink gained nothing and would only hold ~30 MiB more.
          sealAhead: 2,
          localIndex: { file: localIndexPath(this.stateDir, scope), scope },
          onProgress: progress.report,
          signal,
        }),
      );
      this.log.info(
        {
          requestId: cmd.requestId,
          snapshotId: result.id,
          path: cmd.path,
          files: result.files,
          bytesRead: result.bytesRead,
          bytesNew: result.bytesNew,
          ms: Date.now() - started,
        },
        "snapshot committed",
      );
      for (const warning of result.warnings ?? []) this.log.warn({ snapshotId: result.id }, warning);
    } catch (err) {
      const message = (err as Error).message.slice(0, MAX_ECHOED_TEXT);
      this.log.warn(
        { requestId: cmd.requestId, path: cmd.path, tenantId: cmd.tenantId, workspace: cmd.workspaceId, err: message },
        "snapshot failed",
      );
      // Its stack (a worker's too) for a bug report, at debug: most failures are the workspace's, not the code's.
      this.log.debug({ requestId: cmd.requestId, err }, "snapshot failure's stack");
      await this.session
        .send(
          create(AgentMessageSchema, { msg: { case: "snapshotFailed", value: { requestId: cmd.requestId, message } } }),
        )
        .catch(() => undefined);
    } finally {
      progress.stop();
      if (op && this.operations.get(cmd.requestId) === op) {
        this.operations.delete(cmd.requestId);
        this.sinks.delete(cmd.requestId);
      }
    }
  }

  /** A restore's warnings, logged, and as many as RestoreProgress carries to whoever asked for it. */
  private restoreWarnings(requestId: string, warnings: string[] = []): string[] {
    for (const warning of warnings) this.log.warn({ requestId }, warning);
    return warnings.slice(0, MAX_RESTORE_WARNINGS).map((w) => w.slice(0, MAX_ECHOED_TEXT));
  }

  /** `via`: the stream the Restore came on; its chunks follow on the same one, which a slow disk pauses. */
  private async restore(cmd: Restore, via: Inbound): Promise<void> {
    const report = (value: {
      files?: bigint;
      bytesWritten?: bigint;
      error?: string;
      warnings?: string[];
      damagedFiles?: bigint;
    }) =>
      this.session.send(
        create(AgentMessageSchema, {
          msg: { case: "restoreProgress", value: { requestId: cmd.requestId, done: true, ...value } },
        }),
      );
    const held = this.manifestParts.get(cmd.requestId) ?? new ManifestPartsReceiver();
    this.manifestParts.delete(cmd.requestId);
    let op: Operation | undefined;
    const progress = this.throttled({ filesDone: 0, bytesWritten: 0, bytesTotal: 0 }, (p) =>
      create(AgentMessageSchema, {
        msg: {
          case: "restoreProgress",
          value: {
            requestId: cmd.requestId,
            done: false,
            files: BigInt(p.filesDone),
            bytesWritten: BigInt(p.bytesWritten),
            bytesTotal: BigInt(p.bytesTotal),
          },
        },
      }),
    );
    try {
      if (!path.isAbsolute(cmd.target)) throw new Error(`target must be absolute, got ${JSON.stringify(cmd.target)}`);
      checkTenantKey(cmd.tenantKey);
      op = this.begin(cmd.requestId, "restore", path.resolve(cmd.target));
      const signal = op.abort.signal;
      const manifest = held.complete(cmd.manifest, cmd.manifestParts);
      if (!manifest) {
        throw new Error(
          `the control plane sent ${held.received + 1} of the manifest's ${Math.max(1, cmd.manifestParts)} parts` +
            (held.refused ? ` (it sent ${held.refused})` : ""),
        );
      }
      const result = await this.withEngine(({ restoreSnapshot, pool }) => {
        // Chunks are copied into the workers' shared memory as they arrive (see StreamChunkSource).
        const port: StreamPort = {
          send: (message, onWritten) => this.session.send(message, onWritten),
          pauseInbound: () => this.session.pauseInbound(via),
        };
        const source = new StreamChunkSource(
          port,
          cmd.requestId,
          cmd.snapshotId,
          manifest,
          pool.chunkBuffers,
          (text) => this.log.warn({ requestId: cmd.requestId }, text),
          cmd.otherCopies,
        );
        this.sources.set(cmd.requestId, source);
        return restoreSnapshot({
          snapshotId: cmd.snapshotId,
          source,
          key: Buffer.from(cmd.tenantKey),
          target: cmd.target,
          include: cmd.include,
          // Recorded owners given back where this agent may (as root), unless the restore asks for none.
          owners: cmd.noOwners ? false : undefined,
          // A workspace's links out of it (a virtualenv's bin/python -> /usr/bin/python3) come back with it
          // when a job moves: a restore creates links and never follows one, and refusing them refused the
          // whole restore. Direct mode leaves this to the operator (--allow-external-symlinks).
          allowExternalSymlinks: true,
          pool,
          onProgress: progress.report,
          signal,
        });
      });
      await report({
        files: BigInt(result.files),
        bytesWritten: BigInt(result.bytesWritten),
        warnings: this.restoreWarnings(cmd.requestId, result.warnings),
      });
    } catch (err) {
      const message = (err as Error).message.slice(0, MAX_ECHOED_TEXT);
      this.log.warn(
        { requestId: cmd.requestId, snapshotId: cmd.snapshotId, target: cmd.target, err: message },
        "restore failed",
      );
      this.log.debug({ requestId: cmd.requestId, err }, "restore failure's stack");
      // A restore that names damaged files (RestoreDamagedError) kept the rest, and may have warnings too; the
      // count tells the control plane the data is damaged, not the request or this host (DATA_LOSS to its caller).
      const warnings = (err as { result?: { warnings?: string[] } }).result?.warnings;
      // (By name: the engine is loaded only once a snapshot or restore runs, not with the agent.)
      const damaged =
        (err as Partial<RestoreDamagedError>).name === "RestoreDamagedError"
          ? (err as RestoreDamagedError).damaged
          : [];
      const damagedFiles = BigInt(damaged.length);
      await report({ error: message, warnings: this.restoreWarnings(cmd.requestId, warnings), damagedFiles }).catch(
        () => undefined,
      );
    } finally {
      progress.stop();
      if (op && this.operations.get(cmd.requestId) === op) {
        this.operations.delete(cmd.requestId);
        this.sources.delete(cmd.requestId);
      }
    }
  }
}

/** The tenant key a command carries, checked before any work: the engine's own error named no field. */
function checkTenantKey(key: Uint8Array): void {
  if (key.length !== TENANT_KEY_BYTES) {
    throw new Error(`tenant_key must be ${TENANT_KEY_BYTES} bytes (an AES-256 key), got ${key.length}`);
  }
}

export interface ProgressReporter<P> {
  report(progress: P): void;
  stop(): void;
}

/**
 * Progress for the control plane: at most a few messages a second, sent without waiting (progress is only for
 * display, and must never hold up the chunks behind it), and the latest once more when reports came within the
 * interval but none went out (the last of a burst). Nothing is sent for an operation that reports nothing
 * (a read hung on a dead mount): the control plane gives up on an operation it hears nothing about
 * (OPERATION_SILENCE_MS), and the engine reports while it lists a tree as well as while it reads and writes.
 * `stop` when it ends.
 */
export function progressReporter<P>(
  initial: P,
  send: (progress: P) => void,
  intervals = { minMs: PROGRESS_INTERVAL_MS, heartbeatMs: PROGRESS_HEARTBEAT_MS },
): ProgressReporter<P> {
  let last = Number.NEGATIVE_INFINITY;
  let latest = initial;
  /** Whether the operation reported anything since the last message. */
  let moved = true;
  const sendLatest = () => {
    last = performance.now();
    moved = false;
    send(latest);
  };
  const heartbeat = setInterval(() => {
    if (moved) sendLatest();
  }, intervals.heartbeatMs);
  heartbeat.unref();
  return {
    report: (progress: P): void => {
      latest = progress;
      moved = true;
      if (performance.now() - last >= intervals.minMs) sendLatest();
    },
    stop: () => clearInterval(heartbeat),
  };
}
