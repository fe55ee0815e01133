// Write, then commit: every file the repository or the agent's state keeps is fsynced before it is renamed into
// place, and its directory fsynced after, before the call returns. A power loss then leaves the old object or
// the new one whole, never a name pointing at unwritten bytes. What the disk does is not visible to a test, so the
// calls are recorded in order: node:fs/promises passed through, each fsync and rename noted with its path.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";

const calls = vi.hoisted(() => ({ log: [] as string[] }));
vi.mock("node:fs/promises", async (original) => {
  const real = await original<typeof import("node:fs/promises")>();
  const open: typeof real.open = async (...args) => {
    const handle = await real.open(...args);
    const path = String(args[0]);
    const sync = handle.sync.bind(handle);
    handle.sync = async () => {
      await sync();
      calls.log.push(`fsync ${path}`);
    };
    return handle;
  };
  const rename: typeof real.rename = async (from, to) => {
    await real.rename(from, to);
    calls.log.push(`rename ${String(from)} -> ${String(to)}`);
  };
  return { ...real, default: { ...real, open, rename }, open, rename };
});

const { writeFileAtomic } = await import("./atomic-file.js");
const { FileBlobStore } = await import("./file-blob-store.js");

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "dumont-durable-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
beforeEach(() => {
  calls.log = [];
});

/** The fsyncs and renames that made `final`: the temp file's fsync, its rename to `final`, then its directory's. */
function expectWrittenThenCommitted(final: string): void {
  const rename = calls.log.findIndex((c) => c.endsWith(` -> ${final}`));
  expect(rename, `no rename to ${final} in ${calls.log.join("; ")}`).toBeGreaterThanOrEqual(0);
  const temp = calls.log[rename].slice("rename ".length, calls.log[rename].indexOf(" -> "));
  const fsyncedTemp = calls.log.indexOf(`fsync ${temp}`);
  expect(fsyncedTemp, `the temp file ${temp} was not fsynced before its rename`).toBeGreaterThanOrEqual(0);
  expect(fsyncedTemp).toBeLessThan(rename);
  expect(calls.log.indexOf(`fsync ${dirname(final)}`, rename), "the directory was not fsynced after").toBeGreaterThan(
    rename,
  );
}

describe("durable writes", () => {
  it("writeFileAtomic fsyncs the file before its rename and the directory after", async () => {
    const file = join(dir, "key.pem");
    await writeFileAtomic(file, "secret\n", 0o600);
    expectWrittenThenCommitted(file);
  });

  it("the file:// store's put, small and large, and its pack writer's commit do the same", async () => {
    const store = new FileBlobStore(join(dir, "store"));
    await store.put("index/aa", Buffer.alloc(100, 1));
    expectWrittenThenCommitted(join(dir, "store", "index", "aa"));
    calls.log = [];
    await store.put("data/bb/pack", Buffer.alloc(2 * 1024 * 1024, 2)); // written with O_DIRECT where it can be
    expectWrittenThenCommitted(join(dir, "store", "data", "bb", "pack"));
    calls.log = [];
    const writer = await store.openWriter("data/cc/pack");
    await writer.write(Buffer.alloc(3 * 1024 * 1024, 3));
    await writer.commit();
    expectWrittenThenCommitted(join(dir, "store", "data", "cc", "pack"));
    await store.close();
  });
});
