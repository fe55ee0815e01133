// The agent's enrolled identity as stored in its data dir, and the control plane's address.
import fs from "node:fs/promises";
import { readSecretFile, SecretFileModeError } from "@dumont/repository/atomic-file";
import { agentPaths } from "../platform/paths.js";

export interface Identity {
  hostId: string;
  server: string;
  keyPem: string;
  certPem: string;
  caPem: string;
}

/** Parses `--server`: `https://host:port`, `grpcs://host:port` or `host:port`. */
export function parseServer(server: string): { host: string; port: number; target: string } {
  const withScheme = /^[a-z]+:\/\//i.test(server) ? server : `https://${server}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new Error(`--server must look like https://HOST:PORT, got ${JSON.stringify(server)}`);
  }
  const port = url.port ? Number(url.port) : 8443;
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (!host) throw new Error(`--server must name a host, got ${JSON.stringify(server)}`);
  return { host, port, target: `${host.includes(":") ? `[${host}]` : host}:${port}` };
}

export async function loadIdentity(dataDir: string): Promise<Identity> {
  const paths = agentPaths(dataDir);
  let enrollment: { hostId?: unknown; server?: unknown };
  try {
    enrollment = JSON.parse(await fs.readFile(paths.enrollment, "utf8"));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new Error(`this agent is not enrolled (no ${paths.enrollment}); run \`dumont-agent enroll\` first`);
    }
    throw new Error(`${paths.enrollment} is unreadable or not JSON: ${(err as Error).message}; enroll again`);
  }
  if (typeof enrollment.hostId !== "string" || typeof enrollment.server !== "string") {
    throw new Error(`${paths.enrollment} lacks hostId/server; enroll again with \`dumont-agent enroll --force\``);
  }
  const [keyPem, certPem, caPem] = await Promise.all([
    readSecretFile(paths.privateKey),
    fs.readFile(paths.certificate, "utf8"),
    fs.readFile(paths.caCertificate, "utf8"),
  ]).catch((err: Error) => {
    if (err instanceof SecretFileModeError) throw err;
    throw new Error(`agent identity files are missing in ${paths.identityDir} (${err.message}); enroll again`);
  });
  return { hostId: enrollment.hostId, server: enrollment.server, keyPem, certPem, caPem };
}
