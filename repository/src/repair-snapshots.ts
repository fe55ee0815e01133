// repair-snapshots: replaces each snapshot some of whose files' data is gone for good with one that leaves those
// files out. What restic calls `repair snapshots`: the last step after `check`, `repair-index` and `repair-packs`,
// for data no workspace still has (a snapshot of a workspace that still has the bytes stores them again and heals
// every snapshot using them, which is better; this is for the old snapshots whose files nothing can bring back).
//
// Decided:
// - A file is gone when a chunk of it is in no index, or only in packs the store no longer has. The repair trusts
//   the index for the rest: a chunk that is indexed but damaged is `check`'s to find and `repair-packs`' to take
//   out of the index, after which it counts as gone here. So the order is restic's: check, repair-index,
//   repair-packs, (snapshot again what can be), then this.
// - Such a file is left out whole, not cut short or filled with zeros: a checkpoint or a table with bytes missing
//   in the middle reads as whole and is not, which is worse than a file that is not there. Its hard links go with
//   it; the report names each (the first MAX_REMOVED_LISTED a snapshot; `snapshot diff OLD NEW` lists them all).
// - The repaired snapshot keeps the damaged one's time, workspace, epoch, tenant, host, source and stats, so that
//   retention treats it as the snapshot it replaces, and records `repairedFrom` (its id). The damaged one is
//   forgotten only with `forget`, once the repaired one is committed: a crash between the two leaves both, and
//   running the repair again finds the repair already there and does not write another. A repair is found by what
//   it holds (the same tenant, workspace, time, epoch and manifest parts, which seal deterministically), not by
//   `repairedFrom` alone: a repair made before more data was lost, or before a snapshot stored some of it again,
//   is not the one to make now (it is repaired in its own turn, or left beside the new one).
// - Parts of the manifest with nothing removed are the same objects again (named by id), so a repair writes only
//   the parts that changed and a record. The commit is a writer's commit, which checks every chunk the new
//   manifest names against the index and every path, as for any snapshot.
// - It holds the repository to itself (an exclusive lock, as repair-packs; a dry run: shared), so no snapshot can
//   commit beside it and no index changes under it. An index object that does not open stops it (which chunks it
//   held cannot be told: repair-index first), and so does a chunk a snapshot needs that is gone while packs
//   without index objects are there (those may hold it: repair-index indexes them), as prune does.

import { counted } from "./counted.js";
import { isObjectError, RepositoryError } from "./errors.js";
import { type HeldLock, withLock } from "./lock.js";
import type { ManifestEntry, ManifestRoot } from "./manifest.js";
import { manifestPartEntries, sealManifestParts } from "./manifest.js";
import { listPacks } from "./pack.js";
import { MAX_REMOVED_LISTED, type RepairedSnapshot, type RepairSnapshotsReport } from "./repair-snapshots-report.js";
import type { Repository } from "./repository.js";
import type { RepositoryIndex } from "./repository-index.js";
import { sha256 } from "./sealing.js";
import { type SnapshotRecord, snapshotKey } from "./snapshot-record.js";
import type { ManifestPartBlob } from "./transfer.js";

export interface RepairSnapshotsOptions {
  /** The snapshots to repair: ids, unique prefixes or `latest`. Default: every snapshot. */
  ids?: readonly string[];
  /** Forget each damaged snapshot once its repair is committed (restic's `--forget`). */
  forget?: boolean;
  /** Say what would be done, change nothing (holding a shared lock, as a check). */
  dryRun?: boolean;
  /** Stops the repair between snapshots: each it committed is whole, and running it again goes on. */
  signal?: AbortSignal;
  onProgress?: (progress: { snapshotsDone: number; snapshotsTotal: number }) => void;
  /** Called once a repaired snapshot is committed, before the damaged one is forgotten (the control plane lists it). */
  onRepaired?: (repaired: SnapshotRecord, damaged: SnapshotRecord) => Promise<void>;
  /** Called before a damaged snapshot's record is deleted (the control plane drops its row first, as forget does). */
  beforeDelete?: (snapshotId: string) => Promise<void>;
}

export async function repairSnapshots(
  repository: Repository,
  options: RepairSnapshotsOptions = {},
): Promise<RepairSnapshotsReport> {
  return withLock(
    repository.store,
    repository.key,
    {
      exclusive: options.dryRun !== true,
      purpose: options.dryRun ? "a snapshot repair's dry run" : "a snapshot repair",
    },
    (lock) => repair(repository, options, lock),
  );
}

