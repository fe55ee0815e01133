// GPU and host metrics for the agent's Hello (inventory) and its periodic Telemetry (sample).
//
// GPUs always come from one direct `nvidia-smi --query-gpu=...` call, never from systeminformation's
// graphics(). graphics() on Linux runs lspci, then nvidia-smi synchronously (blocking the event loop),
// then clinfo, xdpyinfo and xrandr: five processes per sample where one will do. It attaches nvidia-smi
// data only to controllers lspci listed, so hosts and containers without pciutils show no GPUs; it has
// no uuid, index or MIG mode; and it turns "[Not Supported]" into NaN. A direct query has none of these
// problems, so there is one code path, the same in production, in `dumont dev --demo` (the fake
// nvidia-smi on PATH) and in tests. systeminformation is used once, for the OS name.

import os from "node:os";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  GpuInfoSchema,
  HostFactsSchema,
  type Inventory,
  InventorySchema,
  type Telemetry,
  TelemetrySchema,
} from "@dumont/proto";
import { createCpuMeter, diskBytes, memoryBytes, operatingSystemName } from "./host-metrics.js";
import type { ParsedGpu } from "./nvidia-smi-csv.js";
import { type NvidiaSmiResult, queryNvidiaSmi } from "./nvidia-smi-query.js";

export interface TelemetryOptions {
  /** The GPUs are simulated (`dumont dev --demo`); reported in Inventory so every view can say so. */
  simulated?: boolean;
  /** Disk figures are for the filesystem holding this path: the agent's data dir. Default "/". */
  diskPath?: string;
  /** Environment for nvidia-smi; its PATH picks the binary. Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** How long one nvidia-smi call may take; below the 5 s sample interval so calls never pile up. */
  nvidiaSmiTimeoutMs?: number;
}

export interface TelemetryCollector {
  /** Static host facts and the GPUs as they are now; sent once per session in Hello. */
  inventory(): Promise<Inventory>;
  /** One telemetry message: GPUs, CPU, memory, disk. Costs one nvidia-smi process on a GPU host. */
  sample(): Promise<Telemetry>;
  /** Why the latest inventory() or sample() lacks data (nvidia-smi failed, disk unreadable); undefined
   *  when it was complete. A CPU host without nvidia-smi is complete. */
  readonly lastError: string | undefined;
}

const DEFAULTS = { simulated: false, diskPath: "/", nvidiaSmiTimeoutMs: 4000 };

export function createTelemetryCollector(options: TelemetryOptions = {}): TelemetryCollector {
  const config = { ...DEFAULTS, env: process.env, ...definedOnly(options) };
  const cpu = createCpuMeter();
  let lastError: string | undefined;
  let nvidiaSmiMissing = false;
  let running: Promise<NvidiaSmiResult> | undefined;
  let osName: Promise<string> | undefined;

  // A CPU host stays one: the agent restarts when a driver is installed, so don't look for it every 5 s.
  // A call still running when the next sample starts is shared rather than doubled.
  function queryGpus(): Promise<NvidiaSmiResult> {
    if (nvidiaSmiMissing) return Promise.resolve({ kind: "missing" });
    running ??= queryNvidiaSmi({ env: config.env, timeoutMs: config.nvidiaSmiTimeoutMs }).then((result) => {
      running = undefined;
      if (result.kind === "missing") nvidiaSmiMissing = true;
      return result;
    });
    return running;
  }

  function gpusOf(result: NvidiaSmiResult, errors: string[]): ParsedGpu[] {
    if (result.kind === "failed") errors.push(result.error);
    return result.kind === "gpus" ? result.gpus : [];
  }

  return {
    get lastError() {
      return lastError;
    },

    async inventory() {
      osName ??= operatingSystemName();
      const [result, osText] = await Promise.all([queryGpus(), osName]);
      const errors: string[] = [];
      const gpus = gpusOf(result, errors);
      lastError = errors.length ? errors.join("; ") : undefined;
      return create(InventorySchema, {
        facts: create(HostFactsSchema, {
          hostname: os.hostname(),
          os: osText,
          arch: os.arch(),
          cpuCores: cpu.cores(),
          memoryBytes: BigInt(os.totalmem()),
        }),
        gpus: gpus.map((gpu) => create(GpuInfoSchema, gpu)),
        simulated: config.simulated,
      });
    },

    async sample() {
      const at = new Date();
      const errors: string[] = [];
      const [result, disk] = await Promise.all([
        queryGpus(),
        diskBytes(config.diskPath).catch((error: Error) => {
          errors.push(`cannot read disk usage of ${config.diskPath}: ${error.message}`);
          return { total: 0n, used: 0n };
        }),
      ]);
      const gpus = gpusOf(result, errors);
      const memory = memoryBytes();
      lastError = errors.length ? errors.join("; ") : undefined;
      return create(TelemetrySchema, {
        at: timestampFromDate(at),
        gpus: gpus.map((gpu) => create(GpuInfoSchema, gpu)),
        cpuPercent: cpu.percent(),
        cpuCores: cpu.cores(),
        memoryTotalBytes: memory.total,
        memoryUsedBytes: memory.used,
        diskTotalBytes: disk.total,
        diskUsedBytes: disk.used,
      });
    },
  };
}

// `{ diskPath: undefined }` means "use the default", not "no path".
function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as Partial<T>;
}
