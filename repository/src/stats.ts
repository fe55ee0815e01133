// How much a repository holds and what it takes in the store (restic's `stats`, its modes in one answer): what
// the snapshots would restore, what that is once deduplicated, and the packs it is stored in.
import { counted, firstFew } from "./counted.js";
import { formatBytes } from "./progress-meter.js";
import type { Repository } from "./repository.js";
import type { RepositoryIndex } from "./repository-index.js";

export interface RepositoryStats {
  snapshots: number;
  /** Files and bytes over every snapshot, each as it would restore (a file in ten snapshots counts ten times). */
  files: number;
  bytes: number;
  /**
   * Distinct chunks the repository holds, and their plain bytes: the snapshots' data once deduplicated, before
   * compression. Chunks no snapshot needs any more (after a forget) count until a prune deletes them.
   */
  chunks: number;
  chunkBytes: number;
  /** Packs, and their bytes in the store: the data compressed and sealed, as the disk or the bucket holds it. */
  packs: number;
  packBytes: number;
  /**
   * Snapshot records that would not open (damaged, or sealed with another key): not counted above. Named rather
   * than failing the whole answer, as `list` does; `snapshot check` says more of each.
   */
  unreadableSnapshots: string[];
}

/** What a repository with nothing in it holds, as the control plane answers for a tenant without one. */
export function emptyRepositoryStats(): RepositoryStats {
  return {
    snapshots: 0,
    files: 0,
    bytes: 0,
    chunks: 0,
    chunkBytes: 0,
    packs: 0,
    packBytes: 0,
    unreadableSnapshots: [],
  };
}

/**
 * The repository's stats, from its snapshot records and its index (`index`: a loaded one to refresh, as the control
 * plane keeps per tenant). Reads no pack. Manifests, index objects and snapshot records are not counted in
 * `packBytes`: a few hundred bytes a snapshot and ~45 bytes a chunk beside the packs.
 */
export async function repositoryStats(repository: Repository, index?: RepositoryIndex): Promise<RepositoryStats> {
  const unreadableSnapshots: string[] = [];
  const [snapshots, loaded] = await Promise.all([
    repository.listSnapshots({ onCorrupt: (id) => unreadableSnapshots.push(id) }),
    repository.loadIndex(index ? { into: index } : {}),
  ]);
  const totals = loaded.totals();
  return {
    snapshots: snapshots.length,
    files: snapshots.reduce((n, s) => n + s.totals.files, 0),
    bytes: snapshots.reduce((n, s) => n + s.totals.bytes, 0),
    chunks: totals.chunks,
    chunkBytes: totals.plainBytes,
    packs: totals.packs,
    packBytes: totals.packBytes,
    unreadableSnapshots: unreadableSnapshots.sort(),
  };
}

/** The stats as `dumont-agent snapshot stats` prints them: a line each, each saying what it counts. */
export function statsText(stats: RepositoryStats): string {
  const share = stats.bytes > 0 ? `; ${Math.round((100 * stats.packBytes) / stats.bytes)}% of the restore size` : "";
  return [
    `snapshots      ${stats.snapshots}`,
    `restore size   ${formatBytes(stats.bytes)} in ${counted(stats.files, "file")} (every snapshot, each whole)`,
    `deduplicated   ${formatBytes(stats.chunkBytes)} in ${counted(stats.chunks, "chunk")}`,
    `stored         ${formatBytes(stats.packBytes)} in ${counted(stats.packs, "pack")} (compressed and encrypted${share})`,
    ...(stats.unreadableSnapshots.length > 0
      ? [
          `unreadable     ${counted(stats.unreadableSnapshots.length, "snapshot record")}, not counted above: ` +
            `${firstFew(stats.unreadableSnapshots, 10)} (\`snapshot check\` says why)`,
        ]
      : []),
  ]
    .map((line) => `${line}\n`)
    .join("");
}
