// Frozen once merged: tenants, API keys, join tokens, hosts, telemetry series, host events.
import { type Kysely, sql } from "kysely";

// biome-ignore lint/suspicious/noExplicitAny: migrations are frozen and must not depend on live types.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable("tenants")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();

  await db.schema
    .createTable("api_keys")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
    .addColumn("role", "text", (c) => c.notNull().check(sql`role in ('consumer', 'provider', 'admin')`))
    .addColumn("secret_hash", "text", (c) => c.notNull())
    .addColumn("label", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("revoked_at", "timestamptz")
    .execute();

  await db.schema
    .createTable("join_tokens")
    .addColumn("token_hash", "text", (c) => c.primaryKey())
    .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("expires_at", "timestamptz", (c) => c.notNull())
    .addColumn("used_at", "timestamptz")
    .addColumn("used_by_host", "text")
    .execute();

  await db.schema
    .createTable("hosts")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("hostname", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("status", "text", (c) => c.notNull().check(sql`status in ('online', 'lost')`))
    .addColumn("agent_version", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("protocol_version", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("simulated", "boolean", (c) => c.notNull().defaultTo(false))
    .addColumn("cert_serial", "text", (c) => c.notNull())
    .addColumn("enrolled_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("last_seen_at", "timestamptz")
    .addColumn("latest", "jsonb")
    .execute();
  await db.schema.createIndex("hosts_tenant").on("hosts").column("tenant_id").execute();

  await db.schema
    .createTable("host_metrics")
    .addColumn("id", "bigserial", (c) => c.primaryKey())
    .addColumn("host_id", "text", (c) => c.notNull().references("hosts.id").onDelete("cascade"))
    .addColumn("at", "timestamptz", (c) => c.notNull())
    .addColumn("resolution", "text", (c) => c.notNull().check(sql`resolution in ('raw', '1m')`))
    .addColumn("cpu_percent", "double precision")
    .addColumn("memory_used_bytes", "bigint", (c) => c.notNull())
    .addColumn("disk_used_bytes", "bigint", (c) => c.notNull())
    .addColumn("gpus", "jsonb", (c) => c.notNull())
    .execute();
  await db.schema.createIndex("host_metrics_host_at").on("host_metrics").columns(["host_id", "at"]).execute();

  await db.schema
    .createTable("host_events")
    .addColumn("id", "bigserial", (c) => c.primaryKey())
    .addColumn("host_id", "text", (c) => c.notNull().references("hosts.id").onDelete("cascade"))
    .addColumn("kind", "text", (c) => c.notNull())
    .addColumn("message", "text", (c) => c.notNull())
    .addColumn("at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema.createIndex("host_events_host_at").on("host_events").columns(["host_id", "at"]).execute();

  await db.schema
    .createTable("control_plane_state")
    .addColumn("key", "text", (c) => c.primaryKey())
    .addColumn("value", "text", (c) => c.notNull())
    .execute();
}

// biome-ignore lint/suspicious/noExplicitAny: see up().
export async function down(db: Kysely<any>): Promise<void> {
  for (const table of [
    "host_events",
    "host_metrics",
    "hosts",
    "join_tokens",
    "api_keys",
    "tenants",
    "control_plane_state",
  ]) {
    await db.schema.dropTable(table).execute();
  }
}
