// The host agent's public surface (used by tests and benchmarks).
export { type RunningAgent, startAgent } from "./agent.js";
export { type AgentConfig, loadAgentConfig } from "./config.js";
export { createLogger, type Logger } from "./logger.js";
export { discoverCa, generateKeyAndCsr } from "./session/ca-discovery.js";
export { type CommandHandler, ControlPlaneSession, type TelemetrySource } from "./session/control-plane-session.js";
export { createGatewayClient, type GatewayClient } from "./session/grpc-client.js";
export { installInPlaceFraming } from "./session/grpc-framing.js";
export type { Identity } from "./session/identity.js";
export { selfSignedPair } from "./session/testing.js";
export { AGENT_VERSION } from "./version.js";
