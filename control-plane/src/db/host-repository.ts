// Hosts, their latest state, their telemetry series and their events.
import { sql } from "kysely";
import type { Db } from "./database.js";
import type { GpuSampleRow, HostLatestState, HostRow } from "./tables.js";

export interface HostScope {
  /** undefined = every tenant (admins). */
  tenantId?: string;
}

export async function insertHost(
  db: Db,
  host: {
    id: string;
    tenantId: string;
    name: string;
    hostname: string;
    agentVersion: string;
    certSerial: string;
    certExpiresAt?: Date;
  },
): Promise<void> {
  await db
    .insertInto("hosts")
    .values({
      id: host.id,
      tenant_id: host.tenantId,
      name: host.name,
      hostname: host.hostname,
      status: "lost",
      agent_version: host.agentVersion,
      cert_serial: host.certSerial,
      cert_expires_at: host.certExpiresAt ?? null,
    })
    .execute();
}

export async function getHost(db: Db, id: string, scope: HostScope = {}): Promise<HostRow | undefined> {
  let q = db.selectFrom("hosts").selectAll().where("id", "=", id);
  if (scope.tenantId !== undefined) q = q.where("tenant_id", "=", scope.tenantId);
  return q.executeTakeFirst();
}

/**
 * The host a client certificate (its CN and serial) belongs to, or undefined. A renewed certificate's serial
 * (next_cert_serial) is accepted too, and its first use makes it the host's certificate: from then on the old
 * one is refused.
 */
export async function hostForCertificate(db: Db, hostId: string, serial: string): Promise<HostRow | undefined> {
  const same = (a: string | null) => a !== null && a.toLowerCase() === serial.toLowerCase();
  const host = await getHost(db, hostId);
  if (!host || same(host.cert_serial)) return host;
  if (!same(host.next_cert_serial)) return undefined;
  const next = host.next_cert_serial as string;
  return db.transaction().execute(async (tx) => {
    const promoted = await tx
      .updateTable("hosts")
      .set({ cert_serial: next, next_cert_serial: null })
      .where("id", "=", hostId)
      .where("next_cert_serial", "=", next)
      .returningAll()
      .executeTakeFirst();
    if (!promoted) {
      // Another connection promoted it first: the certificate is the host's, unless it was renewed again since.
      const now = await getHost(tx, hostId);
      return now && same(now.cert_serial) ? now : undefined;
    }
    await insertEvent(tx, hostId, "certificate", "the agent now uses its renewed certificate");
    return promoted;
  });
}

/**
 * Records the serial of a certificate just issued to a host by Renew, to be accepted beside its current one
 * (see hostForCertificate). `currentSerial` is the certificate the agent renewed with; false when it is no longer
 * the host's (a concurrent renewal with another copy of the host's identity promoted another one).
 */
export async function recordRenewedCertificate(
  db: Db,
  hostId: string,
  renewal: { currentSerial: string; nextSerial: string; notAfter: Date },
): Promise<boolean> {
  return db.transaction().execute(async (tx) => {
    const updated = await tx
      .updateTable("hosts")
      .set({ next_cert_serial: renewal.nextSerial })
      .where("id", "=", hostId)
      .where("cert_serial", "=", renewal.currentSerial)
      .executeTakeFirst();
    if (updated.numUpdatedRows === 0n) return false;
    await insertEvent(
      tx,
      hostId,
      "certificate",
      `certificate renewed, valid until ${renewal.notAfter.toISOString().slice(0, 10)}`,
    );
    return true;
  });
}

export async function listHosts(db: Db, scope: HostScope = {}): Promise<HostRow[]> {
  let q = db.selectFrom("hosts").selectAll().orderBy("enrolled_at").orderBy("id");
  if (scope.tenantId !== undefined) q = q.where("tenant_id", "=", scope.tenantId);
  return q.execute();
}

