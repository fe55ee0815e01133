// The snapshot API's own checks, before any agent is involved: an in-process service on a test database.
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { api } from "@dumont/proto";
import { acquireLock, chunkCodec, openBlobStore, packKey, Repository, sealManifest } from "@dumont/repository";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AgentSession, SessionRegistry } from "../agent-gateway/agent-session.js";
import { ensureTenant } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { insertHost } from "../db/host-repository.js";
import { insertTestSnapshot, openTestDatabase } from "../db/test-database.js";
import { FailedPreconditionError, UnavailableError } from "../errors.js";
import { createLogger } from "../logger.js";
import { createMetrics } from "../metrics.js";
import { SnapshotCoordinator } from "../snapshots/snapshot-coordinator.js";
import { TenantKeys } from "../snapshots/tenant-keys.js";
import { createApiKey } from "./auth.js";
import { checkTenants, snapshotService } from "./snapshot-service.js";

describe("SnapshotService: restore", () => {
  let db: Db;
  let close: () => Promise<void>;
  let ctx: HandlerContext;
  const restored: string[] = [];
  const sessions = new SessionRegistry();

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    for (const t of ["admin", "t-a", "t-b"]) await ensureTenant(db, t, t);
    const { key } = await createApiKey(db, "admin", "admin", "operator");
    ctx = { requestHeader: new Headers({ authorization: `Bearer ${key}` }) } as HandlerContext;
    for (const [id, tenantId] of [
      ["h-a", "t-a"],
      ["h-b", "t-b"],
    ]) {
      await insertHost(db, { id, tenantId, name: id, hostname: id, agentVersion: "1", certSerial: id });
      sessions.add({ hostId: id, isOpen: true, require: () => {}, close: () => {} } as unknown as AgentSession);
    }
    await insertTestSnapshot(db, "a".repeat(64), "t-a", "h-a");
  });
  afterAll(() => close());

  const service = () =>
    snapshotService({
      db,
      sessions,
      snapshots: {
        restore: async (req: { session: AgentSession }) => {
          restored.push(req.session.hostId);
          return { files: 1, bytesWritten: 1, seconds: 0 };
        },
      } as unknown as SnapshotCoordinator,
    });
  const restore = (hostId: string) =>
    service().restoreSnapshot(
      create(api.RestoreSnapshotRequestSchema, { snapshotId: "a".repeat(64), hostId, target: "/restored" }),
      ctx,
    );

  it("restores a snapshot onto a host of its tenant only: another tenant's would be handed the key", async () => {
    await expect(restore("h-b")).rejects.toThrow(
      `snapshot ${"a".repeat(64)} belongs to tenant t-a and host h-b to tenant t-b`,
    );
    expect(restored).toEqual([]);
    await expect(restore("h-a")).resolves.toMatchObject({ files: 1n });
    expect(restored).toEqual(["h-a"]);
  });
});

/** A tenant and one host of it, named by their ids. */
async function tenantWithHost(db: Db, tenantId: string, hostId: string): Promise<void> {
  await ensureTenant(db, tenantId, tenantId);
  await insertHost(db, { id: hostId, tenantId, name: hostId, hostname: hostId, agentVersion: "1", certSerial: hostId });
}

/** A test database holding the operators' tenant, tenant t-a with its host h-a, and an admin caller's context. */
async function adminOfTenantA(): Promise<{ db: Db; close: () => Promise<void>; ctx: HandlerContext }> {
  const { db, close } = await openTestDatabase();
  await ensureTenant(db, "admin", "admin");
  await tenantWithHost(db, "t-a", "h-a");
  const { key } = await createApiKey(db, "admin", "admin", "operator");
  return { db, close, ctx: { requestHeader: new Headers({ authorization: `Bearer ${key}` }) } as HandlerContext };
}

/** The service over a coordinator that forgets nothing and notes each forget it is asked for, as "tenant/workspace". */
function recordingForgets(db: Db) {
  const asked: string[] = [];
  const service = snapshotService({
    db,
    sessions: new SessionRegistry(),
    snapshots: {
      forget: async (req: { tenantId: string; workspace?: string }) => {
        asked.push(`${req.tenantId}/${req.workspace}`);
        return { kept: [], forgotten: [] };
      },
    } as unknown as SnapshotCoordinator,
  });
  return { service, asked };
}

describe("SnapshotService: forget", () => {
  it("refuses a policy for a workspace no snapshot is of (a typo), and runs it for one that has them", async () => {
    const { db, close, ctx } = await adminOfTenantA();
    try {
      await insertTestSnapshot(db, "c".repeat(64), "t-a", "h-a"); // of workspace "w"
      const { service, asked: forgotten } = recordingForgets(db);
      const forget = async (workspaceId: string) =>
        service.forgetSnapshots(create(api.ForgetSnapshotsRequestSchema, { workspaceId, keepLast: 1 }), ctx);
      const refused = await forget("nope").catch((err: unknown) => ConnectError.from(err));
      expect(refused).toMatchObject({ code: Code.NotFound });
      expect((refused as ConnectError).rawMessage).toBe(
        'no snapshot is of workspace "nope"; `dumont snapshot list` shows each one\'s workspace',
      );
      expect(forgotten).toEqual([]);
      await forget("w");
      expect(forgotten).toEqual(["t-a/w"]);
    } finally {
      await close();
    }
  });
});

