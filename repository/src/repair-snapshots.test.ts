// repair-snapshots on both stores: a snapshot some of whose files' data is gone for good is replaced by one without
// those files, which keeps its time and workspace and names the damaged one; the rest of its manifest stays as it was.
import { randomBytes } from "node:crypto";
import { describe, expect, it, vi } from "vitest";
import type { BlobStore } from "./blob-store.js";
import { checkRepository } from "./check.js";
import { isRepositoryError } from "./errors.js";
import { generateRepositoryKey } from "./key.js";
import { acquireLock } from "./lock.js";
import { type Manifest, type ManifestEntry, sealManifest, sealManifestParts } from "./manifest.js";
import { indexKey, packKey } from "./pack.js";
import { repairIndex } from "./repair-index.js";
import { repairSnapshots } from "./repair-snapshots.js";
import { repairSnapshotsText } from "./repair-snapshots-report.js";
import { Repository } from "./repository.js";
import { RepositoryIndex } from "./repository-index.js";
import { manifestKey, snapshotKey } from "./snapshot-record.js";
import { bothStores, keysIn, manifestOf, sealed } from "./testing/repository-fixtures.js";
import type { SealedChunk } from "./transfer.js";

const { stores } = bothStores("dumont-repair-snapshots-");

const meta = {
  workspace: "ws-1",
  epoch: 3,
  tenant: "tenant-a",
  source: "/work/ws-1",
  time: "2026-12-01T10:00:00.000Z",
};

/**
 * A repository on `store` with one snapshot of kept.bin, lost.bin, a hard link to lost.bin, a file naming lost.bin
 * as its link but holding kept.bin's chunk (a reader writes it from its own), a symlink and a directory, with a
 * root. kept.bin's chunk is in one pack and lost.bin's in another, returned as `lostPack`.
 */
async function snapshotOfTwoPacks(store: BlobStore) {
  const key = generateRepositoryKey();
  const { repository } = await Repository.openOrInit(store, key);
  const kept = sealed(key, randomBytes(3_000));
  const lost = sealed(key, randomBytes(5_000));
  const writer = await repository.writer();
  await writer.put([kept]);
  await writer.flush();
  await writer.put([lost]);
  const base = manifestOf({ "kept.bin": [kept], "lost.bin": [lost] });
  const manifest: Manifest = {
    version: 1,
    root: { mode: 0o750, mtimeNs: "1700000000000000042" },
    entries: [
      ...base.entries,
      { ...fileOf(base, "lost.bin"), path: "hard-link.bin", linkOf: "lost.bin" },
      { ...fileOf(base, "kept.bin"), path: "own-bytes.bin", linkOf: "lost.bin" },
      { type: "symlink", path: "to-lost", mode: 0o777, mtimeNs: "1700000000000000000", target: "lost.bin" },
    ],
  };
  const snapshot = await writer.commit([sealManifest(key, manifest)], meta);
  const index = await repository.loadIndex();
  return { key, repository, kept, lost, manifest, snapshot, lostPack: index.packIdOf(lost.id)! };
}

function fileOf(manifest: Manifest, path: string): Extract<ManifestEntry, { type: "file" }> {
  const e = manifest.entries.find((f) => f.path === path);
  if (e?.type !== "file") throw new Error(`no file ${path}`);
  return e;
}

/** The keys of records and manifest parts: what a repair writes and forgets. */
async function objects(store: BlobStore) {
  return { snapshots: await keysIn(store, "snapshots/"), manifests: await keysIn(store, "manifests/") };
}

