// API keys through the CLI against a `dumont serve` child: an admin makes a tenant's provider key, shown once;
// that key works at once within its tenant and role, can make its own kind of key, and opens nothing once
// revoked; the last admin key stays.
import { execFile } from "node:child_process";
import fs from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type ControlPlaneProcess,
  dumontBin,
  runNode,
  startControlPlaneProcess,
  tempDir,
  waitFor,
} from "../support/processes.js";

describe("API keys", () => {
  let root: string;
  let cp: ControlPlaneProcess;
  /** `dumont key list` as the admin sees it: one record a row, each cell cut at its header's column. */
  const keyList = async (): Promise<Record<string, string>[]> => {
    const [header = "", ...rows] = (await cp.cli(["key", "list"])).stdout.trimEnd().split("\n");
    expect(header).toMatch(/^ID +ROLE +TENANT +CREATED +LAST USED +STATUS +LABEL$/);
    const names = header.split(/ {2,}/);
    const starts = names.map((name) => header.indexOf(name));
    return rows.map((row) =>
      Object.fromEntries(names.map((name, i) => [name, row.slice(starts[i], starts[i + 1]).trim()])),
    );
  };
  /** `dumont …` with `key` instead of the admin key. */
  const cliAs = (key: string, args: string[]) =>
    runNode(dumontBin, ["--api-url", cp.httpUrl, "--api-key", key, ...args], { DUMONT_API_KEY: "" });

  beforeAll(async () => {
    root = await tempDir("e2e-api-keys");
    cp = await startControlPlaneProcess({ dataDir: path.join(root, "cp") });
  });
  afterAll(async () => {
    await cp?.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it("makes a tenant's provider key that works at once, within its tenant and role, until revoked", async () => {
    const made = await cp.cli(["key", "create", "--role", "provider", "--tenant", "acme", "--label", "acme rack"]);
    expect(made.stderr).toBe("");
    const [, id, key] = /^API key ([a-f0-9]{16}) \(provider, tenant acme\), shown this once:\n {2}(dumont_\S+)\n/.exec(
      made.stdout,
    ) ?? [undefined, "", ""];
    expect(key).toContain(id);
    // Not used yet: the admin's listing, a table under a header, says so.
    const row = async () => (await keyList()).find((r) => r.ID === id) ?? {};
    expect(await row()).toEqual({
      ID: id,
      ROLE: "provider",
      TENANT: "acme",
      CREATED: expect.stringMatching(/^\d{4}-\d\d-\d\dT[\d:.]+Z$/),
      "LAST USED": "never",
      STATUS: "active",
      LABEL: '"acme rack"',
    });

    // The provider key makes join tokens for its tenant, sees its tenant's hosts (none yet) and keys.
    const token = await cliAs(key!, ["host", "join-token", "create", "--json"]);
    expect(token.stderr).toBe("");
    expect(JSON.parse(token.stdout).token).toMatch(/^djt_/);
    expect(JSON.parse((await cliAs(key!, ["host", "list", "--json"])).stdout)).toEqual([]);
    const others = await cliAs(key!, ["host", "list", "--tenant", "admin"]);
    expect(others.code).not.toBe(0);
    expect(others.stderr).toContain("a provider key lists its own tenant's hosts only (acme)");
    const listed = JSON.parse((await cliAs(key!, ["key", "list", "--json"])).stdout);
    expect(listed).toEqual([
      {
        id,
        tenantId: "acme",
        role: "provider",
        label: "acme rack",
        createdAt: expect.any(String),
        revokedAt: null,
        expiresAt: null,
        lastUsedAt: expect.toBeOneOf([null, expect.any(String)]), // its first use is written as the calls run
      },
    ]);
    // Now its use shows, to the minute, with the time of its first call (written beside the calls, not before).
    await waitFor(async () => (await row())["LAST USED"] !== "never", 10_000);
    const usedAt = Date.parse((await row())["LAST USED"] ?? "");
    expect(Math.abs(usedAt - Date.now())).toBeLessThan(60_000);
    // It may not make a key of another role, nor see the snapshots (admin only).
    const admin = await cliAs(key!, ["key", "create", "--role", "admin"]);
    expect(admin.code).not.toBe(0);
    expect(admin.stderr).toContain("a provider key makes provider keys only");
    expect((await cliAs(key!, ["snapshot", "list", "--json"])).code).not.toBe(0);

    // The admin sees it among every tenant's keys; revoked, it opens nothing.
    const all = JSON.parse((await cp.cli(["key", "list", "--json"])).stdout) as { id: string; tenantId: string }[];
    expect(all.map((k) => k.tenantId).sort()).toEqual(["acme", "admin"]);
    // Given the whole key (one that leaked, say; pasted from a header here), the CLI revokes it by its id and never
    // sends the secret.
    const revoked = await cp.cli(["key", "revoke", `Bearer ${key!}`, "--json"]);
    expect(revoked.stderr).toBe("");
    expect(JSON.parse(revoked.stdout).revokedAt).toEqual(expect.any(String));
    const after = await cliAs(key!, ["host", "list"]);
    expect(after.code).not.toBe(0);
    expect(after.stderr).toContain("API key not recognised or revoked");
    expect(JSON.parse((await cp.cli(["key", "list", "--json"])).stdout)).toHaveLength(1);
    expect(JSON.parse((await cp.cli(["key", "list", "--all", "--json"])).stdout)).toHaveLength(2);
  });

  it("ends quietly when its output is piped into a reader that stops at once (`… | head`)", async () => {
    const { stdout, stderr } = await promisify(execFile)("/bin/bash", [
      "-o",
      "pipefail",
      "-c",
      '"$0" "$@" | true', // true reads nothing and exits: the CLI's write meets a closed pipe
      process.execPath,
      ...[dumontBin, "--api-url", cp.httpUrl, "--api-key", cp.adminKey, "key", "list", "--json"],
    ]); // rejects on a non-zero status (it was an unhandled EPIPE's stack trace, exit 1)
    expect({ stdout, stderr }).toEqual({ stdout: "", stderr: "" });
  });

  it("keeps the last admin key, saying what to do; makes keys that expire; refuses bad flags", async () => {
    const [, adminId] = /^dumont_([a-f0-9]{16})_/.exec(cp.adminKey) ?? [];
    const last = await cp.cli(["key", "revoke", adminId!]);
    expect(last.code).not.toBe(0);
    expect(last.stderr).toContain(`API key ${adminId} is the last admin key that never expires; make another`);
    // A key made to expire says when, and --expires is checked before anything is sent.
    const expiring = await cp.cli(["key", "create", "--role", "consumer", "--expires", "90d", "--json"]);
    const expiresAt = Date.parse(JSON.parse(expiring.stdout).expiresAt);
    expect(Math.abs(expiresAt - (Date.now() + 90 * 86_400_000))).toBeLessThan(120_000);
    const tooLong = await cp.cli(["key", "create", "--role", "consumer", "--expires", "20000d"]);
    expect(tooLong.code).not.toBe(0);
    expect(tooLong.stderr).toContain('--expires must be 60s..3650d (or left out: the key never expires), got "20000d"');
    const bad = await cp.cli(["key", "create", "--role", "root"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(
      /--role <role>' argument 'root' is invalid. Allowed choices are consumer, provider, admin/,
    );
  });
});
