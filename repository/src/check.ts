// Verifies a repository end to end: every index object, snapshot and manifest opens; every referenced chunk
// is indexed; and (by default) every chunk of every pack decrypts and hashes to its id. Each problem names
// the pack, the chunk and the snapshot files it affects (none where another pack holds the chunk whole).
import { randomInt } from "node:crypto";
import { alignedBuffer, PAGE } from "./aligned-memory.js";
import { counted } from "./counted.js";
import { isObjectError, isRepositoryError, RepositoryError } from "./errors.js";
import { IdSet } from "./id-set.js";
import { acquireLock } from "./lock.js";
import { listPacks, openPackTrailer, type PackEntry, packKey } from "./pack.js";
import type { ReadSubset } from "./read-subset.js";
import type { Repository } from "./repository.js";
import { chunkCodec, isRepositoryKey } from "./sealing.js";
import type { SnapshotRecord } from "./snapshot-record.js";
import { quoted } from "./text-table.js";
import type { SealedChunk } from "./transfer.js";

export type CheckProblemKind =
  | "index-unreadable"
  | "snapshot-unreadable"
  | "manifest-unreadable"
  | "chunk-missing"
  | "pack-missing"
  | "pack-size"
  | "pack-unreadable"
  | "pack-header"
  | "chunk-corrupt"
  | "foreign-object";

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
  /** The snapshots' files it breaks: the first MAX_FILES_NAMED. */
  files?: AffectedFile[];
  /** How many more files it breaks, beyond those named. */
  filesNotNamed?: number;
  /**
   * For a damaged chunk (chunk-corrupt): another pack that holds it whole, read by this check. It breaks no file
   * then: a restore reads that copy (and `repair-packs` removes the damaged one).
   */
  wholeIn?: string;
}

/**
 * The most files a problem names; the rest are counted. A pack of 8,000 small files' chunks lost under 500
 * snapshots breaks 4,000,000 of them: named each, a check held ~1 GB for that one pack (and the control plane
 * answering it, every tenant's work with it).
 */
export const MAX_FILES_NAMED = 100;

/**
 * The most chunks in no pack that are each a problem of their own; the rest are one problem that counts them.
 * Lost index objects (deleted by hand or by a bucket's lifecycle rule) leave every chunk of their packs in none:
 * a problem each, millions for a large repository, held here and sent whole to whoever asked.
 */
export const MAX_MISSING_CHUNKS_NAMED = 1000;

export interface CheckReport {
  ok: boolean;
  snapshots: number;
  packs: number;
  /**
   * Packs read and checked, chunk by chunk (every pack, unless structure only or a subset); one that could not
   * be read counts too, and is a problem.
   */
  packsRead: number;
  chunks: number;
  bytesChecked: number;
  problems: CheckProblem[];
}

/** The packs `subset` picks, by id; undefined for every pack. */
function packsToRead(packIds: readonly string[], subset: ReadSubset | undefined): Set<string> | undefined {
  if (subset === undefined) return undefined;
  if ("group" in subset) {
    // Pack ids are 32 random bytes in hex (newPackId): their first 32 bits spread evenly over the groups.
    return new Set(packIds.filter((id) => Number.parseInt(id.slice(0, 8), 16) % subset.of === subset.group - 1));
  }
  const count = Math.ceil((packIds.length * subset.percent) / 100);
  const shuffled = [...packIds];
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
  }
  return new Set(shuffled.slice(0, count));
}

export interface CheckOptions {
  /** Read and verify every chunk (default true); false checks only the structure. */
  readData?: boolean;
  /** Read only these packs (with readData); the structure is checked whole. */
  readSubset?: ReadSubset;
  /**
   * Hold a shared repository lock meanwhile (default true), as snapshots do: a prune (which takes an exclusive
   * one) then cannot delete packs under the check, which would report them missing. false for a repository
   * this process may not write to.
   */
  lock?: boolean;
  onProgress?: (progress: { packsDone: number; packsTotal: number; bytesDone: number; bytesTotal: number }) => void;
  /**
   * Checks chunks elsewhere (the control plane's verifier threads, which keep its event loop free for the
   * agents' streams): per chunk, why it does not open to its id, or null. Default: on this thread.
   */
  verify?: (key: Buffer, chunks: readonly SealedChunk[]) => Promise<(string | null)[]>;
  /** Stops the check between packs (it changes nothing, so it may stop anywhere): it fails with the reason. */
  signal?: AbortSignal;
}

