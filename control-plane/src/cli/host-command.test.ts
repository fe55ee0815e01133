// `dumont host list`'s lines: a host whose certificate is close to expiry is flagged.
import { describe, expect, it } from "vitest";
import { type hostJson, hostLine } from "./host-command.js";

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

describe("hostLine", () => {
  it("names the host's tenant after its name", () => {
    expect(hostLine(host(null), now)).toMatch(/^h-1 {2}box {18}acme {9}online /);
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
