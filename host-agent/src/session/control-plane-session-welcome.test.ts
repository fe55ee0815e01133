// ControlPlaneSession against a real gRPC server on loopback (TLS, the agent gateway's service): the telemetry
// interval it takes from the Welcome, and what it logs when another control plane answers at its address.
import { create } from "@bufbuild/protobuf";
import {
  AgentGateway,
  CONTROL_PLANE_TLS_NAME,
  type ControlMessage,
  ControlMessageSchema,
  grpcServiceDefinition,
  type Inventory,
} from "@dumont/proto";
import * as grpc from "@grpc/grpc-js";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { telemetryIntervalMs } from "../config.js";
import { ControlPlaneSession, type TelemetrySource } from "./control-plane-session.js";
import { selfSignedPair } from "./testing.js";

const stops: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const stop of stops.splice(0).reverse()) await stop(); // sessions before their servers
});

/** A gateway whose Connect welcomes with `suggestedMs` and counts the telemetry it receives. */
async function gateway(suggestedMs: number) {
  const tlsPair = await selfSignedPair({ dnsName: CONTROL_PLANE_TLS_NAME });
  const received = { telemetry: 0 };
  const server = new grpc.Server();
  server.addService(grpcServiceDefinition(AgentGateway), {
    connect(call: grpc.ServerDuplexStream<{ msg: { case?: string } }, ControlMessage>) {
      call.on("data", (message: { msg: { case?: string } }) => {
        if (message.msg.case === "hello") {
          call.write(
            create(ControlMessageSchema, {
              msg: { case: "welcome", value: { sessionId: "s-1", telemetryIntervalMs: suggestedMs } },
            }),
          );
        }
        if (message.msg.case === "telemetry") received.telemetry++;
      });
      call.on("error", () => {});
    },
  } as unknown as grpc.UntypedServiceImplementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      "127.0.0.1:0",
      grpc.ServerCredentials.createSsl(null, [
        { private_key: Buffer.from(tlsPair.keyPem), cert_chain: Buffer.from(tlsPair.certPem) },
      ]),
      (err, p) => (err ? reject(err) : resolve(p)),
    ),
  );
  stops.push(() => new Promise<void>((resolve) => server.tryShutdown(() => resolve())));
  return { server: `https://127.0.0.1:${port}`, caPem: tlsPair.certPem, received };
}

const telemetry = {
  inventory: async () => ({}) as Inventory,
  sample: async () => ({}),
} as unknown as TelemetrySource;

async function session(
  server: string,
  caPem: string,
  interval: number | ((suggestedMs: number) => number),
  lines: { msg: string; level: number }[] = [],
) {
  const own = await selfSignedPair();
  const log = pino({ level: "debug" }, { write: (line: string) => lines.push(JSON.parse(line)) });
  const s = new ControlPlaneSession({ hostId: "h-1", server, ...own, caPem }, telemetry, log, interval);
  s.start();
  stops.push(() => s.stop());
  return s;
}

describe("the telemetry interval the Welcome suggests", () => {
  it("is followed when the agent has no setting of its own, and when its own is longer", async () => {
    // The control plane suggests 1 s; the agent's default would be 5 s, and one agent's own setting 60 s.
    const follows = await gateway(1000);
    await session(follows.server, follows.caPem, (ms) => telemetryIntervalMs(undefined, ms));
    const own = await gateway(1000);
    await session(own.server, own.caPem, (ms) => telemetryIntervalMs(60, ms));
    // A control plane suggesting a minute, and an agent set to a second: its own, shorter, wins.
    const slow = await gateway(60_000);
    await session(slow.server, slow.caPem, (ms) => telemetryIntervalMs(1, ms));
    await new Promise((r) => setTimeout(r, 3500));
    expect(follows.received.telemetry).toBeGreaterThanOrEqual(3); // at once, then every second
    expect(own.received.telemetry).toBeGreaterThanOrEqual(3);
    expect(slow.received.telemetry).toBeGreaterThanOrEqual(3);
  });
});

describe("another control plane at the enrolled address", () => {
  it("is said in words, once however often the session retries", async () => {
    const other = await gateway(1000);
    const lines: { msg: string; level: number }[] = [];
    await session(other.server, (await selfSignedPair({ dnsName: CONTROL_PLANE_TLS_NAME })).certPem, 5000, lines);
    await new Promise((r) => setTimeout(r, 2500)); // retries after 0.5 s, 1 s...
    const said = lines.filter((l) => /presents a certificate that this agent's pinned CA/.test(l.msg));
    expect(said.length).toBeGreaterThanOrEqual(2);
    expect(said.filter((l) => l.level >= 50)).toHaveLength(1);
    expect(said[0]?.msg).toBe(
      `the control plane at ${other.server} presents a certificate that this agent's pinned CA (identity/ca.crt ` +
        "in its data dir) did not sign: it is another control plane, or one set up again since this host " +
        "enrolled; enroll this host again against it (`dumont-agent enroll --force`), or pass the --server of the " +
        "one it enrolled with",
    );
    expect(lines.some((l) => l.msg === "control plane stream failed")).toBe(false);
  });
});
