// dumont.api.v1.SnapshotService (admin): snapshot a directory on a host, list, restore onto a host, ls, diff,
// check, repair (index, packs, snapshots), forget.
import { createHash } from "node:crypto";
import { posix } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { AGENT_CAPABILITIES, api } from "@dumont/proto";
import {
  diffManifests,
  hasRetentionRule,
  type ManifestEntry,
  type ReadSubset,
  readSubsetOption,
  selectIncluded,
} from "@dumont/repository";
import { checkExcludePatterns, checkPathPatterns, nothingIncluded } from "@dumont/repository/path-patterns";
import type { SessionRegistry } from "../agent-gateway/agent-session.js";
import { tenantExists } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { getHost } from "../db/host-repository.js";
import { findSnapshotsByPrefix, listSnapshots, repositoryTenants, snapshotTenants } from "../db/snapshot-repository.js";
import type { SnapshotRow } from "../db/tables.js";
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../errors.js";
import type { SnapshotCoordinator, TransferProgress } from "../snapshots/snapshot-coordinator.js";
import { type ApiAuthOptions, authenticate, listScope, requireRole, tenantScope } from "./auth.js";
import { checkText, MAX_HOST_ID, noSuchTenant, shown } from "./request-fields.js";

export interface SnapshotServiceDeps {
  db: Db;
  sessions: SessionRegistry;
  snapshots: SnapshotCoordinator;
  /** Rate limits and last-use marks of the callers' keys (none when absent). */
  auth?: ApiAuthOptions;
}

