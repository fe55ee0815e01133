// Manifests: the list of a snapshot's files, directories and symlinks, with each file's chunk ids.
// Structure is checked whenever one is opened; `assertRestorable` adds the path-safety rules of restore.
import { posix } from "node:path";
import { RepositoryError } from "./errors.js";
import { MANIFEST_PART_BYTES, MAX_MANIFEST_BYTES, MAX_MANIFEST_PARTS, SMALLER_SNAPSHOT_ADVICE } from "./limits.js";
import { hasBadComponent } from "./relative-path.js";
import { ObjectKind, openObject, parseJson, sealObject } from "./sealing.js";

export { MANIFEST_PART_BYTES, MAX_MANIFEST_BYTES, MAX_MANIFEST_PARTS };

export const MAX_CHUNK_LENGTH = 64 * 1024 * 1024;

/**
 * The owner of an entry (numeric ids, as lstat gives them): written by agents since ownership was kept, absent in
 * older manifests. A restore running as root gives them back; any other restore leaves its own.
 */
export interface Ownership {
  uid?: number;
  gid?: number;
}

export type ManifestEntry = (
  | {
      type: "file";
      path: string;
      mode: number;
      mtimeNs: string;
      size: number;
      /** Hex SHA-256 ids of the plain chunks, in file order. */
      chunks: string[];
      /** Plain length of each chunk; sums to `size`. */
      lengths: number[];
      /**
       * A hard link: the path of an earlier file entry that is the same file (same chunks). A reader that
       * restores that entry may link this one to it; one that does not (or an older reader) writes the chunks.
       */
      linkOf?: string;
    }
  | { type: "dir"; path: string; mode: number; mtimeNs: string }
  | { type: "symlink"; path: string; mode: number; mtimeNs: string; target: string }
) &
  Ownership;

/** The largest owner id a manifest takes: 2^32 - 2 (2^32 - 1 is "no change" to chown). */
export const MAX_OWNER_ID = 0xffff_fffe;

/**
 * The snapshot's directory itself (what a restore's target becomes): its mode, time and owner. In the first part
 * only; absent in manifests from before it was kept, whose restores leave the target as it was.
 */
export type ManifestRoot = { mode: number; mtimeNs: string } & Ownership;

export interface Manifest {
  version: 1;
  root?: ManifestRoot;
  entries: ManifestEntry[];
}

/**
 * A manifest's entries as its writer holds them: any iterable that gives the same entries each time it is
 * iterated (an array, or an object whose iterator makes them afresh: an agent with 300,000 files does not keep
 * 300,000 entry objects for the whole snapshot).
 */
export interface ManifestEntries {
  version?: 1;
  root?: ManifestRoot;
  entries: Iterable<ManifestEntry>;
}

export interface ManifestTotals {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  chunks: number;
}

/** A part of a manifest before it is sealed: its JSON, and how many entries it holds. */
export interface PlainManifestPart {
  plain: Buffer;
  entries: number;
}

export interface SealPartsOptions {
  /** Plain bytes a part holds on average (MANIFEST_PART_BYTES); Infinity seals one part. */
  partBytes?: number;
  /** Written into the first part. */
  root?: ManifestRoot;
}

/**
 * Seals a manifest's entries as parts of `partBytes` plain bytes on average, in order (cutManifestParts), each
 * deterministically: the same entries seal to the same object, stored once.
 */
export function sealManifestParts(
  key: Buffer,
  entries: Iterable<ManifestEntry>,
  options: SealPartsOptions = {},
): Buffer[] {
  const parts: Buffer[] = [];
  for (const part of cutManifestParts(entries, options)) parts.push(sealManifestPart(key, part));
  return parts;
}

