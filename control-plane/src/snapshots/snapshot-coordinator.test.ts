// The control plane's side of a streamed snapshot, driven in-process: a fake agent session plays the agent's
// messages, so a chunk that is not what its id says can be sent (a real agent never does).
import { createHash, randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import fs from "node:fs/promises";
import { type AddressInfo, createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AgentMessageSchema,
  type ControlMessage,
  ControlMessageSchema,
  grpcJsStreamDecoder,
  installPooledReceiving,
  isEncodedMessage,
  isPooledMessageMemory,
  type SnapshotStatsSchema,
  STREAM_BATCH_BYTES,
} from "@dumont/proto";
import {
  acquireLock,
  type BlobCallOptions,
  type BlobInfo,
  type BlobStore,
  checkRepository,
  chunkCodec,
  generateRepositoryKey,
  MAX_OFFER_CHUNK_IDS,
  MAX_RESTORE_REQUEST_IDS,
  openBlobStore,
  Repository,
  type RetentionPolicy,
  S3BlobStore,
  sealManifest,
  sealManifestParts,
} from "@dumont/repository";
import { ObjectKind, sealJson, sha256 } from "@dumont/repository/sealing";
import { sql } from "kysely";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import type { AgentSession } from "../agent-gateway/agent-session.js";
import { ensureTenant } from "../db/credential-repository.js";
import { type Db, withDatabaseLock } from "../db/database.js";
import { listSnapshots } from "../db/snapshot-repository.js";
import { openTestDatabase } from "../db/test-database.js";
import { createLogger } from "../logger.js";
import { createMetrics } from "../metrics.js";
import { ChunkVerifier } from "./chunk-verifier.js";
import { DeadlineBlobStore, UnreturnedCalls } from "./deadline-blob-store.js";
import { type CoordinatorTuning, SnapshotCoordinator } from "./snapshot-coordinator.js";
import { TenantKeys } from "./tenant-keys.js";

/** The onLost each catalogue lock was last taken with, by lock name (withDatabaseLock, passed through). */
const catalogueLocks = vi.hoisted(() => ({ onLost: new Map<string, () => void>() }));
vi.mock("../db/database.js", async (importOriginal) => {
  const real = await importOriginal<typeof import("../db/database.js")>();
  return {
    ...real,
    withDatabaseLock: ((db, name, work, options) => {
      if (options?.onLost) catalogueLocks.onLost.set(name, options.onLost);
      return real.withDatabaseLock(db, name, work, options);
    }) satisfies typeof real.withDatabaseLock,
  };
});

/** grpc-js's message decoder (not part of its public API), which installPooledReceiving patches. */
const { StreamDecoder: GrpcStreamDecoder } = grpcJsStreamDecoder() as {
  StreamDecoder: new (maxReadMessageLength: number) => { write(data: Buffer): Buffer[] };
};

/**
 * A coordinator on a fresh test database (tenant "t1") and blob directory, for the enclosing describe, with a
 * fake agent session whose messages land in `sent`.
 */
function useCoordinator(hostId: string, retention?: RetentionPolicy, tuning?: CoordinatorTuning) {
  const h = {
    db: undefined as unknown as Db,
    blobs: "",
    coordinator: undefined as unknown as SnapshotCoordinator,
    masterKey: randomBytes(32),
    metrics: createMetrics(),
    /** The coordinators' log lines at info and above, parsed. */
    logged: [] as Record<string, unknown>[],
    sent: [] as ControlMessage[],
    session: undefined as unknown as AgentSession,
    /** A coordinator on the harness's database and store, as a control plane started again would make. */
    open: (): SnapshotCoordinator =>
      new SnapshotCoordinator(
        h.db,
        new TenantKeys(h.db, h.masterKey),
        `file://${h.blobs}`,
        createLogger("info", { write: (line: string) => void h.logged.push(JSON.parse(line)) }),
        h.metrics,
        retention,
        tuning,
      ),
  };
  let closeDb: () => Promise<void>;
  h.session = {
    hostId,
    send: async (m: ControlMessage) => void h.sent.push(m),
    pauseInbound: () => {},
    resumeInbound: () => {},
    require: () => {},
    // A restore's chunk messages come encoded (encodeRestoreChunks): kept decoded, as the agent reads them.
    bulkSender: async () => ({
      connection: "connect",
      send: async (m: ControlMessage | Uint8Array) =>
        void h.sent.push(isEncodedMessage(m) ? fromBinary(ControlMessageSchema, m) : (m as ControlMessage)),
    }),
  } as unknown as AgentSession;
  beforeAll(async () => {
    ({ db: h.db, close: closeDb } = await openTestDatabase());
    await ensureTenant(h.db, "t1", "tenant one");
    h.blobs = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-coordinator-"));
    h.coordinator = h.open();
  });
  afterAll(async () => {
    await h.coordinator.close();
    await closeDb();
    await fs.rm(h.blobs, { recursive: true, force: true });
  });
  return h;
}

describe("SnapshotCoordinator: the arrival check", () => {
  const h = useCoordinator("h-test");
  let db: Db;
  let blobs: string;
  let coordinator: SnapshotCoordinator;
  let sent: ControlMessage[];
  let session: AgentSession;
  const coordinatorMasterKey = h.masterKey;

  beforeAll(() => {
    ({ db, blobs, coordinator, session } = h);
  });
  beforeEach(() => {
    h.sent = [];
    sent = h.sent;
  });

  /** Starts a snapshot and returns it with what the agent is told: the request id and the tenant key. */
  const start = async () => {
    const snapshot = coordinator.snapshot({ session, tenantId: "t1", path: "/work", workspaceId: "w1", epoch: 3n });
    snapshot.catch(() => {});
    await until(() => sent.length > 0);
    const take = sent[0]?.msg;
    if (take?.case !== "takeSnapshot") throw new Error(`expected takeSnapshot, got ${take?.case}`);
    const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
      coordinator.onAgentMessage(session, create(AgentMessageSchema, { msg }));
    return { snapshot, requestId: take.value.requestId, key: Buffer.from(take.value.tenantKey), agentSends };
  };

  it("refuses a snapshot whose chunk does not open to its id, and lists nothing", async () => {
    const { snapshot, requestId, key, agentSends } = await start();
    const good = chunkCodec.sealChunk(key, randomBytes(100_000));
    const other = chunkCodec.sealChunk(key, randomBytes(100_000));
    const forged = good.id.map((b, i) => (i === 0 ? b ^ 1 : b));
    await offered(agentSends, sent, requestId, 3n, [good.id, forged]);
    // The good chunk in a batch of its own, written (and kept); the bad one in the next.
    agentSends({
      case: "snapshotChunks",
      value: { requestId, epoch: 3n, chunks: [{ id: good.id, blob: good.blob, plainLength: 100_000 }] },
    });
    agentSends({
      case: "snapshotChunks",
      value: {
        requestId,
        epoch: 3n,
        chunks: [{ id: forged, blob: other.blob, plainLength: 100_000 }],
      },
    });
    // The commit that follows must not make it through either, though it names only the good chunk: queued
    // behind the refused batch, it ran once the failure had been answered.
    agentSends({ case: "snapshotCommit", value: { requestId, epoch: 3n, manifest: oneFile(key, good.id, 100_000) } });
    await expect(snapshot).rejects.toThrow(/arrived damaged: authentication failed/);
    expect(sent.some((m) => m.msg.case === "snapshotAborted")).toBe(true);
    expect(sent.some((m) => m.msg.case === "snapshotCommitted")).toBe(false);
    expect(await db.selectFrom("snapshots").selectAll().execute()).toEqual([]);
    const repository = await (
      coordinator as unknown as { repositories: Map<string, Promise<Repository>> }
    ).repositories.get("t1")!;
    expect(await repository.listSnapshots()).toEqual([]);
  });

  it.each([
    [
      "a chunk it never sent",
      (key: Buffer) => oneFile(key, randomBytes(32), 10),
      /references 1 chunk the repository does not hold/,
    ],
    [
      "an unsafe path",
      (key: Buffer, id: Buffer) => oneFileAt(key, "../escape", id, 5_000),
      /"\.\.\/escape" has an empty/,
    ],
    ["a part that does not open", () => randomBytes(200), /manifest part 1 of 1, as given, does not open/],
  ])(
    "answers a commit of a manifest with %s INVALID_ARGUMENT, saying why, and lists nothing",
    async (_what, manifest, why) => {
      // The repository's refusal reached the caller as "internal error" (its code mapped to nothing), or as DATA_LOSS
      // for a part the agent sealed wrong, as though the repository were damaged.
      const { snapshot, requestId, key, agentSends } = await start();
      const chunk = chunkCodec.sealChunk(key, randomBytes(5_000));
      await offered(agentSends, sent, requestId, 3n, [chunk.id]);
      agentSends({
        case: "snapshotChunks",
        value: { requestId, epoch: 3n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: 5_000 }] },
      });
      agentSends({ case: "snapshotCommit", value: { requestId, epoch: 3n, manifest: manifest(key, chunk.id) } });
      const err = await snapshot.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.InvalidArgument);
      expect((err as ConnectError).message).toMatch(why);
      expect(await db.selectFrom("snapshots").selectAll().execute()).toEqual([]);
    },
  );

  /** A snapshot of one chunk whose commit carries `stats`; returns the snapshot's promise. */
  const commitWith = async (stats: MessageInitShape<typeof SnapshotStatsSchema>) => {
    const { snapshot, requestId, key, agentSends } = await start();
    const plain = randomBytes(10_000);
    const chunk = chunkCodec.sealChunk(key, plain);
    await offered(agentSends, sent, requestId, 3n, [chunk.id]);
    agentSends({
      case: "snapshotChunks",
      value: { requestId, epoch: 3n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }] },
    });
    agentSends({
      case: "snapshotCommit",
      value: { requestId, epoch: 3n, manifest: oneFile(key, chunk.id, plain.length), stats },
    });
    return snapshot;
  };

  it.each(["snapshotOffer", "snapshotChunks", "snapshotCommit"] as const)(
    "refuses a %s from an earlier lease epoch, and commits nothing",
    async (kind) => {
      // Fencing: an agent of a lease since moved elsewhere must not add to, or commit, the new holder's snapshot.
      sent.length = 0;
      const { snapshot, requestId, key, agentSends } = await start();
      const plain = randomBytes(10_000);
      const chunk = chunkCodec.sealChunk(key, plain);
      const chunks = [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }];
      const epochOf = (k: string) => (k === kind ? 2n : 3n);
      if (kind === "snapshotOffer") {
        agentSends({ case: "snapshotOffer", value: { requestId, epoch: 2n, batch: 1n, chunkIds: [chunk.id] } });
      } else {
        await offered(agentSends, sent, requestId, 3n, [chunk.id]);
        agentSends({ case: "snapshotChunks", value: { requestId, epoch: epochOf("snapshotChunks"), chunks } });
        const manifest = oneFile(key, chunk.id, plain.length);
        agentSends({ case: "snapshotCommit", value: { requestId, epoch: epochOf("snapshotCommit"), manifest } });
      }
      const rows = await db.selectFrom("snapshots").select("id").execute();
      await expect(snapshot).rejects.toThrow(/refused a snapshot message from lease epoch 2; the current epoch is 3/);
      expect(sent.some((m) => m.msg.case === "snapshotNeed")).toBe(kind !== "snapshotOffer");
      expect(sent.some((m) => m.msg.case === "snapshotCommitted")).toBe(false);
      expect(await db.selectFrom("snapshots").select("id").execute()).toEqual(rows);
    },
  );

  it("refuses an offer of a manifest part id that is not 32 bytes", async () => {
    sent.length = 0;
    const { snapshot, requestId, agentSends } = await start();
    const manifestIds = [randomBytes(32), randomBytes(31)];
    agentSends({ case: "snapshotOffer", value: { requestId, epoch: 3n, batch: 1n, chunkIds: [], manifestIds } });
    await expect(snapshot).rejects.toThrow("the agent offered 2 manifest part ids; at most 256, of 32 bytes each");
    expect(sent.some((m) => m.msg.case === "snapshotNeed")).toBe(false);
  });

  it("commits a snapshot whose chunks all check out", async () => {
    const row = await commitWith({});
    expect(row).toMatchObject({ tenant_id: "t1", host_id: "h-test", workspace_id: "w1", epoch: 3, files_skipped: 0 });
    expect((await db.selectFrom("snapshots").select("id").execute()).map((r) => r.id)).toEqual([row.id]);
  });

  it("takes only the chunks it said it lacks: one never offered, or offered and held, is refused and not stored", async () => {
    // A well-sealed chunk of the tenant's key passes the arrival check: without this, an agent could fill the
    // tenant's repository with chunks no snapshot asked for.
    const sendChunk = (
      s: Awaited<ReturnType<typeof start>>,
      chunk: { id: Buffer; blob: Buffer },
      plainLength: number,
    ) =>
      s.agentSends({
        case: "snapshotChunks",
        value: { requestId: s.requestId, epoch: 3n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength }] },
      });
    /** start() reads the first message sent: each snapshot here starts on an empty list. */
    const begin = async () => {
      sent.length = 0;
      return start();
    };
    const stored = async (id: Buffer) => {
      const s = await begin();
      const need = await offered(s.agentSends, sent, s.requestId, 3n, [id]);
      s.agentSends({ case: "snapshotFailed", value: { requestId: s.requestId, message: "only asking" } });
      await s.snapshot.catch(() => {});
      return need.length === 0;
    };

    const never = await begin();
    const unasked = chunkCodec.sealChunk(never.key, randomBytes(20_000));
    sendChunk(never, unasked, 20_000);
    await expect(never.snapshot).rejects.toThrow(
      `the agent sent chunk ${unasked.id.toString("hex")}, which this snapshot did not ask for`,
    );
    expect(sent.some((m) => m.msg.case === "snapshotAborted" && m.msg.value.requestId === never.requestId)).toBe(true);
    expect(await stored(unasked.id)).toBe(false);

    // Held already (committed by an earlier snapshot), so the answer to its offer is empty.
    sent.length = 0;
    const held = await commitWith({});
    const listed = await db.selectFrom("snapshots").select("id").execute();
    const [heldId] = (await coordinator.readManifest(held)).entries.flatMap((e) => (e.type === "file" ? e.chunks : []));
    const again = await begin();
    expect(await offered(again.agentSends, sent, again.requestId, 3n, [Buffer.from(heldId, "hex")])).toEqual([]);
    const extra = chunkCodec.sealChunk(again.key, randomBytes(30_000));
    const asked = await offered(again.agentSends, sent, again.requestId, 3n, [extra.id]);
    expect(asked.map((id) => Buffer.from(id).toString("hex"))).toEqual([extra.id.toString("hex")]);
    sendChunk(again, extra, 30_000); // asked for: taken
    // Sent anyway, in a later batch, a copy of the held chunk's id with other bytes: refused before it is opened.
    sendChunk(again, { id: Buffer.from(heldId, "hex"), blob: extra.blob }, 30_000);
    await expect(again.snapshot).rejects.toThrow(`the agent sent chunk ${heldId}, which this snapshot did not ask for`);
    expect(await stored(extra.id)).toBe(true); // the asked chunk ahead of the refusal was kept
    expect(await db.selectFrom("snapshots").select("id").execute()).toEqual(listed);

    // An offered id that is not a chunk id is refused as it arrives.
    const bad = await begin();
    bad.agentSends({
      case: "snapshotOffer",
      value: { requestId: bad.requestId, epoch: 3n, batch: 1n, chunkIds: [Buffer.alloc(31)] },
    });
    await expect(bad.snapshot).rejects.toThrow("the agent offered a chunk id of 31 bytes; chunk ids are 32");
  });

  it("files the snapshot's size as its manifest counts it, whatever the agent's stats say", async () => {
    // Stats that read nothing (an unchanged workspace's): the size is still its file's 10,000 bytes.
    const row = await commitWith({ files: 1n, bytesRead: 0n, bytesStored: 592n });
    expect(row).toMatchObject({ bytes_total: 10_000, bytes_stored: 592 });
    const stored = await db.selectFrom("snapshots").selectAll().where("id", "=", row.id).executeTakeFirstOrThrow();
    expect(stored).toMatchObject({ bytes_total: 10_000, bytes_stored: 592 });
  });

  it("lists no snapshot a forget took between its commit and its row: both or neither", async () => {
    // A forget (a retention after another snapshot of the workspace) that runs while a commit is between the
    // repository's record and the catalogue's row forgets the snapshot, row and record; the row must not come
    // back after it, for a snapshot no restore, diff or forget could then find.
    const snapshotsDir = path.join(blobs, "tenants", "t1", "snapshots");
    const records = async () => new Set(await fs.readdir(snapshotsDir).catch(() => [] as string[]));
    const before = await records();
    let forgetting: Promise<unknown> | undefined;
    const insertInto = db.insertInto.bind(db);
    // The commit's insert (the first into snapshots) waits for that forget, or a second where the forget waits
    // for it (as it should: then it finds the row, and forgets both).
    const gated = <T extends object>(builder: T): T =>
      new Proxy(builder, {
        get(target, prop) {
          const value = Reflect.get(target, prop);
          if (typeof value !== "function") return value;
          return (...args: unknown[]) => {
            if (prop === "executeTakeFirst" || prop === "execute") {
              return Promise.race([forgetting, new Promise((r) => setTimeout(r, 1000))]).then(() =>
                value.apply(target, args),
              );
            }
            const next = value.apply(target, args);
            return next && typeof next === "object" ? gated(next) : next;
          };
        },
      });
    const spy = vi.spyOn(db, "insertInto").mockImplementation(((table: "snapshots") => {
      const builder = insertInto(table);
      if (table !== "snapshots" || forgetting) return builder;
      forgetting = (async () => {
        const [id] = [...(await records())].filter((r) => !before.has(r));
        await coordinator.forget({ tenantId: "t1", ids: [id], policy: {}, prune: false, dryRun: false });
      })();
      forgetting.catch(() => {});
      return gated(builder);
    }) as typeof db.insertInto);
    try {
      const row = await commitWith({});
      await forgetting;
      const listed = await db.selectFrom("snapshots").select("id").where("id", "=", row.id).execute();
      expect({ listed: listed.length, inRepository: (await records()).has(row.id) }).toEqual({
        listed: 0,
        inRepository: false,
      });
    } finally {
      spy.mockRestore();
    }
  });

  it("stops reading an agent whose answers wait to be sent (it offers on and reads nothing), until they go", async () => {
    const { snapshot, requestId, key, agentSends } = await start();
    // Answers are held as a stream the agent does not read holds them: sent once the test lets them go.
    const held: (() => void)[] = [];
    const send = session.send;
    const pauses: string[] = [];
    session.send = async (m: ControlMessage) => {
      if (m.msg.case !== "snapshotNeed") return send(m);
      await new Promise<void>((resolve) => held.push(resolve));
      return send(m);
    };
    session.pauseInbound = () => void pauses.push("pause");
    session.resumeInbound = () => void pauses.push("resume");
    try {
      for (let batch = 1n; batch <= 12n; batch++) {
        const chunkIds = [chunkCodec.sealChunk(key, randomBytes(100)).id];
        agentSends({ case: "snapshotOffer", value: { requestId, epoch: 3n, batch, chunkIds, manifestIds: [] } });
      }
      await until(() => held.length === 12);
      // Paused once past eight answers waiting (each up to a message of memory), not once per offer.
      expect(pauses).toEqual(["pause"]);
      for (const resolve of held.splice(0)) resolve();
      await until(() => sent.filter((m) => m.msg.case === "snapshotNeed").length === 12);
      expect(pauses).toEqual(["pause", "resume"]);
    } finally {
      session.send = send;
      session.pauseInbound = () => {};
      session.resumeInbound = () => {};
      agentSends({ case: "snapshotFailed", value: { requestId, message: "the test is over" } });
      await snapshot.catch(() => {});
    }
  });

  it("refuses a snapshot while another process prunes the repository, as a failed precondition saying so", async () => {
    // A direct-mode prune of the same store (dumont-agent snapshot forget --prune): its exclusive lock.
    const key = await new TenantKeys(db, coordinatorMasterKey).get("t1");
    const prune = await acquireLock(openBlobStore(`file://${blobs}/tenants/t1`), key, {
      exclusive: true,
      purpose: "a prune",
    });
    try {
      const err = await coordinator
        .snapshot({ session, tenantId: "t1", path: "/work", workspaceId: "w1", epoch: 3n })
        .catch((e: unknown) => e);
      // It was an "internal error" to the API's caller, the reason only in the control plane's log.
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
      expect((err as ConnectError).rawMessage).toMatch(/the repository is locked by a prune \(pid \d+/);
    } finally {
      await prune.release();
    }
  });

  it("refuses a snapshot of a repository its tenant key does not open as a failed precondition, saying what to check", async () => {
    // t9's repository made with another key than this control plane's for t9: another control plane's, say, whose
    // blob store this one was pointed at.
    await ensureTenant(db, "t9", "tenant nine");
    const other = generateRepositoryKey();
    const store = openBlobStore(`file://${blobs}/tenants/t9`);
    await Repository.openOrInit(store, other);
    await store.close();
    const err = await coordinator
      .snapshot({ session, tenantId: "t9", path: "/work", workspaceId: "w1", epoch: 3n })
      .catch((e: unknown) => e);
    // It was an "internal error" to the API's caller, the reason only in the control plane's log.
    expect(err).toBeInstanceOf(ConnectError);
    expect(err).toMatchObject({
      code: Code.FailedPrecondition,
      rawMessage: expect.stringMatching(
        /^the key does not open the repository at file:\/\/.*\/tenants\/t9: .*check that it runs with the master key and database of the control plane that made it/,
      ),
    });
    // The operator's to mend: logged at error, though the caller gets FAILED_PRECONDITION.
    expect(h.logged.filter((l) => l.msg === "snapshot failed" && l.tenantId === "t9")).toEqual([
      expect.objectContaining({ level: 50, code: "FAILED_PRECONDITION" }),
    ]);
  });

  it("passes an agent's failure on cut to a few KiB, not as long as the agent made it", async () => {
    const { snapshot, requestId } = await start();
    const message = `cannot read /work/${"x".repeat(100_000)}`;
    coordinator.onAgentMessage(
      session,
      create(AgentMessageSchema, { msg: { case: "snapshotFailed", value: { requestId, message } } }),
    );
    const err = (await snapshot.catch((e: unknown) => e)) as ConnectError;
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(err.rawMessage).toMatch(
      /^the agent could not snapshot \/work: cannot read \/work\/x+… \(\d+ more characters; see the agent's log\)$/,
    );
    expect(err.rawMessage.length).toBeLessThan(4_200);
  });

  it("keeps what the agent left out: the count and the entries, in the row and the repository's record", async () => {
    const skipped = [
      { path: "run/agent.sock", reason: "a socket: only regular files, directories and symlinks are kept" },
    ];
    const row = await commitWith({ files: 1n, filesSkipped: 3n, skipped });
    expect(row).toMatchObject({ files_skipped: 3, skipped });
    const stored = await db.selectFrom("snapshots").selectAll().where("id", "=", row.id).executeTakeFirstOrThrow();
    expect(stored).toMatchObject({ files_skipped: 3, skipped });
    const key = await new TenantKeys(db, coordinatorMasterKey).get("t1");
    const repository = await Repository.open(openBlobStore(`file://${blobs}/tenants/t1`), key);
    const record = (await repository.listSnapshots()).find((s) => s.id === row.id);
    expect(record?.stats).toMatchObject({ files: 1, filesSkipped: 3, skipped });
  });

  it.each([
    [
      "more entries than it may list",
      { filesSkipped: 200n, skipped: many(101) },
      /skipped lists 101 entries, at most 100/,
    ],
    ["a count below the list", { filesSkipped: 1n, skipped: many(2) }, /files_skipped is 1, fewer than the 2 entries/],
    ["an absolute path", { filesSkipped: 1n, skipped: [{ path: "/etc/passwd", reason: "x" }] }, /skipped\[0\]\.path/],
    [
      "a NUL in a reason",
      { filesSkipped: 1n, skipped: [{ path: "a", reason: "x\0" }] },
      /skipped\[0\]\.reason holds a NUL/,
    ],
  ])("refuses a commit whose skipped entries have %s, and lists nothing", async (_what, stats, error) => {
    const before = await db.selectFrom("snapshots").select("id").execute();
    await expect(commitWith(stats)).rejects.toThrow(error);
    expect(await db.selectFrom("snapshots").select("id").execute()).toEqual(before);
  });

  it("takes a manifest's parts in order before its commit, and refuses parts out of order or miscounted", async () => {
    // What the agent is told it may send, then a manifest of three parts, the last in the commit.
    const parted = async (send: (parts: Buffer[], s: Awaited<ReturnType<typeof start>>) => void) => {
      sent.length = 0; // start() reads the first message sent
      const started = await start();
      const take = sent[0].msg;
      expect(take.case === "takeSnapshot" && take.value.maxManifestParts).toBe(256);
      const plain = randomBytes(10_000);
      const chunk = chunkCodec.sealChunk(started.key, plain);
      const parts = sealManifestParts(started.key, sameChunkFiles(["a", "b", "c"], chunk.id, plain.length), {
        partBytes: 100,
      });
      expect(parts).toHaveLength(3);
      await offered(started.agentSends, sent, started.requestId, 3n, [chunk.id]);
      started.agentSends({
        case: "snapshotChunks",
        value: {
          requestId: started.requestId,
          epoch: 3n,
          chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }],
        },
      });
      send(parts, started);
      return started.snapshot;
    };
    const part = (s: Awaited<ReturnType<typeof start>>, index: number, blob: Buffer) =>
      s.agentSends({ case: "snapshotManifestPart", value: { requestId: s.requestId, epoch: 3n, index, part: blob } });
    const commit = (s: Awaited<ReturnType<typeof start>>, blob: Buffer, manifestParts: number) =>
      s.agentSends({
        case: "snapshotCommit",
        value: { requestId: s.requestId, epoch: 3n, manifest: blob, manifestParts },
      });

    const row = await parted((parts, s) => {
      part(s, 0, parts[0]);
      part(s, 1, parts[1]);
      commit(s, parts[2], 3);
    });
    const listed = (await coordinator.readManifest(row)).entries.map((e) => e.path);
    expect(listed).toEqual(["a", "b", "c"]);

    await expect(
      parted((parts, s) => {
        part(s, 1, parts[1]);
        commit(s, parts[2], 3);
      }),
    ).rejects.toThrow(/sent manifest part 1 after 0 parts/);
    await expect(
      parted((parts, s) => {
        part(s, 0, parts[0]);
        commit(s, parts[2], 3);
      }),
    ).rejects.toThrow(/committed a manifest of 3 parts and sent 2/);
    // Each refusal tells the agent to stop sending (it would otherwise wait on its commit's answer).
    expect(sent.filter((m) => m.msg.case === "snapshotAborted")).toHaveLength(1);
    await expect(
      parted((parts, s) =>
        s.agentSends({
          case: "snapshotManifestPart",
          value: { requestId: s.requestId, epoch: 2n, index: 0, part: parts[0] },
        }),
      ),
    ).rejects.toThrow(/refused a snapshot message from lease epoch 2; the current epoch is 3/);
    expect(sent.filter((m) => m.msg.case === "snapshotAborted")).toHaveLength(1);
    // Parts adding up to more than a manifest may hold are refused as they come, not gathered first.
    const big = Buffer.alloc(16 * 1024 * 1024 - 1024);
    await expect(
      parted((_parts, s) => {
        for (let i = 0; i < 20; i++) part(s, i, big);
      }),
    ).rejects.toThrow(/the agent sent more than 256 MiB of manifest parts/);
  });

  it("takes parts it holds by id: says which offered ids it lacks, and reads the named parts back to check", async () => {
    /** A snapshot of files a, b, c whose manifest is three parts, sent by `send` after the chunk. */
    const threeParts = async (send: (parts: Buffer[], s: Awaited<ReturnType<typeof start>>) => Promise<void>) => {
      sent.length = 0;
      const started = await start();
      const take = sent[0].msg;
      expect(take.case === "takeSnapshot" && take.value.manifestRefs).toBe(true);
      const plain = Buffer.alloc(5_000, 7);
      const chunk = chunkCodec.sealChunk(started.key, plain);
      const parts = sealManifestParts(started.key, sameChunkFiles(["a", "b", "c"], chunk.id, plain.length), {
        partBytes: 100,
      });
      const { requestId } = started;
      // The same chunk each time: sent only while the repository lacks it, as an agent would.
      if ((await offered(started.agentSends, sent, requestId, 3n, [chunk.id])).length > 0) {
        started.agentSends({
          case: "snapshotChunks",
          value: { requestId, epoch: 3n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }] },
        });
      }
      await send(parts, started);
      return started.snapshot;
    };
    const idOf = (part: Buffer) => createHash("sha256").update(part).digest();
    const first = await threeParts(async (parts, { requestId, agentSends }) => {
      for (const index of [0, 1]) {
        agentSends({ case: "snapshotManifestPart", value: { requestId, epoch: 3n, index, part: parts[index] } });
      }
      agentSends({ case: "snapshotCommit", value: { requestId, epoch: 3n, manifest: parts[2], manifestParts: 3 } });
    });

    // The agent offers the ids it remembers and names those the answer did not list.
    const absent = randomBytes(32);
    const second = await threeParts(async (parts, { requestId, agentSends }) => {
      const manifestIds = [idOf(parts[0]), absent, idOf(parts[1])];
      agentSends({ case: "snapshotOffer", value: { requestId, epoch: 3n, batch: 7n, chunkIds: [], manifestIds } });
      const answer = () => sent.find((m) => m.msg.case === "snapshotNeed" && m.msg.value.batch === 7n)?.msg;
      await until(() => answer() !== undefined);
      const need = answer();
      expect(need?.case === "snapshotNeed" && need.value.manifestIds).toEqual([absent]);
      for (const index of [0, 1]) {
        agentSends({
          case: "snapshotManifestPart",
          value: { requestId, epoch: 3n, index, storedId: idOf(parts[index]) },
        });
      }
      const manifestStoredId = idOf(parts[2]);
      agentSends({ case: "snapshotCommit", value: { requestId, epoch: 3n, manifestStoredId, manifestParts: 3 } });
    });
    expect((await coordinator.readManifest(second)).entries.map((e) => e.path)).toEqual(["a", "b", "c"]);
    const key = await new TenantKeys(db, coordinatorMasterKey).get("t1");
    const repository = await Repository.open(openBlobStore(`file://${blobs}/tenants/t1`), key);
    const records = await repository.listSnapshots();
    const manifestsOf = (id: string) => records.find((r) => r.id === id)?.manifests;
    expect(manifestsOf(second.id)).toEqual(manifestsOf(first.id));

    const listed = await db.selectFrom("snapshots").select("id").execute();
    // A named part the repository lacks, or one that would clash with the others read back, fails the commit;
    // a malformed id is refused as it arrives.
    const commitNamed = (ids: Buffer[], last: Buffer) =>
      threeParts(async (_parts, { requestId, agentSends }) => {
        for (const [index, storedId] of ids.entries()) {
          agentSends({ case: "snapshotManifestPart", value: { requestId, epoch: 3n, index, storedId } });
        }
        agentSends({
          case: "snapshotCommit",
          value: { requestId, epoch: 3n, manifestStoredId: last, manifestParts: ids.length + 1 },
        });
      });
    await expect(commitNamed([absent], randomBytes(32))).rejects.toThrow(
      /manifest part 1 of 2, manifests\/[0-9a-f]{64}, is not in the repository/,
    );
    const stored = manifestsOf(first.id)!.map((hex) => Buffer.from(hex, "hex"));
    // Named twice: refused before either is read (one large part named over and over would be read as often).
    await expect(commitNamed([stored[0]], stored[0])).rejects.toThrow(
      /manifest part 2 of 2 names manifests\/[0-9a-f]{64}, as part 1 did; a manifest's parts are all different/,
    );
    await expect(commitNamed([Buffer.alloc(5)], stored[2])).rejects.toThrow(
      /sent a manifest part with a 5-byte stored id and 0 bytes/,
    );
    expect(await db.selectFrom("snapshots").select("id").execute()).toEqual(listed);
  });

  /**
   * An agent message as the gateway's gRPC server receives it: framed, cut into HTTP/2-sized pieces and put
   * together by grpc-js's decoder with pooled receiving (installed by the gateway), so its bytes lie in pooled memory.
   */
  const received = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) => {
    installPooledReceiving();
    const bytes = toBinary(AgentMessageSchema, create(AgentMessageSchema, { msg }));
    const header = Buffer.alloc(5);
    header.writeUInt32BE(bytes.length, 1);
    const stream = Buffer.concat([header, bytes]);
    const decoder = new GrpcStreamDecoder(-1);
    const messages: Buffer[] = [];
    for (let at = 0; at < stream.length; at += 8192) messages.push(...decoder.write(stream.subarray(at, at + 8192)));
    expect(messages).toHaveLength(1);
    return fromBinary(AgentMessageSchema, messages[0].subarray(5));
  };
  const blobsOf = (message: ReturnType<typeof received>) =>
    message.msg.case === "snapshotChunks" ? message.msg.value.chunks.map((c) => c.blob) : [];

  it("checks chunks where they were received, in pooled memory, and gives the memory back once they are written", async () => {
    const { snapshot, requestId, key, agentSends } = await start();
    const plain = randomBytes(100_000);
    const chunk = chunkCodec.sealChunk(key, plain);
    await offered(agentSends, sent, requestId, 3n, [chunk.id]);
    const message = received({
      case: "snapshotChunks",
      value: { requestId, epoch: 3n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }] },
    });
    const [blob] = blobsOf(message);
    expect(isPooledMessageMemory(blob)).toBe(true);
    // Read by the verifier's threads where it arrived: not copied into a staging buffer for them.
    const staging = vi.spyOn(ChunkVerifier.prototype as unknown as { staging(size: number): ArrayBuffer }, "staging");
    coordinator.onAgentMessage(session, message);
    agentSends({
      case: "snapshotCommit",
      value: { requestId, epoch: 3n, manifest: oneFile(key, chunk.id, plain.length) },
    });
    const row = await snapshot;
    expect(staging).not.toHaveBeenCalled();
    staging.mockRestore();
    expect(isPooledMessageMemory(blob)).toBe(false);
    expect(row.bytes_total).toBe(plain.length);
    // The chunk went into its pack as it arrived: the repository's check reads it back and opens it to its id.
    const repository = await Repository.open(openBlobStore(`file://${blobs}/tenants/t1`), key);
    const report = await checkRepository(repository);
    expect(report).toMatchObject({ ok: true, problems: [] });
    expect(report.bytesChecked).toBeGreaterThanOrEqual(plain.length);
  });

  it("refuses a damaged chunk it checked in pooled memory, and leaves that memory alone", async () => {
    const { snapshot, requestId, key, agentSends } = await start();
    const chunk = chunkCodec.sealChunk(key, randomBytes(100_000));
    chunk.blob[chunk.blob.length - 1] ^= 1; // the authentication tag
    await offered(agentSends, sent, requestId, 3n, [chunk.id]);
    const message = received({
      case: "snapshotChunks",
      value: { requestId, epoch: 3n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: 100_000 }] },
    });
    coordinator.onAgentMessage(session, message);
    await expect(snapshot).rejects.toThrow(/arrived damaged: authentication failed/);
    expect(isPooledMessageMemory(blobsOf(message)[0])).toBe(true);
  });
});

