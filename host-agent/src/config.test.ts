import { describe, expect, it } from "vitest";
import { loadAgentConfig } from "./config.js";

describe("loadAgentConfig --server (DUMONT_SERVER)", () => {
  it("takes the flag over the variable, and an empty variable as none", () => {
    const env = { DUMONT_SERVER: "https://moved.example.com:9443" };
    expect(loadAgentConfig({ dataDir: "/d" }, env).server).toBe("https://moved.example.com:9443");
    expect(loadAgentConfig({ dataDir: "/d", server: "cp.example.com:8443" }, env).server).toBe("cp.example.com:8443");
    expect(loadAgentConfig({ dataDir: "/d" }, { DUMONT_SERVER: "" }).server).toBeUndefined();
  });

  it("refuses what is not a gateway address, naming the flag and the variable", () => {
    expect(() => loadAgentConfig({ dataDir: "/d" }, { DUMONT_SERVER: "http://cp:8000" })).toThrow(
      /--server \(DUMONT_SERVER\) must be the control plane's agent gateway/,
    );
    expect(() => loadAgentConfig({ dataDir: "/d", server: "https://:8443" }, {})).toThrow(
      /--server \(DUMONT_SERVER\) must (look like|name a host)/,
    );
  });
});
