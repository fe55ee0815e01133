// The contract between the agent and the control plane, and the public API messages.
export * from "./gen/dumont/agent/v1/agent_pb.js";
export * as api from "./gen/dumont/api/v1/hosts_pb.js";
export { grpcServiceDefinition } from "./grpc-service.js";
export * from "./protocol.js";
