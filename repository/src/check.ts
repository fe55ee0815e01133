// Verifies a repository end to end: every index object, snapshot and manifest opens; every referenced chunk
// is indexed; and (by default) every chunk of every pack decrypts and hashes to its id. Each problem names
// the pack, the chunk and the snapshot files it affects.
import { alignedBuffer, PAGE } from "./aligned-memory.js";
import { isRepositoryError } from "./errors.js";
import { acquireLock } from "./lock.js";
import { openPackTrailer, packKey } from "./pack.js";
import type { Repository } from "./repository.js";
import { chunkCodec } from "./sealing.js";

export type CheckProblemKind =
  | "index-unreadable"
  | "snapshot-unreadable"
  | "manifest-unreadable"
  | "chunk-missing"
  | "pack-missing"
  | "pack-unreadable"
  | "pack-header"
  | "chunk-corrupt";

export interface AffectedFile {
  snapshot: string;
  path: string;
}

export interface CheckProblem {
  kind: CheckProblemKind;
  message: string;
  pack?: string;
  chunk?: string;
  snapshot?: string;
  files?: AffectedFile[];
}

export interface CheckReport {
  ok: boolean;
  snapshots: number;
  packs: number;
  chunks: number;
  bytesChecked: number;
  problems: CheckProblem[];
}

export interface CheckOptions {
  /** Read and verify every chunk (default true); false checks only the structure. */
  readData?: boolean;
  /**
   * Hold a shared repository lock meanwhile (default true), as snapshots do: a prune (which takes an exclusive
   * one) then cannot delete packs under the check, which would report them missing. false for a repository
   * this process may not write to.
   */
  lock?: boolean;
  onProgress?: (progress: { packsDone: number; packsTotal: number; bytesDone: number; bytesTotal: number }) => void;
}

export async function checkRepository(repository: Repository, options: CheckOptions = {}): Promise<CheckReport> {
  const lock =
    options.lock === false
      ? undefined
      : await acquireLock(repository.store, repository.key, { exclusive: false, purpose: "a check" });
  try {
    return await check(repository, options);
  } finally {
    await lock?.release();
  }
}

async function check(repository: Repository, options: CheckOptions): Promise<CheckReport> {
  const problems: CheckProblem[] = [];
  // Snapshots first, then the index: a snapshot's index objects are durable before its record, so every
  // snapshot listed has its packs in the index read after. The other way round, one committed between the two
  // reads (a snapshot running beside the check) would be listed with chunks in no pack the check knew of.
  const snapshots = await repository.listSnapshots({
    onCorrupt: (id, err) => problems.push({ kind: "snapshot-unreadable", snapshot: id, message: err.message }),
  });
  const index = await repository.loadIndex({
    onCorrupt: (key, err) => problems.push({ kind: "index-unreadable", message: `${key}: ${err.message}` }),
  });

  // chunk id -> the files that need it, to name what a damaged chunk breaks.
  const users = new Map<string, AffectedFile[]>();
  for (const snap of snapshots) {
    let manifest: Awaited<ReturnType<Repository["readManifest"]>>;
    try {
      manifest = await repository.readManifest(snap);
    } catch (err) {
      if (!isRepositoryError(err)) throw err;
      problems.push({ kind: "manifest-unreadable", snapshot: snap.id, message: err.message });
      continue;
    }
    for (const e of manifest.entries) {
      if (e.type !== "file") continue;
      for (const id of e.chunks) {
        let list = users.get(id);
        if (!list) {
          list = [];
          users.set(id, list);
        }
        if (list.at(-1)?.path !== e.path || list.at(-1)?.snapshot !== snap.id)
          list.push({ snapshot: snap.id, path: e.path });
      }
    }
  }
  for (const [id, files] of users) {
    if (!index.has(id)) {
      problems.push({
        kind: "chunk-missing",
        chunk: id,
        files,
        message: `chunk ${short(id)} is in no pack; it breaks ${describeFiles(files)}`,
      });
    }
  }

  const stored = new Map<string, number>();
  for await (const info of repository.store.list("data/"))
    stored.set(info.key.slice(info.key.lastIndexOf("/") + 1), info.size);

  const affected = (ids: Iterable<Buffer>): AffectedFile[] => {
    const out: AffectedFile[] = [];
    for (const id of ids) out.push(...(users.get(id.toString("hex")) ?? []));
    return out;
  };

  const packs = [...index.packs.values()];
  const bytesTotal = packs.reduce((sum, p) => sum + p.packSize, 0);
  let bytesDone = 0;
  let chunks = 0;
  let packsDone = 0;
  const reads = new PackReads(repository);
  const readable = packs.map((pack) => {
    const size = stored.get(pack.packId);
    if (size === undefined || size !== pack.packSize) {
      const files = affected(pack.entries.map((e) => e.id));
      problems.push({
        kind: "pack-missing",
        pack: pack.packId,
        files,
        message:
          size === undefined
            ? `pack ${short(pack.packId)} is indexed but missing; it breaks ${describeFiles(files)}`
            : `pack ${short(pack.packId)} is ${size} bytes, its index says ${pack.packSize}; it breaks ${describeFiles(files)}`,
      });
      return false;
    }
    return options.readData !== false;
  });
  // The next pack is read while this one is checked: the read runs on libuv's threads, the check here.
  const next = (from: number): number => {
    let i = from;
    while (i < packs.length && !readable[i]) i++;
    return i;
  };
  let ahead = next(0);
  let reading = ahead < packs.length ? reads.start(packs[ahead]) : undefined;
  for (let i = 0; i < packs.length; i++) {
    const pack = packs[i];
    chunks += pack.entries.length;
    if (i === ahead && reading) {
      const read = await reading;
      ahead = next(i + 1);
      reading = ahead < packs.length ? reads.start(packs[ahead]) : undefined;
      checkPack(repository, pack.packId, pack.entries, read, problems, affected);
      reads.done(read);
    }
    bytesDone += pack.packSize;
    options.onProgress?.({ packsDone: ++packsDone, packsTotal: packs.length, bytesDone, bytesTotal });
  }
  return {
    ok: problems.length === 0,
    snapshots: snapshots.length,
    packs: packs.length,
    chunks,
    bytesChecked: options.readData === false ? 0 : bytesDone,
    problems,
  };
}

