// `dumont master-key rotate`: every stored tenant key wrapped again by a new master key, for a master key that
// leaked (a data-dir backup, a key file others could read) or that policy says to change. The tenant keys
// themselves stay as they are, so every snapshot stays readable and no blob is rewritten; what changes is
// the database's wrapped copies (one transaction) and, with a key file, the file (renamed over).
//
// Runs offline, against the database and data dir `dumont serve` uses: the master key never goes through the
// API. The command refuses while a control plane runs (the embedded database's lock; on Postgres, connections
// named "dumont control plane"): one still running with the old key would wrap the keys of tenants it meets
// for the first time with it, which the next start then reports; running this again with that old key mends it.
//
// Crash safety with a key file: the new key is written durably to master.key.next first, the database is
// re-wrapped and committed, then master.key.next is renamed over master.key. A stop between those steps
// leaves master.key.next behind: the control plane then refuses to start until this command runs again, which
// takes the key from master.key.next and finishes (keys already wrapped by it are left as they are).
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { syncDirectory } from "@dumont/repository";
import { sql } from "kysely";
import { type Db, makeDurable } from "../db/database.js";
import {
  createKeyFile,
  masterKeyFile,
  nextMasterKeyFile,
  parseMasterKey,
  readMasterKeyFile,
  tryUnwrapTenantKey,
  wrapTenantKey,
} from "./tenant-keys.js";

export interface MasterKeyRotation {
  /** Tenant keys wrapped again by the new master key. */
  rewrapped: number;
  /** Tenant keys the new master key already wrapped (a rotation run before that did not finish). */
  alreadyNew: number;
  /** Where the new master key now is: the data dir's key file, or the caller's --new-key-file. */
  newKeyAt: string;
  /** Whether the control planes must be given the new key themselves (DUMONT_MASTER_KEY). */
  fromEnvironment: boolean;
}

export interface MasterKeyRotationOptions {
  db: Db;
  dataDir: string;
  /** DUMONT_MASTER_KEY, when the master key comes from the environment (else the data dir's master.key). */
  fromEnv?: string;
  /** A file holding the new master key; required with `fromEnv`, else a random one is made. */
  newKeyFile?: string;
}

export async function rotateMasterKey(options: MasterKeyRotationOptions): Promise<MasterKeyRotation> {
  if (options.fromEnv) {
    if (!options.newKeyFile) {
      throw new Error(
        "the master key comes from DUMONT_MASTER_KEY, which this command cannot change: put the new key (e.g. " +
          "`openssl rand -hex 32`) in a file only you can read and name it with --new-key-file",
      );
    }
    const current = parseMasterKey(options.fromEnv, "DUMONT_MASTER_KEY");
    const next = await readNewKey(options.newKeyFile);
    if (next.equals(current)) throw new Error(`${options.newKeyFile} holds the master key in use (DUMONT_MASTER_KEY)`);
    const counts = await rewrapTenantKeys(options.db, current, next);
    // Durable before the operator is told the old key opens nothing and discards it (an embedded database's
    // commit may be in the page cache only), as with a key file below.
    await makeDurable(options.db);
    return { ...counts, newKeyAt: options.newKeyFile, fromEnvironment: true };
  }

  const file = masterKeyFile(options.dataDir);
  const nextFile = nextMasterKeyFile(options.dataDir);
  const current = await readMasterKeyFile(file);
  if (!current) {
    throw new Error(
      `no master key to rotate: DUMONT_MASTER_KEY is unset and ${file} does not exist (the control plane makes ` +
        "one at its first start; with the key elsewhere, set DUMONT_MASTER_KEY to it)",
    );
  }
  // An unfinished rotation's key, if there is one: it is finished with that key, whatever it was.
  let next = await readMasterKeyFile(nextFile);
  const madeNow = next === undefined;
  if (next === undefined) {
    next = options.newKeyFile ? await readNewKey(options.newKeyFile) : randomBytes(32);
    if (next.equals(current)) throw new Error(`${options.newKeyFile} holds the master key in use (${file})`);
    if (!(await createKeyFile(nextFile, next))) {
      throw new Error(`${nextFile} appeared while this ran: another rotation is running; let it finish`);
    }
  } else if (options.newKeyFile && !(await readNewKey(options.newKeyFile)).equals(next)) {
    throw new Error(
      `a rotation to another master key did not finish (${nextFile} holds it): run this without --new-key-file ` +
        "to finish that one first, then rotate again",
    );
  }
  let counts: Omit<MasterKeyRotation, "newKeyAt" | "fromEnvironment">;
  try {
    counts = await rewrapTenantKeys(options.db, current, next);
  } catch (err) {
    // One transaction: nothing was re-wrapped, unless it committed and the answer was lost (the connection dropped
    // during COMMIT). A key this run made goes only once the database, read again, shows no tenant key wrapped by
    // it; otherwise it stays (the control plane refuses to start meanwhile), and running this again finishes.
    if (madeNow && (await wrapsNothing(options.db, next))) await fs.unlink(nextFile).catch(() => {});
    throw err;
  }
  // The keys wrapped by `next` outlive a power loss before the old key goes (an embedded database's commit may
  // be in the page cache only).
  await makeDurable(options.db);
  await fs.rename(nextFile, file);
  await syncDirectory(path.dirname(file));
  return { ...counts, newKeyAt: file, fromEnvironment: false };
}

