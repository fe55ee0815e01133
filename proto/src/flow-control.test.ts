// The control plane's gRPC server advertises wide HTTP/2 windows (flow-control.ts reaches into grpc-js for it):
// a real server on loopback, a real HTTP/2 client, and the windows the client is given to send into.
import { type ClientHttp2Session, connect } from "node:http2";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { FLOW_CONTROL_WINDOW_BYTES, widenFlowControlWindows } from "./index.js";

/** Node's (and HTTP/2's) default window: what a client gets from a server nobody widened. */
const DEFAULT_WINDOW = 65_535;

let server: Server | undefined;
let client: ClientHttp2Session | undefined;
afterEach(async () => {
  client?.destroy();
  await new Promise<void>((resolve) => (server ? server.tryShutdown(() => resolve()) : resolve()));
  server = client = undefined;
});

/** Binds a grpc-js server (widened or not), connects to it, and gives the windows the client may send into. */
async function windowsOffered(widen: boolean): Promise<{ stream: number; connection: number }> {
  server = new Server();
  const port = await new Promise<number>((resolve, reject) =>
    server?.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  if (widen) widenFlowControlWindows(server);
  const session = connect(`http://127.0.0.1:${port}`);
  client = session;
  await new Promise<void>((resolve, reject) => {
    session.once("remoteSettings", () => resolve());
    session.once("error", reject);
  });
  // The connection's window grows by a WINDOW_UPDATE sent after the settings: a round trip settles it.
  await new Promise<void>((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));
  return {
    stream: session.remoteSettings.initialWindowSize ?? DEFAULT_WINDOW,
    connection: session.state.remoteWindowSize ?? DEFAULT_WINDOW,
  };
}

describe("widenFlowControlWindows", () => {
  it("gives a client the wide stream and connection windows, where grpc-js alone gives 64 KiB", async () => {
    expect(await windowsOffered(false)).toEqual({ stream: DEFAULT_WINDOW, connection: DEFAULT_WINDOW });
    await new Promise<void>((resolve) => server?.tryShutdown(() => resolve()));
    client?.destroy();
    expect(await windowsOffered(true)).toEqual({
      stream: FLOW_CONTROL_WINDOW_BYTES,
      connection: FLOW_CONTROL_WINDOW_BYTES,
    });
  });
});
