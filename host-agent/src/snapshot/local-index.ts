// The agent's memory of what it already chunked: path -> (size, mtime, ctime, inode, chunk ids). A file whose
// size, mtime, ctime and inode are unchanged is not read again (ctime too, as restic and git compare it: a file
// rewritten in place at its size with its mtime set back, by `touch -d` or a copy keeping times, changes it). It
// is a cache: anything wrong with the file (missing, truncated, another scope, a bit flipped) costs one full
// read of the workspace, never a wrong snapshot.
//
// Stored as one binary file of columns, replaced atomically (format 3). Format 1 was one JSON object per file;
// for a workspace of 300,000 files that was 54 MB to parse into 300,000 objects on every snapshot (~0.7 s of
// JSON.parse, ~1 GB of peak RSS with the rest, and a good part of the garbage collector's time). Columns load
// as a few typed arrays and a hash table of entry numbers (no string per path or per chunk is kept). Formats 1
// and 2 had no ctime: an index an older agent left is no index, one full read after the upgrade.
//
//   "DUMONT-LOCAL-INDEX\n" (19 bytes), u32 header length, header JSON {version: 3, scope, snapshot, manifests
//   (ids of its manifest parts), manifestPlains (optional: the hex SHA-256 of each part's plain JSON, in the
//   same order), files, chunks, pathBytes}, zero padding to a multiple of 8, then the columns, each padded to a
//   multiple of 8:
//     size      f64 x files        mtimeNs  i64 x files      ino   u64 x files      ctimeNs  i64 x files
//     chunkEnd  u32 x files  (chunks of files 0..i, cumulative)
//     pathEnd   u32 x files  (UTF-8 bytes of paths 0..i, cumulative)
//     length    u32 x chunks (plain bytes of each chunk)
//     id        32 bytes x chunks (SHA-256)
//     path      pathBytes of UTF-8
//   and last the SHA-256 of everything before it. All numbers little-endian.
import { createHash } from "node:crypto";
import { lstat, mkdir, readdir, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { pathHash, writeFileAtomic } from "@dumont/repository";

const MAGIC = Buffer.from("DUMONT-LOCAL-INDEX\n", "latin1");
const VERSION = 3;
const DIGEST = 32;
const HEX_DIGEST = /^[0-9a-f]{64}$/;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
/** Larger than any header this writes (the scope is a repository id and a path): a guard, not a limit. */
const MAX_HEADER = 1024 * 1024;

/** One file as the index remembers it. */
export interface LocalIndexFile {
  path: string;
  size: number;
  mtimeNs: bigint;
  ino: bigint;
  ctimeNs: bigint;
  /** Hex SHA-256 ids, in file order. */
  chunks: readonly string[];
  lengths: readonly number[];
}

/** One file as a snapshot hands it to the index: its chunks as raw ids (32 bytes each, back to back). */
export interface RawLocalIndexFile {
  path: string;
  size: number;
  mtimeNs: bigint;
  ino: bigint;
  ctimeNs: bigint;
  ids: Uint8Array;
  lengths: ArrayLike<number>;
}

interface Header {
  version: number;
  scope: string;
  snapshot: string;
  manifests: string[];
  manifestPlains?: string[];
  files: number;
  chunks: number;
  pathBytes: number;
}

interface Columns {
  size: Float64Array;
  mtimeNs: BigInt64Array;
  ino: BigUint64Array;
  ctimeNs: BigInt64Array;
  chunkEnd: Uint32Array;
  pathEnd: Uint32Array;
  length: Uint32Array;
  id: Buffer;
  path: Buffer;
}

/** The index file for a scope under a state directory. */
export function localIndexPath(stateDir: string, scope: string): string {
  return join(stateDir, "snapshot-index", `${createHash("sha256").update(scope).digest("hex").slice(0, 32)}.idx`);
}

/**
 * Where an agent before format 2 kept the same scope's index (JSON, format 1): removed by the next save. Never
 * read: like format 2, it has no ctime to compare.
 */
function legacyPath(file: string): string | undefined {
  return file.endsWith(".idx") ? `${file.slice(0, -".idx".length)}.json` : undefined;
}

let makeIndex: (
  columns: Columns,
  manifests: ReadonlySet<string>,
  storedParts: ReadonlyMap<string, string>,
) => LocalIndex;

/** What the last snapshot of a scope read, looked up by path. */
export class LocalIndex {
  static {
    makeIndex = (columns, manifests, storedParts) => new LocalIndex(columns, manifests, storedParts);
  }
  /**
   * Paths to entries: an open-addressing table of entry numbers + 1 (0 is free), probed from the path's hash.
   * Not a Map of strings: that held every path a second time (300,000 files: ~25 MB for as long as a snapshot
   * runs); a lookup now decodes only the one candidate whose hash matches.
   */
  private readonly slots: Int32Array;
  private readonly hashes: Uint32Array;

  private constructor(
    private readonly columns: Columns,
    /** Ids of the manifest parts of the snapshot this index was saved with. */
    readonly manifests: ReadonlySet<string>,
    /**
     * The same parts by the hex SHA-256 of their plain JSON (an index saved with `manifestPlains`): a part cut
     * the same way again is that stored part, and need not be sealed or sent again.
     */
    readonly storedParts: ReadonlyMap<string, string>,
  ) {
    const files = columns.size.length;
    this.hashes = new Uint32Array(files);
    this.slots = new Int32Array(2 ** Math.ceil(Math.log2(Math.max(4, 2 * files))));
    for (let i = 0; i < files; i++) {
      const path = this.path(i);
      const hash = pathHash(path);
      this.hashes[i] = hash;
      const slot = this.probe(path, hash);
      this.slots[slot] = i + 1; // a later entry of the same path wins
    }
  }

  static empty(): LocalIndex {
    return LocalIndex.fromFiles([]);
  }

  /** Files remembered. */
  get files(): number {
    return this.columns.size.length;
  }

  /** The entry of `path` if its size, mtime, inode and ctime are still these; else -1 (the file must be read). */
  find(path: string, size: number, mtimeNs: bigint, ino: bigint, ctimeNs: bigint): number {
    const i = this.slots[this.probe(path, pathHash(path))] - 1;
    if (i < 0) return -1;
    const c = this.columns;
    return c.size[i] === size && c.mtimeNs[i] === mtimeNs && c.ino[i] === ino && c.ctimeNs[i] === ctimeNs ? i : -1;
  }

  /** Hex chunk ids of entry `i`, in file order. */
  chunks(i: number): string[] {
    // Arrays of their exact length: one grown by push holds room for 17 (300,000 one-chunk files: ~120 MB of
    // backing stores for these and the lengths, against ~30 MB).
    const first = this.firstChunk(i);
    const out = new Array<string>(this.columns.chunkEnd[i] - first);
    for (let k = 0; k < out.length; k++) out[k] = this.hexId(first + k);
    return out;
  }

  lengths(i: number): number[] {
    // A loop, not Array.from over a view: that took 400 ms for 300,000 files in a profile.
    const first = this.firstChunk(i);
    const out = new Array<number>(this.columns.chunkEnd[i] - first);
    for (let k = 0; k < out.length; k++) out[k] = this.columns.length[first + k];
    return out;
  }

  /** The raw chunk ids of entry `i`, back to back: a view into the index. */
  chunkIds(i: number): Buffer {
    return this.columns.id.subarray(DIGEST * this.firstChunk(i), DIGEST * this.columns.chunkEnd[i]);
  }

  /** The plain lengths of entry `i`'s chunks: a view into the index. */
  chunkLengths(i: number): Uint32Array {
    return this.columns.length.subarray(this.firstChunk(i), this.columns.chunkEnd[i]);
  }

  /**
   * Every distinct chunk id the index holds: raw, sorted bytewise, back to back in a new buffer. Sorted as
   * bytes, not as hex strings in a Map (300,000 chunks: 84 ms and 10 MB against ~390 ms and ~35 MB).
   */
  distinctIds(): Buffer {
    const ids = this.columns.id;
    const n = ids.length / DIGEST;
    // Sorted as 64-bit keys (the id's first 4 bytes above its number, written through 32-bit halves): a native
    // sort with no comparator called back. Ids whose first 4 bytes agree (a few in 300,000) are then put in
    // order by their whole bytes.
    const prefix = new Uint32Array(n);
    const keys = new BigUint64Array(n);
    const halves = new Uint32Array(keys.buffer);
    const high = LITTLE_ENDIAN ? 1 : 0;
    for (let k = 0; k < n; k++) {
      prefix[k] = ids.readUInt32BE(DIGEST * k);
      halves[2 * k + high] = prefix[k];
      halves[2 * k + 1 - high] = k;
    }
    keys.sort();
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = halves[2 * i + 1 - high];
    const whole = (a: number, b: number) =>
      ids.compare(ids, DIGEST * b, DIGEST * (b + 1), DIGEST * a, DIGEST * (a + 1));
    for (let i = 0; i < n; ) {
      let j = i + 1;
      while (j < n && prefix[order[j]] === prefix[order[i]]) j++;
      if (j - i > 1) order.subarray(i, j).sort(whole);
      i = j;
    }
    // Duplicates are next to each other now. Compared only where the prefixes agree, and copied by a loop: a
    // Buffer.compare and a Buffer.copy per id (native calls, each checking its arguments) were 270 of these
    // 350 ms for 300,000 ids.
    const out = Buffer.allocUnsafe(DIGEST * n);
    let m = 0;
    let last = -1;
    for (const k of order) {
      const from = DIGEST * k;
      if (
        last >= 0 &&
        prefix[k] === prefix[last] &&
        ids.compare(ids, DIGEST * last, DIGEST * (last + 1), from, from + DIGEST) === 0
      ) {
        continue;
      }
      const to = DIGEST * m++;
      for (let b = 0; b < DIGEST; b++) out[to + b] = ids[from + b];
      last = k;
    }
    return out.subarray(0, DIGEST * m);
  }

  private firstChunk(i: number): number {
    return i === 0 ? 0 : this.columns.chunkEnd[i - 1];
  }

  /** Made each time, not kept: one string a chunk for the whole snapshot was ~80 bytes a chunk. */
  private hexId(k: number): string {
    return this.columns.id.toString("hex", DIGEST * k, DIGEST * (k + 1));
  }

  private path(i: number): string {
    return this.columns.path.toString("utf8", i === 0 ? 0 : this.columns.pathEnd[i - 1], this.columns.pathEnd[i]);
  }

  /** The slot holding `path`, or the free slot where it would go. */
  private probe(path: string, hash: number): number {
    const mask = this.slots.length - 1;
    for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
      const i = this.slots[slot] - 1;
      if (i < 0 || (this.hashes[i] === hash && this.path(i) === path)) return slot;
    }
  }

  /** An index of these files (later files with the same path win). */
  static fromFiles(files: readonly LocalIndexFile[]): LocalIndex {
    return decode(encode({ scope: "", snapshot: "", manifests: [], files })).index;
  }
}