describe("SnapshotCoordinator: check", () => {
  const h = useCoordinator("h-check");

  it("checks a tenant's chunks on the verifier's threads, not the thread that reads the agents' streams", async () => {
    const snapshot = h.coordinator.snapshot({
      session: h.session,
      tenantId: "t1",
      path: "/w",
      workspaceId: "w",
      epoch: 1n,
    });
    await until(() => h.sent.length > 0);
    const take = h.sent[0].msg;
    if (take.case !== "takeSnapshot") throw new Error(`expected takeSnapshot, got ${take.case}`);
    const key = Buffer.from(take.value.tenantKey);
    const chunks = Array.from({ length: 3 }, () => chunkCodec.sealChunk(key, randomBytes(50_000)));
    const { requestId } = take.value;
    const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
      h.coordinator.onAgentMessage(h.session, create(AgentMessageSchema, { msg }));
    await offered(
      agentSends,
      h.sent,
      requestId,
      1n,
      chunks.map((c) => c.id),
    );
    agentSends({
      case: "snapshotChunks",
      value: { requestId, epoch: 1n, chunks: chunks.map((c) => ({ id: c.id, blob: c.blob, plainLength: 50_000 })) },
    });
    const files = chunks.flatMap((c, i) => sameChunkFiles([`f${i}`], c.id, 50_000));
    agentSends({
      case: "snapshotCommit",
      value: { requestId, epoch: 1n, manifest: sealManifest(key, { entries: files }) },
    });
    await snapshot;

    const onThisThread = vi.spyOn(chunkCodec, "verifyChunk");
    const onThreads = vi.spyOn(ChunkVerifier.prototype, "verify");
    try {
      const report = await h.coordinator.check("t1", {});
      expect(report).toMatchObject({ ok: true, chunks: 3, snapshots: 1 });
      expect(onThreads.mock.calls.flatMap(([, batch]) => batch.map((c) => c.id.toString("hex"))).sort()).toEqual(
        chunks.map((c) => c.id.toString("hex")).sort(),
      );
      expect(onThisThread).not.toHaveBeenCalled();
    } finally {
      onThisThread.mockRestore();
      onThreads.mockRestore();
    }
  });
});

