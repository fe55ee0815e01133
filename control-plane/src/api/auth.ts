// API keys: `dumont_<id>_<secret>`. Only SHA-256(secret) is stored; the key is shown once.
// Every handler asks `authenticate` for the caller and scopes its queries to the caller's tenant.
import { randomBytes, timingSafeEqual } from "node:crypto";
import fs from "node:fs/promises";
import { writeFileAtomic } from "@dumont/repository";
import {
  countUsableApiKeys,
  ensureTenant,
  findActiveApiKey,
  insertApiKey,
  type Role,
  sha256Hex,
} from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { PermissionDeniedError, ResourceExhaustedError, UnauthenticatedError } from "../errors.js";
import type { KeyUses } from "./key-uses.js";
import type { ApiRateLimiter } from "./rate-limit.js";
import { checkTenantId } from "./request-fields.js";

/** What every authenticated call goes through besides the key check (each part absent: none). */
export interface ApiAuthOptions {
  /** Per-key request limits: a call over its key's is refused (RateLimitedError). */
  limiter?: ApiRateLimiter;
  /** Notes each key's last use (`dumont key list`). */
  uses?: KeyUses;
}

export interface Caller {
  keyId: string;
  tenantId: string;
  role: Role;
  /** When the caller's key stops working (absent: never). */
  expiresAt?: Date;
}

const KEY_FORMAT = /^dumont_([a-f0-9]{16})_([A-Za-z0-9_-]{43})$/;

/** A new key, valid once `createApiKey` stores it. */
export function generateApiKey(): { id: string; secret: string; key: string } {
  const id = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  return { id, secret, key: `dumont_${id}_${secret}` };
}

export async function createApiKey(
  db: Db,
  tenantId: string,
  role: Role,
  label: string,
  options: { generated?: ReturnType<typeof generateApiKey>; expiresAt?: Date; maxTenantKeys?: number } = {},
): Promise<{ id: string; key: string }> {
  const { id, secret, key } = options.generated ?? generateApiKey();
  const { expiresAt, maxTenantKeys } = options;
  if (!(await insertApiKey(db, { id, tenantId, role, secret, label, expiresAt }, maxTenantKeys))) {
    throw new ResourceExhaustedError(
      `tenant ${tenantId} holds ${maxTenantKeys} usable ${role} keys, the most it may; revoke ${role} keys it no ` +
        "longer uses (dumont key list, dumont key revoke)",
    );
  }
  return { id, key };
}

/**
 * On first start, and on any start that finds no admin key that opens anything (all revoked or expired, which
 * KeyService does not allow but older data or a hand-edited database might): an admin key for `tenantId`,
 * written 0600 to `file`; returns it if made. Whoever can start the control plane on its data directory is an
 * operator already; this is their way back in. The file is written before the key is stored: a start stopped
 * between the two leaves a file whose key opens nothing, and the next start makes a new one and replaces it. The
 * other way round, it left a stored admin key that nobody held, and no later start made another: the operators
 * were locked out.
 */
export async function bootstrapAdminKey(db: Db, file: string, tenantId: string): Promise<string | undefined> {
  if ((await countUsableApiKeys(db, { role: "admin" }, new Date())) > 0) return undefined;
  return writeNewAdminKey(db, file, tenantId, "bootstrap admin key");
}

/**
 * For `dumont dev`, which acts with the admin key in `file`: that key if it still opens something as an admin;
 * otherwise (revoked or expired through `dumont key`, the file removed or emptied) a new admin key written there,
 * with why. The operator who starts `dumont dev` on its data directory could make one anyway (bootstrapAdminKey);
 * this spares them a local agent that cannot enroll. A plain `dumont serve` leaves the file alone: there, which
 * keys operators hold is theirs to manage.
 */