/**
 * The index saved for `scope`, or an empty one when there is none, it is damaged, or it belongs to another
 * scope (another repository or source).
 */
export async function loadLocalIndex(file: string, scope: string): Promise<LocalIndex> {
  return (await readLocalIndex(file, scope)).index;
}

/**
 * The index of `scope` in `file`, empty where there is none to use (no file, another scope's, or one another
 * version of the agent wrote), and `unusable` saying why a file that is there could not be used (damaged, or
 * unreadable): a cache only costs a full read, but whoever sees every file read again should hear why.
 */
export async function readLocalIndex(file: string, scope: string): Promise<{ index: LocalIndex; unusable?: string }> {
  let data: Buffer;
  try {
    data = await readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { index: LocalIndex.empty() };
    return { index: LocalIndex.empty(), unusable: (err as Error).message };
  }
  try {
    const decoded = decode(data);
    return { index: decoded.scope === scope ? decoded.index : LocalIndex.empty() };
  } catch (err) {
    if (err instanceof OtherVersion) return { index: LocalIndex.empty() };
    return { index: LocalIndex.empty(), unusable: `damaged: ${(err as Error).message}` };
  }
}

/**
 * Another scope's index not saved for this long is deleted by the next save of any scope: a workspace not
 * snapshotted on this host for a month (a job that ended, moved, or a tenant gone) reads every file once if it
 * comes back, and the host does not keep its paths, nor the files' count of them, for ever. Every snapshot saves
 * its scope's index, so a file's mtime is its last snapshot.
 */
