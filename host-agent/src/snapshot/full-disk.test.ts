// A full disk under the repository or the restore target, for real: a small tmpfs, mounted for this file (so
// only where this process may mount one, as CI here runs; skipped elsewhere). The failure says where and what to do, leaves no
// temp file or half restore behind, and the next try, with room made, succeeds.
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { canMountTmpfs, mountTmpfs, unmountTmpfs } from "@dumont/repository/testing/tmpfs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runAgentCli } from "../cli/run-in-process.js";

/** Every file under `dir`, relative, sorted. */
async function files(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .sort();
}

describe.skipIf(!canMountTmpfs())("a full disk", () => {
  let root: string;
  let small: string;
  let mounted = false;
  let keyFile: string;
  let source: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "dumont-full-disk-"));
    small = join(root, "small");
    await mkdir(small);
    mountTmpfs(small, "8m");
    mounted = true;
    keyFile = join(root, "key");
    await writeFile(keyFile, randomBytes(32).toString("hex"));
    source = join(root, "src");
    await mkdir(source);
    await writeFile(join(source, "weights.bin"), randomBytes(12 * 1024 * 1024)); // incompressible: 12 MiB stored
    await writeFile(join(source, "notes.txt"), "hello\n");
  });
  afterAll(async () => {
    if (mounted) unmountTmpfs(small);
    await rm(root, { recursive: true, force: true });
  });

  const create = (repo: string, from = source) =>
    runAgentCli(
      "snapshot",
      "create",
      "--source",
      from,
      "--repo",
      pathToFileURL(repo).href,
      "--key-file",
      keyFile,
      "--state-dir",
      join(root, "state"),
      "--json",
    );

  it("under the repository: names the store and what to do, leaves no temp file, and the next try succeeds", async () => {
    const repo = join(small, "repo");
    const failed = await create(repo);
    expect(failed.code).toBe(1);
    expect(failed.err).toMatch(
      new RegExp(
        `cannot write ${pathToFileURL(repo).href}/\\S+: no space left on the device \\(ENOSPC\\)\\. Make room`,
      ),
    );
    expect((await files(repo)).filter((f) => f.split("/").pop()?.startsWith(".tmp-"))).toEqual([]);
    // Room made (a smaller workspace here): the same repository takes the next snapshot.
    const smaller = join(root, "smaller");
    await mkdir(smaller);
    await writeFile(join(smaller, "notes.txt"), "hello\n");
    const ok = await create(repo, smaller);
    expect(ok.err).toBe("");
    expect(JSON.parse(ok.out)).toMatchObject({ files: 1 });
  });

  it("under the restore target: says how much room it needs, and removes what it had restored", async () => {
    const repo = join(root, "repo");
    const made = await create(repo);
    expect(made.code).toBe(0);
    const { id } = JSON.parse(made.out) as { id: string };
    const target = join(small, "restore");
    const failed = await runAgentCli(
      "snapshot",
      "restore",
      "--repo",
      pathToFileURL(repo).href,
      "--key-file",
      keyFile,
      "--id",
      id,
      "--target",
      target,
      "--json",
    );
    expect(failed.code).toBe(1);
    expect(failed.err).toContain(
      `cannot restore into ${target}: no space left on the device (ENOSPC). What was restored so far has been ` +
        "removed; the restore needs 12.0 MiB there: make room and restore again",
    );
    expect(await readdir(target)).toEqual([]);
  });
});
