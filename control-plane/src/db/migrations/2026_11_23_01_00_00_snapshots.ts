// Frozen once merged: per-tenant data keys (wrapped by the master key) and committed snapshots.
import { type Kysely, sql } from "kysely";

// biome-ignore lint/suspicious/noExplicitAny: migrations are frozen and must not depend on live types.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable("tenant_keys")
    .addColumn("tenant_id", "text", (c) => c.primaryKey().references("tenants.id"))
    // AES-256-GCM(master key, tenant key): iv(12) || tag(16) || ciphertext(32), base64.
    .addColumn("wrapped_key", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();

  await db.schema
    .createTable("snapshots")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
    .addColumn("host_id", "text", (c) => c.notNull())
    .addColumn("workspace_id", "text", (c) => c.notNull())
    .addColumn("path", "text", (c) => c.notNull())
    .addColumn("epoch", "bigint", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("files", "bigint", (c) => c.notNull())
    .addColumn("bytes_read", "bigint", (c) => c.notNull())
    .addColumn("bytes_new", "bigint", (c) => c.notNull())
    .addColumn("bytes_stored", "bigint", (c) => c.notNull())
    .addColumn("chunks_new", "bigint", (c) => c.notNull())
    .addColumn("seconds", "double precision", (c) => c.notNull())
    .execute();
  await db.schema
    .createIndex("snapshots_tenant_workspace")
    .on("snapshots")
    .columns(["tenant_id", "workspace_id", "created_at"])
    .execute();
}

// biome-ignore lint/suspicious/noExplicitAny: see up().
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable("snapshots").execute();
  await db.schema.dropTable("tenant_keys").execute();
}
