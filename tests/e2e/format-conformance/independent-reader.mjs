#!/usr/bin/env node
// An independent reader of the Dumont repository format, written from repository/FORMAT.md alone.
//
// It shares no code with the implementation (repository/, host-agent/): it imports Node's built-in modules only
// and decodes everything itself, its own LZ4 block decoder included. tests/e2e/format-conformance.test.ts runs it
// against repositories the real tool writes, so that FORMAT.md (which this file follows) and the code cannot
// drift apart unnoticed. Where this file and FORMAT.md disagree, FORMAT.md is right and this file is the bug;
// where the code and FORMAT.md disagree, one of them must change. Comments name the FORMAT.md section (its
// heading) each part implements.
//
// Usage (REPO is a directory or a file:// URL; KEY_FILE holds the repository key in any form FORMAT.md allows):
//   node independent-reader.mjs list    REPO KEY_FILE                  the snapshot records, in list order
//   node independent-reader.mjs show    REPO KEY_FILE SNAPSHOT         a record, its manifest parts and entries
//   node independent-reader.mjs restore REPO KEY_FILE SNAPSHOT TARGET  restores into a new or empty directory
//   node independent-reader.mjs verify  REPO KEY_FILE                  opens and checks every object and chunk
// SNAPSHOT is an id, a unique prefix of one, or `latest`. Every command prints one JSON value on stdout; a
// failure prints one line, `independent-reader: <why>`, on stderr and exits 1 (verify exits 1 when it lists
// problems, after printing its report).
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import zlib from "node:zlib";

const MiB = 1024 * 1024;
/** "Storage": no stored object but a pack is over 64 MiB and 64 bytes sealed. */
const MAX_SEALED_OBJECT = 64 * MiB + 64;
/** "Keys and sealing": an object or a chunk is at most 64 MiB plain. */
const MAX_PLAIN = 64 * MiB;
/** "Manifests and snapshots": the parts hold at most 256 MiB plain, in at most 256 parts. */
const MAX_PARTS = 256;
const MAX_MANIFEST_PLAIN = 256 * MiB;
/** "Storage": object ids are 64 lowercase hex characters. */
const OBJECT_ID = /^[0-9a-f]{64}$/;
/** "Manifests and snapshots": a record's time is ISO 8601, UTC, to the millisecond. */
const RECORD_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** "Keys and sealing": the associated data of each kind of object (a chunk's is its own 32-byte id). */
const AAD = {
  packHeader: "dumont/pack-header/v1",
  index: "dumont/index/v1",
  manifest: "dumont/manifest/v1",
  snapshot: "dumont/snapshot/v1",
  lock: "dumont/lock/v1",
  keyCheck: "dumont/key-check/v1",
};
const CODEC_RAW = 0;
const CODEC_LZ4 = 1;
const CODEC_DEFLATE = 2;

class FormatError extends Error {}
const fail = (message) => {
  throw new FormatError(message);
};
const sha256 = (data) => crypto.createHash("sha256").update(data).digest("hex");

// ---------------------------------------------------------------------------------------------------------------
// "Keys and sealing": the key
// ---------------------------------------------------------------------------------------------------------------

/**
 * The 32-byte key from a key file: 64 hex characters, or the base64 or base64url of the 32 bytes (surrounding
 * whitespace ignored), or exactly 32 raw bytes unless they read as text (printable characters and whitespace).
 */
function readKey(file) {
  const raw = fs.readFileSync(file);
  const readsAsText = raw.every((b) => (b >= 0x09 && b <= 0x0d) || (b >= 0x20 && b <= 0x7e));
  if (raw.length === 32 && !readsAsText) return raw;
  const text = raw.toString("utf8").trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, "hex");
  if (/^[A-Za-z0-9+/]{43}=?$/.test(text) || /^[A-Za-z0-9_-]{43}=?$/.test(text)) {
    const key = Buffer.from(text, text.includes("-") || text.includes("_") ? "base64url" : "base64");
    if (key.length === 32) return key;
  }
  return fail(`key file ${file} holds no key: not 64 hex characters, base64 of 32 bytes, or 32 raw bytes`);
}

