// Per-tenant data keys: random AES-256 keys, stored wrapped (AES-256-GCM, the tenant id as associated data)
// by the control plane's master key, unwrapped on first use and kept in this process's memory from then on.
// A leaked bucket or database dump leaks nothing without the master key (which a default install keeps in
// <data-dir>/master.key, beside the embedded database: back them up apart). Keys are never logged.
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { readSecretFile, syncDirectory } from "@dumont/repository";
import { sql } from "kysely";
import { type Db, makeDurable } from "../db/database.js";
import { FailedPreconditionError } from "../errors.js";

const KEY_BYTES = 32;
/** A wrapped key: 12-byte IV, 16-byte tag, 32-byte key. */
const WRAPPED_BYTES = 12 + 16 + KEY_BYTES;

export class TenantKeys {
  private readonly cache = new Map<string, Buffer>();

  constructor(
    private readonly db: Db,
    private readonly masterKey: Buffer,
  ) {
    if (masterKey.length !== KEY_BYTES) throw new Error("the master key must be 32 bytes");
  }

  /** The tenant's data key, created (and stored wrapped) on first use. */
  async get(tenantId: string): Promise<Buffer> {
    const cached = this.cache.get(tenantId);
    if (cached) return cached;
    const row = await this.db
      .selectFrom("tenant_keys")
      .select("wrapped_key")
      .where("tenant_id", "=", tenantId)
      .executeTakeFirst();
    if (row) return this.remember(tenantId, unwrapTenantKey(this.masterKey, row.wrapped_key, tenantId));
    const fresh = randomBytes(KEY_BYTES);
    await this.db.transaction().execute(async (trx) => {
      // A master key rotation holds the table exclusively: this waits for it, then sees its keys. A control plane
      // still running with the old master key (started during the rotation, or not stopped for it) must not wrap
      // a new tenant's key with it, or once the old key is destroyed that tenant's snapshots open with nothing.
      // Judged by another tenant's stored key: with none stored yet there is nothing to judge by (the next start
      // with the new master key names a key wrapped by the old one, and a rotation run again wraps it anew).
      await sql`lock table tenant_keys in share row exclusive mode`.execute(trx);
      const other = await trx
        .selectFrom("tenant_keys")
        .select(["tenant_id", "wrapped_key"])
        .where("tenant_id", "<>", tenantId)
        .limit(1)
        .executeTakeFirst();
      if (other && !tryUnwrapTenantKey(this.masterKey, other.wrapped_key, other.tenant_id)) {
        throw new FailedPreconditionError(
          "the stored tenant keys are wrapped by another master key than this control plane's (the master key was " +
            "rotated since it started): restart it with the new master key before it makes new tenants' keys",
        );
      }
      await trx
        .insertInto("tenant_keys")
        .values({ tenant_id: tenantId, wrapped_key: wrapTenantKey(this.masterKey, fresh, tenantId) })
        .onConflict((oc) => oc.column("tenant_id").doNothing())
        .execute();
    });
    // Durable before the tenant's repository is sealed with it: an embedded database that lost the row in a
    // power loss would make the tenant another key, and every snapshot already stored would be unreadable.
    await makeDurable(this.db);
    // Another replica may have won the race: read back whatever is stored.
    const stored = await this.db
      .selectFrom("tenant_keys")
      .select("wrapped_key")
      .where("tenant_id", "=", tenantId)
      .executeTakeFirstOrThrow();
    return this.remember(tenantId, unwrapTenantKey(this.masterKey, stored.wrapped_key, tenantId));
  }

  /**
   * Checks the master key opens a stored tenant key, if there is one: a control plane started with another
   * master key (a new data dir, a secret that did not mount) fails at start, not at its first snapshot.
   */
  async verify(): Promise<void> {
    const rows = await this.db.selectFrom("tenant_keys").select(["tenant_id", "wrapped_key"]).execute();
    const failed: { tenantId: string; error: unknown }[] = [];
    for (const row of rows) {
      try {
        this.remember(row.tenant_id, unwrapTenantKey(this.masterKey, row.wrapped_key, row.tenant_id));
      } catch (error) {
        failed.push({ tenantId: row.tenant_id, error });
      }
    }
    if (failed.length === 0) return;
    // None opens: another master key altogether (unwrap's message says which settings to check).
    if (failed.length === rows.length) throw failed[0].error;
    // Some do: a control plane that kept the old master key through a rotation wrapped these with it.
    const named = failed.slice(0, 5).map((f) => f.tenantId);
    throw new Error(
      `the data keys of ${failed.length} of ${rows.length} tenants are wrapped by another master key than this ` +
        `one (${named.join(", ")}${failed.length > named.length ? ", …" : ""}), as a control plane still running ` +
        "with the old key during a master key rotation leaves them: with the old key in a file only you can read, " +
        "run `DUMONT_MASTER_KEY=$(cat OLD_KEY_FILE) dumont master-key rotate --new-key-file <a file holding this " +
        "key>` to wrap them again (the old key itself never typed, so never in the shell's history)",
    );
  }

  private remember(tenantId: string, key: Buffer): Buffer {
    this.cache.set(tenantId, key);
    return key;
  }
}

