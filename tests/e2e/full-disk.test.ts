// A full disk through the control plane, for real: small tmpfs mounts (so only where this process may mount,
// as CI here runs; skipped elsewhere) under the control plane's blob store and under a restore's target. Each failure reaches
// the `dumont` CLI as what it is, where, and what to do, not as an internal error or as damaged data.
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { canMountTmpfs, mountTmpfs, unmountTmpfs } from "@dumont/repository/testing/tmpfs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type AgentProcess,
  type ControlPlaneProcess,
  startControlPlaneProcess,
  startOnlineAgent,
  tempDir,
  testDatabaseUrl,
} from "../support/processes.js";

describe.skipIf(!canMountTmpfs())("a full disk through the control plane", () => {
  let root: string;
  const mounts: string[] = [];
  let cp: ControlPlaneProcess;
  let agent: AgentProcess;
  let db: Awaited<ReturnType<typeof testDatabaseUrl>>;
  let blobs: string;

  /** A fresh tmpfs of `size` (e.g. "8m") at `name` under the test's directory. */
  const mountSmall = async (name: string, size: string): Promise<string> => {
    const dir = path.join(root, name);
    await fs.mkdir(dir);
    mountTmpfs(dir, size);
    mounts.push(dir);
    return dir;
  };
  /** A directory holding one incompressible file of `mib` MiB. */
  const workspaceOf = async (name: string, mib: number): Promise<string> => {
    const dir = path.join(root, name);
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, "weights.bin"), randomBytes(mib * 1024 * 1024));
    return dir;
  };

  beforeAll(async () => {
    root = await tempDir("e2e-full-disk");
    db = await testDatabaseUrl();
    blobs = await mountSmall("blobs", "16m");
    cp = await startControlPlaneProcess({
      dataDir: path.join(root, "cp"),
      databaseUrl: db.url,
      env: { DUMONT_BLOB_STORE: pathToFileURL(blobs).href },
    });
    agent = await startOnlineAgent(cp, path.join(root, "agent"), "fullbox");
  });
  afterAll(async () => {
    await agent?.stop();
    await cp?.stop();
    for (const dir of mounts.reverse()) unmountTmpfs(dir);
    await db?.drop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it("refuses a snapshot its blob store has no room for as resource_exhausted, naming the store; a smaller one fits", async () => {
    const big = await workspaceOf("big", 24);
    const failed = await cp.cli(["snapshot", "create", "--host", agent.hostId, "--path", big]);
    expect(failed.code).not.toBe(0);
    expect(failed.stderr).toMatch(
      new RegExp(
        `\\[resource_exhausted\\] cannot write ${pathToFileURL(blobs).href}/tenants/admin/\\S+: no space left on the device \\(ENOSPC\\)\\. Make room there`,
      ),
    );
    expect((await cp.cli(["snapshot", "list", "--json"])).stdout.trim()).toBe("[]");
    const small = await workspaceOf("small", 1);
    const ok = await cp.cli(["snapshot", "create", "--host", agent.hostId, "--path", small, "--json"]);
    expect(ok.stderr).toBe("");
    expect(JSON.parse(ok.stdout)).toMatchObject({ files: 1 });
  });

  it("stops a restore whose target fills, empties it, and says how much room it needs", async () => {
    const source = await workspaceOf("restorable", 6);
    const made = await cp.cli(["snapshot", "create", "--host", agent.hostId, "--path", source, "--json"]);
    expect(made.stderr).toBe("");
    const { id } = JSON.parse(made.stdout) as { id: string };
    const target = path.join(await mountSmall("target", "4m"), "restore");
    const failed = await cp.cli(["snapshot", "restore", id, "--host", agent.hostId, "--target", target]);
    expect(failed.code).not.toBe(0);
    expect(failed.stderr).toContain(
      `cannot restore into ${target}: no space left on the device (ENOSPC). What was restored so far has been ` +
        "removed; the restore needs 6.0 MiB there: make room and restore again",
    );
    expect(await fs.readdir(target)).toEqual([]);
  });
});
