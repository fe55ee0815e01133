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
// Only a target holding a marker is emptied: one with anything else in it is refused, as ever.
import { constants } from "node:fs";
import { lutimes, mkdir, open, realpath, stat, unlink } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { type ProcessIdentity, processIsGone, thisProcess } from "@dumont/repository";
import { z } from "zod";
import type { RestoreDirectories } from "./restore-directories.js";

/**
 * The marker's name. A snapshot holding an entry of this name at its top is restored without one (as before
 * markers: no takeover after a kill, and a second restore meanwhile is refused only by the emptiness check).
 */
export const RESTORE_MARKER = ".dumont-restore-incomplete";

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
  /** Removes the marker: the restore is over and what it wrote is what it will be. */
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
 * Checks the target `dirs` holds empty (or holding only an interrupted restore, which is cleared) and claims it
 * for restoring snapshot `snapshotId`. `withMarker` false (the snapshot has an entry of the marker's name): only
 * an empty target is taken, and nothing marks it.
 */
export async function claimTarget(
  dirs: RestoreDirectories,
  target: string,
  snapshotId: string,
  withMarker: boolean,
): Promise<ClaimedTarget> {
  const names = await dirs.targetNames();
  const mode = (await targetMode(dirs)) & 0o7777;
  if (!withMarker || !names.includes(RESTORE_MARKER)) {
    if (names.length > 0) {
      throw new Error(`the restore target ${target} is not empty; restore into a new or empty directory`);
    }
    if (!withMarker) return { originalMode: mode, finish: async () => {} };
    return placeMarker(dirs, target, snapshotId, mode);
  }
  const { marker: found, touched } = await readMarker(dirs, target);
  if (!processIsGone(found) && Date.now() - touched < MARKER_STALE_AFTER_MS) {
    throw new Error(
      `a restore of snapshot ${found.snapshot.slice(0, 12)} into ${target} is under way (pid ${found.pid} on ` +
        `${found.hostname}, since ${found.started}); wait for it, or stop it and restore again (a marker ` +
        `${RESTORE_MARKER} untouched for ${MARKER_STALE_AFTER_MS / 60_000} minutes counts as an interrupted restore's)`,
    );
  }
  // The process that wrote the marker is gone: its restore can never finish. The marker is taken away first
  // (of two restores finding it so, only one unlink succeeds), then this restore's own put in its place, and
  // only then is what the dead one wrote removed.
  await unlinkMarker(dirs).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") throw takenMeanwhile(target);
    throw err;
  });
  const claimed = await placeMarker(dirs, target, snapshotId, found.targetMode);
  await dirs.emptyTarget(RESTORE_MARKER);
  return claimed;
}

async function targetMode(dirs: RestoreDirectories): Promise<number> {
  return (dirs.target ? await dirs.target.stat() : await stat(dirs.root)).mode;
}

async function placeMarker(
  dirs: RestoreDirectories,
  target: string,
  snapshotId: string,
  originalMode: number,
): Promise<ClaimedTarget> {
  const marker: Marker = {
    snapshot: snapshotId,
    started: new Date().toISOString(),
    targetMode: originalMode,
    ...thisProcess(),
  };
  const at = await dirs.entry(RESTORE_MARKER);
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
      await file.writeFile(`${JSON.stringify(marker, null, 2)}\n`);
      await file.sync();
    } finally {
      await file.close();
    }
  } finally {
    at.release();
  }
  await dirs.syncTarget(); // the marker is there before anything it guards is
  const touch = setInterval(() => void touchMarker(dirs).catch(() => {}), MARKER_TOUCH_EVERY_MS);
  touch.unref();
  return {
    originalMode,
    finish: async () => {
      clearInterval(touch);
      await unlinkMarker(dirs).catch(() => {}); // one left behind makes a finished target look unfinished, no worse
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

async function unlinkMarker(dirs: RestoreDirectories): Promise<void> {
  const at = await dirs.entry(RESTORE_MARKER);
  try {
    await unlink(at.path);
  } finally {
    at.release();
  }
}

/** The marker in the target, and when it was last touched (ms since the epoch). */
async function readMarker(dirs: RestoreDirectories, target: string): Promise<{ marker: Marker; touched: number }> {
  const at = await dirs.entry(RESTORE_MARKER);
  let text: string;
  let touched: number;
  try {
    const file = await open(at.path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      const info = await file.stat();
      if (!info.isFile()) throw new Error("not a regular file");
      touched = info.mtimeMs;
      const buffer = Buffer.alloc(MARKER_MAX_BYTES);
      const { bytesRead } = await file.read(buffer, 0, buffer.length, 0);
      text = buffer.subarray(0, bytesRead).toString("utf8");
    } finally {
      await file.close();
    }
  } catch (err) {
    throw new Error(`cannot read ${RESTORE_MARKER} in the restore target ${target}: ${(err as Error).message}`);
  } finally {
    at.release();
  }
  let parsed: z.ZodSafeParseResult<Marker>;
  try {
    parsed = markerSchema.safeParse(JSON.parse(text));
  } catch {
    parsed = { success: false } as z.ZodSafeParseResult<Marker>;
  }
  if (!parsed.success) {
    // Empty or cut short: a restore creating it this moment, or one killed while it did (before it wrote
    // anything else). Which, cannot be told; nothing is removed on a guess.
    throw new Error(
      `the restore target ${target} holds ${RESTORE_MARKER}, which is not a restore's marker as this agent ` +
        "writes it (empty, cut short or edited); if no restore is running into it, remove that file (and what " +
        "an interrupted restore left there) and restore again",
    );
  }
  return { marker: parsed.data, touched };
}

function takenMeanwhile(target: string): Error {
  return new Error(`another restore into ${target} began meanwhile; wait for it, or stop it and restore again`);
}
