// dumont.api.v1.HostService: join tokens, host list, telemetry series, host events.
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { api } from "@dumont/proto";
import { insertJoinToken, tenantExists } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { getHost, listEvents, listHosts, metricsSince } from "../db/host-repository.js";
import type { GpuSampleRow, HostRow } from "../db/tables.js";
import { InvalidArgumentError, NotFoundError } from "../errors.js";
import { type ApiAuthOptions, authenticate, listScope, requireRole, tenantScope } from "./auth.js";
import { checkText, MAX_HOST_ID, noSuchTenant } from "./request-fields.js";

export interface HostServiceDeps {
  db: Db;
  caHash: () => string;
  /** host:port agents dial, and the base URL the installer is served from. */
  grpcUrl: () => string;
  httpUrl: () => string;
  /** Rate limits and last-use marks of the callers' keys (none when absent). */
  auth?: ApiAuthOptions;
}

const DEFAULT_TOKEN_TTL_S = 3600;
const MAX_TOKEN_TTL_S = 7 * 86400;
const DEFAULT_METRICS_WINDOW_S = 600;

export function hostService(deps: HostServiceDeps): ServiceImpl<typeof api.HostService> {
  const caller = (ctx: HandlerContext) => authenticate(deps.db, ctx.requestHeader.get("authorization"), deps.auth);
  // Hosts are their providers' (and the operators'): a consumer key of the same tenant sees none of them.
  const provider = async (ctx: HandlerContext) => {
    const who = await caller(ctx);
    requireRole(who, "provider");
    return who;
  };
  return {
    async createJoinToken(req, ctx) {
      const who = await provider(ctx);
      const ttl = req.ttlSeconds === 0 ? DEFAULT_TOKEN_TTL_S : req.ttlSeconds;
      if (ttl < 60 || ttl > MAX_TOKEN_TTL_S) {
        throw new InvalidArgumentError(
          `ttl_seconds must be 60..${MAX_TOKEN_TTL_S} (or 0 for 1 hour), got ${req.ttlSeconds}`,
        );
      }
      const token = `djt_${randomBytes(24).toString("base64url")}`;
      let expiresAt = new Date(Date.now() + ttl * 1000);
      // The default hour, not asked for, is cut to a key that expires sooner (a --ttl asked for is not: refused).
      if (req.ttlSeconds === 0 && who.expiresAt && expiresAt > who.expiresAt) expiresAt = who.expiresAt;
      // A token is its key's to use, as a key a key makes (key-service): it expires no later than the key, and works
      // only while the key does (consumeJoinToken), so revoking a leaked key stops the tokens made with it.
      if (who.expiresAt && expiresAt > who.expiresAt) {
        throw new InvalidArgumentError(
          `your key expires at ${who.expiresAt.toISOString()}, and a join token it makes must expire by then: give ` +
            "ttl_seconds (--ttl) that ends no later",
        );
      }
      await insertJoinToken(deps.db, { token, tenantId: who.tenantId, expiresAt, createdByKey: who.keyId });
      const caHash = deps.caHash();
      return create(api.CreateJoinTokenResponseSchema, {
        token,
        caHash,
        grpcUrl: deps.grpcUrl(),
        expiresAt: timestampFromDate(expiresAt),
        installCommand: `curl -fsSL ${deps.httpUrl()}/install.sh | sudo sh -s -- --token ${token} --ca-hash ${caHash}`,
      });
    },

    async listHosts(req, ctx) {
      const who = await provider(ctx);
      const rows = await listHosts(deps.db, listScope(who, req.tenantId, "hosts"));
      // A mistyped tenant would list nothing, as a tenant without hosts does: say which it is.
      if (rows.length === 0 && req.tenantId && !(await tenantExists(deps.db, req.tenantId))) {
        throw noSuchTenant(req.tenantId);
      }
      return create(api.ListHostsResponseSchema, { hosts: rows.map(toApiHost) });
    },

    async getHostMetrics(req, ctx) {
      const who = await provider(ctx);
      const host = await scopedHost(deps.db, req.hostId, tenantScope(who));
      const window = req.sinceSeconds === 0 ? DEFAULT_METRICS_WINDOW_S : req.sinceSeconds;
      if (window > MAX_TOKEN_TTL_S) {
        throw new InvalidArgumentError(
          `since_seconds must be at most ${MAX_TOKEN_TTL_S} (7 days), got ${req.sinceSeconds}`,
        );
      }
      const rows = await metricsSince(deps.db, host.id, new Date(Date.now() - window * 1000));
      return create(api.GetHostMetricsResponseSchema, {
        points: rows.map((r) => ({
          at: timestampFromDate(r.at),
          resolution: r.resolution,
          cpuPercent: r.cpu_percent ?? undefined,
          memoryUsedBytes: BigInt(r.memory_used_bytes),
          diskUsedBytes: BigInt(r.disk_used_bytes),
          gpus: (r.gpus as GpuSampleRow[]).map((g) => ({
            index: g.index,
            utilizationPercent: g.utilizationPercent ?? undefined,
            memoryUsedMib: g.memoryUsedMiB === null ? undefined : BigInt(g.memoryUsedMiB),
            temperatureC: g.temperatureC ?? undefined,
            powerW: g.powerW ?? undefined,
          })),
        })),
      });
    },

    async listHostEvents(req, ctx) {
      const who = await provider(ctx);
      const host = await scopedHost(deps.db, req.hostId, tenantScope(who));
      const rows = await listEvents(deps.db, host.id);
      return create(api.ListHostEventsResponseSchema, {
        events: rows.map((e) => ({
          hostId: e.host_id,
          kind: e.kind,
          message: e.message,
          at: timestampFromDate(e.at),
        })),
      });
    },
  };
}

