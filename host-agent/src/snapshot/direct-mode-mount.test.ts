// Direct mode's create makes a repository where there is none, but not under an unmounted mount point.
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { MountTables } from "@dumont/repository";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDirectSnapshot } from "./direct-mode.js";

/** A mountinfo line mounting `point` (fields as the kernel writes them). */
const mountLine = (point: string) => `25 1 8:1 / ${point} rw,relatime shared:1 - ext4 /dev/sdz1 rw`;

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
    const tables: MountTables = { fstab: `/dev/sdz1 ${disk} ext4 defaults 0 2\n`, mountinfo: mountLine("/") };
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
    const mounted = { fstab: tables.fstab, mountinfo: [mountLine("/"), mountLine(disk)].join("\n") };
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