describe("SnapshotService: forget for a tenant", () => {
  it("refuses a tenant that does not exist (a typo: retention left undone), and does nothing for one with nothing to forget", async () => {
    const { db, close, ctx } = await adminOfTenantA();
    try {
      await tenantWithHost(db, "t-b", "h-b"); // no snapshot, no repository
      const { service, asked } = recordingForgets(db);
      for (const fields of [{ keepLast: 1 }, { prune: true }, { prune: true, dryRun: true }]) {
        const refused = await Promise.resolve(
          service.forgetSnapshots(create(api.ForgetSnapshotsRequestSchema, { tenantId: "t-nosuch", ...fields }), ctx),
        ).catch((err: unknown) => ConnectError.from(err));
        expect(refused).toMatchObject({ code: Code.NotFound });
        expect((refused as ConnectError).rawMessage).toBe(
          'there is no tenant "t-nosuch": `dumont key list` shows the tenants that hold keys',
        );
        const nothing = await service.forgetSnapshots(
          create(api.ForgetSnapshotsRequestSchema, { tenantId: "t-b", ...fields }),
          ctx,
        );
        expect(nothing).toMatchObject({ forgotten: [], kept: [] });
      }
      expect(asked).toEqual([]);
    } finally {
      await close();
    }
  });
});

describe("SnapshotService: forget, where two tenants have a workspace of one name", () => {
  it("refuses a policy for it without tenant_id, naming the tenants, and forgets only the one named", async () => {
    // Workspace ids are free text: a policy meant for one tenant's "w" forgot and pruned the other's (helper-67).
    const { db, close, ctx } = await adminOfTenantA();
    try {
      await tenantWithHost(db, "t-b", "h-b");
      await insertTestSnapshot(db, "a".repeat(64), "t-a", "h-a"); // of workspace "w"
      await insertTestSnapshot(db, "b".repeat(64), "t-b", "h-b"); // of workspace "w" too
      const { service, asked } = recordingForgets(db);
      const forget = async (fields: object) =>
        service.forgetSnapshots(
          create(api.ForgetSnapshotsRequestSchema, { workspaceId: "w", keepLast: 1, ...fields }),
          ctx,
        );
      const refused = await forget({}).catch((err: unknown) => ConnectError.from(err));
      expect(refused).toMatchObject({ code: Code.InvalidArgument });
      expect((refused as ConnectError).rawMessage).toBe(
        'workspace "w" has snapshots in 2 tenants (t-a, t-b): give tenant_id (`--tenant`) to say whose',
      );
      expect(asked).toEqual([]);
      await forget({ tenantId: "t-b" });
      expect(asked).toEqual(["t-b/w"]);
      const none = await forget({ tenantId: "t-c" }).catch((err: unknown) => ConnectError.from(err));
      expect(none).toMatchObject({ code: Code.NotFound });
      expect((none as ConnectError).rawMessage).toMatch(/^no snapshot of tenant "t-c" is of workspace "w"/);
    } finally {
      await close();
    }
  });
});

