// Path patterns on the agent (their syntax and matching: @dumont/repository's path-patterns.ts):
// - what a snapshot leaves out: the workspace's `.dumontignore` and the patterns given for this snapshot. A
//   directory that matches is not listed at all: nothing under it is read, even if a later "!" pattern names
//   it (gitignore's rule too).
// (What --include selects is IncludedSelection's, applied by restore-snapshot.ts as it reads the manifest; the
// error of patterns that select nothing, nothingIncluded, is @dumont/repository's, shared with ls and the
// control plane.)
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { checkExcludePatterns, IGNORE_FILE, pathMatcher } from "@dumont/repository/path-patterns";

/** Larger is refused: a workspace's exclude file is a list of patterns, not data. */
export const MAX_IGNORE_FILE_BYTES = 1024 * 1024;

export interface Exclusions {
  /** Whether `rel` (relative to the root, `/`-separated) is left out; `dir` for directories (`name/` patterns). */
  excludes(rel: string, dir: boolean): boolean;
}

/**
 * The exclusions for snapshotting `root`: its .dumontignore (if there is one) and then `patterns` (checked; a
 * later pattern wins, so `--exclude '!keep.log'` can take back a line of the file). Undefined when there are
 * none. A .dumontignore that is not a regular file, is too large or cannot be read fails the snapshot: it is
 * never followed as a symlink, and guessing what the workspace meant to leave out is not ours to do.
 */
export async function loadExclusions(root: string, patterns: readonly string[] = []): Promise<Exclusions | undefined> {
  const given = checkExcludePatterns(patterns, "exclude");
  const fromFile = await readIgnoreFile(join(root, IGNORE_FILE));
  if (fromFile === undefined && given.length === 0) return undefined;
  return { excludes: pathMatcher(fromFile, given) };
}

async function readIgnoreFile(file: string): Promise<string | undefined> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined; // no file, or no directory (said later)
    if (code === "ELOOP") throw new Error(`${file} is a symlink: make it a regular file (it is never followed)`);
    throw new Error(`cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new Error(`${file} is not a regular file: make it a list of patterns, or remove it`);
    if (st.size > MAX_IGNORE_FILE_BYTES) {
      throw new Error(
        `${file} is ${st.size} bytes, over the ${MAX_IGNORE_FILE_BYTES} a list of exclude patterns may take`,
      );
    }
    const text = (await handle.readFile()).toString("utf8");
    if (text.includes("\0")) throw new Error(`${file} holds a NUL byte: it must be a text file of patterns`);
    return text;
  } finally {
    await handle.close();
  }
}
