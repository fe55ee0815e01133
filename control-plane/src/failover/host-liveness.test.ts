import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTenant } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { getHost, insertHost, listEvents, markHostOnline } from "../db/host-repository.js";
import { openTestDatabase } from "../db/test-database.js";
import { createMetrics } from "../metrics.js";
import { HostLiveness } from "./host-liveness.js";

describe("HostLiveness", () => {
  let db: Db;
  let close: () => Promise<void>;
  const log = pino({ level: "silent" });

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    await ensureTenant(db, "p", "p");
    for (const id of ["h-quiet", "h-chatty"]) {
      await insertHost(db, { id, tenantId: "p", name: id, hostname: id, agentVersion: "1", certSerial: id });
    }
  });
  afterAll(() => close());

  it("marks a host lost after lostAfter of silence, once, with an event; heartbeats keep others online", async () => {
    const t0 = new Date();
    for (const id of ["h-quiet", "h-chatty"]) {
      await markHostOnline(db, id, { agentVersion: "1", protocolVersion: 1, simulated: false, hostname: id, now: t0 });
    }
    const lostCalls: string[][] = [];
    const liveness = new HostLiveness(db, log, createMetrics(), {
      lostAfterSeconds: 10,
      onLost: (ids) => lostCalls.push(ids),
    });
    // Within the start-up grace nothing is declared lost.
    expect(await liveness.check(new Date(t0.getTime() + 5_000))).toEqual([]);

    liveness.heartbeat("h-chatty");
    await liveness.check(new Date(t0.getTime() + 9_000));
    // Pretend the process started long ago, so the grace period is over.
    (liveness as unknown as { startedAt: number }).startedAt = 0;
    expect(await liveness.check(new Date(t0.getTime() + 12_000))).toEqual(["h-quiet"]);
    expect(await liveness.check(new Date(t0.getTime() + 13_000))).toEqual([]);
    expect(lostCalls).toEqual([["h-quiet"]]);
    expect((await getHost(db, "h-quiet"))!.status).toBe("lost");
    expect((await getHost(db, "h-chatty"))!.status).toBe("online");
    expect((await listEvents(db, "h-quiet")).map((e) => e.kind)).toEqual(["online", "lost"]);
  });
});