describe("SnapshotService: repair the index", () => {
  it("repairs every tenant with a repository it can, saying why one was not; a tenant named must have one", async () => {
    const { db, close, ctx } = await adminOfTenantA();
    try {
      await tenantWithHost(db, "t-b", "h-b");
      await tenantWithHost(db, "t-c", "h-c");
      await tenantWithHost(db, "t-none", "h-none");
      // A repository is made with a tenant's key, at its first snapshot: t-c's were all forgotten since (its packs
      // stay until a prune), and t-none never took one.
      const keys = new TenantKeys(db, randomBytes(32));
      for (const tenant of ["t-a", "t-b", "t-c"]) await keys.get(tenant);
      await insertTestSnapshot(db, "a".repeat(64), "t-a", "h-a");
      await insertTestSnapshot(db, "b".repeat(64), "t-b", "h-b");
      const asked: string[] = [];
      const service = snapshotService({
        db,
        sessions: new SessionRegistry(),
        snapshots: {
          repairIndex: async (tenantId: string, { dryRun }: { dryRun: boolean }) => {
            asked.push(`${tenantId}${dryRun ? " (dry run)" : ""}`);
            if (tenantId === "t-c") return { packs: 1, rebuilt: [], removed: [], unrepairable: [] };
            if (tenantId === "t-a") {
              throw new FailedPreconditionError(
                "1 snapshot, restore or check of tenant t-a is running; repair the index again when it has ended",
              );
            }
            return {
              packs: 3,
              rebuilt: ["p1"],
              removed: [],
              unrepairable: [{ pack: "p2", message: "pack p2: damaged" }],
            };
          },
        } as unknown as SnapshotCoordinator,
      });
      const caller = { ...ctx, signal: new AbortController().signal } as HandlerContext;
      const repair = async (fields: { tenantId?: string; dryRun?: boolean }) =>
        (await service.repairIndex(create(api.RepairIndexRequestSchema, fields), caller)) as api.RepairIndexResponse;
      const all = await repair({});
      expect(all.tenants.map((t) => [t.tenantId, t.error, t.rebuilt, t.packs])).toEqual([
        [
          "t-a",
          "1 snapshot, restore or check of tenant t-a is running; repair the index again when it has ended",
          [],
          0n,
        ],
        ["t-b", "", ["p1"], 3n],
        ["t-c", "", [], 1n],
      ]);
      expect(all.tenants[1].unrepairable.map((p) => p.message)).toEqual(["pack p2: damaged"]);
      expect((await repair({ tenantId: "t-b", dryRun: true })).tenants.map((t) => t.tenantId)).toEqual(["t-b"]);
      expect(asked).toEqual(["t-a", "t-b", "t-c", "t-b (dry run)"]);
      const typo = await repair({ tenantId: "t-typo" }).catch((err: unknown) => ConnectError.from(err));
      expect(typo).toMatchObject({
        code: Code.NotFound,
        rawMessage: expect.stringMatching(/^there is no tenant "t-typo"/),
      });
      const unknown = await repair({ tenantId: "t-none" }).catch((err: unknown) => ConnectError.from(err));
      expect(unknown).toMatchObject({ code: Code.NotFound });
      expect((unknown as ConnectError).rawMessage).toBe(
        'tenant "t-none" has no repository (it never took a snapshot): there is no index of it to repair',
      );
    } finally {
      await close();
    }
  });
});

describe("SnapshotService: repairs are cancelled with their call", () => {
  it("hands the call's signal to the coordinator's index and pack repairs (a client that hangs up stops them)", async () => {
    const { db, close, ctx } = await adminOfTenantA();
    try {
      await new TenantKeys(db, randomBytes(32)).get("t-a"); // a tenant with a key has a repository to repair
      await insertTestSnapshot(db, "a".repeat(64), "t-a", "h-a");
      const given: [string, AbortSignal | undefined][] = [];
      const report = { packs: 0, packsRead: 0, rebuilt: [], removed: [], unrepairable: [], repaired: [], skipped: [] };
      const service = snapshotService({
        db,
        sessions: new SessionRegistry(),
        snapshots: {
          repairIndex: async (_tenantId: string, { signal }: { signal?: AbortSignal }) => {
            given.push(["index", signal]);
            return report;
          },
          repairPacks: async (_tenantId: string, { signal }: { signal?: AbortSignal }) => {
            given.push(["packs", signal]);
            return { ...report, lost: [] };
          },
        } as unknown as SnapshotCoordinator,
      });
      const caller = { ...ctx, signal: new AbortController().signal } as HandlerContext;
      await service.repairIndex(create(api.RepairIndexRequestSchema, { tenantId: "t-a" }), caller);
      await service.repairPacks(create(api.RepairPacksRequestSchema, { tenantId: "t-a" }), caller);
      expect(given).toEqual([
        ["index", caller.signal],
        ["packs", caller.signal],
      ]);
      expect(given.every(([, signal]) => signal === caller.signal)).toBe(true); // the very object, not an equal one
    } finally {
      await close();
    }
  });
});

/**
 * A repair's world, made before the describe's tests and removed after: an admin of tenant t-a calling (a caller
 * that stays), tenants t-b and t-none with a host each, a temporary blob directory, and a real coordinator over it.
 */
function useRepairTenants(name: string) {
  const f = {} as {
    db: Db;
    caller: HandlerContext;
    blobs: string;
    keys: TenantKeys;
    coordinator: SnapshotCoordinator;
    storeOf: (tenantId: string) => ReturnType<typeof openBlobStore>;
    service: () => ReturnType<typeof snapshotService>;
  };
  let close = async () => {};
  beforeAll(async () => {
    const admin = await adminOfTenantA();
    ({ db: f.db, close } = admin);
    f.caller = { ...admin.ctx, signal: new AbortController().signal } as HandlerContext;
    await tenantWithHost(f.db, "t-b", "h-b");
    await tenantWithHost(f.db, "t-none", "h-none");
    f.blobs = await fs.mkdtemp(path.join(os.tmpdir(), `dumont-${name}-`));
    f.keys = new TenantKeys(f.db, randomBytes(32));
    f.coordinator = new SnapshotCoordinator(f.db, f.keys, `file://${f.blobs}`, createLogger("silent"), createMetrics());
    f.storeOf = (tenantId) => openBlobStore(`file://${f.blobs}/tenants/${tenantId}`);
    f.service = () => snapshotService({ db: f.db, sessions: new SessionRegistry(), snapshots: f.coordinator });
  });
  afterAll(async () => {
    await f.coordinator?.close();
    await close();
    if (f.blobs) await fs.rm(f.blobs, { recursive: true, force: true });
  });
  return f;
}

