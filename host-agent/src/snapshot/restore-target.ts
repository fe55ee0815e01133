// The target of a restore: made if missing, checked empty through the handle the restore writes through, and
// claimed with a marker file for as long as the restore runs.
//
// The marker (RESTORE_MARKER, at the top of the target) is created with O_EXCL and made durable before anything
// else is written, and removed once the restore is over. It does two things:
// - A second restore into the same target while one runs is refused (its create fails, or it finds the marker
//   of a live process), instead of both writing there and the loser emptying the target under the winner.
// - A restore killed outright (kill -9, the host's power) leaves its files, some only partly written, with the
//   marker beside them. Run again, the restore finds the marker's process gone, takes the marker over, empties
//   the target and starts over, where before it refused the non-empty directory and the operator had to clear
//   it by hand. A failure the restore sees (a dropped stream, a full disk, Ctrl-C) empties the target itself.
//
// Only a target holding such a marker is emptied, and only one this agent's user wrote for this very directory
// (its device and inode are in it): a marker copied in with a tree (`cp -a` of a half-restored one) or left by
// another user is refused, as is a target holding anything but a marker. Snapshots leave a marker out, and a
// restore never writes one a snapshot holds (an older agent's), so no restored tree carries one.
import { randomBytes } from "node:crypto";
import { type BigIntStats, constants } from "node:fs";
import { link, lstat, lutimes, mkdir, open, realpath, rename, stat, unlink } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { type ProcessIdentity, processIsGone, thisProcess } from "@dumont/repository";
import { z } from "zod";
import type { RestoreDirectories } from "./restore-directories.js";

/** The marker's name, at the top of the target. Left out of snapshots, and of restores of older ones. */
export const RESTORE_MARKER = ".dumont-restore-incomplete";

/** Whether a manifest path is the marker or under it (an older agent's snapshot of a target mid-restore). */
export function isRestoreMarker(path: string): boolean {
  return path === RESTORE_MARKER || path.startsWith(`${RESTORE_MARKER}/`);
}

/** Why a snapshot leaves the marker out (SkippedEntry.reason). */
export const RESTORE_MARKER_LEFT_OUT =
  "a restore's marker: a restore into this directory is running, or was killed, and its files may be incomplete";

/** The most of a marker read: it is a few hundred bytes of JSON. */
const MARKER_MAX_BYTES = 64 * 1024;
/**
 * A restore touches its marker this often, and a marker untouched for MARKER_STALE_AFTER_MS is an interrupted
 * restore's whoever wrote it: a process whose pid means nothing here (another pid namespace: the agent's
 * container restarted; another host sharing the target) cannot be asked whether it is gone.
 */
const MARKER_TOUCH_EVERY_MS = 60 * 1000;
export const MARKER_STALE_AFTER_MS = 10 * 60 * 1000;

const markerSchema = z.object({
  snapshot: z.string(),
  started: z.string(),
  /** The target directory's device and inode (decimal): a marker is for the directory it was written in. */
  targetDev: z.string(),
  targetIno: z.string(),
  /** The target's own mode before the restore made it 0700, to give back if this restore fails too. */
  targetMode: z.number().int().min(0).max(0o7777),
  hostname: z.string(),
  pid: z.number().int().positive(),
  pidns: z.string().optional(),
  bootId: z.string().optional(),
  machineId: z.string().optional(),
});
type Marker = z.infer<typeof markerSchema> & ProcessIdentity;

export interface ClaimedTarget {
  /** The target's mode before any restore into it changed it (from a taken-over marker, or as found). */
  readonly originalMode: number;
  /** Said where what an interrupted restore left was cleared first: which restore, of what, since when. */
  readonly tookOver?: string;
  /** Removes the marker (this restore's own, not one that replaced it): the restore is over. */
  finish(): Promise<void>;
}

/** Makes `target` (and missing parents) if it does not exist; its real path. Refuses anything but a directory. */
export async function prepareTarget(target: string): Promise<string> {
  const abs = resolve(target);
  const existing = await stat(abs).catch(() => undefined); // a link to a directory is that directory
  if (existing && !existing.isDirectory()) {
    throw new Error(
      `the restore target ${target} exists and is not a directory; restore into a new or empty directory`,
    );
  }
  if (!existing) {
    // Made one directory at a time, not with mkdir's `recursive`: under /proc (and other filesystems that
    // answer ENOENT to a create) Node's recursive mkdir never returns.
    const missing: string[] = [];
    for (let at = abs; !(await stat(at).catch(() => undefined)) && dirname(at) !== at; at = dirname(at)) {
      missing.push(at);
    }
    for (const dir of missing.reverse()) {
      await mkdir(dir).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "EEXIST") throw new Error(`cannot create the restore target ${target}: ${err.message}`);
      });
    }
  }
  return realpath(abs);
}

