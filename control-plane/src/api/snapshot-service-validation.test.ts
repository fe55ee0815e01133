// The snapshot API refuses malformed request fields with a Connect code and a sentence naming the field, before
// the database or an agent sees them: an in-process service on a test database, a coordinator that records calls.
// Then `dumont snapshot …` (the built CLI, as a process): bad flags are refused before any request is sent.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { api } from "@dumont/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AgentSession, SessionRegistry } from "../agent-gateway/agent-session.js";
import { ensureTenant } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { insertHost } from "../db/host-repository.js";
import { insertTestSnapshot, openTestDatabase } from "../db/test-database.js";
import type { SnapshotCoordinator } from "../snapshots/snapshot-coordinator.js";
import { createApiKey } from "./auth.js";
import { snapshotService } from "./snapshot-service.js";

const ID = "ab120".padEnd(64, "0");
const TWIN = "ab12f".padEnd(64, "0"); // shares the prefix "ab12" with ID

let db: Db;
let close: () => Promise<void>;
let ctx: HandlerContext;
const calls: string[] = [];
/** What the coordinator was last called with. */
let lastArgs: unknown;
let service: ReturnType<typeof snapshotService>;

beforeAll(async () => {
  ({ db, close } = await openTestDatabase());
  for (const t of ["admin", "t-a"]) await ensureTenant(db, t, t);
  const { key } = await createApiKey(db, "admin", "admin", "operator");
  ctx = { requestHeader: new Headers({ authorization: `Bearer ${key}` }) } as HandlerContext;
  const sessions = new SessionRegistry();
  for (const id of ["h-a", "h-idle"]) {
    await insertHost(db, { id, tenantId: "t-a", name: id, hostname: id, agentVersion: "1", certSerial: id });
    sessions.add({ hostId: id, isOpen: true, require: () => {}, close: () => {} } as unknown as AgentSession);
  }
  // Enrolled, its agent not connected.
  await insertHost(db, {
    id: "h-away",
    tenantId: "t-a",
    name: "away",
    hostname: "away",
    agentVersion: "1",
    certSerial: "away",
  });
  for (const id of [ID, TWIN]) await insertTestSnapshot(db, id, "t-a", "h-a");
  const recorded = (name: string) => async (args: unknown) => {
    calls.push(name);
    lastArgs = args;
    throw new Error(`the coordinator's ${name} was reached`);
  };
  service = snapshotService({
    db,
    sessions,
    snapshots: {
      snapshot: recorded("snapshot"),
      restore: recorded("restore"),
      readManifest: recorded("readManifest"),
      forget: recorded("forget"),
    } as unknown as SnapshotCoordinator,
  });
});
afterAll(() => close());

const createReq = (fields: MessageInitShape<typeof api.CreateSnapshotRequestSchema>) => () =>
  service.createSnapshot(create(api.CreateSnapshotRequestSchema, { hostId: "h-a", path: "/w", ...fields }), ctx);
const restoreReq = (fields: MessageInitShape<typeof api.RestoreSnapshotRequestSchema>) => () =>
  service.restoreSnapshot(
    create(api.RestoreSnapshotRequestSchema, { snapshotId: ID, hostId: "h-a", target: "/restored", ...fields }),
    ctx,
  );
const lsReq = (snapshotId: string) => async () => {
  for await (const _ of service.listSnapshotFiles(create(api.ListSnapshotFilesRequestSchema, { snapshotId }), ctx));
};
const listReq = (fields: MessageInitShape<typeof api.ListSnapshotsRequestSchema>) => () =>
  service.listSnapshots(create(api.ListSnapshotsRequestSchema, fields), ctx);
const checkReq = (fields: MessageInitShape<typeof api.CheckSnapshotsRequestSchema>) => async () => {
  for await (const _ of service.checkSnapshots(create(api.CheckSnapshotsRequestSchema, fields), ctx));
};
const forgetReq = (fields: MessageInitShape<typeof api.ForgetSnapshotsRequestSchema>) => () =>
  service.forgetSnapshots(create(api.ForgetSnapshotsRequestSchema, { keepLast: 1, ...fields }), ctx);

