// The API's per-key rate limit, over real HTTP against a `dumont serve` child: a burst, then 429 with Retry-After
// naming the key while other keys go on, a wrong secret under its id never charged to it, the CLI saying what to
// do, and the metric.
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ControlPlaneProcess, startControlPlaneProcess, tempDir } from "../support/processes.js";

const BURST = 4;

describe("API rate limit per key", () => {
  let root: string;
  let cp: ControlPlaneProcess;
  let providerKey: string;

  // A Connect unary call as curl would make it: JSON over HTTP/1.1.
  const listHosts = (key: string) =>
    fetch(`${cp.httpUrl}/dumont.api.v1.HostService/ListHosts`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
      body: "{}",
    });

  beforeAll(async () => {
    root = await tempDir("e2e-rate-limit");
    // One request back every 1000 s: nothing refills while the test runs.
    cp = await startControlPlaneProcess({
      dataDir: path.join(root, "cp"),
      env: { DUMONT_API_RATE_LIMIT: "0.001", DUMONT_API_BURST: String(BURST) },
    });
    // A second key, made with one of the admin key's requests.
    const made = await cp.cli(["key", "create", "--role", "provider", "--tenant", "acme", "--json"]);
    expect(made.stderr).toBe("");
    providerKey = JSON.parse(made.stdout).key;
  });

  afterAll(async () => {
    await cp?.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it("answers a key's burst, then 429 with Retry-After, while another key goes on", async () => {
    const [, id] = /^dumont_([a-f0-9]{16})_/.exec(cp.adminKey) ?? [];
    // A wrong secret under the admin key's id: refused as unauthenticated, and not charged to that key.
    const forged = await listHosts(`dumont_${id}_${"x".repeat(43)}`);
    expect(forged.status).toBe(401);

    const statuses: number[] = [];
    for (let i = 1; i < BURST; i++) statuses.push((await listHosts(cp.adminKey)).status); // 1: `key create`
    expect(statuses).toEqual(Array(BURST - 1).fill(200));

    const refused = await listHosts(cp.adminKey);
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(900);
    const body = (await refused.json()) as { code: string; message: string };
    expect(body.code).toBe("resource_exhausted");
    expect(body.message).toMatch(
      new RegExp(
        `^too many requests with API key ${id}: at most 0.001 a second, in bursts of up to 4; retry in \\d+ s$`,
      ),
    );

    // Another key has its own budget.
    expect((await listHosts(providerKey)).status).toBe(200);

    // The CLI passes the sentence on and fails.
    const cli = await cp.cli(["host", "list"]);
    expect(cli.code).not.toBe(0);
    expect(cli.stderr).toContain(`too many requests with API key ${id}`);

    const metrics = await (await fetch(`${cp.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/^dumont_api_requests_limited_total 2$/m);
  });
});
