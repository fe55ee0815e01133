// A TCP proxy that holds every byte back for a fixed time in each direction: the snapshot bench puts it
// between the agent and the control plane to show how the stream copes with a round trip (an agent in
// another region). TLS passes through untouched. It runs in the bench's own process, so on a small
// machine its CPU is shared with the two it connects: compare against a run through it with 0 ms.
import { connect, createServer, type Socket } from "node:net";

export interface DelayProxy {
  /** `https://127.0.0.1:PORT`, for `dumont-agent enroll --server`. */
  url: string;
  close(): Promise<void>;
}

export async function startDelayProxy(targetPort: number, delayMs: number): Promise<DelayProxy> {
  if (!(Number.isFinite(delayMs) && delayMs >= 0)) throw new Error(`the delay must be >= 0 ms, got ${delayMs}`);
  const sockets = new Set<Socket>();
  // Timers of equal delay fire in the order they were set, so bytes keep their order.
  const forward = (from: Socket, to: Socket): void => {
    from.on("data", (data) => setTimeout(() => to.write(data), delayMs));
    from.on("end", () => setTimeout(() => to.end(), delayMs));
    from.on("error", () => to.destroy());
    from.on("close", () => sockets.delete(from));
    sockets.add(from);
  };
  const server = createServer((client) => {
    const upstream = connect(targetPort, "127.0.0.1");
    forward(client, upstream);
    forward(upstream, client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("the delay proxy has no TCP port");
  return {
    url: `https://127.0.0.1:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
