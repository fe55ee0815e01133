// The repository format end to end, on both stores: commit, list, read back, crash safety, check, prune.
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, readlink, rm, stat, truncate, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it, onTestFinished, vi } from "vitest";
import type { BlobStore } from "./blob-store.js";
import { checkRepository, MAX_FILES_NAMED, MAX_MISSING_CHUNKS_NAMED } from "./check.js";
import { isRepositoryError, RepositoryError } from "./errors.js";
import { FileBlobStore } from "./file-blob-store.js";
import { generateRepositoryKey, parseRepositoryKey } from "./key.js";
import { acquireLock } from "./lock.js";
import { type Manifest, sealManifest, sealManifestParts } from "./manifest.js";
import { openBlobStore } from "./open-blob-store.js";
import { indexKey, openPackTrailer, packKey, sealIndex, sealPackTrailer } from "./pack.js";
import { forgetSnapshots, pruneAfterForget, pruneRepository } from "./prune.js";
import { parseReadSubset } from "./read-subset.js";
import { repairIndex } from "./repair-index.js";
import { repairIndexAdvice, repairIndexText } from "./repair-index-report.js";
import { repairPacks } from "./repair-packs.js";
import { repairSnapshots } from "./repair-snapshots.js";
import { Repository } from "./repository.js";
import { RepositoryIndex } from "./repository-index.js";
import { chunkCodec, ObjectKind, openJson, sealJson, sha256 } from "./sealing.js";
import { emptyRepositoryStats, repositoryStats, statsText } from "./stats.js";
import { dirEntry, emptyFileEntry } from "./testing/manifest-entries.js";
import { bothStores, collect, keysIn, manifestOf, sealed } from "./testing/repository-fixtures.js";
import { NO_OTHER_COPY, type SealedChunk } from "./transfer.js";

const env = bothStores("dumont-repo-");
const stores = env.stores;

const meta = { workspace: "ws-1", epoch: 3, tenant: "tenant-a" };

/** A new file:// repository in a directory of its own, removed after the test. */
async function freshFileRepository(name: string) {
  const root = await mkdtemp(join(tmpdir(), `dumont-${name}-`));
  onTestFinished(() => rm(root, { recursive: true, force: true }));
  const store = new FileBlobStore(root);
  const key = generateRepositoryKey();
  const { repository } = await Repository.openOrInit(store, key);
  return { root, store, key, repository };
}

/** A new file:// repository (see freshFileRepository) holding one snapshot (`good`) of one file. */
async function oneSnapshotRepository(name: string) {
  const fresh = await freshFileRepository(name);
  const c = sealed(fresh.key, randomBytes(1_000));
  const w = await fresh.repository.writer();
  await w.put([c]);
  return { ...fresh, good: await w.commit([sealManifest(fresh.key, manifestOf({ a: [c] }))], meta) };
}

/**
 * A file:// repository (removed after the test) holding one snapshot of good.bin and bad.bin, one chunk of
 * 2,000 bytes each, in one pack: bad's chunk after good's, at `offset`.
 */
async function goodAndBadInOnePack() {
  const { root, store, key, repository } = await freshFileRepository("good-and-bad");
  const [good, bad] = [sealed(key, randomBytes(2_000)), sealed(key, randomBytes(2_000))];
  const w = await repository.writer();
  await w.put([good, bad]);
  const snapshot = await w.commit([sealManifest(key, manifestOf({ "good.bin": [good], "bad.bin": [bad] }))], meta);
  const index = await repository.loadIndex();
  const { packId, offset } = index.get(bad.id)!;
  return { root, store, key, repository, good, bad, snapshot, packId, offset, pack: index.packs.get(packId)! };
}

/**
 * A new repository on `store` holding `chunks` chunks of 2,000 random bytes under one empty snapshot (a pack
 * each with a small `packSize`), and its index objects' keys.
 */
async function repositoryOfChunks(store: BlobStore, chunks = 1, packSize?: number) {
  const key = generateRepositoryKey();
  const { repository } = await Repository.openOrInit(store, key);
  const writer = await repository.writer({ packSize });
  await writer.put(Array.from({ length: chunks }, () => sealed(key, randomBytes(2_000))));
  await writer.commit([sealManifest(key, { version: 1, entries: [] })], meta);
  return { key, repository, indexObjects: await keysIn(store, "index/") };
}

