// What the repository's suites share: the two stores each suite runs on (a directory, and a real S3-compatible
// server, s3rver, on loopback), sealed chunks and manifests of them, and listings.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll } from "vitest";
import type { BlobStore } from "../blob-store.js";
import type { Manifest } from "../manifest.js";
import { openBlobStore } from "../open-blob-store.js";
import { chunkCodec } from "../sealing.js";
import type { FetchedChunk, SealedChunk } from "../transfer.js";
import { type S3TestServer, startS3TestServer } from "./s3-test-server.js";

export interface BothStores {
  /** For describe.each: each call of `make` opens a store of its own, empty. */
  stores: [name: string, make: () => BlobStore][];
  /** A directory of the suite's own, removed after it (set once the suite starts). */
  readonly dir: string;
  /** The suite's S3 server (set once the suite starts). */
  readonly s3: S3TestServer;
}

/** Starts an S3 server and makes a scratch directory before the suite, and removes both after it. */
export function bothStores(prefix: string): BothStores {
  let s3: S3TestServer | undefined;
  let dir: string | undefined;
  let counter = 0;
  beforeAll(async () => {
    s3 = await startS3TestServer();
    dir = await mkdtemp(join(tmpdir(), prefix));
  });
  afterAll(async () => {
    await s3?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  const started = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error("bothStores: used before the suite started");
    return value;
  };
  return {
    stores: [
      ["file://", () => openBlobStore(pathToFileURL(join(started(dir), `s${++counter}`)).href)],
      ["s3://", () => openBlobStore(started(s3).url(`p${++counter}`), { s3: started(s3).s3 })],
    ],
    get dir() {
      return started(dir);
    },
    get s3() {
      return started(s3);
    },
  };
}

/** A chunk sealed under `key`, with its id in hex. */
export function sealed(key: Buffer, plain: Buffer): SealedChunk & { hex: string } {
  const { id, blob } = chunkCodec.sealChunk(key, plain);
  return { id, blob, plainLength: plain.length, hex: id.toString("hex") };
}

/** A manifest of a directory `d` and one file per name, of those chunks. */
export function manifestOf(files: Record<string, SealedChunk[]>): Manifest {
  return {
    version: 1,
    entries: [
      { type: "dir", path: "d", mode: 0o755, mtimeNs: "1700000000000000000" },
      ...Object.entries(files).map(([path, chunks]) => ({
        type: "file" as const,
        path,
        mode: 0o644,
        mtimeNs: "1700000000123456789",
        size: chunks.reduce((s, c) => s + c.plainLength, 0),
        chunks: chunks.map((c) => c.id.toString("hex")),
        lengths: chunks.map((c) => c.plainLength),
      })),
    ],
  };
}

/** The keys a store lists under `prefix`, sorted. */
export async function keysIn(store: BlobStore, prefix: string): Promise<string[]> {
  const found: string[] = [];
  for await (const info of store.list(prefix)) found.push(info.key);
  return found.sort();
}

export async function collect(it: AsyncIterable<FetchedChunk>): Promise<FetchedChunk[]> {
  const out: FetchedChunk[] = [];
  for await (const x of it) out.push(x);
  return out;
}
