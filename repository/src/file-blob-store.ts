// BlobStore on a local directory: temp file + fsync + rename + fsync of the directory, so a crash leaves
// either the whole object or nothing.
import { randomBytes } from "node:crypto";
import { constants, type Dirent } from "node:fs";
import { link, mkdir, open, readdir, rename, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { assertBlobKey, type BlobInfo, type BlobStore } from "./blob-store.js";
import { RepositoryError } from "./errors.js";

const TEMP_PREFIX = ".tmp-";

export class FileBlobStore implements BlobStore {
  readonly url: string;
  private readonly madeDirs = new Set<string>();

  constructor(readonly root: string) {
    this.url = pathToFileURL(root).href;
  }

  private path(key: string): string {
    assertBlobKey(key);
    return join(this.root, ...key.split("/"));
  }

  async put(key: string, data: Buffer | readonly Buffer[], options: { ifAbsent?: boolean } = {}): Promise<boolean> {
    const final = this.path(key);
    const dir = dirname(final);
    if (!this.madeDirs.has(dir)) {
      await mkdir(dir, { recursive: true });
      this.madeDirs.add(dir);
    }
    const temp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString("hex")}`);
    const parts = Buffer.isBuffer(data) ? [data] : data;
    const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
    try {
      let pending = parts.filter((part) => part.length > 0);
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
      await handle.close().catch(() => {});
      await unlink(temp).catch(() => {});
      throw err;
    }
    await handle.close();
    let written = true;
    try {
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
    if (written) await syncDirectory(dir);
    return written;
  }

  async get(key: string): Promise<Buffer> {
    const path = this.path(key);
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(path, constants.O_RDONLY);
    } catch (err) {
      throw notFound(this.url, key, err);
    }
    try {
      const { size } = await handle.stat();
      const buf = Buffer.allocUnsafeSlow(size);
      await readFully(handle, buf, 0, size, 0, this.url, key);
      return buf;
    } finally {
      await handle.close();
    }
  }

  async getRange(key: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const path = this.path(key);
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(path, constants.O_RDONLY);
    } catch (err) {
      throw notFound(this.url, key, err);
    }
    try {
      const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafeSlow(length);
      await readFully(handle, buf, 0, length, offset, this.url, key);
      return buf;
    } finally {
      await handle.close();
    }
  }

  async stat(key: string): Promise<BlobInfo | undefined> {
    try {
      const st = await stat(this.path(key));
      return { key, size: st.size, modified: st.mtime };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<BlobInfo> {
    const slash = prefix.lastIndexOf("/");
    const dirKey = slash < 0 ? "" : prefix.slice(0, slash);
    const start = dirKey === "" ? this.root : this.path(dirKey);
    const stack: [string, string][] = [[start, dirKey]];
    while (stack.length > 0) {
      const [dir, key] = stack.pop()!;
      let entries: Dirent[];
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ENOTDIR") {
          continue;
        }
        throw err;
      }
      for (const entry of entries) {
        if (entry.name.startsWith(TEMP_PREFIX)) continue;
        const childKey = key === "" ? entry.name : `${key}/${entry.name}`;
        const childPath = join(dir, entry.name);
        if (entry.isDirectory()) {
          if (childKey.startsWith(prefix) || prefix.startsWith(`${childKey}/`)) stack.push([childPath, childKey]);
        } else if (entry.isFile() && childKey.startsWith(prefix)) {
          try {
            const st = await stat(childPath);
            yield { key: childKey, size: st.size, modified: st.mtime };
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
          }
        }
      }
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await unlink(this.path(key));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }

  async close(): Promise<void> {}
}

async function readFully(
  handle: Awaited<ReturnType<typeof open>>,
  buf: Buffer,
  at: number,
  length: number,
  position: number,
  url: string,
  key: string,
): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buf, at + done, length - done, position + done);
    if (bytesRead === 0) {
      throw new RepositoryError(
        "corrupt",
        `${url}/${key} is shorter than expected (wanted ${length} bytes at offset ${position}, got ${done})`,
      );
    }
    done += bytesRead;
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function notFound(url: string, key: string, err: unknown): Error {
  if ((err as NodeJS.ErrnoException).code === "ENOENT") {
    return new RepositoryError("not-found", `${url}/${key} does not exist`, { cause: err });
  }
  return err as Error;
}
