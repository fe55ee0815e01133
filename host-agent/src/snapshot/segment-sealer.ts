// What a worker does with a batch of file segments: read each one (a sliding window, so memory stays small
// whatever the file size), cut it into chunks, and seal every chunk into one output buffer. Self-contained:
// the worker runs it from its source text, and the calling thread runs the same code when there are no workers.
import type * as nodeFs from "node:fs";
import type { ChunkCodec } from "@dumont/repository";
import type { CompiledChunker, CutScanner } from "./chunker.js";
import type { UnderOpener } from "./open-under.js";

export interface FileSegment {
  path: string;
  /**
   * The source root and the file's path under it as listed: the file is then opened one directory at a time
   * through handles (open-under.ts), never through a symlink put on its path, rather than by `path`.
   */
  under?: { root: string; path: string };
  /** Size of the file when it was listed; reading stops there even if it has grown. */
  fileSize: number;
  /** A cut the caller vouches for (0, or a segment boundary to be stitched). */
  start: number;
  /** Chunks are cut until one starts at or after `end`; the last may run past it. */
  end: number;
  /**
   * Cut (without sealing) from this many bytes before `start`, and seal from the first cut at or after
   * `start`. Two chains of cuts started apart agree from their first common cut on, usually within a chunk
   * or two: a segment of a split file then starts where the file's single chain enters it, and the chunks
   * its worker seals are the ones a single pass gives, so nothing is sealed twice at the seam.
   */
  lookback?: number;
  /**
   * What the listing saw there (SourceEntry.ino and .dev): a file opened with other ones is not that file
   * (replaced, or reached through a directory on its path replaced by a symlink, which O_NOFOLLOW does not
   * stop), and is reported changed.
   */
  ino?: bigint;
  dev?: number;
  /**
   * For a second read (of a file that changed): the path, symlinks resolved, the file must be found at. Its
   * ino and dev are then the ones found at its path before this read, through whatever the path leads
   * through now; the file opened is checked against this path (Linux's /proc/self/fd; not checked where
   * there is none), and one that is elsewhere is left out (`elsewhere`).
   */
  expectPath?: string;
  /**
   * The file must be `fileSize` bytes when opened and once its end is read (a first read). One that grew since
   * it was listed was cut to its listed size: a prefix of content the file may never have had (rewritten
   * whole), stored without a word. It is reported changed instead, and read once more from a fresh listing,
   * where the size is not held to (a log appended to without pause gets its prefix as listed then).
   */
  sizeAsListed?: boolean;
  /**
   * A first read: the file's modification and change times as listed. A file rewritten in place at its size (a
   * database's pages, `dd conv=notrunc`, an mmap'd checkpoint) while its segments are read, by workers at
   * different times, would be stored as bytes of two versions that neither ever held: each segment's file must
   * have these times when it is opened and once it is read, or the file is reported changed (and read once
   * more, where times are not held to: what that read sees is kept, as a log appended to keeps its prefix).
   */
  listedTimes?: { mtimeNs: bigint; ctimeNs: bigint };
  /**
   * A second read: `listedTimes` (from its fresh listing) hold unless the file has grown past `fileSize`. A log
   * appended to without pause keeps its prefix as listed; a file rewritten in place at its size again (it was
   * stored as segments of two versions) is left out, having changed while read, twice.
   */
  timesUnlessGrown?: boolean;
}

export interface SealedSegments {
  out: Buffer;
  /** 32 bytes per chunk. */
  ids: Buffer;
  /**
   * Five numbers per chunk: segment index, file offset, plain length, blob offset in `out`, blob length.
   * A blob length of 0 marks a chunk left unsealed because the repository holds it (see `held`).
   */
  chunks: Float64Array;
  /**
   * Segments that could not be read; `changed` when the file changed under the read (it shrank, its type or
   * its inode), `elsewhere` when it was found away from `expectPath` (the message says why it is left out).
   */
  errors: { segment: number; message: string; changed?: boolean; elsewhere?: boolean }[];
  bytesRead: number;
}