export function snapshotService(deps: SnapshotServiceDeps): ServiceImpl<typeof api.SnapshotService> {
  const admin = async (ctx: HandlerContext) => {
    const who = await authenticate(deps.db, ctx.requestHeader.get("authorization"), deps.auth);
    requireRole(who, "admin");
    return who;
  };
  const connectedHost = async (hostId: string) => {
    if (!hostId) throw new InvalidArgumentError("host_id is required");
    checkText("host_id", hostId, MAX_HOST_ID);
    const host = await getHost(deps.db, hostId);
    if (!host) throw new NotFoundError(`host ${hostId} not found; list hosts with \`dumont host list\``);
    const session = deps.sessions.get(hostId);
    if (!session?.isOpen) {
      throw new FailedPreconditionError(
        `host ${hostId} is not connected (status ${host.status}); its agent reconnects by itself once it runs and ` +
          "reaches this control plane: `journalctl -u dumont-agent` on the host says why it does not",
      );
    }
    return { host, session };
  };
  const startSnapshot = async (
    req: api.CreateSnapshotRequest,
    ctx: HandlerContext,
    onProgress?: (p: TransferProgress) => void,
  ): Promise<() => Promise<SnapshotRow>> => {
    await admin(ctx);
    checkHostPath("path", req.path);
    checkWorkspaceId(req.workspaceId);
    const exclude = checked(() => checkExcludePatterns(req.exclude, "exclude"));
    const { host, session } = await connectedHost(req.hostId);
    if (exclude.length > 0) session.require(AGENT_CAPABILITIES.snapshotExclude, "leave out what --exclude names");
    const path = plainHostPath(req.path);
    return () =>
      deps.snapshots.snapshot({
        session,
        tenantId: host.tenant_id,
        path,
        workspaceId: req.workspaceId || defaultWorkspaceId(host.id, path),
        exclude,
        // Epochs arrive with instance placement; an operator's snapshot of a bare directory uses 0.
        epoch: 0n,
        onProgress,
      });
  };
  const startRestore = async (
    req: api.RestoreSnapshotRequest,
    ctx: HandlerContext,
    onProgress?: (p: TransferProgress) => void,
  ): Promise<() => Promise<api.RestoreSnapshotResponse>> => {
    const who = await admin(ctx);
    if (!req.snapshotId) throw new InvalidArgumentError("snapshot_id is required");
    checkHostPath("target", req.target);
    const include = checked(() => checkPathPatterns(req.include, "include"));
    const [snapshot] = await resolveSnapshotIds(deps.db, [req.snapshotId], tenantScope(who), "snapshot_id");
    const { host, session } = await connectedHost(req.hostId);
    // The agent is given the snapshot tenant's key to open it: only a host of that tenant may have it.
    if (host.tenant_id !== snapshot.tenant_id) {
      throw new FailedPreconditionError(
        `snapshot ${snapshot.id} belongs to tenant ${snapshot.tenant_id} and host ${host.id} to tenant ` +
          `${host.tenant_id}: restoring it there would hand that host the other tenant's key; choose a host of ` +
          `tenant ${snapshot.tenant_id}`,
      );
    }
    if (include.length > 0) session.require(AGENT_CAPABILITIES.restoreInclude, "restore only what --include names");
    if (req.noOwners)
      session.require(AGENT_CAPABILITIES.restoreNoOwners, "leave the recorded owners out (--no-owners)");
    return async () => {
      const result = await deps.snapshots.restore({
        session,
        snapshot,
        target: req.target,
        include,
        noOwners: req.noOwners,
        onProgress,
      });
      return create(api.RestoreSnapshotResponseSchema, {
        snapshotId: snapshot.id,
        files: BigInt(result.files),
        bytesWritten: BigInt(result.bytesWritten),
        seconds: result.seconds,
        warnings: result.warnings,
      });
    };
  };
  return {
    async createSnapshot(req, ctx) {
      const row = await (await startSnapshot(req, ctx))();
      return create(api.CreateSnapshotResponseSchema, { snapshot: toApi(row) });
    },

    async *createSnapshotStream(req, ctx) {
      for await (const event of withProgress((report) => startSnapshot(req, ctx, report))) {
        yield create(api.CreateSnapshotEventSchema, {
          event: "result" in event ? { case: "snapshot", value: toApi(event.result) } : progressEvent(event.progress),
        });
      }
    },

    async listSnapshots(req, ctx) {
      const who = await admin(ctx);
      checkText("host_id", req.hostId, MAX_HOST_ID);
      checkWorkspaceId(req.workspaceId);
      const rows = await listSnapshots(deps.db, {
        ...listScope(who, req.tenantId, "snapshots"),
        hostId: req.hostId,
        workspaceId: req.workspaceId,
      });
      // A mistyped host id would list nothing, as a host without snapshots does: say which it is.
      if (rows.length === 0 && req.hostId && !(await getHost(deps.db, req.hostId, tenantScope(who))))
        throw new NotFoundError(`host ${req.hostId} not found; list hosts with \`dumont host list\``);
      // A mistyped tenant id too, as forget says it.
      if (rows.length === 0 && req.tenantId && !(await tenantExists(deps.db, req.tenantId))) {
        throw noSuchTenant(req.tenantId);
      }
      return create(api.ListSnapshotsResponseSchema, { snapshots: rows.map(toApi) });
    },

    async restoreSnapshot(req, ctx) {
      return (await startRestore(req, ctx))();
    },

    async *restoreSnapshotStream(req, ctx) {
      for await (const event of withProgress((report) => startRestore(req, ctx, report))) {
        yield create(api.RestoreSnapshotEventSchema, {
          event: "result" in event ? { case: "done", value: event.result } : progressEvent(event.progress),
        });
      }
    },

    async forgetSnapshots(req, ctx) {
      const who = await admin(ctx);
      checkWorkspaceId(req.workspaceId);
      const policy = { last: req.keepLast, hourly: req.keepHourly, daily: req.keepDaily, weekly: req.keepWeekly };
      const byId = req.snapshotIds.length > 0;
      if (byId && (hasRetentionRule(policy) || req.workspaceId)) {
        throw new InvalidArgumentError(
          "snapshot_ids name the snapshots to forget: give no keep_* or workspace_id with them",
        );
      }
      if (!byId && !hasRetentionRule(policy) && !req.prune) {
        throw new InvalidArgumentError(
          "say what to keep: keep_last (or keep_hourly, keep_daily, keep_weekly) above 0, or snapshot_ids, and/or prune",
        );
      }
      if (req.workspaceId && !hasRetentionRule(policy)) {
        // Not ignored: a prune alone covers whole repositories (every tenant's with that workspace).
        throw new InvalidArgumentError(
          "workspace_id narrows a keep_* policy: give one with it (a prune covers the whole repository)",
        );
      }
      // Each tenant's snapshots live in its own repository; an admin's request covers every tenant in scope
      // (tenant_id narrows it to one).
      const scope = listScope(who, req.tenantId, "snapshots");
      const work = new Map<string, string[] | undefined>();
      if (byId) {
        for (const row of await resolveSnapshotIds(deps.db, req.snapshotIds, scope)) {
          work.set(row.tenant_id, [...(work.get(row.tenant_id) ?? []), row.id]);
        }
      } else if (!hasRetentionRule(policy)) {
        // A prune alone covers every repository in scope, one whose snapshots were all forgotten too.
        for (const tenantId of await repositoryTenants(deps.db, scope)) work.set(tenantId, undefined);
      } else {
        const tenants = await snapshotTenants(deps.db, { ...scope, workspaceId: req.workspaceId });
        // A workspace no snapshot is of is a typo far more often than a policy with nothing to do: say so.
        if (req.workspaceId && tenants.length === 0) {
          throw new NotFoundError(
            `no snapshot${req.tenantId ? ` of tenant ${shown(req.tenantId)}` : ""} is of workspace ` +
              `${shown(req.workspaceId)}; \`dumont snapshot list\` shows each one's workspace`,
          );
        }
        // Workspace ids are free text: two tenants may each have a "train". A policy meant for one must not
        // forget the other's snapshots, so which tenant is asked where it could be either.
        if (req.workspaceId && !req.tenantId && tenants.length > 1) {
          throw new InvalidArgumentError(
            `workspace ${shown(req.workspaceId)} has snapshots in ${tenants.length} tenants (${tenants.join(", ")}): ` +
              "give tenant_id (`--tenant`) to say whose",
          );
        }
        for (const tenantId of tenants) work.set(tenantId, undefined);
      }
      // A tenant with nothing to forget is a policy with nothing to do; one that does not exist is a typo, which
      // answered "forgot 0" and left retention undone.
      if (!byId && req.tenantId && work.size === 0 && !(await tenantExists(deps.db, req.tenantId))) {
        throw noSuchTenant(req.tenantId);
      }
      const out = create(api.ForgetSnapshotsResponseSchema, {});
      if (req.prune) out.prune = create(api.PruneReportSchema, {});
      for (const [tenantId, ids] of work) {
        const result = await deps.snapshots.forget({
          tenantId,
          policy,
          ids,
          workspace: req.workspaceId || undefined,
          prune: req.prune,
          dryRun: req.dryRun,
        });
        out.kept.push(...result.kept);
        out.forgotten.push(...result.forgotten);
        if (out.prune && result.prune) {
          out.prune.packsDeleted += BigInt(result.prune.packsDeleted);
          out.prune.packsRepacked += BigInt(result.prune.packsRepacked);
          out.prune.orphanPacksDeleted += BigInt(result.prune.orphanPacksDeleted);
          out.prune.bytesFreed += BigInt(result.prune.bytesFreed);
        }
      }
      return out;
    },

    async *checkSnapshots(req, ctx) {
      // The caller first: one with no key learns nothing of the request's fields.
      const who = await admin(ctx);
      const readSubset = readSubsetOf(req);
      const tenants = await repositoryTenants(deps.db, listScope(who, req.tenantId, "snapshots"));
      if (req.tenantId !== "" && tenants.length === 0) {
        if (!(await tenantExists(deps.db, req.tenantId))) throw noSuchTenant(req.tenantId);
        // As repair-index: "no problems" of a repository that is not there would say it was checked.
        throw noRepository(req.tenantId, "there is nothing of it to check");
      }
      const start = async (report: (p: TransferProgress) => void) => {
        return () => checkTenants(deps.snapshots, tenants, { readData: !req.structureOnly, readSubset }, report);
      };
      for await (const event of withProgress(start)) {
        yield create(api.CheckSnapshotsEventSchema, {
          event: "result" in event ? { case: "report", value: event.result } : progressEvent(event.progress),
        });
      }
    },

    async repairIndex(req, ctx) {
      const who = await admin(ctx);
      const tenants = await repositoryTenants(deps.db, listScope(who, req.tenantId, "snapshots"));
      if (req.tenantId !== "" && tenants.length === 0) {
        if (!(await tenantExists(deps.db, req.tenantId))) throw noSuchTenant(req.tenantId);
        throw noRepository(req.tenantId, "there is no index of it to repair");
      }
      // What a repair changes is logged.
      const repaired = await eachTenant(ctx, tenants, async (tenantId) => {
        const report = await deps.snapshots.repairIndex(tenantId, { dryRun: req.dryRun, signal: ctx.signal });
        return { ...report, packs: BigInt(report.packs) };
      });
      return create(api.RepairIndexResponseSchema, {
        tenants: repaired.map((t) => create(api.TenantIndexRepairSchema, t)),
      });
    },

    async repairPacks(req, ctx) {
      const who = await admin(ctx);
      const packs = checkPackIds(req.packs, req.tenantId);
      const tenants = await repositoryTenants(deps.db, listScope(who, req.tenantId, "snapshots"));
      if (req.tenantId !== "" && tenants.length === 0) {
        if (!(await tenantExists(deps.db, req.tenantId))) throw noSuchTenant(req.tenantId);
        throw noRepository(req.tenantId, "there are no packs of it to repair");
      }
      // What a repair changes is logged. Packs named are one tenant's: one its repository does not hold is the
      // request's error (NOT_FOUND), not the tenant's.
      const repaired = await eachTenant(
        ctx,
        tenants,
        async (tenantId) => {
          const report = await deps.snapshots.repairPacks(tenantId, { dryRun: req.dryRun, packs, signal: ctx.signal });
          return {
            ...report,
            packs: BigInt(report.packs),
            packsRead: BigInt(report.packsRead),
            repaired: report.repaired.map((p) => ({ ...p, salvaged: BigInt(p.salvaged) })),
          };
        },
        packs.length > 0 ? [Code.NotFound, Code.InvalidArgument] : [],
      );
      return create(api.RepairPacksResponseSchema, {
        tenants: repaired.map((t) => create(api.TenantPackRepairSchema, t)),
      });
    },

    async repairSnapshots(req, ctx) {
      const who = await admin(ctx);
      const scope = listScope(who, req.tenantId, "snapshots");
      // Snapshots named are looked up in the catalogue (within the tenant named, if one is), all before any is
      // repaired, and each is repaired in its own tenant's repository: the ids decide the tenants. One in no tenant
      // is NOT_FOUND by its id. Uncatalogued snapshots cannot be named (relisting lists them), as for a forget.
      const work = new Map<string, string[] | undefined>();
      if (req.snapshotIds.length > 0) {
        if (req.snapshotIds.length > MAX_REPAIR_SNAPSHOT_IDS) {
          throw new InvalidArgumentError(
            `snapshot_ids names ${req.snapshotIds.length} snapshots; at most ${MAX_REPAIR_SNAPSHOT_IDS} at once ` +
              "(or none: every snapshot)",
          );
        }
        for (const row of await resolveSnapshotIds(deps.db, req.snapshotIds, scope)) {
          work.set(row.tenant_id, [...(work.get(row.tenant_id) ?? []), row.id]);
        }
      } else {
        for (const tenantId of await repositoryTenants(deps.db, scope)) work.set(tenantId, undefined);
        if (req.tenantId !== "" && work.size === 0) {
          if (!(await tenantExists(deps.db, req.tenantId))) throw noSuchTenant(req.tenantId);
          throw noRepository(req.tenantId, "there are no snapshots of it to repair");
        }
      }
      // What a repair changes is logged. A snapshot named that its repository no longer holds (forgotten since the
      // catalogue was read) is its tenant's error, not the request's: the other tenants' repairs are answered.
      const repaired = await eachTenant(ctx, [...work.keys()], async (tenantId) => {
        const report = await deps.snapshots.repairSnapshots(tenantId, {
          dryRun: req.dryRun,
          forget: req.forget,
          ids: work.get(tenantId),
          signal: ctx.signal,
        });
        return {
          snapshots: BigInt(report.snapshots),
          repaired: report.repaired.map((r) => ({
            snapshotId: r.snapshot,
            workspaceId: r.workspace,
            time: r.time,
            repairedId: r.repaired ?? "",
            forgotten: r.forgotten,
            reused: r.reused,
            filesRemoved: BigInt(r.filesRemoved),
            bytesRemoved: BigInt(r.bytesRemoved),
            removed: r.removed,
          })),
          unrepairable: report.unrepairable.map((u) => ({ snapshotId: u.snapshot, message: u.message })),
        };
      });
      return create(api.RepairSnapshotsResponseSchema, {
        tenants: repaired.map((t) => create(api.TenantSnapshotRepairSchema, t)),
      });
    },

    async getSnapshotStats(req, ctx) {
      const who = await admin(ctx);
      const tenants = await repositoryTenants(deps.db, listScope(who, req.tenantId, "snapshots"));
      if (req.tenantId !== "" && tenants.length === 0) {
        if (!(await tenantExists(deps.db, req.tenantId))) throw noSuchTenant(req.tenantId);
        throw noRepository(req.tenantId, "there are no snapshots of it to count");
      }
      const stats = await eachTenant(ctx, tenants, async (tenantId) => {
        const s = await deps.snapshots.stats(tenantId);
        return {
          snapshots: BigInt(s.snapshots),
          files: BigInt(s.files),
          bytes: BigInt(s.bytes),
          chunks: BigInt(s.chunks),
          chunkBytes: BigInt(s.chunkBytes),
          packs: BigInt(s.packs),
          packBytes: BigInt(s.packBytes),
          unreadableSnapshots: s.unreadableSnapshots,
        };
      });
      return create(api.GetSnapshotStatsResponseSchema, {
        tenants: stats.map((t) => create(api.TenantSnapshotStatsSchema, t)),
      });
    },

    async *diffSnapshots(req, ctx) {
      const who = await admin(ctx);
      const [before, after] = await Promise.all(
        [
          ["before_id", req.beforeId],
          ["after_id", req.afterId],
        ].map(async ([field, id]) => {
          const [row] = await resolveSnapshotIds(deps.db, [id], tenantScope(who), field);
          return row;
        }),
      );
      if (before.tenant_id !== after.tenant_id) {
        throw new InvalidArgumentError(
          "before_id and after_id are snapshots of different tenants: compare one tenant's",
        );
      }
      const { changes, summary } = diffManifests(
        await deps.snapshots.readManifest(before),
        await deps.snapshots.readManifest(after),
      );
      for (let i = 0; i === 0 || i < changes.length; i += FILES_PER_MESSAGE) {
        const last = i + FILES_PER_MESSAGE >= changes.length;
        yield create(api.DiffSnapshotsResponseSchema, {
          changes: changes.slice(i, i + FILES_PER_MESSAGE).map((c) => ({
            path: c.path,
            change: c.change,
            sizeBefore: BigInt(c.sizeBefore),
            sizeAfter: BigInt(c.sizeAfter),
          })),
          summary: last
            ? {
                added: BigInt(summary.added),
                removed: BigInt(summary.removed),
                modified: BigInt(summary.modified),
                metadata: BigInt(summary.metadata),
                type: BigInt(summary.type),
                bytesAdded: BigInt(summary.bytesAdded),
                bytesRemoved: BigInt(summary.bytesRemoved),
              }
            : undefined,
        });
      }
    },

    async *listSnapshotFiles(req, ctx) {
      const who = await admin(ctx);
      if (!req.snapshotId) throw new InvalidArgumentError("snapshot_id is required");
      const include = checked(() => checkPathPatterns(req.include, "include"));
      const [snapshot] = await resolveSnapshotIds(deps.db, [req.snapshotId], tenantScope(who), "snapshot_id");
      const { entries } = await deps.snapshots.readManifest(snapshot);
      const listed = selectIncluded(entries, include);
      // What a restore with these patterns would write: nothing is that restore's error (the agent's, answered
      // FAILED_PRECONDITION), so it is this listing's too, in the same words and with the same code.
      if (include.length > 0 && listed.length === 0)
        throw new FailedPreconditionError(nothingIncluded(snapshot.id, include).message);
      for (let i = 0; i < listed.length; i += FILES_PER_MESSAGE) {
        yield create(api.ListSnapshotFilesResponseSchema, {
          files: listed.slice(i, i + FILES_PER_MESSAGE).map(toApiFile),
        });
      }
    },
  };
}

