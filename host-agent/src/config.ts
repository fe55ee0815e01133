// Agent configuration: flags → env vars → defaults, validated once with zod. A bad value stops the
// agent with a message that names the flag and its variable.
import path from "node:path";
import { z } from "zod";
import { serverUrlProblem } from "./session/identity.js";

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
  // Undefined when neither the flag nor the variable is given: the control plane's suggestion then rules
  // (telemetryIntervalMs below).
  telemetryIntervalSeconds: z.coerce
    .number({ error: "--telemetry-interval (DUMONT_TELEMETRY_INTERVAL) must be a number of seconds" })
    .min(0.05, "--telemetry-interval (DUMONT_TELEMETRY_INTERVAL) must be at least 0.05 seconds")
    .max(3600, "--telemetry-interval (DUMONT_TELEMETRY_INTERVAL) must be at most 3600 seconds")
    .optional(),
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
  return serverUrlProblem(value, "--server (DUMONT_SERVER)");
}

/** The telemetry interval when neither the agent nor the control plane says one. */
export const DEFAULT_TELEMETRY_INTERVAL_SECONDS = 5;

/** The bounds on the control plane's suggested interval, in seconds (the agent's own setting has its own). */
const SUGGESTED_INTERVAL_BOUNDS = { min: 1, max: 3600 } as const;

/**
 * The interval between telemetry samples once the control plane has welcomed the agent with its suggestion
 * (Welcome.telemetry_interval_ms; 0 from a control plane that suggests none): the control plane's, which decides
 * when a silent host is lost and sets one value for its whole fleet, kept within 1..3600 s (a control plane set up
 * for its own tests at 0.05 s would have every agent sample its GPUs 20 times a second). The agent's own setting
 * (`--telemetry-interval`, DUMONT_TELEMETRY_INTERVAL), when given, may make it shorter, never longer: the control
 * plane declares a host lost after twice its suggestion or so of silence, and an agent sampling every 30 s against
 * a 10 s lost-after flapped lost and back for good. `longer` hears of an own setting cut so, to say it.
 */
export function telemetryIntervalMs(
  ownSeconds: number | undefined,
  suggestedMs: number,
  longer?: (ownMs: number, suggestedMs: number) => void,
): number {
  const { min, max } = SUGGESTED_INTERVAL_BOUNDS;
  const suggested =
    suggestedMs > 0
      ? Math.round(Math.min(max * 1000, Math.max(min * 1000, suggestedMs)))
      : DEFAULT_TELEMETRY_INTERVAL_SECONDS * 1000;
  if (ownSeconds === undefined) return suggested;
  const own = Math.round(ownSeconds * 1000);
  if (suggestedMs > 0 && own > suggested) {
    longer?.(own, suggested);
    return suggested;
  }
  return own;
}

export type AgentConfig = z.infer<typeof schema>;

export function loadAgentConfig(options: AgentRunOptions, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const parsed = schema.safeParse({
    dataDir: path.resolve(options.dataDir ?? env.DUMONT_AGENT_DATA_DIR ?? "/var/lib/dumont-agent"),
    telemetryIntervalSeconds: options.telemetryInterval ?? (env.DUMONT_TELEMETRY_INTERVAL || undefined),
    logLevel: options.logLevel ?? env.DUMONT_LOG_LEVEL ?? "info",
    simulated: options.simulated ?? env.DUMONT_AGENT_SIMULATED === "1",
    server: options.server ?? (env.DUMONT_SERVER || undefined),
  });
  if (!parsed.success) throw new Error(`invalid configuration: ${parsed.error.issues[0]?.message}`);
  return parsed.data;
}
