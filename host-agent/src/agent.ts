// A running agent: identity + telemetry + the control-plane session (+ command handlers).
import type { AgentConfig } from "./config.js";
import type { Logger } from "./logger.js";
import { ControlPlaneSession } from "./session/control-plane-session.js";
import { loadIdentity } from "./session/identity.js";
import { createTelemetryCollector } from "./telemetry/index.js";

export async function startAgent(config: AgentConfig, log: Logger): Promise<ControlPlaneSession> {
  const identity = await loadIdentity(config.dataDir);
  const telemetry = createTelemetryCollector({ simulated: config.simulated, diskPath: config.dataDir });
  const session = new ControlPlaneSession(identity, telemetry, log, Math.round(config.telemetryIntervalSeconds * 1000));
  session.start();
  return session;
}
