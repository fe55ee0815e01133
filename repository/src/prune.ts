// forget: drop snapshot objects by a retention policy, or by id. prune: under an exclusive lock, delete packs no
// snapshot needs, repack mostly-unused ones, and delete leftovers of interrupted snapshots.
import type { BlobStore } from "./blob-store.js";
import { RepositoryChunkSource } from "./chunk-source.js";
import { counted } from "./counted.js";
import { isObjectError, isRepositoryError, RepositoryError, readShowsDamage } from "./errors.js";
import { forEachLimited } from "./for-each-limited.js";
import { IdSet } from "./id-set.js";
import { acquireLock, LOCK_STALE_AFTER_MS } from "./lock.js";
import { indexKey, listPacks, packKey } from "./pack.js";
import { readPackHeader } from "./repair-index.js";
import type { Repository } from "./repository.js";
import type { RepositoryIndex } from "./repository-index.js";
import { DEFAULT_PACK_SIZE } from "./repository-writer.js";
import { hasRetentionRule, planRetention, type RetentionPolicy } from "./retention.js";
import { chunkCodec, isRepositoryKey } from "./sealing.js";
import { type SnapshotRecord, snapshotKey } from "./snapshot-record.js";

export interface ForgetOptions {
  /** Keep what this policy keeps, per workspace; forget the rest. */
  policy?: RetentionPolicy;
  /** Or forget exactly these snapshots: ids, or prefixes of 4 or more hex characters naming one each. */
  ids?: readonly string[];
  /** Only consider snapshots of this workspace (with a policy). */
  workspace?: string;
  /**
   * A `workspace` no snapshot is of fails the call ("not-found") rather than forget nothing: from a person
   * that is a typo far more often than a policy with nothing to do (the control plane's API says so too).
   */
  refuseUnknownWorkspace?: boolean;
  dryRun?: boolean;
  /**
   * Called before each snapshot object is deleted. The control plane drops its catalogue row there, so a
   * crash between the two leaves a snapshot that is unlisted but whole (the control plane lists it again at
   * its next start), never one listed without its data.
   */
  beforeDelete?: (snapshotId: string) => Promise<void>;
}

export interface ForgetReport {
  kept: string[];
  forgotten: string[];
}

export async function forgetSnapshots(repository: Repository, options: ForgetOptions): Promise<ForgetReport> {
  const byRule = options.policy !== undefined && hasRetentionRule(options.policy);
  const byId = (options.ids?.length ?? 0) > 0;
  if (byRule === byId) {
    throw new RepositoryError(
      "invalid-argument",
      byId
        ? "give snapshot ids or a policy (keep-last, keep-hourly, keep-daily, keep-weekly), not both"
        : "say what to keep (keep-last, keep-hourly, keep-daily or keep-weekly), or which snapshots to forget",
    );
  }
  if (byId && options.workspace !== undefined) {
    throw new RepositoryError("invalid-argument", "a workspace narrows a policy; snapshot ids name snapshots already");
  }
  let plan: { keep: string[]; forget: string[] };
  if (byId) {
    // Every id is resolved before anything is deleted: one that names nothing fails the whole call. By the
    // listing, not by opening records: a record that does not open can be forgotten too. (A prune refuses to run
    // while one cannot be read, so one damaged record otherwise blocked every prune, for good.)
    const unreadable: string[] = [];
    // (One gone since it was listed, forgotten elsewhere, the listing leaves out itself.)
    // A name that is no id is no snapshot (check names it): neither kept nor what `latest` might be.
    const all = await repository.listSnapshots({ onCorrupt: (id) => void unreadable.push(id) });
    const forget = await repository.resolveSnapshotIds(options.ids ?? [], all, unreadable, "forget");
    const keep = [...all.map((s) => s.id), ...unreadable.sort()].filter((id) => !forget.has(id));
    plan = { forget: [...forget], keep };
  } else {
    // A policy needs every snapshot's time and workspace: a record that does not open fails it.
    const all = await repository.listSnapshots();
    const candidates = options.workspace === undefined ? all : all.filter((s) => s.workspace === options.workspace);
    if (options.refuseUnknownWorkspace && options.workspace !== undefined && candidates.length === 0) {
      const known = [...new Set(all.map((s) => s.workspace))].sort();
      throw new RepositoryError(
        "not-found",
        `no snapshot in ${repository.url} is of workspace ${JSON.stringify(options.workspace)}` +
          (known.length > 0
            ? `; its snapshots are of ${known
                .slice(0, 10)
                .map((w) => JSON.stringify(w))
                .join(", ")}${known.length > 10 ? ` and ${known.length - 10} more` : ""}`
            : ""),
      );
    }
    plan = planRetention(candidates, options.policy ?? {});
  }
  if (!options.dryRun) {
    for (const id of plan.forget) {
      await options.beforeDelete?.(id);
      await repository.store.delete(snapshotKey(id));
    }
    // Durable before anything they named can be pruned: a record's deletion lost in a power loss after the
    // prune's (synced) deletions would list the snapshot again, without the packs the prune removed.
    if (plan.forget.length > 0) await repository.store.syncEntries?.(plan.forget.map(snapshotKey));
  }
  return { kept: plan.keep, forgotten: plan.forget };
}

