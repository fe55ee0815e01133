// Opens the database — embedded PGlite in the data dir, or Postgres when DATABASE_URL is set —
// and brings its schema up to date. One code path (kysely) serves both.
import fs from "node:fs/promises";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { Kysely, type MigrationProvider, Migrator, PostgresDialect } from "kysely";
import pg from "pg";
import { migrations } from "./migrations/index.js";
import { PGliteDialect } from "./pglite-dialect.js";
import type { Database } from "./tables.js";

export type Db = Kysely<Database>;

export interface DatabaseOptions {
  /** postgres://… for Postgres; unset for embedded PGlite under dataDir. */
  databaseUrl?: string;
  dataDir: string;
}

// bigint (int8) as JS number: our byte counts stay far below 2^53.
pg.types.setTypeParser(20, (value: string) => Number(value));

export async function openDatabase(options: DatabaseOptions): Promise<Db> {
  let db: Db;
  if (options.databaseUrl) {
    const pool = new pg.Pool({ connectionString: options.databaseUrl, max: 10 });
    db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  } else {
    const dir = path.join(options.dataDir, "pglite");
    await fs.mkdir(dir, { recursive: true });
    const pglite = await PGlite.create(dir, { parsers: { 20: (value: string) => Number(value) } });
    db = new Kysely<Database>({ dialect: new PGliteDialect(pglite) });
  }
  try {
    await migrateToLatest(db);
  } catch (err) {
    await db.destroy();
    throw err;
  }
  return db;
}

const provider: MigrationProvider = { getMigrations: async () => migrations };

export async function migrateToLatest(db: Db): Promise<void> {
  const migrator = new Migrator({ db, provider });
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((r) => r.status === "Error");
  if (error) {
    const name = failed ? ` ${failed.migrationName}` : "";
    throw new Error(`database migration${name} failed: ${error instanceof Error ? error.message : String(error)}`);
  }
}
