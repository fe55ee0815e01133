// When a whole restore's target takes its snapshot's mode: before the restore's marker goes, so a kill between
// the two cannot leave a target that reads as whole (no marker) yet is 0700 and the restorer's.
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { generateRepositoryKey } from "@dumont/repository";
import { afterAll, beforeAll, expect, it, vi } from "vitest";
import { createDirectSnapshot, restoreDirectSnapshot } from "./direct-mode.js";
import { SnapshotWorkerPool } from "./worker-pool.js";

/** The target's mode each time a restore's marker was about to go. */
const modesAtFinish: number[] = [];
vi.mock("./restore-target.js", async (importOriginal) => {
  const real = await importOriginal<typeof import("./restore-target.js")>();
  return {
    ...real,
    claimTarget: async (...args: Parameters<typeof real.claimTarget>) => {
      const claimed = await real.claimTarget(...args);
      const finish = claimed.finish;
      claimed.finish = async (options) => {
        modesAtFinish.push((await stat(args[1])).mode & 0o7777);
        return finish(options);
      };
      return claimed;
    },
  };
});

let root: string;
let pool: SnapshotWorkerPool;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-marker-order-"));
  pool = new SnapshotWorkerPool({ threads: 1 });
});
afterAll(async () => {
  await pool.close();
  await rm(root, { recursive: true, force: true });
});

it("gives a whole restore's target its snapshot's mode before the restore's marker goes", async () => {
  const source = join(root, "source");
  await mkdir(source);
  await writeFile(join(source, "a.txt"), "hello\n");
  await chmod(source, 0o751);
  const repo = pathToFileURL(join(root, "repo")).href;
  const key = generateRepositoryKey();
  const { id } = await createDirectSnapshot({ repo, key, source, pool });
  const target = join(root, "target");
  await restoreDirectSnapshot({ repo, key, snapshotId: id, target, pool });
  expect(modesAtFinish).toEqual([0o751]);
  expect((await stat(target)).mode & 0o7777).toBe(0o751);
});