describe("SnapshotCoordinator: forget and prune", () => {
  const h = useCoordinator("h-prune");

  const started = () => startedIn(h);
  const finish = finishIn(h);
  const prune = { tenantId: "t1", policy: {}, prune: true, dryRun: false };

  it("counts a prune as running work while it runs, and names it to a second prune it refuses", async () => {
    // Claimed before the prune's first await: seen at once, and the second is refused before the first can end.
    const pruning = h.coordinator.forget(prune);
    expect(h.coordinator.runningWork().map((w) => w.kind)).toEqual(["prune"]);
    const second = h.coordinator.forget(prune);
    await expect(second).rejects.toThrow(/a prune or repair of tenant t1 is already running \(prune, for \d+s\)/);
    await pruning;
    expect(h.coordinator.runningWork()).toEqual([]);
  });

  it("refuses to prune while a snapshot of the tenant runs, and prunes once it has ended", async () => {
    const running = await started();
    // Naming what runs, and for how long: an operator can find a stuck one.
    await expect(h.coordinator.forget(prune)).rejects.toThrow(
      /1 snapshot, restore or check of tenant t1 is running \(snapshot of \/w on host h-prune, for \d+s\); prune again when it has ended$/,
    );
    await finish(running);
    // Everything in the repository is in use: nothing to free.
    await expect(h.coordinator.forget(prune)).resolves.toMatchObject({ prune: { packsDeleted: 0, bytesFreed: 0 } });
  });

  it("repairs the index with the repository to itself: refused while a snapshot runs, then rebuilds a lost index object", async () => {
    const running = await started();
    await expect(h.coordinator.repairIndex("t1", { dryRun: false })).rejects.toThrow(
      "1 snapshot, restore or check of tenant t1 is running (snapshot of /w on host h-prune, for ",
    );
    // A dry run only reads, as a check, beside the snapshot.
    await expect(h.coordinator.repairIndex("t1", { dryRun: true })).resolves.toMatchObject({ rebuilt: [] });
    await finish(running);
    const indexDir = path.join(h.blobs, "tenants", "t1", "index");
    const [lost] = await fs.readdir(indexDir);
    await fs.rm(path.join(indexDir, lost));
    // An operation starting during the repair waits for it (and its refresh then reads the rebuilt object).
    const repairing = h.coordinator.repairIndex("t1", { dryRun: false });
    await expect(h.coordinator.forget(prune)).rejects.toThrow("a prune or repair of tenant t1 is already running");
    const checked = h.coordinator.check("t1", {});
    // The lost pack's chunks are verified before they are indexed, by the verifier's threads (not the event loop).
    const verified = vi.spyOn(ChunkVerifier.prototype, "verify");
    expect((await repairing).rebuilt).toEqual([lost]);
    expect(verified).toHaveBeenCalled();
    verified.mockRestore();
    await expect(checked).resolves.toMatchObject({ ok: true, problems: [] });
    expect(await fs.readdir(indexDir)).toContain(lost);
  });

  it("lists a snapshot the repository holds without a row before a forget judges it", async () => {
    const committed = async () => finish(await started());
    const older = await committed();
    const newest = await committed();
    // The control plane stopped between the repository's commit and the row's insert.
    await h.db.deleteFrom("snapshots").where("id", "=", newest.id).execute();
    const result = await h.coordinator.forget({ tenantId: "t1", policy: { last: 1 }, prune: false, dryRun: false });
    expect(result.kept).toEqual([newest.id]);
    expect(result.forgotten).toContain(older.id);
    const rows = await h.db.selectFrom("snapshots").selectAll().execute();
    expect(rows.map((r) => r.id)).toEqual([newest.id]);
    // The row it had, from the snapshot's record (its time is the snapshot's start, not the insert's).
    const { created_at, ...asCommitted } = newest;
    expect(rows[0]).toMatchObject({ ...asCommitted, files: 1, bytes_new: 5_000, bytes_total: 5_000 });
    expect(Math.abs(rows[0].created_at.getTime() - created_at.getTime())).toBeLessThan(5_000);
  });

  it("answers a restore or read of a snapshot forgotten after its row was read with NOT_FOUND, one missing a part with DATA_LOSS", async () => {
    const row = await finish(await started());
    await h.coordinator.forget({ tenantId: "t1", ids: [row.id], policy: {}, prune: false, dryRun: false });
    // A second caller forgetting it too (both found its row): not there any more, not an internal error.
    const again = await h.coordinator
      .forget({ tenantId: "t1", ids: [row.id], policy: {}, prune: false, dryRun: false })
      .catch((e: unknown) => e);
    expect((again as ConnectError).code).toBe(Code.NotFound);
    const restoring = h.coordinator.restore({ session: h.session, snapshot: row, target: "/gone" });
    for (const outcome of [
      await restoring.catch((e: unknown) => e),
      await h.coordinator.readManifest(row).catch((e: unknown) => e),
    ]) {
      expect(outcome).toBeInstanceOf(ConnectError);
      expect((outcome as ConnectError).code).toBe(Code.NotFound);
      expect((outcome as ConnectError).rawMessage).toContain(`no snapshot ${row.id} in file://`);
    }
    // A snapshot still recorded whose manifest is missing is lost data, not a snapshot that is not there.
    const manifests = path.join(h.blobs, "tenants", "t1", "manifests");
    const before = new Set(await fs.readdir(manifests));
    const damaged = await finish(await started());
    const its = (await fs.readdir(manifests)).filter((name) => !before.has(name));
    expect(its).toHaveLength(1);
    await fs.rm(path.join(manifests, its[0]));
    const lost = await h.coordinator.readManifest(damaged).catch((e: unknown) => e);
    expect((lost as ConnectError).code).toBe(Code.DataLoss);
    expect((lost as ConnectError).rawMessage).toContain(`manifests/${its[0]} does not exist`);
    await h.coordinator.forget({ tenantId: "t1", ids: [damaged.id], policy: {}, prune: false, dryRun: false });
  });

  it("answers DATA_LOSS, naming what is wrong, for a stored manifest that opens but is not one a writer makes", async () => {
    // A record and a manifest part sealed with the tenant's key, hashing to their names, whose part's entry has
    // a time no writer writes: damage in the repository (or a writer's bug), not the caller's bad argument.
    const { key } = await started().then(async (s) => {
      await finish(s);
      return s;
    });
    const part = sealManifest(key, {
      entries: [{ type: "dir", path: "d", mode: 0o755, mtimeNs: "yesterday" }],
    } as unknown as Parameters<typeof sealManifest>[1]);
    const partId = sha256(part).toString("hex");
    const tenantDir = path.join(h.blobs, "tenants", "t1");
    await fs.writeFile(path.join(tenantDir, "manifests", partId), part);
    const totals = { files: 0, dirs: 1, symlinks: 0, bytes: 0, chunks: 0 };
    const record = sealJson(key, ObjectKind.snapshot, {
      version: 1,
      time: new Date().toISOString(),
      workspace: "w",
      epoch: 0,
      tenant: "t1",
      manifest: partId,
      totals,
    });
    const id = sha256(record).toString("hex");
    await fs.writeFile(path.join(tenantDir, "snapshots", id), record);
    await h.coordinator.relistAll();
    const row = await h.db.selectFrom("snapshots").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
    const read = await h.coordinator.readManifest(row).catch((e: unknown) => e);
    expect((read as ConnectError).code).toBe(Code.DataLoss);
    expect((read as ConnectError).rawMessage).toMatch(/has a bad mtime/);
    await h.coordinator.forget({ tenantId: "t1", ids: [id], policy: {}, prune: false, dryRun: false });
  });

  it("forgets, by id, a snapshot whose record does not open, and prunes after", async () => {
    const damaged = await finish(await started());
    const kept = await finish(await started());
    await fs.writeFile(path.join(h.blobs, "tenants", "t1", "snapshots", damaged.id), randomBytes(200));
    // Every forget relists the repository first: one record that did not open failed each, that one's too.
    const result = await h.coordinator.forget({
      tenantId: "t1",
      ids: [damaged.id],
      policy: {},
      prune: true,
      dryRun: false,
    });
    expect(result.forgotten).toEqual([damaged.id]);
    expect(result.kept).toContain(kept.id);
    expect(result.prune?.packsDeleted).toBeGreaterThanOrEqual(1); // its pack, and what earlier tests left
    expect((await h.db.selectFrom("snapshots").select("id").execute()).map((r) => r.id)).not.toContain(damaged.id);
  });

  it("at start, lists again every snapshot the repositories hold without a row, past a broken store", async () => {
    const snap = await finish(await started());
    await h.db.deleteFrom("snapshots").where("id", "=", snap.id).execute();
    // A tenant listed before t1 whose repository cannot be opened: it is skipped, not the end of the relisting.
    await ensureTenant(h.db, "t0", "tenant zero");
    await new TenantKeys(h.db, h.masterKey).get("t0");
    await fs.mkdir(path.join(h.blobs, "tenants", "t0"), { recursive: true });
    await fs.writeFile(path.join(h.blobs, "tenants", "t0", "config"), "not a repository");
    await h.coordinator.relistAll();
    const rows = await h.db.selectFrom("snapshots").select("id").where("id", "=", snap.id).execute();
    expect(rows).toEqual([{ id: snap.id }]);
  });

  it("at start, removes the row of a snapshot whose record is gone from the repository", async () => {
    const kept = await finish(await started());
    const gone = await finish(await started());
    // Deleted behind the catalogue's back: a direct-mode forget on the same store, or a forget's delete that was
    // given up on and landed after a relisting had put the row back.
    await fs.rm(path.join(h.blobs, "tenants", "t1", "snapshots", gone.id));
    await h.coordinator.relistAll();
    const rows = await h.db.selectFrom("snapshots").select("id").where("id", "in", [kept.id, gone.id]).execute();
    expect(rows).toEqual([{ id: kept.id }]);
    // But a store with no snapshot at all where the catalogue lists some is more likely the wrong store (a mount
    // that did not come up): the rows stay.
    for (const record of await fs.readdir(path.join(h.blobs, "tenants", "t1", "snapshots"))) {
      await fs.rm(path.join(h.blobs, "tenants", "t1", "snapshots", record));
    }
    const before = await h.db.selectFrom("snapshots").select("id").where("tenant_id", "=", "t1").execute();
    expect(before.length).toBeGreaterThan(0);
    await h.coordinator.relistAll();
    expect(await h.db.selectFrom("snapshots").select("id").where("tenant_id", "=", "t1").execute()).toEqual(before);
  });

  it("at start, gives rows catalogued before sizes were kept their size, from the snapshots' records", async () => {
    const snap = await finish(await started());
    await h.db.updateTable("snapshots").set({ bytes_total: null }).where("id", "=", snap.id).execute();
    await h.coordinator.relistAll();
    const row = await h.db.selectFrom("snapshots").select("bytes_total").where("id", "=", snap.id).executeTakeFirst();
    expect(row).toEqual({ bytes_total: 5_000 });
  });

  it("holds a snapshot that starts during a prune until the prune has ended", async () => {
    const order: string[] = [];
    const pruning = h.coordinator.forget(prune).then(() => order.push("pruned"));
    const snapshot = started().then((s) => {
      order.push("asked the agent");
      return s;
    });
    await Promise.all([pruning, snapshot]);
    expect(order).toEqual(["pruned", "asked the agent"]);
    h.coordinator.onSessionClosed(h.session); // the snapshot fails; nothing is left running
  });
});

