// grpc-js's server has no option for HTTP/2 flow-control windows, and Node's 64 KiB default throttles
// snapshot uploads to window / round trip (see FLOW_CONTROL_WINDOW_BYTES). The agent's client sets its window
// with the `grpc-node.flow_control_window` option; a server needs this.
import type { Http2SecureServer, ServerHttp2Session } from "node:http2";
import type { Server } from "@grpc/grpc-js";
import { FLOW_CONTROL_WINDOW_BYTES } from "./protocol.js";

/**
 * Gives every new HTTP/2 session of a bound grpc-js `server` a wide connection window, and has it advertise a
 * wide stream window. We reach into grpc-js's (private, but stable since 1.10) list of http2 servers, so call it
 * after `bindAsync` has answered. If grpc-js renames the field, this does nothing and throughput drops back
 * (nothing else breaks): flow-control.test.ts fails then, and the snapshot bench's stream figures fall.
 */
export function widenFlowControlWindows(server: Server): void {
  const http2Servers = (server as unknown as { http2Servers?: Map<Http2SecureServer, unknown> }).http2Servers;
  for (const h2 of http2Servers?.keys() ?? []) {
    h2.on("session", (session: ServerHttp2Session) => {
      session.settings({ initialWindowSize: FLOW_CONTROL_WINDOW_BYTES });
      session.setLocalWindowSize(FLOW_CONTROL_WINDOW_BYTES);
    });
  }
}