export async function markHostOnline(
  db: Db,
  id: string,
  hello: {
    agentVersion: string;
    protocolVersion: number;
    simulated: boolean;
    hostname: string;
    now: Date;
    /** When the certificate the session was opened with expires (kept as it was when not given). */
    certExpiresAt?: Date;
  },
): Promise<{ wasLost: boolean }> {
  return db.transaction().execute(async (tx) => {
    const before = await tx.selectFrom("hosts").select("status").where("id", "=", id).forUpdate().executeTakeFirst();
    await tx
      .updateTable("hosts")
      .set({
        status: "online",
        agent_version: hello.agentVersion,
        protocol_version: hello.protocolVersion,
        simulated: hello.simulated,
        hostname: hello.hostname,
        last_seen_at: hello.now,
        ...(hello.certExpiresAt ? { cert_expires_at: hello.certExpiresAt } : {}),
      })
      .where("id", "=", id)
      .execute();
    const wasLost = before?.status !== "online";
    if (wasLost) await insertEvent(tx, id, "online", `agent ${hello.agentVersion} connected`);
    return { wasLost };
  });
}

export async function touchHosts(db: Db, ids: string[], now: Date): Promise<void> {
  if (ids.length === 0) return;
  await db.updateTable("hosts").set({ last_seen_at: now }).where("id", "in", ids).execute();
}

/** Marks online hosts silent since `cutoff` as lost, with one event each; returns their ids. */
export async function markSilentHostsLost(db: Db, cutoff: Date, lostAfterSeconds: number): Promise<string[]> {
  return db.transaction().execute(async (tx) => {
    const rows = await tx
      .updateTable("hosts")
      .set({ status: "lost" })
      .where("status", "=", "online")
      .where((eb) => eb.or([eb("last_seen_at", "<", cutoff), eb("last_seen_at", "is", null)]))
      .returning("id")
      .execute();
    for (const row of rows) {
      await insertEvent(tx, row.id, "lost", `no message for ${lostAfterSeconds}s`);
    }
    return rows.map((r) => r.id);
  });
}

export interface TelemetryRecord {
  hostId: string;
  at: Date;
  latest: HostLatestState;
  gpus: GpuSampleRow[];
}

/** Stores a batch of telemetry: each host's latest state plus one raw point per sample. */
export async function recordTelemetry(db: Db, records: TelemetryRecord[], now: Date): Promise<void> {
  if (records.length === 0) return;
  await db.transaction().execute(async (tx) => {
    await tx
      .insertInto("host_metrics")
      .values(
        records.map((r) => ({
          host_id: r.hostId,
          at: r.at,
          resolution: "raw",
          cpu_percent: r.latest.cpu.utilizationPercent,
          memory_used_bytes: r.latest.memory.usedBytes,
          disk_used_bytes: r.latest.disk.usedBytes,
          gpus: JSON.stringify(r.gpus),
        })),
      )
      .execute();
    // Latest wins per host: a batch may hold several samples of one host.
    const latestByHost = new Map<string, TelemetryRecord>();
    for (const r of records) latestByHost.set(r.hostId, r);
    const values = [...latestByHost.values()];
    await sql`
      update hosts as h set latest = v.latest::jsonb, last_seen_at = ${now}
      from (values ${sql.join(values.map((r) => sql`(${r.hostId}, ${JSON.stringify(r.latest)})`))}) as v(id, latest)
      where h.id = v.id`.execute(tx);
  });
}

export async function metricsSince(db: Db, hostId: string, since: Date) {
  return db
    .selectFrom("host_metrics")
    .select(["at", "resolution", "cpu_percent", "memory_used_bytes", "disk_used_bytes", "gpus"])
    .where("host_id", "=", hostId)
    .where("at", ">=", since)
    .orderBy("at")
    .execute();
}

/**
 * Bounds the series: raw points older than `rawCutoff` are folded into one-minute averages
 * (per host, per minute, GPU values averaged by index), in one transaction.
 */
