// Whether a new file:// repository would land on the wrong filesystem: under a mount point /etc/fstab names
// that is not mounted (a backup disk unplugged, a NAS share whose mount failed at boot). Direct mode's create,
// and the control plane's first snapshot of a tenant, make a repository where there is none: there they would
// quietly start one on the filesystem below, and the snapshots the operator believes are on the backup disk would
// be on the machine they back up. restic avoids it by asking for `init`; we ask where fstab says something else
// belongs.
import { readFileSync } from "node:fs";
import path from "node:path";
import { RepositoryError } from "./errors.js";
import { parseRepositoryUrl } from "./open-blob-store.js";
import { realPath } from "./real-path.js";

export interface MountTables {
  /** /etc/fstab's text (what should be mounted), or undefined where there is none. */
  fstab: string | undefined;
  /** /proc/self/mountinfo's text (what is mounted), or undefined where it cannot be read. */
  mountinfo: string | undefined;
}

/** The machine's tables, each undefined where it cannot be read (no fstab in a container: nothing to check). */
export function readMountTables(): MountTables {
  const read = (file: string) => {
    try {
      return readFileSync(file, "utf8");
    } catch {
      return undefined;
    }
  };
  return { fstab: read("/etc/fstab"), mountinfo: read("/proc/self/mountinfo") };
}

/** fstab and mountinfo write a space, tab, newline or backslash in a path as \040, \011, \012 and \134. */
function unescapeOctal(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/** The mount points /etc/fstab names (second field), absolute paths only: swap's "none" and the like are not. */
export function fstabMountPoints(fstab: string): string[] {
  const points: string[] = [];
  for (const line of fstab.split("\n")) {
    const trimmed = line.trim();
    if (trimmed === "" || trimmed.startsWith("#")) continue;
    const fields = trimmed.split(/\s+/);
    if (fields.length < 2) continue;
    const point = unescapeOctal(fields[1]);
    if (point.startsWith("/")) points.push(path.normalize(point));
  }
  return points;
}

/** The mount points mounted now (mountinfo's fifth field). */
export function mountedPoints(mountinfo: string): Set<string> {
  const points = new Set<string>();
  for (const line of mountinfo.split("\n")) {
    const fields = line.split(" ");
    if (fields.length >= 5) points.add(path.normalize(unescapeOctal(fields[4])));
  }
  return points;
}

/** The deepest of `points` that `at` is or lies under ("/" holds everything), or undefined. */
function deepestHolding(points: Iterable<string>, at: string): string | undefined {
  let deepest: string | undefined;
  for (const point of points) {
    const inside = point === "/" || at === point || at.startsWith(`${point}/`);
    if (inside && (deepest === undefined || point.length > deepest.length)) deepest = point;
  }
  return deepest;
}

/**
 * The fstab mount point that `dir` lies in (the deepest naming it or a directory above it), when that one is not
 * mounted and no mount deeper than it (one fstab does not name: a ZFS dataset, a systemd mount unit, a mount by
 * hand) holds `dir` either; undefined otherwise, or when either table is missing. fstab's points are compared as
 * written: resolving each would touch every mount it names, and a hard NFS mount whose server is gone would hang.
 */
export function unmountedMountPointOf(dir: string, tables: MountTables): string | undefined {
  if (tables.fstab === undefined || tables.mountinfo === undefined) return undefined;
  const at = realPath(path.resolve(dir));
  const named = deepestHolding(fstabMountPoints(tables.fstab), at);
  if (named === undefined || named === "/") return undefined;
  const mounted = mountedPoints(tables.mountinfo);
  if (mounted.has(named)) return undefined;
  const holding = deepestHolding(mounted, at);
  return holding !== undefined && holding.length > named.length ? undefined : named;
}

/**
 * Refuses to make a repository at `url` (file://; s3:// is never refused) under a mount point /etc/fstab names
 * that is not mounted now. `named` is how the caller knows the URL ("--repo URL", "DUMONT_BLOB_STORE's URL").
 */
export function refuseUnmountedNewRepository(
  url: string,
  named: string,
  tables: MountTables = readMountTables(),
): void {
  const location = parseRepositoryUrl(url);
  if (location.kind !== "file") return;
  const point = unmountedMountPointOf(location.path, tables);
  if (point === undefined) return;
  throw new RepositoryError(
    "unavailable",
    `${named} has no repository yet and lies under ${point}, which /etc/fstab mounts but is not mounted now: a new ` +
      `repository there would land on the filesystem below it. Mount it (mount ${point}) and run again; to keep ` +
      `the repository on this filesystem, use a path outside ${point}`,
  );
}