describe("SnapshotService: repair packs", () => {
  const f = useRepairTenants("repair-packs");
  let keyOfA: Buffer;

  beforeAll(async () => {
    // t-a has a repository; t-b a key whose repository is not in the store (none made yet); t-none neither.
    keyOfA = await f.keys.get("t-a");
    await f.keys.get("t-b");
    await Repository.openOrInit(f.storeOf("t-a"), keyOfA);
  });

  const repair = async (fields: { tenantId?: string; dryRun?: boolean; packs?: string[] }) =>
    (await f.service().repairPacks(create(api.RepairPacksRequestSchema, fields), f.caller)) as api.RepairPacksResponse;
  const refusal = (fields: Parameters<typeof repair>[0]) =>
    repair(fields).catch((err: unknown) => ConnectError.from(err));

  it("refuses pack ids without the tenant whose repository holds them, and ids that are not pack ids, naming them", async () => {
    expect(await refusal({ packs: ["0123abcd"] })).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "packs: pack ids belong to one tenant's repository; give tenant_id (--tenant)",
    });
    expect(await refusal({ tenantId: "t-a", packs: ["0123abcd", "0123abc"] })).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage:
        "packs[1] must be a pack id or a prefix of 8 to 64 hex characters (`dumont snapshot check` names the " +
        'damaged ones), got "0123abc"',
    });
    expect(await refusal({ tenantId: "t-a", packs: ["not-hex!"] })).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: expect.stringMatching(/^packs\[0\] must be a pack id .*, got "not-hex!"$/),
    });
    const many = Array.from({ length: 1001 }, (_, i) => i.toString(16).padStart(8, "0"));
    expect(await refusal({ tenantId: "t-a", packs: many })).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "packs names 1001 packs; at most 1000 at once (or none: every pack of the tenant)",
    });
  });

  it("answers a pack its repository does not hold, or a tenant without one, NOT_FOUND by name", async () => {
    expect(await refusal({ tenantId: "t-a", packs: ["0BADC0DE"] })).toMatchObject({
      code: Code.NotFound,
      rawMessage: expect.stringMatching(/^no pack 0BADC0DE is in file:\/\/.*; `snapshot check` names/),
    });
    expect(await refusal({ tenantId: "t-b", packs: ["0badc0de"] })).toMatchObject({
      code: Code.NotFound,
      rawMessage: "tenant t-b has no repository: it holds no packs",
    });
    expect(await refusal({ tenantId: "t-none" })).toMatchObject({
      code: Code.NotFound,
      rawMessage: 'tenant "t-none" has no repository (it never took a snapshot): there are no packs of it to repair',
    });
    expect(await refusal({ tenantId: "t-typo" })).toMatchObject({
      code: Code.NotFound,
      rawMessage: 'there is no tenant "t-typo": `dumont key list` shows the tenants that hold keys',
    });
  });

  it("repairs every tenant with a repository it can, saying why one is not: its repository held elsewhere", async () => {
    const all = await repair({ dryRun: true });
    expect(all.tenants.map((t) => [t.tenantId, t.packs, t.packsRead, t.error])).toEqual([
      ["t-a", 0n, 0n, ""],
      ["t-b", 0n, 0n, ""],
    ]);
    // A prune from another process holds t-a's repository: t-a says so, named or not, and t-b is repaired.
    const held = await acquireLock(f.storeOf("t-a"), keyOfA, { exclusive: true, purpose: "a prune" });
    try {
      const busy = await repair({});
      expect(busy.tenants.map((t) => [t.tenantId, t.error])).toEqual([
        ["t-a", expect.stringMatching(/^tenant t-a: the repository is locked by a prune \(pid /)],
        ["t-b", ""],
      ]);
      const named = await repair({ tenantId: "t-a", packs: ["0badc0de"] });
      expect(named.tenants.map((t) => [t.tenantId, t.error])).toEqual([
        ["t-a", expect.stringMatching(/the repository is locked by a prune/)],
      ]);
    } finally {
      await held.release();
    }
  });
});