describe("SnapshotCoordinator: an agent that goes away or misbehaves", () => {
  const h = useCoordinator("h-edge");
  const finish = finishIn(h);
  beforeEach(() => {
    h.sent = [];
  });
  /** The tenant's blob store as the coordinator opened it (private: the tests hold its writes back). */
  const store = async () =>
    (await (h.coordinator as unknown as { repositories: Map<string, Promise<Repository>> }).repositories.get("t1"))!
      .store;
  const agentSends = (session: AgentSession, msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
    h.coordinator.onAgentMessage(session, create(AgentMessageSchema, { msg }));
  const waitFor = async (what: () => boolean) => {
    await until(what);
    expect(what()).toBe(true);
  };

  it("a stream that closes during the commit does not stop it: the snapshot is listed whole, and a prune keeps it", async () => {
    await finish(await startedIn(h)); // the repository is open
    const blobs = await store();
    const put = blobs.put.bind(blobs);
    let open = () => {};
    const gate = new Promise<void>((r) => (open = r));
    let reached = false;
    blobs.put = async (key, body) => {
      if (key.startsWith("manifests/")) {
        reached = true;
        await gate;
      }
      return put(key, body);
    };
    try {
      const running = await startedIn(h);
      const snapshot = finish(running);
      await waitFor(() => reached); // the commit is past its packs, writing the manifest
      h.coordinator.onSessionClosed(h.session);
      // The tenant still counts it: a prune is refused, not run under the commit.
      await expect(h.coordinator.forget({ tenantId: "t1", policy: {}, prune: true, dryRun: false })).rejects.toThrow(
        /snapshot, restore or check of tenant t1 is running/,
      );
      open();
      const row = await snapshot;
      expect((await h.db.selectFrom("snapshots").select("id").execute()).map((r) => r.id)).toContain(row.id);
      const pruned = await h.coordinator.forget({ tenantId: "t1", policy: {}, prune: true, dryRun: false });
      expect(pruned.prune).toMatchObject({ packsDeleted: 0 });
      expect(await h.coordinator.check("t1", {})).toMatchObject({ ok: true });
    } finally {
      blobs.put = put;
      open();
    }
  });

  it("an agent that drops mid-snapshot: what it sent is kept for its next one, and the caller hears once the lock is let go", async () => {
    const running = await startedIn(h);
    const { requestId, key } = running;
    const plains = [randomBytes(50_000), randomBytes(50_000)];
    const chunks = plains.map((plain) => chunkCodec.sealChunk(key, plain));
    let settled = false;
    running.snapshot.catch(() => {}).finally(() => (settled = true));
    const blobs = await store();
    const put = blobs.put.bind(blobs);
    let open = () => {};
    const gate = new Promise<void>((r) => (open = r));
    let reached = false;
    blobs.put = async (key, body, options) => {
      if (key.startsWith("index/")) {
        reached = true;
        await gate;
      }
      return put(key, body, options);
    };
    try {
      // Two chunks, far less than a pack: only the pack being filled holds them when the agent drops.
      await offered(
        (msg) => agentSends(h.session, msg),
        h.sent,
        requestId,
        0n,
        chunks.map((c) => c.id),
      );
      agentSends(h.session, {
        case: "snapshotChunks",
        value: {
          requestId,
          epoch: 0n,
          chunks: chunks.map((c, i) => ({ id: c.id, blob: c.blob, plainLength: plains[i].length })),
        },
      });
      h.coordinator.onSessionClosed(h.session);
      await waitFor(() => reached); // the pack is sealed and written; its index object waits
      await new Promise((r) => setTimeout(r, 50));
      expect(settled).toBe(false); // the caller is not told while the writer still holds the repository's lock
      open();
      await expect(running.snapshot).rejects.toThrow(/host h-edge disconnected during the operation/);
      // Told: the lock is gone, and a prune from another process takes the repository at once.
      const prune = await acquireLock(blobs, key, { exclusive: true, purpose: "a prune" });
      await prune.release();
    } finally {
      blobs.put = put;
      open();
    }
    // The next snapshot needs neither chunk sent again, and commits a file made of them.
    const next = await startedIn(h);
    const before = h.sent.length;
    agentSends(h.session, {
      case: "snapshotOffer",
      value: { requestId: next.requestId, epoch: 0n, batch: 1n, chunkIds: chunks.map((c) => c.id) },
    });
    await waitFor(() => h.sent.slice(before).some((m) => m.msg.case === "snapshotNeed"));
    const need = h.sent.slice(before).find((m) => m.msg.case === "snapshotNeed")?.msg;
    expect(need?.case === "snapshotNeed" && need.value.chunkIds).toEqual([]);
    const manifest = sealManifest(key, {
      version: 1,
      entries: [
        {
          type: "file",
          path: "both.bin",
          mode: 0o644,
          mtimeNs: "0",
          size: 100_000,
          chunks: chunks.map((c) => c.id.toString("hex")),
          lengths: [50_000, 50_000],
        },
      ],
    });
    agentSends(h.session, { case: "snapshotCommit", value: { requestId: next.requestId, epoch: 0n, manifest } });
    const row = await next.snapshot;
    expect(row.bytes_total).toBe(100_000);
    expect(await h.coordinator.check("t1", {})).toMatchObject({ ok: true });
  });

  it("tells the agent when an offer cannot be answered, so it does not wait for an answer", async () => {
    const { snapshot, requestId } = await startedIn(h);
    const blobs = await store();
    const { stat, get } = blobs;
    // An offered manifest part is looked for by reading it back (missingManifestParts).
    blobs.stat = blobs.get = async () => {
      throw new Error("S3: 503 SlowDown");
    };
    try {
      const manifestIds = [randomBytes(32)];
      agentSends(h.session, { case: "snapshotOffer", value: { requestId, epoch: 0n, batch: 1n, manifestIds } });
      await expect(snapshot).rejects.toThrow(/503 SlowDown/);
      const aborted = h.sent.find((m) => m.msg.case === "snapshotAborted")?.msg;
      expect(aborted?.case === "snapshotAborted" && aborted.value.requestId).toBe(requestId);
    } finally {
      Object.assign(blobs, { stat, get });
    }
  });

  it("answers an offer of 16,384 chunk ids and refuses one of more, telling the agent", async () => {
    // Each id is an object here: offers of a message's worth (~480,000 ids) from an agent that never read its
    // answers pinned gigabytes before its stream was paused.
    const { snapshot, requestId } = await startedIn(h);
    const offer = (batch: bigint, n: number) =>
      agentSends(h.session, {
        case: "snapshotOffer",
        value: { requestId, epoch: 0n, batch, chunkIds: Array.from({ length: n }, () => randomBytes(32)) },
      });
    offer(1n, MAX_OFFER_CHUNK_IDS);
    await waitFor(() => h.sent.some((m) => m.msg.case === "snapshotNeed"));
    const need = h.sent.find((m) => m.msg.case === "snapshotNeed")?.msg;
    expect(need?.case === "snapshotNeed" && need.value.chunkIds.length).toBe(MAX_OFFER_CHUNK_IDS);
    offer(2n, MAX_OFFER_CHUNK_IDS + 1);
    await expect(snapshot).rejects.toThrow(`the agent offered ${MAX_OFFER_CHUNK_IDS + 1} chunk ids at once; at most`);
    const aborted = h.sent.find((m) => m.msg.case === "snapshotAborted")?.msg;
    expect(aborted?.case === "snapshotAborted" && aborted.value.requestId).toBe(requestId);
  });

  it("a host's earlier session neither reaches nor ends the operations of its new one", async () => {
    const earlier = { ...h.session } as AgentSession; // the same host, an older stream
    const running = await startedIn(h);
    agentSends(earlier, { case: "snapshotFailed", value: { requestId: running.requestId, message: "stale" } });
    h.coordinator.onSessionClosed(earlier); // its close, long after the host reconnected
    const row = await finish(running);
    expect(row.host_id).toBe("h-edge");
  });

  it.each([
    [
      "a counter beyond what the catalogue holds",
      { files: 2n ** 64n - 1n },
      /files is 18446744073709551615, more than/,
    ],
    ["seconds that are not a number", { seconds: Number.NaN }, /seconds must be a finite number/],
  ])("refuses a commit whose stats have %s, and stores no snapshot", async (_what, stats, error) => {
    const { snapshot, requestId, key } = await startedIn(h);
    const plain = randomBytes(1_000);
    const chunk = chunkCodec.sealChunk(key, plain);
    await offered((msg) => agentSends(h.session, msg), h.sent, requestId, 0n, [chunk.id]);
    agentSends(h.session, {
      case: "snapshotChunks",
      value: { requestId, epoch: 0n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }] },
    });
    const before = (await Repository.open(await store(), key)).listSnapshots();
    agentSends(h.session, {
      case: "snapshotCommit",
      value: { requestId, epoch: 0n, manifest: oneFile(key, chunk.id, plain.length), stats },
    });
    await expect(snapshot).rejects.toThrow(error);
    expect(await (await Repository.open(await store(), key)).listSnapshots()).toEqual(await before);
  });

  it("holds a shared lock of the repository while a restore runs: a prune from elsewhere is refused until it ends", async () => {
    const started = await startedIn(h);
    const snapshot = await finish(started);
    const before = h.sent.length;
    const done = h.coordinator.restore({ session: h.session, snapshot, target: "/restore-locked" });
    done.catch(() => {});
    await waitFor(() => h.sent.slice(before).some((m) => m.msg.case === "restore"));
    const m = h.sent.slice(before).find((m) => m.msg.case === "restore")!.msg;
    const requestId = m.case === "restore" ? m.value.requestId : "";
    const blobs = await store();
    const prune = () => acquireLock(blobs, started.key, { exclusive: true, purpose: "a prune" });
    await expect(prune()).rejects.toThrow(/the repository is locked by a restore \(pid /);
    agentSends(h.session, {
      case: "restoreProgress",
      value: { requestId, done: true, files: 1n, bytesWritten: 5_000n },
    });
    expect(await done).toMatchObject({ files: 1, bytesWritten: 5_000 });
    await (await prune()).release();
  });

  it("streams a restore's chunk requests a few at a time, and refuses an agent that asks for far too many", async () => {
    const snapshot = await finish(await startedIn(h));
    const restore = (target: string) => {
      const before = h.sent.length;
      const done = h.coordinator.restore({ session: h.session, snapshot, target });
      done.catch(() => {});
      return {
        done,
        requestId: async () => {
          await waitFor(() => h.sent.slice(before).some((m) => m.msg.case === "restore"));
          const m = h.sent.slice(before).find((m) => m.msg.case === "restore")!.msg;
          return m.case === "restore" ? m.value.requestId : "";
        },
      };
    };
    const manifest = await h.coordinator.readManifest(snapshot);
    const entry = manifest.entries.find((e) => e.type === "file");
    const ids = entry?.type === "file" ? entry.chunks.map((hex) => Buffer.from(hex, "hex")) : [];
    const ask = (requestId: string, batch: number) =>
      agentSends(h.session, {
        case: "restoreChunkRequest",
        value: { requestId, batch: BigInt(batch), chunkIds: ids.slice(0, 1) },
      });

    // Ten requests at once are all answered, each batch once and whole.
    const good = restore("/restore-1");
    const requestId = await good.requestId();
    for (let b = 1; b <= 10; b++) ask(requestId, b);
    const answered = () =>
      h.sent.filter((m) => m.msg.case === "restoreChunks" && m.msg.value.requestId === requestId && m.msg.value.last);
    await waitFor(() => answered().length === 10);
    // Its warnings go back to the caller, held to the proto's bounds whatever the agent sends.
    const warnings = ["x".repeat(5_000), ...Array.from({ length: 11 }, (_, i) => `warning ${i}`)];
    agentSends(h.session, {
      case: "restoreProgress",
      value: { requestId, done: true, files: 1n, bytesWritten: 5_000n, warnings },
    });
    const result = await good.done;
    expect(result).toMatchObject({ files: 1, bytesWritten: 5_000 });
    expect(result.warnings).toHaveLength(8);
    expect(result.warnings[0]).toBe(`${"x".repeat(1024)}… (3976 more characters; see the agent's log)`);
    expect(result.warnings[7]).toBe("warning 6");
    // A restore that failed but kept what it could (damaged files named) says its warnings in its error.
    const damaged = restore("/restore-damaged");
    agentSends(h.session, {
      case: "restoreProgress",
      value: { requestId: await damaged.requestId(), done: true, error: "1 file damaged", warnings: ["not flushed"] },
    });
    await expect(damaged.done).rejects.toThrow(/restore failed on host .*: 1 file damaged \(also: not flushed\)$/);

    const flood = restore("/restore-2");
    const flooding = await flood.requestId();
    for (let b = 1; b <= 300; b++) ask(flooding, b);
    await expect(flood.done).rejects.toThrow(/the agent asked for more than 260 batches of chunks at once/);
  });

  /**
   * A restore of a fresh snapshot into `target`, begun: its request id, its failure once it fails (`failed`), and
   * `ask`, to ask for chunks as its agent would.
   */
  const begunRestore = async (target: string) => {
    const snapshot = await finish(await startedIn(h));
    const before = h.sent.length;
    const failed: { error?: Error } = {};
    h.coordinator.restore({ session: h.session, snapshot, target }).catch((err) => (failed.error = err));
    await waitFor(() => h.sent.slice(before).some((m) => m.msg.case === "restore"));
    const started = h.sent.slice(before).find((m) => m.msg.case === "restore")!.msg;
    const requestId = started.case === "restore" ? started.value.requestId : "";
    const ask = (batch: number, chunkIds: Uint8Array[]) =>
      agentSends(h.session, { case: "restoreChunkRequest", value: { requestId, batch: BigInt(batch), chunkIds } });
    return { requestId, before, failed, ask };
  };
  /** `n` random chunk ids, as views of one buffer. */
  const randomIds = (n: number) => {
    const packed = randomBytes(32 * n);
    return Array.from({ length: n }, (_, i) => packed.subarray(32 * i, 32 * (i + 1)));
  };

  it("sends a restore its own snapshot's chunks only, not another snapshot's of the tenant", async () => {
    // The tenant's whole repository answered: a host of the tenant could fetch any other host's or workspace's
    // chunks by id (SHA-256 of content it may guess; helper-67).
    const other = await finish(await startedIn(h));
    const otherFile = (await h.coordinator.readManifest(other)).entries.find((e) => e.type === "file");
    const otherChunk = Buffer.from(otherFile?.type === "file" ? otherFile.chunks[0] : "", "hex");
    const { before, failed, ask } = await begunRestore("/restore-own");
    ask(1, [otherChunk]);
    await waitFor(() => failed.error !== undefined);
    expect(failed.error?.message).toMatch(
      new RegExp(`the agent asked for chunk ${otherChunk.toString("hex")}, which no file of snapshot \\w{12} holds`),
    );
    expect(h.sent.slice(before).some((m) => m.msg.case === "restoreChunks")).toBe(false);
    expect(h.sent.slice(before).some((m) => m.msg.case === "restoreAborted")).toBe(true);
  });

  it("refuses an agent whose waiting chunk requests ask for too many chunks, however few the requests", async () => {
    const { requestId, before, failed, ask } = await begunRestore("/restore-ids");
    // Four requests are answered at once; the five after them wait, with 60,000 ids each (each under the most one
    // request may carry): far fewer requests than may wait, and more chunks.
    for (let b = 1; b <= 4; b++) ask(b, [randomBytes(32)]);
    const many = randomIds(60_000);
    for (let b = 5; b <= 9; b++) ask(b, many);
    const answered = () =>
      h.sent.filter((m) => m.msg.case === "restoreChunks" && m.msg.value.requestId === requestId && m.msg.value.last);
    await waitFor(() => failed.error !== undefined || answered().length === 9);
    expect(failed.error?.message).toMatch(
      /the agent asked for 300000 chunks in requests beyond the 4 being answered; at most 262144 may wait/,
    );
    const aborted = h.sent.slice(before).find((m) => m.msg.case === "restoreAborted")?.msg;
    expect(aborted?.case === "restoreAborted" && aborted.value.requestId).toBe(requestId);
  });

  it("answers a request of chunks it does not hold in messages of bounded size, and refuses one too large", async () => {
    const { requestId, before, failed, ask } = await begunRestore("/restore-big");
    // 40,000 ids none of which it holds: an answer of errors alone, ~3 MB, cut as chunk batches are (it went out
    // as one message, which with the most ids one request may carry came near the 16 MiB a message may be).
    ask(1, randomIds(40_000));
    const answers = () => h.sent.filter((m) => m.msg.case === "restoreChunks" && m.msg.value.requestId === requestId);
    await waitFor(() => answers().some((m) => m.msg.case === "restoreChunks" && m.msg.value.last));
    const sizes = answers().map((m) => toBinary(ControlMessageSchema, m).length);
    expect(sizes.length).toBeGreaterThan(2);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(STREAM_BATCH_BYTES + 1024);
    expect(answers().flatMap((m) => (m.msg.case === "restoreChunks" ? m.msg.value.chunks : []))).toHaveLength(40_000);
    // One request over the most it may carry: refused, and the agent told.
    ask(2, randomIds(MAX_RESTORE_REQUEST_IDS + 1));
    await waitFor(() => failed.error !== undefined);
    expect(failed.error?.message).toContain(
      `the agent asked for ${MAX_RESTORE_REQUEST_IDS + 1} chunks in one request; at most ${MAX_RESTORE_REQUEST_IDS}`,
    );
    expect(h.sent.slice(before).some((m) => m.msg.case === "restoreAborted")).toBe(true);
  });

  it.each([0, 64 * 1024 * 1024 + 1])("refuses a chunk said to be %d bytes before opening it", async (plainLength) => {
    const { snapshot, requestId, key } = await startedIn(h);
    const chunk = chunkCodec.sealChunk(key, randomBytes(1_000));
    agentSends(h.session, {
      case: "snapshotChunks",
      value: { requestId, epoch: 0n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength }] },
    });
    await expect(snapshot).rejects.toThrow(`the agent sent a chunk of ${plainLength} bytes; a chunk holds 1 to`);
  });
});

describe("SnapshotCoordinator: an agent that stops answering", () => {
  const h = useCoordinator("h-silent", undefined, { silenceMs: 400 });
  const finish = finishIn(h);

  it("fails a snapshot its agent has said nothing about for the silence limit, and tells the agent to stop", async () => {
    const { snapshot, requestId } = await startedIn(h);
    // Progress keeps it alive past the limit...
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 200));
      h.coordinator.onAgentMessage(
        h.session,
        create(AgentMessageSchema, { msg: { case: "snapshotProgress", value: { requestId, bytesRead: BigInt(i) } } }),
      );
    }
    // ...and silence ends it.
    await expect(snapshot).rejects.toThrow(/host h-silent said nothing about the snapshot for 0.4 s; gave up on it/);
    const aborted = h.sent.find((m) => m.msg.case === "snapshotAborted")?.msg;
    expect(aborted?.case === "snapshotAborted" && aborted.value.requestId).toBe(requestId);
    // Nothing is left running: a prune goes ahead, and the next snapshot commits.
    await expect(
      h.coordinator.forget({ tenantId: "t1", policy: {}, prune: true, dryRun: false }),
    ).resolves.toBeDefined();
    await expect(finish(await startedIn(h))).resolves.toMatchObject({ host_id: "h-silent" });
  });

  it("is not silence while this side still checks and writes what the agent sent (a slow store, a busy check)", async () => {
    // Every arrival check takes 1 s, over twice the limit, after the agent's last word (its commit).
    const check = ChunkVerifier.prototype.verify;
    const slow = vi.spyOn(ChunkVerifier.prototype, "verify").mockImplementation(async function (
      this: ChunkVerifier,
      ...args
    ) {
      await new Promise((r) => setTimeout(r, 1000));
      return check.apply(this, args);
    });
    try {
      await expect(finish(await startedIn(h))).resolves.toMatchObject({ host_id: "h-silent" });
      expect(slow).toHaveBeenCalled();
    } finally {
      slow.mockRestore();
    }
  });

  it("fails a snapshot whose agent stopped reading its stream: an answer waiting to be sent is not work", async () => {
    const { snapshot, requestId } = await startedIn(h);
    const { send, pauseInbound, resumeInbound } = h.session;
    let unblock!: () => void;
    const blocked = new Promise<void>((resolve) => {
      unblock = resolve;
    });
    // The answers to its offers never leave: the stream's buffer is full and the agent reads nothing.
    h.session.send = async (m: ControlMessage) => {
      if (m.msg.case === "snapshotNeed") await blocked;
      return send(m);
    };
    let paused = 0;
    h.session.pauseInbound = () => void paused++;
    h.session.resumeInbound = () => void paused--;
    try {
      // Past the answers a snapshot keeps waiting (8), which pauses the agent's stream.
      for (let batch = 1n; batch <= 9n; batch++) {
        h.coordinator.onAgentMessage(
          h.session,
          create(AgentMessageSchema, {
            msg: { case: "snapshotOffer", value: { requestId, epoch: 0n, batch, chunkIds: [randomBytes(32)] } },
          }),
        );
      }
      await until(() => paused > 0);
      expect(paused).toBe(1);
      await expect(snapshot).rejects.toThrow(/host h-silent said nothing about the snapshot for 0.4 s/);
      // Given up on, it no longer holds the stream paused (which read nothing else of the agent's, its telemetry
      // included), though its answers are still unsent.
      expect(paused).toBe(0);
      unblock();
      await new Promise((r) => setTimeout(r, 50));
      expect(paused).toBe(0);
    } finally {
      Object.assign(h.session, { send, pauseInbound, resumeInbound });
      unblock();
    }
  });

  it("fails a restore its agent has gone silent on, and tells the agent to stop it", async () => {
    const snapshot = await finish(await startedIn(h));
    const before = h.sent.length;
    const restore = h.coordinator.restore({ session: h.session, snapshot, target: "/r" });
    await expect(restore).rejects.toThrow(/host h-silent said nothing about the restore for 0.4 s/);
    const sent = h.sent.slice(before);
    const started = sent.find((m) => m.msg.case === "restore")?.msg;
    const aborted = sent.find((m) => m.msg.case === "restoreAborted")?.msg;
    expect(started?.case === "restore" && aborted?.case === "restoreAborted").toBe(true);
    if (started?.case === "restore" && aborted?.case === "restoreAborted") {
      expect(aborted.value.requestId).toBe(started.value.requestId);
      expect(aborted.value.message).toMatch(/said nothing about the restore/);
    }
  });

  describe("a restore whose manifest goes out in parts", () => {
    /** Restores a three-part snapshot with each part's send held by `partSent(index)`; what went out after. */
    const restoreWithSlowParts = async (partSent: (index: number) => Promise<void>) => {
      const snapshot = await threePartSnapshot(h);
      const { bulkSender } = h.session;
      h.session.bulkSender = async () => ({
        connection: "downloads",
        send: async (m: ControlMessage | Uint8Array) => {
          const message = m as ControlMessage;
          h.sent.push(message);
          if (message.msg.case === "restoreManifestPart") await partSent(message.msg.value.index);
        },
      });
      const before = h.sent.length;
      const restore = h.coordinator.restore({ session: h.session, snapshot, target: "/r" });
      restore.catch(() => {});
      return { restore, sent: () => h.sent.slice(before), done: () => (h.session.bulkSender = bulkSender) };
    };

    it("counts each part the agent takes as progress: a large manifest on a slow link is not silence", async () => {
      // Two parts before the Restore, 0.3 s each: 0.6 s, over the 0.4 s limit, with the agent taking them.
      const { restore, sent, done } = await restoreWithSlowParts(() => new Promise((r) => setTimeout(r, 300)));
      try {
        await until(() => sent().some((m) => m.msg.case === "restore"));
        const started = sent().find((m) => m.msg.case === "restore")?.msg;
        expect(sent().map((m) => m.msg.case)).not.toContain("restoreAborted");
        if (started?.case !== "restore") throw new Error("no Restore went out");
        h.coordinator.onAgentMessage(
          h.session,
          create(AgentMessageSchema, {
            msg: {
              case: "restoreProgress",
              value: { requestId: started.value.requestId, done: true, files: 3n, bytesWritten: 15_000n },
            },
          }),
        );
        await expect(restore).resolves.toMatchObject({ files: 3 });
      } finally {
        done();
      }
    });

    it("sends no more parts and no Restore once it has given up (told the agent the restore was aborted)", async () => {
      let release!: () => void;
      const held = new Promise<void>((r) => {
        release = r;
      });
      // The agent stops taking messages at the first part, past the silence limit.
      const { restore, sent, done } = await restoreWithSlowParts((index) => (index === 0 ? held : Promise.resolve()));
      try {
        await expect(restore).rejects.toThrow(/host h-silent said nothing about the restore for 0.4 s/);
        release();
        await new Promise((r) => setTimeout(r, 200));
        const cases = sent().map((m) => m.msg.case);
        expect(cases).toEqual(["restoreManifestPart", "restoreAborted"]);
      } finally {
        release();
        done();
      }
    });
  });
});

