import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { openPackTrailer, PackEntryList, type PackIndex, sealPackTrailer } from "./pack.js";
import { RepositoryIndex } from "./repository-index.js";

/** A pack of `ids`, each chunk 100 bytes after the last. */
function pack(packId: string, ids: Buffer[]): PackIndex {
  return {
    packId,
    packSize: 100 * ids.length + 64,
    entries: ids.map((id, i) => ({ id, offset: 100 * i, length: 100, plainLength: 150 + i })),
  };
}

describe("repository index", () => {
  it("finds every chunk by raw id or hex, across thousands of packs and table growths", () => {
    const index = new RepositoryIndex();
    const packs = Array.from({ length: 3_000 }, (_, p) => pack(`pack-${p}`, [randomBytes(32), randomBytes(32)]));
    for (const p of packs) index.add(p);
    expect(index.chunkCount).toBe(6_000);
    expect(index.packs.size).toBe(3_000);
    for (const p of packs) {
      for (const [i, e] of p.entries.entries()) {
        const where = { packId: p.packId, offset: 100 * i, length: 100, plainLength: 150 + i };
        expect(index.get(e.id)).toEqual(where);
        expect(index.get(e.id.toString("hex"))).toEqual(where);
        expect(index.has(e.id)).toBe(true);
      }
    }
    expect(index.has(randomBytes(32))).toBe(false);
    expect(index.has("not hex")).toBe(false);
    expect(index.has(randomBytes(32).toString("hex").toUpperCase().slice(1))).toBe(false);
    expect(index.get(Buffer.alloc(5))).toBeUndefined();
    // A pack's entries read back as added.
    expect(index.packs.get("pack-7")?.entries).toEqual(packs[7].entries);
    expect(index.packs.get("pack-7")?.packSize).toBe(264);
  });

  it("finds a chunk held twice in the pack added last, and in the other once that one is removed", () => {
    const shared = randomBytes(32);
    const index = new RepositoryIndex();
    index.add(pack("a", [randomBytes(32), shared]));
    index.add(pack("b", [shared]));
    expect(index.chunkCount).toBe(2);
    expect(index.get(shared)?.packId).toBe("b");
    expect(index.packs.get("a")?.entries).toHaveLength(2);
    // Its totals count the chunk once (as the copy found: b's, 150 plain bytes), both packs' bytes in the store.
    expect(index.totals()).toEqual({ packs: 2, packBytes: 264 + 164, chunks: 2, plainBytes: 150 + 150 });

    const held = index.packs.get("b")!;
    index.removePacks(["b", "no such pack"]);
    expect(index.get(shared)).toEqual({ packId: "a", offset: 100, length: 100, plainLength: 151 });
    expect(index.chunkCount).toBe(2);
    expect([...index.packs.keys()]).toEqual(["a"]);
    // What a caller held of the removed pack still lists its entries (prune repacks from them).
    expect(held.entries.map((e) => e.id.toString("hex"))).toEqual([shared.toString("hex")]);

    index.removePacks(["a"]);
    expect(index.chunkCount).toBe(0);
    expect(index.has(shared)).toBe(false);
    index.add(pack("c", [shared]));
    expect(index.get(shared)?.packId).toBe("c");
  });

  it("lists every copy of a chunk, the one found first, then the others from the newest, through removals", () => {
    const [shared, other] = [randomBytes(32), randomBytes(32)];
    const index = new RepositoryIndex();
    index.add(pack("a", [other, shared]));
    index.add(pack("b", [shared]));
    index.add(pack("c", [randomBytes(32)]));
    index.add(pack("d", [randomBytes(32), randomBytes(32), shared]));
    const packsOf = (id: Buffer | string) => index.locations(id).map((l) => l.packId);
    expect(packsOf(shared)).toEqual(["d", "b", "a"]);
    expect(index.locations(shared.toString("hex"))[0]).toEqual(index.get(shared));
    expect(index.locations(shared)[2]).toEqual({ packId: "a", offset: 100, length: 100, plainLength: 151 });
    expect(packsOf(other)).toEqual(["a"]);
    expect(packsOf(randomBytes(32))).toEqual([]);
    expect(index.chunkCount).toBe(5);

    // Rebuilt without a pack, the others' copies are still listed, and a pack given again is a copy once.
    index.removePacks(["b"]);
    expect(packsOf(shared)).toEqual(["d", "a"]);
    index.add(pack("d", [randomBytes(32), randomBytes(32), shared]));
    expect(packsOf(shared)).toEqual(["d", "a"]);
    index.removePacks(["d"]);
    expect(packsOf(shared)).toEqual(["a"]);
    // A pack given again with other entries replaces the one held (repair-index), and a writer's list is a pack
    // like any: the copies follow.
    index.add(pack("a", [shared]));
    expect(index.locations(shared)).toEqual([{ packId: "a", offset: 0, length: 100, plainLength: 150 }]);
    const list = new PackEntryList();
    list.push(shared, 40, 100, 150);
    index.addList("e", 200, list);
    expect(packsOf(shared)).toEqual(["e", "a"]);
    expect(packsOf(other)).toEqual([]);
  });

  it("leaves a pack it holds as it is when given it again, and replaces one given with other entries", () => {
    // Two loads into one cached index, or a writer's pack a load has just read, add the same pack twice: each
    // time the whole index was rebuilt (seconds a million chunks).
    const [x, y, z] = [randomBytes(32), randomBytes(32), randomBytes(32)];
    const index = new RepositoryIndex();
    index.add(pack("a", [x, y]));
    index.add(pack("b", [z]));
    const view = index.packs.get("a");
    index.add(pack("a", [x, y]));
    const list = new PackEntryList();
    list.push(z, 0, 100, 150);
    index.addList("b", 164, list);
    expect(index.packs.get("a")).toBe(view); // not rebuilt
    expect(index.chunkCount).toBe(3);
    expect(index.get(z)).toEqual({ packId: "b", offset: 0, length: 100, plainLength: 150 });
    // Other entries (an index object repair-index rebuilt from the pack): the pack is replaced.
    index.add(pack("a", [x]));
    expect(index.packs.get("a")?.entries.map((e) => e.id.toString("hex"))).toEqual([x.toString("hex")]);
    expect(index.has(y)).toBe(false);
    expect(index.chunkCount).toBe(2);
  });

  it("refuses an entry it cannot hold rather than store it wrong", () => {
    const index = new RepositoryIndex();
    expect(() => index.add(pack("short", [Buffer.alloc(31)]))).toThrow(/not 32 bytes/);
    const huge: PackIndex = {
      packId: "huge",
      packSize: 1,
      entries: [{ id: randomBytes(32), offset: 2 ** 32, length: 1, plainLength: 1 }],
    };
    expect(() => index.add(huge)).toThrow(/out of range/);
    expect(index.packs.size).toBe(0);
    expect(index.chunkCount).toBe(0);
  });

  it("takes a writer's pack from the list it filled: the same entries, the same header, found by id", () => {
    const key = randomBytes(32);
    const entries = Array.from({ length: 1_500 }, (_, i) => ({
      id: randomBytes(32),
      offset: 100 * i,
      length: 100,
      plainLength: 150 + i,
    }));
    // Past the list's first growth (256 entries) and several of its table (512 slots).
    const list = new PackEntryList();
    for (const e of entries) {
      expect(list.has(e.id)).toBe(false);
      list.push(e.id, e.offset, e.length, e.plainLength);
      expect(list.has(e.id)).toBe(true);
    }
    expect(list.count).toBe(1_500);
    expect(list.has(randomBytes(32))).toBe(false);
    expect(list.has(randomBytes(31))).toBe(false);
    // Its header reads back as the entries, as one sealed from the array would.
    const trailer = sealPackTrailer(key, list);
    expect(openPackTrailer(key, trailer, "p")).toEqual(entries);
    expect(openPackTrailer(key, sealPackTrailer(key, entries), "p")).toEqual(entries);

    const index = new RepositoryIndex();
    index.addList("written", 150_064, list);
    expect(index.chunkCount).toBe(1_500);
    for (const [i, e] of entries.entries()) {
      expect(index.get(e.id)).toEqual({ packId: "written", offset: 100 * i, length: 100, plainLength: 150 + i });
    }
    expect(index.packs.get("written")?.entries).toEqual(entries);
    expect(() => list.push(randomBytes(16), 0, 1, 1)).toThrow(/32 bytes/);
  });
});
