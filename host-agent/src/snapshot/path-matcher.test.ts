// Path patterns: what a snapshot leaves out on purpose (the workspace's .dumontignore and per-snapshot patterns)
// and what a partial restore writes, matched with gitignore's rules; round trips for both.
import { execFileSync } from "node:child_process";
import { access, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import {
  checkPathPatterns,
  generateRepositoryKey,
  MAX_PATH_PATTERNS,
  type ManifestEntry,
  selectIncluded,
} from "@dumont/repository";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDirectSnapshot, restoreDirectSnapshot } from "./direct-mode.js";
import { loadExclusions, MAX_IGNORE_FILE_BYTES } from "./path-matcher.js";
import { SnapshotWorkerPool } from "./worker-pool.js";

let root: string;
let pool: SnapshotWorkerPool;
let counter = 0;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-exclude-"));
  pool = new SnapshotWorkerPool({ threads: 1 });
});
afterAll(async () => {
  await pool?.close();
  await rm(root, { recursive: true, force: true });
});

/** A directory holding `files` (path → content; a path ending in "/" is an empty directory). */
async function tree(files: Record<string, string>): Promise<string> {
  const dir = join(root, `tree-${++counter}`);
  await mkdir(dir);
  for (const [path, content] of Object.entries(files)) {
    if (path.endsWith("/")) await mkdir(join(dir, path), { recursive: true });
    else {
      await mkdir(join(dir, path, ".."), { recursive: true });
      await writeFile(join(dir, path), content);
    }
  }
  return dir;
}

