// repair-packs: rewrites packs that hold damaged chunks without them. What restic calls `repair packs`: the way on
// once `check` has named a damaged chunk.
//
// Without it a damaged chunk stays indexed for good: the next snapshot of a workspace that still has those bytes
// finds the chunk "stored" and references it again, so every new snapshot is as broken as the old ones, and a
// prune that would repack its pack stops. Once the pack is rewritten without it, the chunk is in no pack: a copy
// another pack holds is found there, and otherwise the next snapshot that has those bytes sends them again (the
// agent's local index is checked against the store), which makes every snapshot using that chunk whole again,
// the old ones too: chunks are named by their content.
//
// Decided:
// - Every chunk the index lists for the pack is verified (tag and SHA-256, as `check` does) before it is copied;
//   only those that verify go into the new packs, which are durable and indexed before the old pack's index
//   object, then the pack, is deleted (prune's order). A crash between the two leaves both, each chunk findable,
//   and running the repair again finishes the job; the duplicates go at the next prune.
// - A chunk of a damaged pack that another pack also holds is not copied (the index finds it there), so that other
//   pack is read and verified too, even where it was not named: a good copy is never deleted for a damaged one.
// - It holds the repository to itself (an exclusive lock, as prune and repair-index; a dry run: shared, as check),
//   so no snapshot can reference a chunk while it leaves the index.
// - It repairs what the index says a pack holds. A pack missing from the store, or an index object giving an
//   impossible size, is repair-index's to mend: named, and left alone.

import { type CheckOptions, MAX_PACK_READ, verifyPackChunks } from "./check.js";
import { counted } from "./counted.js";
import { isObjectError, isRepositoryError, RepositoryError } from "./errors.js";
import { forEachLimited } from "./for-each-limited.js";
import type { IdSet } from "./id-set.js";
import { type HeldLock, withLock } from "./lock.js";
import { listPacks, type PackEntry, type PackIndex, packKey } from "./pack.js";
import { chunksUsedBy, deletePacks } from "./prune.js";
import { readPackHeader } from "./repair-index.js";
import {
  type DamagedChunk,
  emptyRepairPacksReport,
  type RepairedPack,
  type RepairPacksReport,
} from "./repair-packs-report.js";
import type { Repository } from "./repository.js";
import type { RepositoryIndex } from "./repository-index.js";

export interface RepairPacksOptions {
  /** Say what would be done, change nothing (holding a shared lock, as a check). */
  dryRun?: boolean;
  /**
   * The packs to read: ids, or unique prefixes of at least 8 hex characters (as `check` names them). Default:
   * every pack the index holds, which reads the whole repository.
   */
  packs?: readonly string[];
  /** Stops the repair between packs: what it wrote is whole, and running it again goes on. */
  signal?: AbortSignal;
  onProgress?: (progress: { packsDone: number; packsTotal: number; bytesDone: number; bytesTotal: number }) => void;
  /** Verifies chunks elsewhere than on this thread (check's option of the same name). */
  verify?: CheckOptions["verify"];
  /** Pack size for the rewritten data (default: the writer's). */
  packSize?: number;
}

const PACK_PREFIX = /^[0-9a-f]{8,64}$/;

export async function repairPacks(
  repository: Repository,
  options: RepairPacksOptions = {},
): Promise<RepairPacksReport> {
  return withLock(
    repository.store,
    repository.key,
    { exclusive: options.dryRun !== true, purpose: options.dryRun ? "a pack repair's dry run" : "a pack repair" },
    (lock) => repair(repository, options, lock),
  );
}

