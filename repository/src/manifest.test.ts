import { describe, expect, it } from "vitest";
import { isRepositoryError } from "./errors.js";
import { generateRepositoryKey } from "./key.js";
import {
  assertRestorable,
  type Manifest,
  type ManifestEntry,
  openManifest,
  sealManifest,
  symlinkEscapes,
} from "./manifest.js";

const dir = (path: string): ManifestEntry => ({ type: "dir", path, mode: 0o755, mtimeNs: "0" });
const file = (path: string): ManifestEntry => ({
  type: "file",
  path,
  mode: 0o644,
  mtimeNs: "0",
  size: 0,
  chunks: [],
  lengths: [],
});
const link = (path: string, target: string): ManifestEntry => ({
  type: "symlink",
  path,
  mode: 0o777,
  mtimeNs: "0",
  target,
});
const m = (...entries: ManifestEntry[]): Manifest => ({ version: 1, entries });

describe("assertRestorable", () => {
  it("accepts an ordinary tree with links that stay inside", () => {
    expect(() =>
      assertRestorable(
        m(dir("a"), dir("a/b"), file("a/b/c d ü.txt"), link("a/l", "b/c d ü.txt"), link("up", "a/../a")),
      ),
    ).not.toThrow();
  });

  it.each([
    ["an absolute path", m(file("/etc/passwd"))],
    ["a .. component", m(dir("a"), file("a/../../x"))],
    ["a . component", m(file("./x"))],
    ["an empty component", m(dir("a"), file("a//x"))],
    ["a duplicate", m(file("x"), file("x"))],
    ["an entry under a symlink", m(link("a", "."), file("a/x"))],
    ["an entry under a file", m(file("a"), file("a/x"))],
    ["an entry whose directory is missing", m(file("a/x"))],
    ["a symlink to an absolute path", m(link("l", "/etc"))],
    ["a symlink climbing out", m(dir("a"), link("a/l", "../../x"))],
    ["a symlink escaping through another symlink", m(link("a", "."), link("b", "a/.."))],
  ])("refuses %s", (_what, manifest) => {
    expect(() => assertRestorable(manifest)).toThrow(expect.objectContaining({ code: "invalid-manifest" }));
  });

  it("allows outward symlinks only when asked", () => {
    expect(() =>
      assertRestorable(m(link("python", "/usr/bin/python3")), { allowExternalSymlinks: true }),
    ).not.toThrow();
  });

  it("resolves nested links the way the kernel would", () => {
    const links = new Map([
      ["a", "b"],
      ["b", "c/d"],
    ]);
    // a -> b -> c/d: a/../.. is the root itself, one more .. leaves it (lexically it would not).
    expect(symlinkEscapes("x", "a/../..", links)).toBe(false);
    expect(symlinkEscapes("x", "a/../../..", links)).toBe(true);
    expect(symlinkEscapes("loop", "loop/x", new Map([["loop", "loop/x"]]))).toBe(true);
  });
});

describe("manifest sealing", () => {
  it("round-trips and rejects malformed or foreign blobs", () => {
    const key = generateRepositoryKey();
    const manifest = m(dir("a"), {
      type: "file",
      path: "a/f",
      mode: 0o600,
      mtimeNs: "1700000000123456789",
      size: 3,
      chunks: ["ab".repeat(32)],
      lengths: [3],
    });
    expect(openManifest(key, sealManifest(key, manifest))).toEqual(manifest);
    const lying = m({ ...(manifest.entries[1] as Extract<ManifestEntry, { type: "file" }>), size: 4 });
    expect(() => openManifest(key, sealManifest(key, lying))).toThrow(/add up to 3 bytes, not 4/);
    try {
      openManifest(generateRepositoryKey(), sealManifest(key, manifest));
      expect.unreachable();
    } catch (err) {
      expect(isRepositoryError(err, "corrupt")).toBe(true);
    }
  });

  it("will not seal a manifest too large to open again, and says what to do", () => {
    // 70 entries with 1 MiB names: 70 MiB of JSON, over the 64 MiB an object may hold.
    const huge = m(...Array.from({ length: 70 }, (_, i) => file(`${i}`.padEnd(1024 * 1024, "x"))));
    try {
      sealManifest(generateRepositoryKey(), huge);
      expect.unreachable();
    } catch (err) {
      expect(isRepositoryError(err, "invalid-argument")).toBe(true);
      expect((err as Error).message).toMatch(/70 entries make a manifest larger than one snapshot can hold/);
      expect((err as Error).message).toMatch(/snapshot a smaller directory/);
    }
  });
});
