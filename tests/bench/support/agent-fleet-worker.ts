// One load-generator process of the agent fleet (see agent-fleet.ts): enrolls its hosts, then runs the
// real agent session code for each, with a telemetry source that makes up plausible GPU figures.
import os from "node:os";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  AGENT_VERSION,
  ControlPlaneSession,
  createGatewayClient,
  createLogger,
  discoverCa,
  type GatewayClient,
  generateKeyAndCsr,
  type Identity,
  type TelemetrySource,
} from "@dumont/host-agent";
import {
  EnrollRequestSchema,
  type EnrollResponse,
  type GpuInfo,
  GpuInfoSchema,
  InventorySchema,
  TelemetrySchema,
} from "@dumont/proto";
import * as grpc from "@grpc/grpc-js";
import type { FromWorker, ToWorker } from "./agent-fleet.js";

// Errors only: a stopping fleet would otherwise log one warning per host; drops are counted instead.
const log = createLogger("error");
const identities: Identity[] = [];
const sessions: ControlPlaneSession[] = [];
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
const counters = { connected: 0, reconnects: 0, telemetrySamples: 0 };

function reply(message: FromWorker, then?: () => void): void {
  process.send?.(message, undefined, {}, then);
}

process.on("message", (message: ToWorker) => {
  handle(message).catch((err: Error) => reply({ kind: "error", message: err.stack ?? err.message }));
});
// The benchmark process is our lifeline: if it dies, so do we (no orphaned load generators).
process.on("disconnect", () => process.exit(0));

async function handle(message: ToWorker): Promise<void> {
  switch (message.kind) {
    case "enroll": {
      const started = performance.now();
      await enrollAll(message);
      reply({ kind: "enrolled", hosts: identities.length, seconds: (performance.now() - started) / 1000 });
      return;
    }
    case "connect":
      connectAll(message);
      loopDelay.enable();
      reply({ kind: "connecting" });
      return;
    case "report": {
      const ms = (ns: number) => Math.round(ns / 1e4) / 100;
      reply({
        kind: "report",
        ...counters,
        eventLoopDelayP99Ms: ms(loopDelay.percentile(99)),
        eventLoopDelayMaxMs: ms(loopDelay.max),
      });
      if (message.reset) {
        loopDelay.reset();
        counters.telemetrySamples = 0;
        counters.reconnects = 0;
      }
      return;
    }
    case "stop":
      await Promise.all(sessions.map((s) => s.stop()));
      reply({ kind: "stopped" }, () => process.exit(0));
      return;
  }
}

/**
 * One key pair and CSR for all of this worker's hosts: key generation and CSR signing cost ~3 ms each,
 * which would dominate setup at thousands of hosts. The control plane still issues one certificate per
 * host (its own host id as CN and serial), which is what the session's mTLS checks, so every session
 * authenticates as a distinct host exactly as real agents do.
 */
async function enrollAll(message: Extract<ToWorker, { kind: "enroll" }>): Promise<void> {
  const caPem = await discoverCa(message.server, message.caHash);
  const { keyPem, csrPem } = await generateKeyAndCsr("dumont-agent");
  const client = createGatewayClient(message.server, caPem);
  try {
    let next = 0;
    const enrollNext = async (): Promise<void> => {
      while (next < message.tokens.length) {
        const i = next++;
        const res = await enrollOne(client, message.tokens[i] as string, csrPem, `${message.namePrefix}-${i}`);
        identities.push({
          hostId: res.hostId,
          server: message.server,
          keyPem,
          certPem: res.certificatePem,
          caPem: res.caChainPem || caPem,
        });
      }
    };
    await Promise.all(Array.from({ length: message.concurrency }, enrollNext));
  } finally {
    client.close();
  }
}

function enrollOne(client: GatewayClient, token: string, csrPem: string, name: string): Promise<EnrollResponse> {
  const request = create(EnrollRequestSchema, {
    joinToken: token,
    csrPem,
    name,
    agentVersion: AGENT_VERSION,
    facts: { hostname: name, os: "Linux (simulated)", arch: os.arch(), cpuCores: 16, memoryBytes: 64n << 30n },
  });
  return new Promise((resolve, reject) => {
    client.enroll(request, new grpc.Metadata(), { deadline: Date.now() + 60_000 }, (err, res) =>
      err ? reject(new Error(`Enroll failed: ${err.details || err.message}`)) : resolve(res as EnrollResponse),
    );
  });
}

/**
 * Starts the sessions at a steady rate. The agent sends its first telemetry right after Welcome and then
 * every interval, so a steady ramp spreads the sessions' phases evenly over the interval (when the ramp
 * lasts a whole number of intervals) instead of all hosts reporting in the same instant.
 */
function connectAll(message: Extract<ToWorker, { kind: "connect" }>): void {
  const gapMs = 1000 / message.ratePerSecond;
  identities.forEach((identity, i) => {
    const session = new ControlPlaneSession(
      identity,
      simulatedGpus(message.gpusPerHost),
      log,
      message.telemetryIntervalMs,
    );
    let welcomed = false;
    session.on("connected", () => {
      counters.connected++;
      if (welcomed) counters.reconnects++;
      welcomed = true;
    });
    session.on("disconnected", () => counters.connected--);
    sessions.push(session);
    setTimeout(() => session.start(), i * gapMs);
  });
}

/** Telemetry shaped like a real GPU host's: every field set, values drifting a little per sample. */
function simulatedGpus(count: number): TelemetrySource {
  const gpus = (): GpuInfo[] =>
    Array.from({ length: count }, (_, index) =>
      create(GpuInfoSchema, {
        index,
        uuid: `GPU-00000000-0000-0000-0000-${String(index).padStart(12, "0")}`,
        model: "NVIDIA GeForce RTX 4090 (simulated)",
        memoryTotalMib: 24564n,
        memoryUsedMib: BigInt(Math.floor(Math.random() * 24564)),
        utilizationPercent: Math.floor(Math.random() * 100),
        temperatureC: 40 + Math.floor(Math.random() * 40),
        powerW: 50 + Math.random() * 400,
        driverVersion: "550.54.14",
      }),
    );
  const memoryTotalBytes = 64n << 30n;
  return {
    inventory: async () =>
      create(InventorySchema, {
        facts: {
          hostname: "simulated",
          os: "Linux (simulated)",
          arch: os.arch(),
          cpuCores: 16,
          memoryBytes: memoryTotalBytes,
        },
        gpus: gpus(),
        simulated: true,
      }),
    sample: async () => {
      counters.telemetrySamples++;
      return create(TelemetrySchema, {
        // Stamped as the sample leaves: the control plane's ingest latency is measured from here.
        at: timestampFromDate(new Date()),
        gpus: gpus(),
        cpuPercent: Math.random() * 100,
        cpuCores: 16,
        memoryTotalBytes,
        memoryUsedBytes: memoryTotalBytes / 2n,
        diskTotalBytes: 1n << 40n,
        diskUsedBytes: 1n << 39n,
      });
    },
  };
}
