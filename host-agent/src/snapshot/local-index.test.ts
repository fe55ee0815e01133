import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  LocalIndex,
  type LocalIndexFile,
  loadLocalIndex,
  localIndexPath,
  type RawLocalIndexFile,
  readLocalIndex,
  saveLocalIndex,
  UNUSED_LOCAL_INDEX_MS,
} from "./local-index.js";

const root = await mkdtemp(join(tmpdir(), "dumont-local-index-"));
afterAll(() => rm(root, { recursive: true, force: true }));
let n = 0;
const freshState = () => join(root, `state-${++n}`);

const id = (seed: number) => seed.toString(16).padStart(64, "0");
const FILES: LocalIndexFile[] = [
  {
    path: "weights/model.bin",
    size: 3_000_000,
    mtimeNs: 1_700_000_000_123_456_789n,
    ino: 2n ** 63n + 5n,
    ctimeNs: 1_700_000_100_000_000_001n,
    chunks: [id(1), id(2), id(1)],
    lengths: [1_000_000, 1_500_000, 500_000],
  },
  { path: "empty", size: 0, mtimeNs: -5n, ino: 7n, ctimeNs: 6n, chunks: [], lengths: [] },
  { path: "notes/å ü 名前.txt", size: 12, mtimeNs: 9n, ino: 8n, ctimeNs: 10n, chunks: [id(3)], lengths: [12] },
];

async function saved(scope = "repo-1 /src"): Promise<string> {
  const file = localIndexPath(freshState(), scope);
  await saveLocalIndex(file, { scope, snapshot: "snap-1", manifests: ["m1"], files: FILES });
  return file;
}

