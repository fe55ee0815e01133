import path from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig, urlHost } from "./config.js";

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

  it("reads a snapshot quota as people write sizes: powers of 1000 and of 1024; unset is none", () => {
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
    [
      { DUMONT_API_RATE_LIMIT: "fast" },
      /^invalid configuration: --api-rate-limit \(DUMONT_API_RATE_LIMIT\) must be written in plain decimal digits \(like 20 or 0\.5\), got "fast"$/,
    ],
    [{ DUMONT_API_RATE_LIMIT: "-1" }, /DUMONT_API_RATE_LIMIT\) must be written in plain decimal digits .* got "-1"/],
    [
      { DUMONT_API_RATE_LIMIT: "1e-9" },
      /DUMONT_API_RATE_LIMIT\) must be written in plain decimal digits .* got "1e-9"/,
    ],
    [
      { DUMONT_API_RATE_LIMIT: "0.0001" },
      /DUMONT_API_RATE_LIMIT\) must be 0 \(no limit\) or from 0.001 to 100000 requests a second, got "0.0001"/,
    ],
    [
      { DUMONT_API_BURST: "0" },
      /--api-burst \(DUMONT_API_BURST\) must be a number of requests from 1 to 1000000, got "0"/,
    ],
    [
      { DUMONT_API_BURST: "2.5" },
      /--api-burst \(DUMONT_API_BURST\) must be written in plain decimal digits \(like 100\)/,
    ],
    [
      { DUMONT_SNAPSHOT_KEEP: "last=24,monthly=3" },
      /DUMONT_SNAPSHOT_KEEP\) must be rules like .*; "monthly=3" is none, got "last=24,monthly=3"/,
    ],
    [{ DUMONT_SNAPSHOT_KEEP: "last=-1" }, /DUMONT_SNAPSHOT_KEEP\) must be rules like/],
    [{ DUMONT_SNAPSHOT_KEEP: "last=2,last=3" }, /DUMONT_SNAPSHOT_KEEP\) names last twice, got "last=2,last=3"/],
    [{ DUMONT_SNAPSHOT_KEEP: "last=0" }, /DUMONT_SNAPSHOT_KEEP\) must keep something: .* got "last=0"/],
    // The CLI's --keep-last takes at most 4294967295: the same bound.
    [
      { DUMONT_SNAPSHOT_KEEP: "last=99999999999" },
      /DUMONT_SNAPSHOT_KEEP\) keeps at most 4294967295 snapshots a rule, got "last=99999999999"/,
    ],
    // The whole value quoted, and the stray comma said: `got ""` left its reader to find where that came from.
    [
      { DUMONT_SNAPSHOT_KEEP: "last=1," },
      /DUMONT_SNAPSHOT_KEEP\) has an empty rule \(a stray comma\?\): write last=24,daily=7, got "last=1,"/,
    ],
    [
      { DUMONT_PRUNE_INTERVAL: "5" },
      /--prune-interval \(DUMONT_PRUNE_INTERVAL\) must be 0 \(never\) or 60..2592000 seconds, got "5"/,
    ],
    [
      { DUMONT_SNAPSHOT_QUOTA: "10 gigs" },
      /--snapshot-quota \(DUMONT_SNAPSHOT_QUOTA\) must be a size like 500GB, 512GiB or 2TB .* got "10 gigs"/,
    ],
    [{ DUMONT_SNAPSHOT_QUOTA: "-5GB" }, /DUMONT_SNAPSHOT_QUOTA\) must be a size like .* got "-5GB"/],
    [{ DUMONT_SNAPSHOT_QUOTA: "0.5" }, /DUMONT_SNAPSHOT_QUOTA\) must be at least 1 byte, got "0.5"/],
    [
      { DUMONT_SNAPSHOT_QUOTA: "99999999TB" },
      /DUMONT_SNAPSHOT_QUOTA\) is too large: at most 9007199254740991 bytes, got "99999999TB"/,
    ],
    [{ DUMONT_HTTP_PORT: "http" }, /--http-port \(DUMONT_HTTP_PORT\) must be written in plain decimal digits/],
    [
      { DUMONT_GRPC_PORT: "70000" },
      /^invalid configuration: --grpc-port \(DUMONT_GRPC_PORT\) must be a port number 0..65535 \(0 picks a free port\), got "70000"$/,
    ],
    [
      { DUMONT_LOST_AFTER: "0" },
      /^invalid configuration: --lost-after \(DUMONT_LOST_AFTER\) must be a number of seconds from 1 to 3600, got "0"$/,
    ],
    // Its scheme only: the rest of a database URL may hold a password.
    [
      { DATABASE_URL: "mysql://root:hunter2@db" },
      /^invalid configuration: --database-url \(DATABASE_URL\) must start with postgres:\/\/ .*, got a mysql: URL$/,
    ],
    [{ DUMONT_LOG_LEVEL: "loud" }, /--log-level \(DUMONT_LOG_LEVEL\) must be one of .*, got "loud"/],
    [
      { DUMONT_BLOB_STORE: "/var/blobs" },
      /--blob-store \(DUMONT_BLOB_STORE\) must be file:\/\/\/absolute\/path or s3:.*, got "\/var\/blobs"/,
    ],
    [{ DUMONT_BLOB_STORE: "https://key:secret@host/b" }, /got "https:\/\/\*\*\*@host\/b"/],
    [
      { DUMONT_BLOB_STORE: "s3://My_Bucket/dumont" },
      /--blob-store \(DUMONT_BLOB_STORE\): .* not a valid S3 bucket name/,
    ],
    [
      { DUMONT_BLOB_STORE: "s3://bucket/a//b" },
      /--blob-store \(DUMONT_BLOB_STORE\): .* with an empty, "\." or "\.\." component/,
    ],
    [
      { DUMONT_BLOB_STORE: "s3://bucket/dumont", DUMONT_S3_ENDPOINT: "minio:9000" },
      /DUMONT_S3_ENDPOINT "minio:9000" is not an http\(s\) URL; give the S3 service's address/,
    ],
    [{ DUMONT_BLOB_STORE: "s3://bucket/dumont", AWS_MAX_ATTEMPTS: "0" }, /AWS_MAX_ATTEMPTS "0" is not a whole number/],
  ])("refuses %o naming the variable", (env, message) => {
    expect(() => loadConfig({}, env)).toThrow(message);
  });

  it("reads DUMONT_DATA_DIR set empty or blank as unset: ./.dumont, not the working directory", () => {
    const defaultDir = loadConfig({}, {}).dataDir;
    expect(defaultDir).toBe(path.resolve(".dumont"));
    expect(loadConfig({}, { DUMONT_DATA_DIR: "" }).dataDir).toBe(defaultDir);
    expect(loadConfig({}, { DUMONT_DATA_DIR: " " }).dataDir).toBe(defaultDir);
    expect(loadConfig({ dataDir: "" }, { DUMONT_DATA_DIR: "/srv/dumont" }).dataDir).toBe("/srv/dumont");
  });

  // Number() reads all of these, and DUMONT_HTTP_PORT=0x46B0 listened on 18096.
  it.each([
    ["httpPort", "0x46B0", "DUMONT_HTTP_PORT"],
    ["httpPort", "1.8097e4", "DUMONT_HTTP_PORT"],
    ["httpPort", "0b101", "DUMONT_HTTP_PORT"],
    ["grpcPort", "8443.0", "DUMONT_GRPC_PORT"],
    ["lostAfter", "0x10", "DUMONT_LOST_AFTER"],
    ["lostAfter", "1e1", "DUMONT_LOST_AFTER"],
    ["telemetryInterval", "+5", "DUMONT_TELEMETRY_INTERVAL"],
    ["pruneInterval", "Infinity", "DUMONT_PRUNE_INTERVAL"],
    ["apiBurst", "0o17", "DUMONT_API_BURST"],
  ] as const)("refuses %s written %s, anything but plain decimal digits", (key, value, variable) => {
    const message = new RegExp(
      `\\(${variable}\\) must be written in plain decimal digits .*, got "${value.replace(/[.+]/g, "\\$&")}"$`,
    );
    expect(() => loadConfig({ [key]: value }, {})).toThrow(message);
    expect(() => loadConfig({}, { [variable]: value })).toThrow(message);
  });

  it("takes plain decimals where a setting takes fractions, and whole numbers with spaces around", () => {
    expect(
      loadConfig({ telemetryInterval: "0.5", lostAfter: " 2.5 ", apiRateLimit: ".5", httpPort: " 9000 " }, {}),
    ).toMatchObject({ telemetryIntervalSeconds: 0.5, lostAfterSeconds: 2.5, apiRateLimit: 0.5, httpPort: 9000 });
  });

  it("refuses one port for both HTTP and gRPC, naming both flags (0, a free port each, is fine)", () => {
    expect(() => loadConfig({ httpPort: "18112", grpcPort: "18112" }, {})).toThrow(
      /^invalid configuration: --http-port \(DUMONT_HTTP_PORT\) and --grpc-port \(DUMONT_GRPC_PORT\) both name port 18112: give each its own port$/,
    );
    expect(() => loadConfig({}, { DUMONT_HTTP_PORT: "8443" })).toThrow(/both name port 8443/);
    expect(loadConfig({ httpPort: 0, grpcPort: 0 }, {})).toMatchObject({ httpPort: 0, grpcPort: 0 });
  });

  it("refuses --lost-after under twice --telemetry-interval, where healthy hosts would flap lost", () => {
    expect(() => loadConfig({ lostAfter: "6" }, {})).toThrow(
      /^invalid configuration: --lost-after \(DUMONT_LOST_AFTER\) 6 is less than twice --telemetry-interval \(DUMONT_TELEMETRY_INTERVAL\) 5: .*give --lost-after 10 or more, or a shorter --telemetry-interval$/,
    );
    expect(() => loadConfig({}, { DUMONT_TELEMETRY_INTERVAL: "30" })).toThrow(/--lost-after 60 or more/);
    // The defaults (10 and 5) are exactly twice; a shorter interval allows a shorter --lost-after.
    expect(loadConfig({}, {})).toMatchObject({ lostAfterSeconds: 10, telemetryIntervalSeconds: 5 });
    expect(loadConfig({ lostAfter: "3", telemetryInterval: "1.5" }, {}).lostAfterSeconds).toBe(3);
    // Agents send at most once a second, whatever is suggested: judged by that.
    expect(() => loadConfig({ lostAfter: "1", telemetryInterval: "0.5" }, {})).toThrow(
      /--telemetry-interval \(DUMONT_TELEMETRY_INTERVAL\) 0\.5 \(agents send at most once a second\): .*give --lost-after 2 or more$/,
    );
    expect(loadConfig({ lostAfter: "2", telemetryInterval: "0.5" }, {}).lostAfterSeconds).toBe(2);
  });

  it("trims what surrounds a setting: a stray space in a compose file is not another data directory", () => {
    expect(loadConfig({}, { DUMONT_DATA_DIR: "/srv/dumont " }).dataDir).toBe("/srv/dumont");
    expect(loadConfig({}, { DUMONT_HOST: " 0.0.0.0" }).host).toBe("0.0.0.0");
  });

  it("never quotes what stands before an @ in a blob store URL, with a scheme or without", () => {
    for (const url of ["minio:s3cret@host/b", "ftp://user:s3cret@host/b"]) {
      let message = "";
      try {
        loadConfig({}, { DUMONT_BLOB_STORE: url });
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message, url).toMatch(/DUMONT_BLOB_STORE\) must be file:\/\/\/absolute\/path or s3:\/\/bucket\/prefix/);
      expect(message, url).not.toContain("s3cret");
    }
  });

  it("refuses a snapshot quota of 0, saying to leave it unset for none", () => {
    for (const zero of ["0", "0B", "0GiB"]) {
      expect(() => loadConfig({ snapshotQuota: zero }, {})).toThrow(
        `invalid configuration: --snapshot-quota (DUMONT_SNAPSHOT_QUOTA) must be above 0, got "${zero}": leave it unset for no quota`,
      );
    }
    expect(loadConfig({}, { DUMONT_SNAPSHOT_QUOTA: "" }).snapshotQuota).toBeUndefined();
  });

  it("takes a public host that is a DNS name or an IP address; IPv6 bracketed or not, kept bare", () => {
    const publicHost = (v: string) => loadConfig({ publicHost: v }, {}).publicHost;
    expect(publicHost("cp.example.com")).toBe("cp.example.com");
    expect(publicHost("gpu-box-7")).toBe("gpu-box-7");
    expect(publicHost("10.0.0.5")).toBe("10.0.0.5");
    expect(publicHost("::1")).toBe("::1");
    expect(publicHost("[fd00::5]")).toBe("fd00::5");
    expect(urlHost(publicHost("[fd00::5]"))).toBe("[fd00::5]");
    expect(urlHost(publicHost("cp.example.com"))).toBe("cp.example.com");
    // Compose service names and internal DNS names with underscores; an absolute name's dot dropped.
    expect(publicHost("cp_1.internal")).toBe("cp_1.internal");
    expect(publicHost("cp.example.com.")).toBe("cp.example.com");
    expect(() => loadConfig({ publicHost: "fe80::1%eth0" }, {})).toThrow(/"fe80::1%eth0" has a zone/);
  });

  it.each([
    "bad host",
    "cp.example.com:8000",
    "http://cp.example.com",
    "-cp.example.com",
    "cp..example.com",
    "[cp.example.com]",
    "a".repeat(64),
  ])("refuses the public host %j, naming the flag", (value) => {
    expect(() => loadConfig({ publicHost: value }, {})).toThrow(
      `invalid configuration: --public-host (DUMONT_PUBLIC_HOST) must be a DNS name (like cp.example.com) or an IP address (10.0.0.5, ::1 or [::1]), got ${JSON.stringify(value)}`,
    );
  });

  it("refuses a wildcard address as the public host: nobody reaches 0.0.0.0", () => {
    expect(() => loadConfig({}, { DUMONT_PUBLIC_HOST: "0.0.0.0" })).toThrow(
      /--public-host \(DUMONT_PUBLIC_HOST\) "0.0.0.0" is an address that means any address/,
    );
    expect(() => loadConfig({ publicHost: "[::]" }, {})).toThrow(/"\[::\]" is an address that means any address/);
  });
});