export async function devAdminKey(db: Db, file: string, tenantId: string): Promise<{ key: string; replaced?: string }> {
  let held: string | undefined;
  try {
    held = (await fs.readFile(file, "utf8")).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  let why = "the file was missing or empty";
  if (held) {
    try {
      const caller = await authenticate(db, `Bearer ${held}`);
      if (caller.role === "admin") return { key: held };
      why = `the file held ${aRole(caller.role)} key`;
    } catch (err) {
      if (!(err instanceof UnauthenticatedError)) throw err;
      why = `the file's key opens nothing any more (${err.rawMessage})`;
    }
  }
  return { key: await writeNewAdminKey(db, file, tenantId, "dumont dev"), replaced: why };
}

/** A new admin key: written 0600 to `file` first, then stored (see bootstrapAdminKey). */
async function writeNewAdminKey(db: Db, file: string, tenantId: string, label: string): Promise<string> {
  await ensureTenant(db, tenantId, "Operators");
  const fresh = generateApiKey();
  await writeFileAtomic(file, `${fresh.key}\n`, 0o600);
  await createApiKey(db, tenantId, "admin", label, { generated: fresh });
  return fresh.key;
}

/**
 * The caller of a request. Once its key is known good, the call is noted as the key's use and counted against
 * its rate limit (a refused call still shows the key in use).
 */
export async function authenticate(
  db: Db,
  authorization: string | null,
  options: ApiAuthOptions = {},
): Promise<Caller> {
  if (!authorization) {
    throw new UnauthenticatedError(
      "missing API key: send 'Authorization: Bearer <key>' (see <data-dir>/admin-api-key)",
    );
  }
  const match = KEY_FORMAT.exec(authorization.replace(/^Bearer\s+/i, "").trim());
  if (!match)
    throw new UnauthenticatedError("malformed API key: expected 'Authorization: Bearer dumont_<id>_<secret>'");
  const [, id, secret] = match as unknown as [string, string, string];
  const row = await findActiveApiKey(db, id);
  const presented = Buffer.from(sha256Hex(secret), "hex");
  const stored = Buffer.from(row?.secret_hash ?? "0".repeat(64), "hex");
  if (!row || !timingSafeEqual(presented, stored)) {
    throw new UnauthenticatedError("API key not recognised or revoked");
  }
  if (row.expires_at !== null && new Date(row.expires_at) <= new Date()) {
    throw new UnauthenticatedError(
      `API key ${row.id} expired at ${new Date(row.expires_at).toISOString()}; make a new one (dumont key create)`,
    );
  }
  options.uses?.record(row.id);
  options.limiter?.take(row.id, { id: row.tenant_id, role: row.role });
  const caller: Caller = { keyId: row.id, tenantId: row.tenant_id, role: row.role as Role };
  if (row.expires_at !== null) caller.expiresAt = new Date(row.expires_at);
  return caller;
}

/** "an admin", "a provider", "a consumer": a role as messages name it. */
export function aRole(role: Role): string {
  return `${role === "admin" ? "an" : "a"} ${role}`;
}

export function requireRole(caller: Caller, ...roles: Role[]): void {
  if (caller.role === "admin" || roles.includes(caller.role)) return;
  throw new PermissionDeniedError(
    `this call needs ${roles.map(aRole).join(" or ")} API key; yours is ${aRole(caller.role)} key`,
  );
}

/** Admins see every tenant; everyone else only their own. */
export function tenantScope(caller: Caller): { tenantId?: string } {
  return caller.role === "admin" ? {} : { tenantId: caller.tenantId };
}

/**
 * The tenants a list call covers when it may name one (`tenant_id`, empty for all the caller sees): an admin's
 * names any tenant; anyone else's is their own, and naming another is refused rather than answered empty.
 */
export function listScope(caller: Caller, tenantId: string, what: string): { tenantId?: string } {
  if (tenantId !== "") checkTenantId(tenantId);
  if (caller.role === "admin") return tenantId === "" ? {} : { tenantId };
  if (tenantId !== "" && tenantId !== caller.tenantId) {
    throw new PermissionDeniedError(
      `${aRole(caller.role)} key lists its own tenant's ${what} only (${caller.tenantId})`,
    );
  }
  return { tenantId: caller.tenantId };
}
