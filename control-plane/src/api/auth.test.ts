import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTenant } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { openTestDatabase } from "../db/test-database.js";
import { authenticate, bootstrapAdminKey, createApiKey, devAdminKey, requireRole, tenantScope } from "./auth.js";

describe("API keys", () => {
  let db: Db;
  let close: () => Promise<void>;

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    await ensureTenant(db, "t1", "Tenant one");
  });
  afterAll(() => close());

  it("stores only a hash and authenticates the key it showed once", async () => {
    const { id, key } = await createApiKey(db, "t1", "provider", "laptop");
    const row = await db.selectFrom("api_keys").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
    // The secret is everything after `dumont_<id>_`; it may itself contain "_" (base64url).
    const secret = key.slice(key.indexOf("_", "dumont_".length) + 1);
    expect(secret).toHaveLength(43);
    expect(row.secret_hash).not.toContain(secret);
    expect(JSON.stringify(row)).not.toContain(key);
    await expect(authenticate(db, `Bearer ${key}`)).resolves.toEqual({ keyId: id, tenantId: "t1", role: "provider" });
  });

  it("refuses missing, malformed, wrong and revoked keys with a clear message", async () => {
    const { id, key } = await createApiKey(db, "t1", "consumer", "");
    await expect(authenticate(db, null)).rejects.toThrow(/missing API key/);
    await expect(authenticate(db, "Bearer nope")).rejects.toThrow(/malformed API key/);
    const wrong = `${key.slice(0, -4)}AAAA`;
    await expect(authenticate(db, `Bearer ${wrong}`)).rejects.toThrow(/not recognised/);
    await db.updateTable("api_keys").set({ revoked_at: new Date() }).where("id", "=", id).execute();
    await expect(authenticate(db, `Bearer ${key}`)).rejects.toThrow(/not recognised or revoked/);
  });

  it("scopes non-admins to their tenant and checks roles", () => {
    const consumer = { keyId: "k", tenantId: "t1", role: "consumer" as const };
    const admin = { keyId: "a", tenantId: "admin", role: "admin" as const };
    expect(tenantScope(consumer)).toEqual({ tenantId: "t1" });
    expect(tenantScope(admin)).toEqual({});
    expect(() => requireRole(consumer, "provider")).toThrow(/needs a provider API key; yours is a consumer key/);
    expect(() => requireRole(admin, "provider")).not.toThrow();
  });
});

describe("the first start's admin key", () => {
  it("is written before it is stored: a start stopped between the two leaves no key nobody holds", async () => {
    const { db, close } = await openTestDatabase();
    const dir = await mkdtemp(join(tmpdir(), "dumont-admin-key-"));
    const file = join(dir, "admin-api-key");
    try {
      // The first start stops as it stores the key (here: the database refuses it).
      await sql`ALTER TABLE api_keys ADD CONSTRAINT no_admin_yet CHECK (role <> 'admin')`.execute(db);
      await expect(bootstrapAdminKey(db, file, "ops")).rejects.toThrow();
      const unstored = (await readFile(file, "utf8")).trim();
      await expect(authenticate(db, `Bearer ${unstored}`)).rejects.toThrow(/not recognised/);
      // The next start makes a key, and the file holds it.
      await sql`ALTER TABLE api_keys DROP CONSTRAINT no_admin_yet`.execute(db);
      const key = await bootstrapAdminKey(db, file, "ops");
      expect(key).toBeDefined();
      expect((await readFile(file, "utf8")).trim()).toBe(key);
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      await expect(authenticate(db, `Bearer ${key}`)).resolves.toMatchObject({ tenantId: "ops", role: "admin" });
      // And only once, while an admin key opens something.
      await expect(bootstrapAdminKey(db, file, "ops")).resolves.toBeUndefined();

      // None does any more (expired, or revoked by hand): the next start makes a new one, the operators' way in.
      await db
        .updateTable("api_keys")
        .set({ expires_at: new Date(Date.now() - 1000) })
        .execute();
      const again = await bootstrapAdminKey(db, file, "ops");
      expect(again).toBeDefined();
      expect(again).not.toBe(key);
      expect((await readFile(file, "utf8")).trim()).toBe(again);
      await expect(authenticate(db, `Bearer ${again}`)).resolves.toMatchObject({ role: "admin" });
      await expect(bootstrapAdminKey(db, file, "ops")).resolves.toBeUndefined();
    } finally {
      await close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("dumont dev's admin key file", () => {
  it("is used while its key opens something as an admin, and replaced (0600) when not, saying why", async () => {
    const { db, close } = await openTestDatabase();
    const dir = await mkdtemp(join(tmpdir(), "dumont-dev-key-"));
    const file = join(dir, "admin-api-key");
    try {
      // Missing: a new one.
      const made = await devAdminKey(db, file, "ops");
      expect(made.replaced).toBe("the file was missing or empty");
      expect((await readFile(file, "utf8")).trim()).toBe(made.key);
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      await expect(authenticate(db, `Bearer ${made.key}`)).resolves.toMatchObject({ tenantId: "ops", role: "admin" });
      // Good: kept as it is.
      await expect(devAdminKey(db, file, "ops")).resolves.toEqual({ key: made.key });

      // Revoked (another admin key remains, as KeyService requires): a new one, the revoked one stays revoked.
      const other = await createApiKey(db, "ops", "admin", "another operator");
      await db.updateTable("api_keys").set({ revoked_at: new Date() }).where("id", "!=", other.id).execute();
      const renewed = await devAdminKey(db, file, "ops");
      expect(renewed.replaced).toBe("the file's key opens nothing any more (API key not recognised or revoked)");
      expect(renewed.key).not.toBe(made.key);
      expect((await readFile(file, "utf8")).trim()).toBe(renewed.key);
      await expect(authenticate(db, `Bearer ${renewed.key}`)).resolves.toMatchObject({ role: "admin" });
      await expect(authenticate(db, `Bearer ${made.key}`)).rejects.toThrow(/revoked/);

      // A key of another role, or one that expired: replaced too.
      await ensureTenant(db, "acme", "Acme");
      await writeFile(file, `${(await createApiKey(db, "acme", "provider", "")).key}\n`, { mode: 0o600 });
      expect((await devAdminKey(db, file, "ops")).replaced).toBe("the file held a provider key");
      await db
        .updateTable("api_keys")
        .set({ expires_at: new Date(Date.now() - 1000) })
        .where("role", "=", "admin")
        .execute();
      expect((await devAdminKey(db, file, "ops")).replaced).toMatch(
        /^the file's key opens nothing any more \(API key [a-f0-9]{16} expired at /,
      );
    } finally {
      await close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
