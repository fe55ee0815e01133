// Lists a workspace for a snapshot: every directory, regular file and symlink under the root, depth first in
// name order (parents before children), without following symlinks (but the root, if it is one). Anything else
// is skipped and reported; what the exclusions name (path-matcher.ts) is left out without a word, and an excluded
// directory is not read.
// A name or symlink target that is not valid UTF-8 is left out with a reason: the manifest holds UTF-8 text,
// and a name decoded with U+FFFD in it names nothing on the disk (a directory so named is one entry left out).
import { isUtf8 } from "node:buffer";
import {
  type BigIntStats,
  closeSync,
  constants,
  existsSync,
  fstatSync,
  lstatSync,
  openSync,
  readlinkSync,
} from "node:fs";
import { access, opendir, readdir, stat } from "node:fs/promises";
import { userInfo } from "node:os";
import { join } from "node:path";
import type { ManifestRoot, SkippedEntry } from "@dumont/repository";
import type { Exclusions } from "./path-matcher.js";
import { isMarkerName, RESTORE_MARKER, RESTORE_MARKER_LEFT_OUT } from "./restore-target.js";

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
  /** st_ctime: with size, mtime and inode, what the local index compares (a file's mtime can be set back). */
  ctimeNs: bigint;
  /** The device it is on (st_dev): with `ino`, what a file opened later to read it must still be. */
  dev: number;
  /** Its owner and group (numeric ids), kept in the manifest. */
  uid: number;
  gid: number;
  /** Hard links to it (st_nlink): a file with more may be another entry's (dev, ino) too. */
  nlink: number;
  target?: string;
}

/** Why an entry whose name is not valid UTF-8 is left out. */
export const NOT_UTF8_NAME = "its name is not valid UTF-8; rename it to keep it";
/** Why a symlink whose target is not valid UTF-8 is left out. */
export const NOT_UTF8_TARGET = "its target is not valid UTF-8; point it at a UTF-8 path to keep it";

/** A directory's entry as the walk uses it (a Dirent, or one read as bytes with a valid UTF-8 name). */
type Named = { name: string; isDirectory(): boolean; notUtf8?: boolean };

/**
 * Whether a directory can be listed through its own handle (/proc/self/fd/N/name), so that nothing under the
 * root is found by a path resolved again: a directory swapped for a symlink while the source is listed would
 * otherwise be listed through it (a tenant's workspace pulling the agent's host files into its snapshot).
 */
const THROUGH_HANDLES = existsSync("/proc/self/fd");

/** Why a directory that is another one by the time it is read is left out. */
export const DIRECTORY_REPLACED = "it was replaced by another directory or a symlink while the source was listed";

/** Entries stat'ed between two turns of the event loop (the agent's session must keep talking meanwhile). */
const STAT_BATCH = 256;

export interface SourceTree {
  /** The source directory itself, for the manifest's root (what a restore's target becomes). */
  root: ManifestRoot;
  entries: SourceEntry[];
  skipped: SkippedEntry[];
}

/**
 * The source directory's stat, or an error saying why it cannot be snapshotted. The root may itself be a symlink
 * to a directory (/workspace -> /mnt/data/ws): that one link is followed, as the path the operator named (rsync's
 * `link/`); nothing under it is. A root this process may not list (an agent running as another user than the
 * workspace's, a directory of mode 0711 or 0700) fails here too: listed as nothing, it made an empty snapshot that a
 * retention policy then counted as the newest, forgetting the last whole one.
 */
export async function statSourceRoot(root: string): Promise<BigIntStats> {
  const rootStat = await stat(root, { bigint: true }).catch((err: NodeJS.ErrnoException) => {
    throw sourceUnreadable(root, err.code === "ENOENT" ? "it does not exist" : err.message);
  });
  if (!rootStat.isDirectory()) throw new Error(`the source ${root} is not a directory`);
  const listing = await opendir(root).catch((err: unknown) => {
    throw sourceUnreadable(root, withoutPath(err));
  });
  await listing.close();
  // Listed but not entered (0744 another user's): what lies in it could not be opened, its .dumontignore first.
  await access(root, constants.X_OK).catch((err: unknown) => {
    throw sourceUnreadable(root, withoutPath(err));
  });
  return rootStat;
}

/** The source directory could not be read: the snapshot fails, saying why and, for a permission, as whom. */
function sourceUnreadable(root: string, why: string): Error {
  const as = /^E(ACCES|PERM)\b/.test(why)
    ? ` (the agent runs as ${processUser()}, which may not list or enter it)`
    : "";
  return new Error(`cannot read the source directory ${root}: ${why}${as}`);
}

