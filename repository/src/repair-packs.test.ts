// repair-packs on both stores: a pack with a damaged chunk is rewritten without it, the chunk leaves the index, and a
// later snapshot that has those bytes stores them again, which makes the old snapshots whole too.
import { randomBytes } from "node:crypto";
import { describe, expect, it, vi } from "vitest";
import type { BlobStore } from "./blob-store.js";
import { checkRepository } from "./check.js";
import { isRepositoryError } from "./errors.js";
import { generateRepositoryKey } from "./key.js";
import { acquireLock } from "./lock.js";
import { sealManifest } from "./manifest.js";
import { indexKey, packKey } from "./pack.js";
import { pruneRepository } from "./prune.js";
import { repairIndex } from "./repair-index.js";
import { repairPacks } from "./repair-packs.js";
import { repairPacksAdvice, repairPacksText } from "./repair-packs-report.js";
import { Repository } from "./repository.js";
import { RepositoryIndex } from "./repository-index.js";
import { chunkCodec } from "./sealing.js";
import { bothStores, collect, keysIn, manifestOf, sealed } from "./testing/repository-fixtures.js";
import type { FetchedChunk, SealedChunk } from "./transfer.js";

const { stores } = bothStores("dumont-repair-packs-");

const meta = { workspace: "ws-1", epoch: 1, tenant: "tenant-a" };

async function fetchAll(repository: Repository, chunks: SealedChunk[]): Promise<FetchedChunk[]> {
  return collect((await repository.chunkSource()).get(chunks.map((c) => c.id)));
}

/**
 * A repository on `store` with one snapshot of good.bin, bad.bin and other.bin, one chunk each, all in one pack,
 * and bad's chunk damaged in the store (a byte in its middle flipped).
 */
async function oneDamagedChunk(store: BlobStore) {
  const key = generateRepositoryKey();
  const { repository } = await Repository.openOrInit(store, key);
  const [good, bad, other] = [0, 1, 2].map(() => sealed(key, randomBytes(3_000)));
  const writer = await repository.writer();
  await writer.put([good, bad, other]);
  const snapshot = await writer.commit(
    [sealManifest(key, manifestOf({ "good.bin": [good], "bad.bin": [bad], "other.bin": [other] }))],
    meta,
  );
  const { packId, offset, length } = (await repository.loadIndex()).get(bad.id)!;
  const pack = await store.get(packKey(packId));
  pack[offset + Math.floor(length / 2)] ^= 0x10;
  await store.put(packKey(packId), pack);
  return { key, repository, good, bad, other, snapshot, packId };
}

/** A pack of its own holding `chunks` (beside whatever else holds them), written as a racing snapshot would. */
async function packOf(repository: Repository, chunks: SealedChunk[]): Promise<string> {
  const writer = await repository.writer({ index: new RepositoryIndex() });
  await writer.put(chunks);
  await writer.flush();
  await writer.abort();
  return [...writer.index.packs.keys()][0];
}

/**
 * Makes `repository.loadIndex` give an index of these packs, added in this order (the last found first for a chunk
 * they share): which copy a real load finds first depends on the order its reads of the index objects finish.
 */
function loadingInOrder(repository: Repository, packIds: string[]) {
  return vi.spyOn(repository, "loadIndex").mockImplementation(async () => {
    const index = new RepositoryIndex();
    for (const packId of packIds) index.add(await repository.readPackIndex(packId));
    return index;
  });
}

/** Each chunk is found, and opens to its bytes. */
async function expectWhole(repository: Repository, chunks: SealedChunk[]): Promise<void> {
  const fetched = await fetchAll(repository, chunks);
  expect(fetched.map((f) => f.error)).toEqual(chunks.map(() => undefined));
  expect(fetched.map((f) => chunkCodec.openChunk(repository.key, f.id, f.blob!))).toEqual(
    chunks.map((c) => chunkCodec.openChunk(repository.key, c.id, c.blob)),
  );
}

/** What check finds: only these chunks in no pack. */
async function expectOnlyMissing(repository: Repository, ...hexes: string[]): Promise<void> {
  expect((await checkRepository(repository)).problems.map((p) => [p.kind, p.chunk])).toEqual(
    hexes.map((hex) => ["chunk-missing", hex]),
  );
}

/** Flips a byte in the middle of `chunk` where `packId` holds it. */
async function damage(repository: Repository, packId: string, chunk: SealedChunk): Promise<void> {
  const { offset, length } = (await repository.readPackIndex(packId)).entries.find((e) => e.id.equals(chunk.id))!;
  const bytes = await repository.store.get(packKey(packId));
  bytes[offset + Math.floor(length / 2)] ^= 0x20;
  await repository.store.put(packKey(packId), bytes);
}

