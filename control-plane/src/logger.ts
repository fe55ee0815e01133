// pino JSON logs. Secrets never reach a log line: the redact list covers every field that may carry one.
import pino from "pino";

export type Logger = pino.Logger;

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "dumont" },
      // Also where a protocol message would carry them ({ msg: { value: { tenantKey } } }), should one be logged.
      redact: [
        "apiKey",
        "token",
        "joinToken",
        "authorization",
        "*.authorization",
        "privateKey",
        "tenantKey",
        "*.tenantKey",
        "*.*.tenantKey",
        "*.*.*.tenantKey",
        "masterKey",
        "*.masterKey",
      ],
    },
    destination ?? pino.destination(1),
  );
}
