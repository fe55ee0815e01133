// Frozen once merged: the snapshot a repaired one was made from (its record's `repairedFrom`, repair-snapshots), so
// the catalogue says which snapshots leave out files their damaged original had. Null for every other snapshot.
import type { Kysely } from "kysely";

// biome-ignore lint/suspicious/noExplicitAny: migrations are frozen and must not depend on live types.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("snapshots").addColumn("repaired_from", "text").execute();
}

// biome-ignore lint/suspicious/noExplicitAny: see up().
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("snapshots").dropColumn("repaired_from").execute();
}
