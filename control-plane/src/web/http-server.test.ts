// The HTTP port's own limits, on a real socket: how long a client may take to send a request; and what becomes
// of an error no API handler meant to raise.
import type http from "node:http";
import net from "node:net";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { api } from "@dumont/proto";
import pino from "pino";
import { Gauge, Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { NotFoundError } from "../errors.js";
import { createMetrics } from "../metrics.js";
import { capturingLogger } from "../test-logger.js";
import { createHttpServer, listenHttp } from "./http-server.js";

const silent = pino({ level: "silent" });

describe("HTTP server", () => {
  let server: http.Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
    server = undefined;
  });

  const start = async (requestTimeoutMs?: number) => {
    server = createHttpServer({
      registry: new Registry(),
      healthy: async () => true,
      log: silent,
      requestTimeoutMs,
      routes: (router) =>
        router.service(api.HostService, {
          // Answers after longer than a short request limit: the limit is on receiving, not answering.
          async listHosts() {
            await new Promise((resolve) => setTimeout(resolve, 1500));
            return create(api.ListHostsResponseSchema, {});
          },
        }),
    });
    return listenHttp(server, "127.0.0.1", 0);
  };

  it("refuses a JSON request naming a field the API does not have, rather than reading it as absent", async () => {
    const port = await start();
    const call = (body: string) =>
      fetch(`http://127.0.0.1:${port}/dumont.api.v1.HostService/ListHosts`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
    const typo = await call('{"tenant":"acme"}'); // tenant_id (tenantId) meant
    expect(typo.status).toBe(400);
    expect(await typo.json()).toMatchObject({
      code: "invalid_argument",
      message: expect.stringMatching(/"tenant" is unknown/),
    });
    expect((await call('{"tenantId":"acme"}')).status).toBe(200);
  });

  it("limits how long a request may take to arrive by default", async () => {
    await start();
    expect(server?.requestTimeout).toBeGreaterThan(0);
    expect(server?.requestTimeout).toBeLessThanOrEqual(300_000);
    expect(server?.headersTimeout).toBeGreaterThan(0);
  });

  it("cuts off a client sending its body a byte at a time, and still answers slow calls", async () => {
    const port = await start(600);
    const socket = net.connect(port, "127.0.0.1");
    const answer = new Promise<string>((resolve) => {
      let text = "";
      socket.on("data", (d) => {
        text += d.toString();
      });
      socket.on("close", () => resolve(text));
    });
    socket.write(
      "POST /dumont.api.v1.HostService/ListHosts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n",
    );
    const drip = setInterval(() => socket.write(" "), 100);
    const reply = await Promise.race([
      answer,
      new Promise<string>((resolve) => setTimeout(() => resolve("still open after 5 s"), 5000)),
    ]);
    clearInterval(drip);
    socket.destroy();
    expect(reply).toMatch(/^HTTP\/1\.1 408/);

    const res = await fetch(`http://127.0.0.1:${port}/dumont.api.v1.HostService/ListHosts`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({});
  });
});

describe("HTTP server: /metrics", () => {
  it("names Node's own metrics with the dumont_ prefix once", async () => {
    const names = (await createMetrics().registry.getMetricsAsJSON()).map((m) => m.name);
    expect(names).toContain("dumont_process_cpu_user_seconds_total");
    expect(names).toContain("dumont_nodejs_heap_size_used_bytes");
    expect(names.filter((n) => n.startsWith("dumont_process_process_"))).toEqual([]);
  });

  it("answers 500 when a collector throws, and keeps serving", async () => {
    const registry = new Registry();
    new Gauge({
      name: "broken",
      help: "a gauge whose collect throws",
      registers: [registry],
      collect() {
        throw new Error("sensor gone");
      },
    });
    const server = createHttpServer({ registry, healthy: async () => true, log: silent, routes: () => {} });
    const port = await listenHttp(server, "127.0.0.1", 0);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/metrics`);
      expect(res.status).toBe(500);
      expect(await res.text()).toContain("metrics could not be collected: sensor gone");
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe("HTTP server: an API error no handler meant to raise", () => {
  const apiKey = `dumont_${"0".repeat(16)}_${"k".repeat(43)}`;
  const lines: string[] = [];
  const records = () => lines.map((line) => JSON.parse(line) as Record<string, unknown>);
  let server: http.Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
    server = undefined;
    lines.length = 0;
  });

  const start = async () => {
    server = createHttpServer({
      registry: new Registry(),
      healthy: async () => true,
      log: capturingLogger(lines),
      routes: (router) => {
        router.service(api.HostService, {
          async listHosts() {
            throw new Error('relation "hosts" does not exist (pool of db.internal:5432)');
          },
          async getHostMetrics(req) {
            throw new NotFoundError(`host ${req.hostId} not found`);
          },
        });
        router.service(api.SnapshotService, {
          async *listSnapshotFiles() {
            yield create(api.ListSnapshotFilesResponseSchema, { files: [{ path: "a.txt" }] });
            throw new TypeError("Cannot read properties of undefined (reading 'entries')");
          },
        });
      },
    });
    const port = await listenHttp(server, "127.0.0.1", 0);
    const transport = createConnectTransport({
      baseUrl: `http://127.0.0.1:${port}`,
      httpVersion: "1.1",
      interceptors: [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${apiKey}`);
          return next(req);
        },
      ],
    });
    return { hosts: createClient(api.HostService, transport), snapshots: createClient(api.SnapshotService, transport) };
  };
  const failure = (p: Promise<unknown>) =>
    p.then(
      () => expect.unreachable("the call succeeded"),
      (err: unknown) => ConnectError.from(err),
    );

  it("answers Internal with no detail, and logs the error and its procedure, never the key or the request", async () => {
    const { hosts } = await start();
    const err = await failure(hosts.listHosts({}));
    expect(err.code).toBe(Code.Internal);
    expect(err.rawMessage).toBe("internal error");
    expect(JSON.stringify({ message: err.message, metadata: [...err.metadata], details: err.details })).not.toMatch(
      /hosts|db\.internal/,
    );

    expect(records()).toEqual([
      expect.objectContaining({
        level: 50,
        procedure: "dumont.api.v1.HostService/ListHosts",
        err: expect.objectContaining({ message: 'relation "hosts" does not exist (pool of db.internal:5432)' }),
      }),
    ]);
    expect(lines.join("")).not.toContain(apiKey.slice(-43));
  });

  it("logs a stream's error after its first messages went out, and leaves expected errors to the client", async () => {
    const { hosts, snapshots } = await start();
    const received: string[] = [];
    const streamed = await failure(
      (async () => {
        for await (const res of snapshots.listSnapshotFiles({ snapshotId: "request-body-marker" })) {
          received.push(...res.files.map((f) => f.path));
        }
      })(),
    );
    expect(received).toEqual(["a.txt"]);
    expect(streamed.code).toBe(Code.Internal);
    expect(streamed.rawMessage).toBe("internal error");
    expect(records()).toEqual([
      expect.objectContaining({
        level: 50,
        procedure: "dumont.api.v1.SnapshotService/ListSnapshotFiles",
        err: expect.objectContaining({ type: "TypeError" }),
      }),
    ]);
    expect(lines.join("")).not.toContain("request-body-marker");

    lines.length = 0;
    const notFound = await failure(hosts.getHostMetrics({ hostId: "h-x" }));
    expect(notFound.code).toBe(Code.NotFound);
    expect(notFound.rawMessage).toBe("host h-x not found");
    expect(lines).toEqual([]);
  });
});