describe("SnapshotService: repair snapshots", () => {
  const f = useRepairTenants("repair-snapshots");
  /** Each tenant's damaged snapshot: kept.bin whole, lost.bin's pack gone from the store. */
  const damaged: Record<string, string> = {};
  const records = async (tenantId: string) =>
    (await fs.readdir(path.join(f.blobs, "tenants", tenantId, "snapshots"))).sort();

  /** A snapshot of kept.bin (2,000 bytes) and lost.bin (3,000), each in a pack of its own; lost.bin's pack is deleted. */
  const damagedSnapshot = async (tenantId: string) => {
    const key = await f.keys.get(tenantId);
    const { repository } = await Repository.openOrInit(f.storeOf(tenantId), key);
    const [kept, lost] = [randomBytes(2_000), randomBytes(3_000)].map((plain) => ({
      ...chunkCodec.sealChunk(key, plain),
      plainLength: plain.length,
    }));
    const writer = await repository.writer();
    await writer.put([kept]);
    await writer.flush();
    await writer.put([lost]);
    const file = (name: string, c: typeof kept) => ({
      type: "file" as const,
      path: name,
      mode: 0o644,
      mtimeNs: "0",
      size: c.plainLength,
      chunks: [c.id.toString("hex")],
      lengths: [c.plainLength],
    });
    const entries = [file("kept.bin", kept), file("lost.bin", lost)];
    const id = await writer.commit([sealManifest(key, { version: 1, entries })], {
      workspace: "w",
      epoch: 0,
      tenant: tenantId,
    });
    await repository.store.delete(packKey((await repository.loadIndex()).get(lost.id)!.packId));
    return id;
  };

  beforeAll(async () => {
    for (const tenantId of ["t-a", "t-b"]) damaged[tenantId] = await damagedSnapshot(tenantId);
    await f.coordinator.relistAll(); // catalogued, as the control plane lists what its repositories hold
  });

  const repair = async (fields: MessageInitShape<typeof api.RepairSnapshotsRequestSchema>) =>
    (await f
      .service()
      .repairSnapshots(create(api.RepairSnapshotsRequestSchema, fields), f.caller)) as api.RepairSnapshotsResponse;
  const refusal = (fields: Parameters<typeof repair>[0]) =>
    repair(fields).catch((err: unknown) => ConnectError.from(err));
  const listed = async (tenantId: string) =>
    (
      (await f
        .service()
        .listSnapshots(create(api.ListSnapshotsRequestSchema, { tenantId }), f.caller)) as api.ListSnapshotsResponse
    ).snapshots;
  /** What a tenant's answer says of its damaged snapshot, beside `more`. */
  const tenantRepair = (tenantId: string, more: object = {}) => ({
    tenantId,
    snapshots: 1n,
    repaired: [
      expect.objectContaining({
        snapshotId: damaged[tenantId],
        workspaceId: "w",
        time: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
        repairedId: "",
        reused: false,
        forgotten: false,
        filesRemoved: 1n,
        bytesRemoved: 3_000n,
        removed: [
          expect.objectContaining({
            path: "lost.bin",
            reason: expect.stringMatching(/^chunk \w{12} is in pack \w{12}, which the store no longer has$/),
          }),
        ],
        ...more,
      }),
    ],
    unrepairable: [],
    error: "",
  });

  it("refuses snapshot ids that are not ids, or too many, naming the field; an id in no tenant (or not the one named) is NOT_FOUND by name", async () => {
    expect(await refusal({ snapshotIds: ["0123abcd", "xyz"] })).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: 'snapshot_ids[1] must be a snapshot id or a prefix of 4 to 64 hex characters, got "xyz"',
    });
    expect(await refusal({ snapshotIds: ["abc"] })).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: 'snapshot_ids[0] must be a snapshot id or a prefix of 4 to 64 hex characters, got "abc"',
    });
    const many = Array.from({ length: 1001 }, (_, i) => i.toString(16).padStart(8, "0"));
    expect(await refusal({ snapshotIds: many })).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "snapshot_ids names 1001 snapshots; at most 1000 at once (or none: every snapshot)",
    });
    expect(await refusal({ snapshotIds: [damaged["t-a"], "0123abcd"] })).toMatchObject({
      code: Code.NotFound,
      rawMessage: "snapshot 0123abcd not found; list them with `dumont snapshot list`",
    });
    expect(await refusal({ snapshotIds: [damaged["t-b"]], tenantId: "t-a" })).toMatchObject({
      code: Code.NotFound,
      rawMessage: `snapshot ${damaged["t-b"]} not found; list them with \`dumont snapshot list\``,
    });
    expect(await refusal({ tenantId: "T_A" })).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: expect.stringMatching(/^tenant_id must be 2..63 lowercase letters/),
    });
    expect(await refusal({ tenantId: "t-none" })).toMatchObject({
      code: Code.NotFound,
      rawMessage:
        'tenant "t-none" has no repository (it never took a snapshot): there are no snapshots of it to repair',
    });
    expect(await refusal({ tenantId: "t-typo" })).toMatchObject({
      code: Code.NotFound,
      rawMessage: 'there is no tenant "t-typo": `dumont key list` shows the tenants that hold keys',
    });
    // Nothing was repaired: each tenant holds its one snapshot.
    for (const tenantId of ["t-a", "t-b"]) expect(await records(tenantId)).toEqual([damaged[tenantId]]);
  });

  it("repairs each snapshot named in its own tenant's repository, or every tenant's; a dry run changes nothing", async () => {
    // Named by a prefix and in full, one of each tenant: each tenant is asked for its own, in the order named.
    const named = await repair({ snapshotIds: [damaged["t-b"].slice(0, 8), damaged["t-a"]], dryRun: true });
    expect(named.tenants).toEqual([
      expect.objectContaining(tenantRepair("t-b")),
      expect.objectContaining(tenantRepair("t-a")),
    ]);
    const all = await repair({ dryRun: true, forget: true });
    expect(all.tenants).toEqual([
      expect.objectContaining(tenantRepair("t-a", { forgotten: true })),
      expect.objectContaining(tenantRepair("t-b", { forgotten: true })),
    ]);
    for (const tenantId of ["t-a", "t-b"]) {
      expect(await records(tenantId)).toEqual([damaged[tenantId]]);
      expect((await listed(tenantId)).map((s) => s.id)).toEqual([damaged[tenantId]]);
    }
  });

  it("repairs every tenant it can with forget, saying why one is not; each repair is listed in place of the damaged one", async () => {
    // A prune from another process holds t-b's repository: t-b says so, and t-a is repaired.
    const held = await acquireLock(f.storeOf("t-b"), await f.keys.get("t-b"), { exclusive: true, purpose: "a prune" });
    let repairedA: string;
    try {
      const res = await repair({ forget: true });
      expect(res.tenants.map((t) => [t.tenantId, t.error])).toEqual([
        ["t-a", ""],
        ["t-b", expect.stringMatching(/^tenant t-b: the repository is locked by a prune \(pid /)],
      ]);
      repairedA = res.tenants[0].repaired[0].repairedId;
      expect(res.tenants[0]).toEqual(
        expect.objectContaining(
          tenantRepair("t-a", { repairedId: expect.stringMatching(/^[0-9a-f]{64}$/), forgotten: true }),
        ),
      );
    } finally {
      await held.release();
    }
    const [listedA] = await listed("t-a");
    expect(listedA).toMatchObject({ id: repairedA, workspaceId: "w", files: 1n, bytesTotal: 2_000n });
    expect(await records("t-a")).toEqual([repairedA]);
    expect(await records("t-b")).toEqual([damaged["t-b"]]);
    const b = await repair({ tenantId: "t-b", forget: true });
    expect(b.tenants).toEqual([
      expect.objectContaining(
        tenantRepair("t-b", { repairedId: expect.stringMatching(/^[0-9a-f]{64}$/), forgotten: true }),
      ),
    ]);
    expect((await listed("t-b")).map((s) => s.id)).toEqual([b.tenants[0].repaired[0].repairedId]);
    // Nothing is damaged now: a repair of every tenant reads one snapshot each and repairs none.
    const none = await repair({});
    expect(none.tenants.map((t) => [t.tenantId, t.snapshots, t.repaired.length, t.error])).toEqual([
      ["t-a", 1n, 0, ""],
      ["t-b", 1n, 0, ""],
    ]);
  });
});

