// The target of a restore: made if missing, checked empty through the handle the restore writes through, and
// claimed with a marker file for as long as the restore runs.
//
// The marker (RESTORE_MARKER, at the top of the target) is written whole, made durable and linked into place
// before anything else is written, and removed once the restore is over; a claim (random) in it tells whose it
// is. It does two things:
// - A second restore into the same target while one runs is refused (its link fails, or it finds the marker
//   of a live process), instead of both writing there and the loser emptying the target under the winner.
// - A restore killed outright (kill -9, the host's power) leaves its files, some only partly written, with the
//   marker beside them. Run again, the restore finds the marker's process gone, takes the marker over, empties
//   the target and starts over, where before it refused the non-empty directory and the operator had to clear
//   it by hand. A failure the restore sees (a dropped stream, a full disk, Ctrl-C) empties the target itself.
//   What was changed there after that restore died (a file someone put in the target meanwhile) is not its to
//   clear: the takeover is refused, naming it, and removes nothing (RESTORE_WRITES_WITHIN_MS).
//
// Only a target holding such a marker is emptied, and only one this agent's user wrote for this very directory
// (its device and inode are in it): a marker copied in with a tree (`cp -a` of a half-restored one) or left by
// another user is refused, as is a target holding anything but a marker. Snapshots leave a marker at their top
// out, and a restore never writes one back at the top of its target (an older agent's snapshot holding one).
import { randomBytes } from "node:crypto";
import { type BigIntStats, constants } from "node:fs";
import { link, lstat, lutimes, mkdir, open, readlink, realpath, rename, stat, unlink } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { type ProcessIdentity, processIsGone, thisProcess } from "@dumont/repository";
import type * as Zod from "zod";
import type { RestoreDirectories } from "./restore-directories.js";

/** The marker's name, at the top of the target. Left out of snapshots, and of restores of older ones. */
export const RESTORE_MARKER = ".dumont-restore-incomplete";

/**
 * Whether a manifest path is a marker (isMarkerName, at the top) or under one: an older agent's snapshot of a
 * target mid-restore.
 */
