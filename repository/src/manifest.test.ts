import { describe, expect, it } from "vitest";
import { isRepositoryError } from "./errors.js";
import { generateRepositoryKey } from "./key.js";
import {
  assertRestorable,
  MAX_MANIFEST_PARTS,
  type Manifest,
  type ManifestEntry,
  manifestEntryMinBytes,
  openManifest,
  openManifestParts,
  RestorableCheck,
  sealManifest,
  sealManifestParts,
  symlinkEscapes,
} from "./manifest.js";
import { ObjectKind, openJson } from "./sealing.js";
import { dirEntry, emptyFileEntry, linkEntry } from "./testing/manifest-entries.js";

const dir = dirEntry;
const file = emptyFileEntry;
const link = linkEntry;
/** A file entry that is a hard link to `of`. */
const hardLink = (path: string, of: string): ManifestEntry =>
  ({ ...emptyFileEntry(path), linkOf: of }) as ManifestEntry;
const m = (...entries: ManifestEntry[]): Manifest => ({ version: 1, entries });

describe("assertRestorable", () => {
  it("accepts an ordinary tree with links that stay inside", () => {
    expect(() =>
      assertRestorable(
        m(
          dir("a"),
          dir("a/b"),
          file("a/b/c d ü.txt"),
          link("a/l", "b/c d ü.txt"),
          link("up", "a/../a"),
          // Dots that are names, not "." or "..".
          dir("..."),
          file(".../.env"),
          file("a/..b"),
          file("a/b."),
          hardLink("a/hard", "a/b/c d ü.txt"), // a hard link to a file before it
          file("a/b/\u{1F600} \uFFFD"), // a pair of surrogates is one character, U+FFFD one too
        ),
      ),
    ).not.toThrow();
  });

  /** What each escape only a folding filesystem allows is refused with. */
  const FOLDED_ESCAPE = "points outside the restore target on a filesystem that ignores case or Unicode normalisation";
  it.each([
    ["an absolute path", m(file("/etc/passwd")), '"/etc/passwd" is an absolute path'],
    ["a .. component", m(dir("a"), file("a/../../x")), '"a/../../x" has an empty, "." or ".." component'],
    ["a . component", m(file("./x")), '"./x" has an empty'],
    ["an empty component", m(dir("a"), file("a//x")), '"a//x" has an empty'],
    ["an empty path", m(file("")), '"" has an empty'],
    ["a trailing /", m(dir("a/")), '"a/" has an empty'],
    ["a last .. component", m(dir("a"), dir("a/..")), '"a/.." has an empty'],
    ["a last . component", m(dir("a"), dir("a/.")), '"a/." has an empty'],
    ["a duplicate", m(file("x"), file("x")), '"x" appears twice'],
    [
      "an entry under a symlink",
      m(link("a", "."), file("a/x")),
      '"a/x" lies under "a", which is a symlink, not a directory',
    ],
    ["an entry under a file", m(file("a"), file("a/x")), '"a/x" lies under "a", which is a file, not a directory'],
    ["an entry whose directory is missing", m(file("a/x")), '"a/x" lies under "a", which the manifest does not list'],
    ["a directory listed before its parent", m(dir("a/b"), dir("a")), 'directory "a/b" comes before its parent "a"'],
    [
      "a symlink to an absolute path",
      m(link("l", "/etc")),
      'symlink "l" -> "/etc" points outside the restore target; restore with',
    ],
    [
      "a symlink climbing out",
      m(dir("a"), link("a/l", "../../x")),
      'symlink "a/l" -> "../../x" points outside the restore target; restore with',
    ],
    [
      "a symlink escaping through another symlink",
      m(link("a", "."), link("b", "a/..")),
      'symlink "b" -> "a/.." points outside the restore target; restore with',
    ],
    [
      "a hard link to a file listed after it",
      m(hardLink("a", "b"), file("b")),
      '"a" is a hard link to "b", which is not a file listed before it',
    ],
    ["a hard link to a directory", m(dir("d"), hardLink("a", "d")), '"a" is a hard link to "d", which is not'],
    ["a hard link to a symlink", m(link("l", "x"), hardLink("a", "l")), '"a" is a hard link to "l", which is not'],
    ["a hard link to itself", m(hardLink("a", "a")), '"a" is a hard link to "a", which is not'],
    // Lone surrogates: U+FFFD on disk, so "u\uD800/.." resolves through the link "u\uFFFD" -> "." to outside.
    ["a name with a lone surrogate", m(file("u\uD800")), '"u\\ud800" is not well-formed Unicode (a lone surrogate)'],
    ["names one on disk, two here", m(dir("d\uD800"), dir("d\uDC00")), '"d\\ud800" is not well-formed Unicode'],
    [
      "a symlink target with a lone surrogate",
      m(link("u\uFFFD", "."), link("v", "u\uD800/..")),
      'symlink "v" -> "u\\ud800/..": the target is not well-formed Unicode',
    ],
    // Where names fold (ext4 casefold, APFS, NTFS), `A` and the NFD spelling of `é` are the links `a` and `é`.
    ["a symlink escaping through another by its case", m(link("a", "."), link("x", "A/..")), FOLDED_ESCAPE],
    [
      "a symlink escaping through another by its normalisation",
      m(link("\u00e9", "."), link("y", "e\u0301/..")),
      FOLDED_ESCAPE,
    ],
    [
      "a symlink escaping where its own target folds",
      m(dir("D"), link("D/l", "."), link("z", "d/L/../..")),
      FOLDED_ESCAPE,
    ],
    [
      "a symlink escaping through another by full case folding",
      m(link("\u00df", "."), link("x", "SS/..")),
      FOLDED_ESCAPE,
    ],
    // Capital sharp s folds to "ss" too; upper case first left it "ß" (helper-62's finding).
    [
      "a symlink escaping through another by capital sharp s",
      m(link("\u1e9e", "."), link("x", "ss/..")),
      FOLDED_ESCAPE,
    ],
    [
      "a symlink escaping through another by sharp s, written capital",
      m(link("ss", "."), link("x", "\u1e9e/..")),
      FOLDED_ESCAPE,
    ],
  ])("refuses %s, saying which check", (_what, manifest, message) => {
    // The message too: behind most checks stands another that would refuse the entry in other words, and a
    // check taken out must not go unnoticed behind it.
    expect(() => assertRestorable(manifest)).toThrow(
      expect.objectContaining({ code: "invalid-manifest", message: expect.stringContaining(message) }),
    );
  });

  it("allows links that stay inside however names fold, and names the folding when only it escapes", () => {
    expect(() => assertRestorable(m(link("a", "."), link("z", "A"), dir("B"), link("B/l", "..")))).not.toThrow();
    expect(() => assertRestorable(m(link("a", "."), link("x", "A/..")))).toThrow(
      /symlink "x" -> "A\/.." points outside the restore target on a filesystem that ignores case or Unicode normalisation; restore with --allow-external-symlinks/,
    );
  });

  it("judges links whose names fold alike by the ones a partial restore writes", () => {
    // `a -> sub` left out (--include), `A -> .` and `x -> a/..` written: where names fold, the link at `a` is
    // `A -> .`, and `x` is the target's parent. Taken as the manifest's first of the two, `x` passed as inside.
    const check = new RestorableCheck();
    for (const e of [link("a", "sub"), link("A", "."), link("x", "a/..")]) check.add(e);
    check.finish();
    expect(() => check.refuseOutwardLinks(["A", "x"])).toThrow(
      /symlink "x" -> "a\/.." points outside the restore target on a filesystem that ignores case/,
    );
    // Written together, the first in the manifest is the one created: `a -> sub`, and `x` stays inside.
    expect(() => check.refuseOutwardLinks(["a", "A", "x"])).not.toThrow();
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
    // Owners: optional, whole ids up to 2^32 - 2 (2^32 - 1 is chown's "leave it").
    const owned = m({ ...dir("a"), uid: 1000, gid: 0xffff_fffe });
    expect(openManifest(key, sealManifest(key, owned))).toEqual(owned);
    for (const [field, bad] of [
      ["uid", -1],
      ["gid", 0xffff_ffff],
      ["uid", 1.5],
      ["gid", "0"],
    ] as const) {
      const wrong = m({ ...dir("a"), [field]: bad } as ManifestEntry);
      expect(() => openManifest(key, sealManifest(key, wrong))).toThrow(`"a" has a bad ${field}`);
    }
    // Chunk ids and lengths as a writer makes them: 64 lowercase hex digits (an id that is not one would never
    // match a chunk, or match another spelling of it), 1 byte to 64 MiB (the length sizes what a restore holds).
    const file = manifest.entries[1] as Extract<ManifestEntry, { type: "file" }>;
    for (const chunk of ["AB".repeat(32), "ab".repeat(31) + "a", "zz".repeat(32), 7]) {
      const wrong = m({ ...file, chunks: [chunk as string] });
      expect(() => openManifest(key, sealManifest(key, wrong))).toThrow(`"a/f" has a bad chunk id`);
    }
    for (const length of [0, -3, 1.5, 64 * 1024 * 1024 + 1]) {
      const wrong = m({ ...file, size: 5, lengths: [length] });
      expect(() => openManifest(key, sealManifest(key, wrong))).toThrow(`"a/f" has a bad chunk length`);
    }
    for (const bad of ["", 5]) {
      const wrong = m(hardLink("f", bad as string));
      expect(() => openManifest(key, sealManifest(key, wrong))).toThrow(`"f" has a bad linkOf`);
    }
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
      expect((err as Error).message).toMatch(/70 entries make a manifest part larger than one object can hold/);
      expect((err as Error).message).toMatch(/snapshot a smaller directory/);
    }
  });
});

