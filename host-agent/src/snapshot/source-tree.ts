// Lists a workspace for a snapshot: every directory, regular file and symlink under the root, depth first in
// name order (parents before children), without following symlinks. Anything else is skipped and reported.
import type { BigIntStats, Dirent } from "node:fs";
import { lstat, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";

export interface SourceEntry {
  /** Relative to the root, `/`-separated. */
  path: string;
  abs: string;
  type: "file" | "dir" | "symlink";
  mode: number;
  mtimeNs: bigint;
  size: number;
  ino: bigint;
  target?: string;
}

export interface SkippedEntry {
  path: string;
  reason: string;
}

export async function listSourceTree(root: string): Promise<{ entries: SourceEntry[]; skipped: SkippedEntry[] }> {
  const rootStat = await lstat(root, { bigint: true }).catch((err: NodeJS.ErrnoException) => {
    throw new Error(
      `cannot read the source directory ${root}: ${err.code === "ENOENT" ? "it does not exist" : err.message}`,
    );
  });
  if (!rootStat.isDirectory()) throw new Error(`the source ${root} is not a directory`);
  const entries: SourceEntry[] = [];
  const skipped: SkippedEntry[] = [];
  await walk(root, "", entries, skipped);
  return { entries, skipped };
}

async function walk(dirAbs: string, dirRel: string, entries: SourceEntry[], skipped: SkippedEntry[]): Promise<void> {
  let dirents: Dirent[];
  try {
    dirents = await readdir(dirAbs, { withFileTypes: true });
  } catch (err) {
    skipped.push({ path: dirRel || ".", reason: `cannot list: ${(err as Error).message}` });
    return;
  }
  const names = dirents.map((d) => d.name).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const stats = await mapLimited(names, 32, async (name) => {
    const abs = join(dirAbs, name);
    try {
      const st = await lstat(abs, { bigint: true });
      const target = st.isSymbolicLink() ? await readlink(abs) : undefined;
      return { st, target };
    } catch (err) {
      return { err: err as NodeJS.ErrnoException };
    }
  });
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    const rel = dirRel === "" ? name : `${dirRel}/${name}`;
    const abs = join(dirAbs, name);
    const r = stats[i];
    if ("err" in r) {
      if (r.err?.code !== "ENOENT") skipped.push({ path: rel, reason: r.err?.message ?? "cannot stat" });
      continue;
    }
    const st: BigIntStats = r.st;
    const base = { path: rel, abs, mode: Number(st.mode & 0o7777n), mtimeNs: st.mtimeNs, ino: st.ino };
    if (st.isDirectory()) {
      entries.push({ ...base, type: "dir", size: 0 });
      await walk(abs, rel, entries, skipped);
    } else if (st.isFile()) {
      entries.push({ ...base, type: "file", size: Number(st.size) });
    } else if (st.isSymbolicLink()) {
      entries.push({ ...base, type: "symlink", size: 0, target: r.target });
    } else {
      skipped.push({ path: rel, reason: "not a regular file, directory or symlink" });
    }
  }
}

async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const run = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
  return out;
}