export function isRestoreMarker(path: string): boolean {
  const slash = path.indexOf("/");
  return isMarkerName(slash < 0 ? path : path.slice(0, slash));
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
/**
 * How long after its marker's last touch a restore's own writes may still change entries of its target (their
 * ctime): one touch interval, since a restore that lived longer touched the marker again; and as much again for a
 * touch made late (the event loop held up; one that failed is let go) and for the writer's clock (which sets the
 * marker's time) running a little behind the one the filesystem stamps ctimes with. An entry changed later was
 * changed after the restore died, by someone else: a takeover clearing it would delete what is not the restore's
 * (a file put into the target after a kill -9), so it is refused instead. A directory counts as changed when
 * something was added to it or removed from it; the restore's own chmod and utimes of its directories come
 * before it dies. What someone changes sooner after the restore died than this cannot be told from the
 * restore's own writes by time alone, and is cleared with them.
 */
export const RESTORE_WRITES_WITHIN_MS = 2 * MARKER_TOUCH_EVERY_MS;

/**
 * Names beside the marker while it changes hands: a marker being placed is written under NEW_PREFIX and linked
 * into place (so it is never seen half-written there), and one being taken over is moved aside under
 * TAKEN_PREFIX. A restore killed between two such steps leaves one, which the next restore reads as the marker.
 */
const NEW_PREFIX = `${RESTORE_MARKER}.new-`;
const TAKEN_PREFIX = `${RESTORE_MARKER}.taken-`;
/** The marker, or another restore's on its way in or aside (placeMarker, a takeover). */
export const isMarkerName = (name: string) =>
  name === RESTORE_MARKER || name.startsWith(NEW_PREFIX) || name.startsWith(TAKEN_PREFIX);

/** A marker's claim: random, 16 bytes in hex. */
const CLAIM = /^[0-9a-f]{32}$/;

/**
 * The marker's schema. Zod is loaded only when another restore's marker is read whole (an interrupted one's, to
 * take it over), not with the engine: it is ~70 ms of every `dumont-agent snapshot` command's start otherwise. A
 * restore knows its own marker by the claim alone (readClaim).
 */
const markerSchemaOf = (z: typeof Zod.z) =>
  z.object({
    /** Random, for this restore alone: which marker is whose (an inode number is reused as soon as freed). */
    claim: z.string().regex(CLAIM),
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
type Marker = Zod.infer<ReturnType<typeof markerSchemaOf>> & ProcessIdentity;
let markerSchema: ReturnType<typeof markerSchemaOf> | undefined;

export interface ClaimedTarget {
  /** The target's mode before any restore into it changed it (from a taken-over marker, or as found). */
  readonly originalMode: number;
  /** Said where what an interrupted restore left was cleared first: which restore, of what, since when. */
  readonly tookOver?: string;
  /**
   * Removes the marker (this restore's own, not one that replaced it): the restore is over. With `keepMarker`
   * (what a failed restore wrote could not all be removed) it stays, so the target reads as an interrupted
   * restore's, which the next restore into it clears.
   */
  finish(options?: { keepMarker?: boolean }): Promise<void>;
}

/** Makes `target` (and missing parents) if it does not exist; its real path. Refuses anything but a directory. */
export async function prepareTarget(target: string): Promise<string> {
  const abs = resolve(target);
  const existing = await stat(abs).catch(() => undefined); // a link to a directory is that directory
  if (!existing && (await lstat(abs).catch(() => undefined))?.isSymbolicLink()) {
    // Not made where the link points: a dangling link is most often a mount or a directory gone missing.
    throw new Error(
      `the restore target ${target} is a symbolic link to ${await readlink(abs).catch(() => "?")}, which does not ` +
        "exist; make that directory, or restore into a new or empty one",
    );
  }
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
  const markers = names.filter(isMarkerName);
  if (markers.length === 0) {
    if (names.length > 0) {
      throw new Error(`the restore target ${target} is not empty; restore into a new or empty directory`);
    }
    return placeMarker(dirs, target, snapshotId, own, Number(own.mode & 0o7777n));
  }
  // The marker; without one, what a restore killed while the marker changed hands left beside the files.
  const name = markers.includes(RESTORE_MARKER) ? RESTORE_MARKER : markers.sort()[0];
  const found = await readMarker(dirs, target, own, name);
  if (!markerIsGone(found.marker) && Date.now() - found.touched < MARKER_STALE_AFTER_MS) {
    const m = found.marker;
    throw new Error(
      `a restore of snapshot ${m.snapshot.slice(0, 12)} into ${target} is under way (pid ${m.pid} on ` +
        `${m.hostname}, since ${m.started}); wait for it, or stop it and restore again (a marker ` +
        `${RESTORE_MARKER} untouched for ${MARKER_STALE_AFTER_MS / 60_000} minutes counts as an interrupted restore's)`,
    );
  }
  // An entry changed later than the dead restore could still write (RESTORE_WRITES_WITHIN_MS) is someone else's:
  // refused before anything is moved or removed, the dead marker left in place, so that once those entries are
  // moved out a restore takes it over as ever.
  const changed = await dirs.changedAfter(found.touched + RESTORE_WRITES_WITHIN_MS, isMarkerName);
  if (changed.count > 0) {
    // Unless another restore took the marker judged over meanwhile: what changed is then that restore's doing.
    if ((await readClaim(dirs, name)) !== found.marker.claim) throw takenMeanwhile(target);
    throw changedSinceInterrupted(target, found, changed);
  }
  // The process that wrote the marker is gone: its restore can never finish. The marker is moved aside to a
  // name of this restore's own (a rename: of two restores doing so, one finds it gone), and checked to be the
  // very marker judged above (its claim): another restore may have taken the dead one over meanwhile and put
  // its live marker there, which is then put back. Only then is this restore's own marker placed and the rest,
  // the dead marker with it, removed.
  const aside = `${TAKEN_PREFIX}${randomBytes(8).toString("hex")}`;
  await moveEntry(dirs, name, aside).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") throw takenMeanwhile(target);
    throw err;
  });
  if ((await readClaim(dirs, aside)) !== found.marker.claim) {
    await putBack(dirs, aside, name);
    throw takenMeanwhile(target);
  }
  const claimed = await placeMarker(dirs, target, snapshotId, own, found.marker.targetMode);
  // What cannot be removed; not another restore's marker on its way in, which that restore removes itself.
  const left = (await dirs.emptyTarget(RESTORE_MARKER)).filter((name) => !isMarkerName(name));
  if (left.length > 0) {
    await claimed.finish({ keepMarker: true }); // still what an interrupted restore left: the next one tries again
    throw new Error(
      `the restore target ${target} holds what an interrupted restore left, and not all of it could be removed ` +
        `(${left.slice(0, 3).join(", ")}${left.length > 3 ? `, and ${left.length - 3} more` : ""}); remove them, ` +
        "or restore into a new directory",
    );
  }
  const m = found.marker;
  return {
    ...claimed,
    tookOver:
      `${target} held what an interrupted restore left (snapshot ${m.snapshot.slice(0, 12)}, pid ${m.pid} on ` +
      `${m.hostname}, since ${m.started}); it was cleared and the restore started over`,
  };
}

/**
 * The claims of the restores this process runs now. A marker naming this very process with a claim not among
 * them was left by one of its restores that has ended: one that failed and could not remove all it wrote keeps
 * its marker (finish's keepMarker) so the next restore clears what is left, and that next restore, in the same
 * agent, must not take it for one under way (it refused for MARKER_STALE_AFTER_MS).
 */
const liveClaims = new Set<string>();

/** Whether the restore that wrote marker `m` can no longer be running. */
function markerIsGone(m: Marker): boolean {
  if (processIsGone(m)) return true;
  const me = thisProcess();
  const mine = m.hostname === me.hostname && m.pid === me.pid && m.pidns === me.pidns && m.bootId === me.bootId;
  return mine && !liveClaims.has(m.claim);
}

async function placeMarker(
  dirs: RestoreDirectories,
  target: string,
  snapshotId: string,
  own: BigIntStats,
  originalMode: number,
): Promise<ClaimedTarget> {
  const claim = randomBytes(16).toString("hex");
  liveClaims.add(claim);
  try {
    return await placeMarkerAs(claim, dirs, target, snapshotId, own, originalMode);
  } catch (err) {
    liveClaims.delete(claim);
    // The marker is the restore's first write there: a target it may not write is said as that, not as the errno
    // of a temp file's name.
    // (EPERM and EROFS are left to what the restore says of them: an immutable file or a filesystem without hard
    // links, a read-only filesystem.)
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EACCES") {
      throw Object.assign(
        new Error(
          `cannot write into the restore target ${target} (${code}): the agent's user (uid ` +
            `${process.getuid?.() ?? "?"}) needs write access there; restore into a directory it may write`,
          { cause: err },
        ),
        { code },
      );
    }
    throw err;
  }
}

