// API keys: `dumont_<id>_<secret>`. Only SHA-256(secret) is stored; the key is shown once.
// Every handler asks `authenticate` for the caller and scopes its queries to the caller's tenant.
import { randomBytes, timingSafeEqual } from "node:crypto";
import { findActiveApiKey, insertApiKey, type Role, sha256Hex } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { PermissionDeniedError, UnauthenticatedError } from "../errors.js";

export interface Caller {
  keyId: string;
  tenantId: string;
  role: Role;
}

const KEY_FORMAT = /^dumont_([a-f0-9]{16})_([A-Za-z0-9_-]{43})$/;

export async function createApiKey(
  db: Db,
  tenantId: string,
  role: Role,
  label: string,
): Promise<{ id: string; key: string }> {
  const id = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  await insertApiKey(db, { id, tenantId, role, secret, label });
  return { id, key: `dumont_${id}_${secret}` };
}

export async function authenticate(db: Db, authorization: string | null): Promise<Caller> {
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
  return { keyId: row.id, tenantId: row.tenant_id, role: row.role as Role };
}

export function requireRole(caller: Caller, ...roles: Role[]): void {
  if (caller.role === "admin" || roles.includes(caller.role)) return;
  const named = (role: Role) => `${role === "admin" ? "an" : "a"} ${role}`;
  throw new PermissionDeniedError(
    `this call needs ${roles.map(named).join(" or ")} API key; yours is ${named(caller.role)} key`,
  );
}

/** Admins see every tenant; everyone else only their own. */
export function tenantScope(caller: Caller): { tenantId?: string } {
  return caller.role === "admin" ? {} : { tenantId: caller.tenantId };
}
