// The sealed form of every stored blob: hash, LZ4-unless-it-does-not-pay (DEFLATE for repository objects),
// AES-256-GCM. `createChunkCodec` is self-contained (no module-level references) so a worker thread can run
// it from its source text.
import type * as nodeCrypto from "node:crypto";
import type { Lz4Decoder, Lz4Encoder } from "./lz4-wasm.js";

export interface ChunkCodecDeps {
  createHash: typeof nodeCrypto.createHash;
  createCipheriv: typeof nodeCrypto.createCipheriv;
  createDecipheriv: typeof nodeCrypto.createDecipheriv;
  randomFillSync: typeof nodeCrypto.randomFillSync;
  /** For objects sealed `deterministic` (manifest parts); worker threads, which seal chunks only, leave it out. */
  createHmac?: typeof nodeCrypto.createHmac;
  /** LZ4 block with a 4-byte little-endian length prefix (lz4-napi `compressSync`). */
  compress(data: Buffer): Buffer;
  /** Inverse of `compress` (lz4-napi `uncompressSync`). */
  uncompress(data: Buffer): Buffer;
  /**
   * Encodes LZ4 in memory it reuses (`createLz4Wasm`), giving up as soon as the output would not be worth
   * keeping; without it chunks go through `compress`, which allocates a new output per chunk.
   */
  lz4Encoder?: Lz4Encoder;
  /**
   * Decodes LZ4 chunks in memory it reuses (`createLz4Wasm`), where opening and verifying chunks then put
   * their bodies; without it they go through `uncompress`, which allocates a new output per chunk.
   */
  lz4Decoder?: Lz4Decoder;
  /**
   * Raw DEFLATE (RFC 1951; node:zlib `deflateRawSync`) for repository objects. Without it objects are
   * sealed with LZ4 as chunks are (worker threads, which seal and open chunks only, leave it out).
   */
  deflate?(data: Buffer): Buffer;
  /** Inverse of `deflate`, refusing to produce more than `maxLength` bytes (`inflateRawSync`). */
  inflate?(data: Buffer, maxLength: number): Buffer;
  /**
   * Largest plain object sealed or opened (default 64 MiB, as a chunk): a manifest of about 250,000 files.
   * The control plane opens manifests that untrusted agents send, and parses them as JSON, so the cap bounds
   * what one can make it hold.
   */
  maxObjectBytes?: number;
}

/** A batch of chunks sealed together: blobs laid out back to back in `out`. */
export interface SealedChunkBatch {
  out: Buffer;
  /** 32 bytes per chunk: SHA-256 of the plain chunk. */
  ids: Buffer;
  /** Pairs (offset, length) of each blob inside `out`. */
  blobRanges: Int32Array;
}

/** A batch of blobs opened together: plain chunks back to back in `out`. */
export interface OpenedChunkBatch {
  out: Buffer;
  /** Pairs (offset, length) of each plain chunk inside `out`; length -1 when `errors[i]` is set. */
  plainRanges: Int32Array;
  errors: (string | null)[];
}