/**
 * A coordinator whose stores are HangingBlobStores (in `hanging`, the first one opened first), each call given
 * 0.3 s; every held call is let go after each test.
 */
function useHangingCoordinator(hostId: string, tuning: CoordinatorTuning) {
  const hanging: HangingBlobStore[] = [];
  const h = useCoordinator(hostId, undefined, {
    storeCallMs: 300,
    ...tuning,
    openStore: (url) => {
      const store = new HangingBlobStore(openBlobStore(url));
      hanging.push(store);
      return store;
    },
  });
  afterEach(() => {
    for (const store of hanging) store.release();
  });
  return { h, hanging };
}

describe("SnapshotCoordinator: a blob store that stops answering", () => {
  // Silence gives up only long after the store's deadline: what fails an operation here is the store's call.
  const { h, hanging } = useHangingCoordinator("h-hung", { silenceMs: 5_000 });
  const finish = finishIn(h);
  /** `operation`'s failure, or a failure saying it still ran after `ms` (without a deadline it never ends). */
  const within = <T>(operation: Promise<T>, ms: number) =>
    Promise.race([
      operation,
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error(`still waiting on the store after ${ms / 1000} s`)), ms),
      ),
    ]);

  it("fails a restore whose pack read never returns, naming the store and the read, and tells the agent", async () => {
    const snapshot = await finish(await startedIn(h));
    const manifest = await h.coordinator.readManifest(snapshot);
    const entry = manifest.entries.find((e) => e.type === "file");
    const ids = entry?.type === "file" ? entry.chunks.map((hex) => Buffer.from(hex, "hex")) : [];
    hanging[0].hangs = (call, key) => call === "getRange" && key.startsWith("data/");
    const before = h.sent.length;
    const restore = h.coordinator.restore({ session: h.session, snapshot, target: "/r" });
    restore.catch(() => {});
    await until(() => h.sent.slice(before).some((m) => m.msg.case === "restore"));
    const started = h.sent.slice(before).find((m) => m.msg.case === "restore")?.msg;
    const requestId = started?.case === "restore" ? started.value.requestId : "";
    const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
      h.coordinator.onAgentMessage(h.session, create(AgentMessageSchema, { msg }));
    agentSends({ case: "restoreChunkRequest", value: { requestId, batch: 1n, chunkIds: ids } });
    try {
      await expect(within(restore, 3_000)).rejects.toThrow(
        /tenants\/t1: reading \d+ bytes of data\/\w+\/\w+ did not finish in 0.3 s; gave up on it/,
      );
      const aborted = h.sent.slice(before).find((m) => m.msg.case === "restoreAborted")?.msg;
      expect(aborted?.case === "restoreAborted" && aborted.value.message).toMatch(/did not finish in 0.3 s/);
    } finally {
      // Ended here whatever happened above, so it sends nothing once its read goes on (after this test).
      agentSends({ case: "restoreProgress", value: { requestId, done: true, error: "the test is over" } });
    }
  });

  it("fails a snapshot whose record's write never returns, keeps its lock until that write has ended, and does not let the record land", async () => {
    const store = hanging[0];
    store.hangs = (call, key) => call === "put" && key.startsWith("snapshots/");
    const failed = await within(finish(await startedIn(h)), 3_000).then(
      () => undefined,
      (err: Error) => err,
    );
    expect(failed?.message).toMatch(/tenants\/t1: writing snapshots\/\w+ did not finish in 0.3 s; gave up on it/);
    const id = /snapshots\/(\w+)/.exec(failed?.message ?? "")?.[1];
    // The write goes on in the store (a call on a mount that stopped answering cannot be called back): no prune
    // may run until it has ended, so the snapshot's lock stays.
    const prune = () => h.coordinator.forget({ tenantId: "t1", policy: {}, prune: true, dryRun: false });
    await expect(prune()).rejects.toThrow(/the repository is locked by/);
    // The store answers again: the write, given up on, stops short of making the record visible (the snapshot
    // failed, and is not listed later); the lock goes.
    store.release();
    const tenant = path.join(h.blobs, "tenants", "t1");
    await until(() => readdirSync(path.join(tenant, "locks")).length === 0);
    expect(readdirSync(path.join(tenant, "locks"))).toEqual([]);
    const records = readdirSync(path.join(tenant, "snapshots"));
    expect(records).not.toContain(id);
    expect(records.filter((name) => name.startsWith(".tmp-"))).toEqual([]);
    await h.coordinator.relistAll();
    const rows = await h.db.selectFrom("snapshots").select("id").execute();
    expect(rows.map((r) => r.id)).not.toContain(id);
    // Its pack is indexed and named by no snapshot, which a prune removes; the next snapshot commits.
    expect(await h.coordinator.check("t1", {})).toMatchObject({ ok: true });
    await expect(prune()).resolves.toMatchObject({ prune: { packsDeleted: 1 } });
    await expect(finish(await startedIn(h))).resolves.toMatchObject({ host_id: "h-hung" });
  });
});

describe("SnapshotCoordinator: a blob store whose calls never return", () => {
  const { h, hanging } = useHangingCoordinator("h-stuck", { storeCallsUnreturnedMax: 2 });
  const finish = finishIn(h);
  const unreturned = async () => (await h.metrics.blobStoreCallsUnreturned.get()).values[0]?.value;
  /** How `work` fails, and how long it took to. */
  const failure = async (work: Promise<unknown>) => {
    const started = Date.now();
    const err = await work.then(
      () => undefined,
      (e: Error) => e,
    );
    return { message: err?.message, ms: Date.now() - started };
  };

  it("starts no more calls once 2 given up on have not returned, failing at once, and starts again when they do", async () => {
    const snapshot = await finish(await startedIn(h));
    let calls = 0;
    hanging[0].hangs = (call, key) => {
      calls++;
      return call === "get" && key.startsWith("manifests/");
    };
    // Two reads of the manifest hang on the store and are given up on: the two calls go on there.
    for (let i = 0; i < 2; i++) {
      expect((await failure(h.coordinator.readManifest(snapshot))).message).toMatch(
        /tenants\/t1: reading manifests\/\w+ did not finish in 0.3 s; gave up on it/,
      );
    }
    expect(await unreturned()).toBe(2);
    // The next call is not started: it fails at once, whatever it is, saying why and what to do.
    const callsBefore = calls;
    const refused = await failure(h.coordinator.readManifest(snapshot));
    expect(calls, "a call reached the store").toBe(callsBefore);
    expect(refused.message).toMatch(
      /not started: 2 earlier calls to the blob store were given up on after 0.3 s and have not returned yet, .*The store may be hung .*check it; calls start again once those return/,
    );
    // A snapshot too: it fails before its agent is asked for anything.
    const before = h.sent.length;
    const request = { session: h.session, tenantId: "t1", path: "/w", workspaceId: "w", epoch: 0n };
    const snapshotRefused = await failure(h.coordinator.snapshot(request));
    expect(snapshotRefused.message).toMatch(/not started: 2 earlier calls/);
    expect(h.sent.length).toBe(before);
    // The store answers again: the held calls return, and calls start again.
    hanging[0].release();
    for (let i = 0; i < 300 && (await unreturned()) !== 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(await unreturned()).toBe(0);
    await expect(h.coordinator.readManifest(snapshot)).resolves.toMatchObject({ entries: expect.any(Array) });
    await expect(finish(await startedIn(h))).resolves.toMatchObject({ host_id: "h-stuck" });
  });

  it("still starts a lock's removal then: refused, a prune's lock would keep snapshots out for 30 minutes", async () => {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-unreturned-"));
    const hung = new HangingBlobStore(openBlobStore(`file://${root}`));
    try {
      await fs.mkdir(path.join(root, "locks"));
      await fs.writeFile(path.join(root, "locks", "a-prune"), "a lock");
      const store = new DeadlineBlobStore(hung, { deadlineMs: 100, unreturned: new UnreturnedCalls(1) });
      hung.hangs = (call) => call === "get";
      await expect(store.get("config")).rejects.toThrow(/did not finish in 0.1 s/);
      await expect(store.delete("data/00/none")).rejects.toThrow(/not started: 1 earlier calls/);
      await expect(store.delete("locks/a-prune")).resolves.toBeUndefined();
      expect(await fs.readdir(path.join(root, "locks"))).toEqual([]);
    } finally {
      hung.release();
      await fs.rm(root, { recursive: true, force: true });
    }
  });

  it("passes its caller's own cancellation on to reads, as well as its deadline's", async () => {
    // repair-index and the pack listing pass a signal of their own; the wrapper put its deadline's in its place,
    // so a read their caller gave up on ran on (helper-65).
    const silent = createServer((socket) => socket.on("error", () => {}));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const s3 = new S3BlobStore("quiet-bucket", "t1", {
      endpoint: `http://127.0.0.1:${(silent.address() as AddressInfo).port}`,
      credentials: { accessKeyId: "test", secretAccessKey: "test" },
    });
    const store = new DeadlineBlobStore(s3, { deadlineMs: 60_000 });
    try {
      const reads: [string, (signal: AbortSignal) => Promise<unknown>][] = [
        ["get", (signal) => store.get("config", { signal })],
        ["getRange", (signal) => store.getRange("data/ab/cd", 0, 8, undefined, { signal })],
        ["stat", (signal) => store.stat("data/ab/cd", { signal })],
        [
          "list",
          async (signal) => {
            for await (const _ of store.list("index/", { signal })) {
            }
          },
        ],
      ];
      for (const [name, read] of reads) {
        const caller = new AbortController();
        const reading = read(caller.signal).then(
          () => "answered",
          (e: Error) => e.message,
        );
        setTimeout(() => caller.abort(), 50);
        // Not the deadline's "did not finish in 60 s" (a server that never answers), but its caller's.
        expect(await reading, name).toMatch(/given up on by its caller/);
      }
    } finally {
      await s3.close();
      silent.close();
    }
  });

  it("drops a pack writer whose opening returns after it gave up on it", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-deadline-open-"));
    const file = openBlobStore(`file://${dir}`);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    // The store opens the writer (its temp file made), then hangs before answering, as a mount that stopped.
    const hanging = Object.create(file, {
      openWriter: {
        value: async (key: string, options?: BlobCallOptions) => {
          const writer = await file.openWriter!(key, options);
          await gate;
          return writer;
        },
      },
    }) as BlobStore;
    // A deadline long enough for the real open (its temp file made) to be under way on a slow disk.
    const store = new DeadlineBlobStore(hanging, { deadlineMs: 1_000 });
    try {
      await expect(store.openWriter!("data/ab/pack1")).rejects.toThrow(
        /opening data\/ab\/pack1 to write did not finish in 1 s/,
      );
      expect(await fs.readdir(path.join(dir, "data", "ab"))).toHaveLength(1); // its temp file
      release();
      await until(() => readdirSync(path.join(dir, "data", "ab")).length === 0);
      expect(await fs.readdir(path.join(dir, "data", "ab"))).toEqual([]);
    } finally {
      release();
      await store.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("passes a read's maxBytes on to its store", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-deadline-get-"));
    const store = new DeadlineBlobStore(openBlobStore(`file://${dir}`), { deadlineMs: 60_000 });
    try {
      await store.put("snapshots/x", Buffer.alloc(100));
      await expect(store.get("snapshots/x", { maxBytes: 99 })).rejects.toThrow("snapshots/x is 100 bytes");
      expect((await store.get("snapshots/x", { maxBytes: 100 })).length).toBe(100);
    } finally {
      await store.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("cancels an S3 request it gives up on, which then holds nothing: the next call starts", async () => {
    const silent = createServer((socket) => socket.on("error", () => {})); // accepts, then says nothing
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const s3 = new S3BlobStore("quiet-bucket", "t1", {
      endpoint: `http://127.0.0.1:${(silent.address() as AddressInfo).port}`,
      credentials: { accessKeyId: "test", secretAccessKey: "test" },
    });
    const unreturned = new UnreturnedCalls(1);
    const store = new DeadlineBlobStore(s3, { deadlineMs: 100, unreturned });
    try {
      // Left to the SDK, the request would run until its idle timeout (a minute), then be tried 7 times more.
      await expect(store.put("snapshots/ab", Buffer.alloc(10))).rejects.toThrow(
        /writing snapshots\/ab did not finish in 0.1 s/,
      );
      await until(() => unreturned.size === 0);
      expect(unreturned.size).toBe(0);
      // So the next call is started (and given up on in turn), not refused.
      await expect(store.get("config")).rejects.toThrow(/reading config did not finish in 0.1 s/);
    } finally {
      await s3.close();
      silent.close();
    }
  });
});

/**
 * A blob store whose calls that `hangs` picks wait, as on a mount that stopped answering, until `release`; they
 * then go on to the store.
 */
class HangingBlobStore implements BlobStore {
  readonly url: string;
  hangs: (call: string, key: string) => boolean = () => false;
  private gate!: Promise<void>;
  private open!: () => void;

  constructor(private readonly store: BlobStore) {
    this.url = store.url;
    this.release();
  }

  /** Lets the held calls go on, and stops holding calls. */
  release(): void {
    this.open?.();
    this.hangs = () => false;
    this.gate = new Promise((resolve) => (this.open = resolve));
  }

  private async held(call: string, key: string): Promise<void> {
    if (this.hangs(call, key)) await this.gate;
  }

  async put(key: string, data: Buffer | readonly Buffer[], options?: PutOptions): Promise<boolean> {
    await this.held("put", key);
    return this.store.put(key, data, options);
  }
  async get(key: string, options?: BlobCallOptions): Promise<Buffer> {
    await this.held("get", key);
    return this.store.get(key, options);
  }
  async getRange(
    key: string,
    offset: number,
    length: number,
    into?: Buffer,
    options?: BlobCallOptions,
  ): Promise<Buffer> {
    await this.held("getRange", key);
    return this.store.getRange(key, offset, length, into, options);
  }
  async stat(key: string, options?: BlobCallOptions): Promise<BlobInfo | undefined> {
    await this.held("stat", key);
    return this.store.stat(key, options);
  }
  list(prefix: string, options?: BlobCallOptions): AsyncIterable<BlobInfo> {
    return this.store.list(prefix, options);
  }
  async delete(key: string, options?: BlobCallOptions): Promise<void> {
    await this.held("delete", key);
    return this.store.delete(key, options);
  }
  close(): Promise<void> {
    return this.store.close();
  }
}

type PutOptions = Parameters<BlobStore["put"]>[2];

type Harness = ReturnType<typeof useCoordinator>;

/**
 * Waits until `done()` holds, looking every 10 ms, for up to 30 s; the caller then checks what it waited for.
 * What these waits cover takes about a tenth of a second here: the deadline is for a busy machine (2 s was
 * close), never what a test decides on.
 */
async function until(done: () => boolean): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
}

/** Batch numbers for `offered`'s offers, apart from those tests number themselves. */
let offerBatch = 1_000_000n;

/**
 * Offers chunk ids as an agent does before it sends chunks, and waits for the answer: the control plane takes only
 * the chunks it said it lacks. Returns the ids it asked for.
 */
async function offered(
  agentSends: (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) => void,
  sent: ControlMessage[],
  requestId: string,
  epoch: bigint,
  chunkIds: Uint8Array[],
): Promise<Uint8Array[]> {
  const batch = offerBatch++;
  agentSends({ case: "snapshotOffer", value: { requestId, epoch, batch, chunkIds } });
  const answer = () =>
    sent.find(
      (m) => m.msg.case === "snapshotNeed" && m.msg.value.requestId === requestId && m.msg.value.batch === batch,
    );
  await until(() => answer() !== undefined);
  const need = answer()?.msg;
  if (need?.case !== "snapshotNeed") throw new Error(`offer ${batch} of ${requestId} was not answered`);
  return need.value.chunkIds;
}

/** Starts a snapshot of workspace "w" and waits for the agent to be asked for it. */
async function startedIn(h: Harness, tenantId = "t1") {
  const before = h.sent.length;
  const snapshot = h.coordinator.snapshot({
    session: h.session,
    tenantId,
    path: "/w",
    workspaceId: "w",
    epoch: 0n,
  });
  snapshot.catch(() => {});
  // The first takeSnapshot sent since: not simply the next message, which may be a word about an earlier
  // operation sent without waiting (a snapshotCommitted after its caller was answered).
  const asked = () => h.sent.slice(before).find((m) => m.msg.case === "takeSnapshot")?.msg;
  await until(() => asked() !== undefined);
  const take = asked();
  if (take?.case !== "takeSnapshot") throw new Error("expected takeSnapshot; none was sent");
  return { snapshot, requestId: take.value.requestId, key: Buffer.from(take.value.tenantKey) };
}

/** Finishes a started snapshot as a real agent would: one chunk of 5,000 fresh bytes, then the commit. */
function finishIn(h: Harness) {
  return async ({ snapshot, requestId, key }: Awaited<ReturnType<typeof startedIn>>) => {
    const plain = randomBytes(5_000);
    const chunk = chunkCodec.sealChunk(key, plain);
    const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
      h.coordinator.onAgentMessage(h.session, create(AgentMessageSchema, { msg }));
    await offered(agentSends, h.sent, requestId, 0n, [chunk.id]);
    agentSends({
      case: "snapshotChunks",
      value: { requestId, epoch: 0n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }] },
    });
    const stats = { files: 1n, bytesRead: 5_000n, bytesNew: 5_000n, chunksNew: 1n, seconds: 0.25 };
    agentSends({
      case: "snapshotCommit",
      value: { requestId, epoch: 0n, manifest: oneFile(key, chunk.id, plain.length), stats },
    });
    return snapshot;
  };
}

describe("SnapshotCoordinator: two snapshots of the same bytes at once", () => {
  const h = useCoordinator("h-twice");

  it("counts a chunk as new in the snapshot that stored it only, whatever the agent says it sent", async () => {
    const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
      h.coordinator.onAgentMessage(h.session, create(AgentMessageSchema, { msg }));
    const plain = randomBytes(5_000);
    const [first, second] = [await startedIn(h), await startedIn(h)];
    const sealedFor = ({ key }: typeof first) => chunkCodec.sealChunk(key, plain);
    // Neither holds the chunk yet: each is told to send it.
    for (const s of [first, second])
      expect(await offered(agentSends, h.sent, s.requestId, 0n, [sealedFor(s).id])).toHaveLength(1);
    const commit = ({ requestId, key }: typeof first) => {
      const chunk = sealedFor({ requestId, key } as typeof first);
      agentSends({
        case: "snapshotChunks",
        value: { requestId, epoch: 0n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }] },
      });
      // Each agent says it sent the chunk, as it did.
      const stats = {
        files: 1n,
        bytesRead: 5_000n,
        bytesNew: 5_000n,
        bytesStored: BigInt(chunk.blob.length),
        chunksNew: 1n,
      };
      agentSends({
        case: "snapshotCommit",
        value: { requestId, epoch: 0n, manifest: oneFile(key, chunk.id, plain.length), stats },
      });
    };
    commit(first);
    const stored = await first.snapshot;
    commit(second); // the first's pack holds the chunk by now: not stored again
    const again = await second.snapshot;
    expect(stored).toMatchObject({ bytes_new: 5_000, chunks_new: 1, bytes_stored: sealedFor(first).blob.length });
    expect(again).toMatchObject({ bytes_new: 0, bytes_stored: 0, chunks_new: 0, files: 1 });
    const packs = await fs.readdir(path.join(h.blobs, "tenants", "t1", "data"), { recursive: true });
    expect(packs.filter((name) => /[0-9a-f]{64}$/.test(name))).toHaveLength(1);
    expect(
      await h.db.selectFrom("snapshots").select(["bytes_new", "chunks_new"]).orderBy("bytes_new").execute(),
    ).toEqual([
      { bytes_new: 0, chunks_new: 0 },
      { bytes_new: 5_000, chunks_new: 1 },
    ]);
  });
});

