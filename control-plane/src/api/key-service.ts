// dumont.api.v1.KeyService: API keys made, listed and revoked through the API. Admins manage every tenant's
// keys and create tenants by naming them; a provider or consumer key manages its own tenant's keys of its own
// role (a consumer cannot make itself a provider key, nor anyone an admin one), and a key it makes expires no
// later than itself (a leaked short-lived key cannot mint a lasting one). Admin keys belong to the operators'
// tenant: an admin key sees every tenant, so one "for acme" would be acme's operator of everything. A tenant
// holds at most MAX_TENANT_KEYS usable keys of each role. The last admin key that never expires cannot be revoked: the
// operators would be locked out once the others expired (a start on the data directory makes a new one when
// none opens anything: bootstrapAdminKey).
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { api } from "@dumont/proto";
import {
  ensureTenant,
  getApiKey,
  listApiKeys,
  type Role,
  revokeApiKey,
  tenantExists,
} from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError } from "../errors.js";
import { type ApiAuthOptions, aRole, authenticate, type Caller, createApiKey, listScope } from "./auth.js";
import { checkTenantId, checkText, noSuchTenant, shown } from "./request-fields.js";

export interface KeyServiceDeps {
  db: Db;
  /** The operators' tenant: the only one admin keys are made for. */
  adminTenant: string;
  /** Rate limits and last-use marks of the callers' keys (none when absent). */
  auth?: ApiAuthOptions;
}

const ROLES: readonly Role[] = ["consumer", "provider", "admin"];
const KEY_ID = /^[a-f0-9]{16}$/;
const MAX_LABEL = 200;
const MIN_TTL_S = 60;
const MAX_TTL_S = 3650 * 86_400;
/**
 * Usable keys of one role a tenant may hold: enough for every machine and script, and a bound on what one tenant
 * can mint. Per role, so one role's keys cannot use up another's (a non-admin sees and revokes only its own role's).
 */
export const MAX_TENANT_KEYS = 100;

type KeyRow = Awaited<ReturnType<typeof listApiKeys>>[number];

