// What `snapshot ls` prints in both CLIs: one entry of a snapshot as JSON and as a line in `ls -l`'s manner
// (type and permissions, size in bytes, modification time in UTC, path; a symlink with its target).
import type { ManifestEntry } from "./manifest.js";
import { hasControls, quoted } from "./text-table.js";

export interface ListedEntry {
  /** Relative to the snapshot's directory, "/"-separated. */
  path: string;
  type: "file" | "dir" | "symlink";
  /** Permission bits (e.g. 0o644 = 420). */
  mode: number;
  /** Bytes (files; 0 otherwise). */
  size: number;
  /** ISO 8601, UTC, to the millisecond. */
  mtime: string;
  /** Owner and group (numeric ids); absent for snapshots taken before owners were kept. */
  uid?: number;
  gid?: number;
  /** Symlinks only. */
  target?: string;
}

export function listedEntry(e: ManifestEntry): ListedEntry {
  const mtime = new Date(floorMillis(e.mtimeNs)).toISOString();
  return withOwnerAndTarget(
    { path: e.path, type: e.type, mode: e.mode, size: e.type === "file" ? e.size : 0, mtime },
    e.uid,
    e.gid,
    e.type === "symlink" ? e.target : undefined,
  );
}

/** `base` with the owner and the target where there are any, in the order JSON shows them. */
export function withOwnerAndTarget(
  base: ListedEntry,
  uid: number | undefined,
  gid: number | undefined,
  target: string | undefined,
): ListedEntry {
  return {
    ...base,
    ...(uid !== undefined ? { uid } : {}),
    ...(gid !== undefined ? { gid } : {}),
    ...(target !== undefined ? { target } : {}),
  };
}

/**
 * A path (or link target) for a line of text: as it is, unless a control character (a newline, an escape) or a
 * leading double quote would break the line or be taken for a terminal's command; then quoted and escaped as a
 * JSON string (git's core.quotePath), so one entry stays one line. `--json` gives the exact bytes either way.
 */
export function printablePath(path: string): string {
  return hasControls(path) || path.startsWith('"') ? quoted(path) : path;
}

export function listingLine(e: ListedEntry): string {
  const kind = e.type === "dir" ? "d" : e.type === "symlink" ? "l" : "-";
  let bits = "";
  for (let shift = 6; shift >= 0; shift -= 3) {
    const m = (e.mode >> shift) & 7;
    bits += `${m & 4 ? "r" : "-"}${m & 2 ? "w" : "-"}${m & 1 ? "x" : "-"}`;
  }
  const when = `${e.mtime.slice(0, 10)} ${e.mtime.slice(11, 16)}`;
  const path = printablePath(e.path);
  const name =
    e.type === "dir" ? `${path}/` : e.type === "symlink" ? `${path} -> ${printablePath(e.target ?? "")}` : path;
  // The owner as `tar -tv --numeric-owner` shows it, where the snapshot recorded one (older ones did not).
  const owner = e.uid !== undefined && e.gid !== undefined ? ` ${`${e.uid}/${e.gid}`.padEnd(11)}` : "";
  return `${kind}${bits}${owner} ${String(e.size).padStart(12)} ${when} ${name}`;
}

/**
 * Nanoseconds since the epoch (a manifest's decimal string) as whole milliseconds, rounded down as the control
 * plane's listing rounds them: BigInt division rounds toward zero, a millisecond late for times before 1970.
 */
function floorMillis(ns: string): number {
  const n = BigInt(ns);
  const ms = n / 1_000_000n;
  return Number(n < 0n && ms * 1_000_000n !== n ? ms - 1n : ms);
}
