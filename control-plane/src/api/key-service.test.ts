// KeyService: who may make, see and revoke which keys; a made key works and a revoked one does not; the last
// admin key stays.
import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { api } from "@dumont/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTenant, type Role } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { openTestDatabase } from "../db/test-database.js";
import { authenticate, createApiKey } from "./auth.js";
import { keyService, MAX_TENANT_KEYS } from "./key-service.js";

describe("KeyService", () => {
  let db: Db;
  let close: () => Promise<void>;
  const keys: Record<string, { id: string; key: string }> = {};
  const as = (key: string) => ({ requestHeader: new Headers({ authorization: `Bearer ${key}` }) }) as HandlerContext;
  const service = () => keyService({ db, adminTenant: "admin" });
  // A handler answers a value or a promise of one (ServiceImpl's type): awaited as the message it is.
  const make = async (who: string, req: { role: string; tenantId?: string; label?: string; ttlSeconds?: number }) =>
    (await service().createApiKey(
      create(api.CreateApiKeyRequestSchema, req),
      as(keys[who]!.key),
    )) as api.CreateApiKeyResponse;
  const list = async (who: string, req: { tenantId?: string; includeRevoked?: boolean } = {}) =>
    (
      (await service().listApiKeys(
        create(api.ListApiKeysRequestSchema, req),
        as(keys[who]!.key),
      )) as api.ListApiKeysResponse
    ).keys;
  const revoke = async (key: string, keyId: string) =>
    (await service().revokeApiKey(
      create(api.RevokeApiKeyRequestSchema, { keyId }),
      as(key),
    )) as api.RevokeApiKeyResponse;
  const code = (p: unknown) =>
    Promise.resolve(p).then(
      () => "ok",
      (err) => Code[ConnectError.from(err).code],
    );

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    for (const t of ["admin", "t-a", "t-b"]) await ensureTenant(db, t, t);
    const made: [string, string, Role][] = [
      ["admin", "admin", "admin"],
      ["provider-a", "t-a", "provider"],
      ["consumer-a", "t-a", "consumer"],
      ["provider-b", "t-b", "provider"],
    ];
    for (const [name, tenant, role] of made) keys[name] = await createApiKey(db, tenant, role, name);
  });
  afterAll(() => close());

  it("makes a key shown once, that works at once and belongs to the tenant named (created if new)", async () => {
    const res = await make("admin", { role: "provider", tenantId: "acme", label: "acme's rack" });
    expect(res.secretKey).toMatch(/^dumont_[a-f0-9]{16}_[A-Za-z0-9_-]{43}$/);
    expect(res.key).toMatchObject({ tenantId: "acme", role: "provider", label: "acme's rack" });
    expect(res.secretKey).toContain(res.key!.id);
    expect(await authenticate(db, `Bearer ${res.secretKey}`)).toEqual({
      keyId: res.key!.id,
      tenantId: "acme",
      role: "provider",
    });
    // Listing never shows a secret.
    const listed = await list("admin", { tenantId: "acme" });
    // (The secret is what follows the id: base64url, which may itself hold "_".)
    const secret = res.secretKey.slice(`dumont_${res.key!.id}_`.length);
    expect(secret).toHaveLength(43);
    expect(JSON.stringify(listed.map((k) => [k.id, k.tenantId, k.role, k.label]))).not.toContain(secret);
  });

  it("lets a provider or consumer make keys of its own role for its own tenant only", async () => {
    const own = await make("provider-a", { role: "provider", label: "ci" });
    expect(own.key).toMatchObject({ tenantId: "t-a", role: "provider" });
    expect(await code(make("provider-a", { role: "provider", tenantId: "t-b" }))).toBe("PermissionDenied");
    expect(await code(make("consumer-a", { role: "provider" }))).toBe("PermissionDenied");
    expect(await code(make("provider-a", { role: "admin" }))).toBe("PermissionDenied");
    await expect(make("consumer-a", { role: "provider" })).rejects.toThrow(
      "a consumer key makes consumer keys only; ask an admin for a provider key",
    );
  });

  it("lists keys by tenant and role: everything for admins, one's own tenant's of one's role for others", async () => {
    const seen = (await list("provider-b")).map((k) => [k.tenantId, k.role]);
    expect(seen).toEqual([["t-b", "provider"]]);
    expect((await list("consumer-a")).map((k) => k.label)).toEqual(["consumer-a"]);
    expect(await code(list("provider-a", { tenantId: "t-b" }))).toBe("PermissionDenied");
    const all = await list("admin");
    expect(new Set(all.map((k) => k.tenantId))).toEqual(new Set(["admin", "t-a", "t-b", "acme"]));
    expect((await list("admin", { tenantId: "t-b" })).map((k) => k.label)).toEqual(["provider-b"]);
    // A tenant that does not exist is said so, not listed as one without keys.
    await expect(list("admin", { tenantId: "t-nosuch" })).rejects.toThrow(
      /^\[not_found\] there is no tenant "t-nosuch"/,
    );
  });

  it("revokes a key: it opens nothing from then on, and is listed only when revoked ones are asked for", async () => {
    const doomed = await make("provider-b", { role: "provider", label: "old laptop" });
    // Another tenant's key is not found, not denied.
    expect(await code(revoke(keys["provider-a"]!.key, doomed.key!.id))).toBe("NotFound");
    const res = await revoke(keys["provider-b"]!.key, doomed.key!.id);
    expect(res.key?.revokedAt).toBeDefined();
    await expect(authenticate(db, `Bearer ${doomed.secretKey}`)).rejects.toThrow("API key not recognised or revoked");
    expect((await list("provider-b")).map((k) => k.id)).not.toContain(doomed.key!.id);
    expect((await list("provider-b", { includeRevoked: true })).map((k) => k.id)).toContain(doomed.key!.id);
    // Revoking again answers the key as it stands.
    expect((await revoke(keys["provider-b"]!.key, doomed.key!.id)).key?.revokedAt).toEqual(res.key?.revokedAt);
  });

  it("keeps the last admin key that never expires, and revokes an admin key once there is another", async () => {
    const self = keys.admin!;
    const answer = revoke(self.key, self.id);
    expect(await code(answer)).toBe("FailedPrecondition");
    await expect(answer).rejects.toThrow(/is the last admin key that never expires; make another/);
    // An admin key that expires does not count: once it did, nobody could get in.
    const temporary = await make("admin", { role: "admin", tenantId: "admin", label: "on call", ttlSeconds: 3600 });
    expect(await code(revoke(temporary.secretKey, self.id))).toBe("FailedPrecondition");
    expect((await revoke(self.key, temporary.key!.id)).key?.revokedAt).toBeDefined(); // an expiring one may go
    const second = await make("admin", { role: "admin", tenantId: "admin", label: "second operator" });
    expect((await revoke(second.secretKey, self.id)).key?.revokedAt).toBeDefined();
    expect(await code(revoke(second.secretKey, second.key!.id))).toBe("FailedPrecondition");
    keys.admin = { id: second.key!.id, key: second.secretKey };
  });

  it("leaves one admin key when two admins revoke each other's keys at once", async () => {
    const other = await make("admin", { role: "admin", tenantId: "admin", label: "third operator" });
    const self = keys.admin!;
    const [selfRevoked, otherRevoked] = await Promise.all([
      code(revoke(self.key, other.key!.id)),
      code(revoke(other.secretKey, self.id)),
    ]);
    // One wins; the other is refused as the last admin key, or (on Postgres, where the two truly overlap) its
    // key was revoked before it was even authenticated.
    expect([selfRevoked, otherRevoked].filter((c) => c === "ok")).toHaveLength(1);
    expect([selfRevoked, otherRevoked].find((c) => c !== "ok")).toMatch(/^(FailedPrecondition|Unauthenticated)$/);
    keys.admin = selfRevoked === "ok" ? self : { id: other.key!.id, key: other.secretKey };
    const admins = (await list("admin")).filter((k) => k.role === "admin");
    expect(admins.map((k) => k.id)).toEqual([keys.admin.id]);
  });

  it("makes a key that expires: it works until then, and is refused after, saying when and what to do", async () => {
    const res = await make("provider-a", { role: "provider", label: "a week", ttlSeconds: 7 * 86_400 });
    const expires = timestampDate(res.key!.expiresAt!).getTime();
    expect(Math.abs(expires - (Date.now() + 7 * 86_400_000))).toBeLessThan(60_000);
    expect((await authenticate(db, `Bearer ${res.secretKey}`)).keyId).toBe(res.key!.id);
    expect((await make("provider-a", { role: "provider" })).key?.expiresAt).toBeUndefined(); // 0: never
    // The clock past its date (the row's date moved back: no waiting).
    const past = new Date(Date.now() - 1000);
    await db.updateTable("api_keys").set({ expires_at: past }).where("id", "=", res.key!.id).execute();
    await expect(authenticate(db, `Bearer ${res.secretKey}`)).rejects.toThrow(
      `API key ${res.key!.id} expired at ${past.toISOString()}; make a new one (dumont key create)`,
    );
    // A wrong secret under its id learns nothing of the expiry.
    await expect(authenticate(db, `Bearer dumont_${res.key!.id}_${"x".repeat(43)}`)).rejects.toThrow(
      "API key not recognised or revoked",
    );
  });

  it("makes admin keys for the operators' tenant only: an admin key sees every tenant", async () => {
    const answer = make("admin", { role: "admin", tenantId: "acme" });
    expect(await code(answer)).toBe("InvalidArgument");
    await expect(answer).rejects.toThrow(
      "admin keys belong to the operators' tenant (admin): an admin key sees every tenant. For tenant acme, make a " +
        "provider or consumer key",
    );
  });

  it("lets a key that expires make only keys that expire no later (a leaked one cannot mint a lasting one)", async () => {
    const day = await make("admin", { role: "consumer", tenantId: "t-a", label: "a day", ttlSeconds: 86_400 });
    const mint = (ttlSeconds: number) =>
      service().createApiKey(
        create(api.CreateApiKeyRequestSchema, { role: "consumer", ttlSeconds }),
        as(day.secretKey),
      ) as Promise<api.CreateApiKeyResponse>;
    for (const ttl of [0, 2 * 86_400]) {
      await expect(mint(ttl)).rejects.toThrow(
        /^\[permission_denied\] your key expires at .*, and a key it makes must expire by then/,
      );
    }
    expect((await mint(3600)).key?.expiresAt).toBeDefined();
  });

  it("holds a tenant to 100 usable keys of each role, saying what to do; revoked and expired ones do not count", async () => {
    await ensureTenant(db, "busy", "busy");
    for (let i = 0; i < MAX_TENANT_KEYS - 1; i++) await createApiKey(db, "busy", "consumer", `k${i}`);
    const expired = await createApiKey(db, "busy", "consumer", "old", { expiresAt: new Date(Date.now() - 1000) });
    expect(expired.id).toBeDefined();
    const last = await make("admin", { role: "consumer", tenantId: "busy" });
    const over = make("admin", { role: "consumer", tenantId: "busy" });
    expect(await code(over)).toBe("ResourceExhausted");
    await expect(over).rejects.toThrow(
      "tenant busy holds 100 usable consumer keys, the most it may; revoke consumer keys it no longer uses (dumont key list, dumont key revoke)",
    );
    // Its provider is not locked out by them (it could neither list nor revoke a consumer's keys).
    expect(await code(make("admin", { role: "provider", tenantId: "busy" }))).toBe("ok");
    await revoke(keys.admin!.key, last.key!.id);
    // Room for one: of two creates at once (truly at once on Postgres), one is made and one refused.
    const both = await Promise.all([1, 2].map(() => code(make("admin", { role: "consumer", tenantId: "busy" }))));
    expect(both.sort()).toEqual(["ResourceExhausted", "ok"]);
  });

  it("refuses bad fields, naming them", async () => {
    await expect(make("admin", { role: "root" })).rejects.toThrow(
      'role must be one of consumer, provider, admin, got "root"',
    );
    await expect(make("admin", { role: "consumer", tenantId: "Acme Corp" })).rejects.toThrow(
      /tenant_id must be 2..63 lowercase letters, digits and dashes/,
    );
    // DNS-label style: a dash neither first nor last.
    for (const tenantId of ["team-", "-team"]) {
      await expect(make("admin", { role: "consumer", tenantId })).rejects.toThrow(
        `tenant_id must be 2..63 lowercase letters, digits and dashes, starting and ending with a letter or digit, got "${tenantId}"`,
      );
    }
    expect(await code(make("admin", { role: "consumer", tenantId: "team-a" }))).toBe("ok");
    await expect(make("admin", { role: "consumer", label: "x".repeat(201) })).rejects.toThrow(
      /label must be at most 200 characters/,
    );
    for (const ttlSeconds of [59, 3650 * 86_400 + 1]) {
      await expect(make("admin", { role: "consumer", ttlSeconds })).rejects.toThrow(
        /ttl_seconds must be 60..315360000 \(10 years\), or 0 for a key that never expires/,
      );
    }
    await expect(revoke(keys.admin!.key, "dumont_abc")).rejects.toThrow(/key_id must be a key's 16 hex characters/);
    // A whole key given as the id: refused without quoting its secret back.
    const whole = keys.admin!.key;
    // Also pasted with a space before it, after "Bearer ", or quoted.
    for (const pasted of [whole, ` ${whole}`, `Bearer ${whole}`, `"${whole}"`]) {
      const refused = await revoke(whole, pasted).catch((err: Error) => err);
      expect(String(refused)).toMatch(/key_id must be .*, got a whole key \(its secret not shown\)/);
      expect(String(refused)).not.toContain(whole.slice(-20));
    }
    expect(await code(revoke(keys.admin!.key, "0123456789abcdef"))).toBe("NotFound");
  });
});