export interface ChunkCodec {
  /** Bytes a sealed blob adds at most to its plain chunk. */
  readonly overhead: number;
  sealChunk(key: Buffer, plain: Buffer): { id: Buffer; blob: Buffer };
  /**
   * Seals `plain` into `out` at `pos` (room for plain.length + overhead needed) and its id into `ids` at
   * `idPos`; returns the end of the blob. When `held(id)` says the repository already holds the chunk, only
   * the id is written and `pos` comes back unchanged: nothing is compressed or encrypted.
   */
  sealChunkInto(
    key: Buffer,
    plain: Buffer,
    out: Buffer,
    pos: number,
    ids: Buffer,
    idPos: number,
    held?: (id: Buffer) => boolean,
  ): number;
  /** Decrypts, decompresses and checks the SHA-256; throws an Error saying which of those failed. */
  openChunk(key: Buffer, id: Buffer, blob: Buffer): Buffer;
  /**
   * What `openChunk` checks, without keeping the plain chunk: raw chunks are hashed piece by piece as they
   * are decrypted (while still in cache), LZ4 ones decompressed from a reused buffer. Returns why the blob
   * is not chunk `id` of `expected` bytes, or null when it is.
   */
  verifyChunk(key: Buffer, id: Buffer, blob: Buffer, expected: number): string | null;
  sealChunkBatch(key: Buffer, data: Uint8Array, ranges: Int32Array): SealedChunkBatch;
  /**
   * Opens blobs given as (offset, length) pairs into `data`, with their ids back to back and the plain length
   * each must have; plain chunks land back to back in `spare` when it is large enough, else in a new buffer.
   * With `positions`, chunk i lands at `positions[i]` instead (the caller lays them out, e.g. page-aligned).
   */
  openChunkBatch(
    key: Buffer,
    data: Uint8Array,
    blobRanges: Int32Array,
    ids: Uint8Array,
    lengths: Int32Array,
    spare?: ArrayBufferLike,
    positions?: Int32Array,
  ): OpenedChunkBatch;
  /**
   * Seals a repository object (index, manifest, snapshot); `aad` names its kind so blobs cannot be swapped.
   * `deterministic`: the nonce is derived from what is encrypted (see syntheticNonce), so the same plain
   * object always seals to the same bytes; for objects whose reuse saves storage (manifest parts).
   */
  sealObject(key: Buffer, aad: string, plain: Buffer, options?: { deterministic?: boolean }): Buffer;
  openObject(key: Buffer, aad: string, sealed: Buffer): Buffer;
}

