// HostService's authorization: who may call what, and that one tenant never sees another's hosts.
import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { api } from "@dumont/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Role } from "../db/credential-repository.js";
import { checkJoinToken, consumeJoinToken, ensureTenant, revokeApiKey } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { insertEvent, insertHost } from "../db/host-repository.js";
import { openTestDatabase } from "../db/test-database.js";
import { createApiKey } from "./auth.js";
import { hostService } from "./host-service.js";

describe("HostService: roles and tenants", () => {
  let db: Db;
  let close: () => Promise<void>;
  const ctx: Record<string, HandlerContext> = {};

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    for (const t of ["admin", "t-a", "t-b"]) await ensureTenant(db, t, t);
    const keys: [string, string, Role][] = [
      ["admin", "admin", "admin"],
      ["provider-a", "t-a", "provider"],
      ["consumer-a", "t-a", "consumer"],
      ["provider-b", "t-b", "provider"],
    ];
    for (const [name, tenant, role] of keys) {
      const { key } = await createApiKey(db, tenant, role, name);
      ctx[name] = { requestHeader: new Headers({ authorization: `Bearer ${key}` }) } as HandlerContext;
    }
    for (const [id, tenantId] of [
      ["h-a", "t-a"],
      ["h-b", "t-b"],
    ]) {
      await insertHost(db, { id, tenantId, name: id, hostname: id, agentVersion: "1", certSerial: id });
      await insertEvent(db, id, "online", "connected");
    }
  });
  afterAll(() => close());

  const service = () =>
    hostService({ db, caHash: () => "sha256:00", grpcUrl: () => "https://cp:8443", httpUrl: () => "http://cp:8000" });
  const listed = async (who: string) =>
    ((await service().listHosts(create(api.ListHostsRequestSchema, {}), ctx[who])).hosts ?? []).map((h) => h.id);
  const events = (who: string, hostId: string) =>
    service().listHostEvents(create(api.ListHostEventsRequestSchema, { hostId }), ctx[who]);
  const metrics = (who: string, hostId: string) =>
    service().getHostMetrics(create(api.GetHostMetricsRequestSchema, { hostId }), ctx[who]);
  // A handler answers a value or a promise of one (ServiceImpl's type); both are awaited alike.
  const code = (p: unknown) =>
    Promise.resolve(p).then(
      () => "ok",
      (err) => Code[ConnectError.from(err).code],
    );

  it("lists a provider's own hosts only, and every host to an admin", async () => {
    expect(await listed("provider-a")).toEqual(["h-a"]);
    expect(await listed("provider-b")).toEqual(["h-b"]);
    expect((await listed("admin")).sort()).toEqual(["h-a", "h-b"]);
  });

  it("lists one tenant's hosts when asked: any tenant for an admin, only its own for a provider", async () => {
    const only = async (who: string, tenantId: string) =>
      ((await service().listHosts(create(api.ListHostsRequestSchema, { tenantId }), ctx[who])).hosts ?? []).map(
        (h) => h.id,
      );
    expect(await only("admin", "t-b")).toEqual(["h-b"]);
    expect(await only("provider-a", "t-a")).toEqual(["h-a"]);
    const other = service().listHosts(create(api.ListHostsRequestSchema, { tenantId: "t-b" }), ctx["provider-a"]);
    expect(await code(other)).toBe("PermissionDenied");
    await expect(Promise.resolve(other)).rejects.toThrow("a provider key lists its own tenant's hosts only (t-a)");
    const bad = service().listHosts(create(api.ListHostsRequestSchema, { tenantId: "t-b-" }), ctx.admin);
    expect(await code(bad)).toBe("InvalidArgument");
    // A tenant that does not exist is said so, not listed as one without hosts.
    await ensureTenant(db, "t-empty", "t-empty");
    expect(await only("admin", "t-empty")).toEqual([]);
    const typo = service().listHosts(create(api.ListHostsRequestSchema, { tenantId: "t-nosuch" }), ctx.admin);
    await expect(Promise.resolve(typo)).rejects.toThrow(
      'there is no tenant "t-nosuch": `dumont key list` shows the tenants that hold keys',
    );
    expect(await code(typo)).toBe("NotFound");
  });

  it("answers another tenant's host as not found, never as denied", async () => {
    expect(await code(events("provider-a", "h-b"))).toBe("NotFound");
    expect(await code(metrics("provider-a", "h-b"))).toBe("NotFound");
    await expect(Promise.resolve(events("provider-a", "h-b"))).rejects.toThrow("host h-b not found");
    expect(((await events("provider-a", "h-a")).events ?? []).map((e) => e.hostId)).toEqual(["h-a"]);
    expect(await code(metrics("admin", "h-b"))).toBe("ok");
  });

  it("refuses consumer keys: hosts are the providers' and the operators'", async () => {
    expect(await code(service().listHosts(create(api.ListHostsRequestSchema, {}), ctx["consumer-a"]))).toBe(
      "PermissionDenied",
    );
    expect(await code(events("consumer-a", "h-a"))).toBe("PermissionDenied");
    expect(await code(metrics("consumer-a", "h-a"))).toBe("PermissionDenied");
    const token = service().createJoinToken(create(api.CreateJoinTokenRequestSchema, {}), ctx["consumer-a"]);
    expect(await code(token)).toBe("PermissionDenied");
  });

  it("refuses a host id with a NUL or over 256 characters as a bad argument, not an internal error", async () => {
    for (const hostId of ["h-\0a", "h".repeat(257)]) {
      for (const call of [events, metrics]) {
        const answer = Promise.resolve(call("provider-a", hostId));
        expect(await code(answer)).toBe("InvalidArgument");
        await expect(answer).rejects.toThrow(/host_id must be at most 256 characters with no NUL/);
      }
    }
  });

  it("refuses calls without a valid key before reading anything", async () => {
    const none = { requestHeader: new Headers() } as HandlerContext;
    expect(await code(service().listHosts(create(api.ListHostsRequestSchema, {}), none))).toBe("Unauthenticated");
    expect(await code(service().listHostEvents(create(api.ListHostEventsRequestSchema, { hostId: "h-a" }), none))).toBe(
      "Unauthenticated",
    );
  });
});

