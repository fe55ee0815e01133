// For tests: a migrated database — embedded PGlite in a temp dir, or, when DATABASE_URL is set,
// a fresh database on that Postgres server (dropped afterwards) — so one suite covers both.
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { type DatabaseOptions, type Db, openDatabase } from "./database.js";

export async function openTestDatabase(
  options: Pick<DatabaseOptions, "onIdleConnectionError"> = {},
): Promise<{ db: Db; name?: string; close: () => Promise<void> }> {
  const base = process.env.DATABASE_URL;
  if (!base) {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-db-"));
    const db = await openDatabase({ ...options, dataDir: dir, fsync: false });
    return {
      db,
      close: async () => {
        await db.destroy();
        await fs.rm(dir, { recursive: true, force: true });
      },
    };
  }
  const name = `dumont_unit_${randomBytes(6).toString("hex")}`;
  await adminQuery(base, `create database ${name}`);
  const url = new URL(base);
  url.pathname = `/${name}`;
  const db = await openDatabase({ ...options, dataDir: os.tmpdir(), databaseUrl: url.toString() });
  return {
    db,
    name,
    close: async () => {
      await db.destroy();
      await adminQuery(base, `drop database if exists ${name} with (force)`);
    },
  };
}

/** Runs `sql` on DATABASE_URL's server, outside any test database (for what a test does to the server). */
export async function adminQuery(url: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** A catalogue row for snapshot `id` of workspace "w" (path /w) on `hostId`, every count 1: for API tests. */
export async function insertTestSnapshot(db: Db, id: string, tenantId: string, hostId: string): Promise<void> {
  await db
    .insertInto("snapshots")
    .values({
      id,
      tenant_id: tenantId,
      host_id: hostId,
      workspace_id: "w",
      path: "/w",
      epoch: 0,
      files: 1,
      bytes_read: 1,
      bytes_new: 1,
      bytes_stored: 1,
      chunks_new: 1,
      seconds: 1,
    })
    .execute();
}