describe.each(stores)("repository on %s", (_name, make) => {
  it("commits a snapshot that lists, and reads back every chunk by id", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository, created } = await Repository.openOrInit(store, key);
    expect(created).toBe(true);
    const text = Buffer.from("a compressible line\n".repeat(5000));
    const noise = randomBytes(100_000);
    const chunks = [sealed(key, text), sealed(key, noise), sealed(key, Buffer.from("tiny"))];
    const writer = await repository.writer({ packSize: 64 * 1024 });
    expect(await writer.missing(chunks.map((c) => c.id))).toHaveLength(3);
    await writer.put(chunks);
    expect(await writer.missing(chunks.map((c) => c.id))).toHaveLength(0); // pending counts as present
    const id = await writer.commit(
      [sealManifest(key, manifestOf({ "d/a.txt": [chunks[0], chunks[2]], "b.bin": [chunks[1]] }))],
      meta,
    );

    const again = await Repository.open(store, key);
    const list = await again.listSnapshots();
    expect(list.map((s) => s.id)).toEqual([id]);
    expect(list[0]).toMatchObject({ workspace: "ws-1", epoch: 3, tenant: "tenant-a" });
    expect(list[0].totals).toMatchObject({ files: 2, dirs: 1, bytes: text.length + noise.length + 4 });
    expect((await again.findSnapshot(id.slice(0, 8))).id).toBe(id);

    const source = await again.chunkSource();
    const manifest = await again.readManifest(list[0]);
    expect(manifest.entries.map((e) => e.path)).toEqual(["d", "d/a.txt", "b.bin"]);
    const got = await collect(source.get(chunks.map((c) => c.id)));
    expect(got).toHaveLength(3);
    for (const g of got) {
      expect(g.error).toBeUndefined();
      const plain = chunkCodec.openChunk(key, g.id, g.blob!);
      expect(createHash("sha256").update(plain).digest().equals(g.id)).toBe(true);
    }
    const missing = await collect(source.get([randomBytes(32)]));
    expect(missing[0].error).toMatch(/no such chunk/);
    expect((await checkRepository(again)).ok).toBe(true);
    await store.close();
  });

  it("deletes, counts and reads nothing it did not write, and check names it", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const w = await repository.writer();
    const c = sealed(key, randomBytes(3_000));
    await w.put([c]);
    const good = await w.commit([sealManifest(key, manifestOf({ a: [c] }))], meta);
    // Files an operator or another tool left where the repository's objects lie: none is named as a writer names.
    const foreign = [
      "data/results.csv",
      "data/zz/notes.txt",
      `data/8d/${"ab".repeat(32)}`, // a pack id, in the directory of another prefix
      "data/ab/not-a-pack",
      "index/notes",
      "manifests/readme.txt",
      "snapshots/notes.txt",
      "data/ab/x\u001b[2Jcleared\nfake: no problems", // quoted in check's words: no escape reaches a terminal
    ];
    for (const k of foreign) await store.put(k, Buffer.from(`kept: ${k}`));

    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([good]);
    expect((await repository.loadIndex()).chunkCount).toBe(1);
    const report = await checkRepository(repository);
    expect(report.problems).toEqual([
      {
        kind: "foreign-object",
        message:
          `8 files in the repository were not written by Dumont (${[...foreign]
            .sort()
            .map((k) => JSON.stringify(k))
            .join(", ")}): no command ` + "reads, counts or deletes them; move them out of the repository",
      },
    ]);
    // A prune (with a forget), the repairs: each runs as on a repository without them, and leaves them.
    expect(await forgetSnapshots(repository, { policy: { last: 1 } })).toMatchObject({ kept: [good] });
    expect(await pruneRepository(repository)).toMatchObject({
      orphanPacksDeleted: 0,
      manifestsDeleted: 0,
      bytesFreed: 0,
    });
    expect(await repairIndex(repository)).toMatchObject({ rebuilt: [], removed: [], unrepairable: [] });
    expect(await repairPacks(repository)).toMatchObject({ repaired: [], skipped: [], lost: [] });
    expect(await repairSnapshots(repository)).toMatchObject({ repaired: [], unrepairable: [] });
    for (const k of foreign) expect((await store.get(k)).toString()).toBe(`kept: ${k}`);
    await store.close();
  });

  it("makes no repository over what a location holds, unless it is one whose config alone was lost", async () => {
    const key = generateRepositoryKey();
    // A project's directory (or prefix): not made a repository, whose packs would go beside its files.
    const project = make();
    await project.put("data/results.csv", Buffer.from("1,2,3"));
    for (const open of [() => Repository.openOrInit(project, key), () => Repository.open(project, key)]) {
      const err = await open().catch((e: unknown) => e);
      expect(isRepositoryError(err, "invalid-argument"), String(err)).toBe(true);
      expect((err as Error).message).toBe(
        `there is no repository at ${project.url}, and it is not empty (it holds data/results.csv): a repository ` +
          "is made only in an empty directory or prefix; give the repository URL of an existing repository, or " +
          "of an empty or new location",
      );
    }
    expect(await project.stat("config")).toBeUndefined();
    await project.close();
    // What lies beside where objects go (a README, a fresh filesystem's lost+found) is neither read nor counted.
    const beside = make();
    await beside.put("README.md", Buffer.from("backups of the lab's models\n"));
    expect(await Repository.openOrInit(beside, key)).toMatchObject({ created: true });
    await beside.close();

    // A repository whose config was deleted: another key makes none over it (which would lock its own key out);
    // its own key gets a new config, and every snapshot opens again.
    const store = make();
    const { repository } = await Repository.openOrInit(store, key);
    const w = await repository.writer();
    const c = sealed(key, randomBytes(3_000));
    await w.put([c]);
    const snapshot = await w.commit([sealManifest(key, manifestOf({ a: [c] }))], meta);
    await store.delete("config");
    await store.close();
    // Opened anew, as the next command does (a file store that saw the config would take it gone for an unmount).
    const reopened = openBlobStore(store.url, store.url.startsWith("s3:") ? { s3: env.s3.s3 } : undefined);
    const lostConfig = (err: unknown, consequence: string) => {
      expect(isRepositoryError(err, "corrupt"), String(err)).toBe(true);
      expect((err as Error).message).toBe(
        `${store.url} holds a repository's objects (snapshots/${snapshot}) but no config: its config was lost, ` +
          `and ${consequence}. Put config back from a copy (a backup, or an earlier version of the object); or, ` +
          "with the repository's own key, `snapshot create` makes a new one (it checks that the objects open with " +
          "the key first)",
      );
    };
    lostConfig(await Repository.open(reopened, key).catch((e: unknown) => e), "nothing there can be read without it");
    const other = generateRepositoryKey();
    lostConfig(
      await Repository.openOrInit(reopened, other).catch((e: unknown) => e),
      "a new repository is not made over what is there",
    );
    expect(await reopened.stat("config")).toBeUndefined();
    const again = await Repository.openOrInit(reopened, key);
    expect(again).toMatchObject({ created: true, recreated: true });
    expect(again.repository.id).not.toBe(repository.id);
    expect((await again.repository.listSnapshots()).map((s) => s.id)).toEqual([snapshot]);
    expect((await checkRepository(again.repository)).ok).toBe(true);
    await reopened.close();
  });

  it("gives a chunk asked for again from each other pack holding it in turn, then says none is left", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const [shared, once] = [sealed(key, randomBytes(5_000)), sealed(key, randomBytes(5_000))];
    // Three packs hold `shared`, each written as a snapshot racing the others would have.
    for (const chunks of [[shared, once], [shared], [shared]]) {
      const writer = await repository.writer({ index: new RepositoryIndex() });
      await writer.put(chunks);
      await writer.flush();
      await writer.abort();
    }
    const index = await repository.loadIndex();
    const copies = index.locations(shared.id).map((l) => l.packId);
    expect(new Set(copies).size).toBe(3);
    const source = await repository.chunkSource();
    expect(source.otherCopies).toBe(true);
    /** Chunk (hex) → the pack it was given from, or the error given for it. */
    const fetch = async (ids: Buffer[], otherCopy?: boolean) =>
      Object.fromEntries(
        (await collect(source.get(ids, { otherCopy }))).map((f) => [f.id.toString("hex"), f.pack ?? f.error]),
      );

    // (Which copy an index finds first depends on the order its load read the index objects in.)
    const first = await fetch([shared.id, once.id]);
    expect(first).toEqual({ [shared.hex]: expect.any(String), [once.hex]: index.packIdOf(once.id) });
    // Asked for again, each time from a pack not given from before; a chunk held once, or not at all, has none.
    const unknown = randomBytes(32);
    const second = await fetch([shared.id, once.id, unknown], true);
    expect(second).toEqual({
      [shared.hex]: expect.any(String),
      [once.hex]: NO_OTHER_COPY,
      [unknown.toString("hex")]: NO_OTHER_COPY,
    });
    const third = await fetch([shared.id], true);
    expect([first, second, third].map((f) => f[shared.hex]).sort()).toEqual([...copies].sort());
    expect(await fetch([shared.id], true)).toEqual({ [shared.hex]: NO_OTHER_COPY });
    // Asked for as any chunk again (the next window of a restore, sharing it), it starts over from the first pack.
    expect(await fetch([shared.id])).toEqual({ [shared.hex]: first[shared.hex] });
    expect(await fetch([shared.id], true)).toEqual({ [shared.hex]: second[shared.hex] });
    // Each copy given opens to the chunk's bytes.
    for (const packId of copies) {
      const at = index.locations(shared.id).find((l) => l.packId === packId)!;
      const blob = await store.getRange(packKey(packId), at.offset, at.length);
      expect(chunkCodec.openChunk(key, shared.id, blob)).toEqual(chunkCodec.openChunk(key, shared.id, shared.blob));
    }
    await store.close();
  });

  it("fails a wrong key with one clear sentence", async () => {
    const store = make();
    await Repository.openOrInit(store, generateRepositoryKey());
    await expect(Repository.open(store, generateRepositoryKey())).rejects.toThrow(
      /^the key does not open the repository at .*: it was created with a different key$/,
    );
    await expect(Repository.open(make(), generateRepositoryKey())).rejects.toSatisfy((e) =>
      isRepositoryError(e, "not-initialised"),
    );
    await store.close();
  });

  it("commits nothing that is not durable, and a crashed writer's packs are reused", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = Array.from({ length: 6 }, () => sealed(key, randomBytes(40_000)));
    const crashed = await repository.writer({ packSize: 50_000 });
    await crashed.put(chunks.slice(0, 4));
    await crashed.flush();
    await crashed.abort(); // as if the process died before commit
    expect(await repository.listSnapshots()).toEqual([]);

    const writer = await repository.writer({ packSize: 50_000 });
    const lacking = await writer.missing(chunks.map((c) => c.id));
    expect(lacking.map((b) => b.toString("hex"))).toEqual(chunks.slice(4).map((c) => c.hex));
    await writer.put(chunks.filter((c) => lacking.some((l) => l.equals(c.id))));
    await expect(
      writer.commit([sealManifest(key, manifestOf({ f: [...chunks, sealed(key, Buffer.from("never sent"))] }))], meta),
    ).rejects.toSatisfy((e) => isRepositoryError(e, "incomplete"));
    const writer2 = await repository.writer();
    const id = await writer2.commit([sealManifest(key, manifestOf({ f: chunks }))], meta);
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([id]);
    await store.close();
  });

  it("an abort that keeps what arrived seals the pack being filled, and a put under way ends whole; a plain one drops it", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = Array.from({ length: 5 }, () => sealed(key, randomBytes(40_000)));
    const extra = sealed(key, randomBytes(40_000));
    const ids = [...chunks, extra].map((c) => c.id);
    const lacking = async () => {
      const next = await repository.writer();
      const missing = await next.missing(ids);
      await next.abort();
      return missing.map((id) => id.toString("hex"));
    };
    // Three chunks fill a pack of 100,000 bytes, which is written; the fourth waits in the next one.
    const dropping = await repository.writer({ packSize: 100_000 });
    await dropping.put(chunks.slice(0, 4));
    await dropping.abort();
    expect(await lacking()).toEqual([chunks[3].hex, chunks[4].hex, extra.hex]);

    // Here all three fit in the pack being filled, which only the abort can seal.
    const keeping = await repository.writer({ packSize: 200_000 });
    await keeping.put([chunks[3]]);
    const underWay = keeping.put([chunks[4], extra]).then(
      () => true,
      (err: Error) => {
        expect(err.message).toMatch(/already committed or aborted/);
        return false;
      },
    );
    await keeping.abort({ keep: true });
    // The put ends at a chunk's edge: the chunk it was on is kept, and the next either whole or not at all (a
    // file:// pack is written as it fills, so the abort comes while its first chunk is being written; an S3 pack
    // is gathered in memory, so the put may be done before the abort begins).
    const extraKept = await underWay;
    expect(await lacking()).toEqual(extraKept ? [] : [extra.hex]);
    expect(await checkRepository(repository)).toMatchObject({ ok: true, problems: [] });
    // The kept pack is an orphan, as any pack no snapshot references: a prune removes it.
    expect((await pruneRepository(repository)).packsDeleted).toBe(2);
    await store.close();
  });

  it("refuses a manifest with unsafe paths at commit", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const writer = await repository.writer();
    const bad: Manifest = { version: 1, entries: [{ type: "dir", path: "../up", mode: 0o755, mtimeNs: "0" }] };
    await expect(writer.commit([sealManifest(key, bad)], meta)).rejects.toSatisfy((e) =>
      isRepositoryError(e, "invalid-manifest"),
    );
    // A manifest the caller built itself is not opened again, but checked all the same.
    const ok: Manifest = { version: 1, entries: [{ type: "dir", path: "fine", mode: 0o755, mtimeNs: "0" }] };
    const again = await repository.writer();
    await expect(again.commit([sealManifest(key, ok)], meta, bad)).rejects.toSatisfy((e) =>
      isRepositoryError(e, "invalid-manifest"),
    );
    // Parts are opened one at a time: a fault parts away from the entry it concerns is still seen, and a
    // sound manifest in parts is counted whole.
    const file = emptyFileEntry;
    const dir = dirEntry;
    const underFile = [file("f"), dir("a"), dir("b"), dir("c"), file("f/x")];
    const parts = sealManifestParts(key, underFile, { partBytes: 64 });
    expect(parts.length).toBeGreaterThan(2);
    await expect((await repository.writer()).commit(parts, meta)).rejects.toThrow(
      /"f\/x" lies under "f", which is a file, not a directory/,
    );
    const sound = [file("f"), dir("a"), dir("b"), file("a/x"), file("b/y")];
    const id = await (await repository.writer()).commit(sealManifestParts(key, sound, { partBytes: 64 }), meta);
    const [record] = (await repository.listSnapshots()).filter((s) => s.id === id);
    expect(record.totals).toEqual({ files: 3, dirs: 2, symlinks: 0, bytes: 0, chunks: 0 });
    await store.close();
  });

  it("with verifyChunks, refuses a chunk that is not what its id says (the control plane's arrival check)", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const writer = await repository.writer({ verifyChunks: true });
    const good = sealed(key, randomBytes(5000));
    const other = sealed(key, randomBytes(5000));
    // A valid envelope under another chunk's id, a flipped byte, and a lie about the length: all refused.
    const swapped = { ...good, id: other.id };
    const flipped = { ...good, blob: Buffer.from(good.blob) };
    flipped.blob[20] ^= 1;
    for (const [bad, why] of [
      [swapped, /arrived damaged: authentication failed/],
      [flipped, /arrived damaged: authentication failed/],
      [{ ...good, plainLength: 4999 }, /arrived damaged: .*expected 4999/],
    ] as const) {
      await expect(writer.put([bad])).rejects.toThrow(why);
    }
    await writer.put([good]);
    expect(await writer.missing([good.id, other.id])).toEqual([other.id]);
    await writer.abort();
    await store.close();
  });

  it("an abort during a commit waits for it, stops it before its snapshot object, then frees the lock", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunk = sealed(key, randomBytes(30_000));
    const writer = await repository.writer({ packSize: 20_000 });
    await writer.put([chunk]);
    // The commit is held at its manifest's write, its packs durable (a control plane's agent drops then).
    const put = store.put.bind(store);
    const remove = store.delete.bind(store);
    const events: string[] = [];
    let open = () => {};
    const gate = new Promise<void>((r) => (open = r));
    let reached = () => {};
    const atManifest = new Promise<void>((r) => (reached = r));
    store.put = async (objectKey, body, options) => {
      if (!objectKey.startsWith("manifests/")) return put(objectKey, body, options);
      reached();
      await gate;
      const written = await put(objectKey, body, options);
      events.push("manifest written");
      return written;
    };
    store.delete = async (objectKey) => {
      if (objectKey.startsWith("locks/")) events.push("lock released");
      return remove(objectKey);
    };
    const committing = writer.commit([sealManifest(key, manifestOf({ "a.bin": [chunk] }))], meta);
    const commitEnded = committing.then(
      () => events.push("commit ended"),
      () => events.push("commit ended"),
    );
    await atManifest;
    const abort = writer.abort().then(() => events.push("abort returned"));
    // An abort that did not wait would release the lock within its own steps, no I/O before: before the
    // manifest's write, which only begins now, can have finished. No prune may start under the commit.
    open();
    await Promise.all([abort, commitEnded]);
    expect(events).toEqual(["manifest written", "commit ended", "lock released", "abort returned"]);
    await expect(committing).rejects.toThrow(/already committed or aborted/);
    expect(await repository.listSnapshots()).toEqual([]);
    const prune = await acquireLock(store, key, { exclusive: true, purpose: "a prune" });
    await prune.release();
    store.put = put;
    store.delete = remove;
    await store.close();
  });

  it("brings a cached index up to date: new packs are read, pruned ones forgotten", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const first = sealed(key, randomBytes(30_000));
    const writer = await repository.writer({ packSize: 20_000 });
    await writer.put([first]);
    await writer.flush();
    await writer.abort();
    const cached = await repository.loadIndex();
    expect(cached.has(first.id)).toBe(true);

    // Another writer (another control plane, or direct mode) adds a pack; a refresh finds it.
    const second = sealed(key, randomBytes(30_000));
    const other = await repository.writer({ packSize: 20_000 });
    await other.put([second]);
    await other.flush();
    await other.abort();
    expect(cached.has(second.id)).toBe(false);
    // A writer handed the cache with refreshIndex sees it at once, and so does the cache.
    const third = await repository.writer({ index: cached, refreshIndex: true });
    expect(await third.missing([first.id, second.id])).toEqual([]);
    await third.abort();
    expect(cached.has(second.id)).toBe(true);

    // A prune removed the first pack's index object: the next refresh forgets that pack.
    const firstPack = cached.get(first.id)!.packId;
    await store.delete(`index/${firstPack}`);
    await repository.loadIndex({ into: cached });
    expect(cached.has(first.id)).toBe(false);
    expect(cached.packs.has(firstPack)).toBe(false);
    expect(cached.has(second.id)).toBe(true);
    await store.close();
  });

  it("reads each index object once when two loads into one cached index start together", async () => {
    // Two operations of one tenant starting at once (two snapshots, a snapshot and a restore) each read every
    // new index object, and added each pack twice.
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const writer = await repository.writer({ packSize: 20_000 });
    await writer.put(Array.from({ length: 4 }, () => sealed(key, randomBytes(30_000)))); // a pack each
    await writer.flush();
    await writer.abort();
    const reads = vi.spyOn(store, "get");
    const cached = new RepositoryIndex();
    const [a, b] = await Promise.all([repository.loadIndex({ into: cached }), repository.loadIndex({ into: cached })]);
    expect(a).toBe(cached);
    expect(b).toBe(cached);
    expect(cached.packs.size).toBe(4);
    expect(reads.mock.calls.filter(([k]) => k.startsWith("index/"))).toHaveLength(4);
    reads.mockRestore();
    await store.close();
  });

  it("check names a file once however many of its chunks a missing pack held", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const parts = [
      sealed(key, randomBytes(20_000)),
      sealed(key, randomBytes(20_000)),
      sealed(key, randomBytes(20_000)),
    ];
    const writer = await repository.writer(); // one pack holds all three
    await writer.put(parts);
    const id = await writer.commit([sealManifest(key, manifestOf({ "big.bin": parts }))], meta);
    const index = await repository.loadIndex();
    await store.delete(packKey(index.get(parts[0].id)!.packId));
    const [problem] = (await checkRepository(repository)).problems;
    expect(problem).toMatchObject({ kind: "pack-missing", files: [{ snapshot: id, path: "big.bin" }] });
    expect(problem.message.match(/big\.bin/g)).toHaveLength(1);
    // Its way out: the index object goes, and the next snapshot of a workspace that has the bytes sends them.
    expect(repairIndexAdvice([problem], "snapshot repair-index")).toBe(
      "`snapshot repair-index` removes the index objects of packs gone from the store, so that the next snapshot " +
        "of each workspace stores again what its source still has (until then, snapshots take those chunks for " +
        "stored). Run it (--dry-run says what it would do), then check again",
    );
    await store.close();
  });

  it("check names at most MAX_FILES_NAMED files a problem breaks, and counts the rest", async () => {
    // A lost pack of small files under hundreds of snapshots broke millions of files, each named: ~1 GB held.
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const shared = sealed(key, randomBytes(20_000));
    const lost = sealed(key, randomBytes(20_000));
    const writer = await repository.writer({ packSize: 20_000 }); // a pack each
    await writer.put([shared, lost]);
    const files = Object.fromEntries(Array.from({ length: MAX_FILES_NAMED + 50 }, (_, i) => [`f${i}`, [shared]]));
    await writer.commit([sealManifest(key, manifestOf({ ...files, "other.bin": [lost, lost] }))], meta);
    const index = await repository.loadIndex();
    await store.delete(packKey(index.get(shared.id)!.packId)); // a pack lost: named by a second reading
    await store.delete(indexKey(index.get(lost.id)!.packId)); // a chunk in no pack: named at once
    const { problems } = await checkRepository(repository, { readData: false });
    const packMissing = problems.find((p) => p.kind === "pack-missing")!;
    expect(packMissing.files).toHaveLength(MAX_FILES_NAMED);
    expect(packMissing.filesNotNamed).toBe(50);
    expect(packMissing.message).toMatch(new RegExp(`and ${MAX_FILES_NAMED + 45} more$`));
    const chunkMissing = problems.find((p) => p.kind === "chunk-missing")!;
    expect(chunkMissing.files).toEqual([{ snapshot: expect.any(String), path: "other.bin" }]); // once, for two uses
    expect(chunkMissing.filesNotNamed).toBeUndefined();
    await store.close();
  });

  it("check makes the first MAX_MISSING_CHUNKS_NAMED chunks in no pack a problem each, and counts the rest in one", async () => {
    // Lost index objects left every chunk of their packs in none: a problem each, millions for a large repository.
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = Array.from({ length: MAX_MISSING_CHUNKS_NAMED + 7 }, () => sealed(key, randomBytes(64)));
    const writer = await repository.writer();
    await writer.put(chunks);
    const files = Object.fromEntries(chunks.map((c, i) => [`f${i}`, [c]]));
    // Two snapshots of the same files: a chunk is one problem, naming a file of each.
    await writer.commit([sealManifest(key, manifestOf(files))], meta);
    const again = await repository.writer();
    await again.commit([sealManifest(key, manifestOf(files))], meta);
    for await (const info of store.list("index/")) await store.delete(info.key);
    const { problems } = await checkRepository(repository, { readData: false });
    const missing = problems.filter((p) => p.kind === "chunk-missing");
    expect(missing).toHaveLength(MAX_MISSING_CHUNKS_NAMED + 1);
    expect(missing.slice(0, -1).every((p) => p.chunk !== undefined && p.files?.length === 2)).toBe(true);
    const rest = missing.at(-1)!;
    expect(rest.chunk).toBeUndefined();
    const beyond = Array.from({ length: 7 }, (_, i) => `f${MAX_MISSING_CHUNKS_NAMED + i}`);
    expect(rest.files?.map((f) => f.path).sort()).toEqual([...beyond, ...beyond].sort());
    expect(rest.message).toMatch(
      new RegExp(
        `^7 more chunks \\(beyond the ${MAX_MISSING_CHUNKS_NAMED} named above\\) are in no pack; they break .* and 9 more$`,
      ),
    );
    // Every chunk missing is counted once: named, or in the rest.
    expect(new Set(missing.flatMap((p) => (p.chunk ? [p.chunk] : []))).size).toBe(MAX_MISSING_CHUNKS_NAMED);
    await store.close();
  });

  it("check names the pack, chunk and files a damaged byte breaks", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const good = sealed(key, randomBytes(30_000));
    const victim = sealed(key, randomBytes(30_000));
    const last = sealed(key, randomBytes(40_000));
    const writer = await repository.writer({ packSize: 20_000 }); // one chunk per pack
    await writer.put([good, victim, last]);
    const id = await writer.commit(
      [sealManifest(key, manifestOf({ "ok.bin": [good], "d/broken file.bin": [victim], "last.bin": [last] }))],
      meta,
    );
    const index = await repository.loadIndex();
    const packOf = (c: SealedChunk) => index.get(c.id)!.packId;
    const damage = async (c: SealedChunk) => {
      const pack = await store.get(packKey(packOf(c)));
      pack[100] ^= 0xff;
      await store.put(packKey(packOf(c)), pack);
    };
    await damage(victim);

    const report = await checkRepository(repository);
    expect(report.ok).toBe(false);
    expect(report.problems.map((p) => p.chunk)).toEqual([victim.hex]); // the packs on either side are sound
    const problem = report.problems[0];
    expect(problem.kind).toBe("chunk-corrupt");
    expect(problem.pack).toBe(packOf(victim));
    expect(problem.files).toEqual([{ snapshot: id, path: "d/broken file.bin" }]);
    expect(problem.message).toMatch(/"d\/broken file\.bin"/);

    // Packs are read ahead of the one being checked: a missing pack in between must not shift what is
    // checked against what, and a damaged pack after it is still found.
    await store.delete(packKey(packOf(victim)));
    await damage(last);
    const report2 = await checkRepository(repository);
    expect(report2.problems.map((p) => [p.kind, p.files?.[0]?.path])).toEqual([
      ["pack-missing", "d/broken file.bin"],
      ["chunk-corrupt", "last.bin"],
    ]);

    // The same with the chunks checked elsewhere (the control plane's verifier threads), in batches.
    const batches: number[] = [];
    const verify = async (k: Buffer, chunks: readonly SealedChunk[]) => {
      batches.push(chunks.length);
      return chunks.map((c) => chunkCodec.verifyChunk(k, c.id, c.blob, c.plainLength));
    };
    expect((await checkRepository(repository, { verify })).problems).toEqual(report2.problems);
    expect(batches).toEqual([1, 1]); // good and last: the missing pack is not read

    // A damaged chunk is named in every snapshot that has it, and only those files are named.
    const both = await repository.writer();
    const second = await both.commit(
      [sealManifest(key, manifestOf({ "copy of last.bin": [last], "ok again": [good] }))],
      meta,
    );
    const report2b = await checkRepository(repository);
    const named = report2b.problems.find((p) => p.kind === "chunk-corrupt")!.files!;
    expect(named.sort((x, y) => x.path.localeCompare(y.path))).toEqual([
      { snapshot: second, path: "copy of last.bin" },
      { snapshot: id, path: "last.bin" },
    ]);
    await forgetSnapshots(repository, { ids: [second] });

    // A pack that cannot be read is named with the files it breaks; the others are checked all the same.
    const failing: BlobStore = Object.create(store, {
      getRange: {
        value: (k: string, offset: number, length: number, into?: Buffer) =>
          k === packKey(packOf(good))
            ? Promise.reject(new Error("disk on fire"))
            : store.getRange(k, offset, length, into),
      },
    });
    const report3 = await checkRepository(await Repository.open(failing, key));
    // (Packs are checked in the index's order, not the order they were written in.)
    expect(report3.problems.map((p) => [p.kind, p.files?.[0]?.path]).sort()).toEqual([
      ["chunk-corrupt", "last.bin"],
      ["pack-missing", "d/broken file.bin"],
      ["pack-unreadable", "ok.bin"],
    ]);
    expect(report3.problems.find((p) => p.kind === "pack-unreadable")!.message).toMatch(/disk on fire/);
    await store.close();
  });

  it("prune keeps a chunk held twice, its indexed copy in a pack it repacks and the other in one it deletes", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const kept = sealed(key, randomBytes(10_000));
    const dropped = sealed(key, randomBytes(50_000));
    // Pack A holds both, and a snapshot needs only `kept`: A is mostly garbage, so it is repacked.
    const first = await repository.writer();
    await first.put([kept, dropped]);
    await first.commit([sealManifest(key, manifestOf({ f: [kept] }))], meta);
    const packA = [...(await repository.loadIndex()).packs.keys()][0];
    // Pack B holds `kept` again (a concurrent writer stored it too, or a prune killed after its repack).
    const second = await repository.writer({ index: new RepositoryIndex() });
    await second.put([kept]);
    await second.flush();
    await second.abort();
    const packB = [...(await repository.loadIndex()).packs.keys()].find((id) => id !== packA);
    // The index finds `kept` in A (A's index object read last): B's copy is not the indexed one, so B is unused.
    // The prune's loader reads index objects several at once and takes each as it arrives: A's read starts once
    // B's has finished, however long either takes (held back a fixed 50 ms, A's would come in first wherever
    // B's read took longer).
    let bRead = () => {};
    const afterB = new Promise<void>((resolve) => {
      bRead = resolve;
    });
    const slow: BlobStore = Object.create(store, {
      get: {
        value: async (k: string) => {
          if (k === `index/${packB}`) return store.get(k).finally(bRead);
          if (k === `index/${packA}`) await afterB;
          return store.get(k);
        },
      },
    });
    const report = await pruneRepository(await Repository.open(slow, key));
    expect(report).toMatchObject({ packsRepacked: 1, packsDeleted: 1 });
    expect((await checkRepository(repository)).problems).toEqual([]);
    await store.close();
  });

  it("prune stops at a damaged chunk in a pack it repacks, naming the pack and what to do, and keeps the pack", async () => {
    const { root, key, repository } = await freshFileRepository("repack-damaged");
    const kept = sealed(key, randomBytes(10_000));
    const dropped = sealed(key, randomBytes(50_000)); // its pack mostly garbage: repacked
    const w = await repository.writer();
    await w.put([kept, dropped]);
    await w.commit([sealManifest(key, manifestOf({ f: [kept] }))], meta);
    const [packId] = [...(await repository.loadIndex()).packs.keys()];
    const file = join(root, packKey(packId));
    const bytes = await readFile(file);
    bytes[100] ^= 1; // inside `kept`, the pack's first blob
    await writeFile(file, bytes);
    // It said "chunk … arrived damaged", as if sent: nothing had arrived, and nothing said what to do.
    await expect(pruneRepository(repository)).rejects.toThrow(
      `pack ${packId}, which the prune repacks, holds chunk ${kept.hex}, which is damaged (authentication failed`,
    );
    await expect(pruneRepository(repository)).rejects.toThrow(
      `; the prune stops, having deleted only what no snapshot needs. \`snapshot repair-packs\`, given pack ` +
        `${packId.slice(0, 12)}, rewrites that pack without it (\`check\` names the files it breaks, if no other pack holds it ` +
        "whole); then prune again",
    );
    expect((await stat(file)).size).toBe(bytes.length);
    // As it says: once the pack is rewritten without the chunk, the prune runs.
    expect(await repairPacks(repository, { packs: [packId.slice(0, 12)] })).toMatchObject({ lost: [kept.hex] });
    await pruneRepository(repository);
    expect((await checkRepository(repository)).problems.map((p) => [p.kind, p.chunk])).toEqual([
      ["chunk-missing", kept.hex],
    ]);
  });

  it("gives back the read buffers of reads still in flight when its consumer stops early", async () => {
    // A restore that fails part way stops reading: the reads it had started ahead kept their buffers.
    const { key, repository } = await freshFileRepository("early-stop");
    const chunks = Array.from({ length: 6 }, () => sealed(key, randomBytes(20_000)));
    const w = await repository.writer();
    await w.put(chunks);
    await w.commit([sealManifest(key, manifestOf({ "a.bin": chunks }))], meta);
    const held = new Set<ArrayBufferLike>();
    const readBuffers = {
      allocate: (size: number) => {
        const b = Buffer.alloc(size);
        held.add(b.buffer);
        return b;
      },
      release: (b: Buffer) => held.delete(b.buffer),
    };
    // A read per chunk (none fits beside another), four of them ahead of the consumer.
    const source = await repository.chunkSource({ readBuffers, readAhead: 4, maxRead: 8192 + 25_000, maxGap: 0 });
    for await (const f of source.get(chunks.map((c) => c.id))) {
      expect(chunkCodec.verifyChunk(key, f.id, f.blob!, 20_000)).toBeNull();
      readBuffers.release(f.blob!); // the consumer gives back what it was handed
      break;
    }
    await vi.waitFor(() => expect(held.size).toBe(0), { timeout: 10_000 });
  });

  it("a pack read shared by neighbouring chunks fails only the chunks cut or misplaced, not their neighbours", async () => {
    // Neighbouring chunks are read together; one cut short (a truncated pack) or placed past the pack's end (a
    // damaged index object) failed the whole read, and restore named the intact files beside it damaged.
    const { root, store, key, repository, good, bad, packId, offset, pack } = await goodAndBadInOnePack();
    const fetched = async () => {
      const got = new Map<string, string | null>();
      for await (const f of (await repository.chunkSource()).get([good.id, bad.id])) {
        got.set(f.id.toString("hex"), f.error ?? chunkCodec.verifyChunk(key, f.id, f.blob, 2_000));
      }
      return got;
    };
    // bad's entry placed past the pack's end (its index object rewritten so, whole and sealed).
    const misplaced = pack.entries.map((e) => (e.id.equals(bad.id) ? { ...e, offset: pack.packSize - 10 } : e));
    await store.put(indexKey(packId), sealIndex(key, { packId, packSize: pack.packSize, entries: misplaced }));
    let got = await fetched();
    expect(got.get(good.hex)).toBeNull();
    expect(got.get(bad.hex)).toMatch(/could not be read/);
    // The index object as it was, and the pack cut inside bad's blob.
    await store.put(indexKey(packId), sealIndex(key, { packId, packSize: pack.packSize, entries: pack.entries }));
    await truncate(join(root, packKey(packId)), offset + 10);
    got = await fetched();
    expect(got.get(good.hex)).toBeNull();
    expect(got.get(bad.hex)).toMatch(/could not be read/);
    // A pack that is gone is all gone: not asked for again chunk by chunk (a round trip each on S3).
    await rm(join(root, packKey(packId)));
    const reads = vi.spyOn(store, "getRange");
    got = await fetched();
    expect([got.get(good.hex), got.get(bad.hex)]).toEqual([
      expect.stringMatching(/does not exist/),
      expect.stringMatching(/does not exist/),
    ]);
    expect(reads).toHaveBeenCalledTimes(1);
    reads.mockRestore();
  });

  it("refuses an index object or pack header giving a chunk an impossible length, naming the chunk", async () => {
    // A plain length of ~4 GiB from a (keyed) damaged index object grew the LZ4 decoder's memory, which never
    // shrinks, until it failed with a RangeError from WebAssembly.
    const { store, key, repository, bad, packId, pack } = await goodAndBadInOnePack();
    for (const change of [{ plainLength: 0xffff_fff0 }, { plainLength: 0 }, { length: 0xffff_0000 }]) {
      const entries = pack.entries.map((e) => (e.id.equals(bad.id) ? { ...e, ...change } : e));
      await store.put(indexKey(packId), sealIndex(key, { packId, packSize: pack.packSize, entries }));
      const impossible = `gives chunk ${bad.hex} an impossible length`;
      await expect(repository.loadIndex()).rejects.toThrow(impossible);
      const report = await checkRepository(repository);
      expect(report.problems.find((p) => p.kind === "index-unreadable")?.message).toContain(impossible);
      // A pack's header says so too: repair-index rebuilds no index object from it.
      expect(() => openPackTrailer(key, sealPackTrailer(key, entries), packId)).toThrow(impossible);
    }
  });

  it("check names only the files of chunks a pack cut short lost, and reports an impossible pack size", async () => {
    const { root, store, key, repository, snapshot, packId, offset, pack } = await goodAndBadInOnePack();
    const file = join(root, packKey(packId));
    const named = async (options?: { readData?: boolean }) =>
      (await checkRepository(repository, options)).problems.flatMap((p) => (p.files ?? []).map((f) => f.path)).sort();
    // Cut in its trailer only: every chunk is whole (restore reads them all); no file is broken.
    await truncate(file, pack.packSize - 4);
    const trailerCut = await checkRepository(repository);
    expect(trailerCut.ok).toBe(false);
    expect(trailerCut.problems.map((p) => p.kind).sort()).toEqual(["pack-header", "pack-size"]);
    expect(await named()).toEqual([]);
    // Cut inside bad's blob: bad.bin alone (both were named, the pack not read), read or not.
    await truncate(file, offset + 10);
    expect(await named()).toEqual(["bad.bin"]);
    expect(await named({ readData: false })).toEqual(["bad.bin"]);
    expect((await checkRepository(repository)).problems.find((p) => p.kind === "pack-size")?.message).toBe(
      `pack ${packId.slice(0, 12)} is ${offset + 10} bytes, its index says ${pack.packSize}`,
    );
    // An index object saying 5 GiB (the file made as large, sparse): reported, not read (it threw a RangeError).
    const big = 5 * 1024 ** 3;
    await truncate(file, big);
    await store.put(indexKey(packId), sealIndex(key, { packId, packSize: big, entries: pack.entries }));
    const huge = await checkRepository(repository);
    expect(huge.problems).toEqual([
      expect.objectContaining({
        kind: "pack-size",
        message: expect.stringContaining("its index says 5368709120 bytes, more than any pack is"),
        files: [
          { snapshot, path: "good.bin" },
          { snapshot, path: "bad.bin" },
        ],
      }),
    ]);
  });

  it("forget keeps the newest snapshots; prune deletes and repacks what nothing needs", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const shared = sealed(key, randomBytes(20_000));
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const own = sealed(key, randomBytes(20_000 + i));
      const writer = await repository.writer({ packSize: 30_000 });
      await writer.put([shared, own]);
      ids.push(
        await writer.commit([sealManifest(key, manifestOf({ shared: [shared], own: [own] }))], {
          ...meta,
          time: new Date(Date.UTC(2026, 0, 1, i)).toISOString(),
        }),
      );
    }
    // A crashed writer's orphan pack (no index object) and one indexed but unreferenced chunk.
    await store.put(`data/ff/${"ff".repeat(32)}`, Buffer.from("orphan"));
    const stray = await repository.writer();
    await stray.put([sealed(key, randomBytes(5000))]);
    await stray.flush();
    await stray.abort();

    // A pack write a crash cut short: on file:// its temp file stays beside the packs until a prune.
    const cutShort = await store.openWriter?.(`data/ee/${"ee".repeat(32)}`);
    await cutShort?.write(randomBytes(10_000));
    // And a lock's (its writer died between writing and renaming it, long ago); one written just now is a lock
    // being taken (a snapshot, while prune holds its own), not abandoned.
    const lockTemp = store instanceof FileBlobStore ? join(store.root, "locks", ".tmp-0123456789abcdef") : undefined;
    const lockBeingTaken =
      store instanceof FileBlobStore ? join(store.root, "locks", ".tmp-fedcba9876543210") : undefined;
    if (lockTemp && lockBeingTaken) {
      await writeFile(lockTemp, "half a lock");
      const old = new Date(Date.now() - 31 * 60_000);
      await utimes(lockTemp, old, old);
      await writeFile(lockBeingTaken, "a lock on its way");
    }

    // A workspace no snapshot is of, from a person: a typo, said so, rather than a policy with nothing to do.
    await expect(
      forgetSnapshots(repository, { policy: { last: 1 }, workspace: "w-typo", refuseUnknownWorkspace: true }),
    ).rejects.toThrow(/no snapshot in \S+ is of workspace "w-typo"; its snapshots are of "ws-1"/);
    const forgot = await forgetSnapshots(repository, { policy: { last: 1 } });
    expect(forgot.kept).toEqual([ids[2]]);
    expect(forgot.forgotten.sort()).toEqual([ids[0], ids[1]].sort());
    // Stopped (Ctrl-C) before it deletes anything, a prune fails with the reason and changes nothing, and a check
    // stops too; both release their locks (this process's own lock would refuse the prune below).
    const stop = new AbortController();
    stop.abort(new Error("stopped by the test"));
    const planned = await pruneRepository(repository, { repackBelow: 0.6, dryRun: true });
    await expect(pruneRepository(repository, { repackBelow: 0.6, signal: stop.signal })).rejects.toThrow(
      "stopped by the test",
    );
    expect(await pruneRepository(repository, { repackBelow: 0.6, dryRun: true })).toEqual(planned);
    await expect(checkRepository(repository, { signal: stop.signal })).rejects.toThrow("stopped by the test");

    // Packs: A {shared, own0} (half needed: repacked), B {own1} and D {stray} (unneeded), C {own2} (kept).
    const report = await pruneRepository(repository, { repackBelow: 0.6 });
    expect(report).toMatchObject({
      orphanPacksDeleted: 1,
      packsDeleted: 2,
      packsRepacked: 1,
      manifestsDeleted: 2,
      tempFilesDeleted: (cutShort ? 1 : 0) + (lockTemp ? 1 : 0),
    });
    if (store instanceof FileBlobStore) {
      const left = await readdir(store.root, { recursive: true });
      expect(left.filter((name) => name.includes(".tmp-"))).toEqual([join("locks", ".tmp-fedcba9876543210")]);
    }
    expect(report.bytesFreed).toBeGreaterThan(40_000);
    // The dry run counted what the repack frees too (it said nothing of it): all but the new pack's header.
    expect(planned.bytesFreed - report.bytesFreed).toBeGreaterThanOrEqual(0);
    expect(planned.bytesFreed - report.bytesFreed).toBeLessThan(256);
    const check = await checkRepository(repository);
    expect(check.problems).toEqual([]);
    expect(check.snapshots).toBe(1);
    const index = await repository.loadIndex();
    expect(index.chunkCount).toBe(2);
    await cutShort?.abort(); // the "crashed" writer's file handle (its file is gone already)
    await store.close();
  });

  it("deletes no pack without an index object while a listed snapshot uses a chunk no index holds", async () => {
    // The index object of a listed snapshot's pack lost (deleted by hand, a store that lost it): its pack looks
    // like what an interrupted writer left, and pruning it would make the damage for good.
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = [sealed(key, randomBytes(5_000))];
    const writer = await repository.writer();
    await writer.put(chunks);
    const id = await writer.commit([sealManifest(key, manifestOf({ "weights.bin": chunks }))], meta);
    const keys = (prefix: string) => keysIn(store, prefix);
    const [indexObject] = await keys("index/");
    await store.delete(indexObject);
    const packs = async () => (await keys("data/")).length;
    expect(await packs()).toBe(1);
    await expect(pruneRepository(repository)).rejects.toSatisfy(
      (e) =>
        isRepositoryError(e, "corrupt") &&
        /1 chunk the snapshots use is in no index \(e\.g\. \w+\) while 1 pack has no index object: those packs may hold them, so the prune deletes nothing\. Run `snapshot repair-index`/.test(
          String(e),
        ),
    );
    expect(await packs()).toBe(1);
    // The damaged snapshot forgotten, the pack is what it looks like: an orphan, pruned.
    await forgetSnapshots(repository, { ids: [id] });
    expect(await pruneRepository(repository)).toMatchObject({ orphanPacksDeleted: 1 });
    expect(await packs()).toBe(0);
    await store.close();
  });

  it("repairs nothing more once a store call fails: every call under way ends before its lock is released", async () => {
    const inner = make();
    const { key, indexObjects } = await repositoryOfChunks(inner, 24, 1_000); // a pack per chunk
    for (const k of indexObjects) await inner.delete(k);
    // Reads of the headers are slow; one pack's fails as a store that stopped answering does.
    const failing = indexObjects.map((k) => k.slice("index/".length)).sort()[5];
    const events: string[] = [];
    const store: BlobStore = Object.assign(Object.create(inner), {
      getRange: async (k: string, ...rest: [number, number]) => {
        await new Promise((resolve) => setTimeout(resolve, 15));
        if (k.endsWith(failing)) throw new RepositoryError("unavailable", "the store did not answer");
        return inner.getRange(k, ...rest);
      },
      put: async (k: string, data: Buffer) => {
        const done = await inner.put(k, data);
        events.push(`put ${k.split("/")[0]}`);
        return done;
      },
      delete: async (k: string) => {
        await inner.delete(k);
        events.push(`delete ${k.split("/")[0]}`);
      },
    });
    const repository = await Repository.open(store, key);
    await expect(repairIndex(repository)).rejects.toThrow("the store did not answer");
    events.push("rejected");
    await new Promise((resolve) => setTimeout(resolve, 100));
    // The lock was put first and deleted last, after every index object put; nothing after the rejection.
    expect(events[0]).toBe("put locks");
    expect(events.filter((e) => e !== "put index")).toEqual(["put locks", "delete locks", "rejected"]);
    expect(events.indexOf("delete locks")).toBe(events.length - 2);
    expect(events.filter((e) => e === "put index").length).toBeLessThan(24);
    await inner.close();
  });

  it("removes no index object on a read of its pack that failed for a passing reason (EMFILE, EIO)", async () => {
    const inner = make();
    const { key, repository: setup, indexObjects } = await repositoryOfChunks(inner);
    await inner.put(indexObjects[0], randomBytes(80)); // an index object that does not open
    const store: BlobStore = Object.assign(Object.create(inner), {
      getRange: async () => {
        throw Object.assign(new Error("EMFILE: too many open files"), { code: "EMFILE" });
      },
    });
    await expect(repairIndex(await Repository.open(store, key))).rejects.toThrow(/EMFILE/);
    expect((await inner.get(indexObjects[0])).length).toBe(80); // still there, for the next run to rebuild
    expect(await repairIndex(setup)).toMatchObject({ rebuilt: [indexObjects[0].slice("index/".length)], removed: [] });
    await inner.close();
  });

  it("removes no index object whose pack the listing leaves out but the store holds", async () => {
    const inner = make();
    const { key, repository: setup } = await repositoryOfChunks(inner);
    // A file store skips what is not a plain file or directory: a symlinked data/ab, say. Another pack is listed
    // (a listing of none is refused on its own).
    await inner.put(`data/ee/${"ee".repeat(32)}`, Buffer.alloc(0));
    const store: BlobStore = Object.assign(Object.create(inner), {
      list: async function* (prefix: string) {
        for await (const info of inner.list(prefix)) if (prefix !== "data/" || info.key.endsWith("eeee")) yield info;
      },
    });
    const repository = await Repository.open(store, key);
    expect(await repairIndex(repository)).toMatchObject({ removed: [], rebuilt: [] });
    expect((await checkRepository(setup)).ok).toBe(true);
    await inner.close();
  });

  it("repairs the index from the packs' headers: lost and damaged index objects rebuilt, those of lost packs removed", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const keys = (prefix: string) => keysIn(store, prefix);
    // Three snapshots, a pack each; the second pack holds several chunks (offsets other than 0).
    const snapshot = async (files: Record<string, SealedChunk[]>) => {
      const before = new Set(await keys("index/"));
      const writer = await repository.writer();
      await writer.put(Object.values(files).flat());
      const id = await writer.commit([sealManifest(key, manifestOf(files))], meta);
      const [added] = (await keys("index/")).filter((k) => !before.has(k));
      return { id, pack: added.slice("index/".length) };
    };
    const lost = await snapshot({ "a.bin": [sealed(key, randomBytes(7_000))] });
    const damaged = await snapshot({
      "b.txt": [sealed(key, Buffer.from("text ".repeat(3_000))), sealed(key, randomBytes(9_000))],
      "c.bin": [sealed(key, randomBytes(1_000))],
    });
    const gone = await snapshot({ "d.bin": [sealed(key, randomBytes(2_000))] });
    const entriesOf = async (pack: string) => (await repository.readPackIndex(pack)).entries;
    const [lostEntries, damagedEntries] = [await entriesOf(lost.pack), await entriesOf(damaged.pack)];

    await store.delete(`index/${lost.pack}`);
    await store.put(`index/${damaged.pack}`, randomBytes(300));
    await store.delete(packKey(gone.pack));
    const bad = "ee".repeat(32);
    await store.put(`data/ee/${bad}`, randomBytes(10)); // a pack whose end is not a header,
    await store.put(`index/${bad}`, randomBytes(60)); // and an index object that does not open
    const indexObjects = await keys("index/");

    // A dry run says what it would do and changes nothing.
    const expected = {
      packs: 3,
      rebuilt: [lost.pack, damaged.pack].sort(),
      removed: [gone.pack, bad].sort(),
      unrepairable: [{ pack: bad, message: expect.stringMatching(new RegExp(`^pack ${bad}: .*longer than the pack`)) }],
    };
    expect(await repairIndex(repository, { dryRun: true })).toEqual(expected);
    expect(await keys("index/")).toEqual(indexObjects);

    const progress: number[] = [];
    const report = await repairIndex(repository, { onProgress: (p) => progress.push(p.packsDone) });
    expect(report).toEqual(expected);
    expect(progress).toEqual([0, 1, 2, 3]);
    expect(await keys("locks/")).toEqual([]);
    // The rebuilt index objects are the lost ones again, and the packs' chunks check out by them.
    expect(await entriesOf(lost.pack)).toEqual(lostEntries);
    expect(await entriesOf(damaged.pack)).toEqual(damagedEntries);
    const check = await checkRepository(repository);
    expect(check.problems.map((p) => [p.kind, p.files?.map((f) => f.path)])).toEqual([["chunk-missing", ["d.bin"]]]);
    expect(check.chunks).toBe(4);
    // Again: nothing left to do but the pack it cannot read.
    expect(await repairIndex(repository)).toEqual({ ...expected, rebuilt: [], removed: [] });
    // The snapshot that lost its data forgotten, the unreadable pack is an orphan to prune, and all is well.
    await forgetSnapshots(repository, { ids: [gone.id] });
    expect(await pruneRepository(repository)).toMatchObject({ orphanPacksDeleted: 1, packsDeleted: 0 });
    expect((await checkRepository(repository)).ok).toBe(true);

    // A store showing no packs at all is not taken at its word: no index object is removed.
    for (const k of await keys("data/")) await store.delete(k);
    await expect(repairIndex(repository)).rejects.toThrow(/holds no packs at all, while 2 index objects name some/);
    expect(await keys("index/")).toHaveLength(2);
    await store.close();
  });

  /** A repository of one snapshot whose two chunks (x, y) are one pack: its id, bytes, and where its chunks end. */
  async function onePackOfTwo() {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const [x, y] = [sealed(key, randomBytes(3_000)), sealed(key, randomBytes(4_000))];
    const writer = await repository.writer();
    await writer.put([x, y]);
    await writer.commit([sealManifest(key, manifestOf({ "x.bin": [x], "y.bin": [y] }))], meta);
    const [packA] = (await keysIn(store, "index/")).map((k) => k.slice("index/".length));
    const pack = await store.get(packKey(packA));
    const blobsEnd = pack.length - 4 - pack.readUInt32LE(pack.length - 4);
    return { store, key, repository, x, y, packA, pack, blobsEnd };
  }

  it("indexes nothing of a pack whose header lists a chunk beyond its bytes of chunks (cut short in its middle)", async () => {
    // The pack lost bytes from its chunks but kept its header (a copy that skipped a range): indexed, the first
    // chunk would verify and the rest be taken for stored.
    const { store, repository, packA, pack, blobsEnd } = await onePackOfTwo();
    await store.put(packKey(packA), Buffer.concat([pack.subarray(0, blobsEnd - 100), pack.subarray(blobsEnd)]));
    await store.delete(indexKey(packA));
    const report = await repairIndex(repository);
    expect(report).toMatchObject({ rebuilt: [], unrepairable: [{ pack: packA }] });
    expect(report.unrepairable[0].message).toMatch(
      new RegExp(
        `its header lists chunk [0-9a-f]{64} at bytes \\d+–\\d+, beyond its ${blobsEnd - 100} bytes of chunks`,
      ),
    );
    expect(await keysIn(store, "index/")).toEqual([]);
    await store.close();
  });

  it("verifies the chunks a header lists before indexing them: a header moved onto other bytes indexes nothing", async () => {
    // A header opens under the key wherever it is, as it does not name its pack: copied onto other bytes (by anyone
    // who can write to the store), its index object was rebuilt, and a prune then taking that copy for the chunks'
    // home deleted the pack truly holding them.
    const { store, repository, x, y, packA, pack, blobsEnd } = await onePackOfTwo();
    const packB = randomBytes(32).toString("hex");
    await store.put(packKey(packB), Buffer.concat([randomBytes(blobsEnd), pack.subarray(blobsEnd)]));

    const moved = await repairIndex(repository);
    expect(moved).toEqual({
      packs: 2,
      rebuilt: [],
      removed: [],
      unrepairable: [
        {
          pack: packB,
          message: expect.stringMatching(
            new RegExp(`^pack ${packB}: none of the 2 chunks its header lists verifies \\(chunk [0-9a-f]{12}: `),
          ),
        },
      ],
    });
    expect(await keysIn(store, "index/")).toEqual([`index/${packA}`]);
    // The prune takes the copy for what it is, an orphan, and keeps the pack holding the chunks.
    expect(await pruneRepository(repository)).toMatchObject({ orphanPacksDeleted: 1, packsDeleted: 0 });
    expect(await store.stat(packKey(packA))).toBeDefined();
    expect((await checkRepository(repository)).ok).toBe(true);

    // A pack whose index object was lost and one of whose chunks is damaged: indexed whole, the damage reported.
    const { offset, length } = (await repository.loadIndex()).get(y.id)!;
    pack[offset + Math.floor(length / 2)] ^= 0x40;
    await store.put(packKey(packA), pack);
    await store.delete(indexKey(packA));
    const report = await repairIndex(repository);
    expect(report).toMatchObject({ rebuilt: [packA], unrepairable: [{ pack: packA }] });
    expect(report.unrepairable[0].message).toMatch(
      `pack ${packA}: 1 of the 2 chunks its header lists do not verify (chunk ${y.hex.slice(0, 12)}: `,
    );
    // Said as it is, not as a pack it "cannot repair" (it was indexed); the moved header's copy is.
    expect(repairIndexText(report, false).err).toBe(`${report.unrepairable[0].message}\n`);
    expect(repairIndexText(moved, false).err).toMatch(/^cannot repair pack [0-9a-f]{64}: none of the 2 chunks/);
    expect((await repository.readPackIndex(packA)).entries.map((e) => e.id.toString("hex")).sort()).toEqual(
      [x.hex, y.hex].sort(),
    );
    const check = await checkRepository(repository);
    expect(check.problems.map((p) => [p.kind, p.files?.map((f) => f.path)])).toEqual([["chunk-corrupt", ["y.bin"]]]);
    await store.close();
  });
});

