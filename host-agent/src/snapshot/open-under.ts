// Opens the files of a listed source tree one directory at a time, each through its parent's handle
// (/proc/self/fd/N/name) with O_NOFOLLOW: never through a symlink, wherever on the path one was put after the
// listing (O_NOFOLLOW on a whole path guards only its last name: a tenant swapping a directory of its workspace
// for a link to /dev had the agent, as root, open a device there), and never by a path longer than PATH_MAX (the
// listing walks a deeper tree through handles too). Self-contained: worker threads run it from its source text.
import type * as nodeFs from "node:fs";

export interface UnderOpener {
  /**
   * Opens `path` (as listed: relative to the root, `/`-separated, no `.` or `..`) with `flags`, which should hold
   * O_NOFOLLOW; returns the descriptor. A directory on the path that is no longer one (a symlink put there) fails
   * with the code EELSEWHERE. Without /proc (not Linux) the path is opened whole.
   */
  open(path: string, flags: number): number;
  /**
   * What `open` opens `path` by, its directories walked: `/proc/self/fd/<dir>/<name>` (valid until `close`), or
   * the whole path without /proc. For a caller that opens it itself (asynchronously).
   */
  locate(path: string): string;
  /** Closes the directory handles it keeps. */
  close(): void;
}

/** An UnderOpener for the tree at `root` (absolute; followed if it is a symlink, as the listing follows it). */
export function createUnderOpener(fs: typeof nodeFs, root: string): UnderOpener {
  const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW } = fs.constants;
  /** Directories kept open, by path ("" the root); the least recently opened go past MAX_DIRS. */
  const dirs = new Map<string, number>();
  const MAX_DIRS = 64;
  const throughHandles = fs.existsSync("/proc/self/fd");

  const elsewhere = (err: unknown): Error => {
    const code = (err as { code?: unknown }).code;
    if (code !== "ELOOP" && code !== "ENOTDIR") return err as Error;
    const message = "a directory on its path was replaced while the snapshot ran (it leads elsewhere now)";
    return Object.assign(new Error(message), { code: "EELSEWHERE" });
  };

  const keep = (dir: string, fd: number): number => {
    if (dirs.size >= MAX_DIRS) {
      const [oldest, old] = dirs.entries().next().value as [string, number];
      dirs.delete(oldest);
      fs.closeSync(old);
    }
    dirs.set(dir, fd);
    return fd;
  };

  const dirFd = (dir: string): number => {
    const held = dirs.get(dir);
    if (held !== undefined) return held;
    if (dir === "") return keep(dir, fs.openSync(root, O_RDONLY | O_DIRECTORY));
    const slash = dir.lastIndexOf("/");
    const parent = dirFd(slash < 0 ? "" : dir.slice(0, slash));
    try {
      return keep(
        dir,
        fs.openSync(`/proc/self/fd/${parent}/${dir.slice(slash + 1)}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW),
      );
    } catch (err) {
      throw elsewhere(err);
    }
  };

  const locate = (path: string): string => {
    if (!throughHandles) return root.endsWith("/") ? `${root}${path}` : `${root}/${path}`;
    const slash = path.lastIndexOf("/");
    const parent = dirFd(slash < 0 ? "" : path.slice(0, slash));
    return `/proc/self/fd/${parent}/${path.slice(slash + 1)}`;
  };

  return {
    open: (path, flags) => fs.openSync(locate(path), flags),
    locate,
    close() {
      for (const fd of dirs.values()) {
        try {
          fs.closeSync(fd);
        } catch {
          // closed already: nothing held
        }
      }
      dirs.clear();
    },
  };
}