describe("manifest parts", () => {
  const key = generateRepositoryKey();
  const entries = [dir("d"), ...Array.from({ length: 300 }, (_, i) => file(`d/file ${i} ü.txt`)), link("l", "d")];

  it("seals a manifest in parts of about the size asked, in order, that open as the whole", () => {
    const parts = sealManifestParts(key, entries, { partBytes: 4096 });
    expect(parts.length).toBeGreaterThan(4);
    const plains = parts.map((p, i) => openJson(key, ObjectKind.manifest, p, `part ${i}`) as Manifest);
    // Each part is a manifest of its own, from half to twice the size asked (one entry is ~90 bytes) but the
    // last, never empty.
    for (const [i, plain] of plains.entries()) {
      expect(plain.version).toBe(1);
      expect(plain.entries.length).toBeGreaterThan(0);
      const bytes = Buffer.byteLength(JSON.stringify(plain));
      expect(bytes).toBeLessThanOrEqual(2 * 4096 + 64);
      if (i < plains.length - 1) expect(bytes).toBeGreaterThanOrEqual(4096 / 2);
    }
    expect(plains.flatMap((p) => p.entries)).toEqual(entries);
    expect(openManifestParts(key, parts)).toEqual(m(...entries));
    // The default size holds all of them in one part, which opens as a manifest always did.
    const one = sealManifestParts(key, entries);
    expect(one).toHaveLength(1);
    expect(openManifest(key, one[0])).toEqual(m(...entries));
  });

  it("seals the same entries to the same parts, and a change to one file changes only the part it is in", () => {
    const again = sealManifestParts(key, entries, { partBytes: 4096 });
    const parts = sealManifestParts(key, entries, { partBytes: 4096 });
    expect(again.map((p) => p.toString("hex"))).toEqual(parts.map((p) => p.toString("hex")));
    // Added near the start, changed in the middle, removed near the end: the other parts are the same objects.
    const changed = [...entries];
    changed.splice(150, 1, { ...file("d/file 149 ü.txt"), mode: 0o600 });
    changed.splice(280, 1);
    changed.splice(20, 0, file("d/a new file.txt"));
    const after = sealManifestParts(key, changed, { partBytes: 4096 });
    expect(openManifestParts(key, after)).toEqual(m(...changed));
    const before = new Set(parts.map((p) => p.toString("hex")));
    const fresh = after.filter((p) => !before.has(p.toString("hex")));
    expect(fresh.length).toBeGreaterThan(0);
    expect(fresh.length).toBeLessThanOrEqual(4); // three changes, three parts (9 in all)
    expect(after.length - fresh.length).toBeGreaterThanOrEqual(parts.length - 4);
  });

  it("puts an entry larger than a part in a part of its own", () => {
    const big = file("x".repeat(10_000));
    const parts = sealManifestParts(key, [dir("a"), big, dir("b")], { partBytes: 1000 });
    expect(parts.map((p) => openManifest(key, p).entries)).toEqual([[dir("a")], [big], [dir("b")]]);
  });

  it("names the part that does not open, and refuses no parts or too many", () => {
    const parts = sealManifestParts(key, entries, { partBytes: 4096 });
    const damaged = [...parts];
    damaged[2] = Buffer.from(damaged[2]);
    damaged[2][40] ^= 1;
    expect(() => openManifestParts(key, damaged, "manifest of snapshot s1")).toThrow(
      `manifest of snapshot s1 (part 3 of ${parts.length}) is unreadable`,
    );
    expect(() => openManifestParts(key, [])).toThrow(/it has 0 parts; a manifest has 1 to 256/);
    const tooMany = Array.from({ length: MAX_MANIFEST_PARTS + 1 }, () => parts[0]);
    expect(() => openManifestParts(key, tooMany)).toThrow(/it has 257 parts/);
  });
});

