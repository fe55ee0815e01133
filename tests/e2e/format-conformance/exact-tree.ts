// A directory tree described exactly, for comparing a restore with its source: every entry's type, permission
// bits (setuid, setgid and sticky included), owner, modification time to the nanosecond, content hash and size,
// symlink target, and which paths are hard links of one another; the root directory itself included (as "").
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";

export interface ExactEntry {
  type: "file" | "dir" | "symlink";
  /** Permission bits with setuid, setgid and sticky; absent for symlinks (Linux has none to set). */
  mode?: number;
  uid: number;
  gid: number;
  /** Nanoseconds since 1970, as a decimal string. */
  mtimeNs: string;
  size?: number;
  sha256?: string;
  target?: string;
  /** For files: the first path (in this walk's order) of the same inode, so hard links share it. */
  linkGroup?: string;
}

export interface DescribeOptions {
  /**
   * Describe the tree as FORMAT.md's "Restore rules" say a restore gives it back: times rounded down to their
   * microsecond (toward the past, before 1970 too), files without their setuid and setgid bits.
   */
  asRestored?: boolean;
}

/** path ("" for the root) → entry, in a fixed order (names sorted by UTF-16 code units, depth first). */
export function describeExactly(root: string, options: DescribeOptions = {}): Map<string, ExactEntry> {
  const out = new Map<string, ExactEntry>();
  const inodes = new Map<string, string>();
  const time = (ns: bigint) => {
    if (!options.asRestored) return ns.toString();
    const us = ns / 1000n - (ns % 1000n < 0n ? 1n : 0n);
    return (us * 1000n).toString();
  };
  const visit = (rel: string) => {
    const full = rel === "" ? root : path.join(root, rel);
    const st = fs.lstatSync(full, { bigint: true });
    const common = { uid: Number(st.uid), gid: Number(st.gid), mtimeNs: time(st.mtimeNs) };
    const mode = Number(st.mode & 0o7777n);
    if (st.isSymbolicLink()) {
      out.set(rel, { type: "symlink", ...common, target: fs.readlinkSync(full) });
    } else if (st.isDirectory()) {
      out.set(rel, { type: "dir", mode, ...common });
      for (const name of fs.readdirSync(full).sort()) visit(rel === "" ? name : `${rel}/${name}`);
    } else if (st.isFile()) {
      const inode = `${st.dev}:${st.ino}`;
      if (!inodes.has(inode)) inodes.set(inode, rel);
      out.set(rel, {
        type: "file",
        mode: options.asRestored ? mode & ~0o6000 : mode,
        ...common,
        size: Number(st.size),
        sha256: createHash("sha256").update(fs.readFileSync(full)).digest("hex"),
        linkGroup: inodes.get(inode),
      });
    } else throw new Error(`${full}: not a file, directory or symlink`);
  };
  visit("");
  return out;
}

/** The paths whose entries differ (or that one side lacks), each with both sides: empty when the trees match. */
export function treeDifferences(
  expected: Map<string, ExactEntry>,
  actual: Map<string, ExactEntry>,
): { path: string; expected?: ExactEntry; actual?: ExactEntry }[] {
  const differences = [];
  for (const p of new Set([...expected.keys(), ...actual.keys()])) {
    const [e, a] = [expected.get(p), actual.get(p)];
    if (JSON.stringify(e) !== JSON.stringify(a)) differences.push({ path: p, expected: e, actual: a });
  }
  return differences;
}
