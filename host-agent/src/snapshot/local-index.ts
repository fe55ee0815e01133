// The agent's memory of what it already chunked: path -> (size, mtime, inode, chunk ids). A file whose size,
// mtime and inode are unchanged is not read again. Stored as one JSON file, replaced atomically.
import { createHash } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { writeFileAtomic } from "@dumont/repository";

export interface LocalIndexEntry {
  size: number;
  mtimeNs: string;
  ino: string;
  chunks: string[];
  lengths: number[];
}

export interface LocalIndex {
  version: 1;
  /** What the entries are valid for (repository id + source); a mismatch discards them. */
  scope: string;
  snapshot: string;
  files: Record<string, LocalIndexEntry>;
}

/** The index file for a scope under a state directory. */
export function localIndexPath(stateDir: string, scope: string): string {
  return join(stateDir, "snapshot-index", `${createHash("sha256").update(scope).digest("hex").slice(0, 32)}.json`);
}

export async function loadLocalIndex(file: string, scope: string): Promise<Map<string, LocalIndexEntry>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return new Map();
    throw err;
  }
  try {
    const index = JSON.parse(text) as LocalIndex;
    if (index.version !== 1 || index.scope !== scope || typeof index.files !== "object") return new Map();
    return new Map(Object.entries(index.files));
  } catch {
    return new Map(); // a damaged cache only costs a full read
  }
}

export async function saveLocalIndex(file: string, index: LocalIndex): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, JSON.stringify(index), 0o600);
}