export function keyService(deps: KeyServiceDeps): ServiceImpl<typeof api.KeyService> {
  const caller = (ctx: HandlerContext) => authenticate(deps.db, ctx.requestHeader.get("authorization"), deps.auth);
  return {
    async createApiKey(req, ctx) {
      const who = await caller(ctx);
      const role = checkRole(req.role);
      checkText("label", req.label, MAX_LABEL);
      if (req.ttlSeconds !== 0 && (req.ttlSeconds < MIN_TTL_S || req.ttlSeconds > MAX_TTL_S)) {
        throw new InvalidArgumentError(
          `ttl_seconds must be ${MIN_TTL_S}..${MAX_TTL_S} (10 years), or 0 for a key that never expires; got ${req.ttlSeconds}`,
        );
      }
      const tenantId = req.tenantId === "" ? who.tenantId : checkTenantId(req.tenantId);
      const expiresAt = req.ttlSeconds === 0 ? undefined : new Date(Date.now() + req.ttlSeconds * 1000);
      if (who.role !== "admin") {
        if (tenantId !== who.tenantId) {
          throw new PermissionDeniedError(
            `${aRole(who.role)} key makes keys for its own tenant only (${who.tenantId})`,
          );
        }
        if (role !== who.role) {
          throw new PermissionDeniedError(
            `${aRole(who.role)} key makes ${who.role} keys only; ask an admin for ${aRole(role)} key`,
          );
        }
        if (who.expiresAt && (!expiresAt || expiresAt > who.expiresAt)) {
          throw new PermissionDeniedError(
            `your key expires at ${who.expiresAt.toISOString()}, and a key it makes must expire by then: give ` +
              "ttl_seconds (--expires) that ends no later",
          );
        }
      } else if (role === "admin" && tenantId !== deps.adminTenant) {
        throw new InvalidArgumentError(
          `admin keys belong to the operators' tenant (${deps.adminTenant}): an admin key sees every tenant. ` +
            `For tenant ${tenantId}, make a provider or consumer key`,
        );
      }
      if (who.role === "admin") await ensureTenant(deps.db, tenantId, tenantId); // naming a new tenant creates it
      const made = { expiresAt, maxTenantKeys: MAX_TENANT_KEYS };
      const { id, key } = await createApiKey(deps.db, tenantId, role, req.label, made);
      const row = await getApiKey(deps.db, id);
      if (!row) throw new Error(`API key ${id} vanished right after it was made`);
      return create(api.CreateApiKeyResponseSchema, { key: keyMessage(row), secretKey: key });
    },

    async listApiKeys(req, ctx) {
      const who = await caller(ctx);
      const rows = await listApiKeys(deps.db, {
        ...visibleTo(who),
        ...listScope(who, req.tenantId, "keys"),
        includeRevoked: req.includeRevoked,
      });
      // A mistyped tenant would list nothing, as a tenant whose keys were all revoked does: say which it is.
      if (rows.length === 0 && req.tenantId && !(await tenantExists(deps.db, req.tenantId))) {
        throw noSuchTenant(req.tenantId);
      }
      return create(api.ListApiKeysResponseSchema, { keys: rows.map(keyMessage) });
    },

    async revokeApiKey(req, ctx) {
      const who = await caller(ctx);
      if (!KEY_ID.test(req.keyId)) {
        // A pasted whole key is not quoted back: its secret would land in terminals and logs. Anywhere in the
        // value (" dumont_…", "Bearer dumont_…", quoted), and anything that names the prefix at all.
        const got = req.keyId.includes("dumont_") ? "a whole key (its secret not shown)" : shown(req.keyId);
        throw new InvalidArgumentError(
          `key_id must be a key's 16 hex characters (dumont_<id>_…), got ${got}; list them with \`dumont key list\``,
        );
      }
      // Another tenant's key, or one of another role, is "not found": its existence is not the caller's to learn.
      const existing = await getApiKey(deps.db, req.keyId);
      const visible = visibleTo(who);
      if (
        !existing ||
        (visible.tenantId !== undefined && existing.tenant_id !== visible.tenantId) ||
        (visible.role !== undefined && existing.role !== visible.role)
      ) {
        throw new NotFoundError(`API key ${req.keyId} not found; list keys with \`dumont key list\``);
      }
      if (existing.revoked_at !== null) return create(api.RevokeApiKeyResponseSchema, { key: keyMessage(existing) });
      const revoked = await revokeApiKey(deps.db, req.keyId, new Date());
      if (revoked === "last-admin") {
        throw new FailedPreconditionError(
          `API key ${req.keyId} is the last admin key that never expires; make another (dumont key create --role ` +
            "admin) before revoking it, or the operators would be locked out once the others expire",
        );
      }
      // Revoked meanwhile by another request: answered as it now stands.
      const row = revoked ?? (await getApiKey(deps.db, req.keyId));
      return create(api.RevokeApiKeyResponseSchema, { key: row ? keyMessage(row) : undefined });
    },
  };
}

/** The keys a caller may see and revoke: all for admins, else its tenant's of its own role. */
function visibleTo(who: Caller): { tenantId?: string; role?: Role } {
  return who.role === "admin" ? {} : { tenantId: who.tenantId, role: who.role };
}

function checkRole(role: string): Role {
  if (!ROLES.includes(role as Role)) {
    throw new InvalidArgumentError(`role must be one of ${ROLES.join(", ")}, got ${shown(role)}`);
  }
  return role as Role;
}

function keyMessage(row: KeyRow): api.ApiKey {
  return create(api.ApiKeySchema, {
    id: row.id,
    tenantId: row.tenant_id,
    role: row.role,
    label: row.label,
    createdAt: timestampFromDate(new Date(row.created_at)),
    revokedAt: row.revoked_at === null ? undefined : timestampFromDate(new Date(row.revoked_at)),
    expiresAt: row.expires_at === null ? undefined : timestampFromDate(new Date(row.expires_at)),
    lastUsedAt: row.last_used_at === null ? undefined : timestampFromDate(new Date(row.last_used_at)),
  });
}