export async function checkRepository(repository: Repository, options: CheckOptions = {}): Promise<CheckReport> {
  const lock =
    options.lock === false
      ? undefined
      : await acquireLock(repository.store, repository.key, { exclusive: false, purpose: "a check" });
  try {
    const report = await check(repository, options);
    // A check whose lock was lost while it ran (the process paused past the lock's trust, or the lock removed as
    // stale) may have had packs pruned under it, and would name as broken snapshots that are whole: no report.
    await lock?.assertHeld().catch((err: Error) => {
      // Only a lock lost: a store that failed to answer the look at it says nothing of a prune (and is retried
      // by the caller as any failure of the store is).
      if (!isRepositoryError(err, "locked")) throw err;
      throw new RepositoryError(
        "locked",
        `${err.message}: a prune may have run meanwhile, so this check's findings could be wrong; run it again`,
        { cause: err },
      );
    });
    return report;
  } finally {
    await lock?.release();
  }
}

async function check(repository: Repository, options: CheckOptions): Promise<CheckReport> {
  const problems: CheckProblem[] = [];
  /** Names in the repository that no writer gives (isRepositoryKey): left out of everything, and named. */
  const foreign: string[] = [];
  const onForeign = (key: string) => void foreign.push(key);
  // Snapshots first, then the index: a snapshot's index objects are durable before its record, so every
  // snapshot listed has its packs in the index read after. The other way round, one committed between the two
  // reads (a snapshot running beside the check) would be listed with chunks in no pack the check knew of.
  const snapshots = await repository.listSnapshots({
    onCorrupt: (id, err) => problems.push({ kind: "snapshot-unreadable", snapshot: id, message: err.message }),
    onForeign,
  });
  const index = await repository.loadIndex({
    onCorrupt: (key, err) => problems.push({ kind: "index-unreadable", message: `${key}: ${err.message}` }),
    onForeign,
  });

  // Every manifest, a part at a time: it opens, and every chunk it needs is in a pack (named with the files it
  // breaks). Files are named only for chunks in trouble: a map of every chunk's files over every snapshot grew
  // with snapshots × files (50 snapshots of 300,000 files: 15 million entries).
  const missing = new Map<string, NamedFiles>();
  /** Chunks in no pack beyond the first MAX_MISSING_CHUNKS_NAMED, and the files they break (each file once). */
  const missingBeyond = new IdSet();
  const beyondFiles: NamedFiles = { files: [], more: 0 };
  await forEachFile(
    repository,
    snapshots,
    (snapshot, e) => {
      let hit: Set<string> | undefined;
      for (const id of e.chunks) {
        if (index.has(id)) continue;
        hit ??= new Set();
        hit.add(id);
      }
      let beyond = false;
      for (const id of hit ?? []) {
        let named = missing.get(id);
        if (!named) {
          if (missing.size >= MAX_MISSING_CHUNKS_NAMED) {
            missingBeyond.add(id);
            beyond = true;
            continue;
          }
          named = { files: [], more: 0 };
          missing.set(id, named);
        }
        nameFile(named, snapshot, e.path);
      }
      if (beyond) nameFile(beyondFiles, snapshot, e.path);
    },
    (snapshot, err) => problems.push({ kind: "manifest-unreadable", snapshot, message: err.message }),
  );
  for (const [id, named] of missing) {
    problems.push({
      kind: "chunk-missing",
      chunk: id,
      ...namedFields(named),
      message: `chunk ${short(id)} is in no pack; it breaks ${describeFiles(named.files, named.more)}`,
    });
  }
  if (missingBeyond.size > 0) {
    problems.push({
      kind: "chunk-missing",
      ...namedFields(beyondFiles),
      message:
        `${counted(missingBeyond.size, "more chunk")} (beyond the ${MAX_MISSING_CHUNKS_NAMED} named above) ` +
        `${missingBeyond.size === 1 ? "is" : "are"} in no pack; they break ${describeFiles(beyondFiles.files, beyondFiles.more)}`,
    });
  }

  const stored = await listPacks(repository.store, { onForeign });
  for await (const info of repository.store.list("manifests/")) if (!isRepositoryKey(info.key)) onForeign(info.key);
  if (foreign.length > 0) problems.push(foreignProblem(foreign));

  // Problems found in packs are listed as found, and named with the files they break once every pack is
  // read: by a second reading of the manifests, for the chunks in those problems only.
  const unnamed: UnnamedProblem[] = [];
  const broken = (problem: CheckProblem, ids: Iterable<Buffer>, what: string): void => {
    problems.push(problem);
    unnamed.push({ problem, ids: [...ids].map((id) => id.toString("hex")), what });
  };

  const packs = [...index.packs.values()];
  const chosen = options.readData === false ? undefined : packsToRead([...index.packs.keys()], options.readSubset);
  const inScope = (pack: { packId: string }) => chosen === undefined || chosen.has(pack.packId);
  const bytesTotal = packs.reduce((sum, p) => sum + (inScope(p) ? p.packSize : 0), 0);
  let bytesDone = 0;
  let chunks = 0;
  let packsDone = 0;
  let packsRead = 0;
  const reads = new PackReads(repository);
  /** The packs read and verified (a chunk in one that is in no problem is whole there). */
  const readWhole = new Set<string>();
  /** Bytes of each pack to read: its stored size where that differs from its index's (a pack cut short). */
  const readSizes = new Map<string, number>();
  const readable = packs.map((pack) => {
    const size = stored.get(pack.packId)?.size;
    const reading = options.readData !== false && inScope(pack);
    if (size === undefined || pack.packSize > MAX_PACK_READ) {
      const what =
        size === undefined
          ? `pack ${short(pack.packId)} is indexed but missing`
          : `pack ${short(pack.packId)}: its index says ${pack.packSize} bytes, more than any pack is (the index object is damaged)`;
      broken(
        { kind: size === undefined ? "pack-missing" : "pack-size", pack: pack.packId, message: what },
        pack.entries.map((e) => e.id),
        what,
      );
      return false;
    }
    if (size !== pack.packSize) {
      // Cut short (or grown): the chunks it still holds whole are read and checked as any, so only the files of
      // those past its end are named (all of them were, the intact ones too). Not read, those are named here.
      const what = `pack ${short(pack.packId)} is ${size} bytes, its index says ${pack.packSize}`;
      const beyond = reading ? [] : pack.entries.filter((e) => e.offset + e.length > size).map((e) => e.id);
      if (beyond.length > 0) {
        broken({ kind: "pack-size", pack: pack.packId, message: what }, beyond, what);
      } else problems.push({ kind: "pack-size", pack: pack.packId, message: what });
      readSizes.set(pack.packId, Math.min(size, pack.packSize));
    }
    return reading;
  });
  const readOf = (pack: { packId: string; packSize: number }) => ({
    packId: pack.packId,
    packSize: readSizes.get(pack.packId) ?? pack.packSize,
  });
  // The next pack is read while this one is checked: the read runs on libuv's threads, the check here.
  const next = (from: number): number => {
    let i = from;
    while (i < packs.length && !readable[i]) i++;
    return i;
  };
  let ahead = next(0);
  let reading = ahead < packs.length ? reads.start(readOf(packs[ahead])) : undefined;
  const packsTotal = packs.filter(inScope).length;
  for (let i = 0; i < packs.length; i++) {
    options.signal?.throwIfAborted();
    const pack = packs[i];
    chunks += pack.entries.length;
    if (i === ahead && reading) {
      const read = await reading;
      ahead = next(i + 1);
      reading = ahead < packs.length ? reads.start(readOf(packs[ahead])) : undefined;
      await checkPack(repository, pack.packId, pack.entries, read, problems, broken, options.verify);
      if (!("error" in read)) readWhole.add(pack.packId);
      reads.done(read);
      packsRead++;
    }
    if (!inScope(pack)) continue;
    bytesDone += pack.packSize;
    options.onProgress?.({ packsDone: ++packsDone, packsTotal, bytesDone, bytesTotal });
  }
  if (unnamed.length > 0) {
    // A chunk in trouble in one pack that another pack holds whole (read by this check, with nothing wrong with the
    // chunk there) breaks no file: a restore reads that copy. Its problem names the pack instead of files. Only
    // chunks the index holds more than once are looked at (a lost pack of small files lists 100,000).
    const troubled = new Map<string, Set<string | undefined>>();
    for (const { problem, ids } of unnamed) {
      for (const id of ids) {
        if (index.copyCount(id) < 2) continue;
        const packsOf = troubled.get(id);
        if (packsOf) packsOf.add(problem.pack);
        else troubled.set(id, new Set([problem.pack]));
      }
    }
    for (const u of unnamed) {
      const rest: string[] = [];
      const wholeIn = new Map<string, string>();
      for (const id of u.ids) {
        const packsOf = troubled.get(id);
        const copy = packsOf && index.locations(id).find((l) => readWhole.has(l.packId) && !packsOf.has(l.packId));
        if (copy) wholeIn.set(id, copy.packId);
        else rest.push(id);
      }
      u.ids = rest;
      if (wholeIn.size > 0) u.wholeIn = wholeIn;
    }
    // Each problem's chunks, and per problem the files named: a file entry is one snapshot's path, so one with
    // several chunks in a broken pack is named (or counted) once, as it is met.
    const problemsOf = new Map<string, number[]>();
    for (const [n, { ids }] of unnamed.entries()) {
      for (const id of ids) {
        const list = problemsOf.get(id);
        if (list) list.push(n);
        else problemsOf.set(id, [n]);
      }
    }
    const named = unnamed.map((): NamedFiles => ({ files: [], more: 0 }));
    await forEachFile(repository, snapshots, (snapshot, e) => {
      let hit: Set<number> | undefined;
      for (const id of e.chunks) {
        const of = problemsOf.get(id);
        if (!of) continue;
        hit ??= new Set();
        for (const n of of) hit.add(n);
      }
      for (const n of hit ?? []) nameFile(named[n], snapshot, e.path);
    });
    for (const [n, { problem, ids, what, wholeIn }] of unnamed.entries()) {
      Object.assign(problem, namedFields(named[n]));
      const breaks = `it breaks ${describeFiles(named[n].files, named[n].more)}`;
      if (!wholeIn) problem.message = `${what}; ${breaks}`;
      else if (problem.kind === "chunk-corrupt") {
        problem.wholeIn = [...wholeIn.values()][0];
        problem.message = `${what}; pack ${short(problem.wholeIn)} holds it whole, which restores read. ${BEFORE_PRUNE}`;
      } else {
        const elsewhere = `${counted(wholeIn.size, "chunk")} of it ${wholeIn.size === 1 ? "is" : "are"} whole in other packs`;
        problem.message =
          ids.length === 0 ? `${what}; ${elsewhere}, which restores read` : `${what}; ${breaks} (${elsewhere})`;
      }
    }
  }
  return {
    ok: problems.length === 0,
    snapshots: snapshots.length,
    packs: packs.length,
    packsRead,
    chunks,
    bytesChecked: options.readData === false ? 0 : bytesDone,
    problems,
  };
}