// ---------------------------------------------------------------------------------------------------------------
// "Keys and sealing": codecs (LZ4 block format with a 4-byte little-endian size prefix; raw DEFLATE)
// ---------------------------------------------------------------------------------------------------------------

/** Reads an LZ4 length: `n`, and while the last byte added was 255, one more byte added. */
function lz4Length(src, at, n, what) {
  let length = n;
  let pos = at;
  if (n === 15) {
    let b;
    do {
      if (pos >= src.length) fail(`${what}: LZ4 data ends inside a length`);
      b = src[pos++];
      length += b;
    } while (b === 255);
  }
  return { length, pos };
}

/** Decodes an LZ4 block preceded by its decompressed size (u32 LE), as lz4_flex `compress_prepend_size` writes. */
function lz4Decompress(body, what) {
  if (body.length < 4) fail(`${what}: LZ4 body shorter than its size prefix`);
  const size = body.readUInt32LE(0);
  if (size > MAX_PLAIN) fail(`${what}: LZ4 size prefix ${size} is over 64 MiB`);
  const out = Buffer.allocUnsafe(size);
  let ip = 4;
  let op = 0;
  while (ip < body.length) {
    // A sequence: token (literal length << 4 | match length - 4), literals, then a 2-byte offset and the match.
    const token = body[ip++];
    const literals = lz4Length(body, ip, token >>> 4, what);
    ip = literals.pos;
    if (ip + literals.length > body.length || op + literals.length > size) fail(`${what}: LZ4 literals overrun`);
    body.copy(out, op, ip, ip + literals.length);
    ip += literals.length;
    op += literals.length;
    if (ip === body.length) break; // the last sequence has literals only
    if (ip + 2 > body.length) fail(`${what}: LZ4 data ends inside an offset`);
    const offset = body.readUInt16LE(ip);
    ip += 2;
    if (offset === 0 || offset > op) fail(`${what}: LZ4 match offset ${offset} at output byte ${op}`);
    const match = lz4Length(body, ip, token & 15, what);
    ip = match.pos;
    const length = match.length + 4;
    if (op + length > size) fail(`${what}: LZ4 match overruns the size prefix`);
    // Byte by byte: a match may overlap the bytes it is copying (offset < length repeats a pattern).
    for (let k = 0; k < length; k++, op++) out[op] = out[op - offset];
  }
  if (op !== size) fail(`${what}: LZ4 data decodes to ${op} bytes, its prefix says ${size}`);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// "Keys and sealing": sealed = nonce[12] ‖ AES-256-GCM(key, nonce, aad, codec[1] ‖ body) ‖ tag[16]
// ---------------------------------------------------------------------------------------------------------------

/**
 * Opens a sealed blob. `chunk`: codec 2 (DEFLATE) is for objects only, never chunks. Returns the decoded data,
 * the codec, and the coded plaintext (codec byte and body, as the synthetic nonce of a manifest part covers it).
 */
function open(key, sealed, aad, what, { chunk = false } = {}) {
  if (sealed.length < 12 + 1 + 16) fail(`${what}: ${sealed.length} bytes, too short to be sealed`);
  const decipher = crypto.createDecipheriv("aes-256-gcm", key, sealed.subarray(0, 12));
  decipher.setAAD(typeof aad === "string" ? Buffer.from(aad, "utf8") : aad);
  decipher.setAuthTag(sealed.subarray(sealed.length - 16));
  let coded;
  try {
    coded = Buffer.concat([decipher.update(sealed.subarray(12, sealed.length - 16)), decipher.final()]);
  } catch {
    return fail(`${what} does not open (wrong key, wrong associated data, or damaged)`);
  }
  const codec = coded[0];
  const body = coded.subarray(1);
  let data;
  if (codec === CODEC_RAW) data = body;
  else if (codec === CODEC_LZ4) data = lz4Decompress(body, what);
  else if (codec === CODEC_DEFLATE && !chunk) {
    try {
      data = zlib.inflateRawSync(body, { maxOutputLength: MAX_PLAIN });
    } catch {
      return fail(`${what}: DEFLATE body does not decompress to at most 64 MiB`);
    }
  } else fail(`${what}: codec ${codec} is unknown${chunk ? " for a chunk" : ""}`);
  if (data.length > MAX_PLAIN) fail(`${what}: over 64 MiB plain`);
  return { data, codec, coded };
}

/**
 * "Keys and sealing": the nonce a manifest part is sealed with, deterministically: the first 12 bytes of
 * HMAC-SHA256(nonce key, len(aad) as u32 LE ‖ aad ‖ codec ‖ body), the nonce key being
 * HMAC-SHA256(key, "dumont/synthetic-nonce/v1"). Readers need not know it; `verify` checks that writers use it.
 */
function syntheticNonce(key, aad, coded) {
  const nonceKey = crypto.createHmac("sha256", key).update("dumont/synthetic-nonce/v1").digest();
  const aadBytes = Buffer.from(aad, "utf8");
  const length = Buffer.alloc(4);
  length.writeUInt32LE(aadBytes.length);
  return crypto.createHmac("sha256", nonceKey).update(length).update(aadBytes).update(coded).digest().subarray(0, 12);
}

// ---------------------------------------------------------------------------------------------------------------
// "Packs and index objects": header = u8 version(1) ‖ u32le n ‖ n × (id[32] ‖ u32le offset ‖ u32le length ‖
// u32le plain length)
// ---------------------------------------------------------------------------------------------------------------

function parsePackHeader(header, what) {
  if (header.length < 5 || header[0] !== 1) fail(`${what}: header version ${header[0]}, not 1`);
  const n = header.readUInt32LE(1);
  if (header.length !== 5 + n * 44) fail(`${what}: header of ${header.length} bytes cannot hold ${n} entries`);
  const entries = [];
  for (let i = 0; i < n; i++) {
    const at = 5 + i * 44;
    entries.push({
      id: header.subarray(at, at + 32).toString("hex"),
      offset: header.readUInt32LE(at + 32),
      length: header.readUInt32LE(at + 36),
      plainLength: header.readUInt32LE(at + 40),
    });
  }
  return entries;
}

// ---------------------------------------------------------------------------------------------------------------
// "Storage": a file:// repository, its layout and its objects
// ---------------------------------------------------------------------------------------------------------------

class Repository {
  constructor(location, key) {
    this.dir = location.startsWith("file:") ? fileURLToPath(location) : path.resolve(location);
    this.key = key;
    /** Counts of codecs seen, by kind of blob: { chunk: { 0: n, 1: m }, manifest: { 2: k }, … }. */
    this.codecs = {};
    this.packFds = new Map();
  }

  countCodec(kind, codec) {
    this.codecs[kind] ??= {};
    this.codecs[kind][codec] = (this.codecs[kind][codec] ?? 0) + 1;
  }

  /** The file of object `name` ("snapshots/<id>", "data/ab/<id>"). */
  file(name) {
    return path.join(this.dir, ...name.split("/"));
  }

  /** A stored object other than a pack, refused before it is read when it is over the size limit. */
  readObject(name) {
    const file = this.file(name);
    const { size } = fs.statSync(file);
    if (size > MAX_SEALED_OBJECT) fail(`${name} is ${size} bytes, more than any object but a pack may be`);
    return fs.readFileSync(file);
  }

  /** The object ids under a prefix ("index", "snapshots"); `.tmp-…` files of interrupted writes are skipped. */
  listIds(prefix) {
    const dir = this.file(prefix);
    if (!fs.existsSync(dir)) return [];
    return fs
      .readdirSync(dir)
      .filter((name) => OBJECT_ID.test(name))
      .sort();
  }

  /** Pack ids found under data/<id[0:2]>/. */
  listPackIds() {
    const data = this.file("data");
    if (!fs.existsSync(data)) return [];
    const ids = [];
    for (const prefix of fs.readdirSync(data).sort()) {
      for (const name of fs.readdirSync(path.join(data, prefix)).sort()) {
        if (OBJECT_ID.test(name) && name.startsWith(prefix)) ids.push(name);
      }
    }
    return ids;
  }

  packFile(packId) {
    return this.file(`data/${packId.slice(0, 2)}/${packId}`);
  }

  /** An object named by the SHA-256 of its stored bytes (manifests, snapshots), checked against its id. */
  readHashedObject(dir, id, aad) {
    if (!OBJECT_ID.test(id)) fail(`${dir}/${id}: not an object id`);
    const sealed = this.readObject(`${dir}/${id}`);
    const hash = sha256(sealed);
    if (hash !== id) fail(`${dir}/${id}: its stored bytes hash to ${hash}`);
    const opened = open(this.key, sealed, aad, `${dir}/${id}`);
    this.countCodec(dir === "manifests" ? "manifest" : "snapshot", opened.codec);
    return { sealed, ...opened };
  }

  // "Keys and sealing": config is plaintext JSON; its key check proves the key before anything else is read.
  openConfig() {
    let config;
    try {
      config = JSON.parse(fs.readFileSync(this.file("config"), "utf8"));
    } catch (err) {
      fail(`${this.dir} is not a repository: its config cannot be read (${err.message})`);
    }
    if (config.format !== "dumont-repository" || config.version !== 1) {
      fail(`${this.dir}: unknown repository format ${JSON.stringify(config.format)} version ${config.version}`);
    }
    if (!/^[0-9a-f]{32}$/.test(config.id)) fail(`config: repository id ${JSON.stringify(config.id)}`);
    let check;
    try {
      check = open(this.key, Buffer.from(config.keyCheck, "base64"), AAD.keyCheck, "key check");
    } catch {
      fail(`the key does not open the repository at ${this.dir} (its key check does not open)`);
    }
    this.countCodec("keyCheck", check.codec);
    if (check.data.toString("utf8") !== config.id) fail("the key check opens but does not hold the repository id");
    this.config = config;
    return config;
  }

  // "Packs and index objects": index/<pack id> = sealed(id[32] ‖ u64le pack size ‖ header)
  loadIndex() {
    /** chunk id → where it is stored; pack id → { size, entries }. */
    this.chunks = new Map();
    this.packs = new Map();
    for (const packId of this.listIds("index")) {
      const what = `index/${packId}`;
      const { data, codec } = open(this.key, this.readObject(what), AAD.index, what);
      this.countCodec("index", codec);
      if (data.length < 40) fail(`${what}: ${data.length} bytes, too short`);
      const named = data.subarray(0, 32).toString("hex");
      if (named !== packId) fail(`${what} describes pack ${named}`);
      const size = Number(data.readBigUInt64LE(32));
      const entries = parsePackHeader(data.subarray(40), what);
      this.packs.set(packId, { size, entries });
      for (const e of entries) this.chunks.set(e.id, { packId, ...e });
    }
  }

  /** A chunk's plain bytes, authenticated (its id is the aad) and checked: plain length and SHA-256 = id. */
  readChunk(id) {
    const at = this.chunks.get(id);
    if (!at) fail(`chunk ${id} is in no index object`);
    let fd = this.packFds.get(at.packId);
    if (fd === undefined) {
      fd = fs.openSync(this.packFile(at.packId), "r");
      this.packFds.set(at.packId, fd);
    }
    const sealed = Buffer.alloc(at.length);
    if (fs.readSync(fd, sealed, 0, at.length, at.offset) !== at.length) fail(`chunk ${id}: pack ${at.packId} ends`);
    return this.openChunk(id, sealed, at.plainLength);
  }

  openChunk(id, sealed, plainLength) {
    const { data, codec } = open(this.key, sealed, Buffer.from(id, "hex"), `chunk ${id}`, { chunk: true });
    this.countCodec("chunk", codec);
    if (data.length !== plainLength) fail(`chunk ${id}: ${data.length} bytes plain, its index says ${plainLength}`);
    if (sha256(data) !== id) fail(`chunk ${id}: its plain bytes do not hash to its id`);
    return data;
  }

  close() {
    for (const fd of this.packFds.values()) fs.closeSync(fd);
    this.packFds.clear();
  }

  // -------------------------------------------------------------------------------------------------------------
  // "Manifests and snapshots"
  // -------------------------------------------------------------------------------------------------------------

  /** Every snapshot record, `{ id, ...record }`, in list order: by time, oldest first, then by id. */
  snapshots() {
    const records = this.listIds("snapshots").map((id) => {
      const { data } = this.readHashedObject("snapshots", id, AAD.snapshot);
      const record = JSON.parse(data.toString("utf8"));
      if (typeof record.time !== "string" || !RECORD_TIME.test(record.time)) {
        fail(`snapshots/${id}: time ${JSON.stringify(record.time)} is not ISO 8601 UTC to the millisecond`);
      }
      return { id, ...record };
    });
    return records.sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : a.id < b.id ? -1 : 1));
  }

  /** A snapshot named by id, unique prefix, or `latest` (the last in list order). */
  findSnapshot(name) {
    const all = this.snapshots();
    if (name === "latest") return all.at(-1) ?? fail("there are no snapshots, so none is the latest");
    const found = all.filter((s) => s.id.startsWith(name));
    if (found.length !== 1) fail(`snapshot ${name}: ${found.length} snapshots match`);
    return found[0];
  }

  /**
   * A snapshot's manifest: version 1 records name one part (`manifest`), version 2 records name the parts in
   * order (`manifests`); the parts' entries concatenated are the manifest, and `root` is in the first only.
   */
  manifest(record) {
    let ids;
    if (record.version === 1) ids = [record.manifest];
    else if (record.version === 2) ids = record.manifests;
    else fail(`snapshot ${record.id}: unknown record version ${record.version}`);
    if (!Array.isArray(ids) || ids.length < 1 || ids.length > MAX_PARTS) {
      fail(`snapshot ${record.id}: a manifest has 1 to ${MAX_PARTS} parts`);
    }
    let root;
    let plainBytes = 0;
    const entries = [];
    const parts = [];
    ids.forEach((id, i) => {
      const { data } = this.readHashedObject("manifests", id, AAD.manifest);
      plainBytes += data.length;
      if (plainBytes > MAX_MANIFEST_PLAIN) fail(`snapshot ${record.id}: its manifest is over 256 MiB plain`);
      const part = JSON.parse(data.toString("utf8"));
      if (part.version !== 1 || !Array.isArray(part.entries)) fail(`manifests/${id}: not a version 1 manifest`);
      if (i === 0) root = part.root;
      else if (part.root !== undefined) fail(`manifests/${id}: a root in part ${i + 1}, not the first`);
      for (const e of part.entries) entries.push(e);
      parts.push({ id, entries: part.entries.length, plainBytes: data.length, root: part.root !== undefined });
    });
    return { root, entries, parts };
  }
}

