// Assembles one control-plane instance from a validated config: database, CA, gRPC agent gateway,
// HTTP API, liveness and retention loops. `dumont serve`, `dumont dev` and the tests all start it here.
import fs from "node:fs/promises";
import path from "node:path";
import type { ConnectRouter } from "@connectrpc/connect";
import { api } from "@dumont/proto";
import { CertificateAuthority } from "./agent-gateway/certificate-authority.js";
import { AgentGatewayServer } from "./agent-gateway/gateway-server.js";
import { TelemetryIngest } from "./agent-gateway/telemetry-ingest.js";
import { bootstrapAdminKey } from "./api/auth.js";
import { hostService } from "./api/host-service.js";
import { keyService } from "./api/key-service.js";
import { KeyUses } from "./api/key-uses.js";
import { ApiRateLimiter } from "./api/rate-limit.js";
import { snapshotService } from "./api/snapshot-service.js";
import { type ControlPlaneConfig, SETTING_NAMES, urlHost } from "./config.js";
import { type Db, openDatabase } from "./db/database.js";
import { MetricsRetention } from "./db/metrics-retention.js";
import { ConfigError } from "./errors.js";
import { HostLiveness } from "./failover/index.js";
import type { Logger } from "./logger.js";
import { createMetrics } from "./metrics.js";
import { SnapshotCoordinator } from "./snapshots/snapshot-coordinator.js";
import { loadMasterKey, TenantKeys } from "./snapshots/tenant-keys.js";
import { createHttpServer, listenHttp } from "./web/http-server.js";

export const ADMIN_TENANT = "admin";
export const ADMIN_KEY_FILE = "admin-api-key";

export interface ControlPlane {
  db: Db;
  gateway: AgentGatewayServer;
  httpPort: number;
  grpcPort: number;
  caHash: string;
  /** As agents and browsers reach us: through the public host (join tokens, the banner). */
  httpUrl: string;
  grpcUrl: string;
  /**
   * As this machine reaches us: the address listened on, loopback for a wildcard. `dumont dev` calls its API and
   * points its local agent here, whatever the public host says (a name this machine may not resolve).
   */
  localHttpUrl: string;
  localGrpcUrl: string;
  /** Set only on the start that created it; it is never readable again except from the key file. */
  newAdminKey?: string;
  adminKeyFile: string;
  close(): Promise<void>;
}

