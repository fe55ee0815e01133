// Whether a new file:// repository would land on the wrong filesystem: under a mount point /etc/fstab or a systemd
// mount unit names that is not mounted (a backup disk unplugged, a NAS share whose mount failed at boot). Direct mode's create,
// and the control plane's first snapshot of a tenant, make a repository where there is none: there they would
// quietly start one on the filesystem below, and the snapshots the operator believes are on the backup disk would
// be on the machine they back up. restic avoids it by asking for `init`; we ask where fstab or a mount unit says
// something else belongs. (autofs maps are not read: an autofs mount point mounts when the path is touched.)
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { RepositoryError } from "./errors.js";
import { parseRepositoryUrl } from "./open-blob-store.js";
import { realPath } from "./real-path.js";

export interface MountTables {
  /** /etc/fstab's text (what should be mounted), or undefined where there is none. */
  fstab: string | undefined;
  /** /proc/self/mountinfo's text (what is mounted), or undefined where it cannot be read. */
  mountinfo: string | undefined;
  /** The systemd mount units an administrator wrote (/etc/systemd/system/*.mount): each file's name and text. */
  mountUnits?: { name: string; text: string }[];
}

/** Where administrators put their own systemd units (generated and packaged ones are fstab's or the system's). */
const SYSTEMD_UNITS = "/etc/systemd/system";

/** The machine's tables, each undefined where it cannot be read (no fstab in a container: nothing to check). */
export function readMountTables(): MountTables {
  const read = (file: string) => {
    try {
      return readFileSync(file, "utf8");
    } catch {
      return undefined;
    }
  };
  const mountUnits: { name: string; text: string }[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(SYSTEMD_UNITS).filter((name) => name.endsWith(".mount"));
  } catch {
    // no systemd here
  }
  for (const name of names) {
    const text = read(path.join(SYSTEMD_UNITS, name));
    if (text !== undefined) mountUnits.push({ name, text });
  }
  return { fstab: read("/etc/fstab"), mountinfo: read("/proc/self/mountinfo"), mountUnits };
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

/**
 * The mount point a systemd mount unit names (its [Mount] section's Where=, which systemd requires to match the
 * unit's name), or undefined where it names none.
 */
export function mountUnitWhere(text: string): string | undefined {
  let section = "";
  let where: string | undefined;
  for (const line of text.split("\n")) {
    const trimmed = line.trim();
    const setting = /^Where\s*=\s*(.*)$/.exec(trimmed);
    if (trimmed.startsWith("[")) section = trimmed;
    else if (section === "[Mount]" && setting) where = setting[1].trim();
  }
  if (!where?.startsWith("/")) return undefined;
  const normal = path.normalize(where);
  return normal.length > 1 ? normal.replace(/\/+$/, "") : normal;
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

/** A mount point that should be mounted, what says so ("/etc/fstab", "the systemd unit mnt-backup.mount"), and the
 * command that mounts it. */
export interface ExpectedMount {
  point: string;
  namedBy: string;
  mountCommand: string;
}

function expectedMounts(tables: MountTables): ExpectedMount[] {
  const expected = fstabMountPoints(tables.fstab ?? "").map((point) => ({
    point,
    namedBy: "/etc/fstab",
    mountCommand: `mount ${point}`,
  }));
  for (const unit of tables.mountUnits ?? []) {
    const point = mountUnitWhere(unit.text);
    if (point === undefined) continue;
    expected.push({ point, namedBy: `the systemd unit ${unit.name}`, mountCommand: `systemctl start ${unit.name}` });
  }
  return expected;
}

/**
 * The mount point named by fstab or a mount unit that `dir` lies in (the deepest naming it or a directory above
 * it), when that one is not mounted and no mount deeper than it (one neither names: a ZFS dataset, a mount by
 * hand) holds `dir` either; undefined otherwise, or when mountinfo is missing. The named points are compared as
 * written: resolving each would touch every mount they name, and a hard NFS mount whose server is gone would hang.
 */
export function unmountedMountPointOf(dir: string, tables: MountTables): ExpectedMount | undefined {
  if (tables.mountinfo === undefined) return undefined;
  const expected = expectedMounts(tables);
  if (expected.length === 0) return undefined;
  const at = realPath(path.resolve(dir));
  const point = deepestHolding(
    expected.map((e) => e.point),
    at,
  );
  if (point === undefined || point === "/") return undefined;
  const mounted = mountedPoints(tables.mountinfo);
  if (mounted.has(point)) return undefined;
  const holding = deepestHolding(mounted, at);
  if (holding !== undefined && holding.length > point.length) return undefined;
  return expected.find((e) => e.point === point);
}

/**
 * Refuses to make a repository at `url` (file://; s3:// is never refused) under a mount point /etc/fstab or a
 * systemd mount unit names that is not mounted now. `named` is how the caller knows the URL ("--repo URL", "DUMONT_BLOB_STORE's URL").
 */
export function refuseUnmountedNewRepository(
  url: string,
  named: string,
  tables: MountTables = readMountTables(),
): void {
  const location = parseRepositoryUrl(url);
  if (location.kind !== "file") return;
  const unmounted = unmountedMountPointOf(location.path, tables);
  if (unmounted === undefined) return;
  const { point, namedBy, mountCommand } = unmounted;
  throw new RepositoryError(
    "unavailable",
    `${named} has no repository yet and lies under ${point}, which ${namedBy} mounts but is not mounted now: a new ` +
      `repository there would land on the filesystem below it. Mount it (${mountCommand}) and run again; to keep ` +
      `the repository on this filesystem, use a path outside ${point}`,
  );
}