/** Tenant `tenantId`'s key, if `master` unwraps `wrapped`; undefined if it does not. */
export function tryUnwrapTenantKey(master: Buffer, wrapped: string, tenantId: string): Buffer | undefined {
  try {
    return unwrapTenantKey(master, wrapped, tenantId);
  } catch {
    return undefined;
  }
}

/** A tenant's data key wrapped by `master` (AES-256-GCM, the tenant id as associated data), base64. */
export function wrapTenantKey(master: Buffer, key: Buffer, tenantId: string): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", master, iv);
  cipher.setAAD(Buffer.from(`dumont tenant key ${tenantId}`));
  const body = Buffer.concat([cipher.update(key), cipher.final()]);
  return Buffer.concat([iv, cipher.getAuthTag(), body]).toString("base64");
}

/** Inverse of wrapTenantKey; throws, naming the tenant and the master key's settings, if `master` does not open it. */
export function unwrapTenantKey(master: Buffer, wrapped: string, tenantId: string): Buffer {
  const raw = Buffer.from(wrapped, "base64");
  const wrong = () =>
    new Error(
      `cannot unwrap the data key of tenant ${tenantId}: the master key (DUMONT_MASTER_KEY or <data-dir>/master.key) is not the one it was wrapped with`,
    );
  // Whole, with a whole tag: GCM in Node accepts tags down to 4 bytes unless told otherwise.
  if (raw.length !== WRAPPED_BYTES) throw wrong();
  const decipher = createDecipheriv("aes-256-gcm", master, raw.subarray(0, 12), { authTagLength: 16 });
  decipher.setAAD(Buffer.from(`dumont tenant key ${tenantId}`));
  decipher.setAuthTag(raw.subarray(12, 28));
  try {
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]);
  } catch {
    throw wrong();
  }
}

/**
 * The master key: DUMONT_MASTER_KEY (64 hex chars or base64 of 32 bytes) when set — production keeps it in
 * a secret store — else `<data-dir>/master.key`, created 0600 on first start (dev and single-box installs).
 * A new one is made only while no tenant key is stored: with keys wrapped by another, a new master key would
 * make every tenant's snapshots unreadable, so a missing key stops the start instead. The file must not be
 * readable by others (as ssh treats its keys).
 */
export async function loadMasterKey(
  dataDir: string,
  fromEnv: string | undefined,
  wrappedKeys: () => Promise<number>,
): Promise<Buffer> {
  if (fromEnv) return parseMasterKey(fromEnv, "DUMONT_MASTER_KEY");
  const file = masterKeyFile(dataDir);
  const next = nextMasterKeyFile(dataDir);
  if (existsSync(next)) {
    throw new Error(
      `a master key rotation did not finish (${next} is there): run \`dumont master-key rotate\` with the same ` +
        "--data-dir and database to finish it, then start again",
    );
  }
  const existing = await readMasterKeyFile(file);
  if (existing) return existing;
  const stored = await wrappedKeys();
  if (stored > 0) {
    throw new Error(
      `no master key: DUMONT_MASTER_KEY is unset and ${file} does not exist, but the database holds ${stored} ` +
        "tenant key(s) wrapped by one; put that master.key back or set DUMONT_MASTER_KEY to it (a new master key " +
        "would make every snapshot unreadable)",
    );
  }
  const key = randomBytes(KEY_BYTES);
  await createKeyFile(file, key); // another process may get there first: its key is the one read back
  return (await readMasterKeyFile(file)) ?? key;
}

/** The data dir's master key file. */
export function masterKeyFile(dataDir: string): string {
  return path.join(dataDir, "master.key");
}

/** Where a master key rotation keeps the new key until the database is re-wrapped (master-key-rotation.ts). */
export function nextMasterKeyFile(dataDir: string): string {
  return path.join(dataDir, "master.key.next");
}

/**
 * Writes `key` to a new key file, 0600: whole under another name, then linked into place, which fails if the
 * file is there already (false then: another process got there first); the directory is synced either way.
 */
export async function createKeyFile(file: string, key: Buffer): Promise<boolean> {
  const temp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
  const handle = await fs.open(temp, "wx", 0o600);
  try {
    await handle.writeFile(`${key.toString("hex")}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  let created = true;
  try {
    await fs.link(temp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    created = false;
  } finally {
    await fs.unlink(temp).catch(() => {});
  }
  await syncDirectory(path.dirname(file));
  return created;
}

/** The key in a master key file (0600, in a directory others cannot write), or undefined if it is absent. */
export async function readMasterKeyFile(file: string): Promise<Buffer | undefined> {
  const text = await readSecretFile(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return undefined;
    throw err;
  });
  return text === undefined ? undefined : parseMasterKey(text.trim(), file);
}

export function parseMasterKey(text: string, source: string): Buffer {
  const hex = /^[0-9a-fA-F]{64}$/.test(text);
  const key = hex
    ? Buffer.from(text, "hex")
    : /^[A-Za-z0-9+/]{43}=$/.test(text)
      ? Buffer.from(text, "base64")
      : undefined;
  if (!key || key.length !== KEY_BYTES || key.every((b) => b === 0)) {
    throw new Error(
      `${source} must hold 32 random bytes as 64 hex characters or base64 (e.g. \`openssl rand -hex 32\`)`,
    );
  }
  return key;
}
