// Exclude patterns: what a snapshot leaves out on purpose. Two sources, one syntax (gitignore's):
// - the workspace's own `.dumontignore`, at the root of the snapshotted directory, read by the agent at every
//   snapshot (so it travels with the workspace and applies to every snapshot of it);
// - patterns given for one snapshot (`--exclude`, TakeSnapshot.exclude), checked here wherever they enter:
//   the CLIs, the control plane's API and the agent. A pattern is matched against paths relative to the
//   snapshotted directory, as a pattern in a .gitignore at its root would be.
// No dependency here: the control plane checks patterns without loading the matcher (host-agent's exclusions.ts).

/** The workspace's own exclude file, at the root of the snapshotted directory. */
export const IGNORE_FILE = ".dumontignore";
/** Patterns one snapshot request may carry (a .dumontignore has no such limit, only a size). */
export const MAX_EXCLUDE_PATTERNS = 256;
export const MAX_EXCLUDE_PATTERN_LENGTH = 1024;

/**
 * The patterns, each checked; throws an Error naming `field` (e.g. "--exclude" or "exclude") and the pattern's
 * position, and what to do instead.
 */
export function checkExcludePatterns(patterns: readonly unknown[], field: string): string[] {
  if (patterns.length > MAX_EXCLUDE_PATTERNS) {
    throw new Error(
      `${field}: ${patterns.length} patterns, more than the ${MAX_EXCLUDE_PATTERNS} one snapshot takes: put them ` +
        `in the workspace's ${IGNORE_FILE} instead`,
    );
  }
  return patterns.map((pattern, i) => {
    const where = patterns.length === 1 ? field : `${field}[${i}]`;
    if (typeof pattern !== "string") throw new Error(`${where} must be a string, got ${typeof pattern}`);
    const shown = JSON.stringify(pattern.length > 80 ? `${pattern.slice(0, 80)}…` : pattern);
    if (pattern.trim() === "") throw new Error(`${where} is empty: give a pattern such as "*.tmp" or "cache/"`);
    if (pattern.length > MAX_EXCLUDE_PATTERN_LENGTH) {
      throw new Error(`${where} is ${pattern.length} characters long, over ${MAX_EXCLUDE_PATTERN_LENGTH}`);
    }
    if (/[\0\r\n]/.test(pattern)) {
      throw new Error(`${where} (${shown}) holds a line break or a NUL: give each pattern on its own`);
    }
    if (pattern.startsWith("#")) {
      throw new Error(
        `${where} (${shown}) starts with "#", which makes it a comment that excludes nothing: write "\\#" for a ` +
          `name that starts with "#"`,
      );
    }
    return pattern;
  });
}