describe("SnapshotCoordinator: a tenant's storage quota", () => {
  const tuning: CoordinatorTuning = {};
  const h = useCoordinator("h-quota", undefined, tuning);
  const finish = finishIn(h);
  /** The coordinator again, as a control plane started with DUMONT_SNAPSHOT_QUOTA=`bytes` would make it. */
  const withQuota = async (bytes: number, decimal = false) => {
    await h.coordinator.close();
    tuning.snapshotQuota = { bytes, decimal };
    h.coordinator = h.open();
  };
  const packBytes = async () => {
    const dir = path.join(h.blobs, "tenants", "t1", "data");
    let bytes = 0;
    for (const name of await fs.readdir(dir, { recursive: true }).catch(() => [] as string[])) {
      const info = await fs.stat(path.join(dir, name));
      if (info.isFile()) bytes += info.size;
    }
    return bytes;
  };
  const request = () => ({ session: h.session, tenantId: "t1", path: "/w", workspaceId: "w", epoch: 0n });

  it("starts no snapshot of a tenant at its quota, and stops one whose chunks would pass it, saying what to do", async () => {
    await finish(await startedIn(h)); // no quota yet: one pack of one 5,000-byte chunk
    const stored = await packBytes();
    expect(stored).toBeGreaterThan(5_000);

    await withQuota(stored);
    const before = h.sent.length;
    const refused = await h.coordinator.snapshot(request()).catch((err: unknown) => err as ConnectError);
    expect(refused).toMatchObject({ code: Code.ResourceExhausted });
    expect((refused as ConnectError).rawMessage).toMatch(
      /^tenant t1's snapshots would store over its quota of .*: forget snapshots it no longer needs and prune \(`dumont snapshot forget --tenant t1 --keep-last N --prune`\), or raise DUMONT_SNAPSHOT_QUOTA$/,
    );
    expect(h.sent.slice(before).filter((m) => m.msg.case === "takeSnapshot")).toEqual([]); // the agent not asked
    // Sizes in the units the quota was given in: 1024s for 4 KiB, 1000s for 4kB (4,000 bytes in 1024s too: the
    // units are the giver's, not guessed from the number); to the byte where they would read alike.
    const exact = (n: number) => `${n.toLocaleString("en-US")} bytes`;
    for (const [quota, decimal, text] of [
      [4 * 1024, false, `4.0 KiB (${(stored / 1024).toFixed(1)} KiB stored`],
      [4_000, true, `4.0 kB (${(stored / 1000).toFixed(1)} kB stored`],
      [4_000, false, `3.9 KiB (${(stored / 1024).toFixed(1)} KiB stored`],
      [stored - 1, false, `${exact(stored - 1)} (${exact(stored)} stored`],
    ] as const) {
      await withQuota(quota, decimal);
      const message = await h.coordinator.snapshot(request()).catch((err: ConnectError) => err.rawMessage);
      expect(message).toContain(`over its quota of ${text} and arriving)`);
    }

    // Room for 3,000 bytes more: a snapshot starts, and is stopped when its 5,000-byte chunk arrives.
    await withQuota(stored + 3_000);
    const { snapshot, requestId, key } = await startedIn(h);
    const plain = randomBytes(5_000);
    const chunk = chunkCodec.sealChunk(key, plain);
    const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
      h.coordinator.onAgentMessage(h.session, create(AgentMessageSchema, { msg }));
    expect(await offered(agentSends, h.sent, requestId, 0n, [chunk.id])).toHaveLength(1);
    agentSends({
      case: "snapshotChunks",
      value: { requestId, epoch: 0n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }] },
    });
    const stopped = await snapshot.catch((err: unknown) => err as ConnectError);
    expect(stopped).toMatchObject({ code: Code.ResourceExhausted });
    expect((stopped as ConnectError).rawMessage).toMatch(/^tenant t1's snapshots would store over its quota/);
    const aborted = h.sent.find((m) => m.msg.case === "snapshotAborted" && m.msg.value.requestId === requestId);
    expect(aborted, "the agent was not told to stop").toBeDefined();
    expect(await h.db.selectFrom("snapshots").select("id").execute()).toHaveLength(1); // the first snapshot only
  });

  it("shares the room left among the tenant's snapshots running at once", async () => {
    // Room for one 5,000-byte chunk more, not two: each of two snapshots alone would fit.
    await withQuota((await packBytes()) + 8_000);
    const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
      h.coordinator.onAgentMessage(h.session, create(AgentMessageSchema, { msg }));
    const [first, second] = [await startedIn(h), await startedIn(h)];
    const send = async ({ requestId, key }: typeof first) => {
      const plain = randomBytes(5_000);
      const chunk = chunkCodec.sealChunk(key, plain);
      expect(await offered(agentSends, h.sent, requestId, 0n, [chunk.id])).toHaveLength(1);
      agentSends({
        case: "snapshotChunks",
        value: { requestId, epoch: 0n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }] },
      });
    };
    await send(first);
    await send(second);
    const stopped = await second.snapshot.catch((err: unknown) => err as ConnectError);
    expect(stopped).toMatchObject({ code: Code.ResourceExhausted });
    // The first is still running, within the quota: the agent would go on and commit it.
    expect(h.sent.some((m) => m.msg.case === "snapshotAborted" && m.msg.value.requestId === first.requestId)).toBe(
      false,
    );
    h.coordinator.onAgentMessage(
      h.session,
      create(AgentMessageSchema, {
        msg: { case: "snapshotFailed", value: { requestId: first.requestId, message: "stopped by the test" } },
      }),
    );
    await expect(first.snapshot).rejects.toThrow("stopped by the test");
  });
});

describe("SnapshotCoordinator: the cache of tenants' repositories", () => {
  const closed: string[] = [];
  /** While set, manifest reads wait for it; `held` counts those waiting. */
  let hold: Promise<void> | undefined;
  let held = 0;
  const tuning: CoordinatorTuning = {
    cachedTenantsMax: 1,
    cacheMinIdleMs: 0,
    openStore: (url) => {
      const store = openBlobStore(url);
      const close = store.close.bind(store);
      store.close = async () => {
        closed.push(url.slice(url.lastIndexOf("/") + 1));
        await close();
      };
      const get = store.get.bind(store);
      store.get = async (key, options) => {
        if (hold && key.startsWith("manifests/")) {
          held++;
          await hold;
        }
        return get(key, options);
      };
      return store;
    },
  };
  const h = useCoordinator("h-cache", undefined, tuning);
  const finish = finishIn(h);

  it("keeps at most its cap of idle tenants, closing the stores of those it drops, and opens one again when used", async () => {
    await ensureTenant(h.db, "t2", "tenant two");
    await finish(await startedIn(h, "t1"));
    expect(closed).toEqual([]);
    // A second tenant's snapshot: the first, idle, makes room (its store closed), never the one being used.
    await finish(await startedIn(h, "t2"));
    expect(closed).toEqual(["t1"]);
    // The first tenant used again: opened anew, its index read again, what it holds as before.
    expect(await h.coordinator.stats("t1")).toMatchObject({ snapshots: 1, chunks: 1, packs: 1 });
    expect(closed).toEqual(["t1", "t2"]);
    // A tenant with work running is not dropped, whatever the cap: t1's snapshot runs while t2 is used.
    const running = await startedIn(h, "t1");
    expect(await h.coordinator.stats("t2")).toMatchObject({ snapshots: 1 });
    expect(closed).toEqual(["t1", "t2"]);
    await finish(running);
  });

  it("keeps a tenant whose snapshot's files are being listed, however idle, while others are used", async () => {
    const [row] = await h.db.selectFrom("snapshots").selectAll().where("tenant_id", "=", "t1").limit(1).execute();
    let release!: () => void;
    hold = new Promise((resolve) => {
      release = resolve;
    });
    const reading = h.coordinator.readManifest(row);
    await until(() => held > 0);
    closed.length = 0;
    await h.coordinator.stats("t2"); // the cap is 1: t1 would make room, but its store is in use
    expect(closed).not.toContain("t1");
    hold = undefined;
    release();
    expect((await reading).entries.length).toBeGreaterThan(0);
  });
});

describe("SnapshotCoordinator: what an operator sees", () => {
  const h = useCoordinator("h-seen");
  const started = () => startedIn(h);
  const finish = finishIn(h);
  const scrape = async () => h.metrics.registry.metrics();
  const sample = (text: string, name: string, labels: string) =>
    Number(text.match(new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, "m"))?.[1] ?? Number.NaN);

  it("gauges what runs and since when, counts failures by code, and logs each failure with its context", async () => {
    const running = await started();
    let text = await scrape();
    expect(sample(text, "dumont_snapshot_work_running", 'kind="snapshot"')).toBe(1);
    expect(sample(text, "dumont_snapshot_work_oldest_seconds", 'kind="snapshot"')).toBeGreaterThanOrEqual(0);
    await finish(running);
    text = await scrape();
    expect(text).not.toMatch(/^dumont_snapshot_work_running\{/m);

    const failing = await started();
    h.coordinator.onAgentMessage(
      h.session,
      create(AgentMessageSchema, {
        msg: { case: "snapshotFailed", value: { requestId: failing.requestId, message: "cannot read /w: EIO" } },
      }),
    );
    await expect(failing.snapshot).rejects.toThrow("the agent could not snapshot /w: cannot read /w: EIO");
    text = await scrape();
    expect(sample(text, "dumont_snapshot_failures_total", 'operation="snapshot",code="FAILED_PRECONDITION"')).toBe(1);
    expect(sample(text, "dumont_snapshots_total", 'result="failed"')).toBe(1);
    // The same request id as the agent's own log line for it: the two logs join on it.
    expect(h.logged.find((l) => l.msg === "snapshot failed")).toMatchObject({
      level: 40,
      tenantId: "t1",
      hostId: "h-seen",
      path: "/w",
      workspace: "w",
      requestId: failing.requestId,
      code: "FAILED_PRECONDITION",
      reason: "the agent could not snapshot /w: cannot read /w: EIO",
    });
  });

  it("counts checks by result (sound, problems, failed) and logs the last two with their tenant", async () => {
    await h.coordinator.check("t1", { readData: true });
    const packs = path.join(h.blobs, "tenants", "t1", "data");
    for (const name of await fs.readdir(packs, { recursive: true })) {
      const file = path.join(packs, name);
      if ((await fs.stat(file)).isFile()) await fs.rm(file);
    }
    expect((await h.coordinator.check("t1", { readData: true })).ok).toBe(false);
    // The whole repository gone while the catalogue lists its snapshots: the check cannot run.
    await fs.rm(path.join(h.blobs, "tenants", "t1"), { recursive: true });
    await expect(h.coordinator.check("t1", { readData: true })).rejects.toThrow(/^\[unavailable\]/);
    const text = await scrape();
    expect(sample(text, "dumont_checks_total", 'result="sound"')).toBe(1);
    expect(sample(text, "dumont_checks_total", 'result="problems"')).toBe(1);
    expect(sample(text, "dumont_checks_total", 'result="failed"')).toBe(1);
    expect(h.logged.find((l) => l.msg === "check found problems")).toMatchObject({ tenantId: "t1", level: 40 });
    expect(h.logged.find((l) => l.msg === "check failed")).toMatchObject({ tenantId: "t1", code: "UNAVAILABLE" });
  });
});

describe("SnapshotCoordinator: a blob store under a mount point that is not mounted", () => {
  const tuning: CoordinatorTuning = {};
  const h = useCoordinator("h-unmounted", undefined, tuning);
  const finish = finishIn(h);

  it("makes no tenant's repository there, saying to mount it; once mounted, the first snapshot makes it", async () => {
    // The blob store's disk is named in fstab and not mounted: its mount point, an empty directory, takes writes
    // into the filesystem below, where the tenant's snapshots would hide once the disk came back.
    const mountLine = (point: string) => `25 1 8:1 / ${point} rw,relatime shared:1 - ext4 /dev/sdz1 rw`;
    tuning.mountTables = { fstab: `/dev/sdz1 ${h.blobs} ext4 defaults 0 2\n`, mountinfo: mountLine("/") };
    const unmounted = h.open();
    try {
      const snapshot = unmounted.snapshot({
        session: h.session,
        tenantId: "t1",
        path: "/w",
        workspaceId: "w",
        epoch: 0n,
      });
      const err = await snapshot.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((err as ConnectError).code).toBe(Code.Unavailable);
      expect((err as ConnectError).message).toContain(
        `the tenant's blob store file://${h.blobs}/tenants/t1 has no repository yet and lies under ${h.blobs}, ` +
          `which /etc/fstab mounts but is not mounted now`,
      );
      expect(readdirSync(h.blobs)).toEqual([]);
      expect(h.sent.some((m) => m.msg.case === "takeSnapshot")).toBe(false);
    } finally {
      await unmounted.close();
    }
    tuning.mountTables = { fstab: tuning.mountTables.fstab, mountinfo: `${mountLine("/")}\n${mountLine(h.blobs)}` };
    const mounted = h.open();
    const before = h.coordinator;
    h.coordinator = mounted;
    try {
      await expect(finish(await startedIn(h))).resolves.toMatchObject({ host_id: "h-unmounted" });
      expect(readdirSync(path.join(h.blobs, "tenants", "t1"))).toContain("config");
    } finally {
      h.coordinator = before;
      await mounted.close();
    }
  });
});

describe("SnapshotCoordinator: a commit whose catalogue row could not be inserted", () => {
  const h = useCoordinator("h-uncatalogued", undefined, { relistRetryMs: 20 });

  it("fails the snapshot, and lists it from the repository shortly after rather than at the next start", async () => {
    // The record had landed; the row's insert failed (the database unreachable for a moment). The snapshot was
    // whole but nobody could list, restore or forget it until the control plane started again.
    const insertInto = h.db.insertInto.bind(h.db);
    let failed = 0;
    const inserts = vi.spyOn(h.db, "insertInto").mockImplementation(((table: "snapshots") => {
      if (table === "snapshots" && failed++ === 0) throw new Error("the database went away for a moment");
      return insertInto(table);
    }) as typeof h.db.insertInto);
    try {
      const failing = finishIn(h)(await startedIn(h));
      await expect(failing).rejects.toThrow("the database went away for a moment");
      const listed = async () => (await h.db.selectFrom("snapshots").select("id").execute()).map((r) => r.id);
      await vi.waitFor(async () => expect(await listed()).toHaveLength(1), { timeout: 10_000 });
      const [id] = await listed();
      expect(await fs.readdir(path.join(h.blobs, "tenants", "t1", "snapshots"))).toEqual([id]);
      expect(failed).toBeGreaterThanOrEqual(2); // the relisting inserted it
    } finally {
      inserts.mockRestore();
    }
  });

  it("lists the tenant again when its catalogue lock was lost while held (a replica's change may have overlapped)", async () => {
    const row = await finishIn(h)(await startedIn(h));
    // The lock's Postgres session ended under a change (a failover): withDatabaseLock calls onLost. Meanwhile a
    // replica's change, no longer kept out, removed a row whose snapshot is whole.
    const onLost = catalogueLocks.onLost.get("dumont catalogue t1");
    expect(onLost).toBeDefined();
    await h.db.deleteFrom("snapshots").where("id", "=", row.id).execute();
    onLost!();
    const listed = async () => (await h.db.selectFrom("snapshots").select("id").execute()).map((r) => r.id);
    await vi.waitFor(async () => expect(await listed()).toContain(row.id), { timeout: 10_000 });
  });
});

