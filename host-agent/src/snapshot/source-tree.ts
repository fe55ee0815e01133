// Lists a workspace for a snapshot: every directory, regular file and symlink under the root, depth first in
// name order (parents before children), without following symlinks. Anything else is skipped and reported;
// what the exclusions name (path-matcher.ts) is left out without a word, and an excluded directory is not read.
import { type BigIntStats, type Dirent, lstatSync, readlinkSync } from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import { join } from "node:path";
import type { SkippedEntry } from "@dumont/repository";
import type { Exclusions } from "./path-matcher.js";

export interface SourceEntry {
  /**
   * Relative to the root, `/`-separated (sourceFile gives the absolute path: not kept for every entry, as a
   * workspace of 300,000 files would hold ~30 MB of them, and only the files read need one).
   */
  path: string;
  type: "file" | "dir" | "symlink";
  mode: number;
  mtimeNs: bigint;
  size: number;
  ino: bigint;
  target?: string;
}

/** Entries stat'ed between two turns of the event loop (the agent's session must keep talking meanwhile). */
const STAT_BATCH = 256;

export async function listSourceTree(
  root: string,
  exclusions?: Exclusions,
): Promise<{ entries: SourceEntry[]; skipped: SkippedEntry[] }> {
  const rootStat = await lstat(root, { bigint: true }).catch((err: NodeJS.ErrnoException) => {
    throw new Error(
      `cannot read the source directory ${root}: ${err.code === "ENOENT" ? "it does not exist" : err.message}`,
    );
  });
  if (!rootStat.isDirectory()) throw new Error(`the source ${root} is not a directory`);
  const entries: SourceEntry[] = [];
  const skipped: SkippedEntry[] = [];
  await walk(root, "", { entries, skipped, exclusions });
  return { entries, skipped };
}

async function walk(
  dirAbs: string,
  dirRel: string,
  into: { entries: SourceEntry[]; skipped: SkippedEntry[]; exclusions?: Exclusions },
): Promise<void> {
  const { entries, skipped, exclusions } = into;
  let dirents: Dirent[];
  try {
    dirents = await readdir(dirAbs, { withFileTypes: true });
  } catch (err) {
    skipped.push({ path: dirRel || ".", reason: `cannot list: ${(err as Error).message}` });
    return;
  }
  dirents.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (let i = 0; i < dirents.length; i++) {
    // lstat on this thread, a few hundred at a time between turns of the event loop: a promise per file
    // (a libuv round trip each) took 100-180 ms for the bench corpus's 2,000 files, sync calls 35-70 ms.
    if (i > 0 && i % STAT_BATCH === 0) await new Promise((resolve) => setImmediate(resolve));
    const name = dirents[i].name;
    const rel = dirRel === "" ? name : `${dirRel}/${name}`;
    const abs = join(dirAbs, name);
    let st: BigIntStats;
    let target: string | undefined;
    try {
      st = lstatSync(abs, { bigint: true });
      if (st.isSymbolicLink()) target = readlinkSync(abs);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const excluded = exclusions?.excludes(rel, dirents[i].isDirectory());
      if (e.code !== "ENOENT" && !excluded) skipped.push({ path: rel, reason: e.message ?? "cannot stat" });
      continue;
    }
    if (exclusions?.excludes(rel, st.isDirectory())) continue;
    // Literals with the same keys in the same order, not `{ ...base, type }`: each spread entry got a hidden
    // class of its own in V8, ~300 bytes more per file and work for the collector (300,000 files: 300,577
    // classes in a heap snapshot, against one).
    const mode = Number(st.mode & 0o7777n);
    const { mtimeNs, ino } = st;
    if (st.isDirectory()) {
      entries.push({ path: rel, type: "dir", mode, mtimeNs, size: 0, ino });
      await walk(abs, rel, into);
    } else if (st.isFile()) {
      entries.push({ path: rel, type: "file", mode, mtimeNs, size: Number(st.size), ino });
    } else if (st.isSymbolicLink()) {
      entries.push({ path: rel, type: "symlink", mode, mtimeNs, size: 0, ino, target });
    } else {
      skipped.push({ path: rel, reason: `${specialKind(st)}: only regular files, directories and symlinks are kept` });
    }
  }
}

/** The absolute path of `entry` (listed under `root`, an absolute path). */
export function sourceFile(root: string, entry: SourceEntry): string {
  return root.endsWith("/") ? `${root}${entry.path}` : `${root}/${entry.path}`;
}

function specialKind(st: BigIntStats): string {
  if (st.isSocket()) return "a socket";
  if (st.isFIFO()) return "a FIFO (named pipe)";
  if (st.isBlockDevice() || st.isCharacterDevice()) return "a device";
  return "not a regular file";
}
