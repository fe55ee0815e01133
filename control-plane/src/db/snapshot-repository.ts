// Committed snapshots (the blob store is the source of truth; these rows are its catalogue).
import { sql } from "kysely";
import type { Db } from "./database.js";
import type { SnapshotRow } from "./tables.js";

export async function listSnapshots(
  db: Db,
  filter: { tenantId?: string; hostId?: string; workspaceId?: string },
): Promise<SnapshotRow[]> {
  // A repair has the time of the snapshot it repairs, and comes after it, as the repository lists them.
  let q = db
    .selectFrom("snapshots")
    .selectAll()
    .orderBy("created_at")
    .orderBy(sql`repaired_from is not null`)
    .orderBy("id");
  if (filter.tenantId !== undefined) q = q.where("tenant_id", "=", filter.tenantId);
  if (filter.hostId) q = q.where("host_id", "=", filter.hostId);
  if (filter.workspaceId) q = q.where("workspace_id", "=", filter.workspaceId);
  return q.execute();
}

export async function getSnapshot(
  db: Db,
  id: string,
  scope: { tenantId?: string } = {},
): Promise<SnapshotRow | undefined> {
  let q = db.selectFrom("snapshots").selectAll().where("id", "=", id);
  if (scope.tenantId !== undefined) q = q.where("tenant_id", "=", scope.tenantId);
  return q.executeTakeFirst();
}

/** Drops a snapshot from the catalogue (its tenant's: an id alone never reaches another tenant's row). */
export async function deleteSnapshot(db: Db, tenantId: string, id: string): Promise<void> {
  await db.deleteFrom("snapshots").where("id", "=", id).where("tenant_id", "=", tenantId).execute();
}

/** The tenants with snapshots in the catalogue (within `tenantId` when given). */
export async function snapshotTenants(db: Db, filter: { tenantId?: string; workspaceId?: string }): Promise<string[]> {
  let q = db.selectFrom("snapshots").select("tenant_id").distinct().orderBy("tenant_id");
  if (filter.tenantId !== undefined) q = q.where("tenant_id", "=", filter.tenantId);
  if (filter.workspaceId) q = q.where("workspace_id", "=", filter.workspaceId);
  return (await q.execute()).map((r) => r.tenant_id);
}

/**
 * The tenants that have a repository in the scope: those with a data key, made as their first snapshot started
 * (as the scheduled prune finds them). What check and repair-index cover: not only tenants with catalogued
 * snapshots, since one whose snapshots were all forgotten still holds packs until a prune, and a catalogue that
 * lost rows must not hide a repository from its check.
 */
export async function repositoryTenants(db: Db, filter: { tenantId?: string }): Promise<string[]> {
  let q = db.selectFrom("tenant_keys").select("tenant_id").orderBy("tenant_id");
  if (filter.tenantId !== undefined) q = q.where("tenant_id", "=", filter.tenantId);
  return (await q.execute()).map((r) => r.tenant_id);
}

/** Snapshots whose id starts with `prefix` (hex, checked by the caller), at most `limit`, within the scope. */
export async function findSnapshotsByPrefix(
  db: Db,
  prefix: string,
  scope: { tenantId?: string },
  limit = 2,
): Promise<SnapshotRow[]> {
  let q = db.selectFrom("snapshots").selectAll().where("id", "like", `${prefix}%`).orderBy("id").limit(limit);
  if (scope.tenantId !== undefined) q = q.where("tenant_id", "=", scope.tenantId);
  return q.execute();
}
