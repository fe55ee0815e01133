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
  /**
   * ISO 8601, UTC, to the millisecond; a time past what that can show (beyond ±275,000 years, which a forged or
   * damaged manifest may hold) as seconds since the epoch after an @, to the nanosecond, as `date -d @S` reads them.
   */
  mtime: string;
  /** Owner and group (numeric ids); absent for snapshots taken before owners were kept. */
  uid?: number;
  gid?: number;
  /** Symlinks only. */
  target?: string;
}

export function listedEntry(e: ManifestEntry): ListedEntry {
  const mtime = mtimeText(BigInt(e.mtimeNs));
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
  // Date and minute; a time no four-digit year shows (ISO's +YYYYYY, or @SECONDS) as it is.
  const when = /^\d{4}-/.test(e.mtime) ? `${e.mtime.slice(0, 10)} ${e.mtime.slice(11, 16)}` : e.mtime.padEnd(16);
  const path = printablePath(e.path);
  const name =
    e.type === "dir" ? `${path}/` : e.type === "symlink" ? `${path} -> ${printablePath(e.target ?? "")}` : path;
  // The owner as `tar -tv --numeric-owner` shows it, where the snapshot recorded one (older ones did not).
  const owner = e.uid !== undefined && e.gid !== undefined ? ` ${`${e.uid}/${e.gid}`.padEnd(11)}` : "";
  return `${kind}${bits}${owner} ${String(e.size).padStart(12)} ${when} ${name}`;
}

/** Largest time a Date holds, in milliseconds either side of the epoch. */
const MAX_DATE_MS = 8_640_000_000_000_000n;

/**
 * A time in nanoseconds since the epoch as ListedEntry.mtime shows it: rounded down to the millisecond, as the
 * control plane's listing rounds it (BigInt division alone rounds toward zero, a millisecond late before 1970).
 * Past a Date's range it is `@SECONDS[.FRACTION]` (to the nanosecond; a time before 1970 with its sign, as
 * `date -d @-1.5` reads it): a manifest's times are whatever lstat gave, up to 25 digits.
 */
export function mtimeText(ns: bigint): string {
  const ms = floorDiv(ns, 1_000_000n);
  if (ms >= -MAX_DATE_MS && ms <= MAX_DATE_MS) return new Date(Number(ms)).toISOString();
  const sign = ns < 0n ? "-" : "";
  const abs = ns < 0n ? -ns : ns;
  const fraction = abs % 1_000_000_000n;
  return `@${sign}${abs / 1_000_000_000n}${fraction === 0n ? "" : `.${fraction.toString().padStart(9, "0")}`}`;
}

/** n / d rounded down (BigInt division rounds toward zero). */
function floorDiv(n: bigint, d: bigint): bigint {
  const q = n / d;
  return n < 0n && q * d !== n ? q - 1n : q;
}
