// The HTTP port's own limits, on a real socket: how long a client may take to send a request.
import type http from "node:http";
import net from "node:net";
import { create } from "@bufbuild/protobuf";
import { api } from "@dumont/proto";
import { Gauge, Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { createHttpServer, listenHttp } from "./http-server.js";

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
    const server = createHttpServer({ registry, healthy: async () => true, routes: () => {} });
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