export async function downsampleMetrics(db: Db, rawCutoff: Date): Promise<number> {
  return db.transaction().execute(async (tx) => {
    const old = await tx
      .selectFrom("host_metrics")
      .select(["id", "host_id", "at", "cpu_percent", "memory_used_bytes", "disk_used_bytes", "gpus"])
      .where("resolution", "=", "raw")
      .where("at", "<", rawCutoff)
      .orderBy("at")
      .execute();
    if (old.length === 0) return 0;
    const buckets = new Map<string, typeof old>();
    for (const row of old) {
      const minute = new Date(Math.floor(new Date(row.at).getTime() / 60_000) * 60_000);
      const key = `${row.host_id}|${minute.toISOString()}`;
      const list = buckets.get(key) ?? [];
      list.push(row);
      buckets.set(key, list);
    }
    const rows = [...buckets.entries()].map(([key, list]) => {
      const [hostId, minute] = key.split("|") as [string, string];
      return {
        host_id: hostId,
        at: new Date(minute),
        resolution: "1m",
        cpu_percent: average(list.map((r) => r.cpu_percent)),
        memory_used_bytes: Math.round(average(list.map((r) => Number(r.memory_used_bytes))) ?? 0),
        disk_used_bytes: Math.round(average(list.map((r) => Number(r.disk_used_bytes))) ?? 0),
        gpus: JSON.stringify(averageGpus(list.map((r) => r.gpus))),
      };
    });
    for (let i = 0; i < rows.length; i += 500) {
      await tx
        .insertInto("host_metrics")
        .values(rows.slice(i, i + 500))
        .execute();
    }
    const ids = old.map((r) => r.id);
    for (let i = 0; i < ids.length; i += 5000) {
      await tx
        .deleteFrom("host_metrics")
        .where("id", "in", ids.slice(i, i + 5000))
        .execute();
    }
    return old.length;
  });
}

export async function deleteMetricsBefore(db: Db, cutoff: Date): Promise<void> {
  await db.deleteFrom("host_metrics").where("at", "<", cutoff).execute();
}

export async function insertEvent(db: Db, hostId: string, kind: string, message: string): Promise<void> {
  await db.insertInto("host_events").values({ host_id: hostId, kind, message }).execute();
}

/** Whether the host has an event of `kind` from the last `seconds` (by the database's clock). */
export async function hasRecentEvent(db: Db, hostId: string, kind: string, seconds: number): Promise<boolean> {
  const row = await db
    .selectFrom("host_events")
    .select("id")
    .where("host_id", "=", hostId)
    .where("kind", "=", kind)
    .where("at", ">", sql<Date>`now() - make_interval(secs => ${seconds})`)
    .limit(1)
    .executeTakeFirst();
  return row !== undefined;
}

export async function listEvents(db: Db, hostId: string) {
  return db
    .selectFrom("host_events")
    .select(["host_id", "kind", "message", "at"])
    .where("host_id", "=", hostId)
    .orderBy("at")
    .orderBy("id")
    .execute();
}

function average(values: (number | null)[]): number | null {
  const present = values.filter((v): v is number => v !== null && Number.isFinite(v));
  if (present.length === 0) return null;
  return present.reduce((a, b) => a + b, 0) / present.length;
}

function averageGpus(samples: GpuSampleRow[][]): GpuSampleRow[] {
  const byIndex = new Map<number, GpuSampleRow[]>();
  for (const list of samples) {
    for (const g of list) {
      const l = byIndex.get(g.index) ?? [];
      l.push(g);
      byIndex.set(g.index, l);
    }
  }
  return [...byIndex.entries()]
    .sort(([a], [b]) => a - b)
    .map(([index, list]) => ({
      index,
      utilizationPercent: average(list.map((g) => g.utilizationPercent)),
      memoryUsedMiB: roundOrNull(average(list.map((g) => g.memoryUsedMiB))),
      temperatureC: average(list.map((g) => g.temperatureC)),
      powerW: average(list.map((g) => g.powerW)),
    }));
}

function roundOrNull(v: number | null): number | null {
  return v === null ? null : Math.round(v);
}