describe("HostService: join tokens are their key's", () => {
  let db: Db;
  let close: () => Promise<void>;
  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    await ensureTenant(db, "t-a", "t-a");
  });
  afterAll(() => close());

  const service = () =>
    hostService({ db, caHash: () => "sha256:00", grpcUrl: () => "https://cp:8443", httpUrl: () => "http://cp:8000" });
  const providerKey = async (expiresAt?: Date) => {
    const made = await createApiKey(db, "t-a", "provider", "rack", { expiresAt });
    return { ...made, ctx: { requestHeader: new Headers({ authorization: `Bearer ${made.key}` }) } as HandlerContext };
  };
  const tokenOf = async (ctx: HandlerContext, ttlSeconds = 0) =>
    (
      (await service().createJoinToken(
        create(api.CreateJoinTokenRequestSchema, { ttlSeconds }),
        ctx,
      )) as api.CreateJoinTokenResponse
    ).token;

  it("expires no later than the key that made it", async () => {
    const hour = await providerKey(new Date(Date.now() + 3600_000));
    const refused = await tokenOf(hour.ctx, 7 * 86400).catch((err: unknown) => ConnectError.from(err));
    expect(refused).toMatchObject({ code: Code.InvalidArgument });
    expect((refused as ConnectError).rawMessage).toMatch(
      /^your key expires at \S+, and a join token it makes must expire by then: give ttl_seconds \(--ttl\) that ends no later$/,
    );
    expect(await checkJoinToken(db, await tokenOf(hour.ctx, 1800), new Date())).toEqual({ ok: true, tenantId: "t-a" });
    // The default hour, not asked for, is cut to a key that expires sooner.
    const soon = await providerKey(new Date(Date.now() + 120_000));
    const made = (await service().createJoinToken(
      create(api.CreateJoinTokenRequestSchema, {}),
      soon.ctx,
    )) as api.CreateJoinTokenResponse;
    expect(made.expiresAt && timestampDate(made.expiresAt).getTime()).toBeLessThanOrEqual(Date.now() + 120_000);
  });

  it("works only while its key does: revoked, or expired since, the key takes its tokens with it", async () => {
    const leaked = await providerKey();
    const [unused, raced] = [await tokenOf(leaked.ctx), await tokenOf(leaked.ctx)];
    expect(await checkJoinToken(db, unused, new Date())).toEqual({ ok: true, tenantId: "t-a" });
    expect(await revokeApiKey(db, leaked.id, new Date())).toBeDefined();
    expect(await checkJoinToken(db, unused, new Date())).toEqual({ ok: false, reason: "key-gone" });
    // Using it (enrollment's transaction) is refused the same way, and marks nothing used.
    expect(await consumeJoinToken(db, raced, "h-x", new Date())).toEqual({ ok: false, reason: "key-gone" });

    const brief = await providerKey(new Date(Date.now() + 3600_000));
    const token = await tokenOf(brief.ctx, 1800);
    expect(await checkJoinToken(db, token, new Date(Date.now() + 1000_000))).toEqual({ ok: true, tenantId: "t-a" });
    await db
      .updateTable("api_keys")
      .set({ expires_at: new Date(Date.now() - 1000) })
      .where("id", "=", brief.id)
      .execute();
    expect(await checkJoinToken(db, token, new Date())).toEqual({ ok: false, reason: "key-gone" });
  });
});
