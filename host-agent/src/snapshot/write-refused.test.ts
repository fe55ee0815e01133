// A repository this process may not write into: the failure names the object, the errno, and whose write access
// it needs, and nothing is lost. Tests run as root here, whom a directory's mode does not stop; a file or directory
// made immutable (chattr +i) stops root too, with EPERM, so that is the refusal made for real. Skipped where chattr
// is missing or the filesystem has no such flag.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runAgentCli } from "../cli/run-in-process.js";

/** chattr +i or -i on `path`; whether it worked. */
function immutable(path: string, on: boolean): boolean {
  return spawnSync("chattr", [on ? "+i" : "-i", path], { stdio: "ignore" }).status === 0;
}

/** Whether chattr +i works here (chattr there, root, a filesystem with the flag). */
async function canMakeImmutable(): Promise<boolean> {
  const dir = await mkdtemp(join(tmpdir(), "dumont-chattr-probe-"));
  try {
    const ok = immutable(dir, true);
    if (ok) immutable(dir, false);
    return ok;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe.skipIf(!(await canMakeImmutable()))("a repository this process may not write", () => {
  let root: string;
  let repo: string;
  let keyFile: string;
  const frozen: string[] = [];
  const freeze = (path: string) => {
    expect(immutable(path, true)).toBe(true);
    frozen.push(path);
  };
  const thaw = () => {
    for (const path of frozen.splice(0).reverse()) immutable(path, false);
  };

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "dumont-write-refused-"));
    repo = join(root, "repo");
    keyFile = join(root, "key");
    await writeFile(keyFile, randomBytes(32).toString("hex"), { mode: 0o600 });
  });
  afterAll(async () => {
    thaw();
    await rm(root, { recursive: true, force: true });
  });

  const repoFlags = () => ["--repo", pathToFileURL(repo).href, "--key-file", keyFile];
  const snapshotOf = async (name: string) => {
    const source = join(root, name);
    await mkdir(source);
    await writeFile(join(source, "weights.bin"), randomBytes(256 * 1024));
    const res = await runAgentCli("snapshot", "create", "--source", source, "--json", ...repoFlags());
    expect(res.code, res.err).toBe(0);
    return (JSON.parse(res.out) as { id: string }).id;
  };
  const refusal = (key: string) =>
    new RegExp(
      `cannot write ${pathToFileURL(repo).href}/${key}: operation not permitted \\(EPERM\\)\\. Give the user this ` +
        "runs as \\(uid \\d+\\) write access to the repository's directory",
    );

  it("a snapshot whose pack cannot be written says so, and the next one, once allowed, succeeds", async () => {
    await snapshotOf("first");
    freeze(join(repo, "data"));
    const source = join(root, "second");
    await mkdir(source);
    await writeFile(join(source, "other.bin"), randomBytes(256 * 1024));
    const failed = await runAgentCli("snapshot", "create", "--source", source, "--json", ...repoFlags());
    expect(failed.code).toBe(1);
    expect(failed.err).toMatch(refusal("data/\\S+"));
    thaw();
    const again = await runAgentCli("snapshot", "create", "--source", source, "--json", ...repoFlags());
    expect(again.code, again.err).toBe(0);
  });

  it("a forget that cannot delete a snapshot's object says so, and keeps the snapshot listed", async () => {
    const old = await snapshotOf("old");
    await snapshotOf("new");
    const listed = async () =>
      (JSON.parse((await runAgentCli("snapshot", "list", "--json", ...repoFlags())).out) as { id: string }[]).map(
        (s) => s.id,
      );
    const before = await listed();
    freeze(join(repo, "snapshots"));
    const failed = await runAgentCli("snapshot", "forget", old, ...repoFlags());
    expect(failed.code).toBe(1);
    expect(failed.err).toMatch(refusal(`snapshots/${old}`));
    thaw();
    expect(await listed()).toEqual(before);
    expect(await readdir(join(repo, "snapshots"))).toContain(old);
  });
});