export function createChunkCodec(deps: ChunkCodecDeps): ChunkCodec {
  const NONCE = 12;
  const TAG = 16;
  const OVERHEAD = NONCE + 1 + TAG;
  const CODEC_RAW = 0;
  const CODEC_LZ4 = 1;
  // Objects only: manifests are JSON full of hex chunk ids, which LZ4 (no entropy coding) cannot shrink and
  // DEFLATE halves (234 KB -> 133 KB for the bench corpus's 2,006 files), and one is written per snapshot.
  const CODEC_DEFLATE = 2;
  const MAX_PLAIN = 64 * 1024 * 1024;
  const MAX_OBJECT = deps.maxObjectBytes ?? MAX_PLAIN;
  // Node's cipher.update allocates a fresh output for every call. Pieces of 16 KiB stay in the allocator's
  // warm heap and in cache; 1 MiB pieces cost a page-faulting allocation each and ran at half the speed
  // (measured: 2.2 vs 1.1 GB/s for AES-256-GCM on the 2-core dev machine).
  const PIECE = 16 * 1024;
  const SAMPLE = 64 * 1024;
  // Bulk copies go through `fill`: one memcpy even when a side is a SharedArrayBuffer (the agent's worker
  // batches), where Buffer.copy falls back to one byte at a time for unaligned offsets (see copy-bytes.ts).
  const put = (src: Buffer, dst: Buffer, at: number): void => {
    if (src.length > 0) dst.fill(src, at, at + src.length);
  };
  const codecBytes = [CODEC_RAW, CODEC_LZ4, CODEC_DEFLATE].map((codec) => Buffer.from([codec]));
  // Nonces are drawn from the CSPRNG 1,024 at a time: one randomFillSync costs ~4 µs however few bytes it
  // fills, which was a third of a worker's time sealing small files (300,000 one-chunk files: 1.3 s of ~4 s
  // per worker). Each is used once; nonces are stored in the clear, so holding the pool is no secret.
  const noncePool = Buffer.alloc(NONCE * 1024);
  let nonceAt = noncePool.length;
  const nextNonce = (into: Buffer): void => {
    if (nonceAt === noncePool.length) {
      deps.randomFillSync(noncePool);
      nonceAt = 0;
    }
    noncePool.copy(into, 0, nonceAt, nonceAt + NONCE);
    nonceAt += NONCE;
  };
  // Each cipher.update output is fresh memory (a malloc per call) that V8 frees only when it collects the
  // Buffer: between collections a worker's malloc arena held ~32 MiB of spent outputs, and on the dev VM every
  // MiB of fresh memory costs ~3 ms of CPU to touch. Where ArrayBuffer.prototype.transfer exists (worker
  // threads, see array-buffer-transfer.ts) an output is freed as soon as it has been used, and the next one
  // reuses its memory, still in cache. Measured on the bench's 1 GiB corpus (farm-bench, 8 pairs, whole
  // process): direct snapshot peak RSS 276 -> 212 MiB, page faults 64k -> 46k, CPU 0.93x, wall 0.98x; direct
  // restore peak RSS 320 -> 234 MiB, faults 81k -> 52k, CPU 0.86x, wall within the noise (0.81-1.20x).
  const transfer = (ArrayBuffer.prototype as { transfer?: (this: ArrayBuffer, length: number) => ArrayBuffer })
    .transfer;
  /** Frees a cipher output that has been used, when its memory is that output alone (never a pool's). */
  const release = (output: Buffer): void => {
    const memory = output.buffer;
    if (transfer && memory instanceof ArrayBuffer && output.byteOffset === 0 && memory.byteLength === output.length)
      transfer.call(memory, 0);
  };

  // A coded body is kept only when it saves at least 1/32 of the bytes: below that, decoding costs more than
  // it saves. This is the most a body of `n` plain bytes may take.
  const worthIt = (n: number): number => n - (n >> 5);

  // `plain` as an LZ4 body if that is at most `room` bytes, else null.
  function lz4Within(plain: Buffer, room: number): Buffer | null {
    if (deps.lz4Encoder) return deps.lz4Encoder.encode(plain, room);
    const packed = deps.compress(plain);
    return packed.length <= room ? packed : null;
  }

  // LZ4 where it is worth it. A large chunk is judged by a sample of its start first: incompressible data
  // (weights, archives) then costs no compression pass at all.
  function chooseBody(plain: Buffer): { codec: number; body: Buffer } {
    if (plain.length >= 64 && (plain.length <= 2 * SAMPLE || lz4Within(plain.subarray(0, SAMPLE), worthIt(SAMPLE)))) {
      const packed = lz4Within(plain, worthIt(plain.length));
      if (packed) return { codec: CODEC_LZ4, body: packed };
    }
    return { codec: CODEC_RAW, body: plain };
  }

  // The same 1/32 rule, with DEFLATE: objects are small and written once, so the better ratio is worth it.
  function chooseObjectBody(plain: Buffer, deflate: (data: Buffer) => Buffer): { codec: number; body: Buffer } {
    if (plain.length >= 64) {
      const packed = deflate(plain);
      if (packed.length <= worthIt(plain.length)) return { codec: CODEC_DEFLATE, body: packed };
    }
    return { codec: CODEC_RAW, body: plain };
  }

  /**
   * A nonce that is a MAC of exactly what it will encrypt (kind, codec, body), keyed by a key derived from the
   * repository key, as SIV modes do: the same message always seals to the same bytes, and two different
   * messages share a nonce only if HMAC-SHA256 cut to 96 bits collides (about 2^48 objects in). It is over the
   * coded body, not the plain object: a DEFLATE of another zlib version may code the same object otherwise,
   * and that body then gets its own nonce. What it reveals is only that two such objects are equal.
   */
  function syntheticNonce(key: Buffer, aad: Buffer, codec: number, body: Buffer): Buffer {
    if (!deps.createHmac) throw new Error("this codec cannot seal objects deterministically (no createHmac)");
    const nonceKey = deps.createHmac("sha256", key).update("dumont/synthetic-nonce/v1").digest();
    const length = Buffer.alloc(4);
    length.writeUInt32LE(aad.length);
    const mac = deps.createHmac("sha256", nonceKey).update(length).update(aad).update(codecBytes[codec]);
    return mac.update(body).digest().subarray(0, NONCE);
  }

  function sealInto(
    key: Buffer,
    aad: Buffer,
    codec: number,
    body: Buffer,
    out: Buffer,
    pos: number,
    givenNonce?: Buffer,
  ): number {
    const nonce = out.subarray(pos, pos + NONCE);
    if (givenNonce) givenNonce.copy(nonce);
    else nextNonce(nonce);
    const cipher = deps.createCipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG });
    cipher.setAAD(aad);
    const head = cipher.update(codecBytes[codec]);
    head.copy(out, pos + NONCE);
    let at = pos + NONCE + head.length;
    release(head);
    for (let p = 0; p < body.length; p += PIECE) {
      const enc = cipher.update(body.subarray(p, Math.min(body.length, p + PIECE)));
      put(enc, out, at);
      at += enc.length;
      release(enc);
    }
    const fin = cipher.final();
    fin.copy(out, at);
    at += fin.length;
    release(fin);
    cipher.getAuthTag().copy(out, at);
    return at + TAG;
  }

  function decrypt(key: Buffer, aad: Buffer, sealed: Buffer): Buffer {
    if (sealed.length < OVERHEAD) throw new Error(`blob is ${sealed.length} bytes, shorter than its envelope`);
    const decipher = deps.createDecipheriv("aes-256-gcm", key, sealed.subarray(0, NONCE), { authTagLength: TAG });
    decipher.setAAD(aad);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG));
    const plain = decipher.update(sealed.subarray(NONCE, sealed.length - TAG));
    try {
      decipher.final();
    } catch {
      throw new Error("authentication failed (the bytes were altered, or the key is wrong)");
    }
    return plain;
  }

  // Chunks are raw or LZ4 (at most MAX_PLAIN bytes); objects may also be DEFLATE (at most MAX_OBJECT).
  function unpack(plain: Buffer, object: boolean): Buffer {
    const codec = plain[0];
    const body = plain.subarray(1);
    const limit = object ? MAX_OBJECT : MAX_PLAIN;
    if (codec === CODEC_RAW) return body;
    if (codec === CODEC_DEFLATE && object) {
      if (!deps.inflate) throw new Error("DEFLATE-coded objects cannot be opened here");
      try {
        return deps.inflate(body, limit);
      } catch (err) {
        const tooLarge = (err as { code?: unknown }).code === "ERR_BUFFER_TOO_LARGE";
        throw new Error(tooLarge ? `DEFLATE data holds more than ${limit} bytes` : "DEFLATE data does not decompress");
      }
    }
    if (codec !== CODEC_LZ4) throw new Error(`unknown codec ${codec}`);
    if (body.length < 4 || body.readUInt32LE(0) > limit) throw new Error("bad LZ4 length prefix");
    try {
      return deps.uncompress(body);
    } catch {
      throw new Error("LZ4 data does not decompress");
    }
  }

  function hashOf(data: Buffer): Buffer {
    return deps.createHash("sha256").update(data).digest();
  }

  let scratch = Buffer.alloc(0);

  // Starts opening a chunk blob: the decipher (nonce, id as AAD, tag) with the codec byte already read.
  function beginOpen(
    key: Buffer,
    id: Buffer,
    blob: Buffer,
  ): { decipher: nodeCrypto.DecipherGCM; sealed: Buffer; codec: number } | string {
    if (blob.length < OVERHEAD) return `blob is ${blob.length} bytes, shorter than its envelope`;
    const decipher = deps.createDecipheriv("aes-256-gcm", key, blob.subarray(0, NONCE), { authTagLength: TAG });
    decipher.setAAD(id);
    decipher.setAuthTag(blob.subarray(blob.length - TAG));
    const sealed = blob.subarray(NONCE, blob.length - TAG);
    const first = decipher.update(sealed.subarray(0, 1));
    const codec = first[0];
    release(first);
    return { decipher, sealed, codec };
  }

  // Decrypts the rest of a blob in pieces, handing each to `take` (which must not keep it); returns why it
  // failed, or null.
  function decryptPieces(
    decipher: nodeCrypto.DecipherGCM,
    sealed: Buffer,
    take: (plain: Buffer) => void,
  ): string | null {
    for (let p = 1; p < sealed.length; p += PIECE) {
      const plain = decipher.update(sealed.subarray(p, Math.min(sealed.length, p + PIECE)));
      take(plain);
      release(plain);
    }
    try {
      decipher.final();
    } catch {
      return "authentication failed (the bytes were altered, or the key is wrong)";
    }
    return null;
  }

  // An LZ4 body that must decompress to `expected` bytes: the plain bytes, or why not.
  function unpackLz4(body: Buffer, expected: number): Buffer | string {
    if (body.length < 4 || body.readUInt32LE(0) !== expected) return `LZ4 data does not hold ${expected} bytes`;
    let plain: Buffer;
    try {
      plain = deps.uncompress(body);
    } catch {
      return "LZ4 data does not decompress";
    }
    return plain.length === expected ? plain : `chunk is ${plain.length} bytes, expected ${expected}`;
  }

  /** The reused scratch buffer, grown to at least `size` bytes. */
  function growScratch(size: number): Buffer {
    if (scratch.length < size) scratch = Buffer.allocUnsafeSlow(Math.max(size, 2 * scratch.length));
    return scratch;
  }

  // Where an LZ4 body of `size` bytes is decrypted to, then decoded from by `decodeLz4`.
  function lz4Input(size: number): Buffer {
    return deps.lz4Decoder ? deps.lz4Decoder.input(size) : growScratch(size);
  }

  function decodeLz4(bodyLength: number, expected: number): Buffer | string {
    if (deps.lz4Decoder) return deps.lz4Decoder.decode(bodyLength, expected);
    return unpackLz4(scratch.subarray(0, bodyLength), expected);
  }

  // Opens a chunk straight into `out` at `pos` (it must be `expected` bytes); returns why it failed, or null.
  // Raw chunks are decrypted in place; LZ4 ones through a reused scratch buffer. Bytes written before the tag
  // check are simply not reported as a chunk when it fails.
  function openInto(key: Buffer, id: Buffer, blob: Buffer, expected: number, out: Buffer, pos: number): string | null {
    if (expected < 0 || pos + expected > out.length) return "no room for the chunk";
    const begun = beginOpen(key, id, blob);
    if (typeof begun === "string") return begun;
    const { decipher, sealed, codec } = begun;
    const bodyLength = sealed.length - 1;
    // The common case, a raw chunk of the expected size, is decrypted straight into place.
    const direct = codec === CODEC_RAW && bodyLength === expected;
    const target = direct ? out : codec === CODEC_LZ4 ? lz4Input(bodyLength) : growScratch(bodyLength);
    let at = direct ? pos : 0;
    const failed = decryptPieces(decipher, sealed, (plain) => {
      put(plain, target, at);
      at += plain.length;
    });
    if (failed) return failed;
    if (codec === CODEC_RAW && !direct) return `chunk is ${bodyLength} bytes, expected ${expected}`;
    if (codec !== CODEC_RAW && codec !== CODEC_LZ4) return `unknown codec ${codec}`;
    if (codec === CODEC_LZ4) {
      const plain = decodeLz4(bodyLength, expected);
      if (typeof plain === "string") return plain;
      put(plain, out, pos);
    }
    if (!hashOf(out.subarray(pos, pos + expected)).equals(id)) return "SHA-256 of the chunk does not match its id";
    return null;
  }

  function verifyChunk(key: Buffer, id: Buffer, blob: Buffer, expected: number): string | null {
    const begun = beginOpen(key, id, blob);
    if (typeof begun === "string") return begun;
    const { decipher, sealed, codec } = begun;
    const bodyLength = sealed.length - 1;
    const hash = deps.createHash("sha256");
    const input = codec === CODEC_LZ4 ? lz4Input(bodyLength) : undefined;
    let at = 0;
    const failed = decryptPieces(decipher, sealed, (plain) => {
      if (input) put(plain, input, at);
      else hash.update(plain);
      at += plain.length;
    });
    if (failed) return failed;
    if (codec === CODEC_RAW) {
      if (bodyLength !== expected) return `chunk is ${bodyLength} bytes, expected ${expected}`;
    } else if (codec === CODEC_LZ4) {
      const plain = decodeLz4(bodyLength, expected);
      if (typeof plain === "string") return plain;
      hash.update(plain);
    } else return `unknown codec ${codec}`;
    if (!hash.digest().equals(id)) return "SHA-256 of the chunk does not match its id";
    return null;
  }

  function openChunk(key: Buffer, id: Buffer, blob: Buffer): Buffer {
    const plain = unpack(decrypt(key, id, blob), false);
    if (!hashOf(plain).equals(id)) throw new Error("SHA-256 of the chunk does not match its id");
    return plain;
  }

  return {
    overhead: OVERHEAD,

    sealChunk(key, plain) {
      const id = hashOf(plain);
      const { codec, body } = chooseBody(plain);
      const blob = Buffer.allocUnsafe(body.length + OVERHEAD);
      sealInto(key, id, codec, body, blob, 0);
      return { id, blob };
    },

    openChunk,

    verifyChunk,

    sealChunkInto(key, plain, out, pos, ids, idPos, held) {
      const id = hashOf(plain);
      id.copy(ids, idPos);
      if (held?.(id)) return pos;
      const { codec, body } = chooseBody(plain);
      return sealInto(key, id, codec, body, out, pos);
    },

    sealChunkBatch(key, data, ranges) {
      const n = ranges.length >> 1;
      let capacity = 0;
      for (let i = 0; i < n; i++) capacity += ranges[2 * i + 1] + OVERHEAD;
      const out = Buffer.allocUnsafeSlow(capacity);
      const ids = Buffer.allocUnsafeSlow(32 * n);
      const blobRanges = new Int32Array(2 * n);
      let pos = 0;
      for (let i = 0; i < n; i++) {
        const plain = Buffer.from(data.buffer, data.byteOffset + ranges[2 * i], ranges[2 * i + 1]);
        const id = hashOf(plain);
        id.copy(ids, 32 * i);
        const { codec, body } = chooseBody(plain);
        const end = sealInto(key, id, codec, body, out, pos);
        blobRanges[2 * i] = pos;
        blobRanges[2 * i + 1] = end - pos;
        pos = end;
      }
      return { out, ids, blobRanges };
    },

    openChunkBatch(key, data, blobRanges, ids, lengths, spare, positions) {
      const n = blobRanges.length >> 1;
      let total = 0;
      for (let i = 0; i < n; i++) {
        const length = Math.max(0, lengths[i]);
        total = positions ? Math.max(total, positions[i] + length) : total + length;
      }
      const out = spare && spare.byteLength >= total ? Buffer.from(spare) : Buffer.allocUnsafeSlow(Math.max(total, 1));
      const plainRanges = new Int32Array(2 * n);
      const errors: (string | null)[] = new Array(n);
      let pos = 0;
      for (let i = 0; i < n; i++) {
        if (positions) pos = positions[i];
        const blob = Buffer.from(data.buffer, data.byteOffset + blobRanges[2 * i], blobRanges[2 * i + 1]);
        const id = Buffer.from(ids.buffer, ids.byteOffset + 32 * i, 32);
        const error = openInto(key, id, blob, lengths[i], out, pos);
        errors[i] = error;
        plainRanges[2 * i] = pos;
        plainRanges[2 * i + 1] = error === null ? lengths[i] : -1;
        if (error === null) pos += lengths[i];
      }
      return { out, plainRanges, errors };
    },

    sealObject(key, aad, plain, options) {
      // Refused here rather than written unreadable: a snapshot whose manifest cannot be opened is lost.
      if (plain.length > MAX_OBJECT) {
        const message = `a ${aad} object of ${plain.length} bytes is over the ${MAX_OBJECT}-byte limit`;
        throw Object.assign(new Error(message), { code: "EOBJECTTOOLARGE" });
      }
      const { codec, body } = deps.deflate ? chooseObjectBody(plain, deps.deflate) : chooseBody(plain);
      const sealed = Buffer.allocUnsafe(body.length + OVERHEAD);
      const aadBytes = Buffer.from(aad, "utf8");
      const nonce = options?.deterministic ? syntheticNonce(key, aadBytes, codec, body) : undefined;
      sealInto(key, aadBytes, codec, body, sealed, 0, nonce);
      return sealed;
    },

    openObject(key, aad, sealed) {
      return unpack(decrypt(key, Buffer.from(aad, "utf8"), sealed), true);
    },
  };
}