describe.each(stores)("a manifest in parts on %s", (_name, make) => {
  it("commits, lists, reads, checks and prunes a snapshot whose manifest is in parts", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = Array.from({ length: 40 }, (_, i) => sealed(key, randomBytes(1000 + i)));
    const files = Object.fromEntries(chunks.map((c, i) => [`d/file ${i} with a long name ${"ü".repeat(40)}`, [c]]));
    const manifest = manifestOf(files);
    const writer = await repository.writer();
    await writer.put(chunks);
    const parts = sealManifestParts(key, manifest.entries, { partBytes: 2048 });
    expect(parts.length).toBeGreaterThan(3);
    const id = await writer.commit(parts, meta);

    // Version 2 of the record lists the parts (a reader from before them refuses it: it has no `manifest`).
    const raw = openJson(key, ObjectKind.snapshot, await store.get(`snapshots/${id}`), "record") as Record<
      string,
      unknown
    >;
    expect(raw.version).toBe(2);
    expect(raw.manifest).toBeUndefined();
    const [record] = await repository.listSnapshots();
    expect(record.manifests).toEqual(raw.manifests);
    expect(record.manifests).toHaveLength(parts.length);
    expect(record.totals).toMatchObject({ files: 40, dirs: 1 });
    expect(await repository.readManifest(record)).toEqual(manifest);
    expect((await checkRepository(repository)).problems).toEqual([]);

    // A prune keeps every part of a snapshot that stays, and removes those of one forgotten.
    const other = await repository.writer();
    const second = await other.commit([sealManifest(key, manifestOf({ only: [chunks[0]] }))], meta);
    const kept = await pruneRepository(repository);
    expect(kept.manifestsDeleted).toBe(0);
    expect(await repository.readManifest(record)).toEqual(manifest);
    await forgetSnapshots(repository, { ids: [id] });
    const pruned = await pruneRepository(repository);
    expect(pruned.manifestsDeleted).toBe(parts.length);
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([second]);

    // One part gone: check names the snapshot, and reading it fails rather than give part of the tree.
    const writer3 = await repository.writer();
    await writer3.put(chunks); // pruned with the forgotten snapshot
    const third = await writer3.commit(parts, meta);
    await store.delete(`manifests/${record.manifests[1]}`);
    const check = await checkRepository(repository);
    expect(check.problems).toEqual([expect.objectContaining({ kind: "manifest-unreadable", snapshot: third })]);
    await expect(repository.readManifest(await repository.findSnapshot(third))).rejects.toThrow();
    await store.close();
  });

  it("stores a part that an earlier snapshot holds once, and prune keeps it while a snapshot needs it", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = Array.from({ length: 30 }, (_, i) => sealed(key, randomBytes(500 + i)));
    const manifest = manifestOf(Object.fromEntries(chunks.map((c, i) => [`d/file ${i} ${"x".repeat(60)}`, [c]])));
    const first = await repository.writer();
    await first.put(chunks);
    const one = await first.commit(sealManifestParts(key, manifest.entries, { partBytes: 2048 }), meta);
    const stored = async () => {
      const keys: string[] = [];
      for await (const blob of store.list("manifests/")) keys.push(blob.key);
      return keys.sort();
    };
    const before = await stored();
    expect(before.length).toBeGreaterThan(2);

    // The same tree again, sealed again: the same parts, which the second writer does not write.
    const puts = vi.spyOn(store, "put");
    const second = await repository.writer();
    const two = await second.commit(sealManifestParts(key, manifest.entries, { partBytes: 2048 }), meta);
    expect(puts.mock.calls.filter(([k]) => k.startsWith("manifests/"))).toEqual([]);
    puts.mockRestore();
    expect(await stored()).toEqual(before);
    const [a, b] = [await repository.findSnapshot(one), await repository.findSnapshot(two)];
    expect(b.manifests).toEqual(a.manifests);

    // A stored part damaged at its size is not taken for the same part: the next commit writes it again.
    const damagedKey = `manifests/${a.manifests[0]}`;
    const damaged = await store.get(damagedKey);
    damaged[damaged.length - 1] ^= 1;
    await store.put(damagedKey, damaged);
    const third = await repository.writer();
    const three = await third.commit(sealManifestParts(key, manifest.entries, { partBytes: 2048 }), meta);
    expect((await repository.readManifest(await repository.findSnapshot(three))).entries).toEqual(manifest.entries);
    expect((await repository.readManifest(a)).entries).toEqual(manifest.entries); // the first's is whole again
    await forgetSnapshots(repository, { ids: [three] });

    await forgetSnapshots(repository, { ids: [one] });
    expect((await pruneRepository(repository)).manifestsDeleted).toBe(0);
    expect(await repository.readManifest(b)).toEqual(manifest);
    expect((await checkRepository(repository)).problems).toEqual([]);
    await store.close();
  });

  it("commits parts named by id: checked to be there, read back and checked whole when they come from elsewhere", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = Array.from({ length: 30 }, (_, i) => sealed(key, randomBytes(500 + i)));
    const manifest = manifestOf(Object.fromEntries(chunks.map((c, i) => [`d/file ${i} ${"x".repeat(60)}`, [c]])));
    const parts = sealManifestParts(key, manifest.entries, { partBytes: 2048 });
    expect(parts.length).toBeGreaterThan(2);
    const ids = parts.map((part) => createHash("sha256").update(part).digest("hex"));
    const first = await repository.writer();
    await first.put(chunks);
    await first.commit(parts, meta);

    // The agent asks which of the parts it remembers are still there; a malformed id is never there.
    const second = await repository.writer();
    expect(await second.missingManifestParts([ids[0], "f".repeat(64), "not an id"])).toEqual([
      "f".repeat(64),
      "not an id",
    ]);
    // Each part is read once for a writer, however often it is named (an agent may repeat one 256 times an offer).
    const gets = vi.spyOn(store, "get");
    expect(await second.missingManifestParts([...Array(256).fill(ids[1]), ids[0], ids[1]])).toEqual([]);
    expect(await second.missingManifestParts([ids[1], ids[2]])).toEqual([]);
    expect(gets.mock.calls.map(([k]) => k)).toEqual([`manifests/${ids[1]}`, `manifests/${ids[2]}`]);
    gets.mockRestore();
    // All but the last named by id, with the entries built (direct mode) and without (opened from the store).
    const mixed = [...ids.slice(0, -1).map((stored) => ({ stored })), parts.at(-1)!];
    const puts = vi.spyOn(store, "put");
    const built = await second.commit(mixed, meta, manifest);
    const opened = await (await repository.writer()).commit(mixed, meta);
    expect(puts.mock.calls.filter(([k]) => k.startsWith("manifests/"))).toEqual([]);
    puts.mockRestore();
    for (const id of [built, opened]) {
      const record = await repository.findSnapshot(id);
      expect(record.manifests).toEqual(ids);
      expect(record.totals).toMatchObject({ files: 30, dirs: 1 });
      expect(await repository.readManifest(record)).toEqual(manifest);
    }

    // Refused: an id not stored (nothing is listed), and, read from the store, a part that clashes with another.
    const missing = await repository.writer();
    await expect(missing.commit([{ stored: "a".repeat(64) }, parts.at(-1)!], meta)).rejects.toSatisfy(
      (e) =>
        isRepositoryError(e, "incomplete") && /manifest part 1 of 2, manifests\/a{64}, is not in the/.test(String(e)),
    );
    await missing.abort();
    const twice = await repository.writer();
    await expect(twice.commit([{ stored: ids[0] }, parts[0]], meta)).rejects.toThrow(/appears twice/);
    await twice.abort();
    // A file listing a stored chunk at another length (its size agreeing): no restore could write it, and the
    // snapshot's size would be what the sender said. Refused, with the entries built and opened alike.
    const [c] = chunks;
    const wrong = manifestOf({ "d/big": [{ ...c, plainLength: 64 * 1024 * 1024 }] });
    for (const built of [wrong, undefined]) {
      const liar = await repository.writer();
      await expect(liar.commit(sealManifestParts(key, wrong.entries), meta, built)).rejects.toSatisfy(
        (e) =>
          isRepositoryError(e, "invalid-manifest") &&
          String(e).includes(`"d/big" lists chunk ${c.hex} as 67108864 bytes; it holds ${c.plainLength}`),
      );
      await liar.abort();
    }
    const named = await repository.writer();
    await expect(named.commit([{ stored: "../config" }], meta)).rejects.toSatisfy((e) =>
      isRepositoryError(e, "invalid-argument"),
    );
    await named.abort();
    // A stored part that is not what its id says (the store's copy replaced) is refused when read.
    await store.put(`manifests/${ids[0]}`, parts[1]);
    const replaced = await repository.writer();
    await expect(replaced.commit([{ stored: ids[0] }], meta)).rejects.toSatisfy(
      (e) => isRepositoryError(e, "corrupt") && /does not hash to its id/.test(String(e)),
    );
    await replaced.abort();
    // Before any part is read: a part named twice (no manifest repeats one: named over and over, one large stored
    // part would be read and held as often), and parts larger together, by their sizes in the store, than a whole
    // manifest seals to (the store says 200 MiB each here).
    const reads = vi.spyOn(store, "get");
    const twiceNamed = await repository.writer();
    await expect(twiceNamed.commit([{ stored: ids[1] }, { stored: ids[1] }], meta)).rejects.toSatisfy(
      (e) =>
        isRepositoryError(e, "invalid-argument") && /part 2 of 2 names manifests\/\w+, as part 1 did/.test(String(e)),
    );
    await twiceNamed.abort();
    const large: BlobStore = Object.create(store, {
      stat: {
        value: async (k: string) => {
          const info = await store.stat(k);
          return info && k.startsWith("manifests/") ? { ...info, size: 200 * 2 ** 20 } : info;
        },
      },
    });
    const tooLarge = await (await Repository.open(large, key)).writer();
    await expect(tooLarge.commit([{ stored: ids[1] }, { stored: ids[2] }], meta)).rejects.toSatisfy(
      (e) =>
        isRepositoryError(e, "invalid-argument") &&
        /the manifest's 2 parts are 419430400 bytes together, more than a manifest of 256 MiB seals to/.test(String(e)),
    );
    await tooLarge.abort();
    expect(reads.mock.calls.filter(([k]) => k.startsWith("manifests/"))).toEqual([]);
    reads.mockRestore();
    expect((await repository.listSnapshots()).length).toBe(3);
    await store.close();
  });

  it("writes a one-part manifest as version 1 of the record, which every reader opens", async () => {
    const store = make();
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const writer = await repository.writer();
    const id = await writer.commit([sealManifest(key, manifestOf({}))], meta);
    const raw = openJson(key, ObjectKind.snapshot, await store.get(`snapshots/${id}`), "record") as Record<
      string,
      unknown
    >;
    expect(raw).toMatchObject({ version: 1, manifest: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(raw.manifests).toBeUndefined();
    expect((await repository.findSnapshot(id)).manifests).toEqual([raw.manifest]);
    await store.close();
  });
});

