import { describe, expect, it } from "vitest";
import { loadAgentConfig, telemetryIntervalMs } from "./config.js";

describe("loadAgentConfig --server (DUMONT_SERVER)", () => {
  it("takes the flag over the variable, and an empty variable as none", () => {
    const env = { DUMONT_SERVER: "https://moved.example.com:9443" };
    expect(loadAgentConfig({ dataDir: "/d" }, env).server).toBe("https://moved.example.com:9443");
    expect(loadAgentConfig({ dataDir: "/d", server: "https://cp.example.com:8443" }, env).server).toBe(
      "https://cp.example.com:8443",
    );
    expect(loadAgentConfig({ dataDir: "/d" }, { DUMONT_SERVER: "" }).server).toBeUndefined();
  });

  it("refuses what is not a gateway address, naming the flag and the variable", () => {
    expect(() => loadAgentConfig({ dataDir: "/d" }, { DUMONT_SERVER: "http://cp:8000" })).toThrow(
      /--server \(DUMONT_SERVER\) must be the control plane's agent gateway/,
    );
    expect(() => loadAgentConfig({ dataDir: "/d", server: "https://:8443" }, {})).toThrow(
      /--server \(DUMONT_SERVER\) names no host: got "https:\/\/:8443"; it must look like https:\/\/HOST:8443/,
    );
    // Each of these was taken, and `run` retried it forever.
    expect(() => loadAgentConfig({ dataDir: "/d", server: "zzz" }, {})).toThrow(
      '--server (DUMONT_SERVER) has no https:// in front: got "zzz"; it must look like https://HOST:8443',
    );
    expect(() => loadAgentConfig({ dataDir: "/d" }, { DUMONT_SERVER: "cp.example.com:8443" })).toThrow(
      /--server \(DUMONT_SERVER\) has no https:\/\/ in front/,
    );
    expect(() => loadAgentConfig({ dataDir: "/d" }, { DUMONT_SERVER: "https://cp:8443/api?x=1" })).toThrow(
      /--server \(DUMONT_SERVER\) has a path, query or fragment/,
    );
  });
});

describe("the telemetry interval", () => {
  it("is the agent's own only when its flag or variable is given", () => {
    expect(loadAgentConfig({ dataDir: "/d" }, {}).telemetryIntervalSeconds).toBeUndefined();
    expect(
      loadAgentConfig({ dataDir: "/d" }, { DUMONT_TELEMETRY_INTERVAL: "" }).telemetryIntervalSeconds,
    ).toBeUndefined();
    expect(loadAgentConfig({ dataDir: "/d" }, { DUMONT_TELEMETRY_INTERVAL: "2" }).telemetryIntervalSeconds).toBe(2);
    expect(
      loadAgentConfig({ dataDir: "/d", telemetryInterval: "7" }, { DUMONT_TELEMETRY_INTERVAL: "2" }),
    ).toMatchObject({ telemetryIntervalSeconds: 7 });
  });

  it("follows the control plane's suggestion, within 1..3600 s, or the agent's own where that is shorter", () => {
    expect(telemetryIntervalMs(undefined, 30_000)).toBe(30_000); // `dumont dev --telemetry-interval 30`
    expect(telemetryIntervalMs(2, 30_000)).toBe(2000); // the agent's own, shorter, wins
    expect(telemetryIntervalMs(0.05, 30_000)).toBe(50); // ...with its own bounds
    // Longer than the control plane's, it would be declared lost between samples: cut to it, and said.
    const cut: [number, number][] = [];
    expect(telemetryIntervalMs(30, 2000, (own, suggested) => cut.push([own, suggested]))).toBe(2000);
    expect(cut).toEqual([[30_000, 2000]]);
    expect(telemetryIntervalMs(30, 0)).toBe(30_000); // a control plane that suggests none: the agent's own
    expect(telemetryIntervalMs(undefined, 0)).toBe(5000); // a control plane that suggests none
    expect(telemetryIntervalMs(undefined, 50)).toBe(1000);
    expect(telemetryIntervalMs(undefined, 86_400_000)).toBe(3_600_000);
  });
});