/**
 * Checks the target `dirs` holds empty (or holding only what an interrupted restore left, which is cleared) and
 * claims it for restoring snapshot `snapshotId`.
 */
export async function claimTarget(
  dirs: RestoreDirectories,
  target: string,
  snapshotId: string,
): Promise<ClaimedTarget> {
  const names = await dirs.targetNames();
  const own = await targetStat(dirs);
  if (!names.includes(RESTORE_MARKER)) {
    if (names.length > 0) {
      throw new Error(`the restore target ${target} is not empty; restore into a new or empty directory`);
    }
    return placeMarker(dirs, target, snapshotId, Number(own.mode & 0o7777n));
  }
  const found = await readMarker(dirs, target, own);
  if (!processIsGone(found.marker) && Date.now() - found.touched < MARKER_STALE_AFTER_MS) {
    const m = found.marker;
    throw new Error(
      `a restore of snapshot ${m.snapshot.slice(0, 12)} into ${target} is under way (pid ${m.pid} on ` +
        `${m.hostname}, since ${m.started}); wait for it, or stop it and restore again (a marker ` +
        `${RESTORE_MARKER} untouched for ${MARKER_STALE_AFTER_MS / 60_000} minutes counts as an interrupted restore's)`,
    );
  }
  // The process that wrote the marker is gone: its restore can never finish. The marker is moved aside to a
  // name of this restore's own (a rename: of two restores doing so, one finds it gone), and checked to be the
  // very file judged above: another restore may have taken the dead one over meanwhile and put its live marker
  // there, which is then put back. Only then is this restore's own marker placed and the rest removed.
  const aside = `${RESTORE_MARKER}.taken-${randomBytes(8).toString("hex")}`;
  await moveEntry(dirs, RESTORE_MARKER, aside).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") throw takenMeanwhile(target);
    throw err;
  });
  const moved = await entryStat(dirs, aside);
  if (moved?.ino !== found.ino) {
    await putBack(dirs, aside);
    throw takenMeanwhile(target);
  }
  await removeEntry(dirs, aside);
  const claimed = await placeMarker(dirs, target, snapshotId, found.marker.targetMode);
  await dirs.emptyTarget(RESTORE_MARKER);
  const m = found.marker;
  return {
    ...claimed,
    tookOver:
      `${target} held what an interrupted restore left (snapshot ${m.snapshot.slice(0, 12)}, pid ${m.pid} on ` +
      `${m.hostname}, since ${m.started}); it was cleared and the restore started over`,
  };
}

async function placeMarker(
  dirs: RestoreDirectories,
  target: string,
  snapshotId: string,
  originalMode: number,
): Promise<ClaimedTarget> {
  const own = await targetStat(dirs);
  const marker: Marker = {
    snapshot: snapshotId,
    started: new Date().toISOString(),
    targetDev: String(own.dev),
    targetIno: String(own.ino),
    targetMode: originalMode,
    ...thisProcess(),
  };
  const at = await dirs.entry(RESTORE_MARKER);
  let ino: bigint;
  try {
    const file = await open(
      at.path,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    ).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "EEXIST") throw takenMeanwhile(target);
      throw err;
    });
    try {
      ino = (await file.stat({ bigint: true })).ino;
      await file.writeFile(`${JSON.stringify(marker, null, 2)}\n`);
      await file.sync();
    } catch (err) {
      // Not left behind half-written (a full disk): an unreadable marker would refuse every later restore.
      await file.close().catch(() => {});
      await unlink(at.path).catch(() => {});
      throw err;
    }
    await file.close();
  } finally {
    at.release();
  }
  // The marker is there before anything it guards is. Not left behind if that fails either: naming this
  // (living) process, it would refuse the next restore here for MARKER_STALE_AFTER_MS.
  await dirs.syncTarget().catch(async (err: unknown) => {
    await removeEntry(dirs, RESTORE_MARKER).catch(() => {});
    throw err;
  });
  const touch = setInterval(() => void touchMarker(dirs).catch(() => {}), MARKER_TOUCH_EVERY_MS);
  touch.unref();
  return {
    originalMode,
    finish: async () => {
      clearInterval(touch);
      // Only this restore's own: a marker of the same name that is another file is another restore's.
      if ((await entryStat(dirs, RESTORE_MARKER))?.ino !== ino) return;
      await removeEntry(dirs, RESTORE_MARKER).catch(() => {}); // left behind, a finished target looks unfinished
    },
  };
}

