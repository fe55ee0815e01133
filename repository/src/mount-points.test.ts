// A new file:// repository is not made under a mount point /etc/fstab names that is not mounted.
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import {
  fstabMountPoints,
  type MountTables,
  mountedPoints,
  mountUnitWhere,
  refuseUnmountedNewRepository,
  unmountedMountPointOf,
} from "./mount-points.js";

const FSTAB = `# /etc/fstab: static file system information.
UUID=1111-2222  /               ext4  errors=remount-ro 0 1
UUID=3333-4444  /mnt            ext4  defaults          0 2
//nas/backups   /mnt/backup     cifs  credentials=/root/.nas,noauto 0 0
/dev/sdb1       /media/usb\\040disk vfat noauto,user   0 0
/swapfile       none            swap  sw                0 0
tmpfs           /tmp/ram        tmpfs size=1G           0 0
`;

/** mountinfo lines for these mount points (the fields before and after the fifth are as the kernel writes them). */
function mountinfo(...points: string[]): string {
  return points
    .map((p, i) => `${20 + i} 1 8:${i} / ${p.replace(/ /g, "\\040")} rw,relatime shared:1 - ext4 /dev/sda${i} rw`)
    .join("\n");
}

/** The unmounted mount point named above `dir`, or undefined. */
const pointOf = (dir: string, tables: MountTables) => unmountedMountPointOf(dir, tables)?.point;