describe("check beside a running snapshot", () => {
  it("does not report a snapshot committed while it reads the repository as missing its chunks", async () => {
    const root = await mkdtemp(join(tmpdir(), "dumont-check-race-"));
    const key = generateRepositoryKey();
    const store = new FileBlobStore(root);
    const { repository } = await Repository.openOrInit(store, key);
    const commitOne = async (repo: Repository, name: string) => {
      const chunk = sealed(key, randomBytes(2000));
      const writer = await repo.writer();
      await writer.put([chunk]);
      return writer.commit([sealManifest(key, manifestOf({ [name]: [chunk] }))], meta);
    };
    await commitOne(repository, "before.bin");
    // A store that lets another writer commit a whole snapshot right after the check has listed the index.
    let injected: Promise<string> | undefined;
    const racing: BlobStore = Object.create(store, {
      list: {
        value: (prefix: string) =>
          (async function* () {
            yield* store.list(prefix);
            if (prefix === "index/" && !injected) {
              injected = commitOne(repository, "during.bin");
              await injected;
            }
          })(),
      },
    });
    const report = await checkRepository(await Repository.open(racing, key));
    expect(injected).toBeDefined();
    expect(report.problems).toEqual([]);
    expect(report.snapshots).toBe(1);
    // The snapshot committed meanwhile is whole: the next check sees it.
    expect(await checkRepository(repository)).toMatchObject({ ok: true, snapshots: 2 });
    await rm(root, { recursive: true, force: true });
  });
});

