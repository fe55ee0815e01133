// The collector against a fake nvidia-smi on PATH: a real process, the same code path as production.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { createTelemetryCollector } from "./index.js";

const FAKE_DIR = fileURLToPath(new URL("../../../tests/fakes/nvidia-smi/", import.meta.url));

// A folder holding only `node`, so PATH has node for the fake's shebang and no lspci, nvidia-smi or
// anything else from the machine.
const nodeOnlyDir = mkdtempSync(path.join(tmpdir(), "dumont-node-only-"));
symlinkSync(process.execPath, path.join(nodeOnlyDir, "node"));
afterAll(() => rmSync(nodeOnlyDir, { recursive: true, force: true }));

function envWithFake(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: `${FAKE_DIR}:${nodeOnlyDir}`, ...extra };
}

// The fake is a Node process, whose start took seconds on a busy machine (20 s once, on a 2-core VM writing a
// bench's files): no test here is about the timeout (4 s by default), so a slow start must not fail one.
const NVIDIA_SMI_TIMEOUT_MS = 30_000;

function collectorFor(fixture: string, extra: Record<string, string> = {}) {
  return createTelemetryCollector({
    env: envWithFake({ DUMONT_FAKE_NVIDIA_SMI_FIXTURE: fixture, ...extra }),
    nvidiaSmiTimeoutMs: NVIDIA_SMI_TIMEOUT_MS,
  });
}