/**
 * A manifest's entries cut into parts of `partBytes` plain bytes on average, in order, each the plain JSON of a
 * manifest of its own ({"version":1,"entries":[...]}) for sealManifestPart; an entry is never split, so one
 * larger than a part is a part alone. Refuses (as it reaches them) more than MAX_MANIFEST_BYTES in all or
 * MAX_MANIFEST_PARTS parts.
 *
 * Parts are cut by content, as chunks are, so that a snapshot whose files barely changed stores barely any
 * new manifest: where a part ends depends only on its own entries. After at least half of `partBytes`, a part
 * ends after an entry with a chance proportional to the entry's size (a hash of its path against its size),
 * and it never grows past twice `partBytes`. A file added, removed or changed then changes the part it falls
 * in, and the cuts after it fall where they did. Fixed-size parts shifted every part after the first change.
 */
export function* cutManifestParts(
  entries: Iterable<ManifestEntry>,
  options: SealPartsOptions = {},
): Generator<PlainManifestPart> {
  const partBytes = options.partBytes ?? MANIFEST_PART_BYTES;
  const minBytes = partBytes / 2;
  const maxBytes = 2 * partBytes;
  let texts: string[] = [];
  let bytes = 0;
  let total = 0;
  let count = 0;
  let parts = 0;
  // Keys in a fixed order: the same root and entries seal to the same part.
  const root = options.root && rootJson(options.root);
  const cut = (): PlainManifestPart => {
    const head = parts === 0 && root ? `"version":1,"root":${root}` : `"version":1`;
    const plain = Buffer.from(`{${head},"entries":[${texts.join(",")}]}`, "utf8");
    const held = texts.length;
    total += plain.length;
    if (total > MAX_MANIFEST_BYTES) throw manifestTooLarge(count);
    if (++parts > MAX_MANIFEST_PARTS) throw manifestTooLarge(count);
    texts = [];
    bytes = 0;
    return { plain, entries: held };
  };
  for (const e of entries) {
    count++;
    const text = JSON.stringify(e);
    const size = Buffer.byteLength(text, "utf8") + 1;
    if (total + bytes + size > MAX_MANIFEST_BYTES) throw manifestTooLarge(count);
    if (texts.length > 0 && bytes + size > maxBytes) yield cut();
    texts.push(text);
    bytes += size;
    if (bytes >= minBytes && pathHash(e.path) < (size / (partBytes - minBytes)) * 2 ** 32) yield cut();
  }
  if (texts.length > 0 || parts === 0) yield cut();
}

/**
 * Seals one part that cutManifestParts made, deterministically (see FORMAT.md): an earlier snapshot's unchanged
 * part seals to the object stored already. Its id is the SHA-256 of the result.
 */
export function sealManifestPart(key: Buffer, { plain, entries }: PlainManifestPart): Buffer {
  try {
    return sealObject(key, ObjectKind.manifest, plain, { deterministic: true });
  } catch (err) {
    if ((err as { code?: unknown }).code !== "EOBJECTTOOLARGE") throw err;
    throw new RepositoryError(
      "invalid-argument",
      `${entries} entries make a manifest part larger than one object can hold (64 MiB): ${SMALLER_SNAPSHOT_ADVICE}`,
      { cause: err },
    );
  }
}

/**
 * FNV-1a over a path's UTF-16 code units: where manifest parts end, and the agent's local index table (not a
 * security property).
 */
