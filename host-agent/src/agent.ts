// A running agent: identity + telemetry + the control-plane session + the command handlers.
import { lockDirectory } from "@dumont/repository/directory-lock";
import { type AgentConfig, telemetryIntervalMs } from "./config.js";
import type { Logger } from "./logger.js";
import { agentPaths } from "./platform/paths.js";
import { renewCertificate } from "./session/certificate-renewal.js";
import { ControlPlaneSession } from "./session/control-plane-session.js";
import { loadIdentity } from "./session/identity.js";
import { SnapshotCommands } from "./session/snapshot-commands.js";
import { createTelemetryCollector } from "./telemetry/index.js";

export interface RunningAgent {
  session: ControlPlaneSession;
  stop(): Promise<void>;
}

export async function startAgent(config: AgentConfig, log: Logger): Promise<RunningAgent> {
  const identity = await loadIdentity(config.dataDir, config.server);
  // One agent a data dir: a second would be the same host connecting twice, each session replacing the other.
  const lock = await lockDirectory(
    config.dataDir,
    (holder) =>
      `the agent data dir ${config.dataDir} is already in use by ${holder}, an agent of the same host: stop that ` +
      "one first, or enroll this one as another host with its own --data-dir",
  );
  const telemetry = createTelemetryCollector({ simulated: config.simulated, diskPath: config.dataDir });
  const session = new ControlPlaneSession(
    identity,
    telemetry,
    log,
    (suggestedMs) =>
      telemetryIntervalMs(config.telemetryIntervalSeconds, suggestedMs, (own, suggested) =>
        log.warn(
          { own: own / 1000, controlPlane: suggested / 1000 },
          "--telemetry-interval is longer than the control plane's; its is used, or this host would be declared " +
            "lost between samples",
        ),
      ),
    {
      load: () => loadIdentity(config.dataDir, config.server),
      renew: (current) => renewCertificate(config.dataDir, current),
    },
  );
  const snapshots = new SnapshotCommands(session, agentPaths(config.dataDir).snapshotState, log);
  session.start();
  return {
    session,
    stop: async () => {
      await session.stop();
      await snapshots.close();
      await lock.release();
    },
  };
}