/**
 * A snapshot that adds little writes a pack of its own: one every few minutes left thousands of packs of a few KiB,
 * each an index object, a listing entry and ~760 bytes of the control plane's index, and nothing merged them, their
 * data all in use (helper-88). A prune merges packs under this fraction of the pack size, once there are at least
 * MERGE_SMALL_PACKS_AT (so a prune does not rewrite a few small packs every time). restic's `prune --repack-small`.
 */
const SMALL_PACK_FRACTION = 1 / 4;
const MERGE_SMALL_PACKS_AT = 16;

export interface PruneOptions {
  dryRun?: boolean;
  /**
   * With dryRun: snapshots to count as already forgotten, so a `forget --prune --dry-run` says what the prune
   * after that forget would free (restic's), not what one before it would.
   */
  assumeForgotten?: ReadonlySet<string>;
  /** Repack a pack when less than this fraction of its bytes is still needed (default 0.5; 0 disables). */
  repackBelow?: number;
  /** Pack size for repacked data (default: the writer's). */
  packSize?: number;
  /**
   * Merge small packs whose data is all still needed, once MERGE_SMALL_PACKS_AT of them are there (default true;
   * see SMALL_PACK_FRACTION).
   */
  mergeSmall?: boolean;
  /**
   * Stops the prune before it deletes anything, or between the packs it repacks (what it repacked so far is
   * indexed; the packs it came from stay until the next prune): it fails with the reason, lock released.
   */
  signal?: AbortSignal;
}

export interface PruneReport {
  packsDeleted: number;
  packsRepacked: number;
  orphanPacksDeleted: number;
  manifestsDeleted: number;
  /** Temp files of writes a crash cut short (file:// only). */
  tempFilesDeleted: number;
  bytesFreed: number;
}

/** A prune's report with nothing done: what a prune of a repository that is not there yet reports. */
export function emptyPruneReport(): PruneReport {
  return {
    packsDeleted: 0,
    packsRepacked: 0,
    orphanPacksDeleted: 0,
    manifestsDeleted: 0,
    tempFilesDeleted: 0,
    bytesFreed: 0,
  };
}

/**
 * A prune run after a forget: where it fails, its error says what the forget did (it stays done; a caller told only
 * "the prune deletes nothing" took the snapshots for still there). Nothing is added to a dry run's, or where the
 * forget forgot nothing.
 */
export async function pruneAfterForget(
  forgotten: readonly string[],
  prune: () => Promise<PruneReport>,
  options: { dryRun?: boolean } = {},
): Promise<PruneReport> {
  try {
    return await prune();
  } catch (err) {
    if (options.dryRun || forgotten.length === 0 || !isRepositoryError(err)) throw err;
    const ids = forgotten.map((id) => id.slice(0, 12));
    throw new RepositoryError(
      err.code,
      `forgot ${counted(forgotten.length, "snapshot")} (${ids.slice(0, 5).join(", ")}` +
        `${ids.length > 5 ? `, and ${ids.length - 5} more` : ""}), but the prune did not finish: ${err.message}`,
      { cause: err },
    );
  }
}

/**
 * Where interrupted writes leave temp files, and how old one must be to count as abandoned. Only writers holding
 * a lock write under the first four: while prune holds its lock, any temp file there is. locks/ is written by
 * whoever takes a lock, while prune holds its own too (a snapshot refused by it, a refresh): a lock's temp file is
 * abandoned (its writer died between writing and renaming it) only once it is old. A lock is written in
 * milliseconds; one written that long ago would be stale anyway.
 */
