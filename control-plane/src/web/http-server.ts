// The HTTP port: the Connect API (JSON or binary, so curl works), /healthz and /metrics.
import http from "node:http";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Registry } from "prom-client";
import { logUnexpectedErrors } from "../api/unexpected-errors.js";
import type { Logger } from "../logger.js";

export interface HttpServerDeps {
  routes: (router: ConnectRouter) => void;
  registry: Registry;
  healthy: () => Promise<boolean>;
  /** Where an API call's unexpected error is logged (its client is only answered "internal error"). */
  log: Logger;
  /** How long a client may take to send a whole request (tests shorten it). */
  requestTimeoutMs?: number;
}

/**
 * A request (headers and a body of at most 4 MiB) must arrive within this, or the client gets 408 and the
 * connection closes: without it, clients sending a byte now and then hold connections (and their buffered
 * bodies) for ever, before any API key is looked at. Node's timer stops once the request has arrived, so
 * snapshot and restore calls still answer, and stream, for as long as the data takes.
 */
const REQUEST_TIMEOUT_MS = 60_000;

export function createHttpServer(deps: HttpServerDeps): http.Server {
  const api = connectNodeAdapter({
    routes: deps.routes,
    interceptors: [logUnexpectedErrors(deps.log)],
    // Keep API request bodies small: nothing in the API needs more.
    readMaxBytes: 4 * 1024 * 1024,
    // Decided: a JSON request naming a field the API does not have is refused (INVALID_ARGUMENT, naming the
    // field), not read as if the field were absent: `{"ttl":"1h"}` for ttl_seconds made a token of the default
    // hour, silently. The CLI sends only fields it sets, so one newer than the control plane fails only where it
    // asks for something this one cannot do. (Binary requests keep protobuf's unknown fields, as gRPC does.)
    jsonOptions: { ignoreUnknownFields: false },
  });
  const requestTimeout = deps.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  const options: http.ServerOptions = {
    requestTimeout,
    headersTimeout: requestTimeout,
    // How often Node looks for requests past their time (its default, 30 s, would double a short limit).
    connectionsCheckingInterval: Math.min(30_000, Math.ceil(requestTimeout / 4)),
  };
  const server = http.createServer(options, (req, res) => {
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
      // A collector that throws must cost one scrape, not the process (an unhandled rejection ends it).
      deps.registry.metrics().then(
        (body) => {
          res.writeHead(200, { "content-type": deps.registry.contentType });
          res.end(body);
        },
        (err: unknown) => {
          res.writeHead(500, { "content-type": "text/plain" });
          res.end(`metrics could not be collected: ${err instanceof Error ? err.message : String(err)}\n`);
        },
      );
      return;
    }
    api(req, res);
  });
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
