// The HTTP port: the Connect API (JSON or binary, so curl works), /healthz and /metrics.
import http from "node:http";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Registry } from "prom-client";

export interface HttpServerDeps {
  routes: (router: ConnectRouter) => void;
  registry: Registry;
  healthy: () => Promise<boolean>;
}

export function createHttpServer(deps: HttpServerDeps): http.Server {
  const api = connectNodeAdapter({
    routes: deps.routes,
    // Keep API request bodies small: nothing in the API needs more.
    readMaxBytes: 4 * 1024 * 1024,
  });
  const server = http.createServer((req, res) => {
    const url = req.url ?? "/";
    if (req.method === "GET" && url === "/healthz") {
      deps.healthy().then(
        (ok) => {
          res.writeHead(ok ? 200 : 503, { "content-type": "application/json" });
          res.end(JSON.stringify({ status: ok ? "ok" : "unhealthy" }));
        },
        () => {
          res.writeHead(503, { "content-type": "application/json" });
          res.end(JSON.stringify({ status: "unhealthy" }));
        },
      );
      return;
    }
    if (req.method === "GET" && url === "/metrics") {
      deps.registry.metrics().then((body) => {
        res.writeHead(200, { "content-type": deps.registry.contentType });
        res.end(body);
      });
      return;
    }
    api(req, res);
  });
  // Snapshot and restore calls last as long as the data takes; Node's default cuts requests at 5 min.
  server.requestTimeout = 0;
  return server;
}

export function listenHttp(server: http.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", (err) => reject(new Error(`cannot listen on HTTP port ${port}: ${err.message}`)));
    server.listen(port, host, () => {
      const address = server.address();
      resolve(typeof address === "object" && address ? address.port : port);
    });
  });
}