async function repair(repository: Repository, options: RepairPacksOptions, lock: HeldLock): Promise<RepairPacksReport> {
  const { store } = repository;
  const { signal } = options;
  // A fresh index of this repair's own (never a cache's): packs leave it as they are judged, dry run or not.
  const unreadable: string[] = [];
  const index = await repository.loadIndex({ onCorrupt: (key) => void unreadable.push(key) });
  if (unreadable.length > 0) {
    // What such a pack holds cannot be told from its index, so no copy elsewhere can be counted on or ruled out.
    throw new RepositoryError(
      "corrupt",
      `${counted(unreadable.length, "index object")} ${unreadable.length === 1 ? "does" : "do"} not open ` +
        `(${unreadable.sort().slice(0, 3).join(", ")}${unreadable.length > 3 ? ", …" : ""}): run \`snapshot ` +
        "repair-index` first (it rebuilds them from their packs), then repair the packs",
    );
  }
  const report = emptyRepairPacksReport();
  const stored = await listPacks(store, { signal });
  // Packs in the store without an index object: an interrupted snapshot's, one whose index object was lost, or a
  // repair's cut short between deleting an old pack's index object and the pack. Judged from their own headers:
  // one holding damaged chunks is rewritten as any; one whole that holds the only good copy of a chunk is
  // repair-index's to index (below).
  const unindexed = [...stored.keys()].filter((packId) => !index.packs.has(packId)).sort();
  report.packs = index.packs.size + unindexed.length;
  const named = options.packs === undefined ? undefined : resolvePacks(repository, index, unindexed, options.packs);

  // First every pack is read and verified (two at once, as check reads), keeping only what is wrong; then each
  // damaged pack is read again and rewritten. Damage is rare, and no pack's bytes wait in memory meanwhile. Each
  // pack's entries are taken once, as read: the index's views of them change as packs leave it.
  const damagedPacks = new Map<string, Judged & { repaired: RepairedPack }>();
  /** Packs judged: read, or skipped. */
  const judged = new Set<string>();
  /** Packs read and found whole: a copy there is one to count on. */
  const whole = new Set<string>();
  let packsTotal = 0;
  let bytesTotal = 0;
  let bytesDone = 0;
  let packsDone = 0;
  const judge = async (packs: readonly Judged[]): Promise<void> => {
    for (const pack of packs) judged.add(pack.packId);
    packsTotal += packs.length;
    bytesTotal += packs.reduce((n, r) => n + r.length, 0);
    if (packs.length > 0) options.onProgress?.({ packsDone, packsTotal, bytesDone, bytesTotal });
    await forEachLimited(packs, 2, async (r) => {
      signal?.throwIfAborted();
      const { repaired } = await verifyPack(repository, r, options.verify, signal);
      if (r.rewrite !== undefined) damagedPacks.set(r.packId, { ...r, repaired: { ...repaired, reason: r.rewrite } });
      else if (repaired.damaged.length > 0) damagedPacks.set(r.packId, { ...r, repaired });
      else whole.add(r.packId);
      report.packsRead++;
      bytesDone += r.length;
      options.onProgress?.({ packsDone: ++packsDone, packsTotal, bytesDone, bytesTotal });
    });
  };
  /** The indexed packs that can be read; those that cannot are skipped, named, and leave this repair's index. */
  const readable = (packs: readonly PackIndex[]): Judged[] => {
    const out: Judged[] = [];
    const skipped: string[] = [];
    for (const pack of packs) {
      const size = stored.get(pack.packId)?.size;
      if (size !== undefined && pack.packSize <= MAX_PACK_READ) {
        const extra = size - pack.packSize;
        out.push({
          packId: pack.packId,
          entries: pack.entries,
          length: Math.min(size, pack.packSize),
          ...(extra > 0 ? { rewrite: `${counted(extra, "byte")} longer than its index says` } : {}),
        });
        continue;
      }
      judged.add(pack.packId);
      report.skipped.push({
        pack: pack.packId,
        message:
          size === undefined
            ? "it is indexed but missing from the store: `snapshot repair-index` removes its index object"
            : `its index object says ${pack.packSize} bytes, more than any pack is (the index object is damaged): ` +
              "`snapshot repair-index` rebuilds it from the pack's header",
      });
      skipped.push(pack.packId);
    }
    // A pack that cannot be read holds no copy to count on: out of this repair's index, so a chunk it also lists
    // is copied from a damaged pack where it verifies there, not left to it.
    index.removePacks(skipped);
    return out;
  };
  const targets = named ?? { indexed: [...index.packs.values()], unindexed };
  const unindexedJudged = await unindexedPacks(
    repository,
    targets.unindexed,
    stored,
    report,
    named !== undefined,
    signal,
  );
  await judge([...readable(targets.indexed), ...unindexedJudged]);
  if (options.packs === undefined && damagedPacks.size >= 2 && damagedPacks.size * 2 > report.packsRead) {
    // Most of a repository damaged at once is far more often this machine (memory, a failing disk read) or a bug
    // than the data: a repair then would delete what is whole. Named, the packs are rewritten as asked.
    throw new RepositoryError(
      "corrupt",
      `${damagedPacks.size} of the ${counted(report.packsRead, "pack")} read hold chunks that do not verify (or are ` +
        "longer than their index says): more " +
        "likely this machine or the store reading wrongly than the data, so nothing is rewritten. Run `snapshot " +
        "check` (from another machine, if you can); to rewrite packs all the same, name them",
    );
  }
  // Damaged packs leave the index (this repair's own), dry run or not: a chunk of theirs another pack also holds
  // is then found there, and the writer below copies only what no other pack holds (it takes a chunk the index
  // holds for stored). So every pack the index then finds one of their chunks in is judged too, where it was not
  // among those read: a good copy must not be deleted in favour of a damaged one. Those found damaged (or that
  // cannot be read) leave the index in turn, until a round finds no pack left to judge.
  for (;;) {
    index.removePacks(damagedPacks.keys());
    const others = new Map<string, PackIndex>();
    for (const pack of damagedPacks.values()) {
      for (const e of pack.entries) {
        const other = index.packIdOf(e.id);
        if (other !== undefined && !judged.has(other)) others.set(other, index.packs.get(other)!);
      }
    }
    if (others.size === 0) break;
    await judge(readable([...others.values()]));
  }

  /** Chunks that verified in a damaged pack: copied into new packs where no whole pack holds them. */
  const kept = new Set<string>();
  for (const pack of damagedPacks.values()) {
    const bad = new Set(pack.repaired.damaged.map((d) => d.chunk));
    for (const e of pack.entries) if (!bad.has(e.id.toString("hex"))) kept.add(e.id.toString("hex"));
  }
  if (!options.dryRun && damagedPacks.size > 0) {
    signal?.throwIfAborted();
    const written = new Set<string>();
    const writer = await repository.writer({
      index,
      heldLock: lock,
      packSize: options.packSize,
      onPackWritten: (packId) => void written.add(packId),
    });
    try {
      for (const judgedPack of damagedPacks.values()) {
        signal?.throwIfAborted();
        // Read and verified again; what is copied is what verified both times. A read that disagrees with the
        // first says the store or this machine does not read reliably: nothing is deleted on its word.
        const again = await verifyPack(repository, judgedPack, options.verify, signal);
        const before = judgedPack.repaired.damaged.map((d) => d.chunk).join();
        const after = again.repaired.damaged.map((d) => d.chunk).join();
        if (after !== before) {
          throw new RepositoryError(
            "corrupt",
            `pack ${judgedPack.packId} read differently twice (damaged chunks: ${before || "none"}, then ` +
              `${after || "none"}): the store or this machine is not ` +
              "reading reliably, so the repair deletes nothing. Run `snapshot check` (from another machine, if you can)",
          );
        }
        const { data, verified } = again;
        await writer.put(
          verified.map((e) => ({
            id: e.id,
            blob: data.subarray(e.offset, e.offset + e.length),
            plainLength: e.plainLength,
          })),
        );
      }
      await writer.flush();
    } finally {
      await writer.abort();
    }
    // Before anything is deleted: every chunk kept is now in a pack this repair wrote, or one it read whole.
    for (const hex of kept) {
      const at = index.packIdOf(hex);
      if (at === undefined || !(written.has(at) || whole.has(at))) {
        throw new RepositoryError(
          "corrupt",
          `chunk ${hex}, which verifies in a damaged pack, would be left only in ${at ? `pack ${at}, which this repair did not read` : "no pack"}; ` +
            "the repair deletes nothing (this is a bug: please report it)",
        );
      }
    }
    // Checked in the store, as a prune does before its first deletion: a repair paused past its lock's life stops.
    // (An unindexed pack's index object is not there to delete: deleting it is a no-op.)
    await lock.assertHeld();
    await deletePacks(store, [...damagedPacks.keys()], () => lock.assertTrusted());
  }
  report.repaired = [...damagedPacks.values()].map((p) => p.repaired).sort((a, b) => a.pack.localeCompare(b.pack));
  // Lost: damaged, in no other pack (nor copied from one, for a dry run), and used by a snapshot (one nothing uses
  // is garbage a prune deletes anyway).
  let orphaned = [...new Set(report.repaired.flatMap((p) => p.damaged.map((d) => d.chunk)))].filter(
    (hex) => !index.has(hex) && !kept.has(hex),
  );
  // A whole pack without an index object (lost) holding one of them: not lost, but found only once indexed.
  const wanted = new Set(orphaned);
  for (const pack of unindexedJudged) {
    if (!whole.has(pack.packId)) continue;
    const held = pack.entries.filter((e) => wanted.has(e.id.toString("hex")));
    if (held.length === 0) continue;
    for (const e of held) wanted.delete(e.id.toString("hex"));
    report.skipped.push({
      pack: pack.packId,
      message:
        `it has no index object, and holds whole ${counted(held.length, "chunk")} damaged elsewhere and in no ` +
        "indexed pack: `snapshot repair-index` indexes it, and they are found there",
    });
  }
  orphaned = orphaned.filter((hex) => wanted.has(hex));
  const used = orphaned.length > 0 ? await chunksInUse(repository) : undefined;
  report.lost = orphaned.filter((hex) => used === undefined || used.has(hex)).sort();
  report.skipped.sort((a, b) => a.pack.localeCompare(b.pack));
  return report;
}