export const UNUSED_LOCAL_INDEX_MS = 30 * 24 * 3600 * 1000;
/** A save's temp file this old is one a crash left (a save writes it in well under a second). */
const ABANDONED_TEMP_MS = 3600 * 1000;

/**
 * Replaces the index of `scope` (written to a temporary file, then renamed over it), then deletes the directory's
 * leftovers: other scopes' indexes unused for UNUSED_LOCAL_INDEX_MS and crashed saves' temp files.
 */
export async function saveLocalIndex(file: string, index: SavedIndex): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, encode(index), 0o600);
  const legacy = legacyPath(file);
  if (legacy) await rm(legacy, { force: true });
  await sweepLocalIndexes(dirname(file), file).catch(() => {}); // housekeeping: never fails a save
}

async function sweepLocalIndexes(dir: string, saved: string): Promise<void> {
  const now = Date.now();
  for (const name of await readdir(dir)) {
    const temp = name.startsWith(".") && name.endsWith(".tmp"); // writeFileAtomic's
    if (!temp && !/^[0-9a-f]{32}\.(idx|json)$/.test(name)) continue;
    const path = join(dir, name);
    if (path === saved) continue;
    const info = await lstat(path).catch(() => undefined);
    if (info?.isFile() && now - info.mtimeMs > (temp ? ABANDONED_TEMP_MS : UNUSED_LOCAL_INDEX_MS)) {
      await rm(path, { force: true });
    }
  }
}

