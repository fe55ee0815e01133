// The codec instance used on the calling thread, and the associated-data labels of each object kind.
import { createCipheriv, createDecipheriv, createHash, createHmac, randomFillSync } from "node:crypto";
import { createRequire } from "node:module";
import { deflateRawSync, inflateRawSync } from "node:zlib";
import { type ChunkCodecDeps, createChunkCodec } from "./chunk-codec.js";
import { RepositoryError } from "./errors.js";
import { createLz4Wasm, LZ4_WASM } from "./lz4-wasm.js";

/** lz4-napi, where WebAssembly is missing: loaded on first use (~20 ms of every start otherwise, for a fallback). */
let napi: { compressSync(data: Buffer): Buffer; uncompressSync(data: Buffer): Buffer } | undefined;
const lz4Napi = () => {
  napi ??= createRequire(import.meta.url)("lz4-napi") as NonNullable<typeof napi>;
  return napi;
};

// Made on first use (null until then): most commands that load the codec never seal or open a chunk.
let lz4Wasm: ReturnType<typeof createLz4Wasm> | null = null;
const lz4 = () => {
  if (lz4Wasm === null) lz4Wasm = createLz4Wasm(LZ4_WASM);
  return lz4Wasm;
};

/** What the calling thread's codec is built from (LZ4 for chunks, DEFLATE for objects). */
export const codecDeps: ChunkCodecDeps = {
  createHash,
  createCipheriv,
  createDecipheriv,
  randomFillSync,
  createHmac,
  compress: (data) => lz4Napi().compressSync(data),
  uncompress: (data) => lz4Napi().uncompressSync(data),
  get lz4Encoder() {
    return lz4()?.encoder;
  },
  get lz4Decoder() {
    return lz4()?.decoder;
  },
  deflate: (data) => deflateRawSync(data),
  inflate: (data, maxLength) => inflateRawSync(data, { maxOutputLength: maxLength }),
};

export const chunkCodec = createChunkCodec(codecDeps);

/** Associated data of each object kind: a blob sealed as one kind never opens as another. */
export const ObjectKind = {
  keyCheck: "dumont/key-check/v1",
  packHeader: "dumont/pack-header/v1",
  index: "dumont/index/v1",
  manifest: "dumont/manifest/v1",
  snapshot: "dumont/snapshot/v1",
  lock: "dumont/lock/v1",
} as const;

/** `deterministic`: the same plain object always seals to the same bytes (see ChunkCodec.sealObject). */
export function sealObject(key: Buffer, kind: string, plain: Buffer, options?: { deterministic?: boolean }): Buffer {
  return chunkCodec.sealObject(key, kind, plain, options);
}

/** Opens a sealed object; `what` names it in the error ("index index/ab12…"). */
export function openObject(key: Buffer, kind: string, sealed: Buffer, what: string): Buffer {
  try {
    return chunkCodec.openObject(key, kind, sealed);
  } catch (err) {
    throw new RepositoryError("corrupt", `${what} is unreadable: ${(err as Error).message}`, { cause: err });
  }
}

export function sealJson(key: Buffer, kind: string, value: unknown): Buffer {
  return sealObject(key, kind, Buffer.from(JSON.stringify(value), "utf8"));
}

export function openJson(key: Buffer, kind: string, sealed: Buffer, what: string): unknown {
  return parseJson(openObject(key, kind, sealed, what), what);
}

/** Parses an opened object's JSON; `what` names it in the error. */
export function parseJson(plain: Buffer, what: string): unknown {
  try {
    return JSON.parse(plain.toString("utf8"));
  } catch (err) {
    throw new RepositoryError("corrupt", `${what} does not hold valid JSON`, { cause: err });
  }
}

/** Whether `name` is an object id as the repository names objects: 64 lowercase hex digits (a SHA-256). */
export function isObjectId(name: string): boolean {
  return /^[0-9a-f]{64}$/.test(name);
}

/**
 * Whether `key` is a name the repository's writers give an object (FORMAT.md's layout): `config`,
 * `data/<id[0:2]>/<id>`, `index/<id>`, `manifests/<id>`, `snapshots/<id>`, or anything under `locks/`. Anything
 * else in the repository (put there by hand, or by another tool) is foreign: no command reads it as an object,
 * counts it as damage or deletes it; `check` names it.
 */
export function isRepositoryKey(key: string): boolean {
  if (key === "config" || key.startsWith("locks/")) return true;
  const slash = key.indexOf("/");
  const prefix = key.slice(0, slash + 1);
  const name = key.slice(slash + 1);
  if (prefix === "data/")
    return name.length === 67 && name[2] === "/" && isObjectId(name.slice(3)) && name.startsWith(name.slice(3, 5));
  return (prefix === "index/" || prefix === "manifests/" || prefix === "snapshots/") && isObjectId(name);
}

export function sha256(data: Buffer | readonly Buffer[]): Buffer {
  const hash = createHash("sha256");
  for (const part of Buffer.isBuffer(data) ? [data] : data) hash.update(part);
  return hash.digest();
}