async function scopedHost(db: Db, hostId: string, scope: { tenantId?: string }): Promise<HostRow> {
  if (!hostId) throw new InvalidArgumentError("host_id is required");
  checkText("host_id", hostId, MAX_HOST_ID);
  const host = await getHost(db, hostId, scope);
  // Another tenant's host reads as missing: no existence oracle across tenants.
  if (!host) throw new NotFoundError(`host ${hostId} not found; list hosts with \`dumont host list\``);
  return host;
}

function toApiHost(h: HostRow): api.Host {
  const latest = h.latest;
  return create(api.HostSchema, {
    id: h.id,
    name: h.name,
    tenantId: h.tenant_id,
    hostname: h.hostname,
    status: h.status,
    agentVersion: h.agent_version,
    simulated: h.simulated,
    enrolledAt: timestampFromDate(h.enrolled_at),
    lastSeenAt: h.last_seen_at ? timestampFromDate(h.last_seen_at) : undefined,
    certificateExpiresAt: h.cert_expires_at ? timestampFromDate(h.cert_expires_at) : undefined,
    gpus: (latest?.gpus ?? []).map((g) => ({
      index: g.index,
      uuid: g.uuid,
      model: g.model,
      memoryTotalMib: g.memoryTotalMiB === null ? undefined : BigInt(g.memoryTotalMiB),
      memoryUsedMib: g.memoryUsedMiB === null ? undefined : BigInt(g.memoryUsedMiB),
      utilizationPercent: g.utilizationPercent ?? undefined,
      temperatureC: g.temperatureC ?? undefined,
      powerW: g.powerW ?? undefined,
    })),
    cpu: latest
      ? { cores: latest.cpu.cores, utilizationPercent: latest.cpu.utilizationPercent ?? undefined }
      : undefined,
    memory: latest
      ? { totalBytes: BigInt(latest.memory.totalBytes), usedBytes: BigInt(latest.memory.usedBytes) }
      : undefined,
    disk: latest ? { totalBytes: BigInt(latest.disk.totalBytes), usedBytes: BigInt(latest.disk.usedBytes) } : undefined,
  });
}