const TEMP_FILES_ABANDONED_AFTER_MS: readonly [prefix: string, olderThanMs: number][] = [
  ["data/", 0],
  ["index/", 0],
  ["manifests/", 0],
  ["snapshots/", 0],
  ["locks/", LOCK_STALE_AFTER_MS],
];

export async function pruneRepository(repository: Repository, options: PruneOptions = {}): Promise<PruneReport> {
  const { store } = repository;
  const lock = options.dryRun
    ? undefined
    : await acquireLock(store, repository.key, { exclusive: true, purpose: "a prune" });
  try {
    const unreadable: string[] = [];
    const forgotten = options.dryRun ? options.assumeForgotten : undefined;
    // A snapshot the forget would remove counts for nothing, a damaged record among them too (forget by id is the
    // way out of one): it stops no dry run, as it stops no real prune after the forget.
    const snapshots = (
      await repository.listSnapshots({
        onCorrupt: (id) => {
          if (!forgotten?.has(id)) unreadable.push(id);
        },
      })
    ).filter((s) => !forgotten?.has(s.id));
    if (unreadable.length > 0) {
      // What such a record names cannot be told, so nothing can be judged unused; forgetting it is the way on.
      throw new RepositoryError(
        "corrupt",
        `the record of ${counted(unreadable.length, "snapshot")} does not open (${unreadable.sort().slice(0, 3).join(", ")}` +
          `${unreadable.length > 3 ? ", ..." : ""}): the prune deletes nothing. Forget ${unreadable.length === 1 ? "it" : "them"} ` +
          "by id (`snapshot forget ID`; `check` names what is damaged), then prune again",
      );
    }
    const usedChunks = await chunksUsedBy(repository, snapshots);
    const usedManifests = new Set(snapshots.flatMap((snap) => snap.manifests));
    const unreadableIndexes = new Set<string>();
    const index = await repository.loadIndex({
      onCorrupt: (key) => unreadableIndexes.add(key.slice("index/".length)),
    });
    if (unreadableIndexes.size > 0) {
      // Its pack's chunks are in no index, so what is used cannot be told from what is not (as for a record that
      // does not open, above): nothing is judged, and the way out is said.
      const names = [...unreadableIndexes].sort().map((packId) => `index/${packId}`);
      throw new RepositoryError(
        "corrupt",
        `${counted(names.length, "index object")} ${names.length === 1 ? "does" : "do"} not open ` +
          `(${names.slice(0, 3).join(", ")}${names.length > 3 ? ", ..." : ""}): the prune deletes nothing. Run ` +
          "`snapshot repair-index`, which rebuilds them from their packs' own headers, then prune again",
      );
    }
    const report = emptyPruneReport();

    // Packs with no index object are what an interrupted writer left; no writer runs while we hold the lock.
    const orphans: { packId: string; key: string; size: number }[] = [];
    for (const [packId, info] of await listPacks(store)) {
      if (!index.packs.has(packId)) orphans.push({ packId, key: info.key, size: info.size });
    }
    // A pack without an index object may instead be one whose index object was lost (deleted by hand, a store
    // that lost it): if a listed snapshot uses a chunk no index holds, its data may be in one of those packs, and
    // deleting them would make the damage for good. Nothing is deleted until that is resolved.
    if (orphans.length > 0) {
      // Only those the index lacks become strings: every used id as hex was ~90 bytes each at once.
      const unindexed: string[] = [];
      for (const id of usedChunks.raw()) if (!index.has(id)) unindexed.push(id.toString("hex"));
      if (unindexed.length > 0) {
        throw new RepositoryError(
          "corrupt",
          `${counted(unindexed.length, "chunk")} the snapshots use ${unindexed.length === 1 ? "is" : "are"} in no ` +
            `index (e.g. ${unindexed[0]}) while ${counted(orphans.length, "pack")} ${orphans.length === 1 ? "has" : "have"} ` +
            "no index object: those packs may hold them, so the prune deletes nothing. Run `snapshot repair-index` " +
            "to rebuild lost index objects from the packs, then `snapshot check` to see which snapshots and files " +
            "are still affected; forget those, then prune again",
        );
      }
    }

    const repackBelow = options.repackBelow ?? 0.5;
    const smallBelow = (options.packSize ?? DEFAULT_PACK_SIZE) * SMALL_PACK_FRACTION;
    const unused: string[] = [];
    const repack: string[] = [];
    const small: string[] = [];
    for (const pack of index.packs.values()) {
      let needed = 0;
      let total = 0;
      for (const e of pack.entries) {
        total += e.length;
        // A chunk held twice counts only where the index finds it; the other copy is garbage.
        if (usedChunks.has(e.id) && index.packIdOf(e.id) === pack.packId) needed += e.length;
      }
      if (needed === 0) unused.push(pack.packId);
      else if (total > 0 && needed / total < repackBelow) repack.push(pack.packId);
      else if (pack.packSize < smallBelow) small.push(pack.packId);
    }
    if (options.mergeSmall !== false && small.length >= MERGE_SMALL_PACKS_AT) repack.push(...small);
    /** Per repacked pack, the chunks in use it holds a copy of that the index finds first elsewhere: not copied. */
    const otherCopies = new Map<string, IdSet>();
    for (const packId of repack) {
      for (const e of index.packs.get(packId)?.entries ?? []) {
        if (!usedChunks.has(e.id) || index.packIdOf(e.id) === packId) continue;
        let copies = otherCopies.get(packId);
        if (!copies) {
          copies = new IdSet();
          otherCopies.set(packId, copies);
        }
        copies.add(e.id);
      }
    }
    const orphaned = await copiesInOrphans(repository, orphans, usedChunks, index, options.signal);
    await checkStayingCopies(repository, index, usedChunks, new Set([...unused, ...repack]), orphaned, options.signal);

    for (const packId of unused) report.bytesFreed += index.packs.get(packId)!.packSize;
    for (const o of orphans) report.bytesFreed += o.size;
    report.packsDeleted = unused.length;
    report.orphanPacksDeleted = orphans.length;
    const manifestKeys: string[] = [];
    for await (const info of store.list("manifests/")) {
      // A name no writer gives (isRepositoryKey) is no manifest: not the prune's to delete.
      if (isRepositoryKey(info.key) && !usedManifests.has(info.key.slice("manifests/".length))) {
        manifestKeys.push(info.key);
      }
    }
    report.manifestsDeleted = manifestKeys.length;
    if (options.dryRun) {
      // What the repack frees, as it would run: each pack less the chunks in use it copies (those the index finds
      // there; their stored lengths). Only the new packs' headers (a few dozen bytes a chunk) are not counted: a
      // dry run said 0 B for a prune that freed a gigabyte by repacking.
      for (const packId of repack) {
        const pack = index.packs.get(packId)!;
        let copied = 0;
        for (const e of pack.entries) if (usedChunks.has(e.id) && index.packIdOf(e.id) === packId) copied += e.length;
        report.bytesFreed += pack.packSize - copied;
      }
      report.packsRepacked = repack.length;
      return report;
    }

    options.signal?.throwIfAborted();
    // Nothing is deleted unless the lock is still ours and trusted, checked again before each deletion: a prune
    // paused for half an hour (its lock since taken as stale, and the repository written under) stops here.
    await lock?.assertHeld();
    const trusted = () => lock?.assertTrusted();
    // Every pack about to go leaves the index first, unused ones too: a chunk held twice, its indexed copy in a
    // pack being repacked and its other copy in an unused pack, would otherwise be found in the unused one and
    // not written again, and then go with both.
    const keep = new Map(repack.map((id) => [id, index.packs.get(id)!]));
    index.removePacks([...repack, ...unused]);
    // What needs no writing goes first: a prune is what frees a full disk, and the repack below writes packs.
    await deletePacks(store, unused, trusted);
    for (const o of orphans) {
      trusted();
      await store.delete(o.key);
    }
    for (const key of manifestKeys) {
      trusted();
      await store.delete(key);
    }
    for (const [prefix, olderThanMs] of TEMP_FILES_ABANDONED_AFTER_MS) {
      trusted();
      const removed = (await store.removeAbandoned?.(prefix, { olderThanMs })) ?? { count: 0, bytes: 0 };
      report.tempFilesDeleted += removed.count;
      report.bytesFreed += removed.bytes;
    }
    if (repack.length > 0) {
      // Under the prune's own lock, checked before each index object as any writer's: a prune paused past its
      // lock's life (another prune then deleting this one's new pack as an orphan) must not index it after.
      const writer = await repository.writer({
        index,
        ...(lock ? { heldLock: lock } : { lock: false }),
        packSize: options.packSize,
      });
      try {
        for (const [packId, pack] of keep) {
          options.signal?.throwIfAborted();
          const data = await store.get(packKey(packId));
          const chunks = pack.entries
            // Only first copies, and none a pack that stays holds (checkStayingCopies read it there): a damaged
            // copy that is not copied does not stop the prune.
            .filter((e) => usedChunks.has(e.id) && !otherCopies.get(packId)?.has(e.id) && !index.has(e.id))
            .map((e) => ({ id: e.id, blob: data.subarray(e.offset, e.offset + e.length), plainLength: e.plainLength }));
          // Each checked before it is copied (as the writer checked each on arrival): a damaged one stops the
          // prune, saying which and what to do, before the pack it is in could be deleted.
          for (const c of chunks) {
            const problem = chunkCodec.verifyChunk(repository.key, c.id, c.blob, c.plainLength);
            if (problem === null) continue;
            throw new RepositoryError(
              "corrupt",
              `pack ${packId}, which the prune repacks, holds chunk ${c.id.toString("hex")}, which is damaged ` +
                `(${problem}); the prune stops, having deleted only what no snapshot needs. \`snapshot repair-packs\`, ` +
                `given pack ${packId.slice(0, 12)}, rewrites that pack without it (\`check\` names the files it ` +
                "breaks, if no other pack holds it whole); then prune again",
            );
          }
          await writer.put(chunks);
        }
        await writer.flush();
        // Packs for packs: the index objects on both sides are left out (a merge of small packs frees little, and
        // counting the new index object but not the old ones made it read as a negative number).
        report.bytesFreed -= writer.stats.packBytes;
      } finally {
        await writer.abort();
      }
      await lock?.assertHeld();
      await deletePacks(store, [...keep.keys()], trusted);
      for (const pack of keep.values()) report.bytesFreed += pack.packSize;
      report.packsRepacked = repack.length;
    }
    return report;
  } finally {
    await lock?.release();
  }
}

