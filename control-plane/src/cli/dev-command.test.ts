// `dumont dev`'s banner: the command it suggests works from the shell it was started in.
import { describe, expect, it } from "vitest";
import { localAddress } from "../control-plane.js";
import { localAgentEnvironment, tryCommand } from "./dev-command.js";

describe("tryCommand", () => {
  it("is the plain command on the defaults, however the data dir was written", () => {
    expect(tryCommand("http://localhost:8000", ".dumont", "/repo")).toBe("npx dumont host list");
    expect(tryCommand("http://localhost:8000", "/repo/.dumont", "/repo")).toBe("npx dumont host list");
  });

  it("puts the API's URL and the data dir in front when they are not the CLI's defaults", () => {
    expect(tryCommand("http://localhost:18000", "/tmp/walk/dd", "/repo")).toBe(
      "DUMONT_API_URL=http://localhost:18000 DUMONT_DATA_DIR=/tmp/walk/dd npx dumont host list",
    );
    expect(tryCommand("http://localhost:8000", "/tmp/my data/it's", "/repo")).toBe(
      "DUMONT_DATA_DIR='/tmp/my data/it'\\''s' npx dumont host list",
    );
  });
});

describe("localAgentEnvironment", () => {
  it("keeps the control plane's secrets from the local agent (and what it starts), and the rest as it is", () => {
    const env = localAgentEnvironment({
      PATH: "/usr/bin",
      HOME: "/root",
      DUMONT_FAKE_NVIDIA_SMI_FIXTURE: "demo",
      DATABASE_URL: "postgres://dumont@db/dumont",
      PGPASSWORD: "secret",
      DUMONT_API_KEY: "dk_admin",
      DUMONT_MASTER_KEY: "ab".repeat(32),
      DUMONT_REPO_KEY: "cd".repeat(32),
      DUMONT_S3_ENDPOINT: "http://minio:9000",
      AWS_ACCESS_KEY_ID: "AKIA",
      AWS_SECRET_ACCESS_KEY: "secret",
    });
    expect(env).toEqual({
      PATH: "/usr/bin",
      HOME: "/root",
      DUMONT_FAKE_NVIDIA_SMI_FIXTURE: "demo",
      DUMONT_LOG_LEVEL: "warn",
    });
    expect(localAgentEnvironment({ DUMONT_LOG_LEVEL: "debug" })).toEqual({ DUMONT_LOG_LEVEL: "debug" });
  });
});

describe("localAddress", () => {
  it("is where dev reaches its own listeners: loopback for a wildcard, else the address listened on", () => {
    expect(localAddress("0.0.0.0")).toBe("127.0.0.1");
    expect(localAddress("::")).toBe("::1");
    expect(localAddress("10.0.0.5")).toBe("10.0.0.5");
    expect(localAddress("[fd00::5]")).toBe("fd00::5");
    expect(localAddress("localhost")).toBe("localhost");
  });
});
