// The snapshot catalogue's queries keep to their tenant: an id alone never reaches another tenant's row.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTenant } from "./credential-repository.js";
import type { Db } from "./database.js";
import { deleteSnapshot, findSnapshotsByPrefix, getSnapshot, listSnapshots } from "./snapshot-repository.js";
import { insertTestSnapshot, openTestDatabase } from "./test-database.js";

describe("snapshot catalogue, tenant by tenant", () => {
  let db: Db;
  let close: () => Promise<void>;
  const ofA = "aa".repeat(32);
  const ofB = "ab".repeat(32);

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    await ensureTenant(db, "a", "a");
    await ensureTenant(db, "b", "b");
    await insertTestSnapshot(db, ofA, "a", "h");
    await insertTestSnapshot(db, ofB, "b", "h");
  });
  afterAll(async () => {
    await close();
  });

  it("reads and finds another tenant's snapshot by no id or prefix", async () => {
    expect(await getSnapshot(db, ofB, { tenantId: "a" })).toBeUndefined();
    expect((await getSnapshot(db, ofB, { tenantId: "b" }))?.id).toBe(ofB);
    expect((await findSnapshotsByPrefix(db, "a", { tenantId: "a" })).map((r) => r.id)).toEqual([ofA]);
    expect((await listSnapshots(db, { tenantId: "a" })).map((r) => r.id)).toEqual([ofA]);
  });

  it("deletes no other tenant's row, whatever id it is given", async () => {
    await deleteSnapshot(db, "a", ofB);
    expect((await db.selectFrom("snapshots").select("id").orderBy("id").execute()).map((r) => r.id)).toEqual([
      ofA,
      ofB,
    ]);
    await deleteSnapshot(db, "b", ofB);
    expect((await db.selectFrom("snapshots").select("id").execute()).map((r) => r.id)).toEqual([ofA]);
  });
});
