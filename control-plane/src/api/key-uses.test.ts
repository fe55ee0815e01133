import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTenant, getApiKey, markApiKeyUsed } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { openTestDatabase } from "../db/test-database.js";
import { capturingLogger } from "../test-logger.js";
import { authenticate, createApiKey } from "./auth.js";
import { KEY_USE_RESOLUTION_MS, KeyUses } from "./key-uses.js";

describe("an API key's last use", () => {
  let db: Db;
  let close: () => Promise<void>;
  const lastUsed = async (id: string) => (await getApiKey(db, id))?.last_used_at ?? null;

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    await ensureTenant(db, "t1", "Tenant one");
  });
  afterAll(() => close());

  it("is written on the first authenticated call and then at most once a resolution", async () => {
    let clock = Date.parse("2026-12-04T10:00:00Z");
    const uses = new KeyUses(db, capturingLogger([]), () => clock);
    const { id, key } = await createApiKey(db, "t1", "provider", "");
    const other = await createApiKey(db, "t1", "provider", "");
    expect(await lastUsed(id)).toBeNull();

    await authenticate(db, `Bearer ${key}`, { uses });
    await uses.settled();
    expect(await lastUsed(id)).toEqual(new Date(clock));
    expect(await lastUsed(other.id)).toBeNull();

    // Within the minute: no write, so the stored time stays the first call's.
    const first = clock;
    clock += KEY_USE_RESOLUTION_MS - 1;
    await authenticate(db, `Bearer ${key}`, { uses });
    await uses.settled();
    expect(await lastUsed(id)).toEqual(new Date(first));

    clock += 1;
    await authenticate(db, `Bearer ${key}`, { uses });
    await uses.settled();
    expect(await lastUsed(id)).toEqual(new Date(clock));
  });

  it("is not written for a call whose key did not open", async () => {
    const uses = new KeyUses(db, capturingLogger([]));
    const { id, key } = await createApiKey(db, "t1", "consumer", "");
    await expect(authenticate(db, `Bearer ${key.slice(0, -4)}AAAA`, { uses })).rejects.toThrow(/not recognised/);
    await uses.settled();
    expect(await lastUsed(id)).toBeNull();
  });

  it("never moves back: replicas write their marks in any order", async () => {
    const { id } = await createApiKey(db, "t1", "provider", "");
    const later = new Date("2026-12-04T11:00:00Z");
    await markApiKeyUsed(db, id, later);
    await markApiKeyUsed(db, id, new Date("2026-12-04T10:00:00Z"));
    expect(await lastUsed(id)).toEqual(later);
  });

  it("fails no call when the write fails: logs it and writes again on the next call", async () => {
    const lines: string[] = [];
    let clock = Date.parse("2026-12-04T12:00:00Z");
    const uses = new KeyUses(db, capturingLogger(lines), () => clock);
    const { id, key } = await createApiKey(db, "t1", "provider", "");
    await sql`ALTER TABLE api_keys ADD CONSTRAINT no_marks CHECK (id <> ${sql.lit(id)} OR last_used_at IS NULL)`.execute(
      db,
    );
    try {
      await expect(authenticate(db, `Bearer ${key}`, { uses })).resolves.toMatchObject({ keyId: id });
      await uses.settled();
    } finally {
      await sql`ALTER TABLE api_keys DROP CONSTRAINT no_marks`.execute(db);
    }
    expect(await lastUsed(id)).toBeNull();
    const warning = lines.map((l) => JSON.parse(l)).find((l) => l.msg === "could not record an API key's use");
    expect(warning).toMatchObject({ keyId: id });
    expect(JSON.stringify(lines)).not.toContain(key);

    clock += 1000; // well within the minute, but the last write failed
    await authenticate(db, `Bearer ${key}`, { uses });
    await uses.settled();
    expect(await lastUsed(id)).toEqual(new Date(clock));
  });
});