/**
 * The unindexed packs to judge, from their own headers (read, as repair-index reads them). One whose header cannot
 * be read, or too large to read, is named among the skipped (repair-index says more); `named` says the caller
 * asked for these by name, and then it fails saying so.
 */
async function unindexedPacks(
  repository: Repository,
  packIds: readonly string[],
  stored: Map<string, { size: number }>,
  report: RepairPacksReport,
  named: boolean,
  signal: AbortSignal | undefined,
): Promise<Judged[]> {
  const out: Judged[] = [];
  for (const packId of packIds) {
    const size = stored.get(packId)!.size;
    let why: string;
    try {
      if (size > MAX_PACK_READ) throw new RepositoryError("corrupt", `it is ${size} bytes, more than any pack is`);
      out.push({
        packId,
        entries: await readPackHeader(repository.store, repository.key, packId, size, signal),
        length: size,
      });
      continue;
    } catch (err) {
      if (!isObjectError(err)) throw err;
      why = (err as Error).message;
    }
    const message = `it has no index object and its header cannot be read (${why}): \`snapshot repair-index\` says more`;
    if (named) throw new RepositoryError("corrupt", `pack ${packId}: ${message}`);
    report.skipped.push({ pack: packId, message });
  }
  return out;
}

/** A pack as judged: its entries as the index listed them when it was read, and how much of it the store holds. */
interface Judged {
  packId: string;
  entries: PackEntry[];
  /** Bytes to read: the index's size, or less where the store holds less. */
  length: number;
  /**
   * Why the pack is rewritten though every chunk may verify: the store holds more of it than its index says (bytes
   * appended after its header, which then no longer ends it: check names it, and repair-index cannot read it).
   */
  rewrite?: string;
}

