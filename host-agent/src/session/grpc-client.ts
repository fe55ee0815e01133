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
 * sentence: the control plane unreachable, `unimplemented` (when given) for a control plane without the call,
 * or "`what` refused" with its reason.
 */
export async function unaryGatewayCall<Res>(
  start: (metadata: grpc.Metadata, options: grpc.CallOptions, callback: UnaryCallback<Res>) => void,
  options: { server: string; timeoutMs: number; what: string; unimplemented?: string },
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
      throw new Error(`cannot reach the control plane at ${options.server}: ${e.details || e.message}`);
    }
    throw new Error(`${options.what} refused: ${e.details || e.message}`);
  }
}