function processUser(): string {
  try {
    return `user ${userInfo().username}`;
  } catch {
    return `uid ${process.getuid?.() ?? "?"}`;
  }
}

export async function listSourceTree(
  root: string,
  exclusions?: Exclusions,
  /** Called after each directory is listed, with the entries so far (progress while a large tree is walked). */
  onDirectory?: (entries: number) => void,
  /**
   * Paths (relative, "/"-separated) left out and reported with the reason given, unless an exclusion already
   * leaves them out without a word: the repository a direct snapshot writes to, when it lies in the source
   * (and always a restore's marker, RESTORE_MARKER).
   */
  leaveOut?: ReadonlyMap<string, string>,
): Promise<SourceTree> {
  const rootStat = await statSourceRoot(root);
  const entries: SourceEntry[] = [];
  const skipped: SkippedEntry[] = [];
  // A restore's marker at the top (the source is a restore target mid-restore, or one a killed restore left),
  // or one on its way in or aside (isMarkerName, in `walk`): never stored, or a restore of the snapshot would
  // write it back and a later restore take it for its own.
  const leftOut = new Map([[RESTORE_MARKER, RESTORE_MARKER_LEFT_OUT], ...(leaveOut ?? [])]);
  await walk(root, "", { root, entries, skipped, exclusions, onDirectory, leaveOut: leftOut }, rootStat);
  const rootEntry: ManifestRoot = {
    mode: Number(rootStat.mode & 0o7777n),
    mtimeNs: String(rootStat.mtimeNs),
    uid: Number(rootStat.uid),
    gid: Number(rootStat.gid),
  };
  return { root: rootEntry, entries, skipped };
}

async function walk(
  dirAbs: string,
  dirRel: string,
  into: {
    /** The source directory, as named: what a failure to list it says. */
    root: string;
    entries: SourceEntry[];
    skipped: SkippedEntry[];
    exclusions?: Exclusions;
    onDirectory?: (entries: number) => void;
    leaveOut?: ReadonlyMap<string, string>;
  },
  /** What the directory was when its parent listed it: it must be that one still. */
  listed: { dev: bigint; ino: bigint },
): Promise<void> {
  const { skipped } = into;
  into.onDirectory?.(into.entries.length);
  if (!THROUGH_HANDLES) return listDirectory(dirAbs, dirRel, into);
  let handle: number;
  try {
    // Not followed if it is a symlink by now (the root, the path the operator named, may be one).
    handle = openSync(dirAbs, constants.O_RDONLY | constants.O_DIRECTORY | (dirRel === "" ? 0 : constants.O_NOFOLLOW));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (dirRel === "") throw sourceUnreadable(dirAbs, withoutPath(e)); // (its mode changed since statSourceRoot)
    if (e.code === "ENOENT") return; // removed since its parent was listed, as a file gone is
    const replaced = e.code === "ELOOP" || e.code === "ENOTDIR";
    skipped.push({ path: dirRel, reason: replaced ? DIRECTORY_REPLACED : `cannot list: ${withoutPath(e)}` });
    return;
  }
  try {
    const st = fstatSync(handle, { bigint: true });
    if (st.dev !== listed.dev || st.ino !== listed.ino) {
      if (dirRel === "")
        throw new Error(`the source directory ${dirAbs} was replaced while it was listed; snapshot it again`);
      skipped.push({ path: dirRel, reason: DIRECTORY_REPLACED });
      return;
    }
    await listDirectory(`/proc/self/fd/${handle}`, dirRel, into);
  } finally {
    closeSync(handle);
  }
}

