// The snapshot API's own checks, before any agent is involved: an in-process service on a test database.
import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { api } from "@dumont/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AgentSession, SessionRegistry } from "../agent-gateway/agent-session.js";
import { ensureTenant } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { insertHost } from "../db/host-repository.js";
import { openTestDatabase } from "../db/test-database.js";
import type { SnapshotCoordinator } from "../snapshots/snapshot-coordinator.js";
import { createApiKey } from "./auth.js";
import { snapshotService } from "./snapshot-service.js";

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
    await db
      .insertInto("snapshots")
      .values({
        id: "a".repeat(64),
        tenant_id: "t-a",
        host_id: "h-a",
        workspace_id: "w",
        path: "/w",
        epoch: 0,
        files: 1,
        bytes_read: 1,
        bytes_new: 1,
        bytes_stored: 1,
        chunks_new: 1,
        seconds: 1,
      })
      .execute();
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
