// Opens the database — embedded PGlite in the data dir, or Postgres when DATABASE_URL is set —
// and brings its schema up to date. One code path (kysely) serves both.
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { lockDirectory } from "@dumont/repository/directory-lock";
import { PGlite } from "@electric-sql/pglite";
import { Kysely, type MigrationProvider, Migrator, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { migrations } from "./migrations/index.js";
import { PGliteDialect } from "./pglite-dialect.js";
import type { Database } from "./tables.js";

export type Db = Kysely<Database>;

export interface DatabaseOptions {
  /** postgres://… for Postgres; unset for embedded PGlite under dataDir. */
  databaseUrl?: string;
  dataDir: string;
  /** Told when Postgres closes a connection the pool holds idle (a restart, a proxy's idle timeout). */
  onIdleConnectionError?: (err: Error) => void;
  /**
   * Postgres's application_name for this process's connections (default CONTROL_PLANE_APPLICATION): what
   * `dumont master-key rotate` looks for to see that a control plane still runs on the database.
   */
  applicationName?: string;
  /**
   * Refuse to make an embedded database that is not there: for tools working on a control plane's existing
   * state (`dumont master-key rotate`), where a mistyped --data-dir must not leave a new database behind.
   */
  existing?: boolean;
  /**
   * False: makeDurable does nothing (throwaway test databases, as Postgres's fsync=off; the first call
   * otherwise writes out the whole of a new database, seconds on a busy disk).
   */
  fsync?: boolean;
}

/** The application_name of a control plane's connections to Postgres. */
export const CONTROL_PLANE_APPLICATION = "dumont control plane";

// bigint (int8) as JS number: our byte counts stay far below 2^53.
pg.types.setTypeParser(20, (value: string) => Number(value));

export async function openDatabase(options: DatabaseOptions): Promise<Db> {
  let db: Db;
  if (options.databaseUrl) {
    const pool = new pg.Pool({
      connectionString: options.databaseUrl,
      max: 10,
      application_name: options.applicationName ?? CONTROL_PLANE_APPLICATION,
    });
    // An idle connection the server ends (a restart, a failover, a proxy's idle timeout, a connection still
    // closing when its database is dropped) is an 'error' on the pool, which drops that connection itself;
    // with no listener, the EventEmitter threw it and the process ended. The next query opens a new one.
    pool.on("error", (err) => options.onIdleConnectionError?.(err));
    db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
    postgresOf.set(db, {
      connectionString: options.databaseUrl,
      application_name: options.applicationName ?? CONTROL_PLANE_APPLICATION,
    });
  } else {
    const dir = path.join(options.dataDir, "pglite");
    if (options.existing && !existsSync(dir)) {
      throw new Error(
        `no control plane database in ${options.dataDir} (${dir} does not exist): give the --data-dir ` +
          "(DUMONT_DATA_DIR) that `dumont serve` runs with, or its DATABASE_URL",
      );
    }
    await fs.mkdir(dir, { recursive: true });
    // Held until the database is closed (db.destroy()): two PGlite instances on one directory corrupt it.
    const lock = await lockDirectory(
      dir,
      (holder) =>
        `the embedded database in ${dir} is already open in ${holder}: stop that one first (a \`dumont serve\`, ` +
        "`dumont dev` or `dumont master-key` on this data dir), since two processes on one embedded database " +
        "corrupt it, or give this one its own --data-dir (DUMONT_DATA_DIR)",
    );
    let pglite: PGlite;
    try {
      pglite = await PGlite.create(dir, { parsers: { 20: (value: string) => Number(value) } });
    } catch (err) {
      await lock.release();
      throw err;
    }
    db = new Kysely<Database>({ dialect: new PGliteDialect(pglite, () => lock.release()) });
    if (options.fsync !== false) embeddedDirs.set(db, dir);
  }
  try {
    await migrateToLatest(db);
  } catch (err) {
    await db.destroy();
    throw err;
  }
  return db;
}

/** The directory of each embedded database whose commits makeDurable makes durable. */
const embeddedDirs = new WeakMap<Db, string>();

/** Locks of withDatabaseLock held or waited for in this process, by database and name. */
const localLocks = new WeakMap<Db, Map<string, Promise<unknown>>>();

/** How to reach each Postgres database opened here: withDatabaseLock's connections are its own. */
const postgresOf = new WeakMap<Db, pg.ClientConfig>();

/**
 * Connections holding a withDatabaseLock at once in this process; more wait for one to end. With the pool's 10,
 * a control plane holds at most 14 connections to Postgres (4 replicas: 56 of its default 100).
 */
const DATABASE_LOCKS_AT_ONCE = 4;
let databaseLocksHeld = 0;
const databaseLockWaiters: (() => void)[] = [];

/**
 * Runs `work` holding the lock `name` of this database: against every other holder in this process, and with
 * Postgres in every process sharing the database (replicas), by a session advisory lock on a connection of its
 * own, opened for it and closed after (which releases the lock whatever happened; not one of the pool's, which
 * `work` needs for its queries). An embedded database has one process.
 */
export async function withDatabaseLock<T>(
  db: Db,
  name: string,
  work: () => Promise<T>,
  options: {
    /**
     * Called if the lock's session ends while `work` runs (a server restart, a failover, pg_terminate_backend, the
     * keepalives giving up): the lock went with it, and another replica may have taken it while `work` went on.
     */
    onLost?: () => void;
  } = {},
): Promise<T> {
  const locks = localLocks.get(db) ?? new Map<string, Promise<unknown>>();
  localLocks.set(db, locks);
  const previous = locks.get(name) ?? Promise.resolve();
  const postgres = postgresOf.get(db);
  const mine = previous
    .catch(() => {})
    .then(() => (postgres ? acrossProcesses(postgres, name, work, options.onLost) : work()));
  locks.set(name, mine);
  const done = () => {
    if (locks.get(name) === mine) locks.delete(name);
  };
  mine.then(done, done);
  return mine;
}

/**
 * How withDatabaseLock's session is kept honest on the server's side. A holder whose host lost power or its
 * network holds its lock until the server notices the session is dead, by default after ~2 hours of TCP
 * keepalives, and every commit of the tenant waits that long. Asked to probe an idle session after 10 s, every
 * 5 s, 3 times, and to give up on data unacknowledged for 25 s, the server ends it (and frees the lock) within
 * about half a minute. Set after connecting, each on its own: a startup `options` parameter is refused by
 * PgBouncer and other proxies (every lock, so every commit, would fail), and tcp_user_timeout is PostgreSQL 12's.
 * The price: a holder cut off from the server for longer than that loses the lock while its work goes on, as it
 * does when the server restarts; a catalogue change is short, and the relisting puts right what overlapped.
 */
const LOCK_SESSION_SETTINGS: Record<string, string> = {
  tcp_keepalives_idle: "10",
  tcp_keepalives_interval: "5",
  tcp_keepalives_count: "3",
  tcp_user_timeout: "25000",
};

/** Applies LOCK_SESSION_SETTINGS to `client`'s session, each that the server takes. */
export async function tuneLockSession(client: pg.Client): Promise<void> {
  for (const [name, value] of Object.entries(LOCK_SESSION_SETTINGS)) {
    await client.query("select set_config($1, $2, false)", [name, value]).catch(() => {});
  }
}

async function acrossProcesses<T>(
  config: pg.ClientConfig,
  name: string,
  work: () => Promise<T>,
  onLost: (() => void) | undefined,
): Promise<T> {
  while (databaseLocksHeld >= DATABASE_LOCKS_AT_ONCE) await new Promise<void>((r) => databaseLockWaiters.push(r));
  databaseLocksHeld++;
  // Keepalives and a connect timeout: after a failover whose old server went silent, neither the connect nor a
  // lock held on it may wait for TCP's own timeouts (~15 minutes).
  const client = new pg.Client({ ...config, keepAlive: true, connectionTimeoutMillis: 10_000 });
  // The server may end the connection while `work` runs (a restart, a failover, pg_terminate_backend): an
  // 'error' with no listener would end the process. The lock went with the connection; `work` finishes as it
  // would have without replicas, and its holder hears of it (onLost) to put right what may have overlapped.
  let holding = false;
  const lost = () => {
    if (!holding) return;
    holding = false;
    onLost?.();
  };
  client.on("error", lost);
  client.on("end", lost);
  try {
    await client.connect();
    await tuneLockSession(client);
    await client.query("select pg_advisory_lock(hashtextextended($1, 0))", [name]);
    holding = true;
    return await work();
  } finally {
    holding = false;
    // Not waited for: closing the session releases its lock, and a silent server would hold the slot as long.
    void client.end().catch(() => {});
    databaseLocksHeld--;
    databaseLockWaiters.shift()?.();
  }
}

/**
 * Makes every transaction committed so far survive a power loss. Postgres does at each commit (it fsyncs its
 * WAL). PGlite never does: its Node filesystem takes fsync for done, so a commit is only in the page cache until
 * the kernel writes it back (seconds later), which a kill -9 survives and a power loss does not. For a commit
 * that something made durable elsewhere depends on (a tenant's new key, before its repository is sealed with
 * it; the tenant keys wrapped by a new master key, before the old key goes): a checkpoint, then every file and
 * directory of the database fsynced (~0.3 s; nearly all are clean).
 */
export async function makeDurable(db: Db): Promise<void> {
  const dir = embeddedDirs.get(db);
  if (dir === undefined) return;
  await sql`CHECKPOINT`.execute(db);
  const syncAll = async (at: string): Promise<void> => {
    for (const entry of await fs.readdir(at, { withFileTypes: true })) {
      const child = path.join(at, entry.name);
      if (entry.isDirectory()) await syncAll(child);
      else if (entry.isFile()) await syncFile(child);
    }
    await syncFile(at); // its entries: files made since, and renamed into place
  };
  await syncAll(dir);
}

async function syncFile(at: string): Promise<void> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(at, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return; // removed since it was listed (a WAL segment)
    throw err;
  }
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
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

/**
 * How many connections other control planes hold to this Postgres database (by their application_name), or 0
 * for the embedded database, whose lock already keeps every other process out.
 */
export async function controlPlaneConnections(db: Db, embedded: boolean): Promise<number> {
  if (embedded) return 0;
  const { rows } = await sql<{ n: number }>`
    select count(*)::int as n from pg_stat_activity
    where datname = current_database() and application_name = ${CONTROL_PLANE_APPLICATION}
      and pid <> pg_backend_pid()`.execute(db);
  return rows[0]?.n ?? 0;
}
