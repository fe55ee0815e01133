// What the database layer does when Postgres itself acts: runs only against a server (DATABASE_URL, as CI's
// second pass sets), since PGlite has no connections to end. And the embedded database's lock: one process
// at a time on a data dir.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { sql } from "kysely";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { controlPlaneConnections, openDatabase, tuneLockSession, withDatabaseLock } from "./database.js";
import { adminQuery, openTestDatabase } from "./test-database.js";

const server = process.env.DATABASE_URL;

describe.skipIf(!server)("the database on Postgres", () => {
  it("counts the connections control planes hold to it, not those of a process opened under another name", async () => {
    const { db, name, close } = await openTestDatabase(); // a control plane's, by default
    try {
      const url = new URL(server!);
      url.pathname = `/${name}`;
      const rotation = await openDatabase({
        dataDir: os.tmpdir(),
        databaseUrl: url.toString(),
        applicationName: "dumont master-key",
      });
      try {
        await sql`select 1`.execute(db); // the control plane's pool holds a connection now
        expect(await controlPlaneConnections(rotation, false)).toBeGreaterThan(0);
        await db.destroy(); // the control plane stops
        // Its connections are closed once destroy returns; the server's backends end a moment later (seen still
        // counted once on a busy machine), so the count is read until it is 0, for up to 10 s.
        let count = await controlPlaneConnections(rotation, false);
        for (let i = 0; i < 200 && count > 0; i++) {
          await new Promise((r) => setTimeout(r, 50));
          count = await controlPlaneConnections(rotation, false);
        }
        expect(count).toBe(0);
      } finally {
        await rotation.destroy();
      }
    } finally {
      await close().catch(() => {}); // its pool is already closed
    }
  });

  it("outlives Postgres ending its idle connections (a restart, a proxy's timeout), and queries again", async () => {
    const ended: Error[] = [];
    const { db, name, close } = await openTestDatabase({ onIdleConnectionError: (err) => ended.push(err) });
    try {
      await sql`select 1`.execute(db); // a connection now idle in the pool
      await adminQuery(
        server!,
        `select pg_terminate_backend(pid) from pg_stat_activity where datname = '${name}' and pid <> pg_backend_pid()`,
      );
      for (let i = 0; i < 300 && ended.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(ended.map((e) => e.message)).toEqual([expect.stringMatching(/terminating connection/)]);
      expect((await sql<{ n: number }>`select 2 as n`.execute(db)).rows).toEqual([{ n: 2 }]);
    } finally {
      await close();
    }
  });
});

describe.skipIf(!server)("a database lock on Postgres (withDatabaseLock)", () => {
  it("asks the server to notice within about half a minute that the holder's session went silent", async () => {
    // A holder whose host lost power kept its lock until the server's default keepalives gave up (~2 hours),
    // and every commit of the tenant waited that long.
    const client = new pg.Client({ connectionString: server! });
    await client.connect();
    try {
      await tuneLockSession(client);
      const shown = await client.query(
        "select current_setting('tcp_keepalives_idle') as idle, current_setting('tcp_keepalives_interval') as every, " +
          "current_setting('tcp_keepalives_count') as count, current_setting('tcp_user_timeout') as unacked",
      );
      expect(shown.rows).toEqual([{ idle: "10", every: "5", count: "3", unacked: "25000" }]);
    } finally {
      await client.end();
    }
  });

  it("outlives its connection ending while its holder works (a restart, pg_terminate_backend), and is free after", async () => {
    // The lock's connection is its own, idle while the work runs: an 'error' on it with no listener ended the
    // process (vitest reports that as an unhandled error, failing this file).
    const { db, close } = await openTestDatabase();
    const advisory = async () =>
      (
        await sql<{ pid: number }>`select pid from pg_locks where locktype = 'advisory' and granted
          and database = (select oid from pg_database where datname = current_database())`.execute(db)
      ).rows;
    try {
      let release = () => {};
      const gate = new Promise<void>((r) => {
        release = r;
      });
      let lost = 0;
      const held = withDatabaseLock(
        db,
        "dumont test lock",
        async () => {
          await gate;
          return "done";
        },
        { onLost: () => lost++ },
      );
      for (let i = 0; i < 500 && (await advisory()).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      const [holder] = await advisory();
      expect(holder).toBeDefined();
      await sql`select pg_terminate_backend(${holder.pid})`.execute(db);
      for (let i = 0; i < 500 && lost === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(lost).toBe(1); // the holder hears the lock went, once (the control plane lists the tenant again)
      release();
      expect(await held).toBe("done");
      let lostAfter = 0;
      expect(await withDatabaseLock(db, "dumont test lock", async () => "again", { onLost: () => lostAfter++ })).toBe(
        "again",
      );
      await new Promise((r) => setTimeout(r, 200)); // its session closes after the work: not a loss
      expect(lostAfter).toBe(0);
      // Released with its session, whose close is not waited for.
      for (let i = 0; i < 500 && (await advisory()).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(await advisory()).toEqual([]);
    } finally {
      await close();
    }
  });
});

describe.skipIf(process.platform !== "linux")("the embedded database", () => {
  it("is held by one open database until it is closed: another open is refused, naming the holder", async () => {
    const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-db-lock-"));
    try {
      const db = await openDatabase({ dataDir });
      try {
        await expect(openDatabase({ dataDir })).rejects.toThrow(
          `the embedded database in ${path.join(dataDir, "pglite")} is already open in process ${process.pid}`,
        );
      } finally {
        await db.destroy();
      }
      const reopened = await openDatabase({ dataDir });
      await reopened.destroy();
    } finally {
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });
});