describe("mount tables", () => {
  it("reads fstab's mount points, octal escapes undone, and leaves out swap and comments", () => {
    expect(fstabMountPoints(FSTAB)).toEqual(["/", "/mnt", "/mnt/backup", "/media/usb disk", "/tmp/ram"]);
    expect([...mountedPoints(mountinfo("/", "/media/usb disk"))]).toEqual(["/", "/media/usb disk"]);
  });

  it("names the deepest fstab mount point above a path when it is not mounted, and nothing otherwise", () => {
    const tables = (...mounted: string[]): MountTables => ({ fstab: FSTAB, mountinfo: mountinfo(...mounted) });
    // /mnt is mounted, /mnt/backup (the NAS) is not: a repository under it would land on /mnt's disk.
    expect(pointOf("/mnt/backup/dumont", tables("/", "/mnt"))).toBe("/mnt/backup");
    expect(pointOf("/mnt/backup", tables("/", "/mnt"))).toBe("/mnt/backup");
    expect(pointOf("/mnt/backup/dumont", tables("/", "/mnt", "/mnt/backup"))).toBeUndefined();
    expect(pointOf("/mnt/other", tables("/", "/mnt"))).toBe(undefined);
    expect(pointOf("/mnt/other", tables("/"))).toBe("/mnt");
    expect(pointOf("/media/usb disk/repo", tables("/"))).toBe("/media/usb disk");
    // A mount fstab does not name, deeper than the unmounted one it does (a ZFS dataset, a systemd mount unit, a
    // mount by hand under a noauto entry), holds the path: nothing to refuse.
    expect(pointOf("/mnt/backup/usb/repo", tables("/", "/mnt", "/mnt/backup/usb"))).toBeUndefined();
    expect(pointOf("/mnt/backup/other", tables("/", "/mnt", "/mnt/backup/usb"))).toBe("/mnt/backup");
    // A name that only begins like a mount point is not under it; / is always there.
    expect(pointOf("/mnt/backup2/repo", tables("/", "/mnt"))).toBeUndefined();
    expect(pointOf("/srv/repo", tables())).toBeUndefined();
    // No fstab (a container), or no mountinfo to compare with: nothing to go on, nothing refused.
    expect(pointOf("/mnt/backup/x", { fstab: undefined, mountinfo: mountinfo("/") })).toBeUndefined();
    expect(pointOf("/mnt/backup/x", { fstab: FSTAB, mountinfo: undefined })).toBeUndefined();
  });

  it("refuses a new file:// repository under an unmounted mount point, saying what to do; never an s3:// one", () => {
    const tables = { fstab: FSTAB, mountinfo: mountinfo("/", "/mnt") };
    expect(() => refuseUnmountedNewRepository("file:///mnt/backup/dumont", "DUMONT_BLOB_STORE", tables)).toThrow(
      "DUMONT_BLOB_STORE has no repository yet and lies under /mnt/backup, which /etc/fstab mounts but is not mounted " +
        "now: a new repository there would land on the filesystem below it. Mount it (mount /mnt/backup) and run " +
        "again; to keep the repository on this filesystem, use a path outside /mnt/backup",
    );
    expect(() => refuseUnmountedNewRepository("file:///mnt/elsewhere", "x", tables)).not.toThrow();
    expect(() => refuseUnmountedNewRepository("s3://bucket/mnt/backup", "x", tables)).not.toThrow();
  });

  it("sees through a link to the unmounted disk, dangling because nothing is mounted there", () => {
    const root = realpathSync(mkdtempSync(path.join(os.tmpdir(), "dumont-mount-link-")));
    try {
      const point = path.join(root, "mnt", "backup");
      mkdirSync(point, { recursive: true }); // the empty directory an unmounted disk leaves
      symlinkSync(path.join(point, "dumont"), path.join(root, "repo"));
      const tables = { fstab: `/dev/sdb1 ${point} ext4 noauto 0 0\n`, mountinfo: mountinfo("/") };
      expect(pointOf(path.join(root, "repo"), tables)).toBe(point);
      expect(() => refuseUnmountedNewRepository(`file://${root}/repo`, "--repo", tables)).toThrow(
        `lies under ${point}, which /etc/fstab mounts but is not mounted now`,
      );
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("reads the mount points of systemd mount units too, and says to start the unit", () => {
    const unit = `# /etc/systemd/system/srv-nas.mount
[Unit]
Description=The NAS
# Where=/not/this

[Mount]
What=//nas/share
Where=/srv/nas
Type=cifs

[Install]
WantedBy=multi-user.target
`;
    expect(mountUnitWhere(unit)).toBe("/srv/nas");
    expect(mountUnitWhere("[Unit]\nWhere=/srv/x\n")).toBeUndefined(); // not in [Mount]
    expect(mountUnitWhere("[Mount]\nWhere=relative\n")).toBeUndefined();
    expect(mountUnitWhere("[Mount]\nWhere = /srv/nas/\n")).toBe("/srv/nas"); // spaces around =, a trailing slash
    const tables = (...mounted: string[]): MountTables => ({
      fstab: undefined, // none at all: the units alone are enough to go on
      mountinfo: mountinfo(...mounted),
      mountUnits: [{ name: "srv-nas.mount", text: unit }],
    });
    expect(unmountedMountPointOf("/srv/nas/dumont", tables("/"))).toEqual({
      point: "/srv/nas",
      namedBy: "the systemd unit srv-nas.mount",
      mountCommand: "systemctl start srv-nas.mount",
    });
    expect(pointOf("/srv/nas/dumont", tables("/", "/srv/nas"))).toBeUndefined();
    expect(pointOf("/srv/other", tables("/"))).toBeUndefined();
    expect(() => refuseUnmountedNewRepository("file:///srv/nas/dumont", "--repo", tables("/"))).toThrow(
      "lies under /srv/nas, which the systemd unit srv-nas.mount mounts but is not mounted now: a new repository " +
        "there would land on the filesystem below it. Mount it (systemctl start srv-nas.mount) and run again",
    );
    // With fstab too, the deepest of all the named points decides.
    const both = {
      ...tables("/", "/mnt"),
      fstab: FSTAB,
      mountUnits: [{ name: "mnt-backup-usb.mount", text: "[Mount]\nWhere=/mnt/backup/usb\n" }],
    };
    expect(unmountedMountPointOf("/mnt/backup/usb/r", both)?.namedBy).toBe("the systemd unit mnt-backup-usb.mount");
    expect(unmountedMountPointOf("/mnt/backup/r", both)?.namedBy).toBe("/etc/fstab");
  });
});
