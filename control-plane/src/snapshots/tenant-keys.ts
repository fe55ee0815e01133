// Per-tenant data keys: random AES-256 keys, stored wrapped (AES-256-GCM) by the control plane's master
// key, unwrapped only for the operation that needs one. A leaked bucket or database dump leaks nothing
// without the master key. Keys are never logged.
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { writeFileAtomic } from "@dumont/repository";
import type { Db } from "../db/database.js";

const KEY_BYTES = 32;

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
    if (row) return this.remember(tenantId, unwrap(this.masterKey, row.wrapped_key, tenantId));
    const fresh = randomBytes(KEY_BYTES);
    await this.db
      .insertInto("tenant_keys")
      .values({ tenant_id: tenantId, wrapped_key: wrap(this.masterKey, fresh, tenantId) })
      .onConflict((oc) => oc.column("tenant_id").doNothing())
      .execute();
    // Another replica may have won the race: read back whatever is stored.
    const stored = await this.db
      .selectFrom("tenant_keys")
      .select("wrapped_key")
      .where("tenant_id", "=", tenantId)
      .executeTakeFirstOrThrow();
    return this.remember(tenantId, unwrap(this.masterKey, stored.wrapped_key, tenantId));
  }

  private remember(tenantId: string, key: Buffer): Buffer {
    this.cache.set(tenantId, key);
    return key;
  }
}

function wrap(master: Buffer, key: Buffer, tenantId: string): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", master, iv);
  cipher.setAAD(Buffer.from(`dumont tenant key ${tenantId}`));
  const body = Buffer.concat([cipher.update(key), cipher.final()]);
  return Buffer.concat([iv, cipher.getAuthTag(), body]).toString("base64");
}

function unwrap(master: Buffer, wrapped: string, tenantId: string): Buffer {
  const raw = Buffer.from(wrapped, "base64");
  const decipher = createDecipheriv("aes-256-gcm", master, raw.subarray(0, 12));
  decipher.setAAD(Buffer.from(`dumont tenant key ${tenantId}`));
  decipher.setAuthTag(raw.subarray(12, 28));
  try {
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]);
  } catch {
    throw new Error(
      `cannot unwrap the data key of tenant ${tenantId}: the master key (DUMONT_MASTER_KEY or <data-dir>/master.key) is not the one it was wrapped with`,
    );
  }
}

/**
 * The master key: DUMONT_MASTER_KEY (64 hex chars or base64 of 32 bytes) when set — production keeps it in
 * a secret store — else `<data-dir>/master.key`, created 0600 on first start (dev and single-box installs).
 */
export async function loadMasterKey(dataDir: string, fromEnv: string | undefined): Promise<Buffer> {
  if (fromEnv) return parseMasterKey(fromEnv, "DUMONT_MASTER_KEY");
  const file = path.join(dataDir, "master.key");
  try {
    return parseMasterKey((await fs.readFile(file, "utf8")).trim(), file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const key = randomBytes(KEY_BYTES);
  await writeFileAtomic(file, `${key.toString("hex")}\n`, 0o600);
  return key;
}

export function parseMasterKey(text: string, source: string): Buffer {
  const key = /^[0-9a-fA-F]{64}$/.test(text) ? Buffer.from(text, "hex") : Buffer.from(text, "base64");
  if (key.length !== KEY_BYTES) {
    throw new Error(`${source} must hold 32 bytes as 64 hex characters or base64 (e.g. \`openssl rand -hex 32\`)`);
  }
  return key;
}
