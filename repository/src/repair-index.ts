// repair-index: rebuilds index objects from the packs themselves (each pack ends with a sealed copy of its index,
// FORMAT.md "Packs and index objects"), and removes index objects whose pack is gone. What restic calls
// `repair index`: the way back when an index object was deleted by hand, lost by a store or damaged, without
// which `prune` refuses to run (the packs it cannot tell from an interrupted writer's might hold data a snapshot
// needs) and the snapshots using those chunks cannot be restored.
//
// Decided: a header is not taken on its word. It opens with the key, so a writer of this repository sealed it, but
// it does not name its pack (FORMAT.md), so one copied onto other bytes opens as well; and the index object made
// from it would find its chunks there, where a prune would keep them and delete the pack truly holding them. So
// every chunk a header lists is read and verified (tag and SHA-256, as `check` does) before it is indexed. A pack
// none of whose chunks verifies is unrepairable: its header is not that of its bytes. One where some do is indexed
// whole, as its header says (its damaged chunks are in it, and `check` and restore then name the files they break,
// where left out they would read as chunks in no pack, for a repair to mend) and reported. An index object
// that opens and agrees with its pack's size is left as it is, even where the header disagrees with it: `check`
// reports that, and which one is right is not for a repair to guess.
import type { BlobStore } from "./blob-store.js";
import { type CheckOptions, verifyPackChunks } from "./check.js";
import { counted } from "./counted.js";
import { isObjectError, RepositoryError } from "./errors.js";
import { forEachLimited } from "./for-each-limited.js";
import { type HeldLock, putWhileTrusted, withLock } from "./lock.js";
import { indexKey, listPacks, openPackHeader, type PackEntry, packKey, sealIndex } from "./pack.js";
import type { RepairIndexReport } from "./repair-index-report.js";
import type { Repository } from "./repository.js";

export interface RepairIndexOptions {
  /** Say what would be done, change nothing (holding a shared lock, as a check: no prune runs meanwhile). */
  dryRun?: boolean;
  /** Stops the repair between packs: what it wrote is whole, and running it again goes on. */
  signal?: AbortSignal;
  /** Packs whose header was read so far, of those needing one (rebuilt or found unrepairable). */
  onProgress?: (progress: { packsDone: number; packsTotal: number }) => void;
  /**
   * Verifies chunks elsewhere than on this thread (check's option of the same name: the control plane's verifier
   * threads, so its event loop keeps reading agents' streams); default: here, with chunkCodec.verifyChunk.
   */
  verify?: CheckOptions["verify"];
}

export async function repairIndex(
  repository: Repository,
  options: RepairIndexOptions = {},
): Promise<RepairIndexReport> {
  // Exclusive, as a prune's: no writer adds packs and no prune deletes them while the listings are compared. A dry
  // run holds a shared one: a prune deleting an index object and then its pack between the two listings would show
  // as an index object to remove.
  return withLock(
    repository.store,
    repository.key,
    { exclusive: options.dryRun !== true, purpose: options.dryRun ? "an index repair's dry run" : "an index repair" },
    (lock) => repair(repository, options, lock),
  );
}

