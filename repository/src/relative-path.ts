// Checks of the `/`-separated relative paths the repository takes: manifest entries and object keys.

/**
 * Whether a `/`-separated path has an empty, "." or ".." component: a scan, not a split (a commit checks every
 * path of its manifest).
 */
export function hasBadComponent(path: string): boolean {
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i < path.length && path.charCodeAt(i) !== 0x2f) continue;
    const length = i - start;
    if (length === 0) return true;
    if (length <= 2 && path.charCodeAt(start) === 0x2e && (length === 1 || path.charCodeAt(start + 1) === 0x2e)) {
      return true;
    }
    start = i + 1;
  }
  return false;
}
