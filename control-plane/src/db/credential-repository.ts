// Tenants, API keys and join tokens. Secrets are stored only as SHA-256 hashes.
import { createHash } from "node:crypto";
import type { ExpressionBuilder } from "kysely";
import type { Db } from "./database.js";
import type { Database } from "./tables.js";

export type Role = "consumer" | "provider" | "admin";

export function sha256Hex(value: string): string {
  return createHash("sha256").update(value).digest("hex");
}

export async function ensureTenant(db: Db, id: string, name: string): Promise<void> {
  await db
    .insertInto("tenants")
    .values({ id, name })
    .onConflict((oc) => oc.column("id").doNothing())
    .execute();
}

/** Whether tenant `id` exists (a key or a host made it). */
export async function tenantExists(db: Db, id: string): Promise<boolean> {
  return (await db.selectFrom("tenants").select("id").where("id", "=", id).executeTakeFirst()) !== undefined;
}

/**
 * Stores a key; with `maxUsable`, only while its tenant holds fewer usable keys (false when it holds that many).
 * The tenant's row is locked for the count and the insert: creates racing at the bound cannot pass it.
 */
export async function insertApiKey(
  db: Db,
  key: { id: string; tenantId: string; role: Role; secret: string; label: string; expiresAt?: Date },
  maxUsable?: number,
): Promise<boolean> {
  const insert = (q: Db) =>
    q
      .insertInto("api_keys")
      .values({
        id: key.id,
        tenant_id: key.tenantId,
        role: key.role,
        secret_hash: sha256Hex(key.secret),
        label: key.label,
        expires_at: key.expiresAt ?? null,
      })
      .execute();
  if (maxUsable === undefined) {
    await insert(db);
    return true;
  }
  return db.transaction().execute(async (tx) => {
    await tx.selectFrom("tenants").select("id").where("id", "=", key.tenantId).forUpdate().execute();
    // Per role: a consumer's keys must not use up what its tenant's provider may make (which could neither see
    // nor revoke them).
    const of = { tenantId: key.tenantId, role: key.role };
    if ((await countUsableApiKeys(tx, of, new Date())) >= maxUsable) return false;
    await insert(tx);
    return true;
  });
}

export async function findActiveApiKey(db: Db, id: string) {
  return db
    .selectFrom("api_keys")
    .select(["id", "tenant_id", "role", "secret_hash", "expires_at"])
    .where("id", "=", id)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
}

const API_KEY_COLUMNS = [
  "id",
  "tenant_id",
  "role",
  "label",
  "created_at",
  "revoked_at",
  "expires_at",
  "last_used_at",
] as const;

/** API keys without their hashes, oldest first: a tenant's or all, revoked ones when asked. */
export async function listApiKeys(db: Db, filter: { tenantId?: string; role?: Role; includeRevoked: boolean }) {
  let q = db.selectFrom("api_keys").select(API_KEY_COLUMNS).orderBy("created_at").orderBy("id");
  if (filter.tenantId !== undefined) q = q.where("tenant_id", "=", filter.tenantId);
  if (filter.role !== undefined) q = q.where("role", "=", filter.role);
  if (!filter.includeRevoked) q = q.where("revoked_at", "is", null);
  return q.execute();
}

export async function getApiKey(db: Db, id: string) {
  return db.selectFrom("api_keys").select(API_KEY_COLUMNS).where("id", "=", id).executeTakeFirst();
}

/**
 * Revokes key `id` (still active) unless it is an admin key and no other admin key that never expires would
 * remain (one that expires would leave the operators locked out once it does); the revoked row, "last-admin",
 * or undefined when there is no such active key. The active admin keys are locked first: two admins revoking
 * each other's keys at once cannot leave none (the second waits, then counts again).
 */
export async function revokeApiKey(db: Db, id: string, now: Date) {
  return db.transaction().execute(async (tx) => {
    const admins = await tx
      .selectFrom("api_keys")
      .select(["id", "expires_at"])
      .where("role", "=", "admin")
      .where("revoked_at", "is", null)
      .forUpdate()
      .execute();
    const key = await tx
      .selectFrom("api_keys")
      .select(["role", "revoked_at"])
      .where("id", "=", id)
      .forUpdate()
      .executeTakeFirst();
    if (!key || key.revoked_at !== null) return undefined;
    if (key.role === "admin" && !admins.some((a) => a.id !== id && a.expires_at === null)) return "last-admin" as const;
    return tx
      .updateTable("api_keys")
      .set({ revoked_at: now })
      .where("id", "=", id)
      .returning(API_KEY_COLUMNS)
      .executeTakeFirstOrThrow();
  });
}