export function pathHash(path: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < path.length; i++) {
    h ^= path.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** The most plain bytes one part holds, whatever its entries (an object's limit): a file entry never spans two. */
export const MAX_PART_PLAIN_BYTES = 64 * 1024 * 1024;

/** Each type's entry with an empty path, no chunks and one-digit numbers, with the comma after it. */
const ENTRY_BASE_BYTES = {
  file: JSON.stringify({ type: "file", path: "", mode: 0, mtimeNs: "0", size: 0, chunks: [], lengths: [] }).length + 1,
  dir: JSON.stringify({ type: "dir", path: "", mode: 0, mtimeNs: "0" }).length + 1,
  symlink: JSON.stringify({ type: "symlink", path: "", mode: 0, mtimeNs: "0", target: "" }).length + 1,
};

/**
 * The fewest plain bytes an entry of `type` with a path of `pathBytes` bytes (UTF-8) and, for a file, at least
 * `chunks` chunks takes in a manifest: never more than cutManifestParts counts for it. What a workspace's listing
 * says of its manifest before any file is read (createSnapshot refuses one that cannot fit then, not after
 * reading and sending every file). A chunk is its quoted id and a comma, and a length of a digit or more and
 * a comma (the last of each without).
 */
export function manifestEntryMinBytes(type: ManifestEntry["type"], pathBytes: number, chunks = 0): number {
  return ENTRY_BASE_BYTES[type] + pathBytes + (type === "file" && chunks > 0 ? 69 * chunks - 2 : 0);
}

/**
 * `count` entries make a manifest larger than one snapshot holds (cutManifestParts; createSnapshot, judging by the
 * listing): `count` is the entries up to the one that made it too large, or all of them.
 */
export function manifestTooLarge(count: number): RepositoryError {
  return new RepositoryError(
    "invalid-argument",
    `${count} entries make a manifest larger than one snapshot can hold (${MAX_MANIFEST_BYTES / 2 ** 20} MiB, ` +
      `over a million files): ${SMALLER_SNAPSHOT_ADVICE}`,
  );
}

function rootJson(r: ManifestRoot): string {
  const owner = r.uid === undefined && r.gid === undefined ? {} : { uid: r.uid, gid: r.gid };
  return JSON.stringify({ mode: r.mode, mtimeNs: r.mtimeNs, ...owner });
}

/** Seals a manifest as one part (at most 64 MiB plain, about 250,000 files), for a reader that takes no more. */
export function sealManifest(key: Buffer, manifest: ManifestEntries): Buffer {
  return sealManifestParts(key, manifest.entries, { partBytes: Number.POSITIVE_INFINITY, root: manifest.root })[0];
}

/** Opens and structurally validates a manifest blob (it does not judge path safety; see assertRestorable). */
export function openManifest(key: Buffer, blob: Buffer, what = "manifest"): Manifest {
  return openManifestParts(key, [blob], what);
}

/**
 * Opens the parts of a manifest, in order, as one manifest (structure checked part by part; path safety is
 * assertRestorable's, over the whole). Refuses more than MAX_MANIFEST_PARTS parts or MAX_MANIFEST_BYTES plain.
 */
export function openManifestParts(key: Buffer, blobs: readonly Buffer[], what = "manifest"): Manifest {
  const entries: ManifestEntry[] = [];
  let root: ManifestRoot | undefined;
  // A loop, not push(...): a part may hold more entries than a call takes arguments.
  for (const part of manifestPartEntries(key, blobs, what, (r) => (root = r))) for (const e of part) entries.push(e);
  return root ? { version: 1, root, entries } : { version: 1, entries };
}

/**
 * The entries of a manifest's parts, one part at a time, each opened and its structure checked as it comes
 * (as openManifestParts does): a reader that needs only a part at a time holds only that part. Iterate it
 * again to open the parts again.
 */
export function* manifestPartEntries(
  key: Buffer,
  blobs: readonly Buffer[],
  what = "manifest",
  /** Called with the snapshot's root (ManifestRoot) as the first part is opened, when it records one. */
  onRoot?: (root: ManifestRoot) => void,
): Generator<ManifestEntry[]> {
  if (blobs.length === 0 || blobs.length > MAX_MANIFEST_PARTS) {
    throw invalid(what, `it has ${blobs.length} parts; a manifest has 1 to ${MAX_MANIFEST_PARTS}`);
  }
  let total = 0;
  for (const [i, blob] of blobs.entries()) {
    const part = blobs.length > 1 ? `${what} (part ${i + 1} of ${blobs.length})` : what;
    const plain = openObject(key, ObjectKind.manifest, blob, part);
    total += plain.length;
    if (total > MAX_MANIFEST_BYTES) {
      throw invalid(what, `its parts hold more than ${MAX_MANIFEST_BYTES / 2 ** 20} MiB, more than a manifest may`);
    }
    const manifest = parseManifest(parseJson(plain, part), part);
    // Only the first part's: a root written anywhere else is no part of the format, and ignored.
    if (i === 0 && manifest.root && onRoot) onRoot(manifest.root);
    yield manifest.entries;
  }
}

export function manifestTotals(manifest: ManifestEntries): ManifestTotals {
  const totals: ManifestTotals = { files: 0, dirs: 0, symlinks: 0, bytes: 0, chunks: 0 };
  for (const e of manifest.entries) {
    if (e.type === "file") {
      totals.files++;
      totals.bytes += e.size;
      totals.chunks += e.chunks.length;
    } else if (e.type === "dir") totals.dirs++;
    else totals.symlinks++;
  }
  return totals;
}

function invalid(what: string, detail: string): RepositoryError {
  return new RepositoryError("invalid-manifest", `${what} is invalid: ${detail}`);
}

const OWNER_FIELDS = ["uid", "gid"] as const;

/** An entry's (or the root's) mode, mtime and owner, named `name` in the error. */
function checkMetadata(what: string, name: string, e: Record<string, unknown>): void {
  if (typeof e.mode !== "number" || !Number.isInteger(e.mode) || e.mode < 0 || e.mode > 0o7777) {
    throw invalid(what, `${name} has a bad mode`);
  }
  if (typeof e.mtimeNs !== "string" || !/^-?\d{1,25}$/.test(e.mtimeNs)) throw invalid(what, `${name} has a bad mtime`);
  for (const field of OWNER_FIELDS) {
    const id = e[field];
    if (id !== undefined && (!Number.isInteger(id) || (id as number) < 0 || (id as number) > MAX_OWNER_ID)) {
      throw invalid(what, `${name} has a bad ${field}`);
    }
  }
}

function parseManifest(value: unknown, what: string): Manifest {
  if (typeof value !== "object" || value === null) throw invalid(what, "not an object");
  const m = value as { version?: unknown; root?: unknown; entries?: unknown };
  if (m.version !== 1) throw invalid(what, `unknown version ${String(m.version)}`);
  if (!Array.isArray(m.entries)) throw invalid(what, "entries is not a list");
  if (m.root !== undefined) {
    const r = m.root as Record<string, unknown>;
    if (typeof r !== "object" || r === null) throw invalid(what, "its root is not an object");
    checkMetadata(what, "its root", r);
  }
  for (const raw of m.entries as unknown[]) {
    const e = raw as Record<string, unknown>;
    if (typeof e !== "object" || e === null || typeof e.path !== "string") throw invalid(what, "an entry has no path");
    const name = JSON.stringify(e.path);
    checkMetadata(what, name, e);
    if (e.type === "file") {
      if (!Number.isSafeInteger(e.size) || (e.size as number) < 0) throw invalid(what, `${name} has a bad size`);
      if (!Array.isArray(e.chunks) || !Array.isArray(e.lengths) || e.chunks.length !== e.lengths.length) {
        throw invalid(what, `${name} has mismatched chunk lists`);
      }
      let sum = 0;
      for (let i = 0; i < e.chunks.length; i++) {
        const id = e.chunks[i];
        const len = e.lengths[i];
        if (typeof id !== "string" || !/^[0-9a-f]{64}$/.test(id)) throw invalid(what, `${name} has a bad chunk id`);
        if (!Number.isInteger(len) || len <= 0 || len > MAX_CHUNK_LENGTH) {
          throw invalid(what, `${name} has a bad chunk length`);
        }
        sum += len;
      }
      if (sum !== e.size) throw invalid(what, `${name}: its chunks add up to ${sum} bytes, not ${e.size}`);
      if (e.linkOf !== undefined && (typeof e.linkOf !== "string" || e.linkOf === "")) {
        throw invalid(what, `${name} has a bad linkOf`);
      }
    } else if (e.type === "symlink") {
      if (typeof e.target !== "string" || e.target === "" || e.target.includes("\0")) {
        throw invalid(what, `${name} has a bad link target`);
      }
    } else if (e.type !== "dir") {
      throw invalid(what, `${name} has unknown type ${String(e.type)}`);
    }
  }
  return value as Manifest;
}

export interface RestorableOptions {
  /** Allow symlinks whose target is absolute or points above the restore target (they are created, never followed). */
  allowExternalSymlinks?: boolean;
}

/**
 * Refuses a manifest that could make restore write outside its target: absolute paths, `.`/`..` or empty
 * components, duplicate paths, entries whose parent is not a directory entry of the manifest (so nothing is
 * ever written beneath a symlink or a file), and symlinks that point outside the target.
 */
export function assertRestorable(manifest: ManifestEntries, options: RestorableOptions = {}): void {
  const check = new RestorableCheck(options);
  for (const e of manifest.entries) check.add(e);
  check.finish();
  check.refuseOutwardLinks();
}

/** A UTF-16 surrogate that is not half of a pair (with the u flag a pair is one code point, not \p{Cs}). */
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * assertRestorable fed one entry at a time (a manifest read part by part): `add` refuses a bad path or a
 * duplicate as it comes, `finish` what needs the whole (parents that are not directories), and
 * `refuseOutwardLinks` symlinks that point outside. It keeps each path and its kind, and each link's target.
 *
 * The first two are the manifest's structure, judged over all of it whatever is restored: a manifest that fails
 * them is damaged or forged. Outward links are the restorer's policy (--allow-external-symlinks), judged only for
 * the links a restore writes: a partial restore (--include) is not refused for a link it leaves out.
 */
export class RestorableCheck {
  private readonly kinds = new Map<string, ManifestEntry["type"]>();
  private readonly links = new Map<string, string>();

  constructor(private readonly options: RestorableOptions = {}) {}

  add(e: ManifestEntry): void {
    const { path } = e;
    if (path.startsWith("/")) throw invalid("manifest", `${JSON.stringify(path)} is an absolute path`);
    if (path.includes("\0")) throw invalid("manifest", `${JSON.stringify(path)} contains a NUL byte`);
    // A lone surrogate is written to disk as U+FFFD: "a\ud800" and "a\udc00" would be one name there and two
    // here, past the duplicate check and the outward-link check. No name read from a disk holds one.
    if (LONE_SURROGATE.test(path)) {
      throw invalid("manifest", `${JSON.stringify(path)} is not well-formed Unicode (a lone surrogate)`);
    }
    if (hasBadComponent(path)) {
      throw invalid("manifest", `${JSON.stringify(path)} has an empty, "." or ".." component`);
    }
    if (this.kinds.has(path)) throw invalid("manifest", `${JSON.stringify(path)} appears twice`);
    if (e.type === "file" && e.linkOf !== undefined && this.kinds.get(e.linkOf) !== "file") {
      throw invalid(
        "manifest",
        `${JSON.stringify(path)} is a hard link to ${JSON.stringify(e.linkOf)}, which is not a file listed before it`,
      );
    }
    if (e.type === "symlink" && LONE_SURROGATE.test(e.target)) {
      throw invalid(
        "manifest",
        `symlink ${JSON.stringify(path)} -> ${JSON.stringify(e.target)}: the target is not well-formed Unicode`,
      );
    }
    this.kinds.set(path, e.type);
    if (e.type === "symlink") this.links.set(path, e.target);
  }

  /**
   * Checks, in manifest order, each entry's parent. A directory's parent must come before it (FORMAT.md:
   * restore creates directories in manifest order).
   */
  finish(): void {
    const dirsSeen = new Set<string>();
    for (const [path, type] of this.kinds) {
      const parent = posix.dirname(path);
      const parentKind = this.kinds.get(parent);
      if (parent !== "." && parentKind !== "dir") {
        throw invalid(
          "manifest",
          `${JSON.stringify(path)} lies under ${JSON.stringify(parent)}, which ` +
            (parentKind === undefined ? "the manifest does not list" : `is a ${parentKind}, not a directory`),
        );
      }
      if (type === "dir") {
        if (parent !== "." && !dirsSeen.has(parent)) {
          throw invalid(
            "manifest",
            `directory ${JSON.stringify(path)} comes before its parent ${JSON.stringify(parent)}; parents are listed first`,
          );
        }
        dirsSeen.add(path);
      }
    }
  }

  /**
   * Refuses the first of `paths` (the links a restore writes; default every link added) that points outside the
   * target, unless outward links are allowed. A link is resolved through every link of the manifest, those left
   * out of a partial restore too (a name they alone hold is not on disk: the stricter reading), so no choice of
   * --include makes an outward link pass.
   * The refusal is a policy's, not damage: its message says how to restore anyway, or without the link.
   */
  refuseOutwardLinks(paths: Iterable<string> = this.links.keys()): void {
    if (this.options.allowExternalSymlinks) return;
    const written = [...paths];
    // Where names fold alike, the link the filesystem holds is the first one written: the links this restore
    // writes go first, in manifest order, then the others for names none of those takes. Taking the first in
    // the manifest, a left-out `a -> sub` stood for the written `A -> .`, and `x -> a/..` passed as inside.
    const writes = new Set(written);
    const folded = foldLinks(
      new Map([...this.links].sort(([p], [q]) => Number(writes.has(q)) - Number(writes.has(p)))),
    );
    for (const path of written) {
      const target = this.links.get(path);
      if (target === undefined) continue;
      // Read twice: as a filesystem that tells names apart by every code unit resolves the links, and as one that
      // ignores case and Unicode normalisation does (ext4 with casefold, APFS, NTFS), where `A` is the link `a`.
      const where = symlinkEscapes(path, target, this.links)
        ? ""
        : symlinkEscapes(foldName(path), foldName(target), folded)
          ? " on a filesystem that ignores case or Unicode normalisation"
          : undefined;
      if (where === undefined) continue;
      // Still "invalid-manifest" (a manifest this restore must not write), for callers that map the code.
      throw new RepositoryError(
        "invalid-manifest",
        `symlink ${JSON.stringify(path)} -> ${JSON.stringify(target)} points outside the restore target${where}; ` +
          "restore with --allow-external-symlinks to write it anyway (a restore creates links and never follows " +
          "one), or leave it out with --include",
      );
    }
  }
}

/**
 * A name as a filesystem that ignores case and Unicode normalisation sees it: Unicode's full case folding (so "ß"
 * is "ss" and "ﬁ" is "fi", as ext4's casefold tables have them). Lower, upper, then lower case: upper then lower
 * alone left capital sharp s (U+1E9E) "ß", not "ss"; checked against Python's str.casefold for every code point,
 * this leaves no name folding otherwise.
 */
function foldName(name: string): string {
  return name.normalize("NFC").toLowerCase().toUpperCase().toLowerCase().normalize("NFC");
}

/**
 * The links as such a filesystem holds them: of links whose names fold alike only the first is created there
 * (the others fail, existing), and links are created in manifest order.
 */
function foldLinks(links: ReadonlyMap<string, string>): Map<string, string> {
  const folded = new Map<string, string>();
  for (const [path, target] of links) {
    const name = foldName(path);
    if (!folded.has(name)) folded.set(name, foldName(target));
  }
  return folded;
}

/**
 * True when a link at `path` (relative to the target root) pointing at `target` resolves outside the root,
 * following the manifest's other links the way the kernel would (so `a -> .` plus `b -> a/..` is caught).
 */
export function symlinkEscapes(path: string, target: string, links: ReadonlyMap<string, string> = new Map()): boolean {
  let budget = 40; // the kernel's own limit on nested links
  const resolve = (base: string[], link: string): string[] | undefined => {
    if (link.startsWith("/")) return undefined;
    const at = [...base];
    for (const part of link.split("/")) {
      if (part === "" || part === ".") continue;
      if (part === "..") {
        if (at.length === 0) return undefined;
        at.pop();
        continue;
      }
      at.push(part);
      const inner = links.get(at.join("/"));
      if (inner !== undefined) {
        if (--budget < 0) return undefined;
        at.pop();
        const next = resolve(at, inner);
        if (next === undefined) return undefined;
        at.splice(0, at.length, ...next);
      }
    }
    return at;
  };
  const dir = posix.dirname(path);
  return resolve(dir === "." ? [] : dir.split("/"), target) === undefined;
}
