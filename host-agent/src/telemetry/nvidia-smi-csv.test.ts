import { describe, expect, it } from "vitest";
import { NVIDIA_SMI_QUERY_FIELDS, parseNvidiaSmiCsv } from "./nvidia-smi-csv.js";

// Lines as drivers print them for NVIDIA_SMI_QUERY_FIELDS (the shapes mirrored in tests/fakes/nvidia-smi/fixtures).
const RTX_4090 =
  "0, GPU-5b2f7d3e-9c41-6a8e-0f13-b7d24c9e8a61, NVIDIA GeForce RTX 4090, 550.54.14, 24564, 1843, 37, 52, 118.43, [N/A]\n";
const A100_X8 = Array.from(
  { length: 8 },
  (_, i) =>
    `${i}, GPU-0c3f1a72-5e8b-2d94-c61a-83f0b7e2d41${i}, NVIDIA A100-SXM4-80GB, 535.129.03, 81920, ${i < 4 ? 71224 : 4}, ${i < 4 ? 100 : 0}, 61, 391.27, Disabled`,
).join("\n");
const H100_MIG = [
  "0, GPU-8e1c4a27-3b6d-f590-2e7a-c4d81f3b9062, NVIDIA H100 80GB HBM3, 550.54.15, 81559, 88, [N/A], 34, 112.47, Enabled",
  "1, GPU-9f2d5b38-4c7e-06a1-3f8b-d5e92a4c0173, NVIDIA H100 80GB HBM3, 550.54.15, 81559, 1, 0, 29, 69.80, Disabled",
].join("\n");
const NON_VALUES = [
  "0, GPU-a4c7e1f9-2b58-4d36-9e0a-71c35f8b2d46, NVIDIA GeForce RTX 3060 Laptop GPU, 535.104.05, 6144, 512, 3, 47, [N/A], [N/A]",
  "1, GPU-b5d8f20a-3c69-5e47-af1b-82d46a9c3e57, NVIDIA GeForce GTX 1650, 535.104.05, 4096, [Insufficient Permissions], [Not Supported], [Unknown Error], [Unknown Error], N/A",
].join("\n");

describe("parseNvidiaSmiCsv", () => {
  it("asks for the fields it parses, in order", () => {
    expect(NVIDIA_SMI_QUERY_FIELDS).toHaveLength(10);
    expect(NVIDIA_SMI_QUERY_FIELDS[0]).toBe("index");
  });

  it("reads a single GeForce, whose MIG mode the driver reports as [N/A]", () => {
    expect(parseNvidiaSmiCsv(RTX_4090)).toEqual([
      {
        index: 0,
        uuid: "GPU-5b2f7d3e-9c41-6a8e-0f13-b7d24c9e8a61",
        model: "NVIDIA GeForce RTX 4090",
        driverVersion: "550.54.14",
        memoryTotalMib: 24564n,
        memoryUsedMib: 1843n,
        utilizationPercent: 37,
        temperatureC: 52,
        powerW: 118.43,
        migMode: undefined,
      },
    ]);
  });

  it("reads every GPU of a multi-GPU box in order", () => {
    const gpus = parseNvidiaSmiCsv(A100_X8);
    expect(gpus.map((gpu) => gpu.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(new Set(gpus.map((gpu) => gpu.uuid)).size).toBe(8);
    expect(gpus[4]).toMatchObject({ model: "NVIDIA A100-SXM4-80GB", memoryUsedMib: 4n, utilizationPercent: 0 });
    expect(gpus.every((gpu) => gpu.migMode === "Disabled")).toBe(true);
  });

  it("keeps a MIG GPU whose whole-GPU utilisation is [N/A] as unknown, not idle", () => {
    const [mig, whole] = parseNvidiaSmiCsv(H100_MIG);
    expect(mig.migMode).toBe("Enabled");
    expect(mig.utilizationPercent).toBeUndefined();
    expect(mig.memoryUsedMib).toBe(88n);
    expect(whole).toMatchObject({ migMode: "Disabled", utilizationPercent: 0 });
  });

  it("turns every bracketed or bare N/A non-value into undefined, never NaN or 0", () => {
    const [laptop, troubled] = parseNvidiaSmiCsv(NON_VALUES);
    expect(laptop.powerW).toBeUndefined();
    expect(laptop.migMode).toBeUndefined();
    expect(laptop.utilizationPercent).toBe(3);
    expect(troubled).toEqual({
      index: 1,
      uuid: "GPU-b5d8f20a-3c69-5e47-af1b-82d46a9c3e57",
      model: "NVIDIA GeForce GTX 1650",
      driverVersion: "535.104.05",
      memoryTotalMib: 4096n,
      memoryUsedMib: undefined,
      utilizationPercent: undefined,
      temperatureC: undefined,
      powerW: undefined,
      migMode: undefined,
    });
  });

  it("treats a garbled number as unknown", () => {
    const [gpu] = parseNvidiaSmiCsv("0, GPU-x, Tesla T4, 535.1, 15360, ERR!, 12%, , -, [N/A]");
    expect(gpu).toMatchObject({ memoryTotalMib: 15360n, utilizationPercent: undefined, temperatureC: undefined });
    expect(gpu.memoryUsedMib).toBeUndefined();
    expect(gpu.powerW).toBeUndefined();
  });

  it("keeps a product name that contains a comma in one piece", () => {
    const [gpu] = parseNvidiaSmiCsv("0, GPU-y, Acme Board, Rev 2, 550.1, 100, 1, 2, 30, 10.5, [N/A]");
    expect(gpu).toMatchObject({
      model: "Acme Board, Rev 2",
      driverVersion: "550.1",
      memoryTotalMib: 100n,
      powerW: 10.5,
    });
  });

  it("reads nothing from empty output", () => {
    expect(parseNvidiaSmiCsv("")).toEqual([]);
    expect(parseNvidiaSmiCsv("\n\n")).toEqual([]);
  });

  it("rejects a line that is not query output, quoting it", () => {
    expect(() => parseNvidiaSmiCsv("No devices were found")).toThrow(/1 of the 10 fields.*No devices were found/);
    expect(() => parseNvidiaSmiCsv("x, GPU-z, T4, 1, 2, 3, 4, 5, 6, Disabled")).toThrow(/valid index/);
  });
});
