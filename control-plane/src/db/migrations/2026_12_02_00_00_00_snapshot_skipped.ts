// Frozen once merged: what a snapshot left out of its directory (unreadable, changed while read, special files).
import type { Kysely } from "kysely";

// biome-ignore lint/suspicious/noExplicitAny: migrations are frozen and must not depend on live types.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable("snapshots")
    .addColumn("files_skipped", "bigint", (c) => c.notNull().defaultTo(0))
    .execute();
  // The first 100 of them: [{ "path": "...", "reason": "..." }, ...].
  await db.schema
    .alterTable("snapshots")
    .addColumn("skipped", "jsonb", (c) => c.notNull().defaultTo("[]"))
    .execute();
}

// biome-ignore lint/suspicious/noExplicitAny: see up().
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("snapshots").dropColumn("skipped").execute();
  await db.schema.alterTable("snapshots").dropColumn("files_skipped").execute();
}
