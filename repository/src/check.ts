// Verifies a repository end to end: every index object, snapshot and manifest opens; every referenced chunk
// is indexed; and (by default) every chunk of every pack decrypts and hashes to its id. Each problem names
// the pack, the chunk and the snapshot files it affects.
import { isRepositoryError } from "./errors.js";
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
  onProgress?: (progress: { packsDone: number; packsTotal: number; bytesDone: number; bytesTotal: number }) => void;
}

export async function checkRepository(repository: Repository, options: CheckOptions = {}): Promise<CheckReport> {
  const problems: CheckProblem[] = [];
  const index = await repository.loadIndex({
    onCorrupt: (key, err) => problems.push({ kind: "index-unreadable", message: `${key}: ${err.message}` }),
  });
  const snapshots = await repository.listSnapshots({
    onCorrupt: (id, err) => problems.push({ kind: "snapshot-unreadable", snapshot: id, message: err.message }),
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
  for (const pack of packs) {
    chunks += pack.entries.length;
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
    } else if (options.readData !== false) {
      await checkPack(repository, pack.packId, pack.entries, problems, affected);
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

async function checkPack(
  repository: Repository,
  packId: string,
  entries: { id: Buffer; offset: number; length: number; plainLength: number }[],
  problems: CheckProblem[],
  affected: (ids: Iterable<Buffer>) => AffectedFile[],
): Promise<void> {
  let pack: Buffer;
  try {
    pack = await repository.store.get(packKey(packId));
  } catch (err) {
    const files = affected(entries.map((e) => e.id));
    problems.push({
      kind: "pack-unreadable",
      pack: packId,
      files,
      message: `pack ${short(packId)} cannot be read (${(err as Error).message}); it breaks ${describeFiles(files)}`,
    });
    return;
  }
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
      try {
        const plain = chunkCodec.openChunk(repository.key, e.id, pack.subarray(e.offset, e.offset + e.length));
        if (plain.length !== e.plainLength) reason = `it is ${plain.length} bytes, the index says ${e.plainLength}`;
      } catch (err) {
        reason = (err as Error).message;
      }
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