describe.each(stores)("repair-packs on %s", (_name, make) => {
  it("rewrites a pack longer than its index says (bytes appended after its header), which check names", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = [0, 1].map(() => sealed(key, randomBytes(3_000)));
    const writer = await repository.writer();
    await writer.put(chunks);
    await writer.commit([sealManifest(key, manifestOf({ "a.bin": [chunks[0]], "b.bin": [chunks[1]] }))], meta);
    const [packId] = (await repository.loadIndex()).packs.keys();
    await store.put(packKey(packId), Buffer.concat([await store.get(packKey(packId)), Buffer.from("garbage\n")]));
    const checked = await checkRepository(repository);
    expect(checked.problems.map((p) => [p.kind, p.pack])).toEqual([["pack-size", packId]]);
    // The way check gives (repair-packs) mends it: every chunk kept, in a new pack; check clean after.
    expect(repairPacksAdvice(checked.problems, "x")).toBeDefined();
    const report = await repairPacks(repository);
    expect(report).toMatchObject({
      repaired: [{ pack: packId, salvaged: 2, damaged: [], reason: "8 bytes longer than its index says" }],
      lost: [],
    });
    expect(repairPacksText(report, false, "check").out).toContain(
      `rewrote ${packId.slice(0, 12)}: 2 chunks kept (8 bytes longer than its index says)`,
    );
    expect(await store.stat(packKey(packId))).toBeUndefined();
    expect((await checkRepository(repository)).problems).toEqual([]);
    await expectWhole(repository, chunks);
    await store.close();
  });

  it("rewrites a pack without its damaged chunk, and the next snapshot holding those bytes makes the old one whole", async () => {
    const store = make();
    const { key, repository, good, bad, other, snapshot, packId } = await oneDamagedChunk(store);
    const before = { data: await keysIn(store, "data/"), index: await keysIn(store, "index/") };

    // A dry run says what it would do and changes nothing.
    const dry = await repairPacks(repository, { dryRun: true });
    expect(dry).toEqual({
      packs: 1,
      packsRead: 1,
      repaired: [{ pack: packId, salvaged: 2, damaged: [{ chunk: bad.hex, reason: expect.any(String) }] }],
      skipped: [],
      lost: [bad.hex],
    });
    expect({ data: await keysIn(store, "data/"), index: await keysIn(store, "index/") }).toEqual(before);
    expect(repairPacksText(dry, true, "snapshot check").out).toMatch(/would rewrite 1 pack/);

    const progress: number[] = [];
    const report = await repairPacks(repository, { onProgress: (p) => progress.push(p.packsDone) });
    expect(report).toEqual(dry);
    expect(progress).toEqual([0, 1]);
    // The old pack and its index object are gone; one new pack holds the two chunks that verified.
    expect(await store.stat(packKey(packId))).toBeUndefined();
    expect(await store.stat(indexKey(packId))).toBeUndefined();
    const index = await repository.loadIndex();
    expect(index.packs.size).toBe(1);
    expect(index.has(bad.id)).toBe(false);
    expect(index.packIdOf(good.id)).toBe(index.packIdOf(other.id));
    expect(index.packIdOf(good.id)).not.toBe(packId);
    await expectWhole(repository, [good, other]);
    const text = repairPacksText(report, false, "snapshot check");
    expect(text.out).toMatch(new RegExp(`rewrote ${packId.slice(0, 12)}: 2 chunks kept, 1 damaged chunk left out`));
    expect(text.err).toMatch(
      new RegExp(`^1 damaged chunk is in no other pack \\(${bad.hex.slice(0, 12)}\\): \`snapshot check\` names`),
    );

    // check now names the chunk as in no pack (no longer as damaged), with the file it breaks.
    const checked = await checkRepository(repository);
    expect(checked.problems.map((p) => [p.kind, p.chunk, p.files])).toEqual([
      ["chunk-missing", bad.hex, [{ snapshot, path: "bad.bin" }]],
    ]);

    // A writer now finds the chunk missing, as an agent's offer would: stored again, the old snapshot is whole.
    const again = await repository.writer();
    expect((await again.missing([good.id, bad.id, other.id])).map((id) => id.toString("hex"))).toEqual([bad.hex]);
    await again.put([bad]);
    await again.commit([sealManifest(key, manifestOf({ "bad.bin": [bad] }))], meta);
    expect((await checkRepository(repository)).ok).toBe(true);
    await expectWhole(repository, [bad]);

    // Nothing left to repair, and a prune (which stops at a damaged chunk it would repack) runs.
    expect(await repairPacks(repository)).toMatchObject({ packsRead: 2, repaired: [], lost: [] });
    await pruneRepository(repository, { repackBelow: 1 });
    expect((await checkRepository(repository)).ok).toBe(true);
    await store.close();
  });

  it("loses nothing of a damaged chunk another pack also holds", async () => {
    const store = make();
    const { repository, bad, packId } = await oneDamagedChunk(store);
    // A second copy of bad's chunk, in a pack of its own (as two snapshots racing to store the same bytes leave).
    const copy = await repository.writer({ index: await repository.loadIndex() });
    copy.index.removePacks([packId]);
    await copy.put([bad]);
    await copy.flush();
    await copy.abort();
    // (Which copy an index finds is not fixed: index objects load concurrently.)
    const copyPack = (await keysIn(store, "index/")).map((k) => k.slice("index/".length)).find((id) => id !== packId);
    expect((await repository.readPackIndex(copyPack!)).entries.map((e) => e.id.toString("hex"))).toEqual([bad.hex]);

    // Only the damaged pack named; the copy's pack is read too, as the copy is what remains.
    const report = await repairPacks(repository, { packs: [packId.slice(0, 8)] });
    expect(report).toMatchObject({ packs: 2, packsRead: 2, repaired: [{ pack: packId, salvaged: 2 }], lost: [] });
    expect(repairPacksText(report, false, "snapshot check")).toEqual({
      out: expect.stringMatching(
        /no snapshot loses a chunk: each damaged one is also held by another pack, or no snapshot uses it\n$/,
      ),
      err: "",
    });
    expect((await repository.loadIndex()).packIdOf(bad.id)).toBe(copyPack);
    expect((await checkRepository(repository)).ok).toBe(true);
    await store.close();
  });

  it("keeps the good copy of a chunk whose other copy, in a pack not named, is damaged", async () => {
    const store = make();
    const { repository, good, bad, packId } = await oneDamagedChunk(store);
    // good's chunk again in a pack of its own, and that copy damaged: the pack named holds the only good one.
    const copyPack = await packOf(repository, [good]);
    const bytes = await store.get(packKey(copyPack));
    bytes[500] ^= 0x04;
    await store.put(packKey(copyPack), bytes);

    const report = await repairPacks(repository, { packs: [packId] });
    expect(report).toMatchObject({ packs: 2, packsRead: 2, lost: [bad.hex] });
    expect(report.repaired.map((p) => [p.pack, p.salvaged, p.damaged.map((d) => d.chunk)])).toEqual(
      [
        [packId, 2, [bad.hex]],
        [copyPack, 0, [good.hex]],
      ].sort(),
    );
    await expectWhole(repository, [good]);
    await expectOnlyMissing(repository, bad.hex);
    await store.close();
  });

  it("check says a damaged chunk another pack holds whole breaks no file, and names the files of the rest", async () => {
    const store = make();
    const { repository, bad, packId } = await oneDamagedChunk(store);
    // bad's chunk, damaged in the snapshot's pack, whole in a pack of its own.
    const copyPack = await packOf(repository, [bad]);
    const whole = await checkRepository(repository);
    expect(whole.ok).toBe(false);
    expect(whole.problems).toEqual([
      {
        kind: "chunk-corrupt",
        pack: packId,
        chunk: bad.hex,
        files: [],
        wholeIn: copyPack,
        message: expect.stringMatching(
          new RegExp(
            `is damaged \\(.*\\); pack ${copyPack.slice(0, 12)} holds it whole, which restores read\\. Run \`snapshot repair-packs\`: until then a prune`,
          ),
        ),
      },
    ]);

    // Damaged there too, it breaks its file, named under each pack.
    await damage(repository, copyPack, bad);
    const broken = await checkRepository(repository);
    expect(broken.problems.map((p) => [p.pack, p.wholeIn, p.files?.map((f) => f.path)]).sort()).toEqual(
      [
        [packId, undefined, ["bad.bin"]],
        [copyPack, undefined, ["bad.bin"]],
      ].sort(),
    );

    // A pack gone: of its chunks, those whole elsewhere are counted, and only the others' files named.
    const other = make();
    const second = await oneDamagedChunk(other);
    const elsewhere = await packOf(second.repository, [second.good]);
    await other.delete(packKey(second.packId));
    const [gone, ...rest] = (await checkRepository(second.repository)).problems;
    expect(rest).toEqual([]);
    expect(gone).toMatchObject({ kind: "pack-missing", pack: second.packId });
    expect(gone.files?.map((f) => f.path).sort()).toEqual(["bad.bin", "other.bin"]);
    expect(gone.message).toMatch(/; it breaks .* \(1 chunk of it is whole in other packs\)$/);
    expect(elsewhere).not.toBe(second.packId);
    // A copy this check did not read is not taken for whole.
    const [unread] = (await checkRepository(second.repository, { readData: false })).problems;
    expect(unread.files?.map((f) => f.path).sort()).toEqual(["bad.bin", "good.bin", "other.bin"]);
    // A lost pack of one chunk whole elsewhere breaks nothing, and names no pack for it (wholeIn is a chunk's).
    const third = make();
    const copied = await oneDamagedChunk(third);
    const lost = await packOf(copied.repository, [copied.good]);
    await third.delete(packKey(lost));
    const problems = (await checkRepository(copied.repository)).problems;
    expect(problems.map((p) => [p.kind, p.pack, p.wholeIn, p.files?.map((f) => f.path)]).sort()).toEqual(
      [
        ["pack-missing", lost, undefined, []],
        ["chunk-corrupt", copied.packId, undefined, ["bad.bin"]],
      ].sort(),
    );
    expect(problems.find((p) => p.pack === lost)?.message).toMatch(
      /is indexed but missing; 1 chunk of it is whole in other packs, which restores read$/,
    );
    await third.close();
    await other.close();
    await store.close();
  });

  it("a prune stops rather than delete the good copy of a chunk whose copy the index finds first is damaged", async () => {
    const store = make();
    const { repository, bad, packId } = await oneDamagedChunk(store);
    const copyPack = await packOf(repository, [bad]); // whole there
    // A load that finds the damaged copy first. The copy pack holds nothing the index finds there, so it would go as
    // unused, and the chunk with it.
    const load = loadingInOrder(repository, [copyPack, packId]);
    await expect(pruneRepository(repository, { dryRun: true })).rejects.toThrow(
      `chunk ${bad.hex} is damaged where the prune would keep it (pack ${packId}: `,
    );
    await expect(pruneRepository(repository)).rejects.toThrow(
      new RegExp(
        `and it would delete or repack its other copy \\(pack ${copyPack}\\): it stops, having deleted nothing\\. ` +
          `\`snapshot repair-packs\`, given pack ${packId.slice(0, 12)}, rewrites that pack without it`,
      ),
    );
    expect(await store.stat(packKey(copyPack))).toBeDefined();
    load.mockRestore();

    // As it says: the repair keeps the other copy, and the prune then runs.
    expect((await repairPacks(repository, { packs: [packId] })).lost).toEqual([]);
    await pruneRepository(repository);
    await expectWhole(repository, [bad]);
    expect((await checkRepository(repository)).ok).toBe(true);
    await store.close();
  });

  it("a prune stops rather than delete a pack without an index object holding the only good copy of a chunk", async () => {
    const store = make();
    const { key, repository, bad, packId } = await oneDamagedChunk(store);
    // A racing snapshot stored bad's chunk whole too, and was killed before its pack's index object.
    const orphan = await packOf(repository, [bad]);
    await store.delete(indexKey(orphan));
    await expect(pruneRepository(repository, { dryRun: true })).rejects.toThrow(
      new RegExp(
        `^chunk ${bad.hex} is damaged where the prune would keep it \\(pack ${packId}: .*\\), and it would delete or ` +
          `repack its other copy \\(pack ${orphan} \\(without an index object\\)\\): it stops, having deleted ` +
          "nothing\\. `snapshot repair-index` indexes the pack without an index object, so restores find that copy; " +
          `then \`snapshot repair-packs\`, given pack ${packId.slice(0, 12)}, rewrites that pack without it`,
      ),
    );
    await expect(pruneRepository(repository)).rejects.toSatisfy((e) => isRepositoryError(e, "corrupt"));
    expect(await store.stat(packKey(orphan))).toBeDefined();

    // As it says: repair-index, then repair-packs, which keeps the other copy; the prune then runs.
    await repairIndex(await Repository.open(store, key));
    expect((await repairPacks(repository, { packs: [packId] })).lost).toEqual([]);
    await pruneRepository(repository);
    await expectWhole(repository, [bad]);
    expect((await checkRepository(repository)).ok).toBe(true);

    // A pack without an index object whose chunks' indexed copies verify goes, as any an interrupted snapshot left;
    // so does one whose header the disk cannot read (EIO): it holds nothing a prune could keep.
    const leftover = await packOf(repository, [bad]);
    await store.delete(indexKey(leftover));
    expect(await pruneRepository(repository)).toMatchObject({ orphanPacksDeleted: 1 });
    expect(await store.stat(packKey(leftover))).toBeUndefined();
    const unreadable = await packOf(repository, [bad]);
    await store.delete(indexKey(unreadable));
    const failingDisk: BlobStore = Object.create(store, {
      getRange: {
        value: (k: string, ...rest: Parameters<BlobStore["getRange"]> extends [string, ...infer R] ? R : never) =>
          k === packKey(unreadable)
            ? Promise.reject(Object.assign(new Error("EIO: i/o error, read"), { code: "EIO" }))
            : store.getRange(k, ...rest),
      },
    });
    expect(await pruneRepository(await Repository.open(failingDisk, key))).toMatchObject({ orphanPacksDeleted: 1 });
    expect(await store.stat(packKey(unreadable))).toBeUndefined();
    await store.close();
  });

  it("a prune keeps a copy that verifies of a chunk held twice, whichever packs it repacks", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const [x, y] = [sealed(key, randomBytes(2_000)), sealed(key, randomBytes(20_000))];
    const junk = () => sealed(key, randomBytes(20_000)); // in no snapshot: a pack mostly of it is repacked
    const sparse = await packOf(repository, [x, junk()]);
    const kept = await packOf(repository, [x, y]);
    const writer = await repository.writer();
    await writer.commit([sealManifest(key, manifestOf({ "x.bin": [x], "y.bin": [y] }))], meta);

    // x found first in the sparse pack, which is repacked; its copy in the kept pack damaged. The repack would not
    // write x (the kept pack holds it), and the only good copy would go with the sparse pack: the prune stops.
    await damage(repository, kept, x);
    const load = loadingInOrder(repository, [kept, sparse]);
    await expect(pruneRepository(repository)).rejects.toThrow(
      `chunk ${x.hex} is damaged where the prune would keep it (pack ${kept}: `,
    );
    expect(await store.stat(packKey(sparse))).toBeDefined();
    load.mockRestore();
    expect((await repairPacks(repository, { packs: [kept] })).lost).toEqual([]);
    await pruneRepository(repository);
    await expectWhole(repository, [x, y]);
    expect((await checkRepository(repository)).ok).toBe(true);

    // x found first in a pack that stays, its copy in a repacked pack damaged: the prune keeps the good one and
    // repacks the other pack (for z) without x, rather than stop at its damaged copy.
    const other = make();
    const second = await Repository.openOrInit(other, key);
    const z = sealed(key, randomBytes(1_000));
    const staying = await packOf(second.repository, [x, y]);
    const damagedSparse = await packOf(second.repository, [x, y, z, junk()]);
    const files = manifestOf({ "x.bin": [x], "y.bin": [y], "z.bin": [z] });
    await (await second.repository.writer()).commit([sealManifest(key, files)], meta);
    await damage(second.repository, damagedSparse, x);
    const reload = loadingInOrder(second.repository, [damagedSparse, staying]);
    const reads = vi.spyOn(other, "getRange");
    const report = await pruneRepository(second.repository);
    reload.mockRestore();
    // x and y, read where they stay, in one request.
    expect(reads.mock.calls.filter(([key]) => key === packKey(staying))).toHaveLength(1);
    reads.mockRestore();
    expect(report.packsRepacked).toBe(1);
    expect(await other.stat(packKey(damagedSparse))).toBeUndefined();
    await expectWhole(second.repository, [x, y, z]);
    expect((await checkRepository(second.repository)).ok).toBe(true);
    await other.close();

    // x found first in the repacked pack, damaged there, and whole in a pack that stays: the same.
    const third = make();
    const again = await Repository.openOrInit(third, key);
    const stays = await packOf(again.repository, [x, y]);
    const damagedFirst = await packOf(again.repository, [x, z, junk()]);
    await (await again.repository.writer()).commit([sealManifest(key, files)], meta);
    await damage(again.repository, damagedFirst, x);
    const firstDamaged = loadingInOrder(again.repository, [stays, damagedFirst]);
    expect((await pruneRepository(again.repository)).packsRepacked).toBe(1);
    firstDamaged.mockRestore();
    expect(await third.stat(packKey(damagedFirst))).toBeUndefined();
    await expectWhole(again.repository, [x, y, z]);
    expect((await checkRepository(again.repository)).ok).toBe(true);
    await third.close();
    await store.close();
  });

  it("copies a chunk whose other copy is in a pack it cannot read, and calls lost only what a snapshot uses", async () => {
    const store = make();
    const { key, repository, good, bad, packId } = await oneDamagedChunk(store);
    // good's chunk again in a pack of its own, whose pack file then goes: its index object still lists it.
    const unused = sealed(key, randomBytes(2_000)); // and a chunk no snapshot uses, damaged below
    const copyPack = await packOf(repository, [good, unused]);
    const { offset, length } = (await repository.readPackIndex(copyPack)).entries.find((e) => e.id.equals(unused.id))!;
    const bytes = await store.get(packKey(copyPack));
    bytes[offset + Math.floor(length / 2)] ^= 0x08;
    await store.put(packKey(copyPack), bytes);

    // Both packs damaged: the repository's whole, read by every-pack mode, refused as more likely a bad reading.
    await expect(repairPacks(repository)).rejects.toThrow(
      /^2 of the 2 packs read hold chunks that do not verify \(or are longer than their index says\): more likely this machine or the store reading wrongly/,
    );
    expect(await keysIn(store, "index/")).toHaveLength(2);
    // Named, they are repaired; the unused chunk is not called lost.
    const both = await repairPacks(repository, { packs: [packId, copyPack] });
    expect(both.lost).toEqual([bad.hex]);
    expect(both.repaired.map((p) => p.damaged.length)).toEqual([1, 1]);
    await expectOnlyMissing(repository, bad.hex);

    // Now good's chunk in a pack again, and that pack's file gone: the damaged pack holding good's other copy is
    // repaired, and good is copied, not left to the pack that is not there.
    const other = make();
    const before = await oneDamagedChunk(other);
    const gone = await packOf(before.repository, [before.good]);
    await other.delete(packKey(gone));
    const report = await repairPacks(before.repository);
    expect(report.skipped.map((p) => p.pack)).toEqual([gone]);
    expect(report).toMatchObject({
      packsRead: 1,
      repaired: [{ pack: before.packId, salvaged: 2 }],
      lost: [before.bad.hex],
    });
    // As the skipped pack's message says, repair-index removes its index object; good is found whole.
    expect(await repairIndex(before.repository)).toMatchObject({ removed: [gone] });
    await expectWhole(before.repository, [before.good]);
    await other.close();
    await store.close();
  });

  it("deletes nothing when a pack reads differently the second time", async () => {
    const store = make();
    const { key, packId } = await oneDamagedChunk(store);
    let reads = 0;
    const flaky: BlobStore = Object.create(store, {
      getRange: {
        value: async (k: string, offset: number, length: number, into?: Buffer, opts?: unknown) => {
          const got = await store.getRange(k, offset, length, into, opts as never);
          // The second read of the pack: another chunk (good's, the first) reads damaged too.
          if (k === packKey(packId) && ++reads === 2) got[50] ^= 0x01;
          return got;
        },
      },
    });
    await expect(repairPacks(await Repository.open(flaky, key))).rejects.toThrow(
      new RegExp(
        `^pack ${packId} read differently twice \\(damaged chunks: [0-9a-f]{64}, then [0-9a-f]{64},[0-9a-f]{64}\\): `,
      ),
    );
    expect(await store.stat(packKey(packId))).toBeDefined();
    expect(await store.stat(indexKey(packId))).toBeDefined();
    await store.close();
  });

  it("keeps a chunk's one good copy among three: one damaged, one whose pack is gone", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const [x, y] = [sealed(key, randomBytes(3_000)), sealed(key, randomBytes(3_000))];
    const d = await packOf(repository, [x]);
    const c = await packOf(repository, [x]);
    const a = await packOf(repository, [x, y]);
    await damage(repository, a, y);
    await damage(repository, d, x);
    await store.delete(packKey(c));
    const writer = await repository.writer();
    await writer.commit([sealManifest(key, manifestOf({ x: [x], y: [y] }))], meta);

    // Only a named: wherever the index finds x once a leaves it (c, gone; or d, damaged), that pack is judged too.
    const report = await repairPacks(repository, { packs: [a] });
    expect(report.lost).toEqual([y.hex]);
    expect(report.skipped.map((p) => p.pack)).toEqual([c]);
    expect(report.repaired.map((p) => [p.pack, p.salvaged])).toEqual(
      [
        [a, 1],
        [d, 0],
      ].sort(),
    );
    expect(await repairIndex(repository)).toMatchObject({ removed: [c] });
    await expectWhole(repository, [x]);
    await expectOnlyMissing(repository, y.hex);
    await store.close();
  });

  it("says in a dry run what the repair then does, a chunk damaged in one pack and whole in another included", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const [y, z] = [sealed(key, randomBytes(3_000)), sealed(key, randomBytes(3_000))];
    const a = await packOf(repository, [y]);
    const b = await packOf(repository, [y, z]);
    await damage(repository, a, y);
    await damage(repository, b, z); // b is damaged too, so both leave the index; y is copied from b
    const writer = await repository.writer();
    await writer.commit([sealManifest(key, manifestOf({ y: [y], z: [z] }))], meta);
    const dry = await repairPacks(repository, { dryRun: true, packs: [a, b] });
    expect(dry.lost).toEqual([z.hex]);
    expect(await repairPacks(repository, { packs: [a, b] })).toEqual(dry);
    await expectOnlyMissing(repository, z.hex);
    await store.close();
  });

  it("finishes a repair cut short between an old pack's index object and the pack", async () => {
    const store = make();
    const { key, repository, good, bad, other, packId } = await oneDamagedChunk(store);
    const cut: BlobStore = Object.create(store, {
      delete: {
        value: (k: string) => (k === packKey(packId) ? Promise.reject(new Error("killed")) : store.delete(k)),
      },
    });
    await expect(repairPacks(await Repository.open(cut, key))).rejects.toThrow("killed");
    // Left: the old pack without its index object, the good chunks in a new one, bad's in no index.
    expect(await store.stat(indexKey(packId))).toBeUndefined();
    expect(await store.stat(packKey(packId))).toBeDefined();
    // Run again (every pack, or the old one by name), it judges the unindexed pack from its header and deletes it.
    const dry = await repairPacks(repository, { dryRun: true, packs: [packId.slice(0, 10)] });
    expect(dry).toMatchObject({
      repaired: [{ pack: packId, salvaged: 2, damaged: [{ chunk: bad.hex }] }],
      lost: [bad.hex],
    });
    const again = await repairPacks(repository);
    expect(again).toMatchObject({ packsRead: 2, repaired: [{ pack: packId, salvaged: 2 }], lost: [bad.hex] });
    expect(await store.stat(packKey(packId))).toBeUndefined();
    await expectWhole(repository, [good, other]);
    await expectOnlyMissing(repository, bad.hex);
    // And the prune that refused beside the unindexed pack, once a snapshot has stored bad's bytes again, runs.
    const heal = await repository.writer();
    await heal.put([bad]);
    await heal.commit([sealManifest(key, manifestOf({ "bad.bin": [bad] }))], meta);
    await pruneRepository(repository);
    expect((await checkRepository(repository)).ok).toBe(true);
    await store.close();
  });

  it("rewrites without being named when damage is not most of the repository", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = [0, 1, 2, 3].map(() => sealed(key, randomBytes(2_000)));
    const packs = [];
    for (const c of chunks) packs.push(await packOf(repository, [c]));
    await damage(repository, packs[0], chunks[0]);
    await damage(repository, packs[1], chunks[1]);
    // 2 of 4: not over half. (A third would be refused, as the test above shows for 2 of 2.)
    const report = await repairPacks(repository);
    expect(report).toMatchObject({ packsRead: 4, lost: [] }); // no snapshot uses them: garbage, not lost
    expect(report.repaired.map((p) => p.pack)).toEqual([packs[0], packs[1]].sort());
    await damage(repository, packs[2], chunks[2]);
    await damage(repository, packs[3], chunks[3]);
    await expect(repairPacks(repository)).rejects.toThrow(/^2 of the 2 packs read hold chunks that do not verify/);
    await store.close();
  });

  it("points to repair-index for a good copy in a pack whose index object was lost, and for index objects that do not open", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const [x, y, z] = [0, 1, 2].map(() => sealed(key, randomBytes(3_000)));
    for (let i = 0; i < 3; i++) await packOf(repository, [sealed(key, randomBytes(1_000))]);
    const d = await packOf(repository, [x, y]);
    const u = await packOf(repository, [x, z]);
    await damage(repository, d, x);
    const writer = await repository.writer();
    await writer.commit([sealManifest(key, manifestOf({ x: [x], y: [y] }))], meta);
    const uIndex = await store.get(indexKey(u));
    await store.delete(indexKey(u));

    // x is whole only in u, which no index object names: not lost, and not deleted; repair-index finds it.
    const report = await repairPacks(repository);
    expect(report).toMatchObject({ packs: 5, packsRead: 5, repaired: [{ pack: d, salvaged: 1 }], lost: [] });
    expect(report.skipped).toEqual([
      {
        pack: u,
        message:
          "it has no index object, and holds whole 1 chunk damaged elsewhere and in no indexed pack: " +
          "`snapshot repair-index` indexes it, and they are found there",
      },
    ]);
    expect(await store.stat(packKey(u))).toBeDefined();
    expect(await repairIndex(repository)).toMatchObject({ rebuilt: [u] });
    await expectWhole(repository, [x, y]);

    // An index object that does not open: what its pack holds cannot be told, so nothing is judged.
    uIndex[uIndex.length - 1] ^= 1;
    await store.put(indexKey(u), uIndex);
    await expect(repairPacks(repository)).rejects.toThrow(
      `1 index object does not open (index/${u}): run \`snapshot repair-index\` first (it rebuilds them from their packs), then repair the packs`,
    );
    await store.close();
  });

  it("names a pack without an index object whose header cannot be read", async () => {
    const store = make();
    const { repository, packId } = await oneDamagedChunk(store);
    const junk = "ee".repeat(32);
    await store.put(packKey(junk), Buffer.from("not a pack"));
    const report = await repairPacks(repository);
    expect(report).toMatchObject({ packs: 2, packsRead: 1, repaired: [{ pack: packId }] });
    expect(report.skipped).toEqual([
      {
        pack: junk,
        message: expect.stringMatching(
          /^it has no index object and its header cannot be read \(.+\): `snapshot repair-index` says more$/,
        ),
      },
    ]);
    await expect(repairPacks(repository, { packs: ["eeeeeeee"] })).rejects.toThrow(
      new RegExp(`^pack ${junk}: it has no index object and its header cannot be read`),
    );
    await store.close();
  });

  it("names the packs it cannot read, and refuses pack ids that name none", async () => {
    const store = make();
    const { repository, packId } = await oneDamagedChunk(store);
    await expect(repairPacks(repository, { packs: ["xyz"] })).rejects.toThrow(
      '"xyz" is not a pack id (8 to 64 hex characters; `snapshot check` names the damaged ones)',
    );
    await expect(repairPacks(repository, { packs: ["0123456789abcdef"] })).rejects.toSatisfy(
      (e) => isRepositoryError(e, "not-found") && /no pack 0123456789abcdef is in /.test(String(e)),
    );
    // A pack gone from the store is repair-index's to mend: named, and nothing else changes.
    await store.delete(packKey(packId));
    const report = await repairPacks(repository, { packs: [packId.toUpperCase()] });
    expect(report).toEqual({
      packs: 1,
      packsRead: 0,
      repaired: [],
      skipped: [
        {
          pack: packId,
          message: "it is indexed but missing from the store: `snapshot repair-index` removes its index object",
        },
      ],
      lost: [],
    });
    expect(await store.stat(indexKey(packId))).toBeDefined();
    expect(repairPacksText(report, false, "snapshot check").err).toBe(
      `cannot repair pack ${packId.slice(0, 12)}: it is indexed but missing from the store: \`snapshot repair-index\` removes its index object\n`,
    );
    await store.close();
  });

  it("needs the repository to itself, and a repair cut short before its deletions is finished by the next", async () => {
    const store = make();
    const { key, repository, good, bad, packId } = await oneDamagedChunk(store);
    // A snapshot running (its shared lock) refuses the repair; a dry run reads beside it.
    const snapshotLock = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
    await expect(repairPacks(repository)).rejects.toSatisfy((e) => isRepositoryError(e, "locked"));
    expect((await repairPacks(repository, { dryRun: true })).lost).toEqual([bad.hex]);
    await snapshotLock.release();

    // The store refuses the old index object's deletion: the new pack is already indexed, so every good chunk is
    // findable twice and none is lost; running the repair again finishes.
    const refusing: BlobStore = Object.create(store, {
      delete: {
        value: (k: string) => (k === indexKey(packId) ? Promise.reject(new Error("disk on fire")) : store.delete(k)),
      },
    });
    await expect(repairPacks(await Repository.open(refusing, key))).rejects.toThrow(/disk on fire/);
    expect((await keysIn(store, "index/")).length).toBe(2);
    await expectWhole(repository, [good]);
    expect(await repairPacks(repository)).toMatchObject({ repaired: [{ pack: packId, salvaged: 2 }], lost: [bad.hex] });
    expect(await keysIn(store, "index/")).toHaveLength(1);
    expect((await checkRepository(repository)).problems.map((p) => p.kind)).toEqual(["chunk-missing"]);
    await store.close();
  });
});

