import { describe, expect, it } from "vitest";
import { loadConfig } from "./config.js";

describe("loadConfig", () => {
  it("fills every value from defaults", () => {
    const c = loadConfig({}, {});
    expect(c).toMatchObject({ httpPort: 8000, grpcPort: 8443, lostAfterSeconds: 10, telemetryIntervalSeconds: 5 });
    expect(c.databaseUrl).toBeUndefined();
    expect(c.dataDir.endsWith(".dumont")).toBe(true);
  });

  it("takes env vars, and flags over env vars", () => {
    const env = { DUMONT_HTTP_PORT: "9000", DUMONT_LOST_AFTER: "30", DATABASE_URL: "postgres://x@y/z" };
    expect(loadConfig({}, env)).toMatchObject({
      httpPort: 9000,
      lostAfterSeconds: 30,
      databaseUrl: "postgres://x@y/z",
    });
    expect(loadConfig({ httpPort: "9100" }, env).httpPort).toBe(9100);
  });

  it("treats an empty DATABASE_URL as unset (embedded PGlite)", () => {
    expect(loadConfig({}, { DATABASE_URL: "" }).databaseUrl).toBeUndefined();
  });

  it("reads a snapshot retention policy and a prune interval", () => {
    const c = loadConfig({}, { DUMONT_SNAPSHOT_KEEP: "last=24, daily=7,weekly=0", DUMONT_PRUNE_INTERVAL: "86400" });
    expect(c.snapshotKeep).toEqual({ last: 24, daily: 7, weekly: 0 });
    expect(c.pruneIntervalSeconds).toBe(86400);
    expect(loadConfig({}, {})).toMatchObject({ snapshotKeep: undefined, pruneIntervalSeconds: 0 });
  });

  it("reads a snapshot quota as people write sizes: powers of 1000 and of 1024; 0 or unset is none", () => {
    const quota = (v: string) => loadConfig({}, { DUMONT_SNAPSHOT_QUOTA: v }).snapshotQuota;
    // With the units it was given in, for the sizes said back (500MiB is a multiple of 1000 bytes, and binary).
    expect(quota("500GB")).toEqual({ bytes: 500e9, decimal: true });
    expect(quota("500 g")).toEqual({ bytes: 500e9, decimal: true });
    expect(quota("512GiB")).toEqual({ bytes: 512 * 2 ** 30, decimal: false });
    expect(quota("500MiB")).toEqual({ bytes: 500 * 2 ** 20, decimal: false });
    expect(quota("1.5Ti")).toEqual({ bytes: 1.5 * 2 ** 40, decimal: false });
    expect(quota("1048576")).toEqual({ bytes: 1048576, decimal: false }); // a plain count of 1024s: binary
    expect(quota("6000000")).toEqual({ bytes: 6e6, decimal: true });
    expect(quota("1234567B")).toEqual({ bytes: 1234567, decimal: true });
    expect(quota("0")).toBeUndefined();
    expect(loadConfig({}, {}).snapshotQuota).toBeUndefined();
    expect(loadConfig({ snapshotQuota: "2TB" }, { DUMONT_SNAPSHOT_QUOTA: "1TB" }).snapshotQuota?.bytes).toBe(2e12);
  });

  it("reads the API's per-key rate limit: 20 a second in bursts of 100 unless set, 0 for none", () => {
    expect(loadConfig({}, {})).toMatchObject({ apiRateLimit: 20, apiBurst: 100 });
    expect(loadConfig({}, { DUMONT_API_RATE_LIMIT: "0.5", DUMONT_API_BURST: "3" })).toMatchObject({
      apiRateLimit: 0.5,
      apiBurst: 3,
    });
    expect(loadConfig({}, { DUMONT_API_RATE_LIMIT: "0" }).apiRateLimit).toBe(0);
  });

  it("reads an empty or blank setting, from a flag or the environment, as unset: its default, never 0", () => {
    // commander hands an empty variable over as the flag's value, so both sources are checked.
    const fromEnv = loadConfig({}, { DUMONT_API_RATE_LIMIT: "", DUMONT_API_BURST: " ", DUMONT_HTTP_PORT: "" });
    expect(fromEnv).toMatchObject({ apiRateLimit: 20, apiBurst: 100, httpPort: 8000 });
    const fromFlags = loadConfig({ apiRateLimit: "", httpPort: " ", lostAfter: "" }, {});
    expect(fromFlags).toMatchObject({ apiRateLimit: 20, httpPort: 8000, lostAfterSeconds: 10 });
    expect(loadConfig({ apiRateLimit: "" }, { DUMONT_API_RATE_LIMIT: "5" }).apiRateLimit).toBe(5);
  });

  it("checks the blob store's URL, and for s3:// the endpoint, at start", () => {
    const env = { DUMONT_BLOB_STORE: "s3://bucket/dumont", DUMONT_S3_ENDPOINT: "http://127.0.0.1:9000" };
    expect(loadConfig({}, env).blobStore).toBe("s3://bucket/dumont");
    // The endpoint is only the S3 store's: a file:// store starts whatever it says.
    expect(loadConfig({}, { DUMONT_S3_ENDPOINT: "not a url" }).blobStore).toMatch(/^file:\/\/\//);
  });

  it.each([
    [{ DUMONT_API_RATE_LIMIT: "fast" }, /DUMONT_API_RATE_LIMIT must be a number of requests a second/],
    [{ DUMONT_API_RATE_LIMIT: "-1" }, /DUMONT_API_RATE_LIMIT must be 0 \(no limit\) or at least 0.001/],
    [{ DUMONT_API_RATE_LIMIT: "1e-9" }, /DUMONT_API_RATE_LIMIT must be 0 \(no limit\) or at least 0.001/],
    [{ DUMONT_API_BURST: "0" }, /DUMONT_API_BURST must be at least 1/],
    [{ DUMONT_API_BURST: "2.5" }, /DUMONT_API_BURST must be a whole number/],
    [{ DUMONT_SNAPSHOT_KEEP: "last=24,monthly=3" }, /DUMONT_SNAPSHOT_KEEP must be rules like .* got "monthly=3"/],
    [{ DUMONT_SNAPSHOT_KEEP: "last=-1" }, /DUMONT_SNAPSHOT_KEEP must be rules like/],
    [{ DUMONT_SNAPSHOT_KEEP: "last=2,last=3" }, /DUMONT_SNAPSHOT_KEEP names last twice/],
    [{ DUMONT_SNAPSHOT_KEEP: "last=0" }, /DUMONT_SNAPSHOT_KEEP must keep something/],
    [{ DUMONT_PRUNE_INTERVAL: "5" }, /DUMONT_PRUNE_INTERVAL must be 0 \(never\) or 60..2592000 seconds/],
    [
      { DUMONT_SNAPSHOT_QUOTA: "10 gigs" },
      /DUMONT_SNAPSHOT_QUOTA must be a size like 500GB, 512GiB or 2TB .* got "10 gigs"/,
    ],
    [{ DUMONT_SNAPSHOT_QUOTA: "-5GB" }, /DUMONT_SNAPSHOT_QUOTA must be a size like/],
    [{ DUMONT_SNAPSHOT_QUOTA: "0.5" }, /DUMONT_SNAPSHOT_QUOTA must be at least 1 byte, got "0.5"/],
    [{ DUMONT_SNAPSHOT_QUOTA: "99999999TB" }, /DUMONT_SNAPSHOT_QUOTA is too large/],
    [{ DUMONT_HTTP_PORT: "http" }, /DUMONT_HTTP_PORT must be a port number/],
    [{ DUMONT_GRPC_PORT: "70000" }, /DUMONT_GRPC_PORT must be 0..65535/],
    [{ DUMONT_LOST_AFTER: "0" }, /DUMONT_LOST_AFTER must be at least 1 seconds/],
    [{ DATABASE_URL: "mysql://db" }, /DATABASE_URL must start with postgres:\/\//],
    [{ DUMONT_LOG_LEVEL: "loud" }, /DUMONT_LOG_LEVEL must be one of/],
    [{ DUMONT_BLOB_STORE: "/var/blobs" }, /DUMONT_BLOB_STORE must be file:\/\/\/absolute\/path or s3:/],
    [{ DUMONT_BLOB_STORE: "s3://My_Bucket/dumont" }, /DUMONT_BLOB_STORE: .* not a valid S3 bucket name/],
    [{ DUMONT_BLOB_STORE: "s3://bucket/a//b" }, /DUMONT_BLOB_STORE: .* with an empty, "\." or "\.\." component/],
    [
      { DUMONT_BLOB_STORE: "s3://bucket/dumont", DUMONT_S3_ENDPOINT: "minio:9000" },
      /DUMONT_S3_ENDPOINT "minio:9000" is not an http\(s\) URL; give the S3 service's address/,
    ],
    [{ DUMONT_BLOB_STORE: "s3://bucket/dumont", AWS_MAX_ATTEMPTS: "0" }, /AWS_MAX_ATTEMPTS "0" is not a whole number/],
  ])("refuses %o naming the variable", (env, message) => {
    expect(() => loadConfig({}, env)).toThrow(message);
  });
});