/** Every chunk the snapshots' files use, their manifests read a part at a time. */
export async function chunksUsedBy(repository: Repository, snapshots: readonly SnapshotRecord[]): Promise<IdSet> {
  const used = new IdSet();
  for (const snap of snapshots) {
    for (const part of await repository.manifestParts(snap)) {
      for (const e of part) if (e.type === "file") for (const id of e.chunks) used.add(id);
    }
  }
  return used;
}

/**
 * A chunk held twice counts only where the index finds it first, and its copies in the packs the prune deletes or
 * repacks go (a repack writes only the first). So for each chunk in use with a copy in a `going` pack, the copies
 * that stay (those in packs that stay, or else the first, which the repack writes) are read before anything is
 * deleted, until one verifies. Where none does, the prune stops rather than delete what may be the only good
 * copy: a restore reads the other copies, and `repair-packs` keeps the one that verifies. Only such chunks are
 * read: none, but after two snapshots raced to store the same bytes or a repack was cut short.
 */
async function checkStayingCopies(
  repository: Repository,
  index: RepositoryIndex,
  usedChunks: IdSet,
  going: ReadonlySet<string>,
  /** Used chunks the index holds that packs without index objects (going too) also hold: hex id → those packs. */
  orphaned: ReadonlyMap<string, string[]>,
  signal: AbortSignal | undefined,
): Promise<void> {
  const held = new IdSet(); // each chunk once, however many going packs hold it
  for (const packId of going) {
    for (const e of index.packs.get(packId)?.entries ?? []) {
      if (usedChunks.has(e.id) && index.copyCount(e.id) > 1) held.add(e.id);
    }
  }
  for (const hex of orphaned.keys()) held.add(Buffer.from(hex, "hex"));
  /** Reads each of `id`'s copies that stay (or its first) until one verifies; throws where none does. */
  const verifyEach = async (id: Buffer): Promise<void> => {
    signal?.throwIfAborted();
    const copies = index.locations(id);
    const staying = copies.filter((c) => !going.has(c.packId));
    const faults: { pack: string; problem: string; gone: boolean }[] = [];
    for (const c of staying.length > 0 ? staying : copies.slice(0, 1)) {
      const blob = await repository.store
        .getRange(packKey(c.packId), c.offset, c.length)
        .catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))));
      if (blob instanceof Error && !readShowsDamage(blob)) throw blob;
      const problem =
        blob instanceof Error ? blob.message : chunkCodec.verifyChunk(repository.key, id, blob, c.plainLength);
      if (problem === null) return;
      faults.push({ pack: c.packId, problem, gone: isRepositoryError(blob, "not-found") });
    }
    const where = faults.map((f) => `pack ${f.pack}: ${f.problem}`).join("; ");
    const bad = faults.filter((f) => !f.gone).map((f) => f.pack.slice(0, 12));
    const unindexed = orphaned.get(id.toString("hex")) ?? [];
    const others = [
      ...copies.filter((c) => going.has(c.packId)).map((c) => c.packId),
      ...unindexed.map((p) => `${p} (without an index object)`),
    ];
    const repairPacks =
      bad.length === 0
        ? "`snapshot repair-index` forgets the packs that are gone"
        : `\`snapshot repair-packs\`, given ${bad.length === 1 ? "pack" : "packs"} ${bad.join(" ")}, rewrites ` +
          `${bad.length === 1 ? "that pack" : "those packs"} without it, keeping a copy that verifies`;
    // A copy in a pack without an index object is found only once repair-index has indexed that pack.
    const way =
      unindexed.length > 0
        ? `\`snapshot repair-index\` indexes ${unindexed.length === 1 ? "the pack" : "the packs"} without an index ` +
          `object, so restores find that copy; then ${repairPacks}`
        : repairPacks;
    throw new RepositoryError(
      "corrupt",
      `chunk ${id.toString("hex")} is damaged where the prune would keep it (${where}), and it would delete or ` +
        `repack its other ${others.length === 1 ? "copy" : `${others.length} copies`} (pack ${others.join(", ")}): ` +
        `it stops, having deleted nothing. ${way}; then prune again`,
    );
  };
  // Each chunk's first copy that stays is read through a chunk source, which reads neighbours in one request (a
  // cut-short repack leaves a pack's worth of copies); only a chunk that fails there is read copy by copy.
  const source = new RepositoryChunkSource(repository, index);
  let batch: Buffer[] = [];
  const run = async () => {
    const failed: Buffer[] = [];
    for await (const c of source.get(batch, { avoidPacks: going })) {
      signal?.throwIfAborted();
      const problem = c.error ?? chunkCodec.verifyChunk(repository.key, c.id, c.blob, index.plainLengthOf(c.id));
      if (problem !== null) failed.push(Buffer.from(c.id));
    }
    await forEachLimited(failed, 8, verifyEach);
    batch = [];
  };
  for (const id of held.raw()) {
    batch.push(id);
    if (batch.length >= 4096) await run();
  }
  await run();
}

