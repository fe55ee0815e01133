// Two control planes on one database and one blob store, as replicas run (README: with Postgres any number may
// share the database): their catalogue changes must not undo each other.
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { type BlobStore, openBlobStore, Repository, sealManifest } from "@dumont/repository";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTenant } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { openTestDatabase } from "../db/test-database.js";
import { createLogger } from "../logger.js";
import { createMetrics } from "../metrics.js";
import { SnapshotCoordinator } from "./snapshot-coordinator.js";
import { TenantKeys } from "./tenant-keys.js";

describe("SnapshotCoordinator replicas sharing a database", () => {
  let db: Db;
  let closeDb: () => Promise<void>;
  let blobs: string;
  const masterKey = randomBytes(32);
  beforeAll(async () => {
    ({ db, close: closeDb } = await openTestDatabase());
    await ensureTenant(db, "t1", "tenant one");
    blobs = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-replicas-"));
  });
  afterAll(async () => {
    await closeDb();
    await fs.rm(blobs, { recursive: true, force: true });
  });

  it("a relisting on one during a forget on the other never leaves a row whose record is gone", async () => {
    const key = await new TenantKeys(db, masterKey).get("t1");
    const { repository } = await Repository.openOrInit(openBlobStore(`file://${blobs}/tenants/t1`), key);
    const writer = await repository.writer();
    const dir = { type: "dir" as const, path: "d", mode: 0o755, mtimeNs: "1" };
    const id = await writer.commit([sealManifest(key, { entries: [dir] })], { workspace: "w", epoch: 0, tenant: "t1" });

    // Replica B's store holds its record deletions until released (an S3 round trip, a slow fsync).
    let reached = () => {};
    const atDelete = new Promise<void>((r) => {
      reached = r;
    });
    let release = () => {};
    const released = new Promise<void>((r) => {
      release = r;
    });
    const slowDeletes = (url: string): BlobStore => {
      const store = openBlobStore(url);
      return Object.create(store, {
        delete: {
          value: async (k: string, o?: object) => {
            if (k.startsWith("snapshots/")) {
              reached();
              await released;
            }
            return store.delete(k, o);
          },
        },
      });
    };
    const replica = (openStore?: (url: string) => BlobStore) =>
      new SnapshotCoordinator(
        db,
        new TenantKeys(db, masterKey),
        `file://${blobs}`,
        createLogger("silent"),
        createMetrics(),
        undefined,
        { openStore },
      );
    const [a, b] = [replica(), replica(slowDeletes)];
    try {
      await a.relistAll();
      const rows = async () => (await db.selectFrom("snapshots").select("id").execute()).map((r) => r.id);
      expect(await rows()).toEqual([id]);
      // B forgets the snapshot: its row goes, then its record (held). A relists meanwhile (it starts, or runs a
      // forget of its own): it waits for B's change, rather than put the row back before the record goes.
      const forgetting = b.forget({ tenantId: "t1", ids: [id], policy: {}, prune: false, dryRun: false });
      await atDelete;
      const relisting = a.relistAll();
      // Released once A's relisting is over, or has waited a second (for B's change to end, as it must).
      await Promise.race([relisting, new Promise((r) => setTimeout(r, 1_000))]);
      release();
      await Promise.all([forgetting, relisting]);
      expect(await repository.hasSnapshot(id)).toBe(false);
      await a.relistAll();
      await b.relistAll();
      expect(await rows()).toEqual([]);
    } finally {
      release();
      await a.close();
      await b.close();
    }
  });
});