describe("forget --prune --dry-run", () => {
  it("says what the prune after the forget would free: the same report as the forget and prune then make", async () => {
    const { key, repository } = await freshFileRepository("dry-prune");
    const ids: string[] = [];
    for (const name of ["a", "b"]) {
      const writer = await repository.writer();
      const chunk = sealed(key, randomBytes(50_000));
      await writer.put([chunk]);
      ids.push(await writer.commit([sealManifest(key, manifestOf({ [name]: [chunk] }))], meta));
    }
    const forgetting = await forgetSnapshots(repository, { policy: { last: 1 }, dryRun: true });
    expect(forgetting.forgotten).toEqual([ids[0]]);
    const dry = await pruneRepository(repository, { dryRun: true, assumeForgotten: new Set(forgetting.forgotten) });
    // Before the forget, nothing is unused: a dry run that ignored it said nothing would be freed.
    expect(await pruneRepository(repository, { dryRun: true })).toMatchObject({ packsDeleted: 0, bytesFreed: 0 });
    await forgetSnapshots(repository, { policy: { last: 1 } });
    const real = await pruneRepository(repository);
    expect(real).toMatchObject({ packsDeleted: 1, manifestsDeleted: 1 });
    expect(dry).toEqual(real);
  });

  it("is not stopped by a damaged record the forget would remove, as the real run is not", async () => {
    const { root, repository } = await freshFileRepository("dry-prune-damaged");
    const writer = await repository.writer();
    const id = await writer.commit([sealManifest(repository.key, { version: 1, entries: [dirEntry("d")] })], meta);
    await writeFile(join(root, "snapshots", id), randomBytes(100));
    await expect(pruneRepository(repository, { dryRun: true })).rejects.toThrow(/does not open/);
    expect(await pruneRepository(repository, { dryRun: true, assumeForgotten: new Set([id]) })).toMatchObject({
      manifestsDeleted: 1,
    });
  });
});

describe("a listing beside a forget", () => {
  it("leaves out a snapshot forgotten between the listing and the read of its record, as check does", async () => {
    const { store, key, repository } = await freshFileRepository("list-forget");
    const ids: string[] = [];
    for (const workspace of ["a", "b"]) {
      const writer = await repository.writer();
      const manifest: Manifest = { version: 1, entries: [dirEntry("d")] };
      ids.push(await writer.commit([sealManifest(key, manifest)], { ...meta, workspace }));
    }
    // A forget elsewhere removes a's record after the listing saw it, before it is read (a check beside the
    // retention policy reported it "snapshot-unreadable ... does not exist").
    const get = store.get.bind(store);
    store.get = async (objectKey, options) => {
      if (objectKey === `snapshots/${ids[0]}`) await store.delete(objectKey);
      return get(objectKey, options);
    };
    const unreadable: string[] = [];
    const listed = await repository.listSnapshots({ onCorrupt: (id) => unreadable.push(id) });
    expect(listed.map((s) => s.id)).toEqual([ids[1]]);
    expect(unreadable).toEqual([]);
    store.get = get;
    expect(await checkRepository(repository)).toMatchObject({ ok: true, problems: [] });
  });
});

describe("forget by id", () => {
  it("takes `latest` for the newest snapshot, and says so when there is none", async () => {
    const store = new FileBlobStore(await mkdtemp(join(tmpdir(), "dumont-latest-")));
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    await expect(repository.findSnapshot("latest")).rejects.toThrow(/no snapshots in file:.*none is the latest/);
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 5)); // records are ordered by their millisecond
      const chunk = sealed(key, randomBytes(100 + i));
      const writer = await repository.writer();
      await writer.put([chunk]);
      ids.push(await writer.commit([sealManifest(key, manifestOf({ [`f${i}`]: [chunk] }))], meta));
    }
    expect((await repository.findSnapshot("latest")).id).toBe(ids[1]);
    // Only the word itself: anything else is an id or a prefix, or refused naming both forms.
    await expect(repository.findSnapshot("LATEST")).rejects.toThrow(/4 to 64 hex characters, or latest/);
    await forgetSnapshots(repository, { ids: ["latest"] });
    expect((await repository.findSnapshot("latest")).id).toBe(ids[0]);
  });

  it("forgets a snapshot whose record does not open, by id or prefix, so prune can run again", async () => {
    // Prune refuses while a record cannot be read (what it names might be deleted); forgetting it is the way on,
    // and forget by id opened each record it named, so it failed on that one: no tool could remove it.
    const { root, store, key, repository } = await freshFileRepository("forget-damaged");
    const ids: string[] = [];
    for (const name of ["a", "b"]) {
      const c = sealed(key, randomBytes(1_000));
      const w = await repository.writer();
      await w.put([c]);
      ids.push(await w.commit([sealManifest(key, manifestOf({ [name]: [c] }))], meta));
    }
    await writeFile(join(root, "snapshots", ids[0]), randomBytes(200));
    await expect(pruneRepository(repository)).rejects.toThrow(
      `the record of 1 snapshot does not open (${ids[0]}): the prune deletes nothing. Forget it by id`,
    );
    // A policy needs every record's time: it still refuses.
    await expect(forgetSnapshots(repository, { policy: { last: 1 } })).rejects.toThrow(ids[0]);
    // `latest` cannot be told while a record does not open (it might be the newest).
    await expect(forgetSnapshots(repository, { ids: ["latest"], dryRun: true })).rejects.toThrow(
      `the record of snapshot ${ids[0]} does not open, so which snapshot is the latest cannot be told`,
    );
    // A record gone between the listing and its read (a forget elsewhere) is forgotten, not damaged.
    const racing = Object.create(repository, {
      store: {
        value: Object.create(store, {
          get: {
            value: (k: string, o?: object) =>
              k === `snapshots/${ids[1]}`
                ? Promise.reject(new RepositoryError("not-found", `${k} does not exist`))
                : store.get(k, o),
          },
        }),
      },
    }) as Repository;
    await expect(forgetSnapshots(racing, { ids: [ids[0]], dryRun: true })).resolves.toEqual({
      forgotten: [ids[0]],
      kept: [],
    });
    await expect(forgetSnapshots(repository, { ids: [ids[0].slice(0, 8)], dryRun: true })).resolves.toEqual({
      forgotten: [ids[0]],
      kept: [ids[1]],
    });
    await expect(forgetSnapshots(repository, { ids: [ids[0]] })).resolves.toEqual({
      forgotten: [ids[0]],
      kept: [ids[1]],
    });
    await expect(pruneRepository(repository)).resolves.toMatchObject({ packsDeleted: 1 });
    expect(await checkRepository(repository)).toMatchObject({ ok: true, problems: [] });
  });

  it("prunes nothing while an index object does not open, saying so; repair-index then lets it", async () => {
    const { root, repository, good } = await oneSnapshotRepository("prune-unreadable-index");
    const [packId] = (await repository.loadIndex()).packs.keys();
    const objectFile = join(root, "index", packId);
    const bytes = await readFile(objectFile);
    bytes[bytes.length >> 1] ^= 1;
    await writeFile(objectFile, bytes);
    const refused = `1 index object does not open (index/${packId}): the prune deletes nothing. Run \`snapshot repair-index\``;
    await expect(pruneRepository(repository, { dryRun: true })).rejects.toThrow(refused);
    await expect(pruneRepository(repository)).rejects.toThrow(refused);
    // After a forget, the refusal says what the forget did: it stays done.
    const { forgotten } = await forgetSnapshots(repository, { ids: [good] });
    const afterForget = await pruneAfterForget(forgotten, () => pruneRepository(repository)).catch((e: unknown) => e);
    expect(isRepositoryError(afterForget, "corrupt")).toBe(true);
    expect((afterForget as Error).message).toMatch(
      new RegExp(
        `^forgot 1 snapshot \\(${good.slice(0, 12)}\\), but the prune did not finish: 1 index object does not open`,
      ),
    );
    // A snapshot (and a restore) stopped by it says the way out too.
    await expect(repository.writer()).rejects.toThrow(
      /is unreadable: .*; `snapshot repair-index` rebuilds it from its pack's own header$/,
    );
    expect(await repairIndex(repository)).toMatchObject({ rebuilt: [packId] });
    // Its snapshot forgotten above, the pack is unused now: the prune deletes it.
    expect(await pruneRepository(repository)).toMatchObject({ packsDeleted: 1, orphanPacksDeleted: 0 });
    expect(await repository.listSnapshots()).toEqual([]);
    expect((await checkRepository(repository)).ok).toBe(true);
  });

  it("reads no listed object larger than any a writer makes, and leaves out names that are no object id", async () => {
    // A file of GiBs under snapshots/ was read whole by every listing (8 at once), or failed it with a RangeError;
    // a name that is no id failed it too, on S3 where such a name can be listed.
    const { root, repository, good } = await oneSnapshotRepository("listed-objects");
    const huge = "ab".repeat(32);
    await writeFile(join(root, "snapshots", huge), "");
    await truncate(join(root, "snapshots", huge), 5 * 1024 ** 3);
    await writeFile(join(root, "snapshots", "README"), "notes");
    await writeFile(join(root, "index", "notes.txt"), "notes");
    const tooLarge = `snapshots/${huge} is 5368709120 bytes, more than any object of its kind holds`;
    await expect(repository.listSnapshots()).rejects.toThrow(tooLarge);
    const report = await checkRepository(repository);
    expect(report.problems.map((p) => [p.kind, p.message])).toEqual([
      ["snapshot-unreadable", expect.stringContaining(tooLarge)],
      [
        "foreign-object",
        '2 files in the repository were not written by Dumont ("index/notes.txt", "snapshots/README"): no command ' +
          "reads, counts or deletes them; move them out of the repository",
      ],
    ]);
    await expect(forgetSnapshots(repository, { ids: [huge] })).resolves.toEqual({ forgotten: [huge], kept: [good] });
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([good]);
    expect((await repository.loadIndex()).chunkCount).toBe(1);
  });

  it("names the config object that is not a repository's, whatever JSON it holds", async () => {
    const { root, store, key } = await freshFileRepository("config-layout");
    for (const text of ["null", "[]", "7", '{"format":"restic"}']) {
      await writeFile(join(root, "config"), text);
      await expect(Repository.open(store, key)).rejects.toThrow(`${store.url} holds an unknown repository format`);
    }
    await writeFile(join(root, "config"), "{");
    await expect(Repository.open(store, key)).rejects.toThrow(`${store.url}/config is not valid JSON`);
  });

  it("refuses a config whose key check is not strictly base64 (Node's decoder skips what is not)", async () => {
    const { root, store, key } = await freshFileRepository("config-key-check");
    const config = JSON.parse(await readFile(join(root, "config"), "utf8"));
    expect(config.keyCheck).toMatch(/=$/);
    for (const damaged of [config.keyCheck.replace(/=$/, "<"), `${config.keyCheck} `, `!${config.keyCheck}`]) {
      await writeFile(join(root, "config"), JSON.stringify({ ...config, keyCheck: damaged }));
      await expect(Repository.open(store, key)).rejects.toThrow(
        `${store.url}/config is damaged: its keyCheck is not base64`,
      );
    }
    await writeFile(join(root, "config"), JSON.stringify(config));
    await expect(Repository.open(store, key)).resolves.toBeInstanceOf(Repository);
  });

  it("refuses a commit naming one manifest part twice, which its readers would take for a damaged record", async () => {
    const { key, repository } = await freshFileRepository("twice");
    const part = sealManifest(key, { version: 1, entries: [] });
    const w = await repository.writer();
    const err = await w.commit([part, Buffer.from(part)], meta).catch((e: unknown) => e);
    expect(isRepositoryError(err, "invalid-manifest"), String(err)).toBe(true);
    expect(String(err)).toContain("the manifest names one part twice");
    expect(await repository.listSnapshots()).toEqual([]);
  });

  it("takes a record that opens to another layout as damaged, naming the field, and forgets it by id", async () => {
    // What opens under the key is only JSON: a record of null or without its totals threw a TypeError in every
    // listing (check, prune, forget by id too, the way past a damaged record) and in the CLIs' tables.
    const { root, key, repository, good } = await oneSnapshotRepository("record-layout");
    const record = openJson(
      key,
      ObjectKind.snapshot,
      await readFile(join(root, "snapshots", good)),
      "record",
    ) as Record<string, unknown>;
    const layouts: [unknown, string][] = [
      [null, "not an object"],
      [[record], "not an object"],
      [{ ...record, totals: undefined }, "totals"],
      [{ ...record, totals: { ...(record.totals as object), bytes: "7" } }, "totals"],
      [{ ...record, stats: { ...(record.stats as object), bytesRead: -1 } }, "stats"],
      [{ ...record, stats: { ...(record.stats as object), skipped: [{ path: 1 }] } }, "stats"],
      [{ ...record, tenant: 5 }, "tenant"],
      [{ ...record, epoch: 1.5 }, "epoch"],
      [{ ...record, version: 2, manifest: undefined, manifests: [record.manifest, record.manifest] }, "manifests"],
    ];
    const bad: string[] = [];
    for (const [value, field] of layouts) {
      const blob = sealJson(key, ObjectKind.snapshot, value);
      const id = sha256(blob).toString("hex");
      await writeFile(join(root, "snapshots", id), blob);
      await expect(repository.findSnapshot(id)).rejects.toThrow(`snapshot ${id} has an unknown layout (${field})`);
      bad.push(id);
    }
    const report = await checkRepository(repository);
    expect(report.problems.map((p) => [p.kind, p.snapshot]).sort()).toEqual(
      bad.map((id) => ["snapshot-unreadable", id]).sort(),
    );
    await expect(forgetSnapshots(repository, { ids: bad })).resolves.toEqual({ forgotten: bad, kept: [good] });
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([good]);
    expect(await checkRepository(repository)).toMatchObject({ ok: true, problems: [] });
  });

  it("forgets exactly the snapshots named (ids or prefixes), all resolved before any is deleted", async () => {
    const store = new FileBlobStore(await mkdtemp(join(tmpdir(), "dumont-forget-")));
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const chunk = sealed(key, randomBytes(1000 + i));
      const writer = await repository.writer();
      await writer.put([chunk]);
      ids.push(await writer.commit([sealManifest(key, manifestOf({ [`f${i}`]: [chunk] }))], meta));
    }
    const listed = async () => (await repository.listSnapshots()).map((s) => s.id).sort();

    for (const [options, error] of [
      [{ ids: [ids[0], "0123abcd"] }, /no snapshot 0123abcd/],
      [{ ids: [ids[0]], policy: { last: 1 } }, /not both/],
      [{ ids: [ids[0]], workspace: "ws-1" }, /workspace narrows a policy/],
      [{ ids: ["xyz"] }, /not a snapshot id/],
      [{}, /say what to keep/],
    ] as const) {
      await expect(forgetSnapshots(repository, options)).rejects.toThrow(error);
    }
    expect(await listed()).toEqual([...ids].sort());

    const dry = await forgetSnapshots(repository, { ids: [ids[1].slice(0, 10)], dryRun: true });
    expect(dry.forgotten).toEqual([ids[1]]);
    expect(await listed()).toEqual([...ids].sort());
    // The newest goes too when named: ids are not a policy.
    const done = await forgetSnapshots(repository, { ids: [ids[1].slice(0, 10), ids[2], ids[2]] });
    expect(done).toEqual({ forgotten: [ids[1], ids[2]], kept: [ids[0]] });
    expect(await listed()).toEqual([ids[0]]);
    await rm(store.root, { recursive: true, force: true });
  });
});

