// Pack objects: sealed chunk blobs back to back, then a sealed header listing them, then the header's
// length. The header makes a pack self-describing; the index object beside it is a copy for quick loading.
import { randomBytes } from "node:crypto";
import type { BlobCallOptions, BlobInfo, BlobStore } from "./blob-store.js";
import { RepositoryError } from "./errors.js";
import { IdTable } from "./id-table.js";
import { MAX_CHUNK_LENGTH } from "./manifest.js";
import { isRepositoryKey, ObjectKind, openObject, sealObject } from "./sealing.js";

export interface PackEntry {
  id: Buffer;
  offset: number;
  length: number;
  plainLength: number;
}

export interface PackIndex {
  packId: string;
  packSize: number;
  entries: PackEntry[];
}

const ENTRY_SIZE = 32 + 4 + 4 + 4;
/** The most a sealed chunk can take: its plain bytes (stored raw where LZ4 does not shrink them) and the envelope. */
const MAX_SEALED_CHUNK_LENGTH = MAX_CHUNK_LENGTH + 64;
const FORMAT_VERSION = 1;

export function packKey(packId: string): string {
  return `data/${packId.slice(0, 2)}/${packId}`;
}

export function indexKey(packId: string): string {
  return `index/${packId}`;
}

/**
 * The packs the store lists, by id. A name under data/ that no writer gives (isRepositoryKey: put there by hand, or
 * by another tool) is left out, and given to `onForeign`: no pack, so never deleted as one without an index object.
 */
export async function listPacks(
  store: BlobStore,
  options?: BlobCallOptions & { onForeign?: (key: string) => void },
): Promise<Map<string, BlobInfo>> {
  const packs = new Map<string, BlobInfo>();
  for await (const info of store.list("data/", options)) {
    if (isRepositoryKey(info.key)) packs.set(info.key.slice("data/xx/".length), info);
    else options?.onForeign?.(info.key);
  }
  return packs;
}

export function newPackId(): string {
  return randomBytes(32).toString("hex");
}

/**
 * A pack's entries while a writer fills it: held in the encoding of its header (ENTRY_SIZE bytes each, behind
 * the version and the count) with an IdTable over the ids, not as an object and a Buffer per entry. A pack
 * of 300,000 small files' chunks held ~50 MB that way until it was written, and the writer's Set of their hex
 * ids as much again.
 */
export class PackEntryList {
  private buf = Buffer.allocUnsafe(5 + ENTRY_SIZE * 256);
  private n = 0;
  private readonly ids = new IdTable(() => this.buf, 5, ENTRY_SIZE);

  get count(): number {
    return this.n;
  }

  push(id: Buffer, offset: number, length: number, plainLength: number): void {
    if (id.length !== 32) throw new RepositoryError("invalid-argument", "a chunk id must be 32 bytes");
    if (5 + ENTRY_SIZE * (this.n + 1) > this.buf.length) {
      const grown = Buffer.allocUnsafe(5 + 2 * (this.buf.length - 5));
      this.buf.copy(grown, 0, 0, 5 + ENTRY_SIZE * this.n);
      this.buf = grown;
    }
    const at = 5 + ENTRY_SIZE * this.n;
    id.copy(this.buf, at);
    this.buf.writeUInt32LE(offset, at + 32);
    this.buf.writeUInt32LE(length, at + 36);
    this.buf.writeUInt32LE(plainLength, at + 40);
    this.ids.add(this.n++);
  }

  /** Copies entry k's id into `to` at `at`. */
  copyId(k: number, to: Buffer, at: number): void {
    this.buf.copy(to, at, 5 + ENTRY_SIZE * k, 5 + ENTRY_SIZE * k + 32);
  }

  offset(k: number): number {
    return this.buf.readUInt32LE(5 + ENTRY_SIZE * k + 32);
  }

  /** Sealed length of entry k's blob. */
  blobLength(k: number): number {
    return this.buf.readUInt32LE(5 + ENTRY_SIZE * k + 36);
  }

  plainLength(k: number): number {
    return this.buf.readUInt32LE(5 + ENTRY_SIZE * k + 40);
  }

  /** Whether an entry has this id. */
  has(id: Buffer): boolean {
    return id.length === 32 && this.ids.find(id) >= 0;
  }

  /** The header's plain bytes: version, count, entries (a view, valid until the next push). */
  encoded(): Buffer {
    this.buf.writeUInt8(FORMAT_VERSION, 0);
    this.buf.writeUInt32LE(this.n, 1);
    return this.buf.subarray(0, 5 + ENTRY_SIZE * this.n);
  }
}

