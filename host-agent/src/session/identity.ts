// The agent's enrolled identity as stored in its data dir, and the control plane's address.
import fs from "node:fs/promises";
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
    readPrivateKey(paths.privateKey),
    fs.readFile(paths.certificate, "utf8"),
    fs.readFile(paths.caCertificate, "utf8"),
  ]).catch((err: Error) => {
    if (err instanceof KeyModeError) throw err;
    throw new Error(`agent identity files are missing in ${paths.identityDir} (${err.message}); enroll again`);
  });
  return { hostId: enrollment.hostId, server: enrollment.server, keyPem, certPem, caPem };
}

class KeyModeError extends Error {}

/**
 * Reads the private key, refusing it when other users may read or write it (as ssh does): whoever reads it
 * can act as this host. enroll writes it 0600; a looser mode means it was copied or restored carelessly.
 */
async function readPrivateKey(file: string): Promise<string> {
  const handle = await fs.open(file, "r");
  try {
    const mode = (await handle.stat()).mode & 0o777;
    if (mode & 0o077) {
      throw new KeyModeError(
        `${file} is open to other users (mode 0${mode.toString(8)}); run \`chmod 600 ${file}\` and start the agent again`,
      );
    }
    return await handle.readFile("utf8");
  } finally {
    await handle.close();
  }
}