/** The most foreign names one problem names; the rest are counted. */
const MAX_FOREIGN_NAMED = 10;

/**
 * Names no writer gives, found where the repository's objects lie: one problem for all of them. Decided: a problem
 * (check exits 1), though nothing is damaged, since nothing else belongs there and nothing would ever remove them.
 */
function foreignProblem(keys: string[]): CheckProblem {
  const sorted = keys.sort();
  const more = sorted.length - MAX_FOREIGN_NAMED;
  return {
    kind: "foreign-object",
    message:
      `${counted(sorted.length, "file")} in the repository ${sorted.length === 1 ? "was" : "were"} not written by ` +
      `Dumont (${sorted
        .slice(0, MAX_FOREIGN_NAMED)
        .map(quoted)
        .join(", ")}${more > 0 ? `, and ${more} more` : ""}): no command ` +
      `reads, counts or deletes ${sorted.length === 1 ? "it" : "them"}; move ${sorted.length === 1 ? "it" : "them"} ` +
      "out of the repository",
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
    try {
      // Page-aligned with room for the last page: the file store then reads around the page cache.
      if (!buffer || buffer.length < pack.packSize + PAGE) buffer = alignedBuffer(pack.packSize + PAGE);
      return { pack: await this.repository.store.getRange(packKey(pack.packId), 0, pack.packSize, buffer), buffer };
    } catch (err) {
      if (buffer) this.idle.push(buffer);
      return { error: err instanceof Error ? err : new Error(String(err)) };
    }
  }

  done(read: PackRead): void {
    if ("buffer" in read) this.idle.push(read.buffer);
  }
}

