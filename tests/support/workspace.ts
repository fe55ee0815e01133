// Builds test workspaces and compares directory trees by content hash (files, dirs, symlinks, modes).
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";

export interface TreeEntry {
  type: "file" | "dir" | "symlink";
  mode: number;
  size?: number;
  sha256?: string;
  target?: string;
}

/** path → entry for everything under `root` (not following symlinks). */
export async function describeTree(root: string): Promise<Record<string, TreeEntry>> {
  const out: Record<string, TreeEntry> = {};
  const walk = async (dir: string) => {
    for (const name of (await fs.readdir(dir)).sort()) {
      const full = path.join(dir, name);
      const rel = path.relative(root, full);
      const st = await fs.lstat(full);
      if (st.isSymbolicLink()) out[rel] = { type: "symlink", mode: 0, target: await fs.readlink(full) };
      else if (st.isDirectory()) {
        out[rel] = { type: "dir", mode: st.mode & 0o7777 };
        await walk(full);
      } else {
        const sha256 = createHash("sha256")
          .update(await fs.readFile(full))
          .digest("hex");
        out[rel] = { type: "file", mode: st.mode & 0o7777, size: st.size, sha256 };
      }
    }
  };
  await walk(root);
  return out;
}

/**
 * A small workspace with the awkward cases: empty file and dir, symlinks (one pointing out of it), spaces and
 * UTF-8, a multi-MiB file.
 */
export async function makeWorkspace(root: string, bigBytes = 6 * 1024 * 1024): Promise<void> {
  await fs.mkdir(path.join(root, "src/nested dir/ünïcødé 文件"), { recursive: true });
  await fs.mkdir(path.join(root, "empty-dir"), { recursive: true });
  await fs.writeFile(path.join(root, "weights.bin"), randomBytes(bigBytes));
  await fs.writeFile(
    path.join(root, "data.csv"),
    Array.from({ length: 20000 }, (_, i) => `${i},${i * 7},row ${i}`).join("\n"),
  );
  await fs.writeFile(path.join(root, "empty.txt"), "");
  await fs.writeFile(path.join(root, "src/nested dir/ünïcødé 文件/notes with spaces.md"), "# hello\n");
  await fs.writeFile(path.join(root, "src/train.py"), "print('train')\n", { mode: 0o755 });
  await fs.symlink("src/train.py", path.join(root, "link-to-train"));
  // A link out of the workspace, as a virtualenv's bin/python is: it must survive a move to another host.
  await fs.symlink("/usr/bin/env", path.join(root, "python-outside"));
  await ageFiles(root);
}

/**
 * Sets every regular file's mtime an hour back. The snapshot engine re-reads files modified within a
 * moment of the snapshot (they may still be changing, as git's "racy" check), so fresh test files would
 * always be re-read.
 */
export async function ageFiles(root: string, ageMs = 3_600_000): Promise<void> {
  const when = new Date(Date.now() - ageMs);
  for (const [rel, entry] of Object.entries(await describeTree(root))) {
    if (entry.type === "file") await fs.utimes(path.join(root, rel), when, when);
  }
}