describe("local index", () => {
  it("gives back every file it saved, and only while size, mtime, inode and ctime are unchanged", async () => {
    const file = await saved();
    const index = await loadLocalIndex(file, "repo-1 /src");
    expect(index.files).toBe(3);
    for (const f of FILES) {
      const i = index.find(f.path, f.size, f.mtimeNs, f.ino, f.ctimeNs);
      expect(i).toBeGreaterThanOrEqual(0);
      expect(index.chunks(i)).toEqual(f.chunks);
      expect(index.lengths(i)).toEqual(f.lengths);
    }
    const [model] = FILES;
    const { path, size, mtimeNs, ino, ctimeNs } = model;
    expect(index.find(path, size + 1, mtimeNs, ino, ctimeNs)).toBe(-1);
    expect(index.find(path, size, mtimeNs + 1n, ino, ctimeNs)).toBe(-1);
    expect(index.find(path, size, mtimeNs, ino - 1n, ctimeNs)).toBe(-1);
    // Rewritten in place at its size, its mtime set back: only the ctime tells.
    expect(index.find(path, size, mtimeNs, ino, ctimeNs + 1n)).toBe(-1);
    expect(index.find("weights/other.bin", size, mtimeNs, ino, ctimeNs)).toBe(-1);
    expect(index.distinctIds().toString("hex")).toBe(id(1) + id(2) + id(3));
  });

  it("remembers its manifest parts by the digest of their plain JSON, when saved with them", async () => {
    const file = localIndexPath(freshState(), "parts");
    const manifests = [id(7), id(8)];
    await saveLocalIndex(file, {
      scope: "parts",
      snapshot: "s",
      manifests,
      manifestPlains: [id(1), id(2)],
      files: FILES,
    });
    const index = await loadLocalIndex(file, "parts");
    expect([...index.storedParts]).toEqual([
      [id(1), id(7)],
      [id(2), id(8)],
    ]);
    expect(index.files).toBe(3);
    // Without them (an index of an older agent) there is nothing to name; a mismatched list is not saved.
    expect((await loadLocalIndex(await saved(), "repo-1 /src")).storedParts.size).toBe(0);
    await expect(
      saveLocalIndex(file, { scope: "parts", snapshot: "t", manifests, manifestPlains: [id(1)], files: FILES }),
    ).rejects.toThrow(/1 plain digests for 2 manifest parts/);
    expect((await loadLocalIndex(file, "parts")).storedParts.size).toBe(2);
  });

  it("is empty when there is none, it belongs to another scope, or any byte of it is damaged", async () => {
    expect((await loadLocalIndex(join(freshState(), "none.idx"), "s")).files).toBe(0);
    const file = await saved("scope A");
    expect((await loadLocalIndex(file, "scope B")).files).toBe(0);
    const good = await readFile(file);
    for (const at of [0, 25, 200, good.length - 40, good.length - 1]) {
      const bad = Buffer.from(good);
      bad[at] ^= 0x10;
      await writeFile(file, bad);
      expect((await loadLocalIndex(file, "scope A")).files).toBe(0);
    }
    await writeFile(file, good.subarray(0, good.length - 8));
    expect((await loadLocalIndex(file, "scope A")).files).toBe(0);
    await writeFile(file, good);
    expect((await loadLocalIndex(file, "scope A")).files).toBe(3);
  });

  it("says why one there could not be used, and nothing of none, another scope's or another format's", async () => {
    expect(await readLocalIndex(join(freshState(), "none.idx"), "s")).toEqual({ index: expect.any(LocalIndex) });
    const file = await saved("scope A");
    expect((await readLocalIndex(file, "scope B")).unusable).toBeUndefined();
    const good = await readFile(file);
    const flipped = Buffer.from(good);
    flipped[200] ^= 0x10;
    await writeFile(file, flipped);
    expect(await readLocalIndex(file, "scope A")).toMatchObject({
      index: { files: 0 },
      unusable: "damaged: bad digest",
    });
    await writeFile(file, "{}");
    expect((await readLocalIndex(file, "scope A")).unusable).toBe("damaged: not a local index");
    // A directory where the file should be: unreadable, said so, not thrown.
    const dir = join(freshState(), "dir.idx");
    await mkdir(dir, { recursive: true });
    expect((await readLocalIndex(dir, "scope A")).unusable).toMatch(/EISDIR/);
    // Format 2 (an agent before ctime was kept) or a later one: read as none, not damaged.
    const body = good.subarray(0, good.length - 32);
    const other = Buffer.from(body.toString("latin1").replace('"version":3', '"version":2'), "latin1");
    expect(other.equals(body)).toBe(false);
    await writeFile(file, Buffer.concat([other, createHash("sha256").update(other).digest()]));
    expect(await readLocalIndex(file, "scope A")).toEqual({ index: expect.any(LocalIndex) });
    expect((await readLocalIndex(file, "scope A")).index.files).toBe(0);
  });

  it("is empty when its digest holds but its columns disagree (lengths that do not add up to the size)", async () => {
    const file = await saved();
    const data = await readFile(file);
    const length = Buffer.alloc(4);
    length.writeUInt32LE(1_500_000);
    const at = data.indexOf(length);
    expect(at).toBeGreaterThan(0);
    data.writeUInt32LE(1_400_000, at);
    createHash("sha256")
      .update(data.subarray(0, data.length - 32))
      .digest()
      .copy(data, data.length - 32);
    await writeFile(file, data);
    expect((await loadLocalIndex(file, "repo-1 /src")).files).toBe(0);
  });

  it("takes an index an older agent left (format 1 JSON, format 2: no ctime) as none, and replaces it", async () => {
    const file = localIndexPath(freshState(), "scope");
    const legacy = file.replace(/\.idx$/, ".json");
    const f = FILES[2];
    const entry = {
      size: f.size,
      mtimeNs: String(f.mtimeNs),
      ino: String(f.ino),
      chunks: f.chunks,
      lengths: f.lengths,
    };
    await mkdir(dirname(legacy), { recursive: true });
    await writeFile(legacy, JSON.stringify({ version: 1, scope: "scope", snapshot: "s", files: { [f.path]: entry } }));
    expect((await loadLocalIndex(file, "scope")).files).toBe(0);
    // Format 2: an index whose header says version 2 (its digest right) is not read either.
    await saveLocalIndex(file, { scope: "scope", snapshot: "s1", manifests: [], files: FILES });
    expect((await loadLocalIndex(file, "scope")).files).toBe(3);
    const data = await readFile(file);
    const at = data.indexOf('"version":3');
    data.write('"version":2', at, "latin1");
    createHash("sha256")
      .update(data.subarray(0, data.length - 32))
      .digest()
      .copy(data, data.length - 32);
    await writeFile(file, data);
    expect((await loadLocalIndex(file, "scope")).files).toBe(0);

    await saveLocalIndex(file, { scope: "scope", snapshot: "s2", manifests: [], files: FILES });
    expect(await stat(legacy).catch(() => undefined)).toBeUndefined();
    expect((await loadLocalIndex(file, "scope")).files).toBe(3);
  });

  it("refuses to save a chunk id that is not 64 hex digits", async () => {
    const file = localIndexPath(freshState(), "scope");
    const bad = [{ ...FILES[2], chunks: ["abc"] }];
    await expect(saveLocalIndex(file, { scope: "scope", snapshot: "s", manifests: [], files: bad })).rejects.toThrow(
      /bad chunk id/,
    );
    expect(LocalIndex.fromFiles(FILES).files).toBe(3);
  });

  it("sorts distinct ids by all their bytes when their first bytes agree", () => {
    // Ids that share their first 4 bytes (the sort's key), some their first 20, some repeated.
    const raw = (n: number) => {
      const b = createHash("sha256").update(String(n)).digest();
      if (n % 3 === 0) b.writeUInt32BE(0xdeadbeef, 0);
      if (n % 5 === 0) b.fill(0, 0, 20);
      return b;
    };
    const files = Array.from({ length: 2000 }, (_, i) => ({
      path: `f${i}`,
      size: 2,
      mtimeNs: 1n,
      ino: BigInt(i),
      ctimeNs: 1n,
      chunks: [raw(i % 1500).toString("hex"), raw((7 * i) % 1700).toString("hex")],
      lengths: [1, 1],
    }));
    const expected = [...new Set(files.flatMap((f) => f.chunks))].sort().join("");
    expect(LocalIndex.fromFiles(files).distinctIds().toString("hex")).toBe(expected);
  });

  it("saves files given as raw ids from any iterable, finds many paths, and sorts their distinct ids", async () => {
    const raw = (n: number) => createHash("sha256").update(String(n)).digest();
    const count = 3000;
    // Two of every id but the last: distinctIds must keep one of each, in byte order.
    function* files(): Generator<RawLocalIndexFile> {
      for (let i = 0; i < count; i++) {
        const ids = Buffer.concat([raw(i), raw(i + 1)]);
        yield {
          path: `dir ${i % 7}/file-${i}.py`,
          size: 4 + i,
          mtimeNs: BigInt(i),
          ino: BigInt(10 * i),
          ctimeNs: BigInt(i),
          ids,
          lengths: [3, i + 1],
        };
      }
    }
    const file = localIndexPath(freshState(), "scope");
    await saveLocalIndex(file, { scope: "scope", snapshot: "s", manifests: [], files: { [Symbol.iterator]: files } });
    const index = await loadLocalIndex(file, "scope");
    expect(index.files).toBe(count);
    for (const i of [0, 1, 1234, count - 1]) {
      const at = index.find(`dir ${i % 7}/file-${i}.py`, 4 + i, BigInt(i), BigInt(10 * i), BigInt(i));
      expect(at).toBe(i);
      expect(index.chunks(at)).toEqual([raw(i).toString("hex"), raw(i + 1).toString("hex")]);
      expect(index.chunkIds(at).equals(Buffer.concat([raw(i), raw(i + 1)]))).toBe(true);
      expect([...index.chunkLengths(at)]).toEqual([3, i + 1]);
    }
    expect(index.find("dir 0/file-1.py", 5, 1n, 10n, 1n)).toBe(-1);
    const distinct = index.distinctIds();
    const expected = Array.from({ length: count + 1 }, (_, n) => raw(n)).sort(Buffer.compare);
    expect(distinct.equals(Buffer.concat(expected))).toBe(true);
    // Ids that do not match their lengths are refused, and nothing is written.
    const bad: RawLocalIndexFile = {
      path: "x",
      size: 1,
      mtimeNs: 1n,
      ino: 1n,
      ctimeNs: 1n,
      ids: raw(1).subarray(0, 31),
      lengths: [1],
    };
    await expect(saveLocalIndex(file, { scope: "scope", snapshot: "t", manifests: [], files: [bad] })).rejects.toThrow(
      /31 bytes of ids for 1 chunks/,
    );
    expect((await loadLocalIndex(file, "scope")).files).toBe(count);
  });

  it("finds the last of two files saved with the same path", () => {
    const twice = [FILES[2], { ...FILES[2], size: 5, chunks: [id(9)], lengths: [5] }];
    const index = LocalIndex.fromFiles(twice);
    const { path, size, mtimeNs, ino, ctimeNs } = FILES[2];
    expect(index.find(path, size, mtimeNs, ino, ctimeNs)).toBe(-1);
    expect(index.chunks(index.find(path, 5, mtimeNs, ino, ctimeNs))).toEqual([id(9)]);
  });
});

