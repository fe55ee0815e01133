// The snapshots catalogue's rows (the database's index of every tenant's repository), as a commit, a relisting and a
// repair make them, and the checks of what an agent's SnapshotCommit says it left out before those go in a row.
import type { SnapshotStats } from "@dumont/proto";
import {
  MAX_SKIPPED_LISTED,
  MAX_SKIPPED_REASON,
  type SnapshotStats as RecordStats,
  type SkippedEntry,
  type SnapshotRecord,
} from "@dumont/repository";
import { sql } from "kysely";
import { InvalidArgumentError } from "../errors.js";

/**
 * A snapshot's catalogue row: where it came from and its creator's stats, as the repository's record has them
 * (a commit's row and one listed again from the record are the same row).
 */
export function catalogueRow(s: {
  id: string;
  tenantId: string;
  hostId: string;
  workspace: string;
  path: string;
  epoch: number;
  files: number;
  /** The bytes of its files (the record's totals); null when not known. */
  bytesTotal: number | null;
  stats: RecordStats | undefined;
  createdAt: Date;
  /** The snapshot it repairs (a repair-snapshots record's repairedFrom). */
  repairedFrom?: string;
}) {
  const st = s.stats;
  return {
    id: s.id,
    tenant_id: s.tenantId,
    host_id: s.hostId,
    workspace_id: s.workspace,
    path: s.path,
    epoch: s.epoch,
    files: s.files,
    bytes_read: st?.bytesRead ?? 0,
    bytes_new: st?.bytesNew ?? 0,
    bytes_stored: st?.bytesStored ?? 0,
    bytes_total: s.bytesTotal,
    chunks_new: st?.chunksNew ?? 0,
    seconds: st?.seconds ?? 0,
    files_skipped: st?.filesSkipped ?? 0,
    skipped: JSON.stringify(st?.skipped ?? []),
    created_at: s.createdAt,
    repaired_from: s.repairedFrom ?? null,
  };
}

/**
 * The catalogue row of a snapshot listed from its record (a relisting, a repair). A repaired snapshot's record keeps
 * the stats of the snapshot it replaces, whose file count takes in the files the repair left out: its row counts
 * the files it holds.
 */
export function recordRow(tenantId: string, record: SnapshotRecord) {
  const repaired = record.repairedFrom !== undefined;
  return catalogueRow({
    id: record.id,
    tenantId,
    hostId: record.hostname ?? "",
    workspace: record.workspace,
    path: record.source ?? "",
    epoch: record.epoch,
    files: repaired ? record.totals.files : (record.stats?.files ?? record.totals.files),
    bytesTotal: record.totals.bytes,
    // What the damaged snapshot stored is not the repair's (it added a manifest part or two): NEW shows 0 for it.
    stats: repaired && record.stats ? { ...record.stats, bytesNew: 0, bytesStored: 0, chunksNew: 0 } : record.stats,
    createdAt: new Date(record.time),
    repairedFrom: record.repairedFrom,
  });
}

/**
 * A repaired snapshot's row (recordRow), at the very time of the row of the snapshot it replaces: the first of
 * `damaged` and its record's repairedFrom that the catalogue lists, read in the insert itself (a row's time, kept to
 * the microsecond, does not survive a round trip through a Date), else its record's time. The catalogue lists a
 * repair after a snapshot of its time (listSnapshots), so it shows right after the one it replaces.
 */
export function repairRow(tenantId: string, record: SnapshotRecord, damaged: readonly string[]) {
  const row = recordRow(tenantId, record);
  const ids = [...new Set([...damaged, ...(record.repairedFrom ? [record.repairedFrom] : [])])];
  const times = ids.map(
    (id) => sql<Date>`(select created_at from snapshots where tenant_id = ${tenantId} and id = ${id})`,
  );
  const fallback = sql<Date>`cast(${row.created_at} as timestamptz)`;
  return { ...row, created_at: sql<Date>`coalesce(${sql.join([...times, fallback])})` };
}

/** Longest skipped path taken from an agent (Linux's PATH_MAX); reasons are cut by the agent (MAX_SKIPPED_REASON). */
const MAX_SKIPPED_PATH = 4096;

/**
 * The entries the agent left out, checked: they go into the repository's snapshot record and the database
 * as the agent sent them, and back to whoever asked for the snapshot.
 */
export function skippedEntries(stats: SnapshotStats | undefined): { filesSkipped: number; skipped: SkippedEntry[] } {
  const listed = stats?.skipped ?? [];
  const filesSkipped = statCount(stats?.filesSkipped, "files_skipped");
  const field = STATS_FIELD;
  if (listed.length > MAX_SKIPPED_LISTED) {
    throw new InvalidArgumentError(`${field}: skipped lists ${listed.length} entries, at most ${MAX_SKIPPED_LISTED}`);
  }
  if (filesSkipped < listed.length) {
    throw new InvalidArgumentError(
      `${field}: files_skipped is ${filesSkipped}, fewer than the ${listed.length} entries skipped lists`,
    );
  }
  const skipped = listed.map(({ path, reason }, i) => {
    if (path.length === 0 || path.length > MAX_SKIPPED_PATH || path.startsWith("/") || path.includes("\0")) {
      throw new InvalidArgumentError(
        `${field}: skipped[${i}].path must be a relative path of 1-${MAX_SKIPPED_PATH} characters, got ${JSON.stringify(path.slice(0, 200))}`,
      );
    }
    if (reason.length > MAX_SKIPPED_REASON) {
      throw new InvalidArgumentError(`${field}: skipped[${i}].reason is longer than ${MAX_SKIPPED_REASON} characters`);
    }
    // A jsonb column takes no NUL (its JSON's \u0000): the row's insert failed after the record was stored, and
    // the snapshot stayed unlisted, its packs kept, and a retention's "newest" it could not list.
    if (reason.includes("\0")) throw new InvalidArgumentError(`${field}: skipped[${i}].reason holds a NUL character`);
    return { path, reason };
  });
  return { filesSkipped, skipped };
}

export const STATS_FIELD = "the agent's SnapshotCommit stats";

/**
 * A counter of the agent's stats as a number. Checked before the commit: the record and the row keep it, and one
 * beyond what they hold (a bigint column; a double's exact integers) failed the row's insert after the record
 * was stored, and then every relisting of the tenant.
 */
export function statCount(value: bigint | undefined, name: string): number {
  const n = value ?? 0n;
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new InvalidArgumentError(`${STATS_FIELD}: ${name} is ${n}, more than ${Number.MAX_SAFE_INTEGER}`);
  }
  return Number(n);
}
