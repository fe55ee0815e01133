// Path patterns, in gitignore's syntax, matched against paths relative to a snapshot's directory:
// - exclude patterns, what a snapshot leaves out on purpose. Two sources: the workspace's own `.dumontignore`,
//   at the root of the snapshotted directory, read by the agent at every snapshot (so it travels with the
//   workspace and applies to every snapshot of it), and patterns given for one snapshot (`--exclude`,
//   TakeSnapshot.exclude);
// - include patterns, what a restore writes when only part of a snapshot is wanted (`--include`,
//   Restore.include).
// Patterns given on a command line or in a request are checked here wherever they enter: the CLIs, the control
// plane's API and the agent. They are matched as `git` applies a .gitignore at the root of the snapshot's
// directory, by "ignore" (the matcher eslint and prettier use), with case-sensitive names as on Linux; the agent
// reads a workspace's .dumontignore in host-agent/src/snapshot/path-matcher.ts.
import ignore from "ignore";
import type { ManifestEntry } from "./manifest.js";

/** The workspace's own exclude file, at the root of the snapshotted directory. */
export const IGNORE_FILE = ".dumontignore";
/** Patterns one request may carry (a .dumontignore has no such limit, only a size). */
export const MAX_PATH_PATTERNS = 256;
export const MAX_PATH_PATTERN_LENGTH = 1024;

/** Exclude patterns for one snapshot, checked (see checkPathPatterns). */
export function checkExcludePatterns(patterns: readonly unknown[], field: string): string[] {
  return checkPathPatterns(patterns, field, `put them in the workspace's ${IGNORE_FILE} instead`);
}

/**
 * The patterns, each checked; throws an Error naming `field` (e.g. "--exclude" or "include") and the
 * pattern's position, and what to do instead. `tooMany` says what to do with more than MAX_PATH_PATTERNS.
 */
export function checkPathPatterns(
  patterns: readonly unknown[],
  field: string,
  tooMany = 'match more with fewer patterns (a directory pattern such as "logs/" takes all under it)',
): string[] {
  if (patterns.length > MAX_PATH_PATTERNS) {
    throw new Error(
      `${field}: ${patterns.length} patterns, more than the ${MAX_PATH_PATTERNS} one request takes: ${tooMany}`,
    );
  }
  return patterns.map((pattern, i) => {
    const where = patterns.length === 1 ? field : `${field}[${i}]`;
    if (typeof pattern !== "string") throw new Error(`${where} must be a string, got ${typeof pattern}`);
    const shown = JSON.stringify(pattern.length > 80 ? `${pattern.slice(0, 80)}…` : pattern);
    if (pattern.trim() === "") throw new Error(`${where} is empty: give a pattern such as "*.tmp" or "cache/"`);
    if (pattern.length > MAX_PATH_PATTERN_LENGTH) {
      throw new Error(`${where} is ${pattern.length} characters long, over ${MAX_PATH_PATTERN_LENGTH}`);
    }
    if (/[\0\r\n]/.test(pattern)) {
      throw new Error(`${where} (${shown}) holds a line break or a NUL: give each pattern on its own`);
    }
    if (pattern.startsWith("#")) {
      throw new Error(
        `${where} (${shown}) starts with "#", which makes it a comment that matches nothing: write "\\#" for a ` +
          `name that starts with "#"`,
      );
    }
    return pattern;
  });
}

/**
 * Whether a path (relative, `/`-separated; `dir` for directories, for `name/` patterns) matches: itself or a
 * directory above it. `file` is a .gitignore-style text (one pattern a line, comments and blank lines
 * allowed); `patterns` (checked) follow it, each a single pattern, never split. A later pattern wins, so a
 * "!" pattern takes back what an earlier one matched, except under a matched directory (gitignore's rule).
 */
export function pathMatcher(
  file: string | undefined,
  patterns: readonly string[],
): (rel: string, dir: boolean) => boolean {
  const matcher = ignore({ ignorecase: false });
  if (file !== undefined) matcher.add(file);
  matcher.add(patterns.map((pattern) => ({ pattern })));
  return (rel, dir) => matcher.ignores(dir ? `${rel}/` : rel);
}

/**
 * The error of --include patterns that match nothing in a snapshot: a restore's (restore writes nothing) and an
 * ls's (ls with --include shows what that restore would write, so it fails as the restore would), in both CLIs.
 */
export function nothingIncluded(snapshot: string, include: readonly string[]): Error {
  return new Error(
    `nothing in snapshot ${snapshot.slice(0, 12)} matches ${include.map((p) => JSON.stringify(p)).join(", ")}: ` +
      `patterns are relative to the snapshot's directory, as in a .gitignore at its root ("models/", "*.pt", ` +
      `"checkpoints/step-100.pt")`,
  );
}

/**
 * The entries of a manifest that `include` patterns (checked) select: those they match (a directory with all
 * under it) and the directories holding them, in manifest order; none when nothing matches, and every entry
 * when there are no patterns (no --include: the whole snapshot).
 */
export function selectIncluded(entries: readonly ManifestEntry[], include: readonly string[]): ManifestEntry[] {
  if (include.length === 0) return [...entries];
  const selection = new IncludedSelection(include);
  for (const e of entries) selection.add(e.path, e.type === "dir");
  const kept = selection.finish();
  return entries.filter((e) => kept.has(e.path));
}

/**
 * selectIncluded fed one path at a time (a manifest read part by part). `matches` says whether the patterns
 * select an entry themselves; `finish` gives every selected path: those, and the directories holding them.
 */
export class IncludedSelection {
  readonly matches: (path: string, dir: boolean) => boolean;
  private readonly kept = new Set<string>();

  /** `include`: checked patterns (checkPathPatterns), at least one. */
  constructor(include: readonly string[]) {
    this.matches = pathMatcher(undefined, include);
  }

  /** Whether the patterns select this entry themselves (it is kept then). */
  add(path: string, dir: boolean): boolean {
    if (!this.matches(path, dir)) return false;
    this.kept.add(path);
    return true;
  }

  finish(): ReadonlySet<string> {
    for (const path of [...this.kept]) {
      for (let cut = path.lastIndexOf("/"); cut > 0; cut = path.lastIndexOf("/", cut - 1)) {
        const parent = path.slice(0, cut);
        if (this.kept.has(parent)) break; // its own parents are added when it comes round
        this.kept.add(parent);
      }
    }
    return this.kept;
  }
}
