// The control plane's blob store going away (S3 unreachable) under it, for real: a control plane on a real
// S3-compatible server (s3rver on loopback) that is then stopped. What needs the store fails as `unavailable`,
// in the store's words, and a restore leaves its target empty: never "internal error", never damaged data.
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { type S3TestServer, startS3TestServer } from "@dumont/repository/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type AgentProcess,
  type ControlPlaneProcess,
  startControlPlaneProcess,
  startOnlineAgent,
  tempDir,
  testDatabaseUrl,
} from "../support/processes.js";

describe("a blob store that stops answering", () => {
  let root: string;
  let s3: S3TestServer | undefined;
  let cp: ControlPlaneProcess;
  let agent: AgentProcess;
  let db: Awaited<ReturnType<typeof testDatabaseUrl>>;

  beforeAll(async () => {
    root = await tempDir("e2e-store-outage");
    db = await testDatabaseUrl();
    s3 = await startS3TestServer("outage");
    cp = await startControlPlaneProcess({
      dataDir: path.join(root, "cp"),
      databaseUrl: db.url,
      env: {
        DUMONT_BLOB_STORE: s3.url("dumont"),
        DUMONT_S3_ENDPOINT: s3.endpoint,
        AWS_ACCESS_KEY_ID: "S3RVER",
        AWS_SECRET_ACCESS_KEY: "S3RVER",
        AWS_REGION: "us-east-1",
        AWS_MAX_ATTEMPTS: "2", // fail in a second, not after eight tries with backoff
      },
    });
    agent = await startOnlineAgent(cp, path.join(root, "agent"), "outagebox");
  });
  afterAll(async () => {
    await agent?.stop();
    await cp?.stop();
    await s3?.close();
    await db?.drop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it("answers a restore and a listing unavailable, naming the store, and writes nothing", async () => {
    const source = path.join(root, "workspace");
    await fs.mkdir(source);
    await fs.writeFile(path.join(source, "weights.bin"), randomBytes(3 * 1024 * 1024));
    const made = await cp.cli(["snapshot", "create", "--host", agent.hostId, "--path", source, "--json"]);
    expect(made.stderr).toBe("");
    const { id } = JSON.parse(made.stdout) as { id: string };

    await s3?.close();
    s3 = undefined;
    const target = path.join(root, "restored");
    const failed = await cp.cli(["snapshot", "restore", id, "--host", agent.hostId, "--target", target]);
    expect(failed.code).not.toBe(0);
    const unavailable =
      /\[unavailable\] S3 request for s3:\/\/outage\/dumont\/tenants\/admin\/\S* failed: .*; the store is unreachable or failing: try again once it answers/;
    expect(failed.stderr).toMatch(unavailable);
    expect(await fs.readdir(target).catch(() => [])).toEqual([]);
    // Every call that needs the store says so: a listing of its files, a forget, a check.
    for (const args of [
      ["snapshot", "ls", id],
      ["snapshot", "forget", "--keep-last", "1", "--dry-run"],
      ["snapshot", "check", "--structure-only"],
    ]) {
      const res = await cp.cli(args);
      expect({ code: res.code, stdout: res.stdout }, args.join(" ")).toEqual({ code: 1, stdout: "" });
      expect(res.stderr, args.join(" ")).toMatch(unavailable);
    }
    // Nothing the control plane did not expect: no "internal error" in its log.
    expect(cp.log()).not.toMatch(/unexpected error/);
  });
});