async function repair(repository: Repository, options: RepairIndexOptions, lock: HeldLock): Promise<RepairIndexReport> {
  const { store } = repository;
  const { signal } = options;
  // The index objects first, then the packs: a writer (beside a dry run) puts a pack before its index object, so
  // one landing between the two listings shows as a pack to index, never as an index object without its pack.
  const unreadable = new Set<string>();
  const index = await repository.loadIndex({ onCorrupt: (key) => unreadable.add(key.slice("index/".length)) });
  const packs = await listPacks(store, { signal });

  const toRebuild = [...packs]
    .map(([packId, { size }]) => [packId, size] as const)
    .filter(([packId, size]) => unreadable.has(packId) || index.packs.get(packId)?.packSize !== size)
    .sort(([a], [b]) => a.localeCompare(b));
  // Index objects whose pack the listing does not show, looked for one by one before anything is removed: this is
  // the one step that trusts a listing's absences (a file store leaves out what is not a plain file or directory
  // or a link to one, and links back into the store).
  const unlisted = [...index.packs.keys(), ...unreadable].filter((packId) => !packs.has(packId)).sort();
  if (packs.size === 0 && unlisted.length > 0) {
    // Every pack gone at once is a store that is not all there (a mount that did not come up, a wrong prefix)
    // far more often than data lost: removing every index object would then break a whole repository.
    throw new RepositoryError(
      "corrupt",
      `${store.url} holds no packs at all, while ${counted(unlisted.length, "index object")} name${unlisted.length === 1 ? "s" : ""} ` +
        "some: the repair removes nothing. Check that the store is the repository's, whole (mounted, the right prefix), " +
        "and run it again",
    );
  }
  const gone = new Set<string>();
  await forEachLimited(unlisted, 8, async (packId) => {
    if ((await store.stat(packKey(packId), { signal })) === undefined) gone.add(packId);
  });
  const report: RepairIndexReport = { packs: packs.size, rebuilt: [], removed: [], unrepairable: [] };

  let packsDone = 0;
  options.onProgress?.({ packsDone, packsTotal: toRebuild.length });
  // Two packs read whole at once (as check holds), each verified chunk by chunk.
  await forEachLimited(toRebuild, 2, async ([packId, size]) => {
    signal?.throwIfAborted();
    let entries: PackEntry[] | undefined;
    try {
      const listed = await readPackHeader(store, repository.key, packId, size, signal);
      const { verified, damaged } = await verifyEntries(store, repository.key, packId, listed, options.verify, signal);
      if (damaged.length > 0) {
        const first = `${damaged[0]}${damaged.length > 1 ? ", …" : ""}`;
        // Not one: the header is not that of the bytes before it (moved onto another pack's, or all damaged).
        if (verified === 0) {
          throw new RepositoryError(
            "corrupt",
            `none of the ${counted(listed.length, "chunk")} its header lists verifies (${first}), so nothing of it is indexed`,
          );
        }
        report.unrepairable.push({
          pack: packId,
          message:
            `pack ${packId}: ${damaged.length} of the ${counted(listed.length, "chunk")} its header lists do not ` +
            `verify (${first}): indexed all the same, as the pack holds them (\`check\` names the files they break)`,
        });
      }
      entries = listed;
    } catch (err) {
      // Only a header shown damaged (cut short, not opening, entries out of bounds, not one chunk verifying) makes a
      // pack unrepairable. A
      // store that did not answer or refused, or any other failure to read it (EMFILE, EIO, a reset), says nothing
      // of the pack: the repair fails, and removes nothing on its account.
      if (!isObjectError(err)) throw err;
      report.unrepairable.push({ pack: packId, message: `pack ${packId}: ${(err as Error).message}` });
      // An index object that does not open, of a pack whose header does not either, holds nothing to go on, and
      // every load of the index without a way round it (the control plane's) fails on it: it goes.
      if (unreadable.has(packId)) gone.add(packId);
    }
    if (entries) {
      if (!options.dryRun) {
        lock.assertTrusted();
        // Checked again once it landed: an index object landing after a prune took the lock as stale and deleted
        // its pack as an orphan would have later snapshots count that pack's chunks as stored.
        const sealed = sealIndex(repository.key, { packId, packSize: size, entries });
        await putWhileTrusted(store, lock, indexKey(packId), sealed, "a rebuilt index object", { signal });
      }
      report.rebuilt.push(packId);
    }
    options.onProgress?.({ packsDone: ++packsDone, packsTotal: toRebuild.length });
  });
  report.removed = [...gone].sort();
  if (!options.dryRun && report.removed.length > 0) {
    signal?.throwIfAborted();
    // Checked in the store, as a prune does before its first deletion: a repair paused past its lock's life stops.
    await lock.assertHeld();
    for (const packId of report.removed) {
      lock.assertTrusted();
      await store.delete(indexKey(packId));
    }
    await store.syncEntries?.(report.removed.map(indexKey));
  }
  report.rebuilt.sort();
  report.unrepairable.sort((a, b) => a.pack.localeCompare(b.pack));
  return report;
}

/**
 * How many of `entries` have a chunk in the pack that opens under the key to its id (verifyChunk), and what was
 * wrong with the others: the chunk area read at once (a pack is tens of MiB).
 */
async function verifyEntries(
  store: BlobStore,
  key: Buffer,
  packId: string,
  entries: readonly PackEntry[],
  verify: RepairIndexOptions["verify"],
  signal?: AbortSignal,
): Promise<{ verified: number; damaged: string[] }> {
  const end = entries.reduce((n, e) => Math.max(n, e.offset + e.length), 0);
  const blobs = end === 0 ? Buffer.alloc(0) : await store.getRange(packKey(packId), 0, end, undefined, { signal });
  const verdicts = await verifyPackChunks(key, blobs, entries, verify);
  let verified = 0;
  const damaged: string[] = [];
  verdicts.forEach((error, i) => {
    if (error === null) verified++;
    else damaged.push(`chunk ${entries[i].id.toString("hex").slice(0, 12)}: ${error}`);
  });
  return { verified, damaged };
}

/**
 * A pack's entries from its header, reading only the pack's end (its last 4 bytes give the sealed header's length).
 * Every entry must lie within the chunk blobs before the header.
 */
export async function readPackHeader(
  store: BlobStore,
  key: Buffer,
  packId: string,
  size: number,
  signal?: AbortSignal,
): Promise<PackEntry[]> {
  if (size < 4) throw new RepositoryError("corrupt", `it is ${counted(size, "byte")}, too short to hold a header`);
  const headerLength = (await store.getRange(packKey(packId), size - 4, 4, undefined, { signal })).readUInt32LE(0);
  if (headerLength + 4 > size) {
    throw new RepositoryError(
      "corrupt",
      `its last 4 bytes give a header of ${headerLength} bytes, longer than the pack`,
    );
  }
  const blobsEnd = size - 4 - headerLength;
  const sealed = await store.getRange(packKey(packId), blobsEnd, headerLength, undefined, { signal });
  const entries = openPackHeader(key, sealed, packId);
  for (const e of entries) {
    if (e.offset + e.length > blobsEnd) {
      throw new RepositoryError(
        "corrupt",
        `its header lists chunk ${e.id.toString("hex")} at bytes ${e.offset}–${e.offset + e.length}, beyond its ${blobsEnd} bytes of chunks`,
      );
    }
  }
  return entries;
}