describe("telemetry with a fake nvidia-smi on PATH and no lspci", () => {
  it("reports a single RTX 4090", async () => {
    const collector = collectorFor("rtx-4090");
    const telemetry = await collector.sample();
    expect(collector.lastError).toBeUndefined();
    expect(telemetry.gpus).toHaveLength(1);
    expect(telemetry.gpus[0]).toMatchObject({
      index: 0,
      uuid: "GPU-5b2f7d3e-9c41-6a8e-0f13-b7d24c9e8a61",
      model: "NVIDIA GeForce RTX 4090",
      driverVersion: "550.54.14",
      memoryTotalMib: 24564n,
      memoryUsedMib: 1843n,
      utilizationPercent: 37,
      temperatureC: 52,
      powerW: 118.43,
    });
    expect(telemetry.gpus[0].migMode).toBeUndefined();
  });

  it("reports all eight GPUs of an A100 box", async () => {
    const telemetry = await collectorFor("a100-sxm4-80gb-x8").sample();
    expect(telemetry.gpus.map((gpu) => gpu.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(telemetry.gpus.every((gpu) => gpu.model === "NVIDIA A100-SXM4-80GB" && gpu.memoryTotalMib === 81920n)).toBe(
      true,
    );
    expect(telemetry.gpus.map((gpu) => gpu.utilizationPercent)).toEqual([100, 100, 98, 100, 0, 0, 0, 0]);
    expect(telemetry.gpus[0].migMode).toBe("Disabled");
  });

  it("reports a MIG GPU with unknown utilisation, beside one without MIG", async () => {
    const [mig, whole] = (await collectorFor("h100-mig").sample()).gpus;
    expect(mig).toMatchObject({ model: "NVIDIA H100 80GB HBM3", migMode: "Enabled", memoryTotalMib: 81559n });
    expect(mig.utilizationPercent).toBeUndefined();
    expect(whole).toMatchObject({ migMode: "Disabled", utilizationPercent: 0 });
  });

  it("leaves every value the driver could not give unset", async () => {
    const [laptop, troubled] = (await collectorFor("na-values").sample()).gpus;
    expect(laptop).toMatchObject({
      model: "NVIDIA GeForce RTX 3060 Laptop GPU",
      utilizationPercent: 3,
      temperatureC: 47,
    });
    expect(laptop.powerW).toBeUndefined();
    for (const field of ["memoryUsedMib", "utilizationPercent", "temperatureC", "powerW", "migMode"] as const) {
      expect(troubled[field], field).toBeUndefined();
    }
    expect(troubled.memoryTotalMib).toBe(4096n);
  });

  it("labels the demo GPUs as simulated in the inventory", async () => {
    const collector = createTelemetryCollector({
      simulated: true,
      env: envWithFake({ DUMONT_FAKE_NVIDIA_SMI_FIXTURE: "demo", DUMONT_FAKE_NVIDIA_SMI_TICK: "3" }),
      nvidiaSmiTimeoutMs: NVIDIA_SMI_TIMEOUT_MS,
    });
    const inventory = await collector.inventory();
    expect(inventory.simulated).toBe(true);
    expect(inventory.gpus.map((gpu) => [gpu.model, gpu.utilizationPercent])).toEqual([
      ["NVIDIA GeForce RTX 4090", 97],
      ["NVIDIA GeForce RTX 4090", 0],
    ]);
    expect(inventory.facts?.cpuCores).toBeGreaterThan(0);
    expect(inventory.facts?.memoryBytes).toBeGreaterThan(0n);
    expect(inventory.facts?.os).not.toBe("");
  });

  it("reports no GPUs and the driver's message when nvidia-smi fails", async () => {
    const collector = collectorFor("rtx-4090", { DUMONT_FAKE_NVIDIA_SMI_FAIL: "1" });
    const telemetry = await collector.sample();
    expect(telemetry.gpus).toEqual([]);
    expect(collector.lastError).toMatch(/exit status 9.*couldn't communicate with the NVIDIA driver/);
    expect(telemetry.memoryTotalBytes).toBeGreaterThan(0n);
  });
});

describe("telemetry on a host without nvidia-smi", () => {
  it("reports zero GPUs and no error, with host metrics", async () => {
    const collector = createTelemetryCollector({ env: { PATH: nodeOnlyDir }, diskPath: tmpdir() });
    const inventory = await collector.inventory();
    expect(inventory.gpus).toEqual([]);
    expect(inventory.simulated).toBe(false);
    const deadline = Date.now() + 50;
    while (Date.now() < deadline) {
      // Busy for a few scheduler ticks so the CPU counters move between the meter's readings.
    }
    const telemetry = await collector.sample();
    expect(collector.lastError).toBeUndefined();
    expect(telemetry.gpus).toEqual([]);
    expect(telemetry.at).toBeDefined();
    expect(telemetry.cpuCores).toBeGreaterThan(0);
    expect(telemetry.cpuPercent).toBeGreaterThanOrEqual(0);
    expect(telemetry.cpuPercent).toBeLessThanOrEqual(100);
    expect(telemetry.memoryUsedBytes).toBeGreaterThan(0n);
    expect(telemetry.memoryUsedBytes).toBeLessThanOrEqual(telemetry.memoryTotalBytes);
    expect(telemetry.diskTotalBytes).toBeGreaterThan(0n);
    expect(telemetry.diskUsedBytes).toBeLessThanOrEqual(telemetry.diskTotalBytes);
  });

  it("says which disk path it could not read", async () => {
    const collector = createTelemetryCollector({ env: { PATH: nodeOnlyDir }, diskPath: "/no/such/dumont/dir" });
    const telemetry = await collector.sample();
    expect(telemetry.diskTotalBytes).toBe(0n);
    expect(collector.lastError).toMatch(/\/no\/such\/dumont\/dir/);
  });
});

describe("fake nvidia-smi", () => {
  const run = (args: string[], fixture = "rtx-4090") =>
    execFileSync(path.join(FAKE_DIR, "nvidia-smi"), args, {
      env: envWithFake({ DUMONT_FAKE_NVIDIA_SMI_FIXTURE: fixture }),
      encoding: "utf8",
    });

  it("answers systeminformation's field list with all sixteen fields", () => {
    const fields =
      "driver_version,pci.sub_device_id,name,pci.bus_id,fan.speed,memory.total,memory.used,memory.free," +
      "utilization.gpu,utilization.memory,temperature.gpu,temperature.memory,power.draw,power.limit,clocks.gr,clocks.mem";
    const lines = run([`--query-gpu=${fields}`, "--format=csv,noheader,nounits"], "a100-sxm4-80gb-x8")
      .trim()
      .split("\n");
    expect(lines).toHaveLength(8);
    expect(lines[0].split(", ")).toHaveLength(16);
    expect(lines[0]).toMatch(/^535\.129\.03, 0x147F10DE, NVIDIA A100-SXM4-80GB, 00000000:07:00\.0, \[N\/A\], 81920, /);
  });

  it("answers any field by name, with [N/A] for one it does not know, and units unless told not to", () => {
    expect(run(["--query-gpu=name,bogus.field,count,power.draw", "--format=csv,noheader"])).toBe(
      "NVIDIA GeForce RTX 4090, [N/A], 1, 118.43 W\n",
    );
  });
});