export interface SegmentSealer {
  /**
   * `held`: 32-byte ids sorted ascending of chunks the repository holds (the last snapshot's, confirmed by
   * the sink). Such a chunk is hashed and cut as any other but not compressed or encrypted: an incremental
   * snapshot re-reads a changed file whole, and most of its chunks are the ones stored last time.
   */
  sealSegments(
    key: Buffer,
    chunker: CompiledChunker,
    segments: FileSegment[],
    spare?: ArrayBuffer,
    held?: Uint8Array,
  ): SealedSegments;
}

/** Room the sealed output of `segments` needs at most (the worker's output buffer is sized by it). */
export function estimateSealedSize(segments: FileSegment[], chunker: CompiledChunker, overhead: number): number {
  let estimate = 0;
  for (const seg of segments) {
    const span = Math.min(seg.fileSize, seg.end + chunker.max) - seg.start;
    estimate += span + overhead * (Math.ceil(span / chunker.min) + 1);
  }
  return estimate;
}

export function createSegmentSealer(deps: {
  codec: ChunkCodec;
  /** Makes the read window and its cut finder (once, sized for the largest chunk seen). */
  makeScanner: (windowSize: number) => CutScanner;
  fs: typeof nodeFs;
  /** Opens files under a root through directory handles (createUnderOpener). */
  makeOpener: (root: string) => UnderOpener;
}): SegmentSealer {
  const { codec, fs } = deps;
  const WINDOW = 8 * 1024 * 1024;
  let scanner: CutScanner | undefined;
  const changed = (message: string): Error => Object.assign(new Error(message), { code: "ECHANGED" });

  return {
    sealSegments(key, chunker, segments, spare, held) {
      const heldCount = held ? held.length >>> 5 : 0;
      const isHeld = (id: Buffer): boolean => {
        let lo = 0;
        let hi = heldCount - 1;
        while (lo <= hi) {
          const mid = (lo + hi) >>> 1;
          const order = id.compare(held!, 32 * mid, 32 * mid + 32);
          if (order === 0) return true;
          if (order < 0) hi = mid - 1;
          else lo = mid + 1;
        }
        return false;
      };
      let estimate = 0; // estimateSealedSize, inlined: this function runs from its source text
      for (const seg of segments) {
        const span = Math.min(seg.fileSize, seg.end + chunker.max) - seg.start;
        estimate += span + codec.overhead * (Math.ceil(span / chunker.min) + 1);
      }
      let out =
        spare && spare.byteLength >= estimate ? Buffer.from(spare) : Buffer.allocUnsafeSlow(Math.max(estimate, 1));
      let ids = Buffer.allocUnsafeSlow(32 * 64);
      let pos = 0;
      let count = 0;
      const meta: number[] = [];
      const errors: SealedSegments["errors"] = [];
      let bytesRead = 0;
      if (!scanner || scanner.window.length < WINDOW + chunker.max) scanner = deps.makeScanner(WINDOW + chunker.max);
      const { window } = scanner;
      const flags = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;

      // Directory handles kept for this batch only: a later one walks the tree as it is then.
      const openers = new Map<string, UnderOpener>();
      const openSegment = (seg: FileSegment): number => {
        if (!seg.under) return fs.openSync(seg.path, flags);
        let opener = openers.get(seg.under.root);
        if (!opener) {
          opener = deps.makeOpener(seg.under.root);
          openers.set(seg.under.root, opener);
        }
        return opener.open(seg.under.path, flags);
      };

      try {
        for (let si = 0; si < segments.length; si++) {
          const seg = segments[si];
          const readEnd = Math.min(seg.fileSize, seg.end + chunker.max);
          let fd = -1;
          const mark = { pos, count, meta: meta.length };
          try {
            fd = openSegment(seg);
            const st = fs.fstatSync(fd, { bigint: true });
            if (!st.isFile()) throw changed("it is no longer a regular file");
            if (
              seg.ino !== undefined &&
              (st.ino !== seg.ino || (seg.dev !== undefined && Number(st.dev) !== seg.dev))
            ) {
              throw changed("it was replaced while the snapshot ran");
            }
            if (seg.sizeAsListed && st.size !== BigInt(seg.fileSize))
              throw changed("its size changed since it was listed");
            const times = seg.listedTimes;
            const written = (now: typeof st): boolean =>
              times !== undefined &&
              (now.mtimeNs !== times.mtimeNs || now.ctimeNs !== times.ctimeNs) &&
              !(seg.timesUnlessGrown && now.size > BigInt(seg.fileSize));
            if (written(st)) throw changed("it was written to since it was listed");
            if (seg.expectPath !== undefined) {
              let opened: string | undefined;
              try {
                opened = fs.readlinkSync(`/proc/self/fd/${fd}`);
              } catch {
                // No /proc here: not checked.
              }
              if (opened !== undefined && opened !== seg.expectPath) {
                const message = "a directory on its path was replaced while the snapshot ran (it leads elsewhere now)";
                throw Object.assign(new Error(message), { code: "EELSEWHERE" });
              }
            }
            // window holds file bytes [winStart, winEnd)
            let s = Math.max(0, seg.start - (seg.lookback ?? 0));
            let winStart = s;
            let winEnd = s;
            while (s < seg.end && s < seg.fileSize) {
              const need = Math.min(readEnd, s + chunker.max);
              if (need > winEnd) {
                // Slide: keep [s, winEnd), then fill the window as far as the segment needs.
                window.copy(window, 0, s - winStart, winEnd - winStart);
                winStart = s;
                const fillTo = Math.min(readEnd, winStart + window.length);
                while (winEnd < fillTo) {
                  const n = fs.readSync(fd, window, winEnd - winStart, fillTo - winEnd, winEnd);
                  if (n === 0) throw changed("it shrank while it was being read");
                  winEnd += n;
                  bytesRead += n;
                }
              }
              const e = scanner.findEnd(winStart, s, seg.fileSize, chunker);
              if (s < seg.start) {
                s = e; // still looking back: cut only
                continue;
              }
              const len = e - s;
              if (pos + len + codec.overhead > out.length) {
                const bigger = Buffer.allocUnsafeSlow(Math.max(out.length * 2, pos + len + codec.overhead));
                out.copy(bigger, 0, 0, pos);
                out = bigger;
              }
              if (32 * (count + 1) > ids.length) {
                const bigger = Buffer.allocUnsafeSlow(ids.length * 2);
                ids.copy(bigger, 0, 0, 32 * count);
                ids = bigger;
              }
              const blobStart = pos;
              const plain = window.subarray(s - winStart, e - winStart);
              pos = codec.sealChunkInto(key, plain, out, pos, ids, 32 * count, heldCount > 0 ? isHeld : undefined);
              meta.push(si, s, len, blobStart, pos - blobStart);
              count++;
              s = e;
            }
            if ((seg.sizeAsListed && readEnd === seg.fileSize) || times) {
              const after = fs.fstatSync(fd, { bigint: true });
              if (seg.sizeAsListed && readEnd === seg.fileSize && after.size !== st.size) {
                throw changed("its size changed while it was being read");
              }
              if (written(after)) throw changed("it was written to while it was being read");
            }
          } catch (err) {
            // A file that vanished, cannot be read or changed under us is left out (the caller says so);
            // anything else is a bug and fails the whole batch.
            const code = (err as { code?: unknown }).code;
            if (typeof code !== "string") throw err;
            pos = mark.pos;
            count = mark.count;
            meta.length = mark.meta;
            // Without the path a system error ends with: the entry's own path stands beside the reason, and
            // the one in the message is the name it was opened by through a directory's handle.
            const message = (err instanceof Error ? err.message : String(err)).replace(/, \w+ '.*'$/s, "");
            errors.push(
              code === "ECHANGED"
                ? { segment: si, message, changed: true }
                : code === "EELSEWHERE"
                  ? { segment: si, message, elsewhere: true }
                  : { segment: si, message },
            );
          } finally {
            if (fd >= 0) fs.closeSync(fd);
          }
        }
      } finally {
        for (const opener of openers.values()) opener.close();
      }
      return { out, ids: ids.subarray(0, 32 * count), chunks: Float64Array.from(meta), errors, bytesRead };
    },
  };
}
