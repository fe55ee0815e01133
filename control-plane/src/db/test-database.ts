// For tests: a migrated database — embedded PGlite in a temp dir, or, when DATABASE_URL is set,
// a fresh database on that Postgres server (dropped afterwards) — so one suite covers both.
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { type DatabaseOptions, type Db, openDatabase } from "./database.js";

/**
 * Where a test run keeps its migrated embedded database to copy (set by test-global-setup.ts, and
 * removed after the run). Creating a PGlite database takes 3.5–6.5 s on the dev VM; copying a made one and
 * opening the copy ~1.2 s. The copy is then opened and migrated by openDatabase as any data directory is.
 */
export const PGLITE_TEMPLATE_ENV = "DUMONT_TEST_PGLITE_TEMPLATES";

let template: Promise<string | undefined> | undefined;

/**
 * The run's migrated, empty embedded database (a `pglite` directory to copy), made by the first test process
 * that asks; undefined outside a run that offers one (then every test database is created from nothing).
 */
function pgliteTemplate(): Promise<string | undefined> {
  template ??= (async () => {
    const root = process.env[PGLITE_TEMPLATE_ENV];
    if (!root) return undefined;
    const made = path.join(root, "pglite");
    if (existsSync(made)) return made;
    // Made aside and renamed into place whole: test processes running at once may each make one, the first
    // rename wins and the others use it.
    const building = await fs.mkdtemp(path.join(root, "building-"));
    try {
      const db = await openDatabase({ dataDir: building, fsync: false });
      await db.destroy();
      await fs.rename(path.join(building, "pglite"), made).catch((err: unknown) => {
        if (!existsSync(made)) throw err;
      });
    } finally {
      await fs.rm(building, { recursive: true, force: true });
    }
    return made;
  })().catch(() => undefined); // not made: each test database is then created from nothing, as without one
  return template;
}

export async function openTestDatabase(
  options: Pick<DatabaseOptions, "onIdleConnectionError"> = {},
): Promise<{ db: Db; name?: string; close: () => Promise<void> }> {
  const base = process.env.DATABASE_URL;
  if (!base) {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-db-"));
    const made = await pgliteTemplate();
    if (made) await fs.cp(made, path.join(dir, "pglite"), { recursive: true });
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