/**
 * "Manifests and snapshots": a record's totals, from its manifest: files (hard links included), dirs (not the
 * root), symlinks, bytes (each hard link counted again), chunks (each reference).
 */
function totalsOf(entries) {
  const totals = { files: 0, dirs: 0, symlinks: 0, bytes: 0, chunks: 0 };
  for (const e of entries) {
    if (e.type === "dir") totals.dirs++;
    else if (e.type === "symlink") totals.symlinks++;
    else if (e.type === "file") {
      totals.files++;
      totals.bytes += e.size;
      totals.chunks += (e.chunks ?? []).length;
    }
  }
  return totals;
}

// ---------------------------------------------------------------------------------------------------------------
// "Restore rules": what a restore refuses
// ---------------------------------------------------------------------------------------------------------------

/** Refuses unsafe paths, duplicates, orphans and wrong types, file entries that do not add up, bad `linkOf`s. */
function checkEntries(entries) {
  const types = new Map([["", "dir"]]); // the target itself is the root directory
  for (const e of entries) {
    const p = e.path;
    if (typeof p !== "string" || p.startsWith("/") || p.split("/").some((c) => c === "" || c === "." || c === "..")) {
      fail(`unsafe path ${JSON.stringify(p)}`);
    }
    if (types.has(p)) fail(`duplicate path ${JSON.stringify(p)}`);
    const parent = p.includes("/") ? p.slice(0, p.lastIndexOf("/")) : "";
    if (types.get(parent) !== "dir") fail(`${JSON.stringify(p)}: its parent is not a directory listed before it`);
    if (e.type !== "dir" && e.type !== "file" && e.type !== "symlink") fail(`${p}: unknown type ${e.type}`);
    if (e.type === "file") {
      const chunks = e.chunks ?? [];
      const lengths = e.lengths ?? [];
      if (chunks.length !== lengths.length || lengths.reduce((a, b) => a + b, 0) !== e.size) {
        fail(`${p}: its chunk lengths do not add up to its size ${e.size}`);
      }
      if (e.linkOf !== undefined && types.get(e.linkOf) !== "file") {
        fail(`${p}: linkOf ${JSON.stringify(e.linkOf)} names no file listed before it`);
      }
    }
    types.set(p, e.type);
  }
  // Symlinks that resolve outside the target, read as names compare exactly, and as a filesystem that ignores
  // case and Unicode normalisation compares them.
  for (const fold of [(s) => s, (s) => s.normalize("NFC").toLowerCase()]) {
    const links = new Map(entries.filter((e) => e.type === "symlink").map((e) => [fold(e.path), e.target]));
    for (const e of entries) {
      if (e.type === "symlink" && resolvesOutside(e.path, links, fold)) {
        fail(`symlink ${e.path} -> ${e.target} resolves outside the target`);
      }
    }
  }
}

