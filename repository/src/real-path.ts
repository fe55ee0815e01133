// Paths compared as the filesystem sees them: two names for one directory (through a symlink) are one.
import { readlinkSync, realpathSync } from "node:fs";
import path from "node:path";

/** Links followed by hand before giving up on a chain (Linux's own limit for one lookup). */
const MAX_LINKS = 40;

/**
 * An absolute path with the symlinks of its longest existing part resolved, the rest (not made yet: a restore's
 * new target, a repository's first snapshot) appended as it is. A dangling symlink on the way is followed too: a
 * repository path linked to a directory on a disk that is not mounted is where the link says, not where the link is.
 */
export function realPath(abs: string): string {
  let pending = abs;
  for (let links = 0; ; links++) {
    const rest: string[] = [];
    let followed: string | undefined;
    for (let at = pending; ; at = path.dirname(at)) {
      try {
        return path.join(realpathSync.native(at), ...rest.reverse());
      } catch {
        if (path.dirname(at) === at) return pending;
        const link = links < MAX_LINKS ? linkTarget(at) : undefined;
        if (link !== undefined) {
          // A relative target is read from the link's directory as the kernel finds it (its links resolved):
          // "../x" from a directory reached through a link is not "../x" from the link's name.
          followed = path.resolve(realDirectory(path.dirname(at)), link, ...rest.reverse());
          break;
        }
        rest.push(path.basename(at));
      }
    }
    if (followed === undefined) return pending; // not reached: the loop above returns or follows a link
    pending = followed;
  }
}

/** `dir` with its links resolved, or as it is where it cannot be. */
function realDirectory(dir: string): string {
  try {
    return realpathSync.native(dir);
  } catch {
    return dir;
  }
}

/** What the symlink `at` points to, or undefined where `at` is no symlink (missing, or a plain file or directory). */
function linkTarget(at: string): string | undefined {
  try {
    return readlinkSync(at);
  } catch {
    return undefined;
  }
}

/** `inner` relative to `outer` ("/"-separated) when it lies strictly inside it, else undefined. */
export function pathInside(outer: string, inner: string): string | undefined {
  const rel = path.relative(outer, inner);
  if (rel === "" || rel === ".." || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) return undefined;
  return rel.split(path.sep).join("/");
}
