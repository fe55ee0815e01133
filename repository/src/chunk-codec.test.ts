import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";
import { deflateRawSync } from "node:zlib";
import { compressSync } from "lz4-napi";
import { describe, expect, it } from "vitest";
import { enableArrayBufferTransferInWorkers } from "./array-buffer-transfer.js";
import { createChunkCodec } from "./chunk-codec.js";
import { generateRepositoryKey } from "./key.js";
import { chunkCodec, codecDeps } from "./sealing.js";

/** A codec as the workers build one: LZ4 only, so its objects are what releases before DEFLATE wrote. */
const lz4Only = () => createChunkCodec({ ...codecDeps, deflate: undefined, inflate: undefined });

/** Seals `body` under `aad` with the codec byte given, as a writer of any version (or a liar) could. */
function forge(key: Buffer, aad: Buffer, codec: number, body: Buffer): Buffer {
  const nonce = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, nonce, { authTagLength: 16 });
  cipher.setAAD(aad);
  const sealed = Buffer.concat([cipher.update(Buffer.from([codec])), cipher.update(body), cipher.final()]);
  return Buffer.concat([nonce, sealed, cipher.getAuthTag()]);
}

describe("chunk codec", () => {
  const key = generateRepositoryKey();

  it("compresses what shrinks, stores the rest raw, and opens both", () => {
    const text = Buffer.from("the same words again and again ".repeat(10_000));
    const noise = randomBytes(300_000);
    const a = chunkCodec.sealChunk(key, text);
    const b = chunkCodec.sealChunk(key, noise);
    expect(a.blob.length).toBeLessThan(text.length / 4);
    expect(b.blob.length).toBe(noise.length + chunkCodec.overhead);
    expect(a.id.equals(createHash("sha256").update(text).digest())).toBe(true);
    expect(chunkCodec.openChunk(key, a.id, a.blob).equals(text)).toBe(true);
    expect(chunkCodec.openChunk(key, b.id, b.blob).equals(noise)).toBe(true);
  });

  it("seals an object deterministically when asked: the same bytes each time, a nonce of its own per object", () => {
    const plain = Buffer.from(JSON.stringify({ entries: Array.from({ length: 500 }, (_, i) => `file ${i}`) }));
    const a = chunkCodec.sealObject(key, "dumont/manifest/v1", plain, { deterministic: true });
    const b = chunkCodec.sealObject(key, "dumont/manifest/v1", plain, { deterministic: true });
    expect(a.equals(b)).toBe(true);
    expect(chunkCodec.openObject(key, "dumont/manifest/v1", a).equals(plain)).toBe(true);
    // Random nonces otherwise; another object, kind or key gets another nonce.
    const random = chunkCodec.sealObject(key, "dumont/manifest/v1", plain);
    expect(random.equals(a)).toBe(false);
    const nonce = (sealed: Buffer) => sealed.subarray(0, 12).toString("hex");
    const others = [
      chunkCodec.sealObject(key, "dumont/manifest/v1", Buffer.concat([plain, Buffer.from(" ")]), {
        deterministic: true,
      }),
      chunkCodec.sealObject(key, "dumont/index/v1", plain, { deterministic: true }),
      chunkCodec.sealObject(generateRepositoryKey(), "dumont/manifest/v1", plain, { deterministic: true }),
    ];
    expect(new Set([a, ...others].map(nonce)).size).toBe(4);
    // A codec without createHmac (a worker's) refuses rather than fall back to a nonce that could repeat.
    const noHmac = createChunkCodec({ ...codecDeps, createHmac: undefined });
    expect(() => noHmac.sealObject(key, "dumont/manifest/v1", plain, { deterministic: true })).toThrow(/createHmac/);
  });

  it("gives every blob its own nonce, across refills of its pool of them", () => {
    const draws: number[] = [];
    const codec = createChunkCodec({
      ...codecDeps,
      randomFillSync: <T extends NodeJS.ArrayBufferView>(buffer: T) => {
        draws.push(buffer.byteLength);
        return codecDeps.randomFillSync(buffer);
      },
    });
    const nonces = new Set<string>();
    for (let i = 0; i < 2500; i++) {
      const plain = Buffer.from(`chunk ${i}`);
      const { id, blob } = codec.sealChunk(key, plain);
      nonces.add(blob.subarray(0, 12).toString("hex"));
      expect(codec.openChunk(key, id, blob).equals(plain)).toBe(true);
    }
    expect(nonces.size).toBe(2500);
    expect(draws).toEqual([12 * 1024, 12 * 1024, 12 * 1024]); // 1,024 nonces a draw
  });

  it("detects a flipped bit, a swapped id and a wrong key", () => {
    const plain = randomBytes(5000);
    const { id, blob } = chunkCodec.sealChunk(key, plain);
    const flipped = Buffer.from(blob);
    flipped[20] ^= 1;
    expect(() => chunkCodec.openChunk(key, id, flipped)).toThrow(/authentication failed/);
    expect(() => chunkCodec.openChunk(key, randomBytes(32), blob)).toThrow(/authentication failed/);
    expect(() => chunkCodec.openChunk(generateRepositoryKey(), id, blob)).toThrow(/authentication failed/);
  });

  it("seals and opens batches, reporting each bad blob on its own", () => {
    const data = Buffer.concat([randomBytes(1000), Buffer.alloc(50_000, 1), randomBytes(10)]);
    const ranges = Int32Array.from([0, 1000, 1000, 50_000, 51_000, 10]);
    const sealed = chunkCodec.sealChunkBatch(key, data, ranges);
    sealed.out[sealed.blobRanges[4] + 15] ^= 1; // damage the third
    const open = (lengths: number[], spare?: ArrayBuffer, positions?: number[]) =>
      chunkCodec.openChunkBatch(
        key,
        sealed.out,
        sealed.blobRanges,
        sealed.ids,
        Int32Array.from(lengths),
        spare,
        positions && Int32Array.from(positions),
      );
    const opened = open([1000, 50_000, 10]);
    expect(opened.errors.map((e) => e === null)).toEqual([true, true, false]);
    const second = opened.out.subarray(opened.plainRanges[2], opened.plainRanges[2] + opened.plainRanges[3]);
    expect(second.equals(data.subarray(1000, 51_000))).toBe(true);
    const wrongLength = open([999, 50_000, 10]);
    expect(wrongLength.errors[0]).toMatch(/1000 bytes, expected 999/);
    // Laid out by the caller: each chunk lands where it is told, gaps left alone.
    const laidOut = open([1000, 50_000, 10], new ArrayBuffer(70_000), [4096 - 1000, 4096, 60_000]);
    expect(Array.from(laidOut.plainRanges)).toEqual([3096, 1000, 4096, 50_000, 60_000, -1]);
    expect(laidOut.out.subarray(3096, 54_096).equals(data.subarray(0, 51_000))).toBe(true);
  });

  it("verifies chunks without keeping them: good raw and LZ4 chunks pass, every kind of lie is named", () => {
    const text = Buffer.from("columns,of,a,csv,file\n".repeat(40_000)); // LZ4, several decrypt pieces
    const noise = randomBytes(70_001); // raw, a piece boundary inside
    for (const plain of [text, noise]) {
      const { id, blob } = chunkCodec.sealChunk(key, plain);
      expect(chunkCodec.verifyChunk(key, id, blob, plain.length)).toBeNull();
      expect(chunkCodec.verifyChunk(key, id, blob, plain.length + 1)).toMatch(/expected|does not hold/);
      const flipped = Buffer.from(blob);
      flipped[blob.length - 40] ^= 1;
      expect(chunkCodec.verifyChunk(key, id, flipped, plain.length)).toMatch(/authentication failed/);
      expect(chunkCodec.verifyChunk(generateRepositoryKey(), id, blob, plain.length)).toMatch(/authentication/);
    }
    // An agent holding the key seals one chunk's bytes under another chunk's id: the envelope is valid,
    // only the hash tells.
    const fakeId = createHash("sha256").update("some other chunk").digest();
    const forged = forge(key, fakeId, 0, noise);
    expect(chunkCodec.verifyChunk(key, fakeId, forged, noise.length)).toMatch(/SHA-256 of the chunk does not match/);
    expect(() => chunkCodec.openChunk(key, fakeId, forged)).toThrow(/SHA-256/);
  });

  it("opens no forged chunk into a restore's batch: a valid envelope whose bytes are not its id's is named", () => {
    // What a restore opens its packs' chunks with: each must hash to its id there too, raw or LZ4, laid out by
    // the batch or by the caller. Sealed under the id it claims, only the hash tells.
    const noise = randomBytes(70_001);
    const text = Buffer.from("columns,of,a,csv,file\n".repeat(4_000));
    const fakeIds = [0, 1].map((i) => createHash("sha256").update(`another chunk ${i}`).digest());
    // The LZ4 one: a real chunk's codec byte and compressed body, sealed again under another id.
    const real = chunkCodec.sealChunk(key, text);
    const decipher = createDecipheriv("aes-256-gcm", key, real.blob.subarray(0, 12), { authTagLength: 16 });
    decipher.setAAD(real.id);
    decipher.setAuthTag(real.blob.subarray(real.blob.length - 16));
    const inner = Buffer.concat([decipher.update(real.blob.subarray(12, real.blob.length - 16)), decipher.final()]);
    expect(inner[0]).toBe(1); // LZ4
    const blobs = [forge(key, fakeIds[0], 0, noise), forge(key, fakeIds[1], inner[0], inner.subarray(1))];
    const data = Buffer.concat(blobs);
    const ranges = Int32Array.from([0, blobs[0].length, blobs[0].length, blobs[1].length]);
    const lengths = Int32Array.from([noise.length, text.length]);
    for (const positions of [undefined, Int32Array.from([0, 73_728])]) {
      const spare = positions && new ArrayBuffer(160_000);
      const opened = chunkCodec.openChunkBatch(key, data, ranges, Buffer.concat(fakeIds), lengths, spare, positions);
      expect(opened.errors).toEqual([
        "SHA-256 of the chunk does not match its id",
        "SHA-256 of the chunk does not match its id",
      ]);
      expect(Array.from(opened.plainRanges).filter((_, i) => i % 2 === 1)).toEqual([-1, -1]);
    }
  });

  it("seals and opens LZ4 chunks alike with the WebAssembly encoder and decoder and with lz4-napi", () => {
    const viaNapi = createChunkCodec({ ...codecDeps, lz4Encoder: undefined, lz4Decoder: undefined });
    expect(codecDeps.lz4Encoder && codecDeps.lz4Decoder).toBeDefined();
    const lines = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => `${i};row ${i % 17}\n`).join(""));
    const plains = [
      lines(10),
      lines(5_000),
      randomBytes(200_000),
      lines(60_000),
      Buffer.alloc(300_000, 3),
      lines(2_000),
    ];
    const data = Buffer.concat(plains);
    const ranges: number[] = [];
    for (let at = 0, i = 0; i < plains.length; at += plains[i].length, i++) ranges.push(at, plains[i].length);
    const lengths = Int32Array.from(plains.map((p) => p.length));
    // Each codec opens what either sealed; both keep the same chunks raw and the same ones LZ4.
    const sealedByWasm = chunkCodec.sealChunkBatch(key, data, Int32Array.from(ranges));
    const sealedByNapi = viaNapi.sealChunkBatch(key, data, Int32Array.from(ranges));
    expect(sealedByWasm.ids.equals(sealedByNapi.ids)).toBe(true);
    const blobLengths = (b: typeof sealedByWasm) => Array.from(b.blobRanges).filter((_, i) => i % 2 === 1);
    const rawLengths = plains.map((p) => p.length + chunkCodec.overhead);
    expect(blobLengths(sealedByWasm).map((n, i) => n === rawLengths[i])).toEqual(
      blobLengths(sealedByNapi).map((n, i) => n === rawLengths[i]),
    );
    for (const [codec, sealed] of [
      [chunkCodec, sealedByNapi],
      [viaNapi, sealedByWasm],
      [chunkCodec, sealedByWasm],
    ] as const) {
      const opened = codec.openChunkBatch(key, sealed.out, sealed.blobRanges, sealed.ids, lengths);
      expect(opened.errors.every((e) => e === null)).toBe(true);
      expect(opened.out.subarray(0, data.length).equals(data)).toBe(true);
      plains.forEach((plain, i) => {
        const blob = sealed.out.subarray(
          sealed.blobRanges[2 * i],
          sealed.blobRanges[2 * i] + sealed.blobRanges[2 * i + 1],
        );
        const id = sealed.ids.subarray(32 * i, 32 * i + 32);
        expect(codec.verifyChunk(key, id, blob, plain.length)).toBeNull();
        expect(codec.verifyChunk(key, id, blob, plain.length - 1)).toMatch(/does not hold|expected 199999/);
      });
    }
    // A validly sealed chunk whose LZ4 block is damaged: both name it the same way.
    const plain = lines(3_000);
    const id = createHash("sha256").update(plain).digest();
    const body = compressSync(plain);
    body[body.length - 3] ^= 0xff;
    body[20] = 0xff;
    for (const codec of [chunkCodec, viaNapi]) {
      const why = codec.verifyChunk(key, id, forge(key, id, 1, body), plain.length);
      expect(why).toMatch(/LZ4 data does not decompress|SHA-256|expected/);
    }
  });

  it("seals and opens chunks with the WebAssembly modules alone when it has them", () => {
    // lz4-napi is then only the fallback: a codec whose lz4-napi calls fail still does everything.
    const refuse = () => {
      throw new Error("lz4-napi was called");
    };
    const wasmOnly = createChunkCodec({ ...codecDeps, compress: refuse, uncompress: refuse });
    const text = Buffer.from("a line of a log, and another line of it\n".repeat(20_000));
    const noise = randomBytes(300_000);
    for (const plain of [text, noise, text.subarray(0, 1000)]) {
      const { id, blob } = wasmOnly.sealChunk(key, plain);
      expect(wasmOnly.verifyChunk(key, id, blob, plain.length)).toBeNull();
      const opened = wasmOnly.openChunkBatch(
        key,
        blob,
        Int32Array.from([0, blob.length]),
        id,
        Int32Array.from([plain.length]),
      );
      expect(opened.errors[0]).toBeNull();
      expect(opened.out.subarray(0, plain.length).equals(plain)).toBe(true);
    }
    expect(wasmOnly.sealChunk(key, text).blob.length).toBeLessThan(text.length / 4);
  });

  it("seals objects with DEFLATE, opens the LZ4 ones written before, and bounds what an object may hold", () => {
    // A manifest's worth of hex chunk ids: LZ4 cannot shrink hex, DEFLATE's Huffman coding halves it.
    const ids = Array.from({ length: 3000 }, () => randomBytes(32).toString("hex"));
    const json = Buffer.from(
      JSON.stringify({ version: 1, entries: ids.map((id, i) => ({ path: `f${i}`, chunks: [id] })) }),
    );
    const aad = "dumont/manifest/v1";
    const deflated = chunkCodec.sealObject(key, aad, json);
    const old = lz4Only().sealObject(key, aad, json);
    expect(deflated.length).toBeLessThan(old.length * 0.65);
    expect(chunkCodec.openObject(key, aad, deflated).equals(json)).toBe(true);
    expect(chunkCodec.openObject(key, aad, old).equals(json)).toBe(true);
    // Small or incompressible objects stay raw.
    const lock = Buffer.from(randomBytes(200).toString("base64"));
    expect(chunkCodec.openObject(key, aad, chunkCodec.sealObject(key, aad, lock)).equals(lock)).toBe(true);

    // A codec that takes at most 1 MiB refuses a 2 MiB object however it is coded, naming why.
    const zeros = Buffer.alloc(2 * 1024 * 1024);
    const small = createChunkCodec({ ...codecDeps, maxObjectBytes: 1024 * 1024 });
    expect(() => small.openObject(key, aad, chunkCodec.sealObject(key, aad, zeros))).toThrow(/more than 1048576 bytes/);
    // and will not seal one: a snapshot whose manifest could not be opened again would be lost.
    expect(() => small.sealObject(key, aad, zeros)).toThrow(/object of 2097152 bytes is over the 1048576-byte limit/);
    expect(() => small.openObject(key, aad, lz4Only().sealObject(key, aad, zeros))).toThrow(/bad LZ4 length prefix/);
    // Not random bytes: about 1 in 200 random 100-byte strings happens to inflate (a final block, then trailing
    // bytes zlib ignores), which made this test fail now and then. 0xff opens with the reserved block type (11),
    // which no inflater accepts.
    const garbage = forge(key, Buffer.from(aad), 2, Buffer.alloc(100, 0xff));
    expect(() => chunkCodec.openObject(key, aad, garbage)).toThrow(/DEFLATE data does not decompress/);
    // Where the codec has no DEFLATE (the workers), an object that needs it is refused, not misread.
    expect(() => lz4Only().openObject(key, aad, deflated)).toThrow(/cannot be opened here/);

    // Chunks are raw or LZ4 only: a chunk blob claiming DEFLATE is refused by both ways of opening one.
    const plain = Buffer.from("text that deflates well ".repeat(1000));
    const id = createHash("sha256").update(plain).digest();
    const chunk = forge(key, id, 2, deflateRawSync(plain));
    expect(() => chunkCodec.openChunk(key, id, chunk)).toThrow(/unknown codec 2/);
    expect(chunkCodec.verifyChunk(key, id, chunk, plain.length)).toMatch(/unknown codec 2/);
  });

  it("in a worker thread, frees every cipher output once used, and still seals and opens byte for byte", async () => {
    enableArrayBufferTransferInWorkers();
    const plains = [Buffer.from("the same words again and again ".repeat(10_000)), randomBytes(300_000)];
    // The codec as the snapshot workers run it (from its source text), its ciphers' outputs recorded.
    const source = `
      const { parentPort, workerData } = require("node:worker_threads");
      const crypto = require("node:crypto");
      const lz4 = require(workerData.lz4);
      const outputs = [];
      const recorded = (make) => (...args) => {
        const c = make(...args);
        const update = c.update.bind(c);
        c.update = (data) => { const out = update(data); outputs.push(out); return out; };
        return c;
      };
      const codec = (${createChunkCodec.toString()})({
        createHash: crypto.createHash,
        randomFillSync: crypto.randomFillSync,
        createCipheriv: recorded(crypto.createCipheriv),
        createDecipheriv: recorded(crypto.createDecipheriv),
        compress: lz4.compressSync,
        uncompress: lz4.uncompressSync,
      });
      const key = Buffer.from(workerData.key);
      const plains = workerData.plains.map((p) => Buffer.from(p));
      const sealed = plains.map((p) => codec.sealChunk(key, p));
      const verified = sealed.map((c, i) => codec.verifyChunk(key, c.id, c.blob, plains[i].length));
      const data = Buffer.concat(sealed.map((c) => c.blob));
      const ranges = Int32Array.from([0, sealed[0].blob.length, sealed[0].blob.length, sealed[1].blob.length]);
      const ids = Buffer.concat(sealed.map((c) => c.id));
      const batch = codec.openChunkBatch(key, data, ranges, ids, Int32Array.from(plains.map((p) => p.length)));
      parentPort.postMessage({
        transfer: typeof ArrayBuffer.prototype.transfer,
        outputs: outputs.length,
        freed: outputs.filter((o) => o.length === 0 && o.buffer.byteLength === 0).length,
        blobs: sealed.map((c) => c.blob),
        verified,
        opened: plains.map((_, i) => batch.out.subarray(batch.plainRanges[2 * i], batch.plainRanges[2 * i] + batch.plainRanges[2 * i + 1])),
        errors: batch.errors,
      });`;
    const lz4 = createRequire(import.meta.url).resolve("lz4-napi");
    const worker = new Worker(source, { eval: true, workerData: { key, plains, lz4 } });
    const reply = await new Promise<{
      transfer: string;
      outputs: number;
      freed: number;
      blobs: Uint8Array[];
      verified: (string | null)[];
      opened: Uint8Array[];
      errors: (string | null)[];
    }>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
    });
    await worker.terminate();
    expect(reply.transfer).toBe("function");
    // The noise was sealed, verified and opened in 16 KiB pieces (the text's LZ4 body is short): every
    // output freed.
    expect(reply.outputs).toBeGreaterThanOrEqual(3 * Math.ceil(300_000 / (16 * 1024)));
    expect(reply.freed).toBe(reply.outputs);
    expect(reply.verified).toEqual([null, null]);
    expect(reply.errors).toEqual([null, null]);
    for (const [i, plain] of plains.entries()) {
      expect(Buffer.from(reply.opened[i]).equals(plain)).toBe(true);
      // Sealed there, opened here (where the codec leaves its outputs to the collector).
      const id = createHash("sha256").update(plain).digest();
      expect(chunkCodec.openChunk(key, id, Buffer.from(reply.blobs[i])).equals(plain)).toBe(true);
    }
  });
});