describe("SnapshotCoordinator: a blob store that is not the one its snapshots went to", () => {
  const h = useCoordinator("h-mount");
  const finish = finishIn(h);

  it("makes no repository in its place and fails saying so; forgetting the lost snapshots by id drops their rows", async () => {
    const lost = await finish(await startedIn(h));
    // The control plane starts again with its store's disk not mounted: the empty mount point. It made a new
    // repository there, and the tenant's next snapshots went to the wrong disk (hidden once it was mounted).
    await fs.rename(path.join(h.blobs, "tenants"), path.join(h.blobs, "unmounted"));
    const before = h.coordinator;
    h.coordinator = h.open();
    try {
      const request = { session: h.session, tenantId: "t1", path: "/w", workspaceId: "w", epoch: 0n };
      await expect(h.coordinator.snapshot(request)).rejects.toThrow(
        /tenants\/t1 holds no repository, but the catalogue lists 1 snapshot of this tenant there: .* forget them by id/,
      );
      expect(await fs.readdir(h.blobs)).toEqual(["unmounted"]);
      // A forget by a policy, or with a prune, needs the repository: refused the same way.
      await expect(
        h.coordinator.forget({ tenantId: "t1", policy: {}, ids: [lost.id], prune: true, dryRun: false }),
      ).rejects.toThrow(/holds no repository/);
      // Gone for good: forgotten by id, its row goes, and the next snapshot starts a new repository.
      const forget = (dryRun: boolean) =>
        h.coordinator.forget({ tenantId: "t1", policy: {}, ids: [lost.id, lost.id], prune: false, dryRun });
      expect(await forget(true)).toEqual({ kept: [], forgotten: [lost.id] });
      expect(await h.db.selectFrom("snapshots").select("id").execute()).toEqual([{ id: lost.id }]);
      expect(await forget(false)).toEqual({ kept: [], forgotten: [lost.id] });
      expect(await h.db.selectFrom("snapshots").select("id").execute()).toEqual([]);
      // Relisting at start makes no repository, now that none is catalogued: only a snapshot does (helper-66:
      // a tenant with a key and no rows had one made under the mount point).
      await h.coordinator.relistAll();
      // Nor do a scheduled prune, a prune asked for, or a check: there is nothing in none to prune or check.
      await h.coordinator.pruneAll();
      expect(await h.coordinator.forget({ tenantId: "t1", policy: {}, prune: true, dryRun: false })).toMatchObject({
        forgotten: [],
        prune: { packsDeleted: 0, bytesFreed: 0 },
      });
      expect(await h.coordinator.check("t1", {})).toMatchObject({ ok: true, snapshots: 0, problems: [] });
      expect(await fs.readdir(h.blobs)).toEqual(["unmounted"]);
      const next = await finish(await startedIn(h));
      expect(await fs.readdir(path.join(h.blobs, "tenants", "t1", "snapshots"))).toEqual([next.id]);
    } finally {
      await h.coordinator.close();
      h.coordinator = before;
    }
  });

  it("lets a running control plane forget the snapshots of a store replaced under it, then make a new repository", async () => {
    // Its repository opened (cached) before the store went: the forget by id asked the cached one, which opened,
    // and failed on; nothing but a restart let it through (helper-68).
    const lost = await finish(await startedIn(h));
    const tenants = await fs.readdir(path.join(h.blobs, "tenants"));
    await fs.rm(path.join(h.blobs, "tenants", "t1"), { recursive: true });
    await fs.mkdir(path.join(h.blobs, "tenants", "t1")); // an empty mount point
    const request = { session: h.session, tenantId: "t1", path: "/w", workspaceId: "w", epoch: 0n };
    await expect(h.coordinator.snapshot(request)).rejects.toThrow(/no longer holds the repository/);
    const rows = async () =>
      (await h.db.selectFrom("snapshots").select("id").where("tenant_id", "=", "t1").execute()).map((r) => r.id);
    const catalogued = await rows();
    expect(catalogued).toContain(lost.id);
    expect(
      await h.coordinator.forget({ tenantId: "t1", policy: {}, ids: catalogued, prune: false, dryRun: false }),
    ).toEqual({
      kept: [],
      forgotten: catalogued,
    });
    expect(await rows()).toEqual([]);
    const next = await finish(await startedIn(h));
    expect(await fs.readdir(path.join(h.blobs, "tenants", "t1", "snapshots"))).toEqual([next.id]);
    expect(tenants).toContain("t1");
  });

  it("answers a store setting that cannot work with INVALID_ARGUMENT and the store's words, not an internal error", async () => {
    // Here a tenant's directory that is a file; a bucket that does not exist, or S3 refusing the credentials,
    // are the same kind (helper-66: the README said INVALID_ARGUMENT, the API answered "internal error").
    await fs.mkdir(path.join(h.blobs, "tenants"), { recursive: true });
    await fs.writeFile(path.join(h.blobs, "tenants", "t2"), "not a directory");
    await ensureTenant(h.db, "t2", "tenant two");
    const err = await h.coordinator
      .snapshot({ session: h.session, tenantId: "t2", path: "/w", workspaceId: "w", epoch: 0n })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    expect((err as ConnectError).rawMessage).toMatch(/tenants\/t2 is a file, or lies under one/);
  });
});

describe("SnapshotCoordinator: forget --prune --dry-run", () => {
  const h = useCoordinator("h-dry");
  const finish = finishIn(h);

  it("says what the prune after the forget would free, as the forget and prune then report", async () => {
    for (let i = 0; i < 3; i++) await finish(await startedIn(h));
    const forget = (dryRun: boolean) =>
      h.coordinator.forget({ tenantId: "t1", policy: { last: 1 }, prune: true, dryRun });
    const dry = await forget(true);
    expect(dry.forgotten).toHaveLength(2);
    const real = await forget(false);
    expect(real.prune).toMatchObject({ packsDeleted: 2, manifestsDeleted: 2 });
    expect(dry.prune).toEqual(real.prune);
  });
});

describe("SnapshotCoordinator: a retention policy and scheduled prunes", () => {
  const h = useCoordinator("h-retention", { last: 2 });
  const finish = finishIn(h);

  it("forgets a workspace's older snapshots after each commit, and prunes when nothing runs", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await finish(await startedIn(h))).id);
    const rows = await h.db.selectFrom("snapshots").select("id").orderBy("created_at").execute();
    expect(rows.map((r) => r.id)).toEqual(ids.slice(2));

    const key = await new TenantKeys(h.db, h.masterKey).get("t1");
    const repository = await Repository.open(openBlobStore(`file://${h.blobs}/tenants/t1`), key);
    const chunks = async () => (await repository.loadIndex()).chunkCount;
    expect(await chunks()).toBe(4); // forgotten, not yet pruned
    const running = await startedIn(h);
    await h.coordinator.pruneAll(); // skipped: a snapshot runs
    expect(await chunks()).toBe(4);
    expect(h.logged.filter((l) => l.msg === "prune skipped")).toEqual([expect.objectContaining({ level: 30 })]);
    await finish(running); // a fifth snapshot; the third is forgotten
    await h.coordinator.pruneAll();
    expect(await chunks()).toBe(2);
    expect(await checkRepository(repository)).toMatchObject({ ok: true, snapshots: 2 });

    // A prune that fails (an index object that does not open) is the operator's to hear of: at error, not
    // "skipped" (every ConnectError passed for a TenantBusyError by instanceof).
    const [packId] = (await repository.loadIndex()).packs.keys();
    const objectFile = path.join(h.blobs, "tenants", "t1", "index", packId);
    const bytes = await fs.readFile(objectFile);
    await fs.writeFile(objectFile, Buffer.from(bytes.map((b, i) => (i === bytes.length >> 1 ? b ^ 1 : b))));
    try {
      await h.coordinator.pruneAll();
    } finally {
      await fs.writeFile(objectFile, bytes);
    }
    expect(h.logged.filter((l) => l.msg === "prune skipped")).toHaveLength(1);
    expect(h.logged.filter((l) => l.msg === "scheduled prune failed")).toEqual([
      expect.objectContaining({ level: 50, tenantId: "t1" }),
    ]);
  });
});

describe("SnapshotCoordinator: a forget between a commit's record and its row", () => {
  /** Runs once, when the next snapshot record is in the store and before its write returns to the commit. */
  let onRecord: ((id: string) => Promise<void>) | undefined;
  const h = useCoordinator("h-forgotten", undefined, {
    openStore: (url) => {
      const store = openBlobStore(url);
      const put = store.put.bind(store);
      store.put = async (key, data, options) => {
        const written = await put(key, data, options);
        const run = key.startsWith("snapshots/") ? onRecord : undefined;
        if (run) {
          onRecord = undefined;
          await run(key.slice("snapshots/".length));
        }
        return written;
      };
      return store;
    },
  });
  const finish = finishIn(h);

  it("does not insert the catalogue row of a snapshot whose record a forget removed before the row went in", async () => {
    let forgotten: string[] = [];
    onRecord = async (id) => {
      ({ forgotten } = await h.coordinator.forget({
        tenantId: "t1",
        ids: [id],
        policy: {},
        prune: false,
        dryRun: false,
      }));
    };
    const row = await finish(await startedIn(h));
    expect(forgotten).toEqual([row.id]);
    expect(await h.db.selectFrom("snapshots").select("id").execute()).toEqual([]);
  });
});

describe("SnapshotCoordinator: repair packs", () => {
  /** Deletes of packs still to fail (a store failing part way through a repair). */
  let failingDeletes = 0;
  const h = useCoordinator("h-packs", undefined, {
    openStore: (url) => {
      const store = openBlobStore(url);
      const remove = store.delete.bind(store);
      store.delete = async (key, options) => {
        if (key.startsWith("data/") && failingDeletes > 0) {
          failingDeletes--;
          throw Object.assign(new Error(`EIO: i/o error, unlink '${key}'`), { code: "EIO" });
        }
        return remove(key, options);
      };
      return store;
    },
  });
  const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
    h.coordinator.onAgentMessage(h.session, create(AgentMessageSchema, { msg }));
  const repository = (key: Buffer) => Repository.open(openBlobStore(`file://${h.blobs}/tenants/t1`), key);

  /**
   * A committed snapshot of files f0 and f1, one chunk of fresh bytes each, sent as a real agent does: offered,
   * then sent if asked for. Returns the row, the tenant's key and the chunks (with the ids the control plane asked for).
   */
  const twoFiles = (plains: readonly Buffer[] = [randomBytes(20_000), randomBytes(30_000)]) =>
    committedFiles(h, plains);

  /** twoFiles, with a byte of the first chunk flipped in its pack (which holds both). */
  const firstChunkDamaged = async () => {
    const { row, key, chunks } = await twoFiles();
    const [damaged, whole] = chunks.map((c) => c.id.toString("hex"));
    const index = await (await repository(key)).loadIndex();
    const pack = [...index.packs.values()].find((p) => p.entries.some((e) => e.id.toString("hex") === damaged))!;
    expect(pack.entries.map((e) => e.id.toString("hex")).sort()).toEqual([damaged, whole].sort());
    const entry = pack.entries.find((e) => e.id.toString("hex") === damaged)!;
    const packFile = path.join(h.blobs, "tenants", "t1", "data", pack.packId.slice(0, 2), pack.packId);
    const bytes = await fs.readFile(packFile);
    bytes[entry.offset + (entry.length >> 1)] ^= 1;
    await fs.writeFile(packFile, bytes);
    return { row, chunks, damaged, whole, index, pack, packFile, bytes };
  };

  it("rewrites a pack without its damaged chunk: a dry run first, refused while a snapshot runs; the next snapshot sends it again", async () => {
    const { row, chunks, damaged, whole, index, pack, packFile, bytes } = await firstChunkDamaged();
    const expected = {
      packs: index.packs.size,
      packsRead: index.packs.size,
      repaired: [{ pack: pack.packId, salvaged: 1, damaged: [{ chunk: damaged, reason: expect.any(String) }] }],
      skipped: [],
      lost: [damaged],
    };

    // A dry run says so and changes nothing, beside a snapshot (it only reads, as a check); the repair waits.
    // Its chunks are verified by the verifier's threads, as a check's are, not on the event loop.
    const running = await startedIn(h);
    const onThisThread = vi.spyOn(chunkCodec, "verifyChunk");
    const onThreads = vi.spyOn(ChunkVerifier.prototype, "verify");
    try {
      await expect(h.coordinator.repairPacks("t1", { dryRun: true })).resolves.toEqual(expected);
      expect(onThreads.mock.calls.flatMap(([, batch]) => batch.map((c) => c.id.toString("hex"))).sort()).toEqual(
        [damaged, whole].sort(),
      );
      expect(onThisThread).not.toHaveBeenCalled();
    } finally {
      onThisThread.mockRestore();
      onThreads.mockRestore();
    }
    expect(await fs.readFile(packFile)).toEqual(bytes);
    await expect(h.coordinator.repairPacks("t1", { dryRun: false })).rejects.toThrow(
      /1 snapshot, restore or check of tenant t1 is running \(snapshot of \/w on host h-packs, for \d+s\); repair the packs again when it has ended$/,
    );
    await finishIn(h)(running);
    // Named, as check names it, by a prefix; one the index does not hold is NOT_FOUND, not a repair of nothing.
    const unknown = await h.coordinator.repairPacks("t1", { dryRun: true, packs: ["0badc0de"] }).catch((e) => e);
    expect(unknown).toBeInstanceOf(ConnectError);
    expect((unknown as ConnectError).code).toBe(Code.NotFound);
    expect((unknown as ConnectError).rawMessage).toMatch(/^no pack 0badc0de is in file:\/\//);

    // The repair has the tenant to itself, shown on /metrics and named to a prune it refuses.
    const repairing = h.coordinator.repairPacks("t1", { dryRun: false, packs: [pack.packId.slice(0, 10)] });
    expect(h.coordinator.runningWork().map((w) => w.kind)).toEqual(["repair-packs"]);
    expect(await h.metrics.registry.metrics()).toMatch(/^dumont_snapshot_work_running\{kind="repair-packs"\} 1$/m);
    await expect(h.coordinator.forget({ tenantId: "t1", policy: {}, prune: true, dryRun: false })).rejects.toThrow(
      /a prune or repair of tenant t1 is already running \(pack repair, for \d+s\)$/,
    );
    const checked = h.coordinator.check("t1", {}); // waits for the repair
    // One pack read of the two (the snapshot that ran meanwhile added one).
    expect(await repairing).toEqual({ ...expected, packs: 2, packsRead: 1 });
    await expect(fs.stat(packFile)).rejects.toThrow(/ENOENT/);
    expect(h.logged).toContainEqual(
      expect.objectContaining({ msg: "packs repaired", rewritten: [pack.packId], lost: [damaged] }),
    );
    // The damaged chunk is in no pack now, not damaged in one; its file's neighbour is whole in the new pack.
    const report = await checked;
    expect(report.problems.map((p) => [p.kind, p.chunk, p.files?.map((f) => f.path)])).toEqual([
      ["chunk-missing", damaged, ["f0"]],
    ]);

    // A restore of the snapshot still gets the other chunk, as it was stored; the damaged one is answered missing.
    const before = h.sent.length;
    const restored = h.coordinator.restore({ session: h.session, snapshot: row, target: "/restored" });
    restored.catch(() => {});
    await until(() => h.sent.slice(before).some((m) => m.msg.case === "restore"));
    const restore = h.sent.slice(before).find((m) => m.msg.case === "restore")!.msg;
    const requestId = restore.case === "restore" ? restore.value.requestId : "";
    agentSends({
      case: "restoreChunkRequest",
      value: { requestId, batch: 1n, chunkIds: chunks.map((c) => c.id) },
    });
    const answered = () =>
      h.sent.flatMap((m) =>
        m.msg.case === "restoreChunks" && m.msg.value.requestId === requestId ? m.msg.value.chunks : [],
      );
    await until(() => answered().length === 2);
    const got = new Map(answered().map((c) => [Buffer.from(c.id).toString("hex"), c]));
    expect(Buffer.from(got.get(whole)!.blob)).toEqual(chunks[1].blob);
    expect(got.get(damaged)).toMatchObject({ blob: new Uint8Array(), error: expect.stringMatching(/./) });
    agentSends({ case: "restoreProgress", value: { requestId, done: true, error: "f0 damaged", damagedFiles: 1n } });
    // The store's data damaged: DATA_LOSS, what alerts watch for (a failure of the host or the request is not).
    const failed = await restored.catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(ConnectError);
    expect(failed).toMatchObject({ code: Code.DataLoss, rawMessage: expect.stringMatching(/f0 damaged/) });

    // The workspace still has those bytes: the next snapshot's offer of them is answered "send it", and every
    // snapshot using the chunk is whole again.
    const again = await twoFiles(chunks.map((c) => c.plain));
    expect(again.asked).toEqual([damaged]);
    await expect(h.coordinator.check("t1", {})).resolves.toMatchObject({ ok: true, problems: [] });
  });
  it("says what a forget did when the prune after it is refused (an index object that does not open)", async () => {
    const { row, key } = await twoFiles();
    const [packId] = (await (await repository(key)).loadIndex()).packs.keys();
    const objectFile = path.join(h.blobs, "tenants", "t1", "index", packId);
    const bytes = await fs.readFile(objectFile);
    bytes[bytes.length >> 1] ^= 1;
    await fs.writeFile(objectFile, bytes);
    const err = await h.coordinator
      .forget({ tenantId: "t1", ids: [row.id], policy: {}, prune: true, dryRun: false })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).rawMessage).toMatch(
      new RegExp(
        `^forgot 1 snapshot \\(${row.id.slice(0, 12)}\\), but the prune did not finish: 1 index object does not open`,
      ),
    );
    // Forgotten all the same: not listed.
    expect((await h.db.selectFrom("snapshots").select("id").execute()).map((r) => r.id)).not.toContain(row.id);
    await fs.writeFile(objectFile, Buffer.from(bytes.map((b, i) => (i === bytes.length >> 1 ? b ^ 1 : b))));
  });

  it("stops a repair whose store fails part way, dropping the cached index, or whose caller is gone, changing nothing", async () => {
    const { damaged, packFile, bytes } = await firstChunkDamaged();
    // The store failing as the damaged pack is deleted: the new pack is written, the old one still there. The
    // tenant's cached index (its last snapshot's) is not kept as if nothing had changed.
    const cached = () => (h.coordinator as unknown as { indexes: Map<string, unknown> }).indexes.has("t1");
    expect(cached()).toBe(true);
    failingDeletes = 1;
    await expect(h.coordinator.repairPacks("t1", { dryRun: false })).rejects.toThrow(/EIO/);
    expect(failingDeletes).toBe(0);
    expect(cached()).toBe(false);
    expect(await fs.readFile(packFile)).toEqual(bytes);

    // Stopped by the first call of the store it makes, given up on (or by the signal itself, between calls).
    const gone = new AbortController();
    gone.abort(new Error("the caller went away"));
    const stopped = /the caller went away|given up on by its caller/;
    for (const dryRun of [true, false]) {
      await expect(h.coordinator.repairPacks("t1", { dryRun, signal: gone.signal })).rejects.toThrow(stopped);
      await expect(h.coordinator.repairIndex("t1", { dryRun, signal: gone.signal })).rejects.toThrow(stopped);
    }
    expect(await fs.readFile(packFile)).toEqual(bytes);

    // Its lock released: the repair runs once asked again, and ends where one run whole would have.
    const report = await h.coordinator.repairPacks("t1", { dryRun: false });
    expect(report.repaired.map((p) => p.damaged.map((d) => d.chunk))).toEqual([[damaged]]);
    await expect(fs.stat(packFile)).rejects.toThrow(/ENOENT/);
    const checked = await h.coordinator.check("t1", {});
    expect(checked.problems.map((p) => [p.kind, p.chunk])).toEqual([["chunk-missing", damaged]]);
  });
});