/** A local index another format version wrote (an agent before or after this one): read as none, not damaged. */
class OtherVersion extends Error {}

const pad8 = (n: number): number => Math.ceil(n / 8) * 8;

/** What a snapshot leaves for the next one of its scope. */
export interface SavedIndex {
  scope: string;
  /** The snapshot's id, and the ids of its manifest parts. */
  snapshot: string;
  manifests: readonly string[];
  /** The hex SHA-256 of each manifest part's plain JSON, as `manifests` (LocalIndex.storedParts). */
  manifestPlains?: readonly string[];
  /** Iterated twice (counted, then written): an array, or an object whose iterator starts afresh each time. */
  files: Iterable<LocalIndexFile | RawLocalIndexFile>;
}

function encode({ scope, snapshot, manifests, manifestPlains, files }: SavedIndex): Buffer {
  if (manifestPlains && manifestPlains.length !== manifests.length) {
    throw new Error(`${manifestPlains.length} plain digests for ${manifests.length} manifest parts`);
  }
  let count = 0;
  let pathBytes = 0;
  let chunks = 0;
  for (const f of files) {
    count++;
    pathBytes += Buffer.byteLength(f.path, "utf8");
    chunks += f.lengths.length;
  }
  const header: Header = {
    version: VERSION,
    scope,
    snapshot,
    manifests: [...manifests],
    ...(manifestPlains ? { manifestPlains: [...manifestPlains] } : {}),
    files: count,
    chunks,
    pathBytes,
  };
  const headerBytes = Buffer.from(JSON.stringify(header), "utf8");
  const layout = columnLayout(MAGIC.length + 4 + headerBytes.length, header);
  const out = Buffer.alloc(layout.end + DIGEST);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(headerBytes.length, MAGIC.length);
  headerBytes.copy(out, MAGIC.length + 4);
  const c = columnsIn(out, layout, header);
  let i = 0;
  let chunk = 0;
  let pathAt = 0;
  for (const f of files) {
    if (i === count) throw new Error("the files changed while the index was written");
    c.size[i] = f.size;
    c.mtimeNs[i] = f.mtimeNs;
    c.ino[i] = f.ino;
    c.ctimeNs[i] = f.ctimeNs;
    const n = f.lengths.length;
    if (chunk + n > chunks) throw new Error("the files changed while the index was written");
    if ("ids" in f) {
      if (f.ids.length !== DIGEST * n) throw new Error(`${f.path}: ${f.ids.length} bytes of ids for ${n} chunks`);
      c.id.set(f.ids, DIGEST * chunk);
    } else {
      if (f.chunks.length !== n) throw new Error(`${f.path}: ${f.chunks.length} chunk ids for ${n} lengths`);
      for (let k = 0; k < n; k++) {
        if (c.id.write(f.chunks[k], DIGEST * (chunk + k), "hex") !== DIGEST) {
          throw new Error(`bad chunk id ${f.chunks[k]}`);
        }
      }
    }
    c.length.set(f.lengths, chunk);
    chunk += n;
    c.chunkEnd[i] = chunk;
    pathAt += c.path.write(f.path, pathAt, "utf8");
    c.pathEnd[i] = pathAt;
    i++;
  }
  if (i !== count || chunk !== chunks || pathAt !== pathBytes) {
    throw new Error("the files changed while the index was written");
  }
  createHash("sha256").update(out.subarray(0, layout.end)).digest().copy(out, layout.end);
  return out;
}

interface Layout {
  size: number;
  mtimeNs: number;
  ino: number;
  ctimeNs: number;
  chunkEnd: number;
  pathEnd: number;
  length: number;
  id: number;
  path: number;
  end: number;
}