function encodeEntries(entries: readonly PackEntry[] | PackEntryList): Buffer {
  if (entries instanceof PackEntryList) return entries.encoded();
  const out = Buffer.allocUnsafe(5 + entries.length * ENTRY_SIZE);
  out.writeUInt8(FORMAT_VERSION, 0);
  out.writeUInt32LE(entries.length, 1);
  let at = 5;
  for (const e of entries) {
    e.id.copy(out, at);
    out.writeUInt32LE(e.offset, at + 32);
    out.writeUInt32LE(e.length, at + 36);
    out.writeUInt32LE(e.plainLength, at + 40);
    at += ENTRY_SIZE;
  }
  return out;
}

function decodeEntries(buf: Buffer, at: number, what: string): PackEntry[] {
  if (buf.length < at + 5 || buf.readUInt8(at) !== FORMAT_VERSION) {
    throw new RepositoryError("corrupt", `${what} has an unknown format version`);
  }
  const count = buf.readUInt32LE(at + 1);
  if (buf.length !== at + 5 + count * ENTRY_SIZE) throw new RepositoryError("corrupt", `${what} has a bad length`);
  const entries: PackEntry[] = new Array(count);
  let pos = at + 5;
  for (let i = 0; i < count; i++) {
    const entry = {
      id: Buffer.from(buf.subarray(pos, pos + 32)),
      offset: buf.readUInt32LE(pos + 32),
      length: buf.readUInt32LE(pos + 36),
      plainLength: buf.readUInt32LE(pos + 40),
    };
    // No writer makes a chunk outside these: a length from here sizes the reader's buffers (a restore's, the
    // LZ4 decoder's memory, which never shrinks), so one of up to 4 GiB is refused, not allocated.
    if (entry.plainLength === 0 || entry.plainLength > MAX_CHUNK_LENGTH || entry.length > MAX_SEALED_CHUNK_LENGTH) {
      throw new RepositoryError(
        "corrupt",
        `${what} gives chunk ${entry.id.toString("hex")} an impossible length (${entry.length} stored, ${entry.plainLength} plain)`,
      );
    }
    entries[i] = entry;
    pos += ENTRY_SIZE;
  }
  return entries;
}

/** The tail appended to a pack's blobs: sealed header + its length (u32 little-endian). */
export function sealPackTrailer(key: Buffer, entries: readonly PackEntry[] | PackEntryList): Buffer {
  const header = sealObject(key, ObjectKind.packHeader, encodeEntries(entries));
  const trailer = Buffer.allocUnsafe(header.length + 4);
  header.copy(trailer, 0);
  trailer.writeUInt32LE(header.length, header.length);
  return trailer;
}

/** Reads the header at the end of a whole pack (used by check and index rebuilds). */
export function openPackTrailer(key: Buffer, pack: Buffer, packId: string): PackEntry[] {
  const what = `pack ${packId}`;
  if (pack.length < 4) throw new RepositoryError("corrupt", `${what} is too short to hold a header`);
  const headerLength = pack.readUInt32LE(pack.length - 4);
  if (headerLength + 4 > pack.length) throw new RepositoryError("corrupt", `${what} has a bad header length`);
  return openPackHeader(key, pack.subarray(pack.length - 4 - headerLength, pack.length - 4), packId);
}

/** Opens a pack's sealed header (the bytes before its last 4): its entries, as the pack's index object lists them. */
export function openPackHeader(key: Buffer, sealed: Buffer, packId: string): PackEntry[] {
  const what = `header of pack ${packId}`;
  return decodeEntries(openObject(key, ObjectKind.packHeader, sealed, what), 0, what);
}

export function sealIndex(
  key: Buffer,
  index: { packId: string; packSize: number; entries: readonly PackEntry[] | PackEntryList },
): Buffer {
  const entries = encodeEntries(index.entries);
  const plain = Buffer.allocUnsafe(32 + 8 + entries.length);
  Buffer.from(index.packId, "hex").copy(plain, 0);
  plain.writeBigUInt64LE(BigInt(index.packSize), 32);
  entries.copy(plain, 40);
  return sealObject(key, ObjectKind.index, plain);
}

export function openIndex(key: Buffer, sealed: Buffer, packId: string): PackIndex {
  const what = `index object ${indexKey(packId)}`;
  const plain = openObject(key, ObjectKind.index, sealed, what);
  if (plain.length < 40) throw new RepositoryError("corrupt", `${what} is too short`);
  const storedId = plain.subarray(0, 32).toString("hex");
  if (storedId !== packId) throw new RepositoryError("corrupt", `${what} describes pack ${storedId}`);
  return { packId, packSize: Number(plain.readBigUInt64LE(32)), entries: decodeEntries(plain, 40, what) };
}
