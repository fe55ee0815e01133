// The contract between the agent and the control plane, and the public API messages.

export * as api from "./api.js";
export {
  type EncodeBuffers,
  type EncodedMessage,
  encodeRestoreChunks,
  encodeSnapshotChunks,
  FRAME_HEADER_BYTES,
  FRAME_HEADROOM,
  hasFrameHeadroom,
  isEncodedMessage,
  markFrameHeadroom,
  type WireChunk,
} from "./chunk-messages.js";
export { widenFlowControlWindows } from "./flow-control.js";
export * from "./gen/dumont/agent/v1/agent_pb.js";
export { grpcServiceDefinition } from "./grpc-service.js";
export {
  grpcJsStreamDecoder,
  installPooledReceiving,
  isPooledMessageMemory,
  POOLED_MESSAGE_MIN_BYTES,
  releaseReceivedMessage,
} from "./pooled-receiving.js";
export * from "./protocol.js";
