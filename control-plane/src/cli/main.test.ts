// `dumont`'s global flags (--api-url, --api-key), through the built CLI as a process: each is taken once, and
// given twice is refused before any request, naming the flag (never quoting the key).
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it, onTestFinished } from "vitest";
import { CertificateAuthority } from "../agent-gateway/certificate-authority.js";

describe("dumont (admin CLI): global flags", () => {
  const bin = fileURLToPath(new URL("../../bin/dumont.cjs", import.meta.url));
  const secret = "s".repeat(42);
  const key = (last: string) => `dumont_${"0".repeat(16)}_${secret}${last}`;
  // Nothing listens on ports 1 and 2: a request that got that far fails "cannot reach".
  const env = { ...process.env, DUMONT_API_URL: "http://127.0.0.1:1", DUMONT_API_KEY: key("e") };
  const dumont = async (args: string[]) => {
    try {
      await promisify(execFile)(process.execPath, [bin, ...args], { env });
      return { code: 0, stdout: "", stderr: "" };
    } catch (err) {
      const { code, stdout, stderr } = err as { code: number; stdout: string; stderr: string };
      return { code, stdout, stderr };
    }
  };

  it.each<[string, string[]]>([
    ["before the command", ["--api-url", "http://127.0.0.1:1", "--api-url", "http://127.0.0.1:2", "host", "list"]],
    ["before and after it", ["--api-url", "http://127.0.0.1:1", "snapshot", "list", "--api-url=http://127.0.0.1:2"]],
  ])("refuses --api-url given twice (%s)", async (_where, args) => {
    const res = await dumont(args);
    expect(res).toMatchObject({ code: 1, stdout: "" });
    expect(res.stderr).toMatch(/--api-url was given twice: give it once/);
    expect(res.stderr).not.toMatch(/cannot reach/);
  });

  it("refuses --api-key given twice without printing either key", async () => {
    const res = await dumont(["--api-key", key("a"), "host", "list", "--api-key", key("b")]);
    expect(res).toEqual({ code: 1, stdout: "", stderr: "dumont: --api-key was given twice: give it once\n" });
  });

  it("prints commander's own errors as one line, as its other errors, not followed by the usage", async () => {
    const cases: [string[], string][] = [
      [
        ["key", "create", "--role", "consumer", "--bogus"],
        "dumont: unknown option '--bogus'; add --help for the usage\n",
      ],
      [["key", "create"], "dumont: required option '--role <role>' not specified; add --help for the usage\n"],
      [
        ["snapshot", "restore", "abc", "--host", "h-1", "--target", "rel"],
        "dumont: option '--target <dir>' argument 'rel' is invalid. --target must be an absolute path on the host, " +
          'got "rel"; add --help for the usage\n',
      ],
    ];
    for (const [args, line] of cases)
      expect(await dumont(args), args.join(" ")).toEqual({ code: 1, stdout: "", stderr: line });
  });

  it("takes each once, over its environment variable", async () => {
    const res = await dumont(["--api-url", "http://127.0.0.1:2", "--api-key", key("a"), "host", "list"]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/^dumont: \[unavailable\] cannot reach the control plane at http:\/\/127\.0\.0\.1:2 /);
  });

  it("takes DUMONT_API_KEY set empty as unset: the key file is read", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "dumont-empty-key-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    await writeFile(path.join(dir, "admin-api-key"), `${key("f")}\n`);
    const res = await promisify(execFile)(process.execPath, [bin, "host", "list"], {
      env: { ...process.env, DUMONT_API_URL: "http://127.0.0.1:1", DUMONT_API_KEY: "", DUMONT_DATA_DIR: dir },
    }).catch((err: { stderr: string }) => err);
    expect(res.stderr).toMatch(/cannot reach the control plane at http:\/\/127\.0\.0\.1:1/); // not "no API key"
  });

  it("says where it looked for the admin key when there is none, and how to point it at the data dir", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "dumont-no-key-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const res = await promisify(execFile)(process.execPath, [bin, "host", "list"], {
      env: { ...process.env, DUMONT_API_URL: "http://127.0.0.1:1", DUMONT_API_KEY: "", DUMONT_DATA_DIR: dir },
    }).catch((err: { stderr: string }) => err);
    expect(res.stderr).toBe(
      "dumont: no API key: pass --api-key, set DUMONT_API_KEY, or point DUMONT_DATA_DIR at the control plane's data " +
        `dir (its admin-api-key; now ${dir}, which holds none)\n`,
    );
  });

  it("says a connection closed before its answer as that, with both readings: a call cut short, or the wrong port", async () => {
    // A listener that takes the connection and drops it: a control plane killed mid-call, or not its API at all
    // (the request is refused as it is written, EPIPE, or its answer cut, ECONNRESET, as the timing falls).
    const server = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const res = await dumont(["--api-url", url, "host", "list"]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(
      new RegExp(
        `^dumont: \\[unavailable\\] the connection to ${url.replace(/\./g, "\\.")} closed before the answer was ` +
          "whole \\((ECONNRESET|EPIPE)\\)\\. If that is the control plane's API and the call reached it, whether it did " +
          "what was asked is not known: .*point --api-url \\(DUMONT_API_URL\\) at it\n$",
      ),
    );
  });

  it("says which wrong address --api-url is: https:// to plain HTTP, a certificate it does not trust, a path", async () => {
    // A TLS server with a certificate from a CA this machine does not trust (the agents' gateway's kind), and a
    // plain HTTP server that answers 404 to everything.
    const dir = await mkdtemp(path.join(tmpdir(), "dumont-wrong-url-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const ca = await CertificateAuthority.loadOrCreate(dir);
    const tls = https.createServer({ key: ca.tls.serverKeyPem, cert: ca.tls.serverCertPem }, (_q, r) => r.end());
    const plain = http.createServer((_q, r) => {
      r.statusCode = 404;
      r.end();
    });
    for (const server of [tls, plain]) {
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
    }
    const at = (server: http.Server, scheme: string, rest = "") =>
      `${scheme}://127.0.0.1:${(server.address() as AddressInfo).port}${rest}`;
    const cases: [string, RegExp][] = [
      [
        at(plain, "https"),
        /^dumont: \[unavailable\] what answers at \S+ does not speak TLS \(EPROTO\): the control plane's API is plain HTTP \(--api-url http:\/\/HOST:8000\)/,
      ],
      [
        at(tls, "https"),
        /^dumont: \[unavailable\] the server at \S+ presents a certificate this machine does not trust \(.+\): if that is the agents' gateway \(port 8443\), the API is on the HTTP port/,
      ],
      [
        at(plain, "http", "/foo"),
        /^dumont: \[unavailable\] there is no Dumont API at http:\/\/127\.0\.0\.1:\d+\/foo \(HTTP 404\): give --api-url \(DUMONT_API_URL\) the API's base URL, http:\/\/HOST:8000, with no path\n$/,
      ],
    ];
    for (const [url, said] of cases) {
      const res = await dumont(["--api-url", url, "host", "list"]);
      expect(res.code, url).toBe(1);
      expect(res.stderr, url).toMatch(said);
      expect(res.stderr, url).not.toMatch(/internal|ssl3_get_record/);
    }
  });

  it("says --api-key is empty, not that the data dir holds no key (it may)", async () => {
    const res = await dumont(["--api-url", "http://127.0.0.1:1", "--api-key", "", "host", "list"]);
    expect(res.code).toBe(1);
    expect(res.stderr).toBe(
      "dumont: --api-key is empty: give the key (dumont_<id>_<secret>), or leave the flag out to use the default\n",
    );
  });

  it("refuses a user name or password in --api-url without repeating it (the API reads only the key)", async () => {
    for (const url of ["http://ops:hunter2/with/slash@127.0.0.1:1", "ftp://ops:hunter2@cp.example"]) {
      const res = await dumont(["--api-url", url, "host", "list"]);
      expect(res.code, url).toBe(1);
      expect(res.stderr, url).toMatch(/--api-url \(DUMONT_API_URL\) .*<credentials removed>@/);
      expect(res.stderr, url).not.toMatch(/hunter2|ops:/);
    }
  });

  it.each<[string[], string]>([
    [["host", "join-token", "create", "--ttl", "59s"], '--ttl must be 60s..7d, got "59s"'],
    [["host", "join-token", "create", "--ttl", "8d"], '--ttl must be 60s..7d, got "8d"'],
    [["host", "metrics", "h-1", "--since", "0"], '--since must be 1s..7d, got "0"'],
    [["host", "metrics", "h-1", "--since", "8d"], '--since must be 1s..7d, got "8d"'],
    [
      ["snapshot", "forget", "--workspace", "w", "--prune"],
      "--workspace narrows a --keep-* policy: give one with it (a prune covers the whole repository)",
    ],
    [
      ["snapshot", "restore", "latest", "--host", "h-1", "--target", "/t"],
      'SNAPSHOT_ID "latest" is direct mode\'s: the control plane names snapshots by id; `dumont snapshot list ' +
        "--workspace ID` shows a workspace's, newest last",
    ],
  ])("refuses %j before any request, naming the flag as typed", async (args, message) => {
    expect(await dumont(args)).toEqual({ code: 1, stdout: "", stderr: `dumont: ${message}\n` });
  });

  it.each<[string[], string]>([
    [["host", "list", "--tenant", ""], "--tenant is empty: give a tenant id"],
    [["key", "list", "--tenant", "a1", "--tenant", "b1"], "--tenant was given twice: give it once"],
    [["key", "create", "--role", "provider", "--tenant", " "], "--tenant is empty: give a tenant id"],
    // Checked here as the API would check it, naming the flag (the API's refusal named its field, tenant_id).
    [
      ["snapshot", "list", "--tenant", "Acme_Corp"],
      '--tenant must be 2..63 lowercase letters, digits and dashes, starting and ending with a letter or digit, got "Acme_Corp"',
    ],
  ])("refuses %j before any request: an empty --tenant would mean every tenant", async (args, message) => {
    const res = await dumont(args);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(message);
    expect(res.stderr).not.toMatch(/cannot reach/);
  });
});

describe("dumont: libuv's thread pool", () => {
  const bin = fileURLToPath(new URL("../../bin/dumont.cjs", import.meta.url));
  // Preloaded with --require (it uses no thread pool itself): on exit, writes how many threads the process ran.
  // The pool is made whole at its first use, and loading the CLI's ES modules is one.
  const COUNT_THREADS = `
const { readdirSync, writeFileSync } = require("node:fs");
process.on("exit", () => writeFileSync(process.env.THREADS_OUT, String(readdirSync("/proc/self/task").length)));
`;

  it.runIf(process.platform === "linux")(
    "runs 16 threads there, unless UV_THREADPOOL_SIZE says otherwise",
    async () => {
      const dir = await mkdtemp(path.join(tmpdir(), "dumont-threads-"));
      onTestFinished(() => rm(dir, { recursive: true, force: true }));
      await writeFile(path.join(dir, "count.cjs"), COUNT_THREADS);
      const threads = async (size: string | undefined) => {
        const out = path.join(dir, `threads-${size ?? "default"}`);
        const env: NodeJS.ProcessEnv = { ...process.env, THREADS_OUT: out, UV_THREADPOOL_SIZE: size };
        await promisify(execFile)(process.execPath, ["--require", path.join(dir, "count.cjs"), bin, "--version"], {
          env,
        });
        return Number(await readFile(out, "utf8"));
      };
      const four = await threads("4");
      // The same process but for the pool: 12 threads more by default, 4 more when the operator says 8.
      expect((await threads(undefined)) - four).toBe(12);
      expect((await threads("8")) - four).toBe(4);
    },
  );
});

describe("dumont: what a client command loads", () => {
  const bin = fileURLToPath(new URL("../../bin/dumont.cjs", import.meta.url));
  // Preloaded with --require: on exit, writes the CommonJS packages the process loaded (ES modules of the CLI
  // load CommonJS ones through the same cache).
  const LIST_PACKAGES = `
const { writeFileSync } = require("node:fs");
process.on("exit", () => {
  const names = new Set();
  for (const file of Object.keys(require.cache)) {
    const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(file);
    if (m) names.add(m[1]);
  }
  writeFileSync(process.env.PACKAGES_OUT, JSON.stringify([...names].sort()));
});
`;

  it("loads the API client alone, not the control plane's server (gRPC, databases, logging)", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "dumont-loads-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    await writeFile(path.join(dir, "packages.cjs"), LIST_PACKAGES);
    const loaded = async (args: string[]): Promise<string[]> => {
      const out = path.join(dir, `packages-${args[0]}`);
      // Nothing listens on port 1: the command runs as far as its request, which fails.
      const env = { ...process.env, PACKAGES_OUT: out, DUMONT_API_URL: "http://127.0.0.1:1", DUMONT_API_KEY: "x" };
      await promisify(execFile)(process.execPath, ["--require", path.join(dir, "packages.cjs"), bin, ...args], {
        env,
      }).catch(() => {});
      return JSON.parse(await readFile(out, "utf8")) as string[];
    };
    // Loading the control plane for every command cost each ~0.45 s of a 0.75 s start (0.3 s without it).
    const server = ["@grpc/grpc-js", "pg", "pino", "prom-client", "tsyringe"];
    for (const args of [["host", "list"], ["snapshot", "list"], ["--help"]]) {
      expect(
        (await loaded(args)).filter((name) => server.includes(name)),
        args.join(" "),
      ).toEqual([]);
    }
    // The same hook sees them where the control plane is loaded: `serve` with a flag it refuses after loading.
    expect(await loaded(["serve", "--http-port", "not-a-port"])).toEqual(expect.arrayContaining(["@grpc/grpc-js"]));
  });
});