async function repair(
  repository: Repository,
  options: RepairSnapshotsOptions,
  lock: HeldLock,
): Promise<RepairSnapshotsReport> {
  const { store } = repository;
  const report: RepairSnapshotsReport = { snapshots: 0, repaired: [], unrepairable: [] };
  const unreadable: string[] = [];
  // A name that is no id is no snapshot (check names it): neither repaired nor what `latest` might be.
  const all = await repository.listSnapshots({ onCorrupt: (id) => void unreadable.push(id) });
  const chosen = await chooseSnapshots(repository, all, unreadable, options.ids ?? []);
  for (const id of chosen.unreadable) {
    report.unrepairable.push({
      snapshot: id,
      message: "its record does not open, so what it holds cannot be told: forget it by id (`snapshot forget ID`)",
    });
  }

  const unreadableIndexes: string[] = [];
  const index = await repository.loadIndex({ onCorrupt: (key) => void unreadableIndexes.push(key) });
  if (unreadableIndexes.length > 0) {
    throw new RepositoryError(
      "corrupt",
      `${counted(unreadableIndexes.length, "index object")} ${unreadableIndexes.length === 1 ? "does" : "do"} not open ` +
        `(${unreadableIndexes.sort().slice(0, 3).join(", ")}${unreadableIndexes.length > 3 ? ", ..." : ""}), so which ` +
        "chunks are gone cannot be told: the repair changes nothing. Run `snapshot repair-index` first, then this again",
    );
  }
  const stored = await listPacks(store);
  const orphans = [...stored.keys()].filter((packId) => !index.packs.has(packId)).length;
  const gone = goneChunks(index, stored);
  // Repairs already there (a run cut short between its commit and its forget) and those this run makes, by what they
  // hold: parts seal deterministically, so a repair equal to the one planned has the very same manifest ids.
  const repairs = new Map<string, SnapshotRecord>();
  for (const s of all) if (s.repairedFrom !== undefined) repairs.set(sameSnapshot(s, s.manifests), s);

  report.snapshots = chosen.records.length + chosen.unreadable.length;
  let done = 0;
  for (const record of chosen.records) {
    options.signal?.throwIfAborted();
    const plan = await planRepair(repository, record, gone).catch((err: unknown) => {
      if (!isObjectError(err)) throw err;
      report.unrepairable.push({
        snapshot: record.id,
        message:
          `its manifest cannot be read (${(err as Error).message}), so which files it holds cannot be told: forget ` +
          "it by id (`snapshot forget ID`)",
      });
      return undefined;
    });
    options.onProgress?.({ snapshotsDone: ++done, snapshotsTotal: chosen.records.length });
    if (!plan) continue;
    if (orphans > 0) {
      // The first snapshot with data gone stops it: nothing has been written yet.
      throw new RepositoryError(
        "corrupt",
        `snapshot ${record.id} uses chunks that are gone (e.g. ${plan.entry.removed[0]?.reason}) while ` +
          `${counted(orphans, "pack")} ${orphans === 1 ? "has" : "have"} no index object: those packs may hold them, ` +
          "so the repair changes nothing. Run `snapshot repair-index` to index them, then this again",
      );
    }
    report.repaired.push(plan.entry);
    // A repair equal to this one is taken instead of writing another, once its parts are read back whole: the
    // damaged snapshot is never forgotten for a repair that does not open.
    const planned = sameSnapshot(record, plan.parts.map(partId));
    let repaired = repairs.get(planned);
    if (repaired && !(await manifestReadable(repository, repaired))) repaired = undefined;
    plan.entry.reused = repaired !== undefined;
    if (options.dryRun) {
      plan.entry.repaired = repaired?.id;
      plan.entry.forgotten = options.forget === true;
      continue;
    }
    if (!repaired) {
      const writer = await repository.writer({ heldLock: lock, index });
      const id = await writer.commit(plan.parts, {
        time: record.time,
        workspace: record.workspace,
        epoch: record.epoch,
        tenant: record.tenant,
        hostname: record.hostname,
        ...(record.source !== undefined ? { source: record.source } : {}),
        ...(record.stats ? { stats: record.stats } : {}),
        repairedFrom: record.id,
      });
      repaired = await repository.findSnapshot(id);
      repairs.set(planned, repaired);
    }
    plan.entry.repaired = repaired.id;
    await options.onRepaired?.(repaired, record);
    if (options.forget) {
      await lock.assertHeld();
      await options.beforeDelete?.(record.id);
      await store.delete(snapshotKey(record.id));
      await store.syncEntries?.([snapshotKey(record.id)]);
      // (A repair forgotten here is never taken after: it used data that is gone, so no plan has its parts.)
      plan.entry.forgotten = true;
    }
  }
  return report;
}

/**
 * What makes two records the same snapshot for a repair: tenant, workspace, time, epoch and manifest parts (host,
 * source and stats are the creator's word about it).
 */