/** Records that key `id` carried a call at `at`. Never moves the time back: replicas may write in any order. */
export async function markApiKeyUsed(db: Db, id: string, at: Date): Promise<void> {
  await db
    .updateTable("api_keys")
    .set({ last_used_at: at })
    .where("id", "=", id)
    .where((eb) => eb.or([eb("last_used_at", "is", null), eb("last_used_at", "<", at)]))
    .execute();
}

/** Keys that open something at `now` (not revoked, not expired): of a role, of a tenant, or both. */
export async function countUsableApiKeys(db: Db, of: { role?: Role; tenantId?: string }, now: Date): Promise<number> {
  let q = db
    .selectFrom("api_keys")
    .select((eb) => eb.fn.countAll<number>().as("n"))
    .where("revoked_at", "is", null)
    .where((eb) => eb.or([eb("expires_at", "is", null), eb("expires_at", ">", now)]));
  if (of.role !== undefined) q = q.where("role", "=", of.role);
  if (of.tenantId !== undefined) q = q.where("tenant_id", "=", of.tenantId);
  return Number((await q.executeTakeFirstOrThrow()).n);
}

export async function insertJoinToken(
  db: Db,
  token: { token: string; tenantId: string; expiresAt: Date; createdByKey?: string },
) {
  await db
    .insertInto("join_tokens")
    .values({
      token_hash: sha256Hex(token.token),
      tenant_id: token.tenantId,
      expires_at: token.expiresAt,
      created_by_key: token.createdByKey ?? null,
    })
    .execute();
}

export type JoinTokenUse =
  | { ok: true; tenantId: string }
  | { ok: false; reason: "unknown" | "used" | "expired" | "key-gone" };

/**
 * Marks a join token used by `hostId`, atomically: two agents racing with one token cannot both win, and one
 * whose key was revoked meanwhile cannot be used.
 * Must run inside the transaction that creates the host.
 */
export async function consumeJoinToken(db: Db, token: string, hostId: string, now: Date): Promise<JoinTokenUse> {
  const hash = sha256Hex(token);
  const claimed = await db
    .updateTable("join_tokens")
    .set({ used_at: now, used_by_host: hostId })
    .where("token_hash", "=", hash)
    .where("used_at", "is", null)
    .where("expires_at", ">", now)
    .where((eb) => eb.or([eb("created_by_key", "is", null), eb.exists(usableKey(eb, now))]))
    .returning("tenant_id")
    .executeTakeFirst();
  if (claimed) return { ok: true, tenantId: claimed.tenant_id };
  return checkJoinToken(db, token, now);
}

/** The API key a join token row was made with, while it opens something (not revoked, not expired). */
function usableKey(eb: ExpressionBuilder<Database, "join_tokens">, now: Date) {
  return eb
    .selectFrom("api_keys")
    .select("api_keys.id")
    .whereRef("api_keys.id", "=", "join_tokens.created_by_key")
    .where("api_keys.revoked_at", "is", null)
    .where((k) => k.or([k("api_keys.expires_at", "is", null), k("api_keys.expires_at", ">", now)]));
}

/** Whether a join token could be used now, and by which tenant, without using it (see consumeJoinToken). */
export async function checkJoinToken(db: Db, token: string, now: Date): Promise<JoinTokenUse> {
  const row = await db
    .selectFrom("join_tokens")
    .select((eb) => [
      "tenant_id",
      "used_at",
      "expires_at",
      eb.or([eb("created_by_key", "is", null), eb.exists(usableKey(eb, now))]).as("key_usable"),
    ])
    .where("token_hash", "=", sha256Hex(token))
    .executeTakeFirst();
  if (!row) return { ok: false, reason: "unknown" };
  if (row.used_at) return { ok: false, reason: "used" };
  if (new Date(row.expires_at) <= now) return { ok: false, reason: "expired" };
  if (!row.key_usable) return { ok: false, reason: "key-gone" };
  return { ok: true, tenantId: row.tenant_id };
}
