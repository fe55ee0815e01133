// BlobStore on a local directory: temp file + fsync + rename + fsync of the directory, so a crash leaves
// either the whole object or nothing. Large objects (packs) are written with O_DIRECT where the filesystem
// allows it: a pack is written once and read rarely, so copying it through the page cache only costs CPU
// (measured on the dev VM: 0.15 s of system time per 800 MiB direct, 0.3 to 1.3 s buffered) and evicts the
// workload's own cached files. Ranged reads into page-aligned memory skip the cache the same way (getRange).
import { randomBytes } from "node:crypto";
import { constants, type Dirent, statSync } from "node:fs";
import { link, mkdir, open, readdir, realpath, rename, stat, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { alignedBuffer, isPageAligned, PAGE } from "./aligned-memory.js";
import { discardTemp, syncDirectory } from "./atomic-file.js";
import {
  assertBlobKey,
  assertNotGivenUp,
  type BlobCallOptions,
  type BlobInfo,
  type BlobStore,
  type BlobWriter,
  type GetOptions,
  objectTooLarge,
} from "./blob-store.js";
import { RepositoryError, writeFailure } from "./errors.js";

const TEMP_PREFIX = ".tmp-";
/** Objects at least this large are written with O_DIRECT (when the platform and filesystem allow it). */
const DIRECT_MIN = 1024 * 1024;
const STAGE_BYTES = 4 * 1024 * 1024;
/**
 * Stages kept for reuse: two for each of a writer's packs in flight (one filling, three finishing). Kept for the
 * whole process, not per store: the control plane keeps a store per tenant, and stages held by each pinned the
 * page-aligned memory the process may have (alignedMemory's cap) after ~24 tenants, turning O_DIRECT off for every
 * tenant from then on.
 */
const MAX_IDLE_STAGES = 8;
const idleStages: Buffer[] = [];
const DIRECT = constants.O_DIRECT ?? 0;

type FileHandle = Awaited<ReturnType<typeof open>>;

export class FileBlobStore implements BlobStore {
  readonly url: string;
  /** Object directories made durable by this process (or being made so: every put into one waits for it). */
  private readonly madeDirs = new Map<string, Promise<void>>();
  /** Directories whose entries in their parents this process has made durable. */
  private readonly durableDirs = new Set<string>();
  /** False once the filesystem refused O_DIRECT; every write is buffered from then on. */
  private direct = constants.O_DIRECT !== undefined && process.platform === "linux";
  /** False once the filesystem refused an O_DIRECT read; ranged reads are buffered from then on. */
  private directReads = this.direct;
  /**
   * What this store found at its root the first time a call reached it (noteRoot): that it was there, and whether
   * it held a repository's `config`. From then on a root that is gone, or that holds no config where it held one
   * (an empty mount point: its filesystem unmounted), fails every call as `unavailable` (rootGone). Taken for
   * missing objects, it had restores call every chunk damaged, check every pack missing, a control plane drop
   * its cached index, and the next write make a new, empty repository on the disk below the mount point. A mount
   * that comes back is found again as it was.
   */
  private seen: { config: boolean } | undefined;
  private noting: Promise<void> | undefined;

  constructor(readonly root: string) {
    this.url = pathToFileURL(root).href;
  }

  private path(key: string): string {
    assertBlobKey(key);
    return join(this.root, ...key.split("/"));
  }

  /** The object's path and a temp file beside it, its directory made. */
  private async placeFor(key: string): Promise<{ final: string; temp: string }> {
    const final = this.path(key);
    const dir = dirname(final);
    let made = this.madeDirs.get(dir);
    if (!made) {
      made = this.makeDurable(dir);
      this.madeDirs.set(dir, made);
      const settled = made;
      settled.catch(() => {
        if (this.madeDirs.get(dir) === settled) this.madeDirs.delete(dir); // the next put tries again
      });
    }
    await made;
    return { final, temp: join(dir, `${TEMP_PREFIX}${randomBytes(8).toString("hex")}`) };
  }

  /**
   * Makes `dir` and each directory above it up to the root, and each one's entry in its parent durable, as an
   * object's is in its directory: a crash could otherwise take a new data/xx/ away with the packs renamed into
   * it. Whether this call made them or not: a put racing the one that made it returned before its sync, and an
   * earlier process killed before its sync left one that is not durable yet.
   */
  private async makeDurable(dir: string): Promise<void> {
    // A root seen before and gone now is not made again (see `seen`); a new repository's first write makes it.
    await this.assertRootThere();
    const made = await mkdir(dir, { recursive: true });
    const first = made === undefined ? undefined : resolve(made);
    const top = resolve(this.root);
    // Each entry once a process: data/'s in the root is durable for every data/xx after the first.
    for (let d = resolve(dir); d !== top && dirname(d) !== d && !this.durableDirs.has(d); d = dirname(d)) {
      await syncDirectory(dirname(d));
      this.durableDirs.add(d);
    }
    // The root itself, and what above it this mkdir made (a new repository's first write): their entries too,
    // or a power loss could take the whole repository away.
    if (first !== undefined && (first === top || top.startsWith(`${first}/`))) {
      for (let d = top; dirname(d) !== d; d = dirname(d)) {
        await syncDirectory(dirname(d));
        if (d === first) break;
      }
    }
  }

  async put(
    key: string,
    data: Buffer | readonly Buffer[],
    options: { ifAbsent?: boolean } & BlobCallOptions = {},
  ): Promise<boolean> {
    try {
      const written = await this.putOnce(key, data, options);
      await this.noteRoot();
      // The config just written (a repository made in a directory already there, noted before without one): from
      // now on its going is the root's going (an unmount), as for a store that found it at its first call.
      if (key === "config") this.seen = { config: true };
      return written;
    } catch (err) {
      throw await this.writeFailure(key, err);
    }
  }

  /** The error for a failed write of `key`: rootGone's where the root went, else writeFailure's. */
  private async writeFailure(key: string, err: unknown): Promise<unknown> {
    const gone = (err as NodeJS.ErrnoException).code === "ENOENT" ? await this.rootGone() : undefined;
    return gone ?? writeFailure(this.url, key, err);
  }

  /** Notes what is at the root (see `seen`), the first time a call finds it there. */
  private async noteRoot(): Promise<void> {
    if (this.seen) return;
    this.noting ??= stat(join(this.root, "config")).then(
      () => {
        this.seen = { config: true };
      },
      () => {
        this.seen = { config: false };
      },
    );
    await this.noting;
  }

  /** Throws rootGone's error, if any. */
  private async assertRootThere(): Promise<void> {
    const gone = await this.rootGone();
    if (gone) throw gone;
  }

  /**
   * An `unavailable` error when the root seen before is gone, or holds no config where it held one; else
   * undefined. Asked once a call has met an absence (ENOENT), and before a directory is made (once each): two
   * stats then, none on the way of reads and writes that succeed.
   */
  private async rootGone(): Promise<RepositoryError | undefined> {
    if (!this.seen) return undefined;
    // Async: on a mount that stopped answering a stat never returns, and a sync one would stop the whole process.
    const there = (path: string) =>
      stat(path).then(
        () => true,
        (err: NodeJS.ErrnoException) => err.code !== "ENOENT", // another error: said by the call's own
      );
    const why = !(await there(this.root))
      ? "is gone: its filesystem unmounted, or the directory moved or removed"
      : this.seen.config && !(await there(join(this.root, "config")))
        ? "no longer holds the repository (its config is gone): an empty mount point, its filesystem unmounted, " +
          "or another directory put in its place"
        : undefined;
    if (why === undefined) return undefined;
    return new RepositoryError(
      "unavailable",
      `the repository's directory ${this.root} (${this.url}) ${why}. Nothing was read or written in its place; ` +
        "mount it or put it back, and try again",
    );
  }

  /** Whether `err`, from a call on a path under the root, says the object is not there (isAbsent), its root there. */
  private async absent(err: unknown): Promise<boolean> {
    if (!isAbsent(err, this.root)) return false;
    await this.assertRootThere();
    return true;
  }

  /** `err` from opening object `key` to read: not-found where it is absent (notFound), its root there. */
  private async notFound(key: string, err: unknown): Promise<Error> {
    if (await this.absent(err)) {
      return new RepositoryError("not-found", `${this.url}/${key} does not exist`, { cause: err });
    }
    return notADirectory(this.url, err);
  }

  private async putOnce(
    key: string,
    data: Buffer | readonly Buffer[],
    options: { ifAbsent?: boolean } & BlobCallOptions,
  ): Promise<boolean> {
    assertNotGivenUp(options.signal, this.url, key, "writing");
    const { final, temp } = await this.placeFor(key);
    const parts = (Buffer.isBuffer(data) ? [data] : data).filter((part) => part.length > 0);
    const size = parts.reduce((n, part) => n + part.length, 0);
    if (!(this.direct && size >= DIRECT_MIN && (await this.writeDirect(temp, parts, size)))) {
      await writeBuffered(temp, parts);
    }
    let written = true;
    try {
      // A write given up on while it waited on the disk (a mount that stopped answering) is not made visible.
      assertNotGivenUp(options.signal, this.url, key, "writing");
      if (options.ifAbsent) {
        try {
          await link(temp, final);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
          written = false;
        }
        await unlink(temp);
      } else {
        await rename(temp, final);
      }
    } catch (err) {
      await unlink(temp).catch(() => {});
      throw err;
    }
    if (written) await syncDirectory(dirname(final));
    return written;
  }

  /**
   * Writes the object through two 4 MiB page-aligned stages (one filling while the other is written), with
   * O_DIRECT where the filesystem allows it, so a writer of 32 MiB packs needs 8 MiB of memory per pack
   * rather than the pack. `commit` fsyncs the temp file, renames it into place and fsyncs the directory.
   */
  async openWriter(key: string, options: BlobCallOptions = {}): Promise<BlobWriter> {
    try {
      assertNotGivenUp(options.signal, this.url, key, "opening to write");
      return await this.openWriterOnce(key, options.signal);
    } catch (err) {
      throw await this.writeFailure(key, err);
    }
  }

  private async openWriterOnce(key: string, signal: AbortSignal | undefined): Promise<BlobWriter> {
    const { final, temp } = await this.placeFor(key);
    const stages = [this.takeStage(), this.takeStage()];
    // Stages are ordinary memory only when no more page-aligned memory could be had: buffered, this once.
    const direct = this.direct && stages.every(isPageAligned);
    let handle: FileHandle;
    try {
      handle = await open(
        temp,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | (direct ? DIRECT : 0),
        0o644,
      );
    } catch (err) {
      if (!direct || (err as NodeJS.ErrnoException).code !== "EINVAL") {
        for (const stage of stages) this.keepStage(stage);
        throw err;
      }
      this.direct = false;
      handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
    }
    return new StagedFileWriter(handle, temp, final, stages, {
      giveBack: (stage) => {
        this.keepStage(stage);
      },
      // As in writeDirect: once the filesystem refuses a direct write, later writes do not try again.
      directRefused: () => {
        this.direct = false;
      },
      writeFailure: (err) => this.writeFailure(key, err),
      assertNotGivenUp: () => assertNotGivenUp(signal, this.url, key, "writing"),
    });
  }

  allocate(size: number): Buffer {
    return alignedBuffer(size);
  }

  /** A 4 MiB stage: an idle one, or new. */
  private takeStage(): Buffer {
    return idleStages.pop() ?? alignedBuffer(STAGE_BYTES);
  }

  /** Keeps a stage for reuse, unless enough wait already or it is ordinary memory (see alignedMemory's cap). */
  private keepStage(stage: Buffer): void {
    if (idleStages.length < MAX_IDLE_STAGES && isPageAligned(stage)) idleStages.push(stage);
  }

  /**
   * Writes `parts` to a new file `temp` with O_DIRECT, staged through page-aligned memory, and fsyncs it.
   * Returns false, leaving no file behind, when the filesystem refuses O_DIRECT (the caller writes buffered).
   */
  private async writeDirect(temp: string, parts: readonly Buffer[], size: number): Promise<boolean> {
    const stage = this.takeStage();
    // Ordinary memory only when no more page-aligned memory could be had: buffered, this once.
    if (!isPageAligned(stage)) return false;
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT, 0o644);
    } catch (err) {
      this.keepStage(stage);
      if ((err as NodeJS.ErrnoException).code !== "EINVAL") throw err;
      this.direct = false;
      return false;
    }
    try {
      let filled = 0;
      let position = 0;
      const flush = async (): Promise<void> => {
        // The last piece is padded to the alignment; the file is cut back to its true size after.
        const length = Math.ceil(filled / PAGE) * PAGE;
        stage.fill(0, filled, length);
        await writeFully(handle, stage, length, position);
        position += filled;
        filled = 0;
      };
      let rest = parts;
      // A first part in memory from `allocate` goes to disk as it is, up to its last whole block.
      const first = parts[0];
      if (isPageAligned(first)) {
        const whole = first.length - (first.length % PAGE);
        await writeFully(handle, first, whole, 0);
        position = whole;
        rest = [first.subarray(whole), ...parts.slice(1)];
      }
      for (const part of rest) {
        for (let at = 0; at < part.length; ) {
          const n = part.copy(stage, filled, at, Math.min(part.length, at + STAGE_BYTES - filled));
          filled += n;
          at += n;
          if (filled === STAGE_BYTES) await flush();
        }
      }
      if (filled > 0) await flush();
      if (size % PAGE !== 0) await handle.truncate(size); // drop the padding of the last block
      await handle.sync();
    } catch (err) {
      await discardTemp(handle, temp);
      if ((err as NodeJS.ErrnoException).code !== "EINVAL") throw err;
      // The filesystem opened the file but refuses direct writes at this alignment.
      this.direct = false;
      return false;
    } finally {
      this.keepStage(stage);
    }
    await handle.close();
    return true;
  }

  async get(key: string, options: GetOptions = {}): Promise<Buffer> {
    const path = this.path(key);
    assertNotGivenUp(options.signal, this.url, key, "reading");
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(path, constants.O_RDONLY);
    } catch (err) {
      throw await this.notFound(key, err);
    }
    await this.noteRoot();
    try {
      const { size } = await handle.stat();
      if (options.maxBytes !== undefined && size > options.maxBytes) {
        throw objectTooLarge(this.url, key, size, options.maxBytes);
      }
      const buf = Buffer.allocUnsafeSlow(size);
      await readFully(handle, buf, 0, size, 0, this.url, key);
      return buf;
    } finally {
      await handle.close();
    }
  }

  /**
   * Into page-aligned memory (see aligned-memory.ts) with room for the range widened to whole pages, the read
   * goes around the page cache with O_DIRECT: pack bytes are read once per restore or check, so copying them
   * out of the cache costs CPU (0.45 s per 800 MB on the dev VM) and evicts the host's own cached files. The
   * result is then a view into `into` at the range's offset within its first page.
   */
  async getRange(
    key: string,
    offset: number,
    length: number,
    into?: Buffer,
    options: BlobCallOptions = {},
  ): Promise<Buffer> {
    const path = this.path(key);
    assertNotGivenUp(options.signal, this.url, key, "reading");
    if (into && this.directReads && isPageAligned(into)) {
      const start = offset - (offset % PAGE);
      const span = Math.ceil((offset + length) / PAGE) * PAGE - start;
      if (into.length >= span) {
        const handle = await this.openDirect(path, key);
        if (handle) {
          await this.noteRoot();
          try {
            await readFully(handle, into, 0, offset + length - start, start, this.url, key, span);
            return into.subarray(offset - start, offset - start + length);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== "EINVAL") throw err;
            this.directReads = false; // opened with O_DIRECT, but direct reads refused: buffered from now on
          } finally {
            await handle.close();
          }
        }
      }
    }
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(path, constants.O_RDONLY);
    } catch (err) {
      throw await this.notFound(key, err);
    }
    await this.noteRoot();
    try {
      const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafeSlow(length);
      await readFully(handle, buf, 0, length, offset, this.url, key);
      return buf;
    } finally {
      await handle.close();
    }
  }

  /** The object opened for O_DIRECT reads, or undefined (and no more tries) where the filesystem refuses. */
  private async openDirect(path: string, key: string): Promise<FileHandle | undefined> {
    try {
      return await open(path, constants.O_RDONLY | DIRECT);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EINVAL") throw await this.notFound(key, err);
      this.directReads = false;
      return undefined;
    }
  }

  async stat(key: string, options: BlobCallOptions = {}): Promise<BlobInfo | undefined> {
    assertNotGivenUp(options.signal, this.url, key, "looking up");
    try {
      const st = await stat(this.path(key));
      await this.noteRoot();
      return { key, size: st.size, modified: st.mtime };
    } catch (err) {
      if (await this.absent(err)) return undefined;
      throw notADirectory(this.url, err);
    }
  }

  async *list(prefix: string, options: BlobCallOptions = {}): AsyncIterable<BlobInfo> {
    for await (const entry of this.walk(prefix, options.signal)) {
      if (entry.kind !== "file" || entry.name.startsWith(TEMP_PREFIX) || !entry.key.startsWith(prefix)) continue;
      try {
        const st = await stat(entry.path);
        yield { key: entry.key, size: st.size, modified: st.mtime };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        await this.assertRootThere(); // removed meanwhile, unless the whole repository went: not a short listing
      }
    }
  }

  async removeAbandoned(
    prefix: string,
    options: { olderThanMs?: number } = {},
  ): Promise<{ count: number; bytes: number }> {
    const before = Date.now() - (options.olderThanMs ?? 0);
    const removed = { count: 0, bytes: 0 };
    for await (const entry of this.walk(prefix === "" || prefix.endsWith("/") ? prefix : `${prefix}/`)) {
      // A temp file itself, never one a symlink leads to (the link is not ours to judge).
      if (!entry.name.startsWith(TEMP_PREFIX) || !entry.dirent.isFile()) continue;
      try {
        const { size, mtimeMs } = await stat(entry.path);
        if (mtimeMs > before) continue;
        await unlink(entry.path);
        removed.count++;
        removed.bytes += size;
      } catch (err) {
        // Renamed into place or removed meanwhile: not abandoned after all, or gone already.
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    }
    return removed;
  }

  /**
   * Every entry of the directories that keys starting with `prefix` can lie in, with its key and what it is:
   * the listing's walk, and the temp-file sweep's (so a sweep reaches every directory the listing does). A
   * symlink counts as what it leads to, as reads and writes through it find it (an operator may put data/ab on
   * another disk): walked past, the packs written through it were taken for missing, and their abandoned temp
   * files never swept. Temp entries are yielded, never walked into.
   */
  private async *walk(
    prefix: string,
    signal?: AbortSignal,
  ): AsyncIterable<{ name: string; path: string; key: string; kind?: "dir" | "file"; dirent: Dirent }> {
    const slash = prefix.lastIndexOf("/");
    const dirKey = slash < 0 ? "" : prefix.slice(0, slash);
    const start = dirKey === "" ? this.root : this.path(dirKey);
    const stack: [string, string][] = [[start, dirKey]];
    let rootReal: string | undefined;
    /** Real paths of the directories reached through symlinks so far. */
    const followed = new Set<string>();
    while (stack.length > 0) {
      const [dir, key] = stack.pop()!;
      assertNotGivenUp(signal, this.url, prefix, "listing");
      let entries: Dirent[];
      try {
        entries = await readdir(dir, { withFileTypes: true });
        await this.noteRoot();
      } catch (err) {
        // Nothing there (see isAbsent); a root that is itself a file is said, not listed as empty, and one seen
        // before and gone now fails (assertRootThere).
        if (await this.absent(err)) continue;
        throw notADirectory(this.url, err);
      }
      // Where each link here leads, and which directories two of them lead to (neither is followed, below).
      const { realOf, twice } = await linkTargets(dir, entries);
      for (const entry of entries) {
        const childKey = key === "" ? entry.name : `${key}/${entry.name}`;
        const childPath = join(dir, entry.name);
        let kind: "dir" | "file" | undefined = entry.isDirectory() ? "dir" : entry.isFile() ? "file" : undefined;
        const temp = entry.name.startsWith(TEMP_PREFIX);
        if (entry.isSymbolicLink() && !temp) {
          const target = await stat(childPath).catch(() => undefined);
          if (target?.isFile()) kind = "file";
          else if (target?.isDirectory()) {
            rootReal ??= await realpath(this.root);
            const real = realOf.get(entry.name) ?? rootReal;
            // Not into the store, not above it (a link to /mnt: the walk would come back in under longer keys),
            // and not to a directory another link leads to: its objects would be listed under two keys, and a
            // prune deleting one as garbage would delete the other's. Left out, they show as missing (check says
            // so), which deletes nothing.
            const inside = real === rootReal || real.startsWith(`${rootReal}/`) || rootReal.startsWith(`${real}/`);
            if (!inside && !twice.has(real) && !followed.has(real)) {
              followed.add(real);
              kind = "dir";
            }
          }
        }
        yield { name: entry.name, path: childPath, key: childKey, kind, dirent: entry };
        const under = childKey.startsWith(prefix) || prefix.startsWith(`${childKey}/`);
        if (kind === "dir" && under && !temp) stack.push([childPath, childKey]);
      }
    }
  }

  async delete(key: string, options: BlobCallOptions = {}): Promise<void> {
    const path = this.path(key);
    assertNotGivenUp(options.signal, this.url, key, "deleting");
    try {
      await unlink(path);
      await this.noteRoot();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw writeFailure(this.url, key, err);
      await this.assertRootThere(); // a delete of what is gone is done, unless the whole repository went
    }
  }

  /** A rename or unlink is durable once its directory is fsynced: each directory of `keys`, once. */
  async syncEntries(keys: readonly string[]): Promise<void> {
    for (const dir of new Set(keys.map((key) => dirname(this.path(key))))) {
      try {
        await syncDirectory(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        // The directory itself gone: nothing of it left to make durable, unless the whole repository went.
        await this.assertRootThere();
      }
    }
  }

  async close(): Promise<void> {}
}

/** See FileBlobStore.openWriter. */
class StagedFileWriter implements BlobWriter {
  private stage: Buffer;
  private spare: Buffer;
  private filled = 0;
  /** Bytes handed to disk writes so far (their padding not counted). */
  private written = 0;
  /** The disk write of the other stage, if one is running; it records its failure in `failure`. */
  private inFlight: Promise<void> = Promise.resolve();
  private failure: Error | undefined;
  private done = false;
  private released = false;

  constructor(
    private handle: FileHandle,
    private readonly temp: string,
    private readonly final: string,
    stages: Buffer[],
    private readonly store: {
      giveBack(stage: Buffer): void;
      directRefused(): void;
      /** The error to throw for a failed write (writeFailure: a full disk says so). */
      writeFailure(err: unknown): Promise<unknown>;
      /** Throws if the writer's caller gave up on it (its commit then leaves nothing). */
      assertNotGivenUp(): void;
    },
  ) {
    [this.stage, this.spare] = stages;
  }

  async write(data: Buffer): Promise<void> {
    try {
      this.assertOpen();
      for (let at = 0; at < data.length; ) {
        const n = Math.min(data.length - at, STAGE_BYTES - this.filled);
        this.stage.fill(data.subarray(at, at + n), this.filled, this.filled + n); // one memcpy (see copy-bytes.ts)
        this.filled += n;
        at += n;
        if (this.filled === STAGE_BYTES) await this.flushStage();
      }
    } catch (err) {
      throw await this.store.writeFailure(err);
    }
  }

  async commit(): Promise<void> {
    try {
      this.assertOpen();
      this.done = true;
      await this.finish();
    } catch (err) {
      throw await this.store.writeFailure(err);
    }
  }

  private async finish(): Promise<void> {
    try {
      if (this.filled > 0) await this.flushStage();
      await this.inFlight;
      // Every byte is with the kernel: the stages go back before the fsync, for the next pack's writer to take
      // rather than fresh memory while this one waits on the disk.
      this.release();
      if (this.failure) throw this.failure;
      if (this.written % PAGE !== 0) await this.handle.truncate(this.written); // the last block's padding
      await this.handle.sync();
      await this.handle.close();
      // Given up on while it waited on the disk (a mount that stopped answering): not made visible.
      this.store.assertNotGivenUp();
      await rename(this.temp, this.final);
    } catch (err) {
      await discardTemp(this.handle, this.temp);
      throw err;
    } finally {
      this.release();
    }
    await syncDirectory(dirname(this.final));
  }

  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    await this.inFlight;
    await discardTemp(this.handle, this.temp);
    this.release();
  }

  /** Starts writing the filled stage (padded to the alignment: the file is cut back at commit) and swaps. */
  private async flushStage(): Promise<void> {
    await this.inFlight;
    if (this.failure) throw this.failure;
    const stage = this.stage;
    const length = Math.ceil(this.filled / PAGE) * PAGE;
    stage.fill(0, this.filled, length);
    const position = this.written;
    this.written += this.filled;
    this.inFlight = this.writeAt(stage, length, position).catch((err: Error) => {
      this.failure ??= err;
    });
    this.stage = this.spare;
    this.spare = stage;
    this.filled = 0;
  }

  private async writeAt(buf: Buffer, length: number, position: number): Promise<void> {
    try {
      await writeFully(this.handle, buf, length, position);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EINVAL") throw err;
      // The filesystem opened the file with O_DIRECT but refuses direct writes: go on without it. The bytes
      // already written stay; rewriting this piece in full is harmless.
      this.store.directRefused();
      const buffered = await open(this.temp, constants.O_WRONLY);
      await this.handle.close();
      this.handle = buffered;
      await writeFully(this.handle, buf, length, position);
    }
  }

  /** Gives the stages back to the store, once. */
  private release(): void {
    if (this.released) return;
    this.released = true;
    this.store.giveBack(this.stage);
    this.store.giveBack(this.spare);
  }

  private assertOpen(): void {
    if (this.done) throw new RepositoryError("invalid-argument", `${this.final} was already committed or aborted`);
    if (this.failure) throw this.failure;
  }
}