/** The catalogue rows that snapshot ids or prefixes name, one each, all checked before any is used. */
async function resolveSnapshotIds(
  db: Db,
  ids: string[],
  scope: { tenantId?: string },
  field = "snapshot_ids",
): Promise<SnapshotRow[]> {
  // Every id's form first: a malformed one is the request's error wherever it stands, not NOT_FOUND for one before it.
  for (const [i, raw] of ids.entries()) {
    if (!/^[0-9a-f]{4,64}$/.test(raw.toLowerCase())) {
      const name = field === "snapshot_ids" ? `${field}[${i}]` : field;
      throw new InvalidArgumentError(
        `${name} must be a snapshot id or a prefix of 4 to 64 hex characters, got ${shown(raw)}`,
      );
    }
  }
  const rows = new Map<string, SnapshotRow>();
  for (const raw of ids) {
    const prefix = raw.toLowerCase();
    const found = await findSnapshotsByPrefix(db, prefix, scope);
    if (found.length === 0) {
      throw new NotFoundError(`snapshot ${raw} not found; list them with \`dumont snapshot list\``);
    }
    if (found.length > 1)
      throw new InvalidArgumentError(`snapshot id prefix ${raw} is ambiguous; give more characters`);
    rows.set(found[0].id, found[0]);
  }
  return [...rows.values()];
}