/** Where each column starts, after a header ending at `headerEnd`. */
function columnLayout(headerEnd: number, h: Header): Layout {
  const size = pad8(headerEnd);
  const mtimeNs = size + 8 * h.files;
  const ino = mtimeNs + 8 * h.files;
  const ctimeNs = ino + 8 * h.files;
  const chunkEnd = ctimeNs + 8 * h.files;
  const pathEnd = chunkEnd + pad8(4 * h.files);
  const length = pathEnd + pad8(4 * h.files);
  const id = length + pad8(4 * h.chunks);
  const path = id + DIGEST * h.chunks;
  return { size, mtimeNs, ino, ctimeNs, chunkEnd, pathEnd, length, id, path, end: pad8(path + h.pathBytes) };
}

/** Typed views of the columns inside `data` (its memory must start 8-byte aligned). */
function columnsIn(data: Buffer, at: Layout, h: Header): Columns {
  const base = data.byteOffset;
  const memory = data.buffer;
  return {
    size: new Float64Array(memory, base + at.size, h.files),
    mtimeNs: new BigInt64Array(memory, base + at.mtimeNs, h.files),
    ino: new BigUint64Array(memory, base + at.ino, h.files),
    ctimeNs: new BigInt64Array(memory, base + at.ctimeNs, h.files),
    chunkEnd: new Uint32Array(memory, base + at.chunkEnd, h.files),
    pathEnd: new Uint32Array(memory, base + at.pathEnd, h.files),
    length: new Uint32Array(memory, base + at.length, h.chunks),
    id: data.subarray(at.id, at.id + DIGEST * h.chunks),
    path: data.subarray(at.path, at.path + h.pathBytes),
  };
}

/** Reads a format 3 file, checking its digest and that every column is consistent; throws on anything else. */
function decode(raw: Buffer): { scope: string; index: LocalIndex } {
  if (raw.length < MAGIC.length + 4 + DIGEST || !raw.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new Error("not a local index");
  }
  const body = raw.subarray(0, raw.length - DIGEST);
  if (!createHash("sha256").update(body).digest().equals(raw.subarray(body.length))) throw new Error("bad digest");
  const headerLength = raw.readUInt32LE(MAGIC.length);
  if (headerLength > MAX_HEADER || MAGIC.length + 4 + headerLength > body.length) throw new Error("bad header");
  const h = JSON.parse(raw.toString("utf8", MAGIC.length + 4, MAGIC.length + 4 + headerLength)) as Header;
  if (h.version !== VERSION) throw new OtherVersion(`format ${String(h.version)}`);
  const counts = [h.files, h.chunks, h.pathBytes];
  const manifestsOk = Array.isArray(h.manifests) && h.manifests.every((id) => typeof id === "string");
  const plainsOk =
    h.manifestPlains === undefined ||
    (Array.isArray(h.manifestPlains) &&
      h.manifestPlains.length === h.manifests.length &&
      h.manifestPlains.every((digest) => typeof digest === "string" && HEX_DIGEST.test(digest)));
  if (typeof h.scope !== "string" || typeof h.snapshot !== "string" || !manifestsOk || !plainsOk) {
    throw new Error("bad header");
  }
  if (!counts.every((n) => Number.isSafeInteger(n) && n >= 0 && n < 2 ** 32)) throw new Error("bad counts");
  const layout = columnLayout(MAGIC.length + 4 + headerLength, h);
  if (layout.end !== body.length) throw new Error("bad length");
  // Typed arrays need aligned memory: readFile's buffer is its own allocation, but do not count on it.
  const data = raw.byteOffset % 8 === 0 ? raw : Buffer.from(raw);
  const c = columnsIn(data, layout, h);
  let chunk = 0;
  let pathAt = 0;
  for (let i = 0; i < h.files; i++) {
    const size = c.size[i];
    const chunkEnd = c.chunkEnd[i];
    const pathEnd = c.pathEnd[i];
    if (!Number.isSafeInteger(size) || size < 0 || chunkEnd < chunk || chunkEnd > h.chunks || pathEnd <= pathAt) {
      throw new Error(`bad entry ${i}`);
    }
    let sum = 0;
    for (; chunk < chunkEnd; chunk++) {
      if (c.length[chunk] === 0) throw new Error(`empty chunk in entry ${i}`);
      sum += c.length[chunk];
    }
    if (sum !== size) throw new Error(`bad lengths in entry ${i}`);
    pathAt = pathEnd;
  }
  if (chunk !== h.chunks || pathAt !== h.pathBytes) throw new Error("bad totals");
  const storedParts = new Map((h.manifestPlains ?? []).map((digest, i) => [digest, h.manifests[i]]));
  return { scope: h.scope, index: makeIndex(c, new Set(h.manifests), storedParts) };
}