async function placeMarkerAs(
  claim: string,
  dirs: RestoreDirectories,
  target: string,
  snapshotId: string,
  own: BigIntStats,
  originalMode: number,
): Promise<ClaimedTarget> {
  const marker: Marker = {
    claim,
    snapshot: snapshotId,
    started: new Date().toISOString(),
    targetDev: String(own.dev),
    targetIno: String(own.ino),
    targetMode: originalMode,
    ...thisProcess(),
  };
  // Written whole and made durable under a name of its own, then linked into place: a link, unlike a rename,
  // fails where a marker is there already (another restore's, placed meanwhile).
  const temp = `${NEW_PREFIX}${randomBytes(8).toString("hex")}`;
  await dirs.withEntry(temp, async (path) => {
    const file = await open(
      path,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    try {
      await file.writeFile(`${JSON.stringify(marker, null, 2)}\n`);
      await file.sync();
    } catch (err) {
      // Not left behind half-written (a full disk): an unreadable marker would refuse every later restore.
      await file.close().catch(() => {});
      await unlink(path).catch(() => {});
      throw err;
    }
    await file.close();
  });
  try {
    await dirs
      .withEntry(temp, (from) => dirs.withEntry(RESTORE_MARKER, (to) => link(from, to)))
      .catch((err: NodeJS.ErrnoException) => {
        // EEXIST: another restore's marker is in place; ENOENT: one taking over removed this restore's temp.
        if (err.code === "EEXIST" || err.code === "ENOENT") throw takenMeanwhile(target);
        throw err;
      });
  } finally {
    await removeEntry(dirs, temp).catch(() => {});
  }
  const removeOwn = async () => {
    if ((await readClaim(dirs, RESTORE_MARKER)) === claim) await removeEntry(dirs, RESTORE_MARKER).catch(() => {});
  };
  // The marker is there before anything it guards is. Not left behind if that fails either: naming this
  // (living) process, it would refuse the next restore here for MARKER_STALE_AFTER_MS.
  await dirs.syncTarget().catch(async (err: unknown) => {
    await removeOwn();
    throw err;
  });
  const touch = setInterval(() => void touchMarker(dirs).catch(() => {}), MARKER_TOUCH_EVERY_MS);
  touch.unref();
  return {
    originalMode,
    finish: async ({ keepMarker = false } = {}) => {
      clearInterval(touch);
      if (keepMarker) {
        liveClaims.delete(claim); // what it left is an interrupted restore's now, for the next one to clear
        return;
      }
      // Only this restore's own (a marker of the same name with another claim is another restore's), also where
      // a restore taking over moved it aside this moment (and would put it back), and once more after: one left
      // behind makes a finished target look interrupted. Live until then: a marker of a finished restore on its
      // way out is not one to take over (that would clear the files it restored).
      try {
        await removeOwn();
        for (const name of await dirs.targetNames().catch(() => [] as string[])) {
          if (name.startsWith(TAKEN_PREFIX) && (await readClaim(dirs, name)) === claim) {
            await removeEntry(dirs, name).catch(() => {});
          }
        }
        await removeOwn();
      } finally {
        liveClaims.delete(claim);
      }
    },
  };
}

async function touchMarker(dirs: RestoreDirectories): Promise<void> {
  const now = new Date();
  await dirs.withEntry(RESTORE_MARKER, (path) => lutimes(path, now, now));
}

const targetStat = (dirs: RestoreDirectories): Promise<BigIntStats> =>
  dirs.target ? dirs.target.stat({ bigint: true }) : stat(dirs.root, { bigint: true });
const removeEntry = (dirs: RestoreDirectories, name: string) => dirs.withEntry(name, (path) => unlink(path));
const moveEntry = (dirs: RestoreDirectories, from: string, to: string) =>
  dirs.withEntry(from, (a) => dirs.withEntry(to, (b) => rename(a, b)));

/**
 * Puts the marker moved to `aside` back under `name`, unless something is there again (link, not rename: that
 * would replace it), and removes `aside`.
 */
async function putBack(dirs: RestoreDirectories, aside: string, name: string): Promise<void> {
  await dirs.withEntry(aside, (a) => dirs.withEntry(name, (b) => link(a, b))).catch(() => {});
  await removeEntry(dirs, aside).catch(() => {});
}

/** Entry `name` of the target, read whole (a marker is a few hundred bytes), never through a link. */
async function readEntry(dirs: RestoreDirectories, name: string): Promise<{ text: string; info: BigIntStats }> {
  return dirs.withEntry(name, async (path) => {
    const file = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      const info = await file.stat({ bigint: true });
      const buffer = Buffer.alloc(MARKER_MAX_BYTES);
      const { bytesRead } = info.isFile() ? await file.read(buffer, 0, buffer.length, 0) : { bytesRead: 0 };
      return { text: buffer.subarray(0, bytesRead).toString("utf8"), info };
    } finally {
      await file.close();
    }
  });
}

