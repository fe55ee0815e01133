// Frozen once merged: the serial of a host's renewed client certificate, accepted beside cert_serial until the
// agent first presents it (then it replaces cert_serial), so an agent that dies between Renew and storing the
// new certificate still connects with the old one.
import type { Kysely } from "kysely";

// biome-ignore lint/suspicious/noExplicitAny: migrations are frozen and must not depend on live types.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("hosts").addColumn("next_cert_serial", "text").execute();
}

// biome-ignore lint/suspicious/noExplicitAny: see up().
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("hosts").dropColumn("next_cert_serial").execute();
}
