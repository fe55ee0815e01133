// ControlPlaneSession's start and stop, against a control plane that is not there (a port nothing listens on):
// what a stop does while the session is still opening its stream. Sessions with a control plane are tested end
// to end in tests/e2e.
import type { Inventory } from "@dumont/proto";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { ControlPlaneSession, type TelemetrySource } from "./control-plane-session.js";
import { selfSignedPair } from "./testing.js";

/** A telemetry source whose inventory reads answer only when the test says (a slow nvidia-smi). */
function slowInventory() {
  const pending: (() => void)[] = [];
  const telemetry = {
    inventory: () => new Promise<Inventory>((resolve) => pending.push(() => resolve({} as Inventory))),
    sample: async () => ({}),
  } as unknown as TelemetrySource;
  return { telemetry, pending };
}

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(condition()).toBe(true);
}

const streamOf = (session: ControlPlaneSession) => (session as unknown as { stream?: object }).stream;
const clientOf = (session: ControlPlaneSession) => (session as unknown as { client: object }).client;

describe("ControlPlaneSession.stop while the stream is being opened", () => {
  it("opens nothing once stopped: neither the first stream nor a reconnect's", async () => {
    const { keyPem, certPem } = await selfSignedPair();
    const identity = { hostId: "h-1", server: "127.0.0.1:1", keyPem, certPem, caPem: certPem };
    const log = pino({ level: "silent" });

    // Stopped while the first open reads the inventory: the client it would connect with is closed by then
    // ("Channel has been shut down" was an unhandled rejection, which ends the agent mid-shutdown).
    const first = slowInventory();
    const starting = new ControlPlaneSession(identity, first.telemetry, log, 60_000);
    starting.start();
    await until(() => first.pending.length === 1);
    await starting.stop();
    first.pending.shift()?.();
    await new Promise((r) => setTimeout(r, 100));
    expect(streamOf(starting)).toBeUndefined();

    // Stopped while a reconnect reads it (nothing listens, so the first stream fails and the session retries):
    // a new client and stream were opened after stop() had returned, and kept the process alive.
    const again = slowInventory();
    const reconnecting = new ControlPlaneSession(identity, again.telemetry, log, 60_000);
    reconnecting.start();
    await until(() => again.pending.length === 1);
    again.pending.shift()?.();
    await until(() => again.pending.length === 1); // the reconnect, after its backoff
    await reconnecting.stop();
    const closed = clientOf(reconnecting);
    again.pending.shift()?.();
    await new Promise((r) => setTimeout(r, 100));
    // (Its stream would fail at once here, nothing listening: the new client it would have made says it.)
    expect(clientOf(reconnecting)).toBe(closed);
    expect(streamOf(reconnecting)).toBeUndefined();
  });
});
