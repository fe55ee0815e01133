// realPath: the path as the filesystem sees it, through links, missing parts kept as they are.
import { mkdtempSync, realpathSync, rmSync, symlinkSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { pathInside, realPath } from "./real-path.js";

describe("realPath", () => {
  const root = realpathSync(mkdtempSync(path.join(os.tmpdir(), "dumont-real-path-")));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it("resolves links in the part that exists and appends the part that does not", async () => {
    await mkdir(path.join(root, "disk", "data"), { recursive: true });
    symlinkSync(path.join(root, "disk"), path.join(root, "link"));
    expect(realPath(path.join(root, "link", "data"))).toBe(path.join(root, "disk", "data"));
    expect(realPath(path.join(root, "link", "new", "repo"))).toBe(path.join(root, "disk", "new", "repo"));
    expect(realPath(path.join(root, "missing", "repo"))).toBe(path.join(root, "missing", "repo"));
  });

  it("follows a dangling link to where it points, absolute or relative, through a chain of them", () => {
    // A repository linked into a mount point with nothing mounted: the path is the mount point's, not the link's.
    symlinkSync(path.join(root, "mnt", "backup", "repo"), path.join(root, "repo-abs"));
    symlinkSync(path.join("mnt", "backup", "repo"), path.join(root, "repo-rel"));
    symlinkSync("repo-rel", path.join(root, "repo-chain"));
    const target = path.join(root, "mnt", "backup", "repo");
    expect(realPath(path.join(root, "repo-abs"))).toBe(target);
    expect(realPath(path.join(root, "repo-rel"))).toBe(target);
    expect(realPath(path.join(root, "repo-chain", "packs"))).toBe(path.join(target, "packs"));
  });

  it("reads a relative dangling link from its directory as the kernel finds it, through a linked parent", async () => {
    // linked -> deep/er: "../../mnt/x" from linked/ is from deep/er/, two levels down, not from the root.
    await mkdir(path.join(root, "deep", "er"), { recursive: true });
    symlinkSync(path.join(root, "deep", "er"), path.join(root, "linked"));
    symlinkSync(path.join("..", "..", "mnt", "x"), path.join(root, "deep", "er", "repo"));
    expect(realPath(path.join(root, "linked", "repo"))).toBe(path.join(root, "mnt", "x"));
  });

  it("gives up on a loop of links without hanging, keeping the path it was given past them", () => {
    symlinkSync("loop-b", path.join(root, "loop-a"));
    symlinkSync("loop-a", path.join(root, "loop-b"));
    expect([path.join(root, "loop-a", "x"), path.join(root, "loop-b", "x")]).toContain(
      realPath(path.join(root, "loop-a", "x")),
    );
  });

  it("pathInside: strictly inside only", () => {
    expect(pathInside("/a/b", "/a/b/c d/e")).toBe("c d/e");
    expect(pathInside("/a/b", "/a/b")).toBeUndefined();
    expect(pathInside("/a/b", "/a/bc")).toBeUndefined();
    expect(pathInside("/a/b", "/a")).toBeUndefined();
  });
});
