import { describe, expect, it } from "vitest";
import type { Manifest, ManifestEntry } from "./manifest.js";
import { diffLine, diffManifests } from "./manifest-diff.js";

const id = (c: string) => c.repeat(64);
const file = (path: string, chunks: string[], mode = 0o644, mtimeNs = "1"): ManifestEntry => ({
  type: "file",
  path,
  mode,
  mtimeNs,
  size: chunks.length * 100,
  chunks: chunks.map(id),
  lengths: chunks.map(() => 100),
});
const dir = (path: string): ManifestEntry => ({ type: "dir", path, mode: 0o755, mtimeNs: "1" });
const link = (path: string, target: string): ManifestEntry => ({
  type: "symlink",
  path,
  mode: 0o777,
  mtimeNs: "1",
  target,
});
const manifest = (...entries: ManifestEntry[]): Manifest => ({ version: 1, entries });

describe("diffManifests", () => {
  it("names each path added, removed, modified, changed in metadata or in type, and the chunk bytes", () => {
    const before = manifest(
      dir("d"),
      file("d/same.bin", ["a"]),
      file("d/grown.bin", ["b"]),
      file("d/chmod.sh", ["c"]),
      file("gone.txt", ["d", "a"]),
      link("latest", "ckpt/1"),
      file("was-file", ["e"]),
    );
    const after = manifest(
      dir("d"),
      file("d/same.bin", ["a"]),
      file("d/grown.bin", ["b", "f"]),
      file("d/chmod.sh", ["c"], 0o755),
      file("new.txt", ["g"]),
      link("latest", "ckpt/2"),
      dir("was-file"),
    );
    const { changes, summary } = diffManifests(before, after);
    expect(changes.map((c) => [c.change, c.path, c.sizeBefore, c.sizeAfter])).toEqual([
      ["metadata", "d/chmod.sh", 100, 100],
      ["modified", "d/grown.bin", 100, 200],
      ["removed", "gone.txt", 200, 0],
      ["modified", "latest", 0, 0],
      ["added", "new.txt", 0, 100],
      ["type", "was-file", 100, 0],
    ]);
    // Chunk a is still used (d/same.bin), so only d and e are dropped; f and g are new.
    expect(summary).toEqual({
      added: 1,
      removed: 1,
      modified: 2,
      metadata: 1,
      type: 1,
      bytesAdded: 200,
      bytesRemoved: 200,
    });
    expect(changes.map(diffLine)).toContain("U    d/chmod.sh");
    expect(diffLine({ path: "x", change: "renamed" as never, sizeBefore: 0, sizeAfter: 0 })).toBe("?    x");
    // A name with a newline stays on its line, quoted (as `snapshot ls` prints it).
    expect(diffLine({ path: "a\nb", change: "added", sizeBefore: 0, sizeAfter: 1 })).toBe('+    "a\\nb"');
  });

  it("counts a change of owner as metadata, but not an owner only one side recorded", () => {
    const owned = (uid: number | undefined, gid: number | undefined) => ({ ...file("f", ["a"]), uid, gid });
    const changed = (a: ManifestEntry, b: ManifestEntry) => diffManifests(manifest(a), manifest(b)).changes;
    expect(changed(owned(1000, 1000), owned(1001, 1000))).toEqual([
      { path: "f", change: "metadata", sizeBefore: 100, sizeAfter: 100 },
    ]);
    expect(changed(owned(1000, 1000), owned(1000, 0))).toHaveLength(1);
    expect(changed(owned(1000, 1000), owned(1000, 1000))).toEqual([]);
    expect(changed(file("f", ["a"]), owned(1000, 1000))).toEqual([]); // written before owners were kept
  });

  it("finds nothing between a snapshot and itself", () => {
    const m = manifest(dir("d"), file("d/a", ["a", "b"]), link("l", "d/a"));
    expect(diffManifests(m, m)).toEqual({
      changes: [],
      summary: { added: 0, removed: 0, modified: 0, metadata: 0, type: 0, bytesAdded: 0, bytesRemoved: 0 },
    });
  });
});