/** Every path under `dir`, directories with a trailing "/", in name order. */
async function paths(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for (const d of (await readdir(join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const path = rel === "" ? d.name : `${rel}/${d.name}`;
    if (d.isDirectory()) out.push(`${path}/`, ...(await paths(dir, path)));
    else out.push(path);
  }
  return out;
}

describe("exclusions", () => {
  it("matches as git does with a .gitignore at the root, the given patterns after the file's", async () => {
    const dir = await tree({
      [".dumontignore"]: "# caches and build output\n.cache/\n*.tmp\n!keep.tmp\n/build\nlogs/**/*.log\n",
    });
    const ex = await loadExclusions(dir, ["data/raw/", "!debug.tmp"]);
    const cases: [string, boolean, boolean][] = [
      [".cache", true, true], // a directory pattern...
      [".cache", false, false], // ...does not take a file of that name
      ["sub/.cache", true, true], // unanchored: at any depth
      ["a.tmp", false, true],
      ["sub/b.tmp", false, true],
      ["keep.tmp", false, false], // taken back by the file's "!"
      ["debug.tmp", false, false], // taken back by a given "!" (given patterns come last)
      ["build", true, true],
      ["sub/build", true, false], // "/build" is anchored to the root
      ["logs/a/b/run.log", false, true],
      ["logs/run.txt", false, false],
      ["data/raw", true, true],
      ["Data/raw", true, false], // names are case-sensitive, as on Linux
      [".dumontignore", false, false], // the file itself is kept, as a .gitignore is
      ["src/main.py", false, false],
    ];
    for (const [path, isDir, excluded] of cases)
      expect([path, isDir, ex?.excludes(path, isDir)]).toEqual([path, isDir, excluded]);
    expect(await loadExclusions(await tree({ "a.txt": "a" }))).toBeUndefined();
  });

  it("refuses bad patterns, naming the one and what to do", async () => {
    const dir = await tree({ "a.txt": "a" });
    await expect(loadExclusions(dir, ["#cache"])).rejects.toThrow(/exclude \("#cache"\) starts with "#".*write "\\#"/);
    await expect(loadExclusions(dir, ["*.tmp", "a\nb"])).rejects.toThrow(/exclude\[1\] \("a\\nb"\) holds a line break/);
    await expect(loadExclusions(dir, ["ok", "  "])).rejects.toThrow(/exclude\[1\] is empty/);
    await expect(loadExclusions(dir, ["x".repeat(1025)])).rejects.toThrow(/exclude is 1025 characters long, over 1024/);
    const many = Array.from({ length: MAX_PATH_PATTERNS + 1 }, (_, i) => `f${i}`);
    await expect(loadExclusions(dir, many)).rejects.toThrow(/257 patterns.*\.dumontignore instead/);
  });

  it("reads a .dumontignore only as a regular text file of bounded size, never through a symlink", async () => {
    const outside = await tree({ patterns: "*.txt\n" });
    const linked = await tree({ "a.txt": "a" });
    await symlink(join(outside, "patterns"), join(linked, ".dumontignore"));
    await expect(loadExclusions(linked)).rejects.toThrow(/\.dumontignore is a symlink: make it a regular file/);
    const asDir = await tree({ ".dumontignore/": "" });
    await expect(loadExclusions(asDir)).rejects.toThrow(/\.dumontignore is not a regular file/);
    const big = await tree({ ".dumontignore": "#".repeat(MAX_IGNORE_FILE_BYTES + 1) });
    await expect(loadExclusions(big)).rejects.toThrow(/\.dumontignore is 1048577 bytes, over the 1048576/);
    const binary = await tree({ ".dumontignore": "a\0b" });
    await expect(loadExclusions(binary)).rejects.toThrow(/\.dumontignore holds a NUL byte/);
  });

  it("leaves excluded paths out of a snapshot without reading them; the rest restores as it was", async () => {
    const source = await tree({
      ".dumontignore": ".cache/\n*.tmp\n/build\n",
      ".cache/pip/wheel.whl": "cached",
      "a.tmp": "scratch",
      "build/out.bin": "built",
      "sub/build/kept.txt": "kept: /build is anchored",
      "sub/notes.tmp": "scratch",
      "src/main.py": "print('hi')\n",
      "src/vendor/lib.py": "# vendored\n",
      "empty/": "",
    });
    // In an excluded directory, what a snapshot would otherwise report as left out is not even looked at.
    execFileSync("mkfifo", [join(source, ".cache", "pipe")]);
    const key = generateRepositoryKey();
    const repo = pathToFileURL(join(root, `repo-${++counter}`)).href;
    const created = await createDirectSnapshot({ repo, key, source, pool, exclude: ["src/vendor/"] });
    expect(created.skipped).toEqual([]);
    expect(created.files).toBe(3);
    const target = join(root, `restored-${++counter}`);
    await restoreDirectSnapshot({ repo, key, snapshotId: created.id, target, pool });
    expect(await paths(target)).toEqual([
      ".dumontignore",
      "empty/",
      "src/",
      "src/main.py",
      "sub/",
      "sub/build/",
      "sub/build/kept.txt",
    ]);
    expect(await readFile(join(target, "src/main.py"), "utf8")).toBe("print('hi')\n");

    // A bad pattern fails the snapshot before anything is stored.
    await expect(createDirectSnapshot({ repo, key, source, pool, exclude: ["#x"] })).rejects.toThrow(/starts with "#"/);
  });
});

describe("partial restore", () => {
  const entry = (path: string): ManifestEntry =>
    path.endsWith("/")
      ? { type: "dir", path: path.slice(0, -1), mode: 0o755, mtimeNs: "0" }
      : { type: "file", path, mode: 0o644, mtimeNs: "0", size: 0, chunks: [], lengths: [] };
  const manifest = [
    "checkpoints/",
    "checkpoints/step-100.pt",
    "checkpoints/step-200.pt",
    "data/",
    "data/train.csv",
    "logs/",
    "logs/run-1/",
    "logs/run-1/events.log",
    "logs/run-1/metrics.json",
    "src/",
    "src/model.pt",
    "src/train.py",
  ].map(entry);
  const selected = (...include: string[]) =>
    selectIncluded(manifest, checkPathPatterns(include, "include")).map((e) =>
      e.type === "dir" ? `${e.path}/` : e.path,
    );

  it("keeps what the patterns match, a directory with all under it, and the directories holding it", () => {
    expect(selectIncluded(manifest, [])).toEqual(manifest); // no patterns: the whole snapshot (ls without --include)
    expect(selected("checkpoints/step-200.pt")).toEqual(["checkpoints/", "checkpoints/step-200.pt"]);
    expect(selected("logs/run-1/")).toEqual([
      "logs/",
      "logs/run-1/",
      "logs/run-1/events.log",
      "logs/run-1/metrics.json",
    ]);
    expect(selected("*.pt")).toEqual([
      "checkpoints/",
      "checkpoints/step-100.pt",
      "checkpoints/step-200.pt",
      "src/",
      "src/model.pt",
    ]);
    expect(selected("/*.pt")).toEqual([]); // anchored: no .pt at the top
    expect(selected("Checkpoints/")).toEqual([]); // case matters
    expect(() => selected("src/", "#x")).toThrow(/include\[1\] \("#x"\) starts with "#"/);
  });

  it("restores only the matched part of a snapshot; nothing matching leaves the target untouched", async () => {
    const source = await tree({
      "checkpoints/step-100.pt": "100",
      "checkpoints/step-200.pt": "200",
      "data/train.csv": "a,b\n",
      "src/train.py": "print('hi')\n",
    });
    const key = generateRepositoryKey();
    const repo = pathToFileURL(join(root, `repo-${++counter}`)).href;
    const created = await createDirectSnapshot({ repo, key, source, pool });
    const target = join(root, `restored-${++counter}`);
    const restored = await restoreDirectSnapshot({
      repo,
      key,
      snapshotId: created.id,
      target,
      pool,
      include: ["checkpoints/step-200.pt", "src/"],
    });
    expect(restored.files).toBe(2);
    expect(await paths(target)).toEqual(["checkpoints/", "checkpoints/step-200.pt", "src/", "src/train.py"]);
    expect(await readFile(join(target, "checkpoints/step-200.pt"), "utf8")).toBe("200");

    const untouched = join(root, `restored-${++counter}`);
    await expect(
      restoreDirectSnapshot({ repo, key, snapshotId: created.id, target: untouched, pool, include: ["*.ckpt"] }),
    ).rejects.toThrow(
      /nothing in snapshot \w{12} matches "\*\.ckpt": patterns are relative to the snapshot's directory/,
    );
    await expect(
      restoreDirectSnapshot({ repo, key, snapshotId: created.id, target: untouched, pool, include: ["src/", "#x"] }),
    ).rejects.toThrow(/include\[1\] \("#x"\) starts with "#"/);
    await expect(access(untouched)).rejects.toThrow(/ENOENT/);
  });
});