describe("SnapshotService: check", () => {
  it("checks one tenant's repository when named; a tenant without one, or none at all, is NOT_FOUND by name", async () => {
    const { db, close, ctx } = await adminOfTenantA();
    try {
      await tenantWithHost(db, "t-b", "h-b");
      await tenantWithHost(db, "t-none", "h-none");
      const keys = new TenantKeys(db, randomBytes(32));
      for (const tenant of ["t-a", "t-b"]) await keys.get(tenant); // their repositories; t-none never had one
      const asked: string[] = [];
      const service = snapshotService({
        db,
        sessions: new SessionRegistry(),
        snapshots: {
          check: async (tenantId: string) => {
            asked.push(tenantId);
            return { ok: true, snapshots: 1, packs: 1, packsRead: 1, chunks: 2, bytesChecked: 10, problems: [] };
          },
        } as unknown as SnapshotCoordinator,
      });
      const caller = { ...ctx, signal: new AbortController().signal } as HandlerContext;
      const check = async (tenantId: string) => {
        let report: api.CheckReport | undefined;
        for await (const e of service.checkSnapshots(create(api.CheckSnapshotsRequestSchema, { tenantId }), caller)) {
          const { event } = e as api.CheckSnapshotsEvent; // made with create(): a whole message
          if (event.case === "report") report = event.value;
        }
        return report;
      };
      expect((await check(""))?.snapshots).toBe(2n);
      expect(asked.sort()).toEqual(["t-a", "t-b"]);
      asked.length = 0;
      expect((await check("t-b"))?.snapshots).toBe(1n);
      expect(asked).toEqual(["t-b"]);
      const refusal = (tenantId: string) => check(tenantId).catch((err: unknown) => ConnectError.from(err));
      expect(await refusal("t-none")).toMatchObject({
        code: Code.NotFound,
        rawMessage: 'tenant "t-none" has no repository (it never took a snapshot): there is nothing of it to check',
      });
      expect(await refusal("t-typo")).toMatchObject({
        code: Code.NotFound,
        rawMessage: 'there is no tenant "t-typo": `dumont key list` shows the tenants that hold keys',
      });
      expect(asked).toEqual(["t-b"]);
      // Stats says the same of the same tenants (it answered an empty list for both: "no tenant has a repository").
      const stats = (tenantId: string) =>
        Promise.resolve(
          service.getSnapshotStats(create(api.GetSnapshotStatsRequestSchema, { tenantId }), caller),
        ).catch((err: unknown) => ConnectError.from(err));
      expect(await stats("t-none")).toMatchObject({
        code: Code.NotFound,
        rawMessage:
          'tenant "t-none" has no repository (it never took a snapshot): there are no snapshots of it to count',
      });
      expect(await stats("t-typo")).toMatchObject({ code: Code.NotFound, rawMessage: /^there is no tenant "t-typo"/ });
    } finally {
      await close();
    }
  });
});

