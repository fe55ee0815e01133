// Paths compared as the filesystem sees them: two names for one directory (through a symlink) are one.
import { realpathSync } from "node:fs";
import path from "node:path";

/**
 * An absolute path with the symlinks of its longest existing part resolved, the rest (not made yet: a restore's
 * new target, a repository's first snapshot) appended as it is.
 */
export function realPath(abs: string): string {
  const rest: string[] = [];
  for (let at = abs; ; at = path.dirname(at)) {
    try {
      return path.join(realpathSync.native(at), ...rest.reverse());
    } catch {
      if (path.dirname(at) === at) return abs;
      rest.push(path.basename(at));
    }
  }
}

/** `inner` relative to `outer` ("/"-separated) when it lies strictly inside it, else undefined. */
export function pathInside(outer: string, inner: string): string | undefined {
  const rel = path.relative(outer, inner);
  if (rel === "" || rel === ".." || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) return undefined;
  return rel.split(path.sep).join("/");
}