describe("repairPacksAdvice", () => {
  it("is given for damaged chunks and packs cut short, not for other problems", () => {
    expect(repairPacksAdvice([{ kind: "chunk-corrupt" }], "x repair-packs")).toMatch(/^`x repair-packs` rewrites/);
    expect(repairPacksAdvice([{ kind: "pack-size" }], "x repair-packs")).toBeDefined();
    expect(repairPacksAdvice([{ kind: "chunk-missing" }, { kind: "pack-missing" }], "x")).toBeUndefined();
  });
});

describe("repairPacksText", () => {
  it("says lost chunks come back with the next snapshot only once repair-index has mended the packs skipped", () => {
    const lost = "ab".repeat(32);
    const report = {
      packs: 2,
      packsRead: 1,
      repaired: [{ pack: "cd".repeat(32), salvaged: 0, damaged: [{ chunk: lost, reason: "authentication failed" }] }],
      skipped: [{ pack: "ef".repeat(32), message: "it is indexed but missing from the store: …" }],
      lost: [lost],
    };
    expect(repairPacksText(report, false, "check").err).toBe(
      `cannot repair pack ${"ef".repeat(6)}: it is indexed but missing from the store: …\n` +
        `1 damaged chunk is in no other pack (${"ab".repeat(6)}): \`check\` names the files they break. The next ` +
        "snapshot of a workspace that still has those bytes stores them again (once `snapshot repair-index` has " +
        "mended the packs it could not repair, above), and every snapshot using them is whole again; `snapshot " +
        "repair-snapshots --forget` replaces the snapshots whose files are gone for good with ones without those " +
        "files\n",
    );
    expect(repairPacksText({ ...report, skipped: [] }, false, "check").err).not.toContain("repair-index");
  });
});
