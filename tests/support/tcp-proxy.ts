// A TCP proxy on loopback between an agent and the control plane. TLS passes through untouched. The snapshot
// bench holds every byte back a fixed time each way (an agent in another region); the e2e tests cut one of the
// agent's connections and leave the others. It runs in the calling process, so on a small machine its CPU is
// shared with the two it connects: a bench compares against a run through it with 0 ms.
import { connect, createServer, type Socket } from "node:net";

export interface TcpProxy {
  /** `https://127.0.0.1:PORT`, for `dumont-agent enroll --server`. */
  url: string;
  /** The connections open now, oldest first (`cut` ends the client's side and its upstream). */
  connections(): { cut(): void }[];
  close(): Promise<void>;
}

/** `delayMs`: how long each byte is held back in each direction (a round trip of twice that). */
export async function startTcpProxy(targetPort: number, options: { delayMs?: number } = {}): Promise<TcpProxy> {
  const delayMs = options.delayMs ?? 0;
  if (!(Number.isFinite(delayMs) && delayMs >= 0)) throw new Error(`the delay must be >= 0 ms, got ${delayMs}`);
  const sockets = new Set<Socket>();
  const pairs: { client: Socket; upstream: Socket }[] = [];
  // Timers of equal delay fire in the order they were set, so bytes keep their order.
  const later = (run: () => void) => (delayMs > 0 ? setTimeout(run, delayMs) : run());
  const forward = (from: Socket, to: Socket): void => {
    from.on("data", (data) => later(() => to.write(data)));
    from.on("end", () => later(() => to.end()));
    from.on("error", () => to.destroy());
    from.on("close", () => sockets.delete(from));
    sockets.add(from);
  };
  const server = createServer((client) => {
    const upstream = connect(targetPort, "127.0.0.1");
    forward(client, upstream);
    forward(upstream, client);
    const pair = { client, upstream };
    pairs.push(pair);
    client.on("close", () => pairs.splice(pairs.indexOf(pair), 1));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("the proxy has no TCP port");
  return {
    url: `https://127.0.0.1:${address.port}`,
    connections: () =>
      pairs.map(({ client, upstream }) => ({
        cut: () => {
          client.destroy();
          upstream.destroy();
        },
      })),
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
