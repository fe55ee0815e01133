// A tenant's storage quota (DUMONT_SNAPSHOT_QUOTA) through a real control plane and a real agent: the snapshot
// that would pass it fails saying what to do, leaves no snapshot listed, and succeeds once a forget and prune
// have made room, restoring byte for byte.
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type AgentProcess,
  type ControlPlaneProcess,
  startControlPlaneProcess,
  startOnlineAgent,
  tempDir,
  testDatabaseUrl,
} from "../support/processes.js";
import { describeTree, makeWorkspace } from "../support/workspace.js";

interface SnapshotJson {
  id: string;
  tenantId: string;
  bytesNew: number;
}

/** In decimal units, as the quota's refusal then gives its sizes ("6.0 MB"). */
const QUOTA = "6MB";
const QUOTA_BYTES = 6_000_000;
/**
 * Each workspace's random (incompressible) weights: one workspace stores about 4.5 MB, under the quota; a second,
 * sharing none of them, would take the tenant to about 9 MB, over it.
 */
const WEIGHTS_BYTES = 4 * 1024 * 1024;

describe("a tenant's snapshot quota, end to end", () => {
  let root: string;
  let cp: ControlPlaneProcess;
  let agent: AgentProcess;
  let db: Awaited<ReturnType<typeof testDatabaseUrl>>;

  const cli = async (args: string[]) => {
    const res = await cp.cli(args);
    if (res.code !== 0) throw new Error(`dumont ${args.join(" ")} failed: ${res.stderr}`);
    return JSON.parse(res.stdout);
  };
  const snapshotIds = async () => ((await cli(["snapshot", "list", "--json"])) as SnapshotJson[]).map((s) => s.id);
  const createArgs = (dir: string) => ["snapshot", "create", "--host", agent.hostId, "--path", dir, "--json"];

  beforeAll(async () => {
    root = await tempDir("e2e-snapshot-quota");
    db = await testDatabaseUrl();
    cp = await startControlPlaneProcess({
      dataDir: path.join(root, "cp"),
      databaseUrl: db.url,
      env: { DUMONT_SNAPSHOT_QUOTA: QUOTA },
    });
    agent = await startOnlineAgent(cp, path.join(root, "agent"), "quotabox");
  });

  afterAll(async () => {
    await agent?.stop();
    await cp?.stop();
    await db?.drop();
    if (root) await fs.rm(root, { recursive: true, force: true });
  });

  it("refuses the snapshot that would pass the quota, lists none of it, and takes it after a forget and prune", async () => {
    const first = path.join(root, "first");
    const second = path.join(root, "second");
    await makeWorkspace(first, WEIGHTS_BYTES);
    await makeWorkspace(second, WEIGHTS_BYTES); // other random weights: nothing of them is stored yet

    // The first fits.
    const a = (await cli(createArgs(first))) as SnapshotJson;
    expect(a.bytesNew).toBeGreaterThanOrEqual(WEIGHTS_BYTES);
    expect(await snapshotIds()).toEqual([a.id]);

    // The second would pass the quota: stopped as its chunks arrive, saying how much, of what, and what to do.
    const refused = await cp.cli(createArgs(second));
    expect(refused.code, refused.stdout).not.toBe(0);
    expect(refused.stdout).toBe("");
    const tenant = a.tenantId;
    expect(refused.stderr).toContain("[resource_exhausted] ");
    expect(refused.stderr).toContain(`tenant ${tenant}'s snapshots would store over its quota of `);
    expect(refused.stderr).toContain(
      " stored and arriving): forget snapshots it no longer needs and prune " +
        `(\`dumont snapshot forget --tenant ${tenant} --keep-last N --prune\`), or raise DUMONT_SNAPSHOT_QUOTA`,
    );
    // What it counted, in the quota's units and over it; to the byte where it passed by less than 0.05 MB.
    const counted = /quota of (?:6\.0 MB \((\d+\.\d) MB|6,000,000 bytes \(([\d,]+) bytes) stored and arriving\)/.exec(
      refused.stderr,
    );
    expect(counted, refused.stderr).not.toBeNull();
    const countedBytes = counted![1] ? Number(counted![1]) * 1e6 : Number(counted![2].replaceAll(",", ""));
    expect(countedBytes).toBeGreaterThan(counted![1] ? QUOTA_BYTES + 49_999 : QUOTA_BYTES);
    // No half snapshot: only the first is listed.
    expect(await snapshotIds()).toEqual([a.id]);

    // Forgetting the first and pruning makes room: what was refused is taken now, whole.
    const forgot = await cli(["snapshot", "forget", a.id, "--prune", "--json"]);
    expect(forgot).toMatchObject({ forgotten: [a.id] });
    expect(forgot.prune.bytesFreed).toBeGreaterThan(WEIGHTS_BYTES);
    expect(await snapshotIds()).toEqual([]);

    const b = (await cli(createArgs(second))) as SnapshotJson;
    expect(await snapshotIds()).toEqual([b.id]);
    const target = path.join(root, "restored");
    await cli(["snapshot", "restore", b.id, "--host", agent.hostId, "--target", target, "--json"]);
    expect(await describeTree(target)).toEqual(await describeTree(second));
  }, 120_000); // nine CLI runs, each a Node process: about 10 s alone, up to 40 s on two vCPUs beside other tests
});