/** read_data_subset parsed (undefined when empty), or INVALID_ARGUMENT naming the field and what to give. */
function readSubsetOf(req: api.CheckSnapshotsRequest): ReadSubset | undefined {
  if (req.readDataSubset === "") return undefined;
  checkText("read_data_subset", req.readDataSubset, 16);
  try {
    return readSubsetOption(req.readDataSubset, req.structureOnly, {
      subset: "read_data_subset",
      structureOnly: "structure_only",
    });
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** NOT_FOUND for a tenant id that names no tenant: a typo, which would otherwise answer an empty list or "forgot 0". */
/** NOT_FOUND for a tenant named that has no repository: `nothing` says what there is none of, then. */
function noRepository(tenantId: string, nothing: string): NotFoundError {
  return new NotFoundError(`tenant ${shown(tenantId)} has no repository (it never took a snapshot): ${nothing}`);
}

/**
 * `work` for each tenant in turn, each on its own: one busy, or whose store does not answer, is answered with its
 * reason (`error`) and the others are done all the same. A caller gone stops it before the next tenant; an error no
 * handler meant (a bug) fails the call as "internal error", logged, as in every call; so does one of the codes
 * `failing` lists (the request's error, not the tenant's).
 */
async function eachTenant<T extends object>(
  ctx: HandlerContext,
  tenants: string[],
  work: (tenantId: string) => Promise<T>,
  failing: readonly Code[] = [],
): Promise<({ tenantId: string } & (T | { error: string }))[]> {
  const out: ({ tenantId: string } & (T | { error: string }))[] = [];
  for (const tenantId of tenants) {
    ctx.signal.throwIfAborted();
    try {
      out.push({ tenantId, ...(await work(tenantId)) });
    } catch (err) {
      if (!(err instanceof ConnectError) || failing.includes(err.code)) throw err;
      out.push({ tenantId, error: err.rawMessage });
    }
  }
  return out;
}

/** The most snapshot ids one RepairSnapshots request names. */
const MAX_REPAIR_SNAPSHOT_IDS = 1000;

/** The most pack ids one RepairPacks request names: `dumont snapshot check` names them a few at a time. */
const MAX_PACK_IDS = 1000;

/**
 * RepairPacksRequest.packs checked: each an id or a prefix of 8 to 64 hex characters, at most MAX_PACK_IDS, and only
 * with the tenant whose repository holds them.
 */
function checkPackIds(packs: string[], tenantId: string): string[] {
  if (packs.length === 0) return packs;
  if (tenantId === "") {
    throw new InvalidArgumentError("packs: pack ids belong to one tenant's repository; give tenant_id (--tenant)");
  }
  if (packs.length > MAX_PACK_IDS) {
    throw new InvalidArgumentError(
      `packs names ${packs.length} packs; at most ${MAX_PACK_IDS} at once (or none: every pack of the tenant)`,
    );
  }
  for (const [i, id] of packs.entries()) {
    if (!PACK_ID_OR_PREFIX.test(id)) {
      throw new InvalidArgumentError(
        `packs[${i}] must be a pack id or a prefix of 8 to 64 hex characters (\`dumont snapshot check\` names ` +
          `the damaged ones), got ${shown(id)}`,
      );
    }
  }
  return packs;
}

const PACK_ID_OR_PREFIX = /^[0-9a-fA-F]{8,64}$/;

/**
 * Checks each tenant's repository in turn; one report, each problem naming its tenant. A tenant whose check cannot
 * run (its store unavailable, a prune holding it) is a problem of the report ("check-failed") and the others are
 * still checked; when none could be checked, the first failure is the answer, with its own code.
 */
export async function checkTenants(
  snapshots: SnapshotCoordinator,
  tenants: string[],
  reading: { readData: boolean; readSubset: ReadSubset | undefined },
  report: (p: TransferProgress) => void,
): Promise<api.CheckReport> {
  const out = create(api.CheckReportSchema, { ok: true });
  // Bytes of the tenants already checked; each tenant's total is known once its check has listed its packs.
  let before = 0;
  let firstFailure: unknown;
  let checked = 0;
  for (const tenantId of tenants) {
    let r: Awaited<ReturnType<SnapshotCoordinator["check"]>>;
    try {
      r = await snapshots.check(tenantId, {
        ...reading,
        onProgress: (p) => report({ bytesDone: before + p.bytesDone, bytesTotal: before + p.bytesTotal }),
      });
    } catch (err) {
      firstFailure ??= err;
      out.ok = false;
      // What an API error would say; an unexpected error's text stays in the control plane's log (check logs it).
      const reason = err instanceof ConnectError ? err.rawMessage : "internal error; the control plane's log has it";
      out.problems.push(
        create(api.CheckProblemSchema, {
          tenantId,
          kind: "check-failed",
          message: `tenant ${tenantId}: the check could not run: ${reason}`,
        }),
      );
      continue;
    }
    checked++;
    before += r.bytesChecked;
    out.ok &&= r.ok;
    out.snapshots += BigInt(r.snapshots);
    out.packs += BigInt(r.packs);
    out.packsRead += BigInt(r.packsRead);
    out.chunks += BigInt(r.chunks);
    out.bytesChecked += BigInt(r.bytesChecked);
    for (const p of r.problems) {
      out.problems.push(
        create(api.CheckProblemSchema, {
          tenantId,
          kind: p.kind,
          message: `tenant ${tenantId}: ${p.message}`,
          pack: p.pack ?? "",
          chunk: p.chunk ?? "",
          snapshotId: p.snapshot ?? "",
          files: (p.files ?? []).map((f) => ({ snapshotId: f.snapshot, path: f.path })),
          filesNotNamed: BigInt(p.filesNotNamed ?? 0),
          wholeIn: p.wholeIn ?? "",
        }),
      );
    }
  }
  if (checked === 0 && firstFailure !== undefined) throw firstFailure;
  return out;
}

/** Entries per ListSnapshotFiles message: well under a megabyte with long paths. */
const FILES_PER_MESSAGE = 1000;

const FILE_TYPES = {
  file: api.SnapshotFile_Type.FILE,
  dir: api.SnapshotFile_Type.DIR,
  symlink: api.SnapshotFile_Type.SYMLINK,
} as const;

function toApiFile(e: ManifestEntry): api.SnapshotFile {
  const ns = BigInt(e.mtimeNs);
  const below = ns % 1_000_000_000n < 0n ? 1n : 0n; // a time before 1970: nanos stay 0..999,999,999
  return create(api.SnapshotFileSchema, {
    path: e.path,
    type: FILE_TYPES[e.type],
    mode: e.mode,
    size: e.type === "file" ? BigInt(e.size) : 0n,
    mtime: {
      seconds: ns / 1_000_000_000n - below,
      nanos: Number((ns % 1_000_000_000n) + below * 1_000_000_000n),
    },
    target: e.type === "symlink" ? e.target : "",
    uid: e.uid,
    gid: e.gid,
  });
}

function progressEvent(p: TransferProgress) {
  return {
    case: "progress" as const,
    value: create(api.TransferProgressSchema, { bytesDone: BigInt(p.bytesDone), bytesTotal: BigInt(p.bytesTotal) }),
  };
}

/**
 * Checks and starts an operation (`start` throws for bad requests before anything runs), then yields its
 * progress as it comes and its result last. Only the newest progress is kept, so a slow reader never
 * queues up stale ones. The operation runs to its end even if the caller goes away.
 */
async function* withProgress<T>(
  start: (report: (p: TransferProgress) => void) => Promise<() => Promise<T>>,
): AsyncGenerator<{ progress: TransferProgress } | { result: T }> {
  let latest: TransferProgress | undefined;
  let wake: (() => void) | undefined;
  let settled = false;
  const run = await start((p) => {
    latest = p;
    wake?.();
  });
  const operation = run();
  operation.then(
    () => {
      settled = true;
      wake?.();
    },
    () => {
      settled = true;
      wake?.();
    },
  );
  for (;;) {
    if (latest) {
      const progress = latest;
      latest = undefined;
      yield { progress };
      continue;
    }
    if (settled) break;
    await new Promise<void>((resolve) => {
      wake = resolve;
    });
    wake = undefined;
  }
  yield { result: await operation };
}

function toApi(r: SnapshotRow): api.Snapshot {
  return create(api.SnapshotSchema, {
    id: r.id,
    tenantId: r.tenant_id,
    hostId: r.host_id,
    workspaceId: r.workspace_id,
    path: r.path,
    epoch: BigInt(r.epoch),
    createdAt: timestampFromDate(r.created_at),
    files: BigInt(r.files),
    bytesRead: BigInt(r.bytes_read),
    bytesNew: BigInt(r.bytes_new),
    bytesStored: BigInt(r.bytes_stored),
    bytesTotal: r.bytes_total === null ? undefined : BigInt(r.bytes_total),
    chunksNew: BigInt(r.chunks_new),
    seconds: r.seconds,
    filesSkipped: BigInt(r.files_skipped),
    skipped: r.skipped,
    repairedFrom: r.repaired_from ?? "",
  });
}

/** Longest directory path on a host taken (Linux's PATH_MAX, in bytes). */
const MAX_HOST_PATH = 4096;
/**
 * Longest workspace id taken, in bytes: the catalogue indexes it (with the tenant and time), and a btree row of
 * Postgres holds at most 2,704 bytes; longer, the snapshot was stored whole and its catalogue row then refused.
 */
const MAX_WORKSPACE_ID_BYTES = 1024;

function checkWorkspaceId(value: string): void {
  if (value.includes("\0") || Buffer.byteLength(value) > MAX_WORKSPACE_ID_BYTES) {
    throw new InvalidArgumentError(
      `workspace_id must be at most ${MAX_WORKSPACE_ID_BYTES} bytes with no NUL (the default is ` +
        `"<host_id>:<path>"), got ${shown(value)}`,
    );
  }
}

/**
 * A snapshot's workspace when the request names none: "<host_id>:<path>", or, for a path too long for that,
 * "<host_id>:sha256:<the path's SHA-256>" (the same path always gives the same id, so retention still groups).
 */
export function defaultWorkspaceId(hostId: string, path: string): string {
  const plain = `${hostId}:${path}`;
  if (Buffer.byteLength(plain) <= MAX_WORKSPACE_ID_BYTES) return plain;
  return `${hostId}:sha256:${createHash("sha256").update(path).digest("hex")}`;
}

/**
 * An absolute path written plainly: "/w/d", "/w/d/", "//w/./d" and "/w/x/../d" are one directory, so one default
 * workspace (retention counted their snapshots apart). Resolved by its text, ".." included, as the agent resolves
 * the path it reads (path.resolve): the workspace is named by the directory read.
 */
export function plainHostPath(path: string): string {
  return posix.resolve(path);
}

/** A request's absolute path on a host: a NUL could not reach the agent's filesystem, nor a longer one. */
function checkHostPath(field: string, value: string): void {
  if (!value.startsWith("/") || value.includes("\0") || Buffer.byteLength(value) > MAX_HOST_PATH) {
    throw new InvalidArgumentError(
      `${field} must be an absolute path on the host (no NUL, at most ${MAX_HOST_PATH} bytes), got ${shown(value)}`,
    );
  }
}

/** What `check` returns: request patterns it checked; its error (naming the field) as INVALID_ARGUMENT. */
function checked(check: () => string[]): string[] {
  try {
    return check();
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}