/** Lists directory `dirAbs` (its handle's name under /proc, where there is one) into `into`, and walks below. */
async function listDirectory(dirAbs: string, dirRel: string, into: Parameters<typeof walk>[2]): Promise<void> {
  const { entries, skipped, exclusions, leaveOut } = into;
  let dirents: Named[];
  try {
    dirents = await readdir(dirAbs, { withFileTypes: true });
    // A name that is not valid UTF-8 comes back with U+FFFD in it; only then is the directory read again as
    // bytes, to tell those from names that hold U+FFFD itself (reading every name as bytes made a listing
    // of 100,000 files ~25% slower).
    for (const d of dirents) {
      if (d.name.includes("\uFFFD")) {
        dirents = await readNamesAsBytes(dirAbs);
        break;
      }
    }
  } catch (err) {
    if (dirRel === "") throw sourceUnreadable(into.root, withoutPath(err));
    skipped.push({ path: dirRel, reason: `cannot list: ${withoutPath(err)}` });
    return;
  }
  dirents.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (let i = 0; i < dirents.length; i++) {
    // lstat on this thread, a few hundred at a time between turns of the event loop: a promise per file
    // (a libuv round trip each) took 100-180 ms for the bench corpus's 2,000 files, sync calls 35-70 ms.
    if (i > 0 && i % STAT_BATCH === 0) await new Promise((resolve) => setImmediate(resolve));
    const name = dirents[i].name;
    const rel = dirRel === "" ? name : `${dirRel}/${name}`;
    if (dirents[i].notUtf8) {
      if (!exclusions?.excludes(rel, dirents[i].isDirectory())) skipped.push({ path: rel, reason: NOT_UTF8_NAME });
      continue;
    }
    const abs = join(dirAbs, name);
    let st: BigIntStats;
    let target: string | undefined;
    try {
      st = lstatSync(abs, { bigint: true });
      if (st.isSymbolicLink()) {
        target = readlinkSync(abs);
        if (target.includes("\uFFFD") && !isUtf8(readlinkSync(abs, { encoding: "buffer" }))) {
          if (!exclusions?.excludes(rel, false)) skipped.push({ path: rel, reason: NOT_UTF8_TARGET });
          continue;
        }
      }
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const excluded = exclusions?.excludes(rel, dirents[i].isDirectory());
      if (e.code !== "ENOENT" && !excluded) skipped.push({ path: rel, reason: withoutPath(e) });
      continue;
    }
    if (exclusions?.excludes(rel, st.isDirectory())) continue;
    const reason = leaveOut?.get(rel) ?? (dirRel === "" && isMarkerName(rel) ? RESTORE_MARKER_LEFT_OUT : undefined);
    if (reason !== undefined) {
      skipped.push({ path: rel, reason });
      continue;
    }
    // Literals with the same keys in the same order, not `{ ...base, type }`: each spread entry got a hidden
    // class of its own in V8, ~300 bytes more per file and work for the collector (300,000 files: 300,577
    // classes in a heap snapshot, against one).
    const mode = Number(st.mode & 0o7777n);
    const { mtimeNs, ino, ctimeNs } = st;
    const dev = Number(st.dev);
    const uid = Number(st.uid);
    const gid = Number(st.gid);
    const nlink = Number(st.nlink);
    if (st.isDirectory()) {
      entries.push({ path: rel, type: "dir", mode, mtimeNs, size: 0, ino, ctimeNs, dev, uid, gid, nlink });
      await walk(abs, rel, into, st);
    } else if (st.isFile()) {
      const size = Number(st.size);
      entries.push({ path: rel, type: "file", mode, mtimeNs, size, ino, ctimeNs, dev, uid, gid, nlink });
    } else if (st.isSymbolicLink()) {
      entries.push({ path: rel, type: "symlink", mode, mtimeNs, size: 0, ino, ctimeNs, dev, uid, gid, nlink, target });
    } else {
      skipped.push({ path: rel, reason: `${specialKind(st)}: only regular files, directories and symlinks are kept` });
    }
  }
}

/**
 * The entries of a directory whose listing had U+FFFD in a name, read again as bytes; each name decoded, with
 * U+FFFD for what is not valid UTF-8 (for display), and those marked `notUtf8`.
 */
async function readNamesAsBytes(dirAbs: string): Promise<Named[]> {
  return (await readdir(dirAbs, { withFileTypes: true, encoding: "buffer" })).map((d) => ({
    name: d.name.toString("utf8"),
    isDirectory: () => d.isDirectory(),
    notUtf8: !isUtf8(d.name),
  }));
}

/** The absolute path of `entry` (listed under `root`, an absolute path). */
export function sourceFile(root: string, entry: SourceEntry): string {
  return root.endsWith("/") ? `${root}${entry.path}` : `${root}/${entry.path}`;
}

/**
 * A system error's message without the path it ends with ("EACCES: permission denied, open '/proc/self/fd/23/x'"
 * gives "EACCES: permission denied"): the entry's own path stands beside the reason, and the one in the message
 * is the name it was reached by through a directory's handle.
 */
export function withoutPath(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.replace(/, \w+ '.*'$/s, "");
}

function specialKind(st: BigIntStats): string {
  if (st.isSocket()) return "a socket";
  if (st.isFIFO()) return "a FIFO (named pipe)";
  if (st.isBlockDevice() || st.isCharacterDevice()) return "a device";
  return "not a regular file";
}