/** Writes `length` bytes of `buf` at `position`, however many calls the kernel takes. */
async function writeFully(handle: FileHandle, buf: Buffer, length: number, position: number): Promise<void> {
  for (let done = 0; done < length; )
    done += (await handle.write(buf, done, length - done, position + done)).bytesWritten;
}

/** Writes `parts` to a new file and fsyncs it; the file is removed if that fails. */
async function writeBuffered(temp: string, parts: readonly Buffer[]): Promise<void> {
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    let pending = [...parts];
    while (pending.length > 0) {
      // writev may write less than asked; resume from where it stopped.
      const { bytesWritten } = await handle.writev(pending.slice(0, 1024));
      let left = bytesWritten;
      const rest: Buffer[] = [];
      for (const part of pending) {
        if (left >= part.length) left -= part.length;
        else {
          rest.push(left > 0 ? part.subarray(left) : part);
          left = 0;
        }
      }
      pending = rest;
    }
    await handle.sync();
  } catch (err) {
    await discardTemp(handle, temp);
    throw err;
  }
  await handle.close();
}

/**
 * Reads `length` bytes at `position` into buf[at...]. With `request` (O_DIRECT: whole pages), each read asks
 * for the rest of `request` bytes; a short read then only means the end of the file.
 */
async function readFully(
  handle: Awaited<ReturnType<typeof open>>,
  buf: Buffer,
  at: number,
  length: number,
  position: number,
  url: string,
  key: string,
  request = length,
): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buf, at + done, request - done, position + done);
    if (bytesRead === 0) {
      throw new RepositoryError(
        "corrupt",
        `${url}/${key} is shorter than expected (wanted ${length} bytes at offset ${position}, got ${done})`,
      );
    }
    done += bytesRead;
  }
}

