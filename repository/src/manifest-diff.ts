// What changed between two snapshots (`snapshot diff` in both CLIs), as restic's `diff` says it: each path
// added, removed, modified (content: a file's chunks, a symlink's target), changed in metadata only (mode,
// modification time) or changed in type, and how many bytes of chunks the later snapshot adds and drops.

import { printablePath } from "./listing.js";
import type { Manifest, ManifestEntry } from "./manifest.js";
import { formatBytes } from "./progress-meter.js";

export type DiffChange = "added" | "removed" | "modified" | "metadata" | "type";

export interface DiffEntry {
  path: string;
  change: DiffChange;
  /** File sizes before and after (0 for what is not a file on that side). */
  sizeBefore: number;
  sizeAfter: number;
}

export interface DiffSummary {
  added: number;
  removed: number;
  modified: number;
  metadata: number;
  type: number;
  /** Plain bytes of the chunks the later snapshot has and the earlier lacks, and the other way round. */
  bytesAdded: number;
  bytesRemoved: number;
}

/** The changes from `before` to `after`, by path (code point order), and their summary. */
export function diffManifests(before: Manifest, after: Manifest): { changes: DiffEntry[]; summary: DiffSummary } {
  const old = new Map(before.entries.map((e) => [e.path, e]));
  const changes: DiffEntry[] = [];
  const seen = new Set<string>();
  for (const e of after.entries) {
    seen.add(e.path);
    const was = old.get(e.path);
    const change = was === undefined ? "added" : changeOf(was, e);
    if (change) changes.push({ path: e.path, change, sizeBefore: sizeOf(was), sizeAfter: sizeOf(e) });
  }
  for (const e of before.entries) {
    if (!seen.has(e.path)) changes.push({ path: e.path, change: "removed", sizeBefore: sizeOf(e), sizeAfter: 0 });
  }
  changes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const summary: DiffSummary = {
    added: 0,
    removed: 0,
    modified: 0,
    metadata: 0,
    type: 0,
    bytesAdded: 0,
    bytesRemoved: 0,
  };
  for (const c of changes) summary[c.change]++;
  const chunksBefore = chunkLengths(before);
  const chunksAfter = chunkLengths(after);
  for (const [id, length] of chunksAfter) if (!chunksBefore.has(id)) summary.bytesAdded += length;
  for (const [id, length] of chunksBefore) if (!chunksAfter.has(id)) summary.bytesRemoved += length;
  return { changes, summary };
}

const MARKS: Record<DiffChange, string> = { added: "+", removed: "-", modified: "M", metadata: "U", type: "T" };

/** One change as a line: restic's marks (+ added, - removed, M modified, U metadata, T type), then the path. */
export function diffLine(c: DiffEntry): string {
  // "?" for a kind of change this build does not know (a newer control plane's).
  return `${MARKS[c.change] ?? "?"}    ${printablePath(c.path)}`;
}

/** The summary as one line: "2 added, 1 removed, …; 3.1 MiB of new data, 1.0 MiB no longer used". */
export function diffSummaryLine(s: DiffSummary): string {
  return (
    `${s.added} added, ${s.removed} removed, ${s.modified} modified, ${s.metadata} changed in metadata only, ` +
    `${s.type} changed in type; ${formatBytes(s.bytesAdded)} of new data, ${formatBytes(s.bytesRemoved)} no longer used`
  );
}

function changeOf(was: ManifestEntry, now: ManifestEntry): DiffChange | undefined {
  if (was.type !== now.type) return "type";
  if (was.type === "file" && now.type === "file") {
    if (
      was.size !== now.size ||
      was.chunks.length !== now.chunks.length ||
      was.chunks.some((id, i) => id !== now.chunks[i])
    )
      return "modified";
  }
  if (was.type === "symlink" && now.type === "symlink" && was.target !== now.target) return "modified";
  if (was.mode !== now.mode || was.mtimeNs !== now.mtimeNs) return "metadata";
  if (ownerChanged(was.uid, now.uid) || ownerChanged(was.gid, now.gid)) return "metadata";
  return undefined;
}

/** Only where both manifests record it: one from before owners were kept is no change of owner. */
function ownerChanged(was: number | undefined, now: number | undefined): boolean {
  return was !== undefined && now !== undefined && was !== now;
}

function sizeOf(e: ManifestEntry | undefined): number {
  return e?.type === "file" ? e.size : 0;
}

function chunkLengths(m: Manifest): Map<string, number> {
  const lengths = new Map<string, number>();
  for (const e of m.entries) {
    if (e.type === "file") for (let i = 0; i < e.chunks.length; i++) lengths.set(e.chunks[i], e.lengths[i]);
  }
  return lengths;
}