async function checkPack(
  repository: Repository,
  packId: string,
  entries: { id: Buffer; offset: number; length: number; plainLength: number }[],
  read: PackRead,
  problems: CheckProblem[],
  broken: (problem: CheckProblem, ids: Iterable<Buffer>, what: string) => void,
  verify: CheckOptions["verify"],
): Promise<void> {
  if ("error" in read) {
    // A store that did not answer, or that the store says refused (S3's credentials or permissions), says
    // nothing of the pack: the check fails rather than report it broken. Any other failure (EIO, an error of no
    // known kind) is reported, with its reason.
    if (isRepositoryError(read.error) && !isObjectError(read.error)) throw read.error;
    const what = `pack ${short(packId)} cannot be read (${read.error.message})`;
    broken(
      { kind: "pack-unreadable", pack: packId, message: what },
      entries.map((e) => e.id),
      what,
    );
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
  const verdicts = await verifyPackChunks(repository.key, pack, entries, verify);
  for (const [i, e] of entries.entries()) {
    const reason = verdicts[i];
    if (reason === null) continue;
    const what = `pack ${short(packId)}: chunk ${short(e.id.toString("hex"))} is damaged (${reason})`;
    broken({ kind: "chunk-corrupt", pack: packId, chunk: e.id.toString("hex"), message: what }, [e.id], what);
  }
}

/**
 * The largest pack check reads whole. Writers make packs of at most 1 GiB (and one chunk more); an index object
 * saying more is damaged, and read whole it would not fit a Buffer (4 GiB) or this machine's memory.
 */
export const MAX_PACK_READ = 2 * 1024 * 1024 * 1024;

/**
 * Each of `entries`' chunks in `pack` (its bytes from the start, as far as the store holds them) verified: null, or
 * what is wrong with it; an entry past the bytes read lies beyond the end of the pack (a pack cut short), and is
 * not read. Decrypted piece by piece into reused memory and hashed, without keeping the chunk (check reads the
 * whole repository, and a fresh buffer per chunk made it fault in every page it decrypted); or by `verify` (the
 * control plane's verifier threads). check, repair-index and repair-packs all verify so.
 */
export async function verifyPackChunks(
  key: Buffer,
  pack: Buffer,
  entries: readonly PackEntry[],
  verify: CheckOptions["verify"],
): Promise<(string | null)[]> {
  const verdicts: (string | null)[] = entries.map(() => "it lies beyond the end of the pack");
  const within = [...entries.keys()].filter((i) => entries[i].offset + entries[i].length <= pack.length);
  const chunks = within.map((i) => ({
    id: entries[i].id,
    blob: pack.subarray(entries[i].offset, entries[i].offset + entries[i].length),
    plainLength: entries[i].plainLength,
  }));
  const found = verify
    ? await verifyInBatches(key, chunks, verify)
    : chunks.map((c) => chunkCodec.verifyChunk(key, c.id, c.blob, c.plainLength));
  for (const [k, i] of within.entries()) verdicts[i] = found[k];
  return verdicts;
}

/** About 2 MiB of chunks to a call of `verify`, so a pack's chunks are spread over a verifier's threads. */
const VERIFY_BATCH_BYTES = 2 * 1024 * 1024;

async function verifyInBatches(
  key: Buffer,
  chunks: SealedChunk[],
  verify: NonNullable<CheckOptions["verify"]>,
): Promise<(string | null)[]> {
  const calls: Promise<(string | null)[]>[] = [];
  for (let i = 0; i < chunks.length; ) {
    let j = i;
    for (let bytes = 0; j < chunks.length && (j === i || bytes + chunks[j].blob.length <= VERIFY_BATCH_BYTES); j++) {
      bytes += chunks[j].blob.length;
    }
    calls.push(verify(key, chunks.slice(i, j)));
    i = j;
  }
  return (await Promise.all(calls)).flat();
}

/** The files a problem breaks: the first MAX_FILES_NAMED, and a count of the rest. */
interface NamedFiles {
  files: AffectedFile[];
  more: number;
}

function nameFile(named: NamedFiles, snapshot: string, path: string): void {
  if (named.files.length < MAX_FILES_NAMED) named.files.push({ snapshot, path });
  else named.more++;
}

function namedFields(named: NamedFiles): Pick<CheckProblem, "files" | "filesNotNamed"> {
  return named.more > 0 ? { files: named.files, filesNotNamed: named.more } : { files: named.files };
}

/**
 * Calls `onFile` for every file entry of every snapshot's manifest, opened a part at a time; a manifest that
 * cannot be read goes to `onUnreadable` (after the files of the parts before the one that failed).
 */
async function forEachFile(
  repository: Repository,
  snapshots: SnapshotRecord[],
  onFile: (snapshot: string, e: { path: string; chunks: string[] }) => void,
  onUnreadable?: (snapshot: string, err: Error) => void,
): Promise<void> {
  for (const snap of snapshots) {
    try {
      for (const part of await repository.manifestParts(snap)) {
        for (const e of part) if (e.type === "file") onFile(snap.id, e);
      }
    } catch (err) {
      if (!isObjectError(err)) throw err;
      onUnreadable?.(snap.id, err);
    }
  }
}

/**
 * What a damaged chunk whole in another pack says: a prune keeps the copy the index finds first, and stops rather
 * than delete the other where that one is damaged (prune.ts, checkStayingCopies); `repair-packs` keeps the copy
 * that verifies.
 */
const BEFORE_PRUNE = "Run `snapshot repair-packs`: until then a prune that would delete the other copy stops";

interface UnnamedProblem {
  problem: CheckProblem;
  /** Hex ids of the chunks it breaks (less, once every pack is read, those whole in another pack). */
  ids: string[];
  /** What is wrong, before the files it breaks are named. */
  what: string;
  /** Its chunks whole in another pack: chunk → that pack. */
  wholeIn?: Map<string, string>;
}

function short(id: string): string {
  return id.slice(0, 12);
}

/** The first few of `files` by name, and how many more (`more`: those beyond `files` too). */
export function describeFiles(files: AffectedFile[], more = 0): string {
  if (files.length === 0) return "no snapshot file";
  const shown = files.slice(0, 5).map((f) => `${JSON.stringify(f.path)} in snapshot ${short(f.snapshot)}`);
  const rest = files.length - shown.length + more;
  return rest > 0 ? `${shown.join(", ")} and ${rest} more` : shown.join(", ");
}
