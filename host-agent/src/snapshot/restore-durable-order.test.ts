// A restore's marker is durable before anything it guards is made: its file fsynced before it is linked into
// place, and the target directory fsynced after, before the first directory or file of the snapshot appears. A
// power loss then leaves either no marker and an empty target, or the marker with whatever was written (which the
// next restore clears): never restored-looking files without the marker that says they are incomplete. What the
// disk does is not visible to a test, so the calls are recorded in order: node:fs/promises passed through.
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { pathToFileURL } from "node:url";
import { generateRepositoryKey } from "@dumont/repository";
import { afterAll, beforeAll, expect, it, vi } from "vitest";

const calls = vi.hoisted(() => ({ log: [] as string[] }));
vi.mock("node:fs/promises", async (original) => {
  const real = await original<typeof import("node:fs/promises")>();
  // Entries are named by their last component: a restore reaches them through /proc/self/fd/N/name.
  const open: typeof real.open = async (...args) => {
    const handle = await real.open(...args);
    const name = basename(String(args[0]));
    const flags = typeof args[1] === "number" ? args[1] : 0;
    if (flags & constants.O_CREAT) calls.log.push(`create ${name}`);
    const sync = handle.sync.bind(handle);
    handle.sync = async () => {
      await sync();
      calls.log.push(`fsync ${name}`);
    };
    return handle;
  };
  const mkdir: typeof real.mkdir = (async (...args: Parameters<typeof real.mkdir>) => {
    const made = await real.mkdir(...args);
    calls.log.push(`mkdir ${basename(String(args[0]))}`);
    return made;
  }) as typeof real.mkdir;
  const link: typeof real.link = async (from, to) => {
    await real.link(from, to);
    calls.log.push(`link ${basename(String(from))} -> ${basename(String(to))}`);
  };
  return { ...real, default: { ...real, open, mkdir, link }, open, mkdir, link };
});

const { createDirectSnapshot, restoreDirectSnapshot } = await import("./direct-mode.js");
const { SnapshotWorkerPool } = await import("./worker-pool.js");
const { RESTORE_MARKER } = await import("./restore-target.js");
const { writeFile, mkdir } = await import("node:fs/promises");

let root: string;
let pool: InstanceType<typeof SnapshotWorkerPool>;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-restore-durable-"));
  pool = new SnapshotWorkerPool({ threads: 1 });
});
afterAll(async () => {
  await pool.close();
  await rm(root, { recursive: true, force: true });
});

it("makes the restore's marker durable (file, then the target directory) before the snapshot's first entry", async () => {
  const source = join(root, "source");
  await mkdir(join(source, "sub"), { recursive: true });
  // More than one chunk: created here, on the main thread, where the calls are seen (one-chunk files are made by
  // the workers).
  const chunker = { minSize: 16 * 1024, avgSize: 64 * 1024, maxSize: 256 * 1024 };
  await writeFile(join(source, "sub", "big.bin"), randomBytes(1024 * 1024));
  const repo = pathToFileURL(join(root, "repo")).href;
  const key = generateRepositoryKey();
  const { id } = await createDirectSnapshot({ repo, key, source, pool, chunker });
  const target = join(root, "target");
  calls.log = [];
  await restoreDirectSnapshot({ repo, key, snapshotId: id, target, pool });

  const log = calls.log;
  const linked = log.findIndex((c) => c.startsWith("link ") && c.endsWith(` -> ${RESTORE_MARKER}`));
  expect(linked, `no marker linked into place in ${log.join("; ")}`).toBeGreaterThanOrEqual(0);
  const temp = log[linked].slice("link ".length, log[linked].indexOf(" -> "));
  const markerSynced = log.indexOf(`fsync ${temp}`);
  expect(markerSynced, `the marker ${temp} was not fsynced before it was linked`).toBeGreaterThanOrEqual(0);
  expect(markerSynced).toBeLessThan(linked);
  const targetSynced = log.indexOf("fsync target", linked);
  expect(targetSynced, "the target directory was not fsynced after the marker was linked").toBeGreaterThan(linked);
  const firstEntry = log.findIndex((c) => c === "mkdir sub" || c === "create big.bin");
  expect(firstEntry, `nothing of the snapshot was made: ${log.join("; ")}`).toBeGreaterThan(targetSynced);
});