async function touchMarker(dirs: RestoreDirectories): Promise<void> {
  const at = await dirs.entry(RESTORE_MARKER);
  try {
    const now = new Date();
    await lutimes(at.path, now, now);
  } finally {
    at.release();
  }
}

/** Runs `use` on the name of entry `name` of the target (through its handle where there is one). */
async function atName<T>(dirs: RestoreDirectories, name: string, use: (path: string) => Promise<T>): Promise<T> {
  const at = await dirs.entry(name);
  try {
    return await use(at.path);
  } finally {
    at.release();
  }
}

const targetStat = (dirs: RestoreDirectories): Promise<BigIntStats> =>
  dirs.target ? dirs.target.stat({ bigint: true }) : stat(dirs.root, { bigint: true });
const entryStat = (dirs: RestoreDirectories, name: string) =>
  atName(dirs, name, (path) => lstat(path, { bigint: true }).catch(() => undefined));
const removeEntry = (dirs: RestoreDirectories, name: string) => atName(dirs, name, (path) => unlink(path));
const moveEntry = (dirs: RestoreDirectories, from: string, to: string) =>
  atName(dirs, from, (a) => atName(dirs, to, (b) => rename(a, b)));

/**
 * Puts the marker moved to `aside` back under its name, unless one is there again (link, not rename: that would
 * replace it), and removes `aside`.
 */
async function putBack(dirs: RestoreDirectories, aside: string): Promise<void> {
  await atName(dirs, aside, (a) => atName(dirs, RESTORE_MARKER, (b) => link(a, b))).catch(() => {});
  await removeEntry(dirs, aside).catch(() => {});
}

/**
 * The marker in the target (`own`: the target's stat), when it was last touched (ms since the epoch) and its
 * inode. Refused unless it is one this agent's user wrote for this directory.
 */
async function readMarker(
  dirs: RestoreDirectories,
  target: string,
  own: BigIntStats,
): Promise<{ marker: Marker; touched: number; ino: bigint }> {
  let text: string;
  let info: BigIntStats;
  try {
    ({ text, info } = await atName(dirs, RESTORE_MARKER, async (path) => {
      const file = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      try {
        const info = await file.stat({ bigint: true });
        const buffer = Buffer.alloc(MARKER_MAX_BYTES);
        const { bytesRead } = info.isFile() ? await file.read(buffer, 0, buffer.length, 0) : { bytesRead: 0 };
        return { text: buffer.subarray(0, bytesRead).toString("utf8"), info };
      } finally {
        await file.close();
      }
    }));
  } catch (err) {
    throw new Error(`cannot read ${RESTORE_MARKER} in the restore target ${target}: ${(err as Error).message}`);
  }
  let parsed: z.ZodSafeParseResult<Marker> | undefined;
  try {
    parsed = markerSchema.safeParse(JSON.parse(text));
  } catch {
    parsed = undefined;
  }
  const marker = parsed?.success ? parsed.data : undefined;
  // Empty or cut short (a restore creating it this moment, or one killed while it did), another user's (not
  // this agent's to judge), or written for another directory (copied in with a tree): nothing is removed on it.
  const ours =
    marker !== undefined &&
    info.isFile() &&
    info.nlink === 1n &&
    info.uid === BigInt(process.geteuid?.() ?? -1) &&
    marker.targetDev === String(own.dev) &&
    marker.targetIno === String(own.ino);
  if (!ours) {
    throw new Error(
      `the restore target ${target} holds ${RESTORE_MARKER}, which is not a marker this agent wrote for it ` +
        "(empty, cut short, another user's, or copied from elsewhere); if no restore is running into it, remove " +
        "that file (and what an interrupted restore left there) and restore again",
    );
  }
  return { marker, touched: Number(info.mtimeMs), ino: info.ino };
}

function takenMeanwhile(target: string): Error {
  return new Error(`another restore into ${target} began meanwhile; wait for it, or stop it and restore again`);
}