/**
 * The real path each symlink among `entries` (of `dir`) leads to (by name; none where it leads nowhere), and the
 * real paths more than one of them leads to.
 */
async function linkTargets(
  dir: string,
  entries: Dirent[],
): Promise<{ realOf: Map<string, string>; twice: Set<string> }> {
  const realOf = new Map<string, string>();
  const twice = new Set<string>();
  const seen = new Set<string>();
  for (const entry of entries) {
    if (!entry.isSymbolicLink()) continue;
    const real = await realpath(join(dir, entry.name)).catch(() => undefined);
    if (real === undefined) continue;
    realOf.set(entry.name, real);
    if (seen.has(real)) twice.add(real);
    seen.add(real);
  }
  return { realOf, twice };
}

/**
 * Whether `err`, from a call on a path under `root`, says the object is not there: ENOENT, or ENOTDIR under a root
 * that is a directory (a stray file stands where a directory on the key's path would be, `data/ab` a file). An
 * ENOTDIR with the root itself a file is the repository named wrong (notADirectory).
 */
function isAbsent(err: unknown, root: string): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return true;
  if (code !== "ENOTDIR") return false;
  try {
    return statSync(root).isDirectory();
  } catch {
    return false;
  }
}

/** ENOTDIR reading `url`'s objects (the repository's path names a file) as an error saying so; else `err`. */
function notADirectory(url: string, err: unknown): Error {
  if ((err as NodeJS.ErrnoException).code !== "ENOTDIR") return err as Error;
  return new RepositoryError(
    "invalid-argument",
    `${url} is a file, or lies under one: a file:// repository is a directory; give one, or a path that does ` +
      "not exist yet to make a repository there",
    { cause: err },
  );
}
