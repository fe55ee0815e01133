// The host agent's public surface (used by tests and benchmarks).
export { AGENT_VERSION } from "./version.js";