describe("repository on file://, writing packs", () => {
  it("streams each pack into its file as it fills, never gathering one for put", async () => {
    // A store that refuses packs through put: the writer must use openWriter for them.
    class PacksOnlyStreamed extends FileBlobStore {
      override async put(key: string, data: Buffer | readonly Buffer[], options?: { ifAbsent?: boolean }) {
        if (key.startsWith("data/")) throw new Error(`pack ${key} was given to put whole`);
        return super.put(key, data, options);
      }
    }
    const store = new PacksOnlyStreamed(join(env.dir, "streamed-packs"));
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = Array.from({ length: 6 }, () => sealed(key, randomBytes(40_000)));
    const writer = await repository.writer({ packSize: 64 * 1024 });
    await writer.put(chunks);
    const id = await writer.commit([sealManifest(key, manifestOf({ "a.bin": chunks }))], meta);
    expect(writer.stats.packs).toBeGreaterThan(1);
    const check = await checkRepository(await Repository.open(store, key));
    expect(check.problems).toEqual([]);
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([id]);
  });

  it("makes the names of what a snapshot reuses durable before its record: others' packs, index objects, parts", async () => {
    // A writer killed after renaming a pack, its index object or a manifest part into place and before syncing
    // the directory left names a power loss can take away; the next snapshot reused them, unsynced, and its
    // record outlived what it names.
    const synced: string[][] = [];
    class Recording extends FileBlobStore {
      override async syncEntries(keys: readonly string[]) {
        synced.push([...keys]);
        return super.syncEntries(keys);
      }
    }
    const store = new Recording(join(env.dir, "reuse-durable"));
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = Array.from({ length: 4 }, () => sealed(key, randomBytes(40_000)));
    const manifest = sealManifest(key, manifestOf({ "a.bin": chunks }));
    const first = await repository.writer({ packSize: 64 * 1024 });
    await first.put(chunks);
    await first.commit([manifest], meta);
    expect(synced).toEqual([]); // all its own: synced as written
    const packs = [...(await repository.loadIndex()).packs.keys()];
    expect(packs.length).toBeGreaterThan(1);
    const second = await repository.writer();
    await second.put(chunks); // all held: nothing written
    await second.commit([manifest], meta);
    expect(synced).toHaveLength(1);
    const expected = [
      ...packs.flatMap((p) => [packKey(p), indexKey(p)]),
      `manifests/${sha256(manifest).toString("hex")}`,
    ];
    expect([...synced[0]].sort()).toEqual(expected.sort());
  });

  it("forgets durably, then prunes a pack's index object durably before the pack: every index deletion synced, then the packs", async () => {
    // In the other order a crash could leave an index object whose pack is gone, and the next snapshot would
    // take its chunks for stored. The store is asked to make the index deletions durable (file://: an fsync of
    // their directories) before the first pack goes.
    const ops: string[] = [];
    class Recording extends FileBlobStore {
      override async delete(key: string) {
        ops.push(`delete ${key.split("/")[0]}`);
        return super.delete(key);
      }
      override async syncEntries(keys: readonly string[]) {
        ops.push(`sync ${[...new Set(keys.map((k) => k.split("/")[0]))].join(",")}`);
        return super.syncEntries(keys);
      }
    }
    const store = new Recording(join(env.dir, "prune-order"));
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const chunks = Array.from({ length: 4 }, () => sealed(key, randomBytes(40_000)));
      const writer = await repository.writer({ packSize: 64 * 1024 });
      await writer.put(chunks);
      ids.push(await writer.commit([sealManifest(key, manifestOf({ [`f${i}.bin`]: chunks }))], meta));
    }
    // The forget's record deletion is made durable before it returns: lost in a power loss while the prune's
    // synced deletions were not, the snapshot would be listed again without the packs the prune took.
    ops.length = 0;
    await forgetSnapshots(repository, { ids: [ids[0]] });
    expect(ops.filter((op) => !op.includes("locks"))).toEqual(["delete snapshots", "sync snapshots"]);
    ops.length = 0;
    const report = await pruneRepository(repository);
    expect(report.packsDeleted).toBeGreaterThan(1);
    const packOps = ops.filter((op) => op !== "delete snapshots" && !op.startsWith("delete locks"));
    const firstPack = packOps.indexOf("delete data");
    expect(packOps.slice(0, firstPack)).toEqual([...Array(report.packsDeleted).fill("delete index"), "sync index"]);
    expect(packOps.slice(firstPack, firstPack + report.packsDeleted)).toEqual(
      Array(report.packsDeleted).fill("delete data"),
    );
    expect((await checkRepository(repository)).problems).toEqual([]);
  });

  it("after a failed pack write, aborting closes and removes every pack still open", async () => {
    // Found as a FileHandle Node closed on garbage collection: once one pack's upload failed, the next
    // pack to seal was dropped with its file open (a descriptor and a temp file per failed snapshot).
    const root = join(env.dir, "failed-pack");
    const store = new FileBlobStore(root);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    let written = 0;
    const writer = await repository.writer({
      packSize: 64 * 1024,
      uploadConcurrency: 1,
      onPackWritten: () => {
        if (++written === 1) throw new Error("disk full");
      },
    });
    // The descriptors open on files in this store (counting them all, the S3 tests' keep-alive sockets closing
    // meanwhile made the count fall by two).
    const openFds = async () => {
      const targets = await Promise.all(
        (await readdir("/proc/self/fd")).map((fd) => readlink(`/proc/self/fd/${fd}`).catch(() => "")),
      );
      return targets.filter((target) => target.startsWith(`${root}/`)).length;
    };
    const fdsBefore = await openFds();
    await expect(
      (async () => {
        for (let i = 0; i < 8; i++) await writer.put([sealed(key, randomBytes(40_000))]);
      })(),
    ).rejects.toThrow("disk full");
    await writer.abort();
    expect(await openFds()).toBe(fdsBefore);
    const tempFiles = async () =>
      (await readdir(join(root, "data"), { recursive: true })).filter((name) => name.includes(".tmp-"));
    expect(await tempFiles()).toEqual([]);

    // An abort that comes while a put is opening its pack (the control plane aborts when an agent drops,
    // whatever its writer is doing): the put fails, and the pack it opened is closed and removed.
    const second = await repository.writer({ packSize: 64 * 1024 });
    const putting = second.put([sealed(key, randomBytes(40_000))]);
    putting.catch(() => {}); // awaited below, after the abort
    await second.abort();
    await expect(putting).rejects.toThrow(/already committed or aborted/);
    expect(await openFds()).toBe(fdsBefore);
    expect(await tempFiles()).toEqual([]);
  });
});

