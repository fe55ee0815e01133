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
      startedAt: t0.getTime() - 60_000, // long enough ago: the start-up grace is over
      onLost: (ids) => lostCalls.push(ids),
    });
    liveness.heartbeat("h-chatty", t0.getTime() - 60_000);
    liveness.heartbeat("h-chatty", t0.getTime() + 9_000);
    await liveness.check(new Date(t0.getTime() + 9_000));
    expect(await liveness.check(new Date(t0.getTime() + 12_000))).toEqual(["h-quiet"]);
    expect(await liveness.check(new Date(t0.getTime() + 13_000))).toEqual([]);
    expect(lostCalls).toEqual([["h-quiet"]]);
    expect((await getHost(db, "h-quiet"))!.status).toBe("lost");
    expect((await getHost(db, "h-chatty"))!.status).toBe("online");
    expect((await listEvents(db, "h-quiet")).map((e) => e.kind)).toEqual(["online", "lost"]);
  });

  it("does not call a host lost whose stream this side holds back (a snapshot behind a slow blob store)", async () => {
    await insertHost(db, {
      id: "h-held",
      tenantId: "p",
      name: "h-held",
      hostname: "h",
      agentVersion: "1",
      certSerial: "held",
    });
    const t0 = new Date();
    await markHostOnline(db, "h-held", {
      agentVersion: "1",
      protocolVersion: 1,
      simulated: false,
      hostname: "h",
      now: t0,
    });
    const liveness = new HostLiveness(db, log, createMetrics(), {
      lostAfterSeconds: 10,
      startedAt: t0.getTime() - 60_000,
    });
    let held = true;
    liveness.countHeldBackAsHeard(() => (held ? ["h-held"] : []));
    // Nothing read from it for 20 s: it is we who stopped reading.
    // (Other tests' hosts share the database: only this one is judged here.)
    expect(await liveness.check(new Date(t0.getTime() + 12_000))).not.toContain("h-held");
    expect(await liveness.check(new Date(t0.getTime() + 20_000))).not.toContain("h-held");
    expect((await getHost(db, "h-held"))!.status).toBe("online");
    // Read again, and then silent for longer than lostAfter: lost, as any host.
    held = false;
    expect(await liveness.check(new Date(t0.getTime() + 29_000))).not.toContain("h-held");
    expect(await liveness.check(new Date(t0.getTime() + 31_000))).toContain("h-held");
  });

  it("after a restart, waits while agents are still reconnecting, then declares the rest lost; the wait is capped", async () => {
    const ids = ["h-a", "h-b", "h-c"];
    for (const id of ids) {
      await insertHost(db, { id, tenantId: "p", name: id, hostname: id, agentVersion: "1", certSerial: id });
    }
    // Online before the restart, last seen at t0 (the control plane went down right after).
    const t0 = Date.now();
    for (const id of ids) {
      await markHostOnline(db, id, {
        agentVersion: "1",
        protocolVersion: 1,
        simulated: false,
        hostname: id,
        now: new Date(t0),
      });
    }
    const start = t0 + 5_000;
    const at = (s: number) => new Date(start + s * 1000);
    const liveness = new HostLiveness(db, log, createMetrics(), { lostAfterSeconds: 10, startedAt: start });
    // A slow reconnect wave: h-a is back at 2 s, h-b only at 15 s; h-c never comes back.
    liveness.heartbeat("h-a", start + 2_000);
    expect(await liveness.check(at(11))).toEqual([]); // lostAfter since start, but the wave is not over
    liveness.heartbeat("h-b", start + 15_000);
    liveness.heartbeat("h-a", start + 15_000);
    expect(await liveness.check(at(20))).toEqual([]); // h-b came back 5 s ago: still waiting
    liveness.heartbeat("h-a", start + 24_000);
    liveness.heartbeat("h-b", start + 24_000);
    // No host came back for lostAfter: the wave is over and only the silent one is lost.
    expect((await liveness.check(at(25))).filter((id) => ids.includes(id))).toEqual(["h-c"]);
    expect((await getHost(db, "h-b"))!.status).toBe("online");

    // A fleet that keeps trickling back cannot hold detection off past the cap.
    const capped = new HostLiveness(db, log, createMetrics(), { lostAfterSeconds: 1, startedAt: start });
    for (let s = 0; s < 30; s++) capped.heartbeat(`h-new-${s}`, start + s * 500);
    await markHostOnline(db, "h-a", {
      agentVersion: "1",
      protocolVersion: 1,
      simulated: false,
      hostname: "h-a",
      now: new Date(start),
    });
    expect(await capped.check(new Date(start + 9_000))).toEqual([]);
    expect(await capped.check(new Date(start + 10_000))).toContain("h-a");
  });
});