describe("SnapshotCoordinator: repair snapshots", () => {
  /** At each delete of a snapshot record: the record, and the tenant's catalogue rows then. */
  const atDelete: { deleted: string; listed: string[] }[] = [];
  /** Records deleted, and other changes of the tenant's catalogue started as each delete began, as they ended. */
  const order: string[] = [];
  /** Listings of data/ still to show a pack without an index object (another replica's snapshot writing it). */
  let packBeingWritten = 0;
  const h = useCoordinator("h-repair", undefined, {
    openStore: (url) => {
      const store = openBlobStore(url);
      const list = store.list.bind(store);
      store.list = async function* (prefix, options) {
        yield* list(prefix, options);
        if (prefix === "data/" && packBeingWritten > 0) {
          packBeingWritten--;
          yield { key: `data/ab/${"ab".repeat(32)}`, size: 4096, modified: new Date() };
        }
      };
      const remove = store.delete.bind(store);
      store.delete = async (key, options) => {
        if (!key.startsWith("snapshots/")) return remove(key, options);
        const id = key.slice("snapshots/".length);
        const rows = await h.db.selectFrom("snapshots").select("id").orderBy("created_at").execute();
        atDelete.push({ deleted: id, listed: rows.map((r) => r.id) });
        // Another change of the catalogue (a relisting on another replica) waits for the repair: run between a row's
        // drop and its record's delete, it would list the damaged snapshot again.
        void withDatabaseLock(h.db, "dumont catalogue t1", async () => void order.push("catalogue changed"));
        await remove(key, options);
        order.push(`deleted ${id}`);
      };
      return store;
    },
  });
  const repository = (key: Buffer) => Repository.open(openBlobStore(`file://${h.blobs}/tenants/t1`), key);
  const rows = () => h.db.selectFrom("snapshots").selectAll().orderBy("created_at").execute();
  const records = async () => (await fs.readdir(path.join(h.blobs, "tenants", "t1", "snapshots"))).sort();

  /**
   * A committed snapshot of files f0, f1, … of one chunk each, sent as a real agent does: offered, then only the
   * chunks asked for sent, which go into one new pack.
   */
  const snapshotOf = (plains: Buffer[]) =>
    committedFiles(h, plains, { files: BigInt(plains.length), bytesRead: 50_000n, bytesNew: 30_000n, seconds: 0.5 });

  /**
   * A snapshot of f0 (the bytes of `kept`'s file, stored already) and f1 (fresh bytes), whose f1's pack is then
   * deleted from the store: f1's data is gone for good.
   */
  const damagedSnapshot = async (kept: Awaited<ReturnType<typeof snapshotOf>>) => {
    const damaged = await snapshotOf([kept.chunks[0].plain, randomBytes(30_000)]);
    const index = await (await repository(kept.key)).loadIndex();
    const [whole, lost] = damaged.chunks.map((c) => index.get(c.id)!.packId);
    expect(lost).not.toBe(whole);
    await fs.rm(path.join(h.blobs, "tenants", "t1", "data", lost.slice(0, 2), lost));
    return { ...damaged, pack: lost, chunk: damaged.chunks[1].id.toString("hex") };
  };

  it("replaces a snapshot whose file's data is gone with one without it, listed at once; with forget the damaged one goes, its row first", async () => {
    const kept = await snapshotOf([randomBytes(20_000)]);
    const damaged = await damagedSnapshot(kept);
    // restic's order: the index first (the lost pack's index object goes), then check names the file it breaks.
    await expect(h.coordinator.repairIndex("t1", { dryRun: false })).resolves.toMatchObject({
      removed: [damaged.pack],
    });
    const broken = await h.coordinator.check("t1", {});
    expect(broken.problems.map((p) => [p.kind, p.files?.map((f) => [f.snapshot, f.path])])).toEqual([
      ["chunk-missing", [[damaged.row.id, "f1"]]],
    ]);

    // A dry run says which file would be left out (and that the damaged snapshot would be forgotten), and changes
    // nothing: no record, no row.
    const rowsBefore = await rows();
    const recordsBefore = await records();
    const entry = {
      snapshot: damaged.row.id,
      workspace: "w",
      time: expect.any(String),
      reused: false,
      forgotten: false,
      filesRemoved: 1,
      bytesRemoved: 30_000,
      removed: [{ path: "f1", reason: `chunk ${damaged.chunk.slice(0, 12)} is in no index` }],
    };
    await expect(h.coordinator.repairSnapshots("t1", { dryRun: true, forget: true })).resolves.toEqual({
      snapshots: 2,
      repaired: [{ ...entry, forgotten: true }],
      unrepairable: [],
    });
    expect(await rows()).toEqual(rowsBefore);
    expect(await records()).toEqual(recordsBefore);
    expect(atDelete).toEqual([]);

    // The repair has the tenant to itself, shown on /metrics and named to a prune it refuses.
    const repairing = h.coordinator.repairSnapshots("t1", { dryRun: false, forget: true });
    expect(h.coordinator.runningWork().map((w) => w.kind)).toEqual(["repair-snapshots"]);
    expect(await h.metrics.registry.metrics()).toMatch(/^dumont_snapshot_work_running\{kind="repair-snapshots"\} 1$/m);
    await expect(h.coordinator.forget({ tenantId: "t1", policy: {}, prune: true, dryRun: false })).rejects.toThrow(
      /a prune or repair of tenant t1 is already running \(snapshot repair, for \d+s\)$/,
    );
    const report = await repairing;
    const repairedId = report.repaired[0]?.repaired ?? "";
    expect(report).toEqual({
      snapshots: 2,
      repaired: [{ ...entry, repaired: expect.stringMatching(/^[0-9a-f]{64}$/), forgotten: true }],
      unrepairable: [],
    });
    // The repair was listed before the damaged snapshot's record went, and the damaged one's row had gone first;
    // the tenant's catalogue was the repair's until its end.
    expect(atDelete).toEqual([{ deleted: damaged.row.id, listed: [kept.row.id, repairedId] }]);
    await withDatabaseLock(h.db, "dumont catalogue t1", async () => {});
    expect(order).toEqual([`deleted ${damaged.row.id}`, "catalogue changed"]);
    const listed = await rows();
    expect(listed.map((r) => r.id)).toEqual([kept.row.id, repairedId]);
    expect(await records()).toEqual([kept.row.id, repairedId].sort());
    // In the damaged one's place: its time, workspace, host and path; the files it holds, and their bytes.
    expect(listed[1]).toMatchObject({
      tenant_id: "t1",
      host_id: "h-repair",
      workspace_id: "w",
      path: "/w",
      files: 1,
      bytes_total: 20_000,
      created_at: damaged.row.created_at,
      repaired_from: damaged.row.id,
    });
    expect(listed[0].repaired_from).toBeNull();
    expect((await (await repository(kept.key)).findSnapshot(repairedId)).repairedFrom).toBe(damaged.row.id);
    const manifest = await h.coordinator.readManifest(listed[1]);
    expect(manifest.entries.map((e) => e.path)).toEqual(["f0"]);
    expect(h.logged).toContainEqual(
      expect.objectContaining({ msg: "snapshots repaired", tenantId: "t1", forgotten: [damaged.row.id] }),
    );
    await expect(h.coordinator.check("t1", {})).resolves.toMatchObject({ ok: true, problems: [] });
  });

  it("keeps the damaged snapshot beside its repair without forget; repaired again with it, the repair is found, not made again", async () => {
    const kept = await snapshotOf([randomBytes(20_000)]);
    const damaged = await damagedSnapshot(kept);
    // A dry run only reads, as a check: it runs beside a snapshot, which a repair waits for.
    const running = await startedIn(h);
    await expect(h.coordinator.repairSnapshots("t1", { dryRun: true })).resolves.toMatchObject({
      repaired: [expect.objectContaining({ snapshot: damaged.row.id })],
    });
    await expect(h.coordinator.repairSnapshots("t1", { dryRun: false })).rejects.toThrow(
      /1 snapshot, restore or check of tenant t1 is running \(snapshot of \/w on host h-repair, for \d+s\); repair the snapshots again when it has ended$/,
    );
    await finishIn(h)(running);
    atDelete.length = 0;
    const others = (await rows()).map((r) => r.id).filter((id) => id !== damaged.row.id);
    // The damaged row's time to the microsecond (a row's default, now(), keeps them; a Date does not).
    await sql`update snapshots set created_at = created_at + interval '123 microseconds' where id = ${damaged.row.id}`.execute(
      h.db,
    );

    // The catalogue failing to list the repair stops it before the damaged snapshot is forgotten: UNAVAILABLE,
    // saying to run it again, the repair committed and found by the next run.
    const insertInto = h.db.insertInto.bind(h.db);
    const failing = vi.spyOn(h.db, "insertInto").mockImplementation(((table: "snapshots") =>
      table !== "snapshots"
        ? insertInto(table)
        : {
            values: () => ({ onConflict: () => ({ execute: () => Promise.reject(new Error("disk full")) }) }),
          }) as never);
    const refused = await h.coordinator
      .repairSnapshots("t1", { dryRun: false, forget: true, ids: [damaged.row.id] })
      .catch((e: unknown) => e);
    failing.mockRestore();
    expect(refused).toBeInstanceOf(ConnectError);
    expect((refused as ConnectError).code).toBe(Code.Unavailable);
    expect((refused as ConnectError).rawMessage).toMatch(
      new RegExp(
        `the catalogue could not list it \\(disk full\\): .* ${damaged.row.id} was not forgotten; run the repair again$`,
      ),
    );
    expect((await rows()).map((r) => r.id).sort()).toEqual([...others, damaged.row.id].sort());
    expect(atDelete).toEqual([]);

    const once = await h.coordinator.repairSnapshots("t1", { dryRun: false, ids: [damaged.row.id.slice(0, 10)] });
    expect(once).toMatchObject({
      snapshots: 1,
      repaired: [
        {
          snapshot: damaged.row.id,
          reused: true,
          forgotten: false,
          removed: [{ path: "f1", reason: expect.stringMatching(/is in pack \w{12}, which the store no longer has$/) }],
        },
      ],
    });
    const repairedId = once.repaired[0].repaired!;
    // Listed right after the damaged one, at its very time; NEW is not the damaged one's.
    const listed = await listSnapshots(h.db, { tenantId: "t1" });
    expect(listed.map((r) => r.id).sort()).toEqual([...others, damaged.row.id, repairedId].sort());
    expect(listed[listed.findIndex((r) => r.id === damaged.row.id) + 1]).toMatchObject({
      id: repairedId,
      repaired_from: damaged.row.id,
      bytes_stored: 0,
      bytes_new: 0,
    });
    const { rows: same } = await sql<{ n: number }>`select count(*)::int as n from snapshots a join snapshots b
      on a.repaired_from = b.id and a.created_at = b.created_at`.execute(h.db);
    expect(same[0].n).toBe(1);
    expect(atDelete).toEqual([]);

    const again = await h.coordinator.repairSnapshots("t1", { dryRun: false, forget: true, ids: [damaged.row.id] });
    expect(again.repaired).toEqual([expect.objectContaining({ repaired: repairedId, reused: true, forgotten: true })]);
    expect((await rows()).map((r) => r.id).sort()).toEqual([...others, repairedId].sort());
    expect(await records()).toEqual([...others, repairedId].sort());
    expect(atDelete.map((d) => ({ ...d, listed: d.listed.sort() }))).toEqual([
      { deleted: damaged.row.id, listed: [...others, repairedId].sort() },
    ]);
    // Named, as list names it: one its repository does not hold is NOT_FOUND, not a repair of nothing.
    const gone = await h.coordinator
      .repairSnapshots("t1", { dryRun: true, ids: [damaged.row.id] })
      .catch((e: unknown) => e);
    expect(gone).toBeInstanceOf(ConnectError);
    expect((gone as ConnectError).code).toBe(Code.NotFound);
    expect((gone as ConnectError).rawMessage).toMatch(new RegExp(`^no snapshot ${damaged.row.id} in file://`));
  });

  it("repairs a tenant whose first read met a pack another replica was writing", async () => {
    const kept = await snapshotOf([randomBytes(20_000)]);
    const damaged = await damagedSnapshot(kept);
    // The read that decides whether there is anything to repair holds a shared lock only, and meets a pack without
    // its index object yet; the repair, under the exclusive lock, does not (the pack is indexed by then).
    packBeingWritten = 1;
    const report = await h.coordinator.repairSnapshots("t1", { dryRun: false, forget: true, ids: [damaged.row.id] });
    expect(packBeingWritten).toBe(0);
    expect(report.repaired).toEqual([expect.objectContaining({ snapshot: damaged.row.id, forgotten: true })]);
  });

  it("stops a repair whose caller is gone, having written nothing", async () => {
    const kept = await snapshotOf([randomBytes(20_000)]);
    const damaged = await damagedSnapshot(kept);
    const before = { rows: (await rows()).map((r) => r.id), records: await records() };
    const gone = new AbortController();
    gone.abort(new Error("the caller went away"));
    for (const dryRun of [true, false]) {
      await expect(
        h.coordinator.repairSnapshots("t1", { dryRun, forget: true, ids: [damaged.row.id], signal: gone.signal }),
      ).rejects.toThrow("the caller went away");
    }
    expect({ rows: (await rows()).map((r) => r.id), records: await records() }).toEqual(before);
    // Its lock released: the repair runs once asked again.
    const report = await h.coordinator.repairSnapshots("t1", { dryRun: false, forget: true, ids: [damaged.row.id] });
    expect(report.repaired).toEqual([expect.objectContaining({ snapshot: damaged.row.id, forgotten: true })]);
  });

  it("repairs a tenant with nothing to repair without taking its catalogue's lock", async () => {
    await snapshotOf([randomBytes(10_000)]);
    // The catalogue's lock held elsewhere (another replica's commit): a repair that took it would wait here.
    let release = () => {};
    let holding = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    const acquired = new Promise<void>((resolve) => (holding = resolve));
    const other = withDatabaseLock(h.db, "dumont catalogue t1", async () => {
      holding();
      await held;
    });
    await acquired;
    try {
      const report = await h.coordinator.repairSnapshots("t1", { dryRun: false, forget: true });
      expect(report).toMatchObject({ repaired: [], unrepairable: [] });
      expect(report.snapshots).toBeGreaterThan(0);
    } finally {
      release();
      await other;
    }
  });
});

describe("SnapshotCoordinator: a damaged repository", () => {
  const h = useCoordinator("h-damaged");
  const finish = finishIn(h);

  it("answers a read of a snapshot whose record has a flipped byte with DATA_LOSS, naming the record", async () => {
    const row = await finish(await startedIn(h));
    const record = path.join(h.blobs, "tenants", "t1", "snapshots", row.id);
    const bytes = await fs.readFile(record);
    bytes[bytes.length >> 1] ^= 1;
    await fs.writeFile(record, bytes);
    // What `snapshot files` and `snapshot diff` read; the admin was answered "internal error" for it.
    const err = await h.coordinator.readManifest(row).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.DataLoss);
    expect((err as ConnectError).rawMessage).toBe(`snapshot ${row.id} does not match its id`);
  });
});

function many(n: number): { path: string; reason: string }[] {
  return Array.from({ length: n }, (_, i) => ({ path: `run/pipe-${i}`, reason: "a FIFO (named pipe)" }));
}

/** A sealed manifest of one file made of one chunk. */
function oneFile(key: Buffer, id: Buffer, size: number): Buffer {
  return oneFileAt(key, "weights.bin", id, size);
}

/** A sealed manifest of one file at `path`, of one chunk. */
function oneFileAt(key: Buffer, path: string, id: Buffer, size: number): Buffer {
  return sealManifest(key, {
    version: 1,
    entries: [
      {
        type: "file",
        path,
        mode: 0o644,
        mtimeNs: "0",
        size,
        chunks: [id.toString("hex")],
        lengths: [size],
      },
    ],
  });
}

/**
 * A committed snapshot of files f0, f1, … of one chunk of `plains` each, sent as a real agent does: offered, then
 * only the chunks asked for sent, which go into one new pack. Returns the row, the tenant's key, the chunks and the
 * ids (hex) the control plane asked for.
 */
async function committedFiles(
  h: Harness,
  plains: readonly Buffer[],
  stats?: MessageInitShape<typeof SnapshotStatsSchema>,
) {
  const { snapshot, requestId, key } = await startedIn(h);
  const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
    h.coordinator.onAgentMessage(h.session, create(AgentMessageSchema, { msg }));
  const chunks = plains.map((plain) => ({ plain, ...chunkCodec.sealChunk(key, plain) }));
  const asked = await offered(
    agentSends,
    h.sent,
    requestId,
    0n,
    chunks.map((c) => c.id),
  );
  const wanted = new Set(asked.map((id) => Buffer.from(id).toString("hex")));
  const sent = chunks.filter((c) => wanted.has(c.id.toString("hex")));
  agentSends({
    case: "snapshotChunks",
    value: {
      requestId,
      epoch: 0n,
      chunks: sent.map((c) => ({ id: c.id, blob: c.blob, plainLength: c.plain.length })),
    },
  });
  const entries = chunks.flatMap((c, i) => sameChunkFiles([`f${i}`], c.id, c.plain.length));
  agentSends({
    case: "snapshotCommit",
    value: { requestId, epoch: 0n, manifest: sealManifest(key, { entries }), ...(stats ? { stats } : {}) },
  });
  return { row: await snapshot, key, chunks, asked: [...wanted] };
}

/** A committed snapshot of files a, b and c (one chunk of 5,000 bytes each, the same) whose manifest is three parts. */
async function threePartSnapshot(h: Harness) {
  const { snapshot, requestId, key } = await startedIn(h);
  const plain = randomBytes(5_000);
  const chunk = chunkCodec.sealChunk(key, plain);
  const parts = sealManifestParts(key, sameChunkFiles(["a", "b", "c"], chunk.id, plain.length), { partBytes: 100 });
  const agentSends = (msg: MessageInitShape<typeof AgentMessageSchema>["msg"]) =>
    h.coordinator.onAgentMessage(h.session, create(AgentMessageSchema, { msg }));
  await offered(agentSends, h.sent, requestId, 0n, [chunk.id]);
  agentSends({
    case: "snapshotChunks",
    value: { requestId, epoch: 0n, chunks: [{ id: chunk.id, blob: chunk.blob, plainLength: plain.length }] },
  });
  for (const index of [0, 1]) {
    agentSends({ case: "snapshotManifestPart", value: { requestId, epoch: 0n, index, part: parts[index] } });
  }
  agentSends({ case: "snapshotCommit", value: { requestId, epoch: 0n, manifest: parts[2], manifestParts: 3 } });
  return snapshot;
}

/** Manifest entries of files that are each one chunk, the same one. */
function sameChunkFiles(names: string[], chunkId: Buffer, length: number) {
  return names.map((name) => ({
    type: "file" as const,
    path: name,
    mode: 0o644,
    mtimeNs: "0",
    size: length,
    chunks: [chunkId.toString("hex")],
    lengths: [length],
  }));
}
