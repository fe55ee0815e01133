// Where the agent keeps its identity and state inside its data dir.
import path from "node:path";

export interface AgentPaths {
  dataDir: string;
  identityDir: string;
  privateKey: string;
  certificate: string;
  /** A renewed key and certificate, in one file, waiting to replace the two above (session/identity.ts). */
  renewal: string;
  caCertificate: string;
  enrollment: string;
  snapshotState: string;
}

export function agentPaths(dataDir: string): AgentPaths {
  const root = path.resolve(dataDir);
  const identityDir = path.join(root, "identity");
  return {
    dataDir: root,
    identityDir,
    privateKey: path.join(identityDir, "agent.key"),
    certificate: path.join(identityDir, "agent.crt"),
    renewal: path.join(identityDir, "renewal.pem"),
    caCertificate: path.join(identityDir, "ca.crt"),
    enrollment: path.join(root, "enrollment.json"),
    snapshotState: path.join(root, "snapshots"),
  };
}