describe.each(stores)("repair-snapshots on %s", (_name, make) => {
  it("leaves out the files whose data is gone, keeps the rest as they were, and forgets the damaged snapshot", async () => {
    const store = make();
    const { repository, kept, lost, manifest, snapshot, lostPack } = await snapshotOfTwoPacks(store);
    // lost.bin's data is gone for good: its pack and index object both (a disk that lost them, a hand's rm).
    await store.delete(packKey(lostPack));
    await store.delete(indexKey(lostPack));
    const before = await objects(store);

    const removed = [
      { path: "lost.bin", reason: `chunk ${lost.hex.slice(0, 12)} is in no index` },
      { path: "hard-link.bin", reason: `chunk ${lost.hex.slice(0, 12)} is in no index` },
    ];
    const dry = await repairSnapshots(repository, { dryRun: true, forget: true });
    expect(dry).toEqual({
      snapshots: 1,
      repaired: [
        {
          snapshot,
          workspace: "ws-1",
          time: meta.time,
          reused: false,
          forgotten: true,
          filesRemoved: 2,
          bytesRemoved: 10_000,
          removed,
        },
      ],
      unrepairable: [],
    });
    expect(await objects(store)).toEqual(before);
    expect(repairSnapshotsText(dry, true, "forget").out).toBe(
      `snapshot ${snapshot.slice(0, 12)} of "ws-1" at ${meta.time}:\n` +
        `  would remove "lost.bin": chunk ${lost.hex.slice(0, 12)} is in no index\n` +
        `  would remove "hard-link.bin": chunk ${lost.hex.slice(0, 12)} is in no index\n` +
        `  2 files (9.8 KiB) would be left out; would save a new snapshot, would forget ${snapshot.slice(0, 12)}\n` +
        "1 snapshot read: 1 snapshot would be repaired\n",
    );

    // The control plane's hooks: the repair is listed before the damaged snapshot's record goes.
    const calls: string[] = [];
    const progress: number[] = [];
    const report = await repairSnapshots(repository, {
      forget: true,
      onProgress: (p) => progress.push(p.snapshotsDone),
      onRepaired: async (repaired, damaged) => {
        expect(await store.stat(snapshotKey(repaired.id))).toBeDefined();
        calls.push(`repaired ${damaged.id} as ${repaired.id}`);
      },
      beforeDelete: async (id) => {
        expect(await store.stat(snapshotKey(id))).toBeDefined();
        calls.push(`forgetting ${id}`);
      },
    });
    expect(progress).toEqual([1]);
    const [repairedId] = (await repository.listSnapshots()).map((s) => s.id);
    expect(calls).toEqual([`repaired ${snapshot} as ${repairedId}`, `forgetting ${snapshot}`]);
    expect(report.repaired).toEqual([{ ...dry.repaired[0], repaired: repairedId }]);
    expect(await store.stat(snapshotKey(snapshot))).toBeUndefined();

    // The repaired snapshot is the damaged one without those two files: the same time, workspace and source, the
    // root as it was, the link whose own chunks are whole kept without its link, and totals that count what is left.
    const record = await repository.findSnapshot(repairedId);
    expect(record).toMatchObject({ ...meta, repairedFrom: snapshot });
    expect(record.totals).toEqual({ files: 2, dirs: 1, symlinks: 1, bytes: 6_000, chunks: 2 });
    const { linkOf: _linkOf, ...ownBytes } = fileOf(manifest, "own-bytes.bin");
    expect(await repository.readManifest(record)).toEqual({
      version: 1,
      root: manifest.root,
      entries: [
        manifest.entries[0],
        fileOf(manifest, "kept.bin"),
        ownBytes,
        manifest.entries.find((e) => e.path === "to-lost"),
      ],
    });
    expect(ownBytes.chunks).toEqual([kept.hex]);
    expect((await checkRepository(repository)).ok).toBe(true);

    // Nothing is left to repair.
    expect(await repairSnapshots(repository, { forget: true })).toEqual({
      snapshots: 1,
      repaired: [],
      unrepairable: [],
    });
    await store.close();
  });

  it("counts a chunk gone only once every copy of it is in a pack the store no longer has", async () => {
    const store = make();
    const { repository, lost, lostPack } = await snapshotOfTwoPacks(store);
    // A second copy of lost.bin's chunk in a pack of its own, as two snapshots racing to store it leave.
    const racing = await repository.writer({ index: new RepositoryIndex() });
    await racing.put([lost]);
    await racing.flush();
    await racing.abort();
    const copyPack = [...racing.index.packs.keys()][0];

    await store.delete(packKey(lostPack)); // its index object stays: repair-index's to remove
    expect((await repairSnapshots(repository, { dryRun: true })).repaired).toEqual([]);
    await store.delete(packKey(copyPack));
    const report = await repairSnapshots(repository, { dryRun: true });
    expect(report.repaired[0].removed).toEqual(
      ["lost.bin", "hard-link.bin"].map((path) => ({
        path,
        reason: expect.stringMatching(
          new RegExp(
            `^chunk ${lost.hex.slice(0, 12)} is in pack (${lostPack.slice(0, 12)}|${copyPack.slice(0, 12)}), which the store no longer has$`,
          ),
        ),
      })),
    );
    await store.close();
  });

  it("finds the repair a run cut short left beside the damaged snapshot, and writes no second one", async () => {
    const store = make();
    const { repository, snapshot, lostPack } = await snapshotOfTwoPacks(store);
    await store.delete(packKey(lostPack));
    await store.delete(indexKey(lostPack));

    // Without forget, the damaged snapshot stays beside its repair, and the report says how to forget it.
    const first = await repairSnapshots(repository);
    const repairedId = first.repaired[0].repaired!;
    expect(first.repaired[0].forgotten).toBe(false);
    // Both have the same time; the repair is listed after, so `latest` is the one that restores whole.
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([snapshot, repairedId]);
    expect((await repository.findSnapshot("latest")).id).toBe(repairedId);
    expect(repairSnapshotsText(first, false, "forget --repo R").err).toBe(
      `the damaged snapshot stays beside its repair: \`forget --repo R ${snapshot.slice(0, 12)}\` forgets it (or ` +
        "repair again with --forget)\n",
    );

    // Run again with forget (as after a crash between the commit and the forget): the repair is found by its
    // repairedFrom, nothing is written, and the damaged one goes.
    const manifests = await keysIn(store, "manifests/");
    const second = await repairSnapshots(repository, { forget: true });
    expect(second.repaired).toEqual([{ ...first.repaired[0], reused: true, forgotten: true }]);
    expect(repairSnapshotsText(second, false, "forget").out).toContain(
      `took snapshot ${repairedId.slice(0, 12)}, the same repair made before, forgot ${snapshot.slice(0, 12)}\n`,
    );
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([repairedId]);
    expect(await keysIn(store, "manifests/")).toEqual(manifests);
    await store.close();
  });

  it("repairs in its turn a repair that lost data since, and points no snapshot to it while it is damaged", async () => {
    /** A snapshot repaired (without forget), then the data of the files its repair kept lost too. */
    const repairedThenDamaged = async (store: BlobStore) => {
      const { repository, kept, snapshot, lostPack } = await snapshotOfTwoPacks(store);
      await store.delete(packKey(lostPack));
      await store.delete(indexKey(lostPack));
      const repairedId = (await repairSnapshots(repository)).repaired[0].repaired!;
      const keptPack = (await repository.loadIndex()).packIdOf(kept.id)!;
      await store.delete(packKey(keptPack));
      await store.delete(indexKey(keptPack));
      // A repository object of its own, to count the writers the repair takes.
      const fresh = await Repository.open(store, repository.key);
      return { repository: fresh, snapshot, repairedId, writers: vi.spyOn(fresh, "writer") };
    };

    // Named alone, the damaged snapshot is not pointed to its damaged repair: it is repaired again. Then its old
    // repair, repaired in its turn, comes to the same snapshot, which is taken: no second one is written.
    const store = make();
    const alone = await repairedThenDamaged(store);
    const named = await repairSnapshots(alone.repository, { ids: [alone.snapshot], forget: true });
    expect(named.repaired.map((r) => [r.snapshot, r.filesRemoved, r.reused])).toEqual([[alone.snapshot, 4, false]]);
    expect(named.repaired[0].repaired).not.toBe(alone.repairedId);
    expect(alone.writers).toHaveBeenCalledTimes(1);
    const rest = await repairSnapshots(alone.repository, { forget: true });
    expect(rest.repaired.map((r) => [r.snapshot, r.repaired, r.reused])).toEqual([
      [alone.repairedId, named.repaired[0].repaired, true],
    ]);
    expect(alone.writers).toHaveBeenCalledTimes(1);
    expect((await alone.repository.listSnapshots()).map((s) => s.id)).toEqual([named.repaired[0].repaired]);

    // All at once: the damaged snapshot is judged first (a repair is listed after a snapshot of its time) and
    // repaired again, and its old repair, repaired in its turn, comes to the same snapshot and takes it. One
    // snapshot is left, and every entry names it.
    const other = make();
    const all = await repairedThenDamaged(other);
    const report = await repairSnapshots(all.repository, { forget: true });
    expect(all.writers).toHaveBeenCalledTimes(1);
    const [last, ...none] = await all.repository.listSnapshots();
    expect(none).toEqual([]);
    expect(report.repaired.map((r) => r.snapshot)).toEqual([all.snapshot, all.repairedId]);
    expect(report.repaired.map((r) => [r.repaired, r.forgotten])).toEqual([
      [last.id, true],
      [last.id, true],
    ]);
    expect(report.repaired.map((r) => r.reused)).toEqual([false, true]);
    expect((await checkRepository(all.repository)).ok).toBe(true);
    await store.close();
    await other.close();
  });

  it("forgets no snapshot for a repair whose manifest does not open: it is written again", async () => {
    const store = make();
    const { repository, snapshot, lostPack } = await snapshotOfTwoPacks(store);
    await store.delete(packKey(lostPack));
    await store.delete(indexKey(lostPack));
    const repairedId = (await repairSnapshots(repository)).repaired[0].repaired!;
    // The repair's one part (written by the repair: the damaged snapshot's was another) rots.
    const [part] = (await repository.findSnapshot(repairedId)).manifests;
    const bytes = await store.get(manifestKey(part));
    bytes[bytes.length >> 1] ^= 0x04;
    await store.put(manifestKey(part), bytes);

    const report = await repairSnapshots(repository, { ids: [snapshot], forget: true });
    expect(report.repaired.map((r) => [r.snapshot, r.reused, r.forgotten])).toEqual([[snapshot, false, true]]);
    // The commit wrote the part again whole, so both repairs open now; the damaged snapshot is gone.
    for (const s of await repository.listSnapshots()) {
      expect(s.repairedFrom).toBe(snapshot);
      await expect(repository.readManifest(s)).resolves.toBeDefined();
    }
    expect((await checkRepository(repository)).ok).toBe(true);
    await store.close();
  });

  it("writes only the manifest parts that lose a file, drops a part left empty, and keeps the first for its root", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = [0, 1, 2, 3].map(() => sealed(key, randomBytes(1_000)));
    const writer = await repository.writer();
    await writer.put([chunks[1], chunks[2]]);
    await writer.flush();
    await writer.put([chunks[0], chunks[3]]);
    const files: Record<string, SealedChunk[]> = Object.fromEntries(chunks.map((c, i) => [`f${i}.bin`, [c]]));
    const root = { mode: 0o700, mtimeNs: "1700000000000000007" };
    // Parts far smaller than an entry: each file a part of its own, the first with the root.
    const parts = sealManifestParts(key, manifestOf(files).entries.slice(1), { partBytes: 64, root });
    expect(parts).toHaveLength(4);
    const snapshot = await writer.commit(parts, meta);
    const original = await repository.findSnapshot(snapshot);
    const lostPack = (await repository.loadIndex()).packIdOf(chunks[3].id)!;
    await store.delete(packKey(lostPack));
    await store.delete(indexKey(lostPack));

    const report = await repairSnapshots(repository, { forget: true });
    const record = await repository.findSnapshot(report.repaired[0].repaired!);
    // f0's part is written again without it (the root alone), f3's goes, and the others are the very objects the
    // damaged snapshot named.
    expect(record.manifests.slice(1)).toEqual(original.manifests.slice(1, 3));
    expect(record.manifests[0]).not.toBe(original.manifests[0]);
    expect(await repository.readManifest(record)).toEqual({
      version: 1,
      root,
      entries: manifestOf(files).entries.slice(2, 4),
    });
    // f3's part is no snapshot's now: a prune would delete it; it is still there until then.
    expect(await store.stat(manifestKey(original.manifests[3]))).toBeDefined();
    expect((await checkRepository(repository)).ok).toBe(true);
    await store.close();
  });

  it("repairs only the snapshots named, and names a snapshot whose manifest does not open without stopping", async () => {
    const store = make();
    const { key, repository, lost, snapshot: first, lostPack } = await snapshotOfTwoPacks(store);
    const other = await repository.writer();
    const second = await other.commit([sealManifest(key, manifestOf({ "again.bin": [lost] }))], {
      ...meta,
      time: "2026-12-02T10:00:00.000Z",
    });
    const third = await (await repository.writer()).commit([sealManifest(key, manifestOf({ "empty.txt": [] }))], {
      ...meta,
      time: "2026-12-03T10:00:00.000Z",
    });
    await store.delete(packKey(lostPack));
    await store.delete(indexKey(lostPack));

    const named = await repairSnapshots(repository, { ids: [second.slice(0, 10)], dryRun: true });
    expect(named.snapshots).toBe(1);
    expect(named.repaired.map((r) => [r.snapshot, r.removed.map((f) => f.path)])).toEqual([[second, ["again.bin"]]]);

    // The third's only manifest part is lost: which files it holds cannot be told. The others are repaired.
    await store.delete(manifestKey((await repository.findSnapshot(third)).manifests[0]));
    const report = await repairSnapshots(repository, { forget: true });
    expect(report.snapshots).toBe(3);
    expect(report.repaired.map((r) => r.snapshot)).toEqual([first, second]);
    expect(report.unrepairable).toEqual([
      {
        snapshot: third,
        message: expect.stringMatching(
          /^its manifest cannot be read \(.*\), so which files it holds cannot be told: forget it by id/,
        ),
      },
    ]);
    expect(repairSnapshotsText(report, false, "forget").err).toMatch(
      new RegExp(`^cannot repair snapshot ${third.slice(0, 12)}: its manifest`),
    );
    await store.close();
  });

  it("names a record that does not open, and refuses to guess which snapshot is the latest while one does not", async () => {
    const store = make();
    const { repository, snapshot, lostPack } = await snapshotOfTwoPacks(store);
    await store.delete(packKey(lostPack));
    await store.delete(indexKey(lostPack));
    const damaged = "ee".repeat(32);
    await store.put(snapshotKey(damaged), Buffer.from("not a sealed record"));
    await store.put(snapshotKey("not-an-id"), Buffer.from("put there by hand"));

    await expect(repairSnapshots(repository, { ids: ["latest"] })).rejects.toThrow(
      `the record of snapshot ${damaged} does not open, so which snapshot is the latest cannot be told: name the ` +
        "snapshot to repair by id",
    );
    const report = await repairSnapshots(repository, { dryRun: true });
    expect(report.snapshots).toBe(2);
    expect(report.repaired.map((r) => r.snapshot)).toEqual([snapshot]);
    expect(report.unrepairable).toEqual([
      {
        snapshot: damaged,
        message: "its record does not open, so what it holds cannot be told: forget it by id (`snapshot forget ID`)",
      },
    ]);
    await store.close();
  });

  it("changes nothing while an index object does not open, or while a pack without one may hold what is missing", async () => {
    const store = make();
    const { key, repository, lostPack, snapshot } = await snapshotOfTwoPacks(store);
    const before = await objects(store);

    // lost.bin's pack is there but its index object is not: the chunk is in no index, and only repair-index tells
    // whether that pack holds it (it does).
    const indexObject = await store.get(indexKey(lostPack));
    await store.delete(indexKey(lostPack));
    await expect(repairSnapshots(repository, { forget: true })).rejects.toThrow(
      new RegExp(
        `^snapshot ${snapshot} uses chunks that are gone .* while 1 pack has no index object: .*Run \`snapshot repair-index\``,
      ),
    );
    expect(await objects(store)).toEqual(before);

    // An index object that does not open: which chunks it listed cannot be told.
    await store.put(
      indexKey(lostPack),
      Buffer.concat([indexObject.subarray(0, -1), Buffer.from([indexObject.at(-1)! ^ 1])]),
    );
    await expect(repairSnapshots(repository)).rejects.toSatisfy(
      (e) =>
        isRepositoryError(e, "corrupt") &&
        /1 index object does not open .*Run `snapshot repair-index` first/.test((e as Error).message),
    );
    expect(await objects(store)).toEqual(before);

    // repair-index mends both, and there is nothing to repair.
    await repairIndex(await Repository.open(store, key));
    expect(await repairSnapshots(repository)).toEqual({ snapshots: 1, repaired: [], unrepairable: [] });
    await store.close();
  });

  it("needs the repository to itself; a dry run reads beside a snapshot", async () => {
    const store = make();
    const { key, repository, lostPack } = await snapshotOfTwoPacks(store);
    await store.delete(packKey(lostPack));
    await store.delete(indexKey(lostPack));
    const snapshotLock = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
    await expect(repairSnapshots(repository)).rejects.toSatisfy((e) => isRepositoryError(e, "locked"));
    expect((await repairSnapshots(repository, { dryRun: true })).repaired).toHaveLength(1);
    await snapshotLock.release();
    expect((await repairSnapshots(repository)).repaired[0].repaired).toBeDefined();
    await store.close();
  });
});
