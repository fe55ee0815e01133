// Agent configuration: flags → env vars → defaults, validated once with zod. A bad value stops the
// agent with a message that names the flag and its variable.
import path from "node:path";
import { z } from "zod";
import { parseServer } from "./session/identity.js";

export interface AgentRunOptions {
  dataDir?: string;
  telemetryInterval?: string | number;
  logLevel?: string;
  simulated?: boolean;
  /** The agent gateway to dial instead of the one enrolled with (see `server` below). */
  server?: string;
}

const schema = z.object({
  dataDir: z.string().min(1, "--data-dir (DUMONT_AGENT_DATA_DIR) must not be empty"),
  telemetryIntervalSeconds: z.coerce
    .number({ error: "--telemetry-interval (DUMONT_TELEMETRY_INTERVAL) must be a number of seconds" })
    .min(0.05, "--telemetry-interval (DUMONT_TELEMETRY_INTERVAL) must be at least 0.05 seconds")
    .max(3600, "--telemetry-interval (DUMONT_TELEMETRY_INTERVAL) must be at most 3600 seconds"),
  logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"], {
    error: "--log-level (DUMONT_LOG_LEVEL) must be one of fatal, error, warn, info, debug, trace, silent",
  }),
  simulated: z.boolean(),
  // Where the control plane is now, when it has moved since this host enrolled (a new name or port). Only this
  // process dials it: enrollment.json keeps the address enrolled with, so a one-off test cannot leave a host
  // pointing somewhere else. The pinned CA still has to verify whatever answers there.
  server: z
    .string()
    .optional()
    .superRefine((value, ctx) => {
      const problem = value === undefined ? undefined : serverOptionProblem(value);
      if (problem) ctx.addIssue({ code: "custom", message: problem });
    }),
});

/** What is wrong with a `--server` (DUMONT_SERVER) value for `run` or `renew`, naming both; undefined when nothing. */
export function serverOptionProblem(value: string): string | undefined {
  try {
    parseServer(value);
    return undefined;
  } catch (err) {
    return (err as Error).message.replace("--server", "--server (DUMONT_SERVER)");
  }
}

export type AgentConfig = z.infer<typeof schema>;

export function loadAgentConfig(options: AgentRunOptions, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const parsed = schema.safeParse({
    dataDir: path.resolve(options.dataDir ?? env.DUMONT_AGENT_DATA_DIR ?? "/var/lib/dumont-agent"),
    telemetryIntervalSeconds: options.telemetryInterval ?? env.DUMONT_TELEMETRY_INTERVAL ?? 5,
    logLevel: options.logLevel ?? env.DUMONT_LOG_LEVEL ?? "info",
    simulated: options.simulated ?? env.DUMONT_AGENT_SIMULATED === "1",
    server: options.server ?? (env.DUMONT_SERVER || undefined),
  });
  if (!parsed.success) throw new Error(`invalid configuration: ${parsed.error.issues[0]?.message}`);
  return parsed.data;
}