/**
 * The chunks the snapshots use; undefined where that cannot be told (a snapshot record or manifest that does not
 * open: what it names is unknown, so every chunk counts as used).
 */
async function chunksInUse(repository: Repository): Promise<IdSet | undefined> {
  let unreadable = false;
  const snapshots = await repository.listSnapshots({
    onCorrupt: () => {
      unreadable = true;
    },
  });
  if (unreadable) return undefined;
  try {
    return await chunksUsedBy(repository, snapshots);
  } catch (err) {
    if (isObjectError(err)) return undefined;
    throw err;
  }
}

/**
 * The packs `wanted` (ids or unique prefixes) name: indexed ones, and unindexed ones in the store (a repair cut short
 * leaves one). One that names none, or several, fails the call.
 */
function resolvePacks(
  repository: Repository,
  index: RepositoryIndex,
  unindexed: readonly string[],
  wanted: readonly string[],
): { indexed: PackIndex[]; unindexed: string[] } {
  const ids = [...index.packs.keys(), ...unindexed];
  const found = new Set<string>();
  for (const given of wanted) {
    const prefix = given.toLowerCase();
    if (!PACK_PREFIX.test(prefix)) {
      throw new RepositoryError(
        "invalid-argument",
        `"${given}" is not a pack id (8 to 64 hex characters; \`snapshot check\` names the damaged ones)`,
      );
    }
    const matches = ids.filter((id) => id.startsWith(prefix));
    if (matches.length === 0) {
      throw new RepositoryError(
        "not-found",
        `no pack ${given} is in ${repository.url}; \`snapshot check\` names the packs with damaged chunks`,
      );
    }
    if (matches.length > 1) {
      throw new RepositoryError("invalid-argument", `pack id prefix ${given} is ambiguous; give more characters`);
    }
    found.add(matches[0]);
  }
  return {
    indexed: [...found].filter((id) => index.packs.has(id)).map((id) => index.packs.get(id)!),
    unindexed: [...found].filter((id) => !index.packs.has(id)),
  };
}

/**
 * A pack read (as far as the store holds it, and its index says) and each of its entries verified: the report's
 * entry for it, its bytes and the entries that verify.
 */
async function verifyPack(
  repository: Repository,
  pack: Judged,
  verify: CheckOptions["verify"],
  signal: AbortSignal | undefined,
): Promise<{ repaired: RepairedPack; data: Buffer; verified: PackEntry[] }> {
  let data: Buffer;
  try {
    data =
      pack.length === 0
        ? Buffer.alloc(0)
        : await repository.store.getRange(packKey(pack.packId), 0, pack.length, undefined, { signal });
  } catch (err) {
    // Gone since the listing (a prune elsewhere cannot run under this lock; someone deleting by hand can).
    if (isRepositoryError(err, "not-found")) {
      throw new RepositoryError("not-found", `pack ${pack.packId} vanished while the repair ran; run it again`, {
        cause: err,
      });
    }
    throw err;
  }
  const verdicts = await verifyPackChunks(repository.key, data, pack.entries, verify);
  const verified: PackEntry[] = [];
  const damaged: DamagedChunk[] = [];
  for (const [i, e] of pack.entries.entries()) {
    const reason = verdicts[i];
    if (reason === null) verified.push(e);
    else damaged.push({ chunk: e.id.toString("hex"), reason });
  }
  return { repaired: { pack: pack.packId, salvaged: verified.length, damaged }, data, verified };
}
