// The page-aligned stages O_DIRECT writes go through are kept for the whole process, not per store: the control
// plane keeps a store per tenant, and each holding its own idle stages used up the page-aligned memory a process
// may have (alignedMemory's cap of 48) after ~24 tenants, so every later write, of any tenant, went buffered.
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { liveAlignedMemories } from "./aligned-memory.js";
import { FileBlobStore } from "./file-blob-store.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "dumont-stages-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

it("keeps page-aligned memory bounded however many stores (tenants) write packs", async () => {
  const before = liveAlignedMemories();
  const data = randomBytes(3 * 1024 * 1024); // past the size written with O_DIRECT, through the stages
  const stores: FileBlobStore[] = []; // held, as the control plane holds its tenants' stores
  for (let tenant = 0; tenant < 40; tenant++) {
    const store = new FileBlobStore(join(dir, `tenant-${tenant}`));
    stores.push(store);
    await store.put("data/ab/pack", data);
    const writer = await store.openWriter("data/cd/pack");
    await writer.write(data);
    await writer.commit();
  }
  // Stages reused from one process-wide pool: a few made in all, not a few per store.
  expect(liveAlignedMemories() - before).toBeLessThanOrEqual(8);
  expect(stores).toHaveLength(40);
});