/**
 * The used chunks that packs without index objects hold and the index holds too (hex id → those packs), from each
 * such pack's header. A snapshot killed between its pack and the pack's index object leaves one, which may hold the
 * only good copy of a chunk whose indexed copy is damaged (two snapshots raced to store it): the prune deletes it
 * only once a copy that stays verifies (checkStayingCopies). A header that cannot be read holds nothing to keep.
 */
async function copiesInOrphans(
  repository: Repository,
  orphans: readonly { packId: string; size: number }[],
  usedChunks: IdSet,
  index: RepositoryIndex,
  signal: AbortSignal | undefined,
): Promise<Map<string, string[]>> {
  const held = new Map<string, string[]>();
  await forEachLimited(orphans, 8, async ({ packId, size }) => {
    signal?.throwIfAborted();
    const entries = await readPackHeader(repository.store, repository.key, packId, size, signal).catch(
      (err: unknown) => {
        signal?.throwIfAborted(); // a read the signal stopped fails with the stop's reason, as every step does
        // A header that does not open, or a disk that cannot read it (EIO), holds nothing to keep: such a pack
        // goes as it went before (repair-index could not index it either). A store that does not answer fails.
        if (isObjectError(err) || (err instanceof Error && readShowsDamage(err))) return [];
        throw err;
      },
    );
    for (const e of entries) {
      if (!usedChunks.has(e.id) || !index.has(e.id)) continue;
      const hex = e.id.toString("hex");
      const packs = held.get(hex);
      if (packs) packs.push(packId);
      else held.set(hex, [packId]);
    }
  });
  return held;
}

/**
 * Deletes packs with their index objects: every index object first, made durable, and only then the packs. In
 * the other order a crash could keep an index object whose pack is gone (file:// does not promise unlinks in
 * two directories reach the disk in the order made), and the next snapshot would take its chunks for stored
 * and reference them.
 */
export async function deletePacks(store: BlobStore, packIds: readonly string[], trusted: () => void): Promise<void> {
  if (packIds.length === 0) return;
  const indexKeys = packIds.map(indexKey);
  for (const key of indexKeys) {
    trusted();
    await store.delete(key);
  }
  await store.syncEntries?.(indexKeys);
  for (const packId of packIds) {
    trusted();
    await store.delete(packKey(packId));
  }
}