describe("SnapshotService: list", () => {
  let db: Db;
  let close: () => Promise<void>;
  let ctx: HandlerContext;

  beforeAll(async () => {
    ({ db, close, ctx } = await adminOfTenantA());
  });
  afterAll(() => close());

  it("gives each snapshot's size beside what it stored, and none for a row from before sizes were kept", async () => {
    await insertTestSnapshot(db, "b".repeat(64), "t-a", "h-a"); // a row as the migration leaves it: no size
    await insertTestSnapshot(db, "c".repeat(64), "t-a", "h-a");
    await db.updateTable("snapshots").set({ bytes_total: 3_040_870 }).where("id", "=", "c".repeat(64)).execute();
    const service = snapshotService({ db, sessions: new SessionRegistry(), snapshots: {} as SnapshotCoordinator });
    const { snapshots } = (await service.listSnapshots(
      create(api.ListSnapshotsRequestSchema, {}),
      ctx,
    )) as api.ListSnapshotsResponse;
    expect(snapshots.map((s) => [s.id[0], s.bytesTotal, s.bytesStored])).toEqual([
      ["b", undefined, 1n],
      ["c", 3_040_870n, 1n],
    ]);
  });

  it("names each snapshot's tenant, and lists one tenant's when asked", async () => {
    await tenantWithHost(db, "t-b", "h-b");
    await insertTestSnapshot(db, "d".repeat(64), "t-b", "h-b");
    const service = snapshotService({ db, sessions: new SessionRegistry(), snapshots: {} as SnapshotCoordinator });
    const list = async (tenantId: string) =>
      (
        (await service.listSnapshots(
          create(api.ListSnapshotsRequestSchema, { tenantId }),
          ctx,
        )) as api.ListSnapshotsResponse
      ).snapshots.map((s) => `${s.tenantId}/${s.id[0]}`);
    expect(await list("")).toEqual(["t-a/b", "t-a/c", "t-b/d"]);
    expect(await list("t-b")).toEqual(["t-b/d"]);
    // A tenant that does not exist is a typo, said so (a tenant without snapshots lists none).
    expect(await list("t-c").catch((err: unknown) => ConnectError.from(err))).toMatchObject({ code: Code.NotFound });
    const bad = await list("T_B").catch((err: unknown) => ConnectError.from(err));
    expect(bad).toMatchObject({ code: Code.InvalidArgument });
    expect((bad as ConnectError).rawMessage).toMatch(/^tenant_id must be 2..63 lowercase letters/);
  });

  it("refuses to compare two tenants' snapshots, reading neither", async () => {
    const read: string[] = [];
    const coordinator = new Proxy({}, { get: (_t, name) => () => void read.push(String(name)) }) as SnapshotCoordinator;
    const service = snapshotService({ db, sessions: new SessionRegistry(), snapshots: coordinator });
    const diff = async (beforeId: string, afterId: string) => {
      for await (const _ of service.diffSnapshots(create(api.DiffSnapshotsRequestSchema, { beforeId, afterId }), ctx));
    };
    const err = await diff("c".repeat(64), "d".repeat(64)).catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.InvalidArgument });
    expect((err as ConnectError).rawMessage).toBe(
      "before_id and after_id are snapshots of different tenants: compare one tenant's",
    );
    expect(read).toEqual([]);
  });
});