export async function startControlPlane(config: ControlPlaneConfig, log: Logger): Promise<ControlPlane> {
  await makeDataDir(config.dataDir);
  const db = await openDatabase({
    dataDir: config.dataDir,
    databaseUrl: config.databaseUrl,
    onIdleConnectionError: (err) =>
      log.warn({ reason: err.message }, "the database closed an idle connection; the next query opens a new one"),
  });
  const cleanups: (() => Promise<void>)[] = [() => db.destroy()];
  const closeAll = async () => {
    for (const c of cleanups.reverse()) await c().catch((err) => log.error({ err }, "shutdown step failed"));
  };
  try {
    const metrics = createMetrics();
    const ca = await CertificateAuthority.loadOrCreate(config.dataDir, [config.publicHost]);
    const adminKeyFile = path.join(config.dataDir, ADMIN_KEY_FILE);
    const newAdminKey = await bootstrapAdminKey(db, adminKeyFile, ADMIN_TENANT);

    const ingest = new TelemetryIngest(db, log, metrics);
    let gateway: AgentGatewayServer | undefined;
    const liveness = new HostLiveness(db, log, metrics, {
      lostAfterSeconds: config.lostAfterSeconds,
      serializeWrites: (work) => ingest.serialize(work),
      // A host declared lost whose stream is still open has its stream closed, so that its agent reconnects and is
      // online again (see closeSessionsOf).
      onLost: (hostIds) => gateway?.closeSessionsOf(hostIds),
    });
    gateway = new AgentGatewayServer({
      db,
      ca,
      log,
      metrics,
      liveness,
      ingest,
      telemetryIntervalMs: Math.round(config.telemetryIntervalSeconds * 1000),
    });
    const storedTenantKeys = async () =>
      Number(
        (
          await db
            .selectFrom("tenant_keys")
            .select((eb) => eb.fn.countAll().as("n"))
            .executeTakeFirst()
        )?.n ?? 0,
      );
    const tenantKeys = new TenantKeys(db, await loadMasterKey(config.dataDir, config.masterKey, storedTenantKeys));
    await tenantKeys.verify();
    const snapshots = new SnapshotCoordinator(db, tenantKeys, config.blobStore, log, metrics, config.snapshotKeep, {
      snapshotQuota: config.snapshotQuota,
    });
    gateway.onMessage((session, message) => snapshots.onAgentMessage(session, message));
    gateway.onSessionClosed((session) => snapshots.onSessionClosed(session));
    // A stop between a repository's commit and its catalogue row (the last start may have ended so) leaves a
    // snapshot nobody can list: its row comes back from the repository, in the background.
    const relisting = snapshots
      .relistAll()
      .catch((err) => log.error({ err }, "could not list the snapshots of the blob store again; see the error"));
    const grpcPort = await gateway.listen(config.host, config.grpcPort);
    cleanups.push(() => ingest.close());
    cleanups.push(async () => {
      await snapshots.close();
      await relisting;
    });
    if (config.pruneIntervalSeconds > 0) {
      const pruning = setInterval(() => void snapshots.pruneAll(), config.pruneIntervalSeconds * 1000);
      pruning.unref();
      cleanups.push(async () => clearInterval(pruning));
    }
    cleanups.push(() => liveness.stop());
    cleanups.push(() => gateway.close());
    liveness.start();
    const retention = new MetricsRetention(db, log);
    retention.start();
    cleanups.push(() => retention.stop());

    const urls = { httpUrl: "", grpcUrl: `https://${urlHost(config.publicHost)}:${grpcPort}` };
    const rateLimiter =
      config.apiRateLimit > 0
        ? new ApiRateLimiter({ perSecond: config.apiRateLimit, burst: config.apiBurst }, undefined, () =>
            metrics.apiRequestsLimited.inc(),
          )
        : undefined;
    const keyUses = new KeyUses(db, log);
    cleanups.push(() => keyUses.settled()); // after the HTTP server has closed, before the database does
    const auth = { limiter: rateLimiter, uses: keyUses };
    const routes = (router: ConnectRouter) => {
      const hosts = { db, caHash: () => ca.tls.caHash, grpcUrl: () => urls.grpcUrl, httpUrl: () => urls.httpUrl };
      router.service(api.HostService, hostService({ ...hosts, auth }));
      router.service(api.SnapshotService, snapshotService({ db, sessions: gateway.sessions, snapshots, auth }));
      router.service(api.KeyService, keyService({ db, adminTenant: ADMIN_TENANT, auth }));
    };
    const http = createHttpServer({
      routes,
      log,
      registry: metrics.registry,
      healthy: async () => {
        await db.selectFrom("tenants").select("id").limit(1).execute();
        return true;
      },
    });
    const httpPort = await listenHttp(http, config.host, config.httpPort);
    urls.httpUrl = `http://${urlHost(config.publicHost)}:${httpPort}`;
    const local = urlHost(localAddress(config.host));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          http.close(() => resolve());
          http.closeAllConnections();
        }),
    );

    log.info(
      { httpPort, grpcPort, dataDir: config.dataDir, database: config.databaseUrl ? "postgres" : "pglite" },
      "control plane started",
    );
    return {
      db,
      gateway,
      httpPort,
      grpcPort,
      caHash: ca.tls.caHash,
      httpUrl: urls.httpUrl,
      grpcUrl: urls.grpcUrl,
      localHttpUrl: `http://${local}:${httpPort}`,
      localGrpcUrl: `https://${local}:${grpcPort}`,
      newAdminKey,
      adminKeyFile,
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

/** Where this machine reaches a listener on `host`: the address itself, or loopback for a wildcard one. */
export function localAddress(host: string): string {
  if (host === "0.0.0.0") return "127.0.0.1";
  if (host === "::" || host === "[::]") return "::1";
  return host.replace(/^\[(.*)\]$/, "$1");
}

/**
 * The data dir, made if missing. A file in its place failed as `EEXIST: file already exists, mkdir …`, naming
 * neither the setting nor the problem.
 */
async function makeDataDir(dir: string): Promise<void> {
  try {
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "EEXIST" && code !== "ENOTDIR") throw err;
    throw new ConfigError(
      `invalid configuration: ${SETTING_NAMES.dataDir} ${JSON.stringify(dir)} is not a directory (${code === "EEXIST" ? "a file is there" : "a file is in its path"}): give a directory, which is made if missing`,
    );
  }
}