/**
 * Wraps every stored tenant key from `current` to `next` in one transaction, with the table locked against
 * new keys meanwhile. A key `next` already opens is left as it is; one that neither opens stops the whole
 * rotation, naming its tenant, and nothing changes.
 */
export async function rewrapTenantKeys(
  db: Db,
  current: Buffer,
  next: Buffer,
): Promise<{ rewrapped: number; alreadyNew: number }> {
  return db.transaction().execute(async (trx) => {
    await sql`lock table tenant_keys in exclusive mode`.execute(trx);
    const rows = await trx
      .selectFrom("tenant_keys")
      .select(["tenant_id", "wrapped_key"])
      .orderBy("tenant_id")
      .execute();
    let rewrapped = 0;
    let alreadyNew = 0;
    for (const row of rows) {
      const underNext = tryUnwrapTenantKey(next, row.wrapped_key, row.tenant_id);
      if (underNext) {
        alreadyNew++;
        continue;
      }
      const key = tryUnwrapTenantKey(current, row.wrapped_key, row.tenant_id);
      if (!key) {
        throw new Error(
          `the data key of tenant ${row.tenant_id} is wrapped by neither the current master key nor the new one: ` +
            "nothing was changed. Rotate with the master key that wraps it as the current one",
        );
      }
      await trx
        .updateTable("tenant_keys")
        .set({ wrapped_key: wrapTenantKey(next, key, row.tenant_id) })
        .where("tenant_id", "=", row.tenant_id)
        .execute();
      rewrapped++;
    }
    return { rewrapped, alreadyNew };
  });
}

/**
 * Whether the database answers and no stored tenant key is wrapped by `master`; false where it cannot tell. Read
 * under a share lock of the table, which waits for the rotation's exclusive one: a commit the server is still
 * finishing (its client gone, a synchronous replica slow to answer) is then seen, not read past.
 */
async function wrapsNothing(db: Db, master: Buffer): Promise<boolean> {
  try {
    return await db.transaction().execute(async (trx) => {
      // Bounded: a server still holding the rotation's transaction for a client long gone would hold this too.
      // Timing out keeps the key file, the safe side.
      await sql`set local lock_timeout = '30s'`.execute(trx);
      await sql`lock table tenant_keys in share mode`.execute(trx);
      const rows = await trx.selectFrom("tenant_keys").select(["tenant_id", "wrapped_key"]).execute();
      return !rows.some((row) => tryUnwrapTenantKey(master, row.wrapped_key, row.tenant_id));
    });
  } catch {
    return false;
  }
}

/** The new key from --new-key-file, held to the same rules as a master key file. */
async function readNewKey(file: string): Promise<Buffer> {
  const key = await readMasterKeyFile(file);
  if (!key) throw new Error(`--new-key-file ${file} does not exist`);
  return key;
}