describe("locks", () => {
  it("a released lock vouches for nothing more: a straggling write of its holder stops", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "locks-released")).href);
    const held = await acquireLock(store, generateRepositoryKey(), { exclusive: true, purpose: "an index repair" });
    held.assertTrusted();
    await held.assertHeld();
    await held.release();
    expect(() => held.assertTrusted()).toThrow(/lock locks\/\w+ was released; stopping/);
    await expect(held.assertHeld()).rejects.toThrow(/was released; stopping/);
    await held.refresh(); // released: a refresh does nothing, quietly
    await store.close();
  });

  it("a lock whose write failed after landing is taken back, and one the store does not show is not taken", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "locks-landed")).href);
    const key = generateRepositoryKey();
    const locks = async () => {
      const keys: string[] = [];
      for await (const info of store.list("locks/")) keys.push(info.key);
      return keys;
    };
    // The store took the lock, then the connection dropped before its answer: a prune's exclusive lock, left
    // there, named a live process and refused every snapshot of the tenant for 30 minutes.
    const put = store.put.bind(store);
    store.put = async (objectKey, body, options) => {
      const landed = await put(objectKey, body, options);
      if (objectKey.startsWith("locks/")) throw Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
      return landed;
    };
    await expect(acquireLock(store, key, { exclusive: true, purpose: "a prune" })).rejects.toThrow("ECONNRESET");
    store.put = put;
    // Its removal is not waited for (a hung store would hold the error back for another deadline).
    for (let i = 0; i < 300 && (await locks()).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(await locks()).toEqual([]);
    const shared = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
    await shared.release();
    // A store that does not show the lock just written may hide it from others' listings too.
    const stat = store.stat.bind(store);
    store.stat = async (objectKey) => (objectKey.startsWith("locks/") ? undefined : stat(objectKey));
    await expect(acquireLock(store, key, { exclusive: true, purpose: "a prune" })).rejects.toThrow(
      /did not show the lock locks\/[0-9a-f]{32} just written to it, so others may not see it either/,
    );
    store.stat = stat;
    expect(await locks()).toEqual([]);
    await store.close();
  });

  it("a refresh under way when the lock is released does not write it back", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "locks-3")).href);
    const key = generateRepositoryKey();
    // The refresh's look at its lock answers "there" only after the release has begun (a slow HEAD on S3).
    let answered!: () => void;
    const statAnswered = new Promise<void>((resolve) => {
      answered = resolve;
    });
    let letAnswer!: () => void;
    const answer = new Promise<void>((resolve) => {
      letAnswer = resolve;
    });
    let slow = false;
    const slowStat: BlobStore = Object.create(store, {
      stat: {
        value: async (k: string) => {
          const info = await store.stat(k);
          if (slow) {
            answered();
            await answer;
          }
          return info;
        },
      },
    });
    const held = await acquireLock(slowStat, key, { exclusive: false, purpose: "a snapshot" });
    vi.useFakeTimers({ toFake: ["Date"] });
    try {
      vi.setSystemTime(Date.now() + 6 * 60_000); // due for a refresh
      slow = true;
      const refreshing = held.refresh();
      await statAnswered;
      const releasing = held.release();
      letAnswer();
      await Promise.all([refreshing, releasing]);
    } finally {
      vi.useRealTimers();
    }
    expect(await readdir(join(env.dir, "locks-3", "locks"))).toEqual([]);
    await held.refresh(); // released: writes nothing
    expect(await readdir(join(env.dir, "locks-3", "locks"))).toEqual([]);
  });

  it("judges locks by the store's clock, respects other pid namespaces and unreadable locks, and stops a writer whose lock was taken", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "locks-2")).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const { ObjectKind, openJson, sealJson } = await import("./sealing.js");
    const lockFile = (held: { key: string }) => join(env.dir, "locks-2", ...held.key.split("/"));
    const rewrite = async (held: { key: string }, change: object) => {
      const body = openJson(key, ObjectKind.lock, await readFile(lockFile(held)), "lock") as object;
      await writeFile(lockFile(held), sealJson(key, ObjectKind.lock, { ...body, ...change }));
    };
    const locked = (e: unknown) => isRepositoryError(e, "locked");

    // A live writer whose clock runs 31 minutes slow: its lock was written just now, so it holds.
    const slowClock = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
    await rewrite(slowClock, { time: new Date(Date.now() - 31 * 60_000).toISOString() });
    await expect(pruneRepository(repository)).rejects.toSatisfy(locked);
    // Unrefreshed for 31 minutes by the store's clock: stale, whatever it says of itself.
    const old = new Date(Date.now() - 31 * 60_000);
    await utimes(lockFile(slowClock), old, old);
    await pruneRepository(repository);

    // A process of another pid namespace on this hostname (a container on the host's network): its pid, absent
    // here, says nothing about it.
    const container = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
    await rewrite(container, { pid: 2 ** 22 + 12345, pidns: "pid:[1]" });
    await expect(pruneRepository(repository)).rejects.toSatisfy(locked);
    await container.release();

    // A holder that did not say its pid namespace and boot (not Linux, an older writer; perhaps another machine
    // of this name): its pid, absent here, says nothing about it.
    const unsaid = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
    await rewrite(unsaid, { pid: 2 ** 22 + 12345, pidns: undefined, bootId: undefined, machineId: undefined });
    await expect(pruneRepository(repository)).rejects.toSatisfy(locked);
    await unsaid.release();

    // Another machine of this hostname (a cloned VM: another boot and machine id; its pid namespace's inode is
    // the same on every Linux machine): its pid, absent here, says nothing about it either.
    const twin = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
    await rewrite(twin, { pid: 2 ** 22 + 12345, bootId: "another-boot", machineId: "another-machine" });
    await expect(pruneRepository(repository)).rejects.toSatisfy(locked);
    await twin.release();
    // This machine before it restarted (its machine id, an earlier boot), even under this process's pid: judged
    // by age, since it may be a clone of this machine (copied with its machine id and hostname) running now, that
    // still writes under it (helper-63's and helper-66's findings: removed at once, then after 21 minutes).
    const machineId = await readFile("/etc/machine-id", "utf8").then(
      (text) => text.trim(),
      () => undefined,
    );
    if (machineId) {
      const beforeRestart = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
      await rewrite(beforeRestart, { pid: process.pid, bootId: "an-earlier-boot", machineId });
      await expect(pruneRepository(repository)).rejects.toSatisfy(locked);
      const trusted = new Date(Date.now() - 25 * 60_000); // its holder (a clone whose refreshes fail) trusts it
      await utimes(lockFile(beforeRestart), trusted, trusted); // (20 minutes, and a write then under way)
      await expect(pruneRepository(repository)).rejects.toSatisfy(locked);
      const unrefreshed = new Date(Date.now() - 31 * 60_000); // stale by age, as another host's
      await utimes(lockFile(beforeRestart), unrefreshed, unrefreshed);
      await pruneRepository(repository);
      expect(await readdir(join(env.dir, "locks-2", "locks"))).toEqual([]);
      // A container of the same image elsewhere (its machine id, another boot, its own pid namespace): by age.
      const elsewhere = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
      await rewrite(elsewhere, { pid: 2 ** 22 + 12345, bootId: "another-boot", machineId, pidns: "pid:[7]" });
      await expect(pruneRepository(repository)).rejects.toSatisfy(locked);
      await elsewhere.release();
    }

    // A lock that cannot be read for another reason than its absence fails the prune instead of passing it.
    const busy = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
    const flaky: BlobStore = Object.create(store, {
      get: {
        value: async (k: string) => {
          if (k === busy.key) throw new Error("read ECONNRESET");
          return store.get(k);
        },
      },
    });
    await expect(pruneRepository(await Repository.open(flaky, key))).rejects.toThrow(/ECONNRESET/);
    // Damaged, it is respected until it is stale by age.
    await writeFile(lockFile(busy), "not a lock");
    await expect(pruneRepository(repository)).rejects.toThrow(/locked by an unreadable lock/);
    await busy.release();

    // A writer whose lock a prune removed as stale (a VM paused for half an hour) does not commit.
    const writer = await repository.writer();
    const chunk = sealed(key, randomBytes(5_000));
    await writer.put([chunk]);
    for (const name of await readdir(join(env.dir, "locks-2", "locks")))
      await rm(join(env.dir, "locks-2", "locks", name));
    await expect(writer.commit([sealManifest(key, manifestOf({ f: [chunk] }))], meta)).rejects.toThrow(
      /repository lock locks\/[0-9a-f]+ was removed/,
    );
    expect(await repository.listSnapshots()).toEqual([]);
    await writer.abort().catch(() => {});
  });

  /**
   * A repository on file:// whose store holds the calls `gate.holds` picks (a paused process) until `open()`,
   * and a fake wall clock moved on with `later(minutes)` (a suspended process: the monotonic clock stands still).
   */
  async function pausable(name: string) {
    const store = openBlobStore(pathToFileURL(join(env.dir, name)).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    let holds: (call: string, key: string) => boolean = () => false;
    let open = () => {};
    let opened = Promise.resolve();
    let reached = () => {};
    const held = (call: string, k: string) => {
      if (!holds(call, k)) return Promise.resolve();
      holds = () => false;
      reached();
      return opened;
    };
    const paused: BlobStore = Object.create(store, {
      put: { value: async (k: string, ...rest: [Buffer, object?]) => held("put", k).then(() => store.put(k, ...rest)) },
      delete: { value: async (k: string) => held("delete", k).then(() => store.delete(k)) },
      list: {
        value: async function* (prefix: string) {
          await held("list", prefix);
          yield* store.list(prefix);
        },
      },
    });
    vi.useFakeTimers({ toFake: ["Date"] });
    onTestFinished(() => {
      vi.useRealTimers();
    });
    return {
      key,
      repository,
      pausedRepository: await Repository.open(paused, key),
      /** The next call `which` picks waits; resolves once one has begun waiting. */
      hold(which: (call: string, key: string) => boolean): Promise<void> {
        holds = which;
        opened = new Promise((resolve) => (open = resolve));
        return new Promise((resolve) => (reached = resolve));
      },
      open: () => open(),
      /** `minutes` pass: the wall clock moves on, and every lock in the store is that much older. */
      async later(minutes: number): Promise<void> {
        vi.setSystemTime(Date.now() + minutes * 60_000);
        for (const lock of await readdir(join(env.dir, name, "locks"))) {
          const file = join(env.dir, name, "locks", lock);
          const { mtime } = await stat(file);
          const older = new Date(mtime.getTime() - minutes * 60_000);
          await utimes(file, older, older);
        }
      },
      locks: () => readdir(join(env.dir, name, "locks")),
    };
  }

  it("a prune paused past its lock's trust deletes nothing, and a writer meanwhile removes its stale lock", async () => {
    const r = await pausable("locks-paused-prune");
    const one = sealed(r.key, randomBytes(5_000));
    let writer = await r.repository.writer();
    await writer.put([one]);
    await writer.commit([sealManifest(r.key, manifestOf({ f: [one] }))], meta);
    // The prune takes its lock and reads the snapshots, then stops for 31 minutes before listing the packs.
    const listing = r.hold((call, prefix) => call === "list" && prefix === "data/");
    const prune = pruneRepository(r.pausedRepository);
    prune.catch(() => {});
    await listing;
    const [pruneLock] = await r.locks();
    await r.later(31);
    // A writer takes the stale lock for its holder's and removes it, then stores a snapshot in a pack of its own.
    writer = await r.repository.writer();
    expect(await r.locks()).not.toContain(pruneLock);
    const two = sealed(r.key, randomBytes(5_000));
    await writer.put([two]);
    const second = await writer.commit([sealManifest(r.key, manifestOf({ f: [one], g: [two] }))], meta);
    // The prune wakes: it no longer trusts its lock, and stops before deleting anything.
    r.open();
    await expect(prune).rejects.toThrow(
      /repository lock locks\/[0-9a-f]+ was last written 31 minutes ago \(the process was paused.*stopping/,
    );
    expect((await r.repository.listSnapshots()).map((x) => x.id)).toContain(second);
    expect(await checkRepository(r.repository)).toMatchObject({ ok: true, problems: [] });
    expect(await r.locks()).toEqual([]);
  });

  /** Three snapshots of a file each, each chunk in a pack of its own, the first two forgotten: two packs unused. */
  async function twoUnusedPacks(r: Awaited<ReturnType<typeof pausable>>): Promise<string[]> {
    const ids: string[] = [];
    for (const name of ["a", "b", "c"]) {
      const chunk = sealed(r.key, randomBytes(5_000));
      const writer = await r.repository.writer({ packSize: 1 });
      await writer.put([chunk]);
      ids.push(await writer.commit([sealManifest(r.key, manifestOf({ [name]: [chunk] }))], meta));
    }
    await forgetSnapshots(r.repository, { ids: ids.slice(0, 2) });
    return [...(await r.repository.loadIndex()).packs.keys()];
  }

  it("a prune whose lock was removed meanwhile deletes nothing, though the lock is not old", async () => {
    // Removed by another process that took it for stale (its holder looked gone from there): the trust by age
    // alone would let the prune delete under a writer that has since taken the repository.
    const r = await pausable("locks-removed-prune");
    const packs = await twoUnusedPacks(r);
    const listing = r.hold((call, prefix) => call === "list" && prefix === "data/");
    const prune = pruneRepository(r.pausedRepository);
    prune.catch(() => {});
    await listing;
    for (const lock of await r.locks()) await rm(join(env.dir, "locks-removed-prune", "locks", lock));
    r.open();
    await expect(prune).rejects.toThrow(/repository lock locks\/[0-9a-f]+ was removed .*stopping/);
    expect([...(await r.repository.loadIndex()).packs.keys()].sort()).toEqual(packs.sort());
  });

  it("a prune that comes to distrust its lock between two deletions makes no more", async () => {
    const r = await pausable("locks-prune-between");
    const packs = await twoUnusedPacks(r);
    const deleting = r.hold((call, key) => call === "delete" && key.startsWith("index/"));
    const prune = pruneRepository(r.pausedRepository);
    prune.catch(() => {});
    await deleting;
    await r.later(21); // the first deletion lands after its lock could be stale
    r.open();
    await expect(prune).rejects.toThrow(/was last written 21 minutes ago/);
    // The first index object went; nothing after it did: every pack is still there.
    expect((await r.repository.loadIndex()).packs.size).toBe(packs.length - 1);
    for (const packId of packs)
      expect((await stat(join(env.dir, "locks-prune-between", ...packKey(packId).split("/")))).isFile()).toBe(true);
  });

  it("a prune paused in its repack indexes nothing after its lock could be stale (no chunk lost)", async () => {
    const r = await pausable("locks-paused-repack");
    const kept = sealed(r.key, randomBytes(10_000));
    const dropped = sealed(r.key, randomBytes(50_000)); // its pack mostly garbage once forgotten: repacked
    const writer = await r.repository.writer();
    await writer.put([kept, dropped]);
    await writer.commit([sealManifest(r.key, manifestOf({ f: [kept] }))], meta);
    // The prune repacks `kept` into a new pack, and stops for 31 minutes before that pack's index object lands.
    const indexing = r.hold((call, key) => call === "put" && key.startsWith("index/"));
    const prune = pruneRepository(r.pausedRepository);
    prune.catch(() => {});
    await indexing;
    await r.later(31);
    // Another prune takes the stale lock for its holder's: it deletes the new pack as an orphan, and repacks the
    // old one into a pack of its own. The first one's index object, landing after, named a pack gone: `check`
    // found the snapshot broken, and a later prune could delete the one copy left.
    await expect(pruneRepository(r.repository)).resolves.toMatchObject({ packsRepacked: 1 });
    r.open();
    await expect(prune).rejects.toThrow(/was last written 31 minutes ago/);
    expect(await checkRepository(r.repository)).toMatchObject({ ok: true, problems: [] });
  });

  it("a lock refresh landing after the lock could be stale does not count, and its writer does not commit", async () => {
    const r = await pausable("locks-late-refresh");
    const writer = await r.pausedRepository.writer({ packSize: 1 });
    const one = sealed(r.key, randomBytes(5_000));
    await writer.put([one]);
    await writer.flush();
    // 19 minutes on the refresh is due and the lock trusted; the refresh's write takes 12 minutes to land.
    await r.later(19);
    const refreshing = r.hold((call, key) => call === "put" && key.startsWith("locks/"));
    const two = sealed(r.key, randomBytes(5_000));
    const put = writer.put([two]).then(() => writer.flush());
    put.catch(() => {});
    await refreshing;
    await r.later(12);
    // Meanwhile a prune finds the lock stale, removes it and deletes the packs no snapshot names.
    await expect(pruneRepository(r.repository)).resolves.toMatchObject({ packsDeleted: 2 });
    r.open(); // the refresh lands, putting the lock back
    await expect(put).rejects.toThrow(/was last written 31 minutes ago/);
    await expect(writer.commit([sealManifest(r.key, manifestOf({ f: [one, two] }))], meta)).rejects.toThrow(
      /was last written 31 minutes ago/,
    );
    await writer.abort().catch(() => {});
    expect(await r.repository.listSnapshots()).toEqual([]);
    expect(await checkRepository(r.repository)).toMatchObject({ ok: true, problems: [] });
  });

  it("a pack's index object landing after the writer's lock could be stale is taken back", async () => {
    const r = await pausable("locks-late-index");
    const writer = await r.pausedRepository.writer({ packSize: 1 });
    const indexing = r.hold((call, key) => call === "put" && key.startsWith("index/"));
    const put = writer.put([sealed(r.key, randomBytes(5_000))]).then(() => writer.flush());
    put.catch(() => {});
    await indexing;
    await r.later(21);
    r.open();
    await expect(put).rejects.toThrow(/was last written 21 minutes ago/);
    await writer.abort().catch(() => {});
    // No index object names the pack (a prune may have deleted it meanwhile as an orphan): later writers do not
    // take its chunks for stored.
    expect(await readdir(join(env.dir, "locks-late-index", "index"))).toEqual([]);
  });

  /** Runs `work` with the call `which` picks held until 21 minutes have passed (past a lock's trust); its outcome. */
  async function heldPastTrust<T>(
    r: Awaited<ReturnType<typeof pausable>>,
    which: (call: string, key: string) => boolean,
    work: () => Promise<T>,
  ): Promise<T> {
    const reached = r.hold(which);
    const running = work();
    running.catch(() => {});
    await reached;
    await r.later(21);
    r.open();
    return running;
  }

  /** Commits a snapshot of one small file through `r`'s repository (not the paused one). */
  async function commitOneFile(r: Awaited<ReturnType<typeof pausable>>): Promise<void> {
    const writer = await r.repository.writer();
    const chunk = sealed(r.key, randomBytes(5_000));
    await writer.put([chunk]);
    await writer.commit([sealManifest(r.key, manifestOf({ f: [chunk] }))], meta);
  }

  it("an index object a repair rebuilt, landing after its lock could be stale, is taken back", async () => {
    const r = await pausable("locks-late-repair");
    await commitOneFile(r);
    const indexDir = join(env.dir, "locks-late-repair", "index");
    for (const name of await readdir(indexDir)) await rm(join(indexDir, name));
    const repair = heldPastTrust(
      r,
      (call, key) => call === "put" && key.startsWith("index/"),
      () => repairIndex(r.pausedRepository),
    );
    await expect(repair).rejects.toThrow(/was last written 21 minutes ago/);
    // Left there, it would name a pack a prune that took the lock meanwhile may have deleted as an orphan.
    expect(await readdir(indexDir)).toEqual([]);
  });

  it("a check whose lock could be stale before it ended gives no report (a prune may have run under it)", async () => {
    const r = await pausable("locks-late-check");
    await commitOneFile(r);
    const check = heldPastTrust(
      r,
      (call, key) => call === "list" && key.startsWith("index/"),
      () => checkRepository(r.pausedRepository),
    );
    await expect(check).rejects.toThrow(
      /was last written 21 minutes ago .*: a prune may have run meanwhile, so this check's findings could be wrong; run it again/,
    );
  });

  it("a check whose last look at its lock fails passes that failure on as it is, not as a lock lost", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "locks-check-blip")).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const stat = store.stat.bind(store);
    let looks = 0;
    // The acquisition's look at its own lock answers; the check's last one meets a connection reset.
    store.stat = async (k) => {
      if (k.startsWith("locks/") && looks++ > 0)
        throw Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
      return stat(k);
    };
    await expect(checkRepository(repository)).rejects.toThrow(/^read ECONNRESET$/);
    await store.close();
  });

  it("refreshes a lock on time when the wall clock is set back", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "locks-clock-back")).href);
    const key = generateRepositoryKey();
    await Repository.openOrInit(store, key);
    vi.useFakeTimers({ toFake: ["Date", "performance"] });
    try {
      const held = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
      const writes: string[] = [];
      const put = store.put.bind(store);
      store.put = async (k, data, options) => {
        writes.push(k);
        return put(k, data, options);
      };
      vi.setSystemTime(Date.now() - 60 * 60_000); // an hour back (NTP stepping a clock that ran fast)
      vi.advanceTimersByTime(6 * 60_000); // 6 minutes on, by both clocks
      await held.refresh();
      expect(writes).toEqual([held.key]);
      // And the lock stays trusted 20 minutes on from there, as the refreshes go on.
      vi.advanceTimersByTime(19 * 60_000);
      await held.refresh();
      await expect(held.assertHeld()).resolves.toBeUndefined();
      await held.release();
    } finally {
      vi.useRealTimers();
    }
  });

  it("a snapshot record landing after its lock could be stale is taken back", async () => {
    const r = await pausable("locks-late-record");
    const writer = await r.pausedRepository.writer();
    const one = sealed(r.key, randomBytes(5_000));
    await writer.put([one]);
    const recording = r.hold((call, key) => call === "put" && key.startsWith("snapshots/"));
    const commit = writer.commit([sealManifest(r.key, manifestOf({ f: [one] }))], meta);
    commit.catch(() => {});
    await recording;
    await r.later(21);
    r.open();
    await expect(commit).rejects.toThrow(/was last written 21 minutes ago/);
    await writer.abort().catch(() => {});
    expect(await r.repository.listSnapshots()).toEqual([]);
    expect(await readdir(join(env.dir, "locks-late-record", "snapshots"))).toEqual([]);
  });

  it("prune waits for a running writer, and ignores the lock of a process that died", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "locks")).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const writer = await repository.writer();
    await expect(pruneRepository(repository)).rejects.toSatisfy((e) => isRepositoryError(e, "locked"));
    await writer.abort();
    await pruneRepository(repository);

    // A lock left by a process on this host that no longer exists (kill -9) does not block prune.
    const held = await acquireLock(store, key, { exclusive: false, purpose: "a snapshot" });
    const lockFile = join(env.dir, "locks", ...held.key.split("/"));
    const { ObjectKind, openJson, sealJson } = await import("./sealing.js");
    const body = openJson(key, ObjectKind.lock, await readFile(lockFile), "lock") as { pid: number };
    await writeFile(lockFile, sealJson(key, ObjectKind.lock, { ...body, pid: 2 ** 22 + 12345 }));
    await pruneRepository(repository);
  });

  it("a lock the store will not delete neither fails finished work nor hides the error that ended it", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "locks-kept")).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const remove = store.delete.bind(store);
    store.delete = async (objectKey) => {
      if (objectKey.startsWith("locks/")) throw new Error("delete ECONNREFUSED");
      return remove(objectKey);
    };
    // Committed is committed: the commit returns its id (it failed with ECONNREFUSED, the snapshot listed).
    const chunk = sealed(key, randomBytes(5_000));
    const writer = await repository.writer();
    await writer.put([chunk]);
    const id = await writer.commit([sealManifest(key, manifestOf({ f: [chunk] }))], meta);
    expect((await repository.listSnapshots()).map((s) => s.id)).toEqual([id]);
    expect(await checkRepository(repository)).toMatchObject({ ok: true, snapshots: 1 });
    // A check stopped fails with why it stopped, not with the lock's delete.
    const stop = new AbortController();
    stop.abort(new Error("stopped by the test"));
    await expect(checkRepository(repository, { signal: stop.signal })).rejects.toThrow("stopped by the test");
    // The locks stay, for others to find stale.
    const locks: string[] = [];
    for await (const info of store.list("locks/")) locks.push(info.key);
    expect(locks).toHaveLength(3);
  });

  it("reads a subset of the packs: the n-th of t groups by pack id, or a share at random; the structure whole", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "subset")).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const chunks = Array.from({ length: 12 }, (_, i) => sealed(key, randomBytes(20_000 + i)));
    const writer = await repository.writer({ packSize: 10_000 }); // a pack a chunk
    await writer.put(chunks);
    const files = Object.fromEntries(chunks.map((c, i) => [`f${i}`, [c]]));
    await writer.commit([sealManifest(key, manifestOf(files))], meta);
    const whole = await checkRepository(repository);
    expect(whole.packs).toBeGreaterThan(6);
    expect(whole.packsRead).toBe(whole.packs);
    // 1/3, 2/3 and 3/3 between them read every pack once; a group is the same packs each time.
    const groups = [];
    for (let n = 1; n <= 3; n++) groups.push(await checkRepository(repository, { readSubset: { group: n, of: 3 } }));
    expect(groups.reduce((sum, r) => sum + r.packsRead, 0)).toBe(whole.packs);
    expect(groups.reduce((sum, r) => sum + r.bytesChecked, 0)).toBe(whole.bytesChecked);
    const again = await checkRepository(repository, { readSubset: { group: 2, of: 3 } });
    expect(again.bytesChecked).toBe(groups[1].bytesChecked);
    const quarter = await checkRepository(repository, { readSubset: { percent: 25 } });
    expect(quarter.packsRead).toBe(Math.ceil(whole.packs / 4));
    // A damaged pack is found by the group holding it, and by no other.
    const damaged = [...(await repository.loadIndex()).packs.keys()][0];
    const bytes = await store.get(packKey(damaged));
    bytes[100] ^= 0xff;
    await store.put(packKey(damaged), bytes);
    const holding = (Number.parseInt(damaged.slice(0, 8), 16) % 3) + 1;
    for (let n = 1; n <= 3; n++) {
      const report = await checkRepository(repository, { readSubset: { group: n, of: 3 } });
      expect(
        report.problems.map((p) => [p.kind, p.pack]),
        `group ${n}`,
      ).toEqual(n === holding ? [["chunk-corrupt", damaged]] : []);
    }
    // Structure only reads no pack, whatever else is asked.
    expect(await checkRepository(repository, { readData: false, readSubset: { percent: 100 } })).toMatchObject({
      ok: true,
      packsRead: 0,
      bytesChecked: 0,
    });
  });

  it("parses a subset as n/t or a percentage, and says what to give otherwise", () => {
    expect(parseReadSubset("1/5", "--read-data-subset")).toEqual({ group: 1, of: 5 });
    expect(parseReadSubset(" 10000/10000 ", "--read-data-subset")).toEqual({ group: 10_000, of: 10_000 });
    expect(parseReadSubset("2.5%", "--read-data-subset")).toEqual({ percent: 2.5 });
    expect(parseReadSubset("100%", "--read-data-subset")).toEqual({ percent: 100 });
    for (const bad of ["0/5", "6/5", "1/0", "1/10001", "0%", "101%", "5", "-1/5", "1/5%", "", "1e2%"]) {
      expect(() => parseReadSubset(bad, "--read-data-subset"), bad).toThrow(
        `--read-data-subset ${JSON.stringify(bad)} is not a subset of the packs: give n/t`,
      );
    }
  });

  it("fails a check or a prune when the store does not answer or refuses, rather than report or act on damage", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "unanswering")).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const writer = await repository.writer();
    const chunk = sealed(key, randomBytes(5_000));
    await writer.put([chunk]);
    await writer.commit([sealManifest(key, manifestOf({ f: [chunk] }))], meta);
    const unanswered = new RepositoryError("unavailable", "S3 request failed: connect ECONNREFUSED");
    // As the S3 store says an expired session token (HTTP 400) or a revoked permission (403): nor is that damage.
    const refused = new RepositoryError("invalid-argument", "S3 refused access (HTTP 400 ExpiredToken)");
    for (const [prefix, down] of ["snapshots/", "index/", "manifests/", "data/"].flatMap((p) =>
      [unanswered, refused].map((e) => [p, e] as const),
    )) {
      const outage: BlobStore = Object.create(store, {
        get: { value: (k: string) => (k.startsWith(prefix) ? Promise.reject(down) : store.get(k)) },
        getRange: {
          value: (k: string, offset: number, length: number, into?: Buffer) =>
            k.startsWith(prefix) ? Promise.reject(down) : store.getRange(k, offset, length, into),
        },
      });
      const opened = await Repository.open(outage, key);
      // Not "snapshot-unreadable", "index-unreadable", "manifest-unreadable" or "pack-unreadable": nothing is
      // known of the data.
      await expect(checkRepository(opened), `${prefix} ${down.message}`).rejects.toBe(down);
      // And a prune does not take an index it could not read for one it need not keep.
      if (prefix !== "data/") await expect(pruneRepository(opened), `${prefix} ${down.message}`).rejects.toBe(down);
    }
    expect(await checkRepository(repository)).toMatchObject({ ok: true, snapshots: 1 });
  });

  it("check holds a shared lock: refused while a prune runs, runs with lock: false, leaves no lock behind", async () => {
    const store = openBlobStore(pathToFileURL(join(env.dir, "check-locks")).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const prune = await acquireLock(store, key, { exclusive: true, purpose: "a prune" });
    await expect(checkRepository(repository)).rejects.toThrow(/locked by a prune/);
    // Without the lock (a repository this process may only read), it runs.
    expect(await checkRepository(repository, { lock: false })).toMatchObject({ ok: true });
    await prune.release();
    expect(await checkRepository(repository)).toMatchObject({ ok: true });
    const locks: string[] = [];
    for await (const info of store.list("locks/")) locks.push(info.key);
    expect(locks).toEqual([]);
  });
});

