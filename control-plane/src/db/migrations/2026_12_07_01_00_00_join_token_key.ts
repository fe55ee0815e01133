// Frozen once merged: the API key a join token was made with. A token works only while that key does (not revoked,
// not expired): a leaked provider key, once revoked, enrolls no more hosts through the tokens it made. Null for
// tokens made before the column (they keep working until they expire, within 7 days).
import type { Kysely } from "kysely";

// biome-ignore lint/suspicious/noExplicitAny: migrations are frozen and must not depend on live types.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("join_tokens").addColumn("created_by_key", "text").execute();
}

// biome-ignore lint/suspicious/noExplicitAny: see up().
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("join_tokens").dropColumn("created_by_key").execute();
}