function sameSnapshot(record: SnapshotRecord, manifests: readonly string[]): string {
  return JSON.stringify([record.tenant, record.workspace, record.time, record.epoch, manifests]);
}

function partId(part: ManifestPartBlob): string {
  return Buffer.isBuffer(part) ? sha256(part).toString("hex") : part.stored;
}

/** Whether every part of `record`'s manifest is there and hashes to its id. */
async function manifestReadable(repository: Repository, record: SnapshotRecord): Promise<boolean> {
  try {
    await repository.readManifestBlobs(record);
    return true;
  } catch (err) {
    if (isObjectError(err)) return false;
    throw err;
  }
}

/** The records `ids` name (every one without), and those of them whose record does not open. */
async function chooseSnapshots(
  repository: Repository,
  all: readonly SnapshotRecord[],
  unreadable: readonly string[],
  ids: readonly string[],
): Promise<{ records: SnapshotRecord[]; unreadable: string[] }> {
  if (ids.length === 0) return { records: [...all], unreadable: [...unreadable].sort() };
  const named = await repository.resolveSnapshotIds(ids, all, unreadable, "repair");
  return {
    records: all.filter((s) => named.has(s.id)),
    unreadable: unreadable.filter((id) => named.has(id)).sort(),
  };
}

/**
 * Why chunk `id` (hex) is gone, or undefined while a copy of it is indexed in a pack the store has. Each chunk is
 * judged once: a chunk in many files, or many snapshots, is looked up once.
 */
function goneChunks(index: RepositoryIndex, stored: ReadonlyMap<string, unknown>): (id: string) => string | undefined {
  const judged = new Map<string, string | undefined>();
  return (id) => {
    if (judged.has(id)) return judged.get(id);
    const packs = index.locations(id).map((l) => l.packId);
    const reason =
      packs.length === 0
        ? `chunk ${id.slice(0, 12)} is in no index`
        : packs.some((p) => stored.has(p))
          ? undefined
          : `chunk ${id.slice(0, 12)} is in pack ${packs[0].slice(0, 12)}, which the store no longer has`;
    // Only what is gone is kept: a snapshot's whole chunks would otherwise all be held here.
    if (reason !== undefined) judged.set(id, reason);
    return reason;
  };
}

function firstGone(chunks: readonly string[], gone: (id: string) => string | undefined): string | undefined {
  for (const id of chunks) {
    const reason = gone(id);
    if (reason !== undefined) return reason;
  }
  return undefined;
}

/**
 * The snapshot's manifest without the files whose data is gone, as the parts a commit takes (unchanged parts by
 * id), with the report's entry; undefined when nothing of it is gone.
 */
async function planRepair(
  repository: Repository,
  record: SnapshotRecord,
  gone: (id: string) => string | undefined,
): Promise<{ parts: ManifestPartBlob[]; entry: RepairedSnapshot } | undefined> {
  const blobs = await repository.readManifestBlobs(record);
  let root: ManifestRoot | undefined;
  const entry: RepairedSnapshot = {
    snapshot: record.id,
    workspace: record.workspace,
    time: record.time,
    reused: false,
    forgotten: false,
    filesRemoved: 0,
    bytesRemoved: 0,
    removed: [],
  };
  const removedPaths = new Set<string>();
  const parts: ManifestPartBlob[] = [];
  const what = `manifest of snapshot ${record.id}`;
  let i = 0;
  for (const entries of manifestPartEntries(repository.key, blobs, what, (r) => (root = r))) {
    const kept: ManifestEntry[] = [];
    let changed = false;
    for (const e of entries) {
      if (e.type !== "file") {
        kept.push(e);
        continue;
      }
      const reason = firstGone(e.chunks, gone);
      if (reason === undefined && e.linkOf !== undefined && removedPaths.has(e.linkOf)) {
        // A hard link whose chunks are whole while the file it names is left out: written from its own chunks.
        const { linkOf: _linkOf, ...own } = e;
        kept.push(own);
        changed = true;
        continue;
      }
      if (reason === undefined) {
        kept.push(e);
        continue;
      }
      changed = true;
      removedPaths.add(e.path);
      entry.filesRemoved++;
      entry.bytesRemoved += e.size;
      if (entry.removed.length < MAX_REMOVED_LISTED) entry.removed.push({ path: e.path, reason });
    }
    if (!changed) parts.push({ stored: record.manifests[i] });
    // A part left empty goes, but the first, which holds the snapshot's root (its mode, time and owner).
    else if (kept.length > 0 || i === 0) {
      parts.push(
        sealManifestParts(repository.key, kept, {
          partBytes: Number.POSITIVE_INFINITY,
          root: i === 0 ? root : undefined,
        })[0],
      );
    }
    i++;
  }
  return entry.filesRemoved > 0 ? { parts, entry } : undefined;
}