type PackRead = { pack: Buffer; buffer: Buffer } | { error: Error };

/**
 * Reads whole packs into two buffers it reuses (one being checked, one being filled): a fresh 32 MiB
 * buffer per pack made `check` fault in every page of the repository once more.
 */
class PackReads {
  private readonly idle: Buffer[] = [];

  constructor(private readonly repository: Repository) {}

  async start(pack: { packId: string; packSize: number }): Promise<PackRead> {
    let buffer = this.idle.pop();
    // Page-aligned with room for the last page: the file store then reads around the page cache.
    if (!buffer || buffer.length < pack.packSize + PAGE) buffer = alignedBuffer(pack.packSize + PAGE);
    try {
      return { pack: await this.repository.store.getRange(packKey(pack.packId), 0, pack.packSize, buffer), buffer };
    } catch (err) {
      this.idle.push(buffer);
      return { error: err instanceof Error ? err : new Error(String(err)) };
    }
  }

  done(read: PackRead): void {
    if ("buffer" in read) this.idle.push(read.buffer);
  }
}

function checkPack(
  repository: Repository,
  packId: string,
  entries: { id: Buffer; offset: number; length: number; plainLength: number }[],
  read: PackRead,
  problems: CheckProblem[],
  affected: (ids: Iterable<Buffer>) => AffectedFile[],
): void {
  if ("error" in read) {
    const files = affected(entries.map((e) => e.id));
    problems.push({
      kind: "pack-unreadable",
      pack: packId,
      files,
      message: `pack ${short(packId)} cannot be read (${read.error.message}); it breaks ${describeFiles(files)}`,
    });
    return;
  }
  const { pack } = read;
  try {
    const header = openPackTrailer(repository.key, pack, packId);
    const same =
      header.length === entries.length &&
      header.every(
        (h, i) => h.id.equals(entries[i].id) && h.offset === entries[i].offset && h.length === entries[i].length,
      );
    if (!same) {
      problems.push({
        kind: "pack-header",
        pack: packId,
        message: `pack ${short(packId)}: its header disagrees with its index`,
      });
    }
  } catch (err) {
    problems.push({ kind: "pack-header", pack: packId, message: (err as Error).message });
  }
  for (const e of entries) {
    const hex = e.id.toString("hex");
    let reason: string | undefined;
    if (e.offset + e.length > pack.length) reason = "it lies beyond the end of the pack";
    else {
      // Decrypted piece by piece into reused memory and hashed, without keeping the chunk: `check` reads
      // the whole repository, and a fresh buffer per chunk made it fault in every page it decrypted.
      const problem = chunkCodec.verifyChunk(
        repository.key,
        e.id,
        pack.subarray(e.offset, e.offset + e.length),
        e.plainLength,
      );
      if (problem !== null) reason = problem;
    }
    if (reason !== undefined) {
      const files = affected([e.id]);
      problems.push({
        kind: "chunk-corrupt",
        pack: packId,
        chunk: hex,
        files,
        message: `pack ${short(packId)}: chunk ${short(hex)} is damaged (${reason}); it breaks ${describeFiles(files)}`,
      });
    }
  }
}

function short(id: string): string {
  return id.slice(0, 12);
}

export function describeFiles(files: AffectedFile[]): string {
  if (files.length === 0) return "no snapshot file";
  const shown = files.slice(0, 5).map((f) => `${JSON.stringify(f.path)} in snapshot ${short(f.snapshot)}`);
  return files.length > 5 ? `${shown.join(", ")} and ${files.length - 5} more` : shown.join(", ");
}
