// What only the file:// store does: directories made durable before a put returns, and a stray file on an
// object's path told from a repository path that names a file. (The shared suite is blob-store.test.ts.)
import { mkdir, mkdtemp, readdir, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { isRepositoryError } from "./errors.js";
import { FileBlobStore } from "./file-blob-store.js";

/** Directory syncs, held while `hold(dir)` says so. */
const syncs = vi.hoisted(() => ({ hold: (_dir: string): Promise<void> | undefined => undefined }));
vi.mock("./atomic-file.js", async (original) => {
  const real = await original<typeof import("./atomic-file.js")>();
  return {
    ...real,
    syncDirectory: async (dir: string) => {
      await syncs.hold(dir);
      return real.syncDirectory(dir);
    },
  };
});

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "dumont-file-store-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("FileBlobStore", () => {
  it("returns no put into a new directory before that directory is durable, whichever put made it", async () => {
    // The put that made index/ synced the root; a second put into index/ meanwhile found it made, skipped the
    // sync, and returned: a power loss could then take index/ away with both objects.
    const root = join(dir, "durable");
    await mkdir(root);
    const store = new FileBlobStore(root);
    let release = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let reached = () => {};
    const holding = new Promise<void>((resolve) => {
      reached = resolve;
    });
    syncs.hold = (d) => {
      if (d !== root) return undefined;
      reached();
      return held;
    };
    try {
      const first = store.put("index/aa", Buffer.from("1"));
      await holding;
      let secondReturned = false;
      const second = store.put("index/bb", Buffer.from("2")).then(() => {
        secondReturned = true;
      });
      await new Promise((r) => setTimeout(r, 200));
      expect(secondReturned).toBe(false);
      release();
      await Promise.all([first, second]);
      expect(secondReturned).toBe(true);
    } finally {
      syncs.hold = () => undefined;
      release();
    }
  });

  it("lists what it holds through a symlinked directory (data/ab on another disk), and a loop ends", async () => {
    // Reads and writes went through the link and the listing did not: check took its packs for missing.
    const root = join(dir, "linked");
    const elsewhere = join(dir, "other-disk");
    await mkdir(join(root, "data"), { recursive: true });
    await mkdir(elsewhere);
    await symlink(elsewhere, join(root, "data", "ab"));
    await symlink(root, join(root, "data", "cd")); // a loop: data/cd/data/cd/...
    const twice = join(dir, "third-disk");
    await mkdir(twice);
    await writeFile(join(twice, "0123ab"), "pack");
    await symlink(twice, join(root, "data", "01")); // two links to one directory: listed under neither key
    await symlink(twice, join(root, "data", "02"));
    await symlink(dir, join(root, "data", "up")); // above the store: the walk would come back in
    const store = new FileBlobStore(root);
    await store.put("data/ab/abcdef", Buffer.from("pack"));
    await store.put("data/ef/ef0123", Buffer.from("pack"));
    // A link named as a temp file is nobody's object: it must not count as the way to the other disk.
    await symlink(elsewhere, join(root, ".tmp-link-at-the-root"));
    const listed: string[] = [];
    for await (const info of store.list("data/")) listed.push(info.key);
    expect(listed.sort()).toEqual(["data/ab/abcdef", "data/ef/ef0123"]);
    const everything: string[] = [];
    for await (const info of store.list("")) everything.push(info.key);
    expect(everything.sort()).toEqual(["data/ab/abcdef", "data/ef/ef0123"]);
    expect((await store.stat("data/ab/abcdef"))?.size).toBe(4);

    // A prune's sweep of abandoned temp files goes where the listing goes (it stopped at the link, and the other
    // disk filled with them), and nowhere else: not through the two links, and no link named like a temp file.
    await writeFile(join(elsewhere, ".tmp-0123456789abcdef"), "an interrupted pack");
    await writeFile(join(root, "data", "ef", ".tmp-fedcba9876543210"), "another");
    await writeFile(join(twice, ".tmp-00000000000000aa"), "not reached");
    await symlink(join(twice, "0123ab"), join(root, "data", "ef", ".tmp-link"));
    expect(await store.removeAbandoned("data/")).toEqual({ count: 2, bytes: 26 });
    expect((await readdir(elsewhere)).sort()).toEqual(["abcdef"]);
    expect((await readdir(join(root, "data", "ef"))).sort()).toEqual([".tmp-link", "ef0123"]);
    expect((await readdir(twice)).sort()).toEqual([".tmp-00000000000000aa", "0123ab"]);
  });

  it("makes a new repository's own directory durable in its parent with its first object", async () => {
    const synced: string[] = [];
    syncs.hold = (d) => {
      synced.push(d);
      return undefined;
    };
    try {
      const root = join(dir, "new-parent", "new-repo");
      await new FileBlobStore(root).put("config", Buffer.from("c"), { ifAbsent: true });
      // new-repo's entry in new-parent, and new-parent's in the test's directory: both made by this put.
      expect(synced).toEqual(expect.arrayContaining([join(dir, "new-parent"), dir]));
    } finally {
      syncs.hold = () => undefined;
    }
  });

  it("fails every call as unavailable once its directory is gone (unmounted, moved), and makes no new one", async () => {
    // Taken for missing objects, a gone root had restores call chunks damaged, check call packs missing, a loaded
    // index drop every pack, and the next write make an empty repository below the mount point (helper-65).
    const root = join(dir, "mounted", "repo");
    const store = new FileBlobStore(root);
    await store.put("config", Buffer.from("c"));
    await store.put("index/x", Buffer.from("i"));
    await store.put("data/ab/p", Buffer.alloc(64, 1));
    await rename(join(dir, "mounted"), join(dir, "unmounted"));
    const gone = (e: unknown) => isRepositoryError(e, "unavailable") && /directory .* is gone/.test(String(e));
    await expect(store.syncEntries?.(["data/ab/p"])).rejects.toSatisfy(gone);
    await expect(store.get("index/x")).rejects.toSatisfy(gone);
    await expect(store.getRange("data/ab/p", 0, 8)).rejects.toSatisfy(gone);
    await expect(store.stat("index/x")).rejects.toSatisfy(gone);
    await expect(store.delete("index/x")).rejects.toSatisfy(gone);
    await expect(
      (async () => {
        for await (const _ of store.list("index/")) {
        }
      })(),
    ).rejects.toSatisfy(gone);
    await expect(store.put("data/cd/q", Buffer.from("q"))).rejects.toSatisfy(gone);
    await expect(store.put("data/ab/r", Buffer.from("r"))).rejects.toSatisfy(gone); // a directory made before
    await expect(store.openWriter("data/ef/s")).rejects.toSatisfy(gone);
    expect(await readdir(dir)).not.toContain("mounted");

    // An empty directory in its place (a mount point whose filesystem is not mounted): the same, since the
    // repository's config is not there (helper-66).
    await mkdir(root, { recursive: true });
    const replaced = (e: unknown) =>
      isRepositoryError(e, "unavailable") && /no longer holds the repository/.test(String(e));
    await expect(store.get("data/ab/p")).rejects.toSatisfy(replaced);
    await expect(store.stat("config")).rejects.toSatisfy(replaced);
    await expect(store.put("data/cd/q", Buffer.from("q"))).rejects.toSatisfy(replaced);
    expect(await readdir(root)).toEqual([]);
    await rm(join(dir, "mounted"), { recursive: true });

    // Back in place, it works again; and a store that never saw its root calls it no repository yet.
    await rename(join(dir, "unmounted"), join(dir, "mounted"));
    expect((await store.get("index/x")).toString()).toBe("i");
    // Gone while a listing runs: it fails, rather than end short.
    for (const n of [1, 2, 3, 4]) await store.put(`index/y${n}`, Buffer.from("y"));
    const listing = (async () => {
      const keys: string[] = [];
      for await (const info of store.list("index/")) {
        keys.push(info.key);
        if (keys.length === 1) await rename(join(dir, "mounted"), join(dir, "unmounted"));
      }
      return keys;
    })();
    await expect(listing).rejects.toSatisfy(gone);
    await rename(join(dir, "unmounted"), join(dir, "mounted"));
    const fresh = new FileBlobStore(join(dir, "never-made"));
    await expect(fresh.get("config")).rejects.toSatisfy((e: unknown) => isRepositoryError(e, "not-found"));
  });

  it("takes its config gone for its root gone once it wrote the config, in a directory it first found without one", async () => {
    // A repository made in a directory already there (a mount point): the first call (a look for objects before
    // the config is made) finds no config; writing it must count, or an unmount later reads as objects missing.
    const root = join(dir, "made-in-place");
    await mkdir(join(root, "data"), { recursive: true }); // an empty data/: its listing reaches the root
    const store = new FileBlobStore(root);
    expect(await store.stat("config")).toBeUndefined(); // Repository.exists, as openOrInit asks first
    for await (const _ of store.list("data/")) {
    }
    await store.put("config", Buffer.from("c"));
    await store.put("data/ab/p", Buffer.alloc(64, 1));
    await rm(root, { recursive: true });
    await mkdir(root); // the mount point, its filesystem gone
    await expect(store.get("data/ab/p")).rejects.toSatisfy(
      (e: unknown) => isRepositoryError(e, "unavailable") && /no longer holds the repository/.test(String(e)),
    );
  });

  it("calls an object under a stray file absent, and a repository path naming a file what it is", async () => {
    const store = new FileBlobStore(join(dir, "stray"));
    await store.put("data/ab", Buffer.from("a stray file where data/ab/ would be"));
    for (const read of [() => store.get("data/ab/abcd"), () => store.getRange("data/ab/abcd", 0, 1)]) {
      const err = await read().catch((e: unknown) => e);
      expect(isRepositoryError(err, "not-found"), String(err)).toBe(true);
    }
    expect(await store.stat("data/ab/abcd")).toBeUndefined();
    const listed: string[] = [];
    for await (const info of store.list("data/ab/")) listed.push(info.key);
    expect(listed).toEqual([]);
    // The repository's own path a file: every call says so, the listing too (it listed nothing).
    const file = join(dir, "a-file");
    await writeFile(file, "x");
    const onFile = new FileBlobStore(file);
    const refusal = /is a file, or lies under one: a file:\/\/ repository is a directory/;
    await expect(onFile.get("config")).rejects.toThrow(refusal);
    await expect(
      (async () => {
        for await (const _ of onFile.list("snapshots/")) {
        }
      })(),
    ).rejects.toThrow(refusal);
  });
});