describe("the local index directory", () => {
  it("loses other scopes' indexes unused for a month and crashed saves' temp files at the next save", async () => {
    const stateDir = freshState();
    const file = localIndexPath(stateDir, "kept");
    const dir = dirname(file);
    await mkdir(dir, { recursive: true });
    const at = async (name: string, ageMs: number) => {
      await writeFile(join(dir, name), "x");
      const t = (Date.now() - ageMs) / 1000;
      await utimes(join(dir, name), t, t);
    };
    const day = 24 * 3600 * 1000;
    const recent = localIndexPath(stateDir, "used last week");
    const stale = localIndexPath(stateDir, "a job that ended");
    await at(recent.slice(dir.length + 1), 7 * day);
    await at(stale.slice(dir.length + 1), UNUSED_LOCAL_INDEX_MS + day);
    await at(`${stale.slice(dir.length + 1, -".idx".length)}.json`, UNUSED_LOCAL_INDEX_MS + day); // format 1
    await at(".0123456789abcdef0123456789abcdef.idx.a1b2c3d4e5f6.tmp", 2 * 3600 * 1000); // a crashed save
    await at(".fedcba9876543210fedcba9876543210.idx.a1b2c3d4e5f6.tmp", 1000); // a save under way
    await at("notes.txt", UNUSED_LOCAL_INDEX_MS + day); // not the index's to delete
    await saveLocalIndex(file, { scope: "kept", snapshot: "s", manifests: [], files: FILES });
    expect((await readdir(dir)).sort()).toEqual(
      [
        file.slice(dir.length + 1),
        recent.slice(dir.length + 1),
        ".fedcba9876543210fedcba9876543210.idx.a1b2c3d4e5f6.tmp",
        "notes.txt",
      ].sort(),
    );
    expect((await loadLocalIndex(file, "kept")).files).toBe(FILES.length);
  });
});
