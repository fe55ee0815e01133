// How much a repository holds and what it takes in the store (restic's `stats`, its modes in one answer): what
// the snapshots would restore, what that is once deduplicated, and the packs it is stored in.
import { counted } from "./counted.js";
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
}

/**
 * The repository's stats, from its snapshot records and its index (`index`: a loaded one to refresh, as the control
 * plane keeps per tenant). Reads no pack. Manifests, index objects and snapshot records are not counted in
 * `packBytes`: a few hundred bytes a snapshot and ~45 bytes a chunk beside the packs.
 */
export async function repositoryStats(repository: Repository, index?: RepositoryIndex): Promise<RepositoryStats> {
  const [snapshots, loaded] = await Promise.all([
    repository.listSnapshots(),
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
  ]
    .map((line) => `${line}\n`)
    .join("");
}