describe("SnapshotService: admin keys only", () => {
  let db: Db;
  let close: () => Promise<void>;
  const touched: string[] = [];

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    await ensureTenant(db, "t-a", "t-a");
  });
  afterAll(() => close());

  it("refuses provider and consumer keys on every call, streams included, before any work starts", async () => {
    const coordinator = new Proxy(
      {},
      {
        get: (_t, name) => () => {
          touched.push(String(name));
          throw new Error(`coordinator.${String(name)} was called`);
        },
      },
    ) as SnapshotCoordinator;
    const service = snapshotService({ db, sessions: new SessionRegistry(), snapshots: coordinator });
    const id = "a".repeat(64);
    const drain = async (stream: AsyncIterable<unknown>) => {
      for await (const _ of stream);
    };
    for (const role of ["provider", "consumer"] as const) {
      const { key } = await createApiKey(db, "t-a", role, role);
      const ctx = { requestHeader: new Headers({ authorization: `Bearer ${key}` }) } as HandlerContext;
      const snapshot = create(api.CreateSnapshotRequestSchema, { hostId: "h-a", path: "/w" });
      const restore = create(api.RestoreSnapshotRequestSchema, { snapshotId: id, hostId: "h-a", target: "/r" });
      const calls: Promise<unknown>[] = [
        Promise.resolve(service.createSnapshot(snapshot, ctx)),
        drain(service.createSnapshotStream(snapshot, ctx)),
        Promise.resolve(service.listSnapshots(create(api.ListSnapshotsRequestSchema, {}), ctx)),
        Promise.resolve(service.restoreSnapshot(restore, ctx)),
        drain(service.restoreSnapshotStream(restore, ctx)),
        Promise.resolve(service.forgetSnapshots(create(api.ForgetSnapshotsRequestSchema, { keepLast: 1 }), ctx)),
        drain(service.checkSnapshots(create(api.CheckSnapshotsRequestSchema, {}), ctx)),
        Promise.resolve(service.repairIndex(create(api.RepairIndexRequestSchema, {}), ctx)),
        Promise.resolve(service.repairPacks(create(api.RepairPacksRequestSchema, {}), ctx)),
        Promise.resolve(service.repairSnapshots(create(api.RepairSnapshotsRequestSchema, {}), ctx)),
        drain(service.diffSnapshots(create(api.DiffSnapshotsRequestSchema, { beforeId: id, afterId: id }), ctx)),
        drain(service.listSnapshotFiles(create(api.ListSnapshotFilesRequestSchema, { snapshotId: id }), ctx)),
      ];
      // Settled together: a call awaited after another's rejection would be an unhandled rejection meanwhile.
      const outcomes = await Promise.all(
        calls.map((call) =>
          call.then(
            () => undefined,
            (err: unknown) => err,
          ),
        ),
      );
      for (const [i, outcome] of outcomes.entries()) {
        const err = ConnectError.from(outcome ?? new Error(`call ${i} answered`));
        expect(err.rawMessage, `call ${i}`).toBe(`this call needs an admin API key; yours is a ${role} key`);
        expect(err.code, `call ${i}`).toBe(Code.PermissionDenied);
      }
    }
    expect(touched).toEqual([]);
  });
});

describe("checkTenants", () => {
  it("answers each problem with its tenant, the files named, and how many more files it breaks", async () => {
    // check names at most 100 files a problem breaks: the count of the rest must reach the API's caller too.
    const reports: Record<string, object> = {
      "t-1": {
        ok: false,
        snapshots: 2,
        packs: 3,
        packsRead: 3,
        chunks: 9,
        bytesChecked: 1_000,
        problems: [
          {
            kind: "pack-missing",
            pack: "p1",
            message: "pack p1 is indexed but missing; it breaks ...",
            files: [{ snapshot: "s1", path: "a.bin" }],
            filesNotNamed: 250,
          },
        ],
      },
      "t-2": { ok: true, snapshots: 1, packs: 1, packsRead: 1, chunks: 1, bytesChecked: 10, problems: [] },
    };
    const snapshots = { check: async (tenantId: string) => reports[tenantId] } as unknown as SnapshotCoordinator;
    const out = await checkTenants(snapshots, ["t-1", "t-2"], { readData: true, readSubset: undefined }, () => {});
    expect(out.ok).toBe(false);
    expect(out.snapshots).toBe(3n);
    expect(out.problems).toHaveLength(1);
    expect(out.problems[0]).toMatchObject({
      tenantId: "t-1",
      kind: "pack-missing",
      pack: "p1",
      message: "tenant t-1: pack p1 is indexed but missing; it breaks ...",
      files: [{ snapshotId: "s1", path: "a.bin" }],
      filesNotNamed: 250n,
    });
  });

  it("checks the other tenants past one whose check cannot run, naming it; fails as it did when none could run", async () => {
    const sound = { ok: true, snapshots: 1, packs: 1, packsRead: 1, chunks: 1, bytesChecked: 10, problems: [] };
    const snapshots = {
      check: async (tenantId: string) => {
        if (tenantId === "t-down") throw new UnavailableError("the blob store did not answer");
        if (tenantId === "t-bug") throw new TypeError("x is undefined");
        return sound;
      },
    } as unknown as SnapshotCoordinator;
    const reading = { readData: true, readSubset: undefined };
    const out = await checkTenants(snapshots, ["t-down", "t-bug", "t-ok"], reading, () => {});
    expect(out.ok).toBe(false);
    expect(out.snapshots).toBe(1n);
    expect(out.problems.map((p) => [p.tenantId, p.kind, p.message])).toEqual([
      ["t-down", "check-failed", "tenant t-down: the check could not run: the blob store did not answer"],
      // What went wrong unexpectedly stays in the control plane's log, as an API error's would.
      [
        "t-bug",
        "check-failed",
        "tenant t-bug: the check could not run: internal error; the control plane's log has it",
      ],
    ]);
    await expect(checkTenants(snapshots, ["t-down"], reading, () => {})).rejects.toBeInstanceOf(UnavailableError);
  });
});
