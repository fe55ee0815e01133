import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ensureTenant } from "../db/credential-repository.js";
import { type Db, openDatabase } from "../db/database.js";
import { openTestDatabase } from "../db/test-database.js";
import { capturingLogger } from "../test-logger.js";
import { loadMasterKey, parseMasterKey, TenantKeys } from "./tenant-keys.js";

describe("the master key and tenant keys", () => {
  let db: Db;
  let close: () => Promise<void>;
  let dir: string;
  beforeAll(async () => {
    ({ db, close } = await openTestDatabase());
    await ensureTenant(db, "t1", "tenant one");
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-master-"));
  });
  afterAll(async () => {
    await close();
    await fs.rm(dir, { recursive: true, force: true });
  });
  const stored = async () => (await db.selectFrom("tenant_keys").selectAll().execute()).length;

  it("makes a master key once, 0600, and never again while tenant keys wrapped by one are stored", async () => {
    const dataDir = path.join(dir, "a");
    await fs.mkdir(dataDir, { mode: 0o700 }); // as the control plane makes it
    const master = await loadMasterKey(dataDir, undefined, stored);
    const file = path.join(dataDir, "master.key");
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    expect(await loadMasterKey(dataDir, undefined, stored)).toEqual(master);
    const keys = new TenantKeys(db, master);
    const tenantKey = await keys.get("t1");
    expect(tenantKey).toHaveLength(32);

    // The file is lost (a new data dir, a volume that did not mount): no new key is made over stored ones.
    await fs.rm(file);
    await expect(loadMasterKey(dataDir, undefined, stored)).rejects.toThrow(
      /no master key: .*the database holds 1 tenant key\(s\) wrapped by one; put that master.key back/,
    );
    // Another master key (from the environment) fails at start, naming the variable and the file.
    const other = randomBytes(32).toString("hex");
    await expect(new TenantKeys(db, await loadMasterKey(dataDir, other, stored)).verify()).rejects.toThrow(
      /cannot unwrap the data key of tenant t1: the master key \(DUMONT_MASTER_KEY or <data-dir>\/master.key\)/,
    );
    // The right one opens it.
    const fresh = new TenantKeys(db, await loadMasterKey(dataDir, master.toString("hex"), stored));
    await fresh.verify();
    expect(await fresh.get("t1")).toEqual(tenantKey);
  });

  it("refuses a key file others can read, and a key that is not 32 random bytes", async () => {
    const dataDir = path.join(dir, "b");
    await fs.mkdir(dataDir, { mode: 0o700 }); // as the control plane makes it
    await fs.writeFile(path.join(dataDir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o644 });
    await fs.chmod(path.join(dataDir, "master.key"), 0o644);
    await expect(loadMasterKey(dataDir, undefined, stored)).rejects.toThrow(
      /master\.key is open to other users \(mode 0644\): run `chmod 600 .*` and start again, and if others did read it, treat it as leaked/,
    );
    for (const bad of ["x".repeat(43), `!!!!${"A".repeat(40)}`, "0".repeat(64), `${"A".repeat(43)}=`, "abc"]) {
      expect(() => parseMasterKey(bad, "DUMONT_MASTER_KEY"), bad).toThrow(
        /DUMONT_MASTER_KEY must hold 32 random bytes/,
      );
    }
    expect(parseMasterKey(randomBytes(32).toString("base64"), "k")).toHaveLength(32);
  });

  it("refuses a wrapped key that is not whole (a short tag would otherwise pass)", async () => {
    const master = randomBytes(32);
    await ensureTenant(db, "t2", "tenant two");
    await db
      .insertInto("tenant_keys")
      .values({ tenant_id: "t2", wrapped_key: randomBytes(16).toString("base64") })
      .execute();
    await expect(new TenantKeys(db, master).get("t2")).rejects.toThrow(/cannot unwrap the data key of tenant t2/);
  });

  it("keeps tenant keys out of log lines, at the top or inside a protocol message", async () => {
    const lines: string[] = [];
    const log = capturingLogger(lines);
    const secret = "c2VjcmV0IGtleSBtYXRlcmlhbA==";
    log.info(
      { tenantKey: secret, cmd: { tenantKey: secret }, message: { msg: { value: { tenantKey: secret } } } },
      "x",
    );
    log.flush();
    for (const deadline = Date.now() + 30_000; !lines.join("").includes('"msg":"x"') && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(lines.join("")).toContain('"msg":"x"');
    expect(lines.join("")).not.toContain(secret);
  });
});

describe("a tenant's new key in the embedded database", () => {
  it.skipIf(process.env.DATABASE_URL !== undefined)(
    "is made durable before it is returned: PGlite never fsyncs, so every file of the database is",
    async () => {
      // PGlite's filesystem takes fsync for done: a committed key stays in the page cache for seconds, and a
      // power loss then would leave the tenant's repository (sealed with the key, and durable) without its key.
      const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-durable-"));
      const db = await openDatabase({ dataDir });
      const opened = new Set<string>();
      const open = fs.open.bind(fs);
      const probe = await open(dataDir, "r");
      const sync = vi.spyOn(Object.getPrototypeOf(probe) as { sync(): Promise<void> }, "sync");
      await probe.close();
      const spy = vi.spyOn(fs, "open").mockImplementation(async (at, ...rest) => {
        opened.add(String(at));
        return open(at, ...rest);
      });
      try {
        await ensureTenant(db, "t-durable", "durable");
        await new TenantKeys(db, randomBytes(32)).get("t-durable");
        const files: string[] = [];
        const walk = async (at: string): Promise<void> => {
          files.push(at);
          for (const e of await fs.readdir(at, { withFileTypes: true })) {
            if (e.isDirectory()) await walk(path.join(at, e.name));
            else if (e.isFile()) files.push(path.join(at, e.name));
          }
        };
        await walk(path.join(dataDir, "pglite"));
        expect(files.filter((f) => !opened.has(f))).toEqual([]);
        expect(sync.mock.calls.length).toBeGreaterThanOrEqual(files.length);
      } finally {
        spy.mockRestore();
        sync.mockRestore();
        await db.destroy();
        await fs.rm(dataDir, { recursive: true, force: true });
      }
    },
  );
});
