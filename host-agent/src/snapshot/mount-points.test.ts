// A new file:// repository is not made under a mount point /etc/fstab names that is not mounted.
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDirectSnapshot } from "./direct-mode.js";
import { fstabMountPoints, type MountTables, mountedPoints, unmountedMountPointOf } from "./mount-points.js";

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

describe("mount tables", () => {
  it("reads fstab's mount points, octal escapes undone, and leaves out swap and comments", () => {
    expect(fstabMountPoints(FSTAB)).toEqual(["/", "/mnt", "/mnt/backup", "/media/usb disk", "/tmp/ram"]);
    expect([...mountedPoints(mountinfo("/", "/media/usb disk"))]).toEqual(["/", "/media/usb disk"]);
  });

  it("names the deepest fstab mount point above a path when it is not mounted, and nothing otherwise", () => {
    const tables = (...mounted: string[]): MountTables => ({ fstab: FSTAB, mountinfo: mountinfo(...mounted) });
    // /mnt is mounted, /mnt/backup (the NAS) is not: a repository under it would land on /mnt's disk.
    expect(unmountedMountPointOf("/mnt/backup/dumont", tables("/", "/mnt"))).toBe("/mnt/backup");
    expect(unmountedMountPointOf("/mnt/backup", tables("/", "/mnt"))).toBe("/mnt/backup");
    expect(unmountedMountPointOf("/mnt/backup/dumont", tables("/", "/mnt", "/mnt/backup"))).toBeUndefined();
    expect(unmountedMountPointOf("/mnt/other", tables("/", "/mnt"))).toBe(undefined);
    expect(unmountedMountPointOf("/mnt/other", tables("/"))).toBe("/mnt");
    expect(unmountedMountPointOf("/media/usb disk/repo", tables("/"))).toBe("/media/usb disk");
    // A name that only begins like a mount point is not under it; / is always there.
    expect(unmountedMountPointOf("/mnt/backup2/repo", tables("/", "/mnt"))).toBeUndefined();
    expect(unmountedMountPointOf("/srv/repo", tables())).toBeUndefined();
    // No fstab (a container), or no mountinfo to compare with: nothing to go on, nothing refused.
    expect(unmountedMountPointOf("/mnt/backup/x", { fstab: undefined, mountinfo: mountinfo("/") })).toBeUndefined();
    expect(unmountedMountPointOf("/mnt/backup/x", { fstab: FSTAB, mountinfo: undefined })).toBeUndefined();
  });
});

describe("createDirectSnapshot under an unmounted mount point", () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "dumont-mount-"));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("refuses to make a repository there, makes nothing, and uses one that is already there", async () => {
    const source = join(root, "src");
    await mkdir(source);
    await writeFile(join(source, "a.txt"), "a");
    const disk = join(root, "backup-disk"); // fstab's mount point, its disk not mounted: an empty directory
    await mkdir(disk);
    const repoDir = join(disk, "dumont");
    const tables: MountTables = { fstab: `/dev/sdz1 ${disk} ext4 defaults 0 2\n`, mountinfo: mountinfo("/") };
    const options = {
      source,
      repo: pathToFileURL(repoDir).href,
      key: randomBytes(32),
      create: { mountTables: tables },
    };
    await expect(createDirectSnapshot(options)).rejects.toThrow(
      `--repo ${options.repo} has no repository yet and lies under ${disk}, which /etc/fstab mounts but is not ` +
        `mounted now: a new repository there would land on the filesystem below it. Mount it (mount ${disk})`,
    );
    expect(existsSync(repoDir)).toBe(false);
    // Mounted: made, and said.
    const made: string[] = [];
    const mounted = { fstab: tables.fstab, mountinfo: mountinfo("/", disk) };
    const first = await createDirectSnapshot({
      ...options,
      create: { mountTables: mounted, onCreated: (r) => made.push(r.id) },
    });
    expect(made).toHaveLength(1);
    // A repository that is there is used whatever the tables say (the check is for making one), and not made again.
    const second = await createDirectSnapshot({
      ...options,
      create: { ...options.create, onCreated: (r) => made.push(r.id) },
    });
    expect(second.id).not.toBe(first.id);
    expect(made).toHaveLength(1);
  });
});
