// `dumont key …`: API keys for tenants, shown once when made, listed without secrets, revoked by id.
import type { api } from "@dumont/proto";
import { type Command, Option } from "commander";
import { type ApiOptions, apiClients, parseDuration, tenantFlag } from "./api-client.js";
import { iso, print, table } from "./output.js";

export function registerKeyCommands(program: Command): void {
  const key = program.command("key").description("API keys: make one for a tenant (shown once), list them, revoke one");
  const apiOpts = (cmd: Command): ApiOptions => cmd.optsWithGlobals() as ApiOptions;

  key
    .command("create")
    .description("make an API key and print it once (it is not stored)")
    .addOption(
      new Option("--role <role>", "what the key may do")
        .choices(["consumer", "provider", "admin"])
        .makeOptionMandatory(),
    )
    .option("--tenant <id>", "the tenant it acts for (admins; a new one is created); default: your own", tenantFlag)
    .option("--label <text>", "what the key is for, shown by `dumont key list`", "")
    .option("--expires <duration>", "when it stops working, from now (60s..3650d, e.g. 90d); default: never")
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const res = await apiClients(apiOpts(cmd)).keys.createApiKey({
        role: opts.role,
        tenantId: opts.tenant ?? "",
        label: opts.label,
        ttlSeconds: opts.expires === undefined ? 0 : expiresSeconds(opts.expires),
      });
      const made = { ...keyJson(res.key), key: res.secretKey };
      if (opts.json) return print(made);
      process.stdout.write(
        `API key ${made.id} (${made.role}, tenant ${made.tenantId}${made.expiresAt ? `, expires ${made.expiresAt}` : ""}), ` +
          `shown this once:\n  ${made.key}\n\n` +
          `Use it with --api-key or DUMONT_API_KEY; revoke it with \`dumont key revoke ${made.id}\`.\n`,
      );
    });

  key
    .command("list")
    .description("the keys you may see (admins: every tenant's), without secrets")
    .option("--tenant <id>", "one tenant's keys (admins)", tenantFlag)
    .option("--all", "revoked keys too")
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const res = await apiClients(apiOpts(cmd)).keys.listApiKeys({
        tenantId: opts.tenant ?? "",
        includeRevoked: opts.all === true,
      });
      const keys = res.keys.map(keyJson);
      if (opts.json) return print(keys);
      if (keys.length === 0) {
        process.stdout.write("No keys. Make one with `dumont key create --role provider`.\n");
        return;
      }
      process.stdout.write(keyTable(keys, new Date()));
    });

  key
    .command("revoke <keyId>")
    .description("revoke a key by its id (or the whole key, e.g. one that leaked): it opens nothing from then on")
    .option("--json", "print JSON")
    .action(async (keyId: string, opts, cmd: Command) => {
      // A whole key pasted in is revoked by its id: its secret is never sent, nor printed back.
      // Found anywhere in what was pasted: " dumont_…", "Bearer dumont_…", a quoted key.
      const whole = /dumont_([a-f0-9]{16})_/.exec(keyId);
      const res = await apiClients(apiOpts(cmd)).keys.revokeApiKey({ keyId: whole ? whole[1] : keyId });
      const k = keyJson(res.key);
      if (opts.json) return print(k);
      process.stdout.write(`API key ${k.id} (${k.role}, tenant ${k.tenantId}) revoked ${k.revokedAt}\n`);
    });
}

/**
 * `dumont key list`: a row per key under a header. STATUS is "active", "expires/expired <time>" or "revoked
 * <time>"; the label, free text, is quoted and last.
 */
export function keyTable(keys: ReturnType<typeof keyJson>[], now: Date): string {
  return table(
    ["ID", "ROLE", "TENANT", "CREATED", "LAST USED", "STATUS", "LABEL"],
    keys.map((k) => [
      k.id,
      k.role,
      k.tenantId,
      k.createdAt ?? "",
      k.lastUsedAt ?? "never",
      k.revokedAt
        ? `revoked ${k.revokedAt}`
        : k.expiresAt
          ? `${Date.parse(k.expiresAt) <= now.getTime() ? "expired" : "expires"} ${k.expiresAt}`
          : "active",
      JSON.stringify(k.label),
    ]),
  );
}

/** --expires as seconds, within what the API takes (60 s to 10 years). */
function expiresSeconds(value: string): number {
  return parseDuration("--expires", value, {
    min: 60,
    max: 3650 * 86_400,
    shown: "60s..3650d (or left out: the key never expires)",
  });
}

export function keyJson(k: api.ApiKey | undefined) {
  return {
    id: k?.id ?? "",
    tenantId: k?.tenantId ?? "",
    role: k?.role ?? "",
    label: k?.label ?? "",
    createdAt: iso(k?.createdAt),
    revokedAt: iso(k?.revokedAt),
    expiresAt: iso(k?.expiresAt),
    lastUsedAt: iso(k?.lastUsedAt),
  };
}
