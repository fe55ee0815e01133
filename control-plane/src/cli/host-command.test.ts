// `dumont host list`'s table: a host whose certificate is close to expiry is flagged.
import { describe, expect, it } from "vitest";
import { type hostJson, hostTable } from "./host-command.js";

const DAY = 86_400_000;
const now = new Date("2026-12-04T00:00:00Z");
const host = (certificateExpiresAt: string | null): ReturnType<typeof hostJson> =>
  ({
    id: "h-1",
    name: "box",
    tenantId: "acme",
    status: "online",
    simulated: false,
    agentVersion: "0.1.0",
    lastSeenAt: now.toISOString(),
    certificateExpiresAt,
    gpus: [],
    cpu: null,
    memory: null,
    disk: null,
  }) as unknown as ReturnType<typeof hostJson>;

/** The row of the one host, under the table's header. */
const hostLine = (h: ReturnType<typeof hostJson>, at: Date): string => hostTable([h], at).split("\n")[1];

describe("hostTable", () => {
  it("puts a header over aligned columns, the GPUs last", () => {
    const other = {
      ...host(null),
      id: "h-22",
      name: "bigger-box",
      gpus: [{ model: "RTX 4090", utilizationPercent: 7 }],
    };
    expect(hostTable([host(null), other as ReturnType<typeof hostJson>], now).split("\n")).toEqual([
      "ID    NAME        TENANT  STATUS  LAST SEEN                 GPUS",
      "h-1   box         acme    online  2026-12-04T00:00:00.000Z  CPU only",
      "h-22  bigger-box  acme    online  2026-12-04T00:00:00.000Z  RTX 4090 7%",
      "",
    ]);
  });

  it("says nothing of a certificate the agent will renew, or of one not recorded", () => {
    expect(hostLine(host(new Date(now.getTime() + 200 * DAY).toISOString()), now)).not.toMatch(/CERTIFICATE/);
    expect(hostLine(host(null), now)).not.toMatch(/CERTIFICATE/);
  });

  it("flags a certificate within 30 days of expiry, and one expired, with what to do", () => {
    expect(hostLine(host(new Date(now.getTime() + 10 * DAY).toISOString()), now)).toMatch(
      /CERTIFICATE EXPIRES 2026-12-14T00:00:00.000Z: its agent is not renewing it \(update the agent/,
    );
    expect(hostLine(host(new Date(now.getTime() - DAY).toISOString()), now)).toMatch(
      /CERTIFICATE EXPIRED 2026-12-03T00:00:00.000Z: enroll the machine again/,
    );
  });
});
