// Frozen once merged: when the client certificate a host last presented (or was enrolled with) expires, so
// operators can see agents that are not renewing (`dumont host list`). Null for hosts not seen since.
import type { Kysely } from "kysely";

// biome-ignore lint/suspicious/noExplicitAny: migrations are frozen and must not depend on live types.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("hosts").addColumn("cert_expires_at", "timestamptz").execute();
}

// biome-ignore lint/suspicious/noExplicitAny: see up().
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("hosts").dropColumn("cert_expires_at").execute();
}
