// Frozen once merged: a snapshot's total size (the bytes of its files, as `dumont-agent snapshot list` shows it),
// which `bytes_stored` (what the snapshot newly added to the blob store) is not. Null for rows of before: the
// size is in each snapshot's sealed record, which a migration cannot open, and they show it as unknown.
import type { Kysely } from "kysely";

// biome-ignore lint/suspicious/noExplicitAny: migrations are frozen and must not depend on live types.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("snapshots").addColumn("bytes_total", "bigint").execute();
}

// biome-ignore lint/suspicious/noExplicitAny: see up().
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("snapshots").dropColumn("bytes_total").execute();
}
