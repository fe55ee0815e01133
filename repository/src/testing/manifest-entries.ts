// Manifest entries for tests: a directory, an empty file and a symlink at a path, modes and times fixed.
import type { ManifestEntry } from "../manifest.js";

export const dirEntry = (path: string): ManifestEntry => ({ type: "dir", path, mode: 0o755, mtimeNs: "0" });

export const emptyFileEntry = (path: string): ManifestEntry => ({
  type: "file",
  path,
  mode: 0o644,
  mtimeNs: "0",
  size: 0,
  chunks: [],
  lengths: [],
});

export const linkEntry = (path: string, target: string): ManifestEntry => ({
  type: "symlink",
  path,
  mode: 0o777,
  mtimeNs: "0",
  target,
});
