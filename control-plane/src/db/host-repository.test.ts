import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTenant } from "./credential-repository.js";
import type { Db } from "./database.js";
import { getHost, insertHost, listHosts, metricsSince, recordTelemetry } from "./host-repository.js";
import { MetricsRetention } from "./metrics-retention.js";
import type { HostLatestState } from "./tables.js";
import { openTestDatabase } from "./test-database.js";

const state = (util: number | null, mem: number): HostLatestState => ({
  gpus: [
    {
      index: 0,
      uuid: "GPU-0",
      model: "RTX 4090",
      memoryTotalMiB: 24564,
      memoryUsedMiB: mem,
      utilizationPercent: util,
      temperatureC: 40,
      powerW: null,
    },
  ],
  cpu: { cores: 8, utilizationPercent: 10 },
  memory: { totalBytes: 100, usedBytes: 50 },
  disk: { totalBytes: 1000, usedBytes: 10 },
});

describe("host repository", () => {
  let db: Db;
  let close: () => Promise<void>;

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    await ensureTenant(db, "a", "a");
    await ensureTenant(db, "b", "b");
    await insertHost(db, { id: "h-a", tenantId: "a", name: "a", hostname: "a", agentVersion: "1", certSerial: "1" });
    await insertHost(db, { id: "h-b", tenantId: "b", name: "b", hostname: "b", agentVersion: "1", certSerial: "2" });
  });
  afterAll(() => close());

  it("scopes host queries to a tenant", async () => {
    expect((await listHosts(db, { tenantId: "a" })).map((h) => h.id)).toEqual(["h-a"]);
    expect(await getHost(db, "h-b", { tenantId: "a" })).toBeUndefined();
    expect((await listHosts(db)).map((h) => h.id).sort()).toEqual(["h-a", "h-b"]);
  });

  it("keeps the latest state per host and a raw point per sample; null stays null", async () => {
    const t = Date.now();
    await recordTelemetry(
      db,
      [
        { hostId: "h-a", at: new Date(t - 2000), latest: state(10, 100), gpus: [] },
        {
          hostId: "h-a",
          at: new Date(t - 1000),
          latest: state(null, 200),
          gpus: [{ index: 0, utilizationPercent: null, memoryUsedMiB: 200, temperatureC: 40, powerW: null }],
        },
      ],
      new Date(t),
    );
    const host = await getHost(db, "h-a");
    expect(host!.latest!.gpus[0]!.utilizationPercent).toBeNull();
    expect(host!.latest!.gpus[0]!.memoryUsedMiB).toBe(200);
    const points = await metricsSince(db, "h-a", new Date(t - 60_000));
    expect(points).toHaveLength(2);
    expect(points[1]!.gpus[0]!.utilizationPercent).toBeNull();
  });

  it("folds raw points older than an hour into one-minute averages and drops what is older than a week", async () => {
    const now = new Date("2026-11-23T12:00:30Z");
    const minute = new Date("2026-11-23T10:30:00Z").getTime();
    const sample = (offsetS: number, util: number | null) => ({
      hostId: "h-b",
      at: new Date(minute + offsetS * 1000),
      latest: state(util, 100),
      gpus: [{ index: 0, utilizationPercent: util, memoryUsedMiB: 100 + offsetS, temperatureC: 40, powerW: null }],
    });
    await recordTelemetry(db, [sample(0, 10), sample(20, 30), sample(40, null), sample(70, 90)], now);
    await recordTelemetry(db, [{ ...sample(0, 1), at: new Date(now.getTime() - 8 * 86_400_000) }], now);
    await recordTelemetry(db, [{ ...sample(0, 50), at: new Date(now.getTime() - 60_000) }], now);

    await new MetricsRetention(db, pino({ level: "silent" })).runOnce(now);
    const points = await metricsSince(db, "h-b", new Date(0));
    expect(points.map((p) => [p.at.toISOString(), p.resolution])).toEqual([
      ["2026-11-23T10:30:00.000Z", "1m"],
      ["2026-11-23T10:31:00.000Z", "1m"],
      ["2026-11-23T11:59:30.000Z", "raw"],
    ]);
    expect(points[0]!.gpus[0]!.utilizationPercent).toBe(20); // mean of 10 and 30; the null is skipped
    expect(points[0]!.gpus[0]!.memoryUsedMiB).toBe(120);
    expect(points[1]!.gpus[0]!.utilizationPercent).toBe(90);
  });
});
