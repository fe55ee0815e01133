// In a file of its own: the cap on live memories is per process, and this test uses it up.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { alignedBuffer, alignedMemory, isPageAligned, liveAlignedMemories, PAGE } from "./aligned-memory.js";
import { FileBlobStore } from "./file-blob-store.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "dumont-aligned-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("aligned memory", () => {
  it("is remembered as page-aligned, shared or not; views off a page boundary and other memory are not", () => {
    const plain = alignedMemory(100_000);
    const shared = alignedMemory(100_000, { shared: true });
    expect(plain).toBeInstanceOf(ArrayBuffer);
    expect(shared).toBeInstanceOf(SharedArrayBuffer);
    for (const memory of [plain, shared]) {
      expect(memory.byteLength).toBe(131_072); // whole 64 KiB pages
      expect(isPageAligned(Buffer.from(memory))).toBe(true);
      expect(isPageAligned(Buffer.from(memory, PAGE, 10))).toBe(true);
      expect(isPageAligned(Buffer.from(memory, 16, 10))).toBe(false);
    }
    expect(isPageAligned(Buffer.allocUnsafeSlow(PAGE))).toBe(false);
    expect(isPageAligned(Buffer.from(new SharedArrayBuffer(PAGE)))).toBe(false);
  });

  it("stops at a cap of live memories, and the file store then writes and reads through the page cache", async () => {
    const held: ArrayBuffer[] = [];
    while (isPageAligned(Buffer.from(alignedMemory(PAGE)))) {
      held.push(alignedMemory(PAGE));
      expect(held.length).toBeLessThan(200);
    }
    const cap = liveAlignedMemories();
    expect(cap).toBeGreaterThanOrEqual(32);
    // Past the cap: ordinary memory of the size asked, shared where asked, not taken for aligned.
    const shared = alignedMemory(100_000, { shared: true });
    expect(shared).toBeInstanceOf(SharedArrayBuffer);
    expect(shared.byteLength).toBe(131_072);
    expect(isPageAligned(Buffer.from(shared))).toBe(false);
    expect(liveAlignedMemories()).toBe(cap);

    // The store's stages are ordinary memory now: large objects are written buffered, whole and readable.
    const store = new FileBlobStore(join(dir, "capped"));
    const big = Buffer.alloc(5 * 1024 * 1024 + 3, 0x5a);
    await store.put("data/put", big);
    const writer = await store.openWriter("data/streamed");
    await writer.write(big);
    await writer.commit();
    for (const key of ["data/put", "data/streamed"]) {
      expect((await store.get(key)).equals(big), key).toBe(true);
      const got = await store.getRange(key, 4097, 70_000, alignedBuffer(70_000 + 2 * PAGE));
      expect(got.equals(big.subarray(4097, 74_097)), key).toBe(true);
    }
    held.length = 0;
  });
});