async function failure(call: () => unknown): Promise<ConnectError> {
  try {
    await call();
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("the request was accepted");
}

describe("SnapshotService: malformed request fields", () => {
  const long = `/${"d".repeat(5000)}`;
  it.each<[string, () => unknown, Code, RegExp]>([
    [
      "a path with a NUL",
      createReq({ path: "/w\0x" }),
      Code.InvalidArgument,
      /^path must be an absolute path on the host \(no NUL, at most 4096 bytes\), got "\/w\\u0000x"$/,
    ],
    ["a path over PATH_MAX", createReq({ path: long }), Code.InvalidArgument, /^path must be .* got "\/d{79}…"$/],
    ["a host_id with a NUL", createReq({ hostId: "h-a\0" }), Code.InvalidArgument, /^host_id must be at most 256/],
    ["a workspace_id with a NUL", createReq({ workspaceId: "w\0" }), Code.InvalidArgument, /^workspace_id must be/],
    [
      // Indexed in the catalogue, whose rows Postgres caps: longer, the snapshot was stored and its row refused.
      "a workspace_id over 1024 bytes",
      createReq({ workspaceId: "é".repeat(513) }),
      Code.InvalidArgument,
      /^workspace_id must be at most 1024 bytes with no NUL \(the default is "<host_id>:<path>"\), got "é{80}…"$/,
    ],
    ["a target with a NUL", restoreReq({ target: "/r\0" }), Code.InvalidArgument, /^target must be an absolute path/],
    [
      "a restore's malformed snapshot_id",
      restoreReq({ snapshotId: "not-hex" }),
      Code.InvalidArgument,
      /^snapshot_id must be a snapshot id or a prefix of 4 to 64 hex characters, got "not-hex"$/,
    ],
    ["a restore's snapshot_id with a NUL", restoreReq({ snapshotId: "ab\0" }), Code.InvalidArgument, /^snapshot_id/],
    ["an ls's malformed snapshot_id", lsReq("zz\0"), Code.InvalidArgument, /^snapshot_id must be a snapshot id/],
    ["a list's host_id with a NUL", listReq({ hostId: "h\0" }), Code.InvalidArgument, /^host_id must be/],
    ["a list's workspace_id with a NUL", listReq({ workspaceId: "w\0" }), Code.InvalidArgument, /^workspace_id/],
    ["a forget's workspace_id with a NUL", forgetReq({ workspaceId: "w\0" }), Code.InvalidArgument, /^workspace_id/],
    [
      "a forget's snapshot_ids beside a policy",
      forgetReq({ snapshotIds: [ID] }),
      Code.InvalidArgument,
      /^snapshot_ids name the snapshots to forget: give no keep_\* or workspace_id with them/,
    ],
    [
      "a forget's workspace_id with only prune (it pruned every tenant holding that workspace, whole)",
      forgetReq({ workspaceId: "w", prune: true, keepLast: 0 }),
      Code.InvalidArgument,
      /^workspace_id narrows a keep_\* policy: give one with it/,
    ],
    [
      "a check's read_data_subset that is no subset",
      checkReq({ readDataSubset: "3/2" }),
      Code.InvalidArgument,
      /^read_data_subset "3\/2" is not a subset of the packs: give n\/t/,
    ],
    [
      "a check's read_data_subset beside structure_only",
      checkReq({ readDataSubset: "1/2", structureOnly: true }),
      Code.InvalidArgument,
      /^read_data_subset reads some packs, structure_only none: give one of them$/,
    ],
  ])("refuses %s", async (_, call, code, message) => {
    const err = await failure(call);
    expect(Code[err.code]).toBe(Code[code]);
    expect(err.rawMessage).toMatch(message);
    expect(calls).toEqual([]);
  });

  it("answers a caller without a key UNAUTHENTICATED before it judges the request's fields", async () => {
    const anonymous = { requestHeader: new Headers() } as HandlerContext;
    const err = await failure(async () => {
      const req = create(api.CheckSnapshotsRequestSchema, { readDataSubset: "3/2" });
      for await (const _ of service.checkSnapshots(req, anonymous));
    });
    expect(err.code).toBe(Code.Unauthenticated); // InvalidArgument before
  });

  it("takes a unique snapshot id prefix in restore and ls, as diff and forget do, and refuses an ambiguous one", async () => {
    expect((await failure(restoreReq({ snapshotId: "ab12" }))).rawMessage).toBe(
      "snapshot id prefix ab12 is ambiguous; give more characters",
    );
    expect((await failure(lsReq("AB12"))).code).toBe(Code.InvalidArgument);
    expect(calls).toEqual([]);
    await expect(restoreReq({ snapshotId: "ab120" })()).rejects.toThrow("the coordinator's restore was reached");
    await expect(lsReq("AB120")()).rejects.toThrow("the coordinator's readManifest was reached");
    expect(calls).toEqual(["restore", "readManifest"]);
    calls.length = 0;
  });

  it("says an unknown host_id to list names no host (it listed nothing), and lists nothing for a known one", async () => {
    const unknown = await failure(listReq({ hostId: "no-such-host" }));
    expect(unknown.code).toBe(Code.NotFound);
    expect(unknown.rawMessage).toBe("host no-such-host not found; list hosts with `dumont host list`");
    await expect(listReq({ hostId: "h-idle" })()).resolves.toMatchObject({ snapshots: [] });
    expect((await listReq({ hostId: "h-a" })()).snapshots?.map((s) => s.id)).toEqual([ID, TWIN]);
  });

  it("refuses a host whose agent is not connected, saying where to look, before the coordinator is asked", async () => {
    for (const req of [createReq({ hostId: "h-away" }), restoreReq({ hostId: "h-away" })]) {
      const refused = await failure(req);
      expect(refused.code).toBe(Code.FailedPrecondition);
      expect(refused.rawMessage).toMatch(
        /^host h-away is not connected \(status \w+\); .*`journalctl -u dumont-agent`/,
      );
    }
    expect(calls).toEqual([]);
  });

  it("says an unknown tenant_id to list names no tenant, as forget does; a tenant without snapshots lists none", async () => {
    const unknown = await failure(listReq({ tenantId: "t-typo" }));
    expect(unknown.code).toBe(Code.NotFound);
    expect(unknown.rawMessage).toBe('there is no tenant "t-typo": `dumont key list` shows the tenants that hold keys');
    await expect(listReq({ tenantId: "admin" })()).resolves.toMatchObject({ snapshots: [] });
  });
});

describe("dumont snapshot (admin CLI): bad flags, before any request", () => {
  const bin = fileURLToPath(new URL("../../bin/dumont.cjs", import.meta.url));
  const apiKey = `dumont_${"0".repeat(16)}_${"s".repeat(43)}`;
  // Nothing listens on port 1: a request that got that far fails "cannot reach".
  const env = { ...process.env, DUMONT_API_URL: "http://127.0.0.1:1", DUMONT_API_KEY: apiKey };
  const dumont = async (args: string[], extraEnv: Record<string, string> = {}) => {
    try {
      await promisify(execFile)(process.execPath, [bin, ...args], { env: { ...env, ...extraEnv } });
      return { code: 0, stdout: "", stderr: "" };
    } catch (err) {
      const { code, stdout, stderr } = err as { code: number; stdout: string; stderr: string };
      return { code, stdout, stderr };
    }
  };

  it.each<[string[], RegExp]>([
    [["create", "--host", "h", "--path", "rel"], /--path must be an absolute path on the host, got "rel"/],
    [["create", "--host", "", "--path", "/w"], /--host is empty: give a host id from `dumont host list`/],
    [["create", "--host", "h", "--path", "/w", "--path", "/v"], /--path was given twice: give it once/],
    [["create", "--host", "h", "--path", "/w", "--workspace", ""], /--workspace is empty: give a workspace id/],
    [["list", "--host", ""], /--host is empty/],
    [["list", "--tenant", ""], /--tenant is empty: give a tenant id/],
    [["restore", "abcd", "--host", "h", "--target", "rel"], /--target must be an absolute path on the host/],
    [["restore", "abcd", "--host", "h", "--host", "g", "--target", "/r"], /--host was given twice/],
    [
      ["restore", "abc", "--host", "h", "--target", "/r"],
      /^dumont: SNAPSHOT_ID "abc" is not a snapshot id: give an id/,
    ],
    [["ls", "not-hex"], /^dumont: SNAPSHOT_ID "not-hex" is not a snapshot id/],
    [["diff", "abcd", "zz"], /^dumont: SNAPSHOT_ID "zz" is not a snapshot id/],
    [["forget", "abcd", "xyz"], /^dumont: SNAPSHOT_ID "xyz" is not a snapshot id/],
    [["forget", "--keep-last", "0", "--prune"], /--keep-last must be a whole number from 1 to 4294967295, got "0"/],
    [["forget", "--keep-daily", "7", "--keep-daily", "1"], /--keep-daily was given twice/],
    [["forget", "abcd", "--keep-last", "3"], /^dumont: SNAPSHOT_IDs name the snapshots to forget: give no --keep-\*/],
    [["forget", "abcd", "--workspace", "w"], /^dumont: SNAPSHOT_IDs name the snapshots to forget: give no --keep-\*/],
    [["repair-snapshots", "abcd", "xyz"], /^dumont: SNAPSHOT_ID "xyz" is not a snapshot id/],
    [["repair-snapshots", "latest"], /^dumont: SNAPSHOT_ID "latest" is direct mode's: the control plane names/],
    [["repair-snapshots", "--tenant", ""], /--tenant is empty: give a tenant id/],
    [["check", "--read-data-subset", "0/3"], /^dumont: --read-data-subset "0\/3" is not a subset of the packs/],
    [
      ["check", "--read-data-subset", "1/3", "--structure-only"],
      /^dumont: --read-data-subset reads some packs, --structure-only none: give one of them/,
    ],
  ])("refuses snapshot %j", async (args, message) => {
    const res = await dumont(["snapshot", ...args, "--json"]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(message);
    expect(res.stderr).not.toMatch(/cannot reach/);
    expect(res.stdout).toBe("");
  });

  it("says the control plane cannot be reached, and where to point --api-url; refuses a URL it cannot speak to", async () => {
    const unreachable = await dumont(["snapshot", "list", "--json"]);
    expect(unreachable).toMatchObject({ code: 1, stdout: "" });
    expect(unreachable.stderr).toBe(
      "dumont: [unavailable] cannot reach the control plane at http://127.0.0.1:1 (ECONNREFUSED): start it, or " +
        "point --api-url (DUMONT_API_URL) at it\n",
    );
    const ftp = await dumont(["--api-url", "ftp://cp.example", "snapshot", "list"]);
    expect(ftp.stderr).toMatch(/^dumont: --api-url \(DUMONT_API_URL\) must be an http:\/\/ or https:\/\/ URL/);
  });

  it("refuses an API key with a line break without printing it (Node's header check quoted it whole)", async () => {
    const secret = "s3cr3t-do-not-print";
    const res = await dumont(["snapshot", "list"], { DUMONT_API_KEY: `${apiKey}\n${secret}` });
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/^dumont: DUMONT_API_KEY is not an API key: it holds a space, line break or other/);
    expect(res.stderr).not.toContain(secret);
  });
});

describe("SnapshotService: a snapshot's default workspace", () => {
  it("is <host_id>:<path>, or, for a path that would make it over 1024 bytes, the path's SHA-256", async () => {
    const path = `/${"p".repeat(3_000)}`;
    for (const [given, expected] of [
      ["/w", "h-a:/w"],
      [path, `h-a:sha256:${createHash("sha256").update(path).digest("hex")}`],
    ]) {
      calls.length = 0;
      await expect(createReq({ path: given })()).rejects.toThrow(/the coordinator's snapshot was reached/);
      expect(calls).toEqual(["snapshot"]);
      expect(lastArgs).toMatchObject({ workspaceId: expected });
    }
  });

  it("is one for every way of writing a directory's path: the agent is given it written plainly too", async () => {
    // "/w/d/" and "//w/./d" made workspaces of their own, which retention kept apart from "/w/d".
    for (const given of ["/w/d", "/w/d/", "//w/./d", "/w//d//", "/./w/d/."]) {
      await expect(createReq({ path: given })()).rejects.toThrow(/the coordinator's snapshot was reached/);
      expect(lastArgs).toMatchObject({ workspaceId: "h-a:/w/d", path: "/w/d" });
    }
    // ".." by its text, as the agent resolves the path it reads (so the workspace names the directory read).
    await expect(createReq({ path: "/w/x/../d/" })()).rejects.toThrow(/the coordinator's snapshot was reached/);
    expect(lastArgs).toMatchObject({ workspaceId: "h-a:/w/d", path: "/w/d" });
    await expect(createReq({ path: "/" })()).rejects.toThrow(/the coordinator's snapshot was reached/);
    expect(lastArgs).toMatchObject({ workspaceId: "h-a:/", path: "/" });
  });
});
