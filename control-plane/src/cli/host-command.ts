// `dumont host …`: join tokens, the host list, telemetry series and events.
import type { api } from "@dumont/proto";
import type { Command } from "commander";
import { type ApiOptions, apiClients, parseDuration, tenantFlag } from "./api-client.js";
import { iso, print, table } from "./output.js";

export function registerHostCommands(program: Command): void {
  const host = program.command("host").description("provider machines: join tokens, list, metrics, events");
  const apiOpts = (cmd: Command): ApiOptions => cmd.optsWithGlobals() as ApiOptions;

  host
    .command("join-token")
    .description("one-time tokens that let a machine enroll")
    .command("create")
    .description("create a join token and print the dumont-agent enroll command that uses it")
    .option("--ttl <duration>", "how long the token stays valid (60s..7d)", "1h")
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const ttlSeconds = parseDuration("--ttl", opts.ttl, { min: 60, max: 7 * 86_400, shown: "60s..7d" });
      const res = await apiClients(apiOpts(cmd)).hosts.createJoinToken({ ttlSeconds });
      const out = {
        token: res.token,
        caHash: res.caHash,
        grpcUrl: res.grpcUrl,
        expiresAt: iso(res.expiresAt),
        installCommand: res.installCommand,
      };
      if (opts.json) return print(out);
      process.stdout.write(
        // The one-line installer (installCommand in --json) is planned, not served yet: not offered here.
        `Join token (one use, expires ${out.expiresAt}):\n  ${out.token}\n\nOn the GPU machine, with dumont-agent installed:\n  dumont-agent enroll --server ${out.grpcUrl} --token ${out.token} --ca-hash ${out.caHash}\n`,
      );
    });

  host
    .command("list")
    .description("list hosts with their GPUs and latest telemetry")
    .option("--tenant <id>", "one tenant's hosts (admins)", tenantFlag)
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const res = await apiClients(apiOpts(cmd)).hosts.listHosts({ tenantId: opts.tenant });
      const hosts = res.hosts.map(hostJson);
      if (opts.json) return print(hosts);
      if (hosts.length === 0) {
        process.stdout.write("No hosts yet. Create a join token with `dumont host join-token create`.\n");
        return;
      }
      process.stdout.write(hostTable(hosts, new Date()));
    });

  host
    .command("metrics <hostId>")
    .description("a host's telemetry series (raw for the last hour, 1-minute averages before)")
    .option("--since <duration>", "how far back", "10m")
    .option("--json", "print JSON")
    .action(async (hostId: string, opts, cmd: Command) => {
      const sinceSeconds = parseDuration("--since", opts.since, { min: 1, max: 7 * 86_400, shown: "1s..7d" });
      const res = await apiClients(apiOpts(cmd)).hosts.getHostMetrics({ hostId, sinceSeconds });
      const points = res.points.map((p) => ({
        at: iso(p.at),
        resolution: p.resolution,
        cpuPercent: p.cpuPercent ?? null,
        memoryUsedBytes: Number(p.memoryUsedBytes),
        diskUsedBytes: Number(p.diskUsedBytes),
        gpus: p.gpus.map((g) => ({
          index: g.index,
          utilizationPercent: g.utilizationPercent ?? null,
          memoryUsedMiB: g.memoryUsedMib === undefined ? null : Number(g.memoryUsedMib),
          temperatureC: g.temperatureC ?? null,
          powerW: g.powerW ?? null,
        })),
      }));
      if (opts.json) return print(points);
      for (const p of points) {
        const gpus = p.gpus.map((g) => `gpu${g.index} ${g.utilizationPercent ?? "-"}%`).join(" ");
        process.stdout.write(`${p.at} ${p.resolution.padEnd(3)} cpu ${p.cpuPercent?.toFixed(1) ?? "-"}% ${gpus}\n`);
      }
    });

  host
    .command("events <hostId>")
    .description("a host's events (enrolled, online, lost, certificate)")
    .option("--json", "print JSON")
    .action(async (hostId: string, opts, cmd: Command) => {
      const res = await apiClients(apiOpts(cmd)).hosts.listHostEvents({ hostId });
      const events = res.events.map((e) => ({ at: iso(e.at), kind: e.kind, message: e.message }));
      if (opts.json) return print(events);
      for (const e of events) process.stdout.write(`${e.at}  ${e.kind.padEnd(11)}  ${e.message}\n`);
    });
}

/** Agents renew with ~122 days left; one this close to expiry is not renewing (an old agent, or a failing one). */
const CERTIFICATE_WARNING_DAYS = 30;

/**
 * `dumont host list`: a row per host under a header. GPUS (each model with its utilisation, or "CPU only") is
 * last, and a certificate close to expiry is flagged after it with what to do.
 */
export function hostTable(hosts: ReturnType<typeof hostJson>[], now: Date): string {
  return table(
    ["ID", "NAME", "TENANT", "STATUS", "LAST SEEN", "GPUS"],
    hosts.map((h) => {
      const gpus = h.gpus.map((g) => `${g.model}${g.utilizationPercent === null ? "" : ` ${g.utilizationPercent}%`}`);
      let last = `${h.simulated ? "[simulated] " : ""}${gpus.length ? gpus.join(", ") : "CPU only"}`;
      const expires = h.certificateExpiresAt ? Date.parse(h.certificateExpiresAt) : undefined;
      if (expires !== undefined && expires - now.getTime() < CERTIFICATE_WARNING_DAYS * 86_400_000) {
        last +=
          expires <= now.getTime()
            ? `  CERTIFICATE EXPIRED ${h.certificateExpiresAt}: enroll the machine again`
            : `  CERTIFICATE EXPIRES ${h.certificateExpiresAt}: its agent is not renewing it (update the agent, or see its log)`;
      }
      return [h.id, h.name, h.tenantId, h.status, h.lastSeenAt ?? "never", last];
    }),
  );
}

export function hostJson(h: api.Host) {
  return {
    id: h.id,
    name: h.name,
    tenantId: h.tenantId,
    status: h.status,
    simulated: h.simulated,
    agentVersion: h.agentVersion,
    lastSeenAt: iso(h.lastSeenAt),
    certificateExpiresAt: iso(h.certificateExpiresAt),
    gpus: h.gpus.map((g) => ({
      index: g.index,
      uuid: g.uuid,
      model: g.model,
      memoryTotalMiB: g.memoryTotalMib === undefined ? null : Number(g.memoryTotalMib),
      memoryUsedMiB: g.memoryUsedMib === undefined ? null : Number(g.memoryUsedMib),
      utilizationPercent: g.utilizationPercent ?? null,
      temperatureC: g.temperatureC ?? null,
      powerW: g.powerW ?? null,
    })),
    cpu: h.cpu ? { cores: h.cpu.cores, utilizationPercent: h.cpu.utilizationPercent ?? null } : null,
    memory: h.memory ? { totalBytes: Number(h.memory.totalBytes), usedBytes: Number(h.memory.usedBytes) } : null,
    disk: h.disk ? { totalBytes: Number(h.disk.totalBytes), usedBytes: Number(h.disk.usedBytes) } : null,
  };
}
