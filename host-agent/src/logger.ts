// The agent logs pino JSON to stderr, keeping stdout for command output (host id, --json results).
import pino from "pino";

export type Logger = pino.Logger;

export function createLogger(level: string): Logger {
  return pino(
    {
      level,
      base: { service: "dumont-agent" },
      // Also where a protocol message would carry one ({ msg: { value: { tenantKey } } }), should one be logged.
      redact: ["token", "joinToken", "privateKey", "tenantKey", "*.tenantKey", "*.*.tenantKey", "*.*.*.tenantKey"],
    },
    pino.destination(2),
  );
}
