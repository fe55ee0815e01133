// The CLI talks to the control plane only through the public Connect API, like the dashboard.
import fs from "node:fs";
import path from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { api } from "@dumont/proto";

export interface ApiOptions {
  apiUrl?: string;
  apiKey?: string;
}

export function apiClients(options: ApiOptions) {
  const baseUrl = options.apiUrl ?? process.env.DUMONT_API_URL ?? "http://localhost:8000";
  try {
    new URL(baseUrl);
  } catch {
    throw new Error(
      `--api-url (DUMONT_API_URL) must be a URL like http://localhost:8000, got ${JSON.stringify(baseUrl)}`,
    );
  }
  const key = options.apiKey ?? process.env.DUMONT_API_KEY ?? readDefaultKey();
  if (!key) {
    throw new Error(
      "no API key: pass --api-key, set DUMONT_API_KEY, or run from the directory holding .dumont/admin-api-key",
    );
  }
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: "1.1",
    interceptors: [
      (next) => async (req) => {
        req.header.set("authorization", `Bearer ${key}`);
        return next(req);
      },
    ],
  });
  return { hosts: createClient(api.HostService, transport), snapshots: createClient(api.SnapshotService, transport) };
}

/** Convenience for a local `dumont dev`: use the admin key it wrote, if we are next to it. */
function readDefaultKey(): string | undefined {
  const dir = process.env.DUMONT_DATA_DIR ?? ".dumont";
  try {
    return fs.readFileSync(path.join(dir, "admin-api-key"), "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

/** "90s", "10m", "1h", "7d" or plain seconds → seconds. */
export function parseDuration(flag: string, value: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$/.exec(value.trim());
  if (!m) throw new Error(`${flag} must be a duration like 90s, 10m, 1h or 7d, got ${JSON.stringify(value)}`);
  const unit = { s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? "s") as "s" | "m" | "h" | "d"];
  return Math.round(Number(m[1]) * unit);
}