/** `text` as a marker, checked against the schema; undefined where it is not one. */
async function parseMarker(text: string): Promise<Marker | undefined> {
  markerSchema ??= markerSchemaOf((await import("zod")).z);
  try {
    const parsed = markerSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** The claim of the marker under `name`, if that is one. */
async function readClaim(dirs: RestoreDirectories, name: string): Promise<string | undefined> {
  const entry = await readEntry(dirs, name).catch(() => undefined);
  if (!entry) return undefined;
  // The claim alone, not the whole marker checked (which loads zod): whose marker it is, compared with a claim.
  try {
    const { claim } = JSON.parse(entry.text) as { claim?: unknown };
    return typeof claim === "string" && CLAIM.test(claim) ? claim : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The marker under `name` in the target (`own`: the target's stat), and when it was last touched (ms since the
 * epoch). Refused unless it is one this agent's user wrote for this directory.
 */
async function readMarker(
  dirs: RestoreDirectories,
  target: string,
  own: BigIntStats,
  name: string,
): Promise<{ marker: Marker; touched: number }> {
  const entry = await readEntry(dirs, name).catch((err: NodeJS.ErrnoException) => {
    // Gone since the target was listed: another restore moved it aside to take it over, or finished.
    if (err.code === "ENOENT") throw takenMeanwhile(target);
    throw new Error(`cannot read ${name} in the restore target ${target}: ${err.message}`);
  });
  const marker = await parseMarker(entry.text);
  // Empty or cut short (a restore creating it this moment, or one killed while it did), another user's (not
  // this agent's to judge), or written for another directory (copied in with a tree): nothing is removed on it.
  const ours =
    marker !== undefined &&
    entry.info.isFile() &&
    entry.info.uid === BigInt(process.geteuid?.() ?? -1) &&
    marker.targetDev === String(own.dev) &&
    marker.targetIno === String(own.ino);
  if (!ours) {
    throw new Error(
      `the restore target ${target} holds ${name}, which is not a marker this agent wrote for it (empty, cut ` +
        "short, another user's, or copied from elsewhere); if no restore is running into it, remove that file " +
        "(and what an interrupted restore left there) and restore again",
    );
  }
  return { marker, touched: Number(entry.info.mtimeMs) };
}

/**
 * The takeover of an interrupted restore's target refused: `changed` (changedAfter's) was changed after that
 * restore (its marker `found`) could still write.
 */
function changedSinceInterrupted(
  target: string,
  found: { marker: Marker; touched: number },
  changed: { paths: string[]; count: number },
): Error {
  const m = found.marker;
  const more = changed.count - changed.paths.length;
  return new Error(
    `the restore target ${target} holds what an interrupted restore left (snapshot ${m.snapshot.slice(0, 12)}, ` +
      `pid ${m.pid} on ${m.hostname}, since ${m.started}), and also what was changed after that restore stopped ` +
      `(its marker ${RESTORE_MARKER} was last touched at ${new Date(found.touched).toISOString()}), which is not ` +
      `its to clear: ${changed.paths.map((p) => JSON.stringify(p)).join(", ")}${more > 0 ? `, and ${more} more` : ""}. ` +
      "Nothing was removed. Move them out of the target (a directory named, whole: something was added to it or " +
      "removed from it), or restore into another directory, then restore again",
  );
}

function takenMeanwhile(target: string): Error {
  return new Error(`another restore into ${target} began meanwhile; wait for it, or stop it and restore again`);
}