/** Follows symlink `linkPath` through the manifest's other symlinks as the kernel would: does it leave the tree? */
function resolvesOutside(linkPath, links, fold) {
  const dir = linkPath.split("/").slice(0, -1); // where we are: components under the target
  const todo = links.get(fold(linkPath)).split("/");
  if (todo[0] === "") return true; // absolute
  for (let hops = 0; todo.length > 0; ) {
    const name = todo.shift();
    if (name === "" || name === ".") continue;
    if (name === "..") {
      if (dir.length === 0) return true;
      dir.pop();
      continue;
    }
    const target = links.get(fold([...dir, name].join("/")));
    if (target === undefined) dir.push(name);
    else {
      if (target.startsWith("/")) return true;
      if (++hops > 40) return false; // a loop resolves nowhere (ELOOP): it reaches nothing outside either
      todo.unshift(...target.split("/")); // relative to the directory holding that link, where we are
    }
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------------------
// "Restore rules": times, modes, owners
// ---------------------------------------------------------------------------------------------------------------

/**
 * A recorded time (nanoseconds since 1970, a decimal string) as Node's utimes takes it: rounded down to its
 * microsecond (toward the past, before 1970 too), given as the middle of that microsecond, half a microsecond
 * away from zero (libuv cuts the seconds toward zero, and the nearest double is often just below), and as a
 * decimal string when negative (a negative number means "now" to Node).
 */
function utimesArg(mtimeNs) {
  const ns = BigInt(mtimeNs);
  const us = ns / 1000n - (ns % 1000n < 0n ? 1n : 0n);
  const seconds = Number(us / 1_000_000n) + Number(us % 1_000_000n) / 1e6;
  return seconds < 0 ? String(seconds - 0.5e-6) : seconds + 0.5e-6;
}

/** Files lose setuid and setgid; everything keeps the permission bits and sticky. */
const fileMode = (mode) => mode & 0o7777 & ~0o6000;
const dirMode = (mode) => mode & 0o7777;

// ---------------------------------------------------------------------------------------------------------------
// "Restore rules": restore
// ---------------------------------------------------------------------------------------------------------------

/**
 * Restores a snapshot into `target` (created, or empty): directories (0700 while writing), files fresh with
 * O_CREAT | O_EXCL | O_NOFOLLOW from checked chunks, hard links once the files they name are whole, symlinks,
 * then directory owners, modes and times deepest first, then the root's onto the target. Owners only as root.
 */
function restore(repo, record, target) {
  const { root, entries } = repo.manifest(record);
  checkEntries(entries);
  const owners = process.getuid?.() === 0;
  if (fs.existsSync(target)) {
    if (fs.readdirSync(target).length > 0) fail(`${target} is not empty`);
  } else fs.mkdirSync(target, { recursive: true });
  fs.chmodSync(target, 0o700);
  const at = (p) => path.join(target, ...p.split("/"));
  const chown = (file, e) => {
    if (owners && (e.uid !== undefined || e.gid !== undefined)) fs.lchownSync(file, e.uid ?? -1, e.gid ?? -1);
  };
  const summary = { id: record.id, entries: entries.length, files: 0, bytesWritten: 0, hardLinks: 0 };

  for (const e of entries) if (e.type === "dir") fs.mkdirSync(at(e.path), { mode: 0o700 });

  // Files. One naming an earlier file by linkOf, with the same chunks, becomes a hard link to it afterwards.
  const files = new Map(entries.filter((e) => e.type === "file").map((e) => [e.path, e]));
  const sameChunks = (a, b) => JSON.stringify(a.chunks ?? []) === JSON.stringify(b.chunks ?? []);
  const links = [];
  const writeFile = (e) => {
    const file = at(e.path);
    const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
    const fd = fs.openSync(file, flags, 0o600);
    try {
      let size = 0;
      (e.chunks ?? []).forEach((id, i) => {
        const data = repo.readChunk(id);
        if (data.length !== e.lengths[i]) fail(`chunk ${i} is ${data.length} bytes, the manifest says ${e.lengths[i]}`);
        fs.writeSync(fd, data, 0, data.length, size);
        size += data.length;
      });
      if (size !== e.size) fail(`${size} bytes written, the manifest says ${e.size}`);
      if (owners && (e.uid !== undefined || e.gid !== undefined)) fs.fchownSync(fd, e.uid ?? -1, e.gid ?? -1);
      fs.fchmodSync(fd, fileMode(e.mode));
      fs.futimesSync(fd, utimesArg(e.mtimeNs), utimesArg(e.mtimeNs));
      summary.files++;
      summary.bytesWritten += size;
    } catch (err) {
      fs.rmSync(file, { force: true }); // a file that cannot be restored exactly is removed and named
      fail(`${e.path} cannot be restored: ${err.message}`);
    } finally {
      fs.closeSync(fd);
    }
  };
  for (const e of files.values()) {
    const first = e.linkOf === undefined ? undefined : files.get(e.linkOf);
    if (first && sameChunks(first, e)) links.push(e);
    else writeFile(e);
  }
  for (const e of links) {
    try {
      fs.linkSync(at(e.linkOf), at(e.path));
      summary.files++;
      summary.hardLinks++;
    } catch {
      writeFile(e); // a filesystem that refuses the link gets a copy
    }
  }

  // Symlinks last; their mode is recorded, not set.
  for (const e of entries) {
    if (e.type !== "symlink") continue;
    fs.symlinkSync(e.target, at(e.path));
    chown(at(e.path), e);
    try {
      fs.lutimesSync(at(e.path), utimesArg(e.mtimeNs), utimesArg(e.mtimeNs));
    } catch {} // not every filesystem times a symlink
  }

  // Directories last, children before parents (parents are listed first), then the target as the root.
  for (const e of [...entries].reverse()) {
    if (e.type !== "dir") continue;
    chown(at(e.path), e);
    fs.chmodSync(at(e.path), dirMode(e.mode));
    fs.utimesSync(at(e.path), utimesArg(e.mtimeNs), utimesArg(e.mtimeNs));
  }
  if (root) {
    chown(target, root);
    fs.chmodSync(target, dirMode(root.mode));
    fs.utimesSync(target, utimesArg(root.mtimeNs), utimesArg(root.mtimeNs));
  }
  return summary;
}

// ---------------------------------------------------------------------------------------------------------------
// "Packs and index objects", "Manifests and snapshots": verify everything
// ---------------------------------------------------------------------------------------------------------------

/**
 * Opens every index object, pack (trailer, header, every chunk) and snapshot with its manifest parts; checks
 * sizes, layout (blobs back to back, then the header, then its length), hashes, and that every chunk a
 * manifest names is indexed with its length. Problems are collected, not thrown.
 */
function verify(repo) {
  const problems = [];
  const check = (fn) => {
    try {
      fn();
    } catch (err) {
      if (!(err instanceof FormatError)) throw err;
      problems.push(err.message);
    }
  };
  const packs = [];
  for (const [packId, indexed] of repo.packs) {
    check(() => {
      const file = repo.packFile(packId);
      if (!fs.existsSync(file)) fail(`pack ${packId}: index/${packId} names it, and it is missing`);
      const pack = fs.readFileSync(file);
      if (pack.length !== indexed.size) fail(`pack ${packId}: ${pack.length} bytes, its index says ${indexed.size}`);
      const headerLength = pack.readUInt32LE(pack.length - 4);
      const headerAt = pack.length - 4 - headerLength;
      if (headerAt < 0) fail(`pack ${packId}: header length ${headerLength} is more than the pack holds`);
      const sealedHeader = pack.subarray(headerAt, pack.length - 4);
      const header = open(repo.key, sealedHeader, AAD.packHeader, `pack ${packId} header`);
      repo.countCodec("packHeader", header.codec);
      const entries = parsePackHeader(header.data, `pack ${packId} header`);
      if (JSON.stringify(entries) !== JSON.stringify(indexed.entries)) {
        fail(`pack ${packId}: its header and index/${packId} list different chunks`);
      }
      let next = 0;
      for (const e of entries) {
        if (e.offset !== next) fail(`pack ${packId}: chunk ${e.id} at ${e.offset}, not right after the last (${next})`);
        next = e.offset + e.length;
        if (next > headerAt) fail(`pack ${packId}: chunk ${e.id} runs into the header`);
        repo.openChunk(e.id, pack.subarray(e.offset, next), e.plainLength);
      }
      if (next !== headerAt) fail(`pack ${packId}: ${headerAt - next} bytes between its last chunk and its header`);
      packs.push({ id: packId, size: pack.length, chunks: entries.length });
    });
  }
  // "Packs and index objects": a pack without an index object is garbage of an interrupted writer, not a problem.
  const unindexedPacks = repo.listPackIds().filter((id) => !repo.packs.has(id));

  const snapshots = [];
  const manifestNonces = {};
  for (const id of repo.listIds("snapshots")) {
    check(() => {
      const { data } = repo.readHashedObject("snapshots", id, AAD.snapshot);
      const record = { id, ...JSON.parse(data.toString("utf8")) };
      const { entries, parts } = repo.manifest(record);
      for (const part of parts) {
        const sealed = repo.readObject(`manifests/${part.id}`);
        const { coded } = open(repo.key, sealed, AAD.manifest, `manifests/${part.id}`);
        manifestNonces[part.id] = syntheticNonce(repo.key, AAD.manifest, coded).equals(sealed.subarray(0, 12));
      }
      for (const e of entries) {
        if (e.type !== "file") continue;
        (e.chunks ?? []).forEach((chunk, i) => {
          const at = repo.chunks.get(chunk);
          if (!at) fail(`snapshot ${id}: ${e.path} needs chunk ${chunk}, which no index object lists`);
          if (at.plainLength !== e.lengths[i]) fail(`snapshot ${id}: ${e.path} chunk ${i} length disagrees`);
        });
      }
      const totals = totalsOf(entries);
      if (JSON.stringify(totals) !== JSON.stringify(record.totals)) {
        fail(`snapshot ${id}: totals ${JSON.stringify(record.totals)}, its manifest lists ${JSON.stringify(totals)}`);
      }
      snapshots.push({ id, version: record.version, parts: parts.length, entries: entries.length });
    });
  }
  const chunks = packs.reduce((sum, p) => sum + p.chunks, 0);
  return { packs, chunks, unindexedPacks, snapshots, manifestNonces, codecs: repo.codecs, problems };
}

// ---------------------------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------------------------

function main(argv) {
  const [command, location, keyFile, ...rest] = argv;
  if (!["list", "show", "restore", "verify"].includes(command) || !location || !keyFile) {
    fail("usage: independent-reader.mjs list|show|restore|verify REPO KEY_FILE [SNAPSHOT [TARGET]]");
  }
  const repo = new Repository(location, readKey(keyFile));
  repo.openConfig();
  try {
    if (command === "list") return repo.snapshots();
    if (command === "show") {
      const record = repo.findSnapshot(rest[0] ?? fail("show: which snapshot?"));
      const { root, entries, parts } = repo.manifest(record);
      return { id: record.id, record, root, parts, totals: totalsOf(entries), entries };
    }
    repo.loadIndex();
    if (command === "restore") {
      const [snapshot, target] = rest;
      if (!snapshot || !target) fail("restore: which snapshot, into which directory?");
      return restore(repo, repo.findSnapshot(snapshot), target);
    }
    const report = verify(repo);
    if (report.problems.length > 0) process.exitCode = 1;
    return report;
  } finally {
    repo.close();
  }
}

try {
  process.stdout.write(`${JSON.stringify(main(process.argv.slice(2)))}\n`);
} catch (err) {
  process.stderr.write(`independent-reader: ${err instanceof FormatError ? err.message : err.stack}\n`);
  process.exitCode = 1;
}
