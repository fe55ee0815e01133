// What an agent's telemetry can do to the database: a sample is written whatever its values, and one host's
// bad values never cost another host its samples (nor its last_seen_at, which liveness reads).
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { TelemetrySchema } from "@dumont/proto";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTenant } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { getHost, insertHost, metricsSince } from "../db/host-repository.js";
import { openTestDatabase } from "../db/test-database.js";
import { createMetrics } from "../metrics.js";
import { capturingLogger } from "../test-logger.js";
import { MAX_PENDING_PER_HOST, TelemetryIngest } from "./telemetry-ingest.js";

const U64_MAX = 2n ** 64n - 1n;

describe("TelemetryIngest", () => {
  let db: Db;
  let close: () => Promise<void>;

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    await ensureTenant(db, "t", "t");
    for (const id of ["h-bad", "h-good", "h-flood", "h-calm", "h-nul", "h-beside-nul"]) {
      await insertHost(db, { id, tenantId: "t", name: id, hostname: id, agentVersion: "1", certSerial: id });
    }
  });
  afterAll(() => close());

  it("stores a hostile sample with sane values, and the other hosts' samples in its batch all the same", async () => {
    const ingest = new TelemetryIngest(db, pino({ level: "silent" }), createMetrics());
    const before = new Date(Date.now() - 1000);
    ingest.add(
      "h-bad",
      create(TelemetrySchema, {
        at: { seconds: -(10n ** 15n), nanos: 0 },
        cpuPercent: Number.NaN,
        cpuCores: 8,
        memoryTotalBytes: U64_MAX,
        memoryUsedBytes: U64_MAX,
        diskTotalBytes: U64_MAX,
        diskUsedBytes: U64_MAX,
        gpus: [
          {
            index: 0,
            uuid: "u".repeat(1_000_000),
            model: "m".repeat(1_000_000),
            memoryTotalMib: U64_MAX,
            memoryUsedMib: U64_MAX,
            utilizationPercent: Number.POSITIVE_INFINITY,
            temperatureC: -1e308,
            powerW: 1e308,
          },
          ...Array.from({ length: 10_000 }, (_, i) => ({ index: i + 1, uuid: `GPU-${i}`, model: "x" })),
        ],
      }),
    );
    ingest.add(
      "h-good",
      create(TelemetrySchema, {
        at: timestampFromMs(Date.now()),
        cpuPercent: 12.5,
        cpuCores: 4,
        memoryTotalBytes: 1000n,
        memoryUsedBytes: 500n,
        diskTotalBytes: 2000n,
        diskUsedBytes: 100n,
      }),
    );
    await ingest.close();

    const good = await getHost(db, "h-good");
    expect(good?.last_seen_at && new Date(good.last_seen_at).getTime()).toBeGreaterThanOrEqual(before.getTime());
    expect(await metricsSince(db, "h-good", before)).toHaveLength(1);

    const bad = await getHost(db, "h-bad");
    expect(bad?.last_seen_at && new Date(bad.last_seen_at).getTime()).toBeGreaterThanOrEqual(before.getTime());
    const [point] = await metricsSince(db, "h-bad", before);
    expect(point).toBeDefined();
    expect(point!.cpu_percent).toBeNull();
    expect(Number(point!.memory_used_bytes)).toBeLessThanOrEqual(Number.MAX_SAFE_INTEGER);
    const latest = bad!.latest!;
    expect(latest.gpus.length).toBeLessThanOrEqual(64);
    expect(latest.gpus[0]).toMatchObject({ utilizationPercent: null, temperatureC: null, powerW: null });
    expect(latest.gpus[0]!.uuid.length).toBeLessThanOrEqual(256);
    expect(latest.gpus[0]!.model.length).toBeLessThanOrEqual(256);
    expect(latest.memory.usedBytes).toBeLessThanOrEqual(Number.MAX_SAFE_INTEGER);
  });

  it("stores a GPU text holding NUL without it (Postgres jsonb refuses \\u0000), and the batch with it", async () => {
    const ingest = new TelemetryIngest(db, pino({ level: "silent" }), createMetrics());
    const before = new Date(Date.now() - 1000);
    const sample = (gpus: { index: number; uuid: string; model: string }[]) =>
      create(TelemetrySchema, { at: timestampFromMs(Date.now()), cpuPercent: 1, cpuCores: 1, gpus });
    ingest.add("h-nul", sample([{ index: 0, uuid: "GPU-\0abc", model: "NVIDIA H100\0\0 80GB" }]));
    ingest.add("h-beside-nul", sample([]));
    await ingest.close();

    for (const id of ["h-nul", "h-beside-nul"]) {
      const host = await getHost(db, id);
      expect(host?.last_seen_at && new Date(host.last_seen_at).getTime()).toBeGreaterThanOrEqual(before.getTime());
      expect(await metricsSince(db, id, before)).toHaveLength(1);
    }
    const gpu = (await getHost(db, "h-nul"))?.latest?.gpus[0];
    expect(gpu).toMatchObject({ uuid: "GPU-abc", model: "NVIDIA H100 80GB" });
  });

  it("loses only the samples of a host whose write the database refuses, and says which host", async () => {
    // No value an agent sends fails a write now (toRecord bounds them all); a host row gone under its samples
    // still does (a foreign key), as would a constraint added later. Deleted before the samples are taken,
    // so the batch is sure to meet it.
    const ids = ["h-one", "h-two", "h-gone", "h-three", "h-four"];
    for (const id of ids) {
      await insertHost(db, { id, tenantId: "t", name: id, hostname: id, agentVersion: "1", certSerial: id });
    }
    await db.deleteFrom("hosts").where("id", "=", "h-gone").execute();
    const lines: string[] = [];
    const metrics = createMetrics();
    const ingest = new TelemetryIngest(db, capturingLogger(lines), metrics);
    const before = new Date(Date.now() - 1000);
    const sample = () =>
      create(TelemetrySchema, {
        at: timestampFromMs(Date.now()),
        cpuPercent: 42.5,
        cpuCores: 1,
        gpus: [{ index: 0, uuid: "GPU-sample-value", model: "sample-model" }],
      });
    for (const id of ids) {
      ingest.add(id, sample());
      ingest.add(id, sample());
    }
    await ingest.close();

    for (const id of ids.filter((id) => id !== "h-gone")) {
      const host = await getHost(db, id);
      expect(host?.last_seen_at && new Date(host.last_seen_at).getTime()).toBeGreaterThanOrEqual(before.getTime());
      expect(await metricsSince(db, id, before)).toHaveLength(2);
    }
    expect(await metricsSince(db, "h-gone", before)).toEqual([]);
    expect((await metrics.telemetryDropped.get()).values[0]?.value).toBe(2);
    const records = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(records).toEqual([expect.objectContaining({ level: 40, hostId: "h-gone", samples: 2, code: "23503" })]);
    expect(lines.join("")).not.toMatch(/sample-value|sample-model|42\.5/);
  });

  it("drops a batch whole, saying so once, when the database itself fails: host by host would fail alike", async () => {
    const gone = await openTestDatabase();
    await gone.close();
    const lines: string[] = [];
    const metrics = createMetrics();
    const ingest = new TelemetryIngest(gone.db, capturingLogger(lines), metrics);
    for (const id of ["h-1", "h-2", "h-3", "h-4"]) ingest.add(id, create(TelemetrySchema, { cpuCores: 1 }));
    await ingest.close();
    expect((await metrics.telemetryDropped.get()).values[0]?.value).toBe(4);
    expect(lines.map((line) => JSON.parse(line))).toEqual([
      expect.objectContaining({ level: 50, samples: 4, msg: "telemetry batch write failed; samples dropped" }),
    ]);
  });

  it("keeps a few samples of a host that floods it, dropping the rest, and every other host's", async () => {
    const metrics = createMetrics();
    const ingest = new TelemetryIngest(db, pino({ level: "silent" }), metrics);
    const before = new Date(Date.now() - 1000);
    const sample = () => create(TelemetrySchema, { at: timestampFromMs(Date.now()), cpuPercent: 1, cpuCores: 1 });
    // All before the first write: a loop sending as fast as it can.
    for (let i = 0; i < 1000; i++) ingest.add("h-flood", sample());
    ingest.add("h-calm", sample());
    await ingest.close();
    expect(await metricsSince(db, "h-flood", before)).toHaveLength(MAX_PENDING_PER_HOST);
    expect(await metricsSince(db, "h-calm", before)).toHaveLength(1);
    expect((await metrics.telemetryDropped.get()).values[0]?.value).toBe(1000 - MAX_PENDING_PER_HOST);
  });
});
