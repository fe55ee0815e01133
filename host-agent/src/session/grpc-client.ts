// The agent's gRPC client: TLS pinned to our CA, server name fixed, large-message and keepalive limits.

import {
  AgentGateway,
  type AgentMessage,
  CONTROL_PLANE_TLS_NAME,
  type ControlMessage,
  type DownloadsRequest,
  type EnrollRequest,
  type EnrollResponse,
  FLOW_CONTROL_WINDOW_BYTES,
  grpcServiceDefinition,
  MAX_MESSAGE_BYTES,
  RETRY_BUFFER_BYTES,
  type RenewRequest,
  type RenewResponse,
} from "@dumont/proto";
import * as grpc from "@grpc/grpc-js";
import { parseServer } from "./identity.js";

const AgentGatewayClient = grpc.makeGenericClientConstructor(grpcServiceDefinition(AgentGateway), "AgentGateway");

/** The generic client's methods, typed with our messages. */
export interface GatewayClient extends grpc.Client {
  enroll(
    request: EnrollRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, response?: EnrollResponse) => void,
  ): grpc.ClientUnaryCall;
  connect(metadata?: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<AgentMessage, ControlMessage>;
  renew(
    request: RenewRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, response?: RenewResponse) => void,
  ): grpc.ClientUnaryCall;
  downloads(
    request: DownloadsRequest,
    metadata?: grpc.Metadata,
    options?: grpc.CallOptions,
  ): grpc.ClientReadableStream<ControlMessage>;
}

export interface GatewayClientOptions {
  /**
   * A connection of this client's own. grpc-js shares one connection among clients of the same target, options
   * and credentials; the Downloads stream needs its own (see AgentSession.bulkSender on the control plane).
   */
  ownConnection?: boolean;
}

export function createGatewayClient(
  server: string,
  caPem: string,
  identity?: { keyPem: string; certPem: string },
  options: GatewayClientOptions = {},
): GatewayClient {
  const { target } = parseServer(server);
  const credentials = grpc.credentials.createSsl(
    Buffer.from(caPem),
    identity ? Buffer.from(identity.keyPem) : null,
    identity ? Buffer.from(identity.certPem) : null,
  );
  return new AgentGatewayClient(target, credentials, {
    "grpc.ssl_target_name_override": CONTROL_PLANE_TLS_NAME,
    "grpc.default_authority": CONTROL_PLANE_TLS_NAME,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc-node.flow_control_window": FLOW_CONTROL_WINDOW_BYTES,
    // Down from grpc-js's 1 MiB: a larger message is not kept for a transparent retry, and its write callback
    // runs only once grpc-js has framed and written it. StreamChunkSink reuses such messages' buffers then.
    "grpc.per_rpc_retry_buffer_size": RETRY_BUFFER_BYTES,
    "grpc.keepalive_time_ms": 15_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    // We reconnect ourselves, with our own backoff.
    "grpc.initial_reconnect_backoff_ms": 500,
    "grpc.max_reconnect_backoff_ms": 5_000,
    ...(options.ownConnection ? { "grpc.use_local_subchannel_pool": 1 } : {}),
  }) as unknown as GatewayClient;
}

type UnaryCallback<Res> = (err: grpc.ServiceError | null, response?: Res) => void;

/**
 * One of the gateway's unary calls (Enroll, Renew), started by `start` with a deadline. A failure becomes one
 * sentence: the control plane unreachable (or, with `pinnedCa`, another one: notSignedByPinnedCa),
 * `unimplemented` (when given) for a control plane without the call, or "`what` refused" with its reason.
 */
export async function unaryGatewayCall<Res>(
  start: (metadata: grpc.Metadata, options: grpc.CallOptions, callback: UnaryCallback<Res>) => void,
  options: {
    server: string;
    timeoutMs: number;
    what: string;
    unimplemented?: string;
    /** Whether the CA verifying the server is the one pinned at enrollment (not one discovered just now). */
    pinnedCa?: boolean;
  },
): Promise<Res> {
  try {
    return await new Promise<Res>((resolve, reject) =>
      start(new grpc.Metadata(), { deadline: Date.now() + options.timeoutMs }, (err, res) =>
        err ? reject(err) : res ? resolve(res) : reject(new Error(`empty ${options.what} response`)),
      ),
    );
  } catch (err) {
    const e = err as grpc.ServiceError;
    if (e.code === grpc.status.UNIMPLEMENTED && options.unimplemented) throw new Error(options.unimplemented);
    if (e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED) {
      throw new Error(
        (options.pinnedCa ? notSignedByPinnedCa(e.details || e.message, options.server) : undefined) ??
          `cannot reach the control plane at ${options.server}: ${e.details || e.message}`,
      );
    }
    throw new Error(`${options.what} refused: ${e.details || e.message}`);
  }
}

/**
 * OpenSSL's words (as grpc-js passes them on, in a status's details) for a server certificate that does not
 * chain to the CA the agent trusts, which is the CA pinned at enrollment: the control plane at that address is
 * another one (`dumont dev` started again on the same port with another data dir), or was set up again.
 */
const UNTRUSTED_SERVER_CERTIFICATE =
  /self[- ]signed certificate|unable to get local issuer certificate|unable to verify the first certificate|certificate signature failure|unable to get issuer certificate/i;

/**
 * The sentence for a failure whose `details` say the server's certificate is not signed by the pinned CA, or
 * undefined for any other failure. Said in words because grpc-js's ("No connection established. Last error:
 * Error: self-signed certificate in certificate chain") points at nothing the operator can act on.
 */
export function notSignedByPinnedCa(details: string, server: string): string | undefined {
  if (!UNTRUSTED_SERVER_CERTIFICATE.test(details)) return undefined;
  return (
    `the control plane at ${server} presents a certificate that this agent's pinned CA (identity/ca.crt in its ` +
    "data dir) did not sign: it is another control plane, or one set up again since this host enrolled; enroll " +
    "this host again against it (`dumont-agent enroll --force`), or pass the --server of the one it enrolled with"
  );
}