describe("manifestEntryMinBytes", () => {
  it("is never more than an entry takes in a part, and exactly that for the smallest of each kind", () => {
    const id = "ab".repeat(32);
    const taken = (e: ManifestEntry) => Buffer.byteLength(JSON.stringify(e), "utf8") + 1; // as cutManifestParts
    const smallest: ManifestEntry[] = [
      { type: "file", path: "", mode: 0, mtimeNs: "0", size: 0, chunks: [], lengths: [] },
      { type: "file", path: "", mode: 0, mtimeNs: "0", size: 0, chunks: [id, id], lengths: [1, 2] },
      { type: "dir", path: "", mode: 0, mtimeNs: "0" },
      { type: "symlink", path: "", mode: 0, mtimeNs: "0", target: "" },
    ];
    for (const e of smallest) {
      expect(manifestEntryMinBytes(e.type, 0, e.type === "file" ? e.chunks.length : 0)).toBe(taken(e));
    }
    const path = 'módulo "quoted"\\tab\t ünïcode/😀.py';
    const real: ManifestEntry[] = [
      {
        type: "file",
        path,
        mode: 0o100644,
        mtimeNs: "1700000000123456789",
        size: 3_000_000,
        chunks: [id, id, id],
        lengths: [1_048_576, 1_048_576, 902_848],
        uid: 1000,
        gid: 1000,
      },
      { type: "file", path, mode: 0o644, mtimeNs: "1", size: 5, chunks: [id], lengths: [5], linkOf: "other" },
      { type: "dir", path, mode: 0o40755, mtimeNs: "1700000000123456789", uid: 0, gid: 0 },
      { type: "symlink", path, mode: 0o777, mtimeNs: "1700000000123456789", target: "../a/b" },
    ];
    for (const e of real) {
      const min = manifestEntryMinBytes(e.type, Buffer.byteLength(e.path), e.type === "file" ? e.chunks.length : 0);
      expect(min).toBeLessThanOrEqual(taken(e));
    }
  });
});