describe("keys", () => {
  it("parses hex and base64 and explains anything else", () => {
    const key = generateRepositoryKey();
    expect(parseRepositoryKey(`${key.toString("hex")}\n`).equals(key)).toBe(true);
    expect(parseRepositoryKey(key.toString("base64")).equals(key)).toBe(true);
    expect(() => parseRepositoryKey("hunter2", "--key-file k")).toThrow(
      /--key-file k is not a repository key.*openssl rand -hex 32/,
    );
  });

  it("takes a file of 32 raw bytes, but not 32 bytes of text", () => {
    let raw = generateRepositoryKey();
    while (/^[\t-\r\x20-\x7e]+$/.test(raw.toString("latin1"))) raw = generateRepositoryKey(); // ~1 in 10^13
    expect(parseRepositoryKey(raw).equals(raw)).toBe(true);
    // Each was taken as a key: a password and its newline, a passphrase, a hex key cut short.
    for (const text of [
      "correct-horse-battery-staple-12\n",
      "correct horse battery staple 123",
      `${"ab".repeat(15)}c\n`,
    ]) {
      expect(text.length).toBe(32);
      expect(() => parseRepositoryKey(Buffer.from(text), "--key-file k")).toThrow(
        /--key-file k is not a repository key: its 32 bytes read as text .*od -An -vtx1 FILE/,
      );
    }
  });
});

describe("objects that are not what their name says", () => {
  /** A repository on file:// holding two snapshots of one file each (different chunks), and its parts. */
  async function twoSnapshots(name: string) {
    const store = openBlobStore(pathToFileURL(join(env.dir, name)).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const ids: string[] = [];
    for (const file of ["a.bin", "b.bin"]) {
      const chunk = sealed(key, randomBytes(10_000));
      const writer = await repository.writer();
      await writer.put([chunk]);
      ids.push(await writer.commit([sealManifest(key, manifestOf({ [file]: [chunk] }))], meta));
    }
    const records = await repository.listSnapshots();
    const recordOf = (id: string) => records.find((r) => r.id === id)!;
    return { store, key, repository, first: recordOf(ids[0]), second: recordOf(ids[1]) };
  }

  it("refuses a manifest part stored under another part's id (its name is its hash, the only tie)", async () => {
    // A manifest part's seal names no id (parts are shared between snapshots): a part copied over another
    // opens fine, and would restore the other snapshot's files under this one's name.
    const { store, repository, first, second } = await twoSnapshots("named-manifest");
    await store.put(`manifests/${first.manifests[0]}`, await store.get(`manifests/${second.manifests[0]}`));
    await expect(repository.readManifest(first)).rejects.toThrow(
      `manifest ${first.manifests[0]} of snapshot ${first.id} does not match its id`,
    );
    const files = (await repository.readManifest(second)).entries.filter((e) => e.type === "file");
    expect(files.map((e) => e.path)).toEqual(["b.bin"]);
    await store.close();
  });

  it("refuses an index object stored under another pack's name", async () => {
    // Taken for the other pack's, it would locate chunks in a pack that does not hold them, and a prune could
    // delete the pack that does as unused.
    const { store, key, repository } = await twoSnapshots("named-index");
    const [packId] = (await repository.loadIndex()).packs.keys();
    const other = randomBytes(32).toString("hex");
    await store.put(indexKey(other), await store.get(indexKey(packId)));
    await expect(repository.loadIndex()).rejects.toThrow(`index object index/${other} describes pack ${packId}`);
    await expect((await Repository.open(store, key)).writer()).rejects.toThrow(/describes pack/);
    await store.close();
  });

  it("refuses a config whose key check names another repository", async () => {
    const { store, key } = await twoSnapshots("named-config");
    const config = JSON.parse((await store.get("config")).toString("utf8"));
    const other = chunkCodec.sealObject(key, ObjectKind.keyCheck, Buffer.from("another repository's id", "utf8"));
    await store.put("config", Buffer.from(JSON.stringify({ ...config, keyCheck: other.toString("base64") })));
    await expect(Repository.open(store, key)).rejects.toThrow(/the key check of .* names another repository/);
    await store.close();
  });

  it("a writer respects a lock it cannot read, as a prune does", async () => {
    // Unreadable (damaged, or another key's): it may be a live prune's, so it counts until stale by age.
    const { store, repository } = await twoSnapshots("unreadable-lock");
    await store.put(`locks/${randomBytes(16).toString("hex")}`, Buffer.from("not a lock"));
    await expect(repository.writer()).rejects.toThrow(
      /the repository is locked by an unreadable lock, locks\/[0-9a-f]{32}/,
    );
    await store.close();
  });
});

describe("prune merges small packs", () => {
  /** A repository of `n` snapshots, each adding one 2,000-byte chunk: a pack each, as small snapshots leave. */
  const smallSnapshots = async (n: number) => {
    const fresh = await freshFileRepository("small-packs");
    for (let i = 0; i < n; i++) {
      const c = sealed(fresh.key, randomBytes(2_000));
      const w = await fresh.repository.writer();
      await w.put([c]);
      await w.commit([sealManifest(fresh.key, manifestOf({ [`f${i}`]: [c] }))], meta);
    }
    return fresh;
  };

  it("merges 16 or more packs, all in use, into one; the snapshots read whole after", async () => {
    const { repository } = await smallSnapshots(20);
    expect((await repository.loadIndex()).packs.size).toBe(20);
    const planned = await pruneRepository(repository, { dryRun: true });
    expect(planned).toMatchObject({ packsDeleted: 0, packsRepacked: 20 });
    const report = await pruneRepository(repository);
    expect(report).toMatchObject({ packsDeleted: 0, packsRepacked: 20 });
    // Twenty packs' headers and trailers less one's: a little freed, never a negative number.
    expect(report.bytesFreed).toBeGreaterThan(0);
    const index = await repository.loadIndex();
    expect(index.packs.size).toBe(1);
    expect(index.chunkCount).toBe(20);
    const checked = await checkRepository(repository, { readData: true });
    expect(checked).toMatchObject({ ok: true, snapshots: 20, packs: 1, chunks: 20 });
  });

  it("leaves fewer than 16 alone, and all of them when asked not to merge", async () => {
    const few = await smallSnapshots(15);
    expect(await pruneRepository(few.repository)).toMatchObject({ packsRepacked: 0 });
    expect((await few.repository.loadIndex()).packs.size).toBe(15);
    const many = await smallSnapshots(16);
    expect(await pruneRepository(many.repository, { mergeSmall: false })).toMatchObject({ packsRepacked: 0 });
    expect((await many.repository.loadIndex()).packs.size).toBe(16);
  });
});

describe("repositoryStats", () => {
  it("counts what the snapshots restore, what that is deduplicated, and the packs as the store holds them", async () => {
    const { root, key, repository } = await freshFileRepository("stats");
    expect(await repositoryStats(repository)).toEqual(emptyRepositoryStats());
    const [a, b] = [sealed(key, randomBytes(3_000)), sealed(key, Buffer.alloc(5_000, 7))];
    let w = await repository.writer();
    await w.put([a, b]);
    await w.commit([sealManifest(key, manifestOf({ "a.bin": [a], "b.bin": [b] }))], meta);
    // A second snapshot: a.bin unchanged, and a copy of it under another name; no new chunk.
    w = await repository.writer();
    await w.commit([sealManifest(key, manifestOf({ "a.bin": [a], "copy.bin": [a, a] }))], meta);

    const stats = await repositoryStats(repository);
    // The packs' bytes are those of the files the store holds under data/.
    let onDisk = 0;
    for (const name of await readdir(join(root, "data"), { recursive: true })) {
      const info = await stat(join(root, "data", name));
      if (info.isFile()) onDisk += info.size;
    }
    expect(stats).toEqual({
      snapshots: 2,
      files: 4,
      bytes: 3_000 + 5_000 + 3_000 + 6_000,
      chunks: 2,
      chunkBytes: 8_000,
      packs: 1,
      packBytes: onDisk,
      unreadableSnapshots: [],
    });
    expect(onDisk).toBeLessThan(8_000); // b's 5,000 equal bytes compressed
    expect(statsText(stats)).not.toMatch(/unreadable/);

    // A damaged record is named and counted around (as `list` does), not a failed answer.
    const second = (await repository.listSnapshots()).find((s) => s.totals.bytes === 9_000);
    if (!second) throw new Error("no second snapshot");
    const recordFile = join(root, "snapshots", second.id);
    const bytes = await readFile(recordFile);
    bytes[bytes.length - 1] ^= 0xff;
    await writeFile(recordFile, bytes);
    const around = await repositoryStats(repository);
    expect(around).toMatchObject({ snapshots: 1, files: 2, bytes: 8_000, unreadableSnapshots: [second.id] });
    expect(statsText(around)).toMatch(
      new RegExp(
        `\\nunreadable +1 snapshot record, not counted above: ${second.id} \\(\`snapshot check\` says why\\)\\n$`,
      ),
    );
  });
});
