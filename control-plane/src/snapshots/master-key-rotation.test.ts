// Master key rotation: every tenant key wrapped again, the tenant keys themselves unchanged; a stop at any step
// finished by running it again; a key neither master opens changes nothing; keys from the environment.
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Code } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ensureTenant } from "../db/credential-repository.js";
import type { Db } from "../db/database.js";
import { openTestDatabase } from "../db/test-database.js";
import { rewrapTenantKeys, rotateMasterKey } from "./master-key-rotation.js";
import { loadMasterKey, TenantKeys, wrapTenantKey } from "./tenant-keys.js";

/** makeDurable's calls: the rotation must make its commit durable before it reports the old key unused. */
const durable = vi.hoisted(() => ({ calls: 0 }));
vi.mock("../db/database.js", async (importOriginal) => {
  const real = await importOriginal<typeof import("../db/database.js")>();
  return {
    ...real,
    makeDurable: (db: Db) => {
      durable.calls++;
      return real.makeDurable(db);
    },
  };
});

describe("master key rotation", () => {
  let db: Db;
  let close: () => Promise<void>;
  let dataDir: string;
  /** The tenants' data keys, made under the data dir's first master key. */
  let dataKeys: Map<string, Buffer>;
  let first: Buffer;

  const stored = async () => (await db.selectFrom("tenant_keys").selectAll().execute()).length;
  const load = () => loadMasterKey(dataDir, undefined, stored);
  const wrapped = async () =>
    Object.fromEntries(
      (await db.selectFrom("tenant_keys").selectAll().execute()).map((r) => [r.tenant_id, r.wrapped_key]),
    );
  /** Whether `master` opens every tenant's key, and they are the keys made at the start. */
  const opensAll = async (master: Buffer) => {
    const keys = new TenantKeys(db, master);
    await keys.verify();
    for (const [tenant, key] of dataKeys) expect(await keys.get(tenant)).toEqual(key);
  };
  const keyFile = async (name: string, key: Buffer, mode = 0o600) => {
    const file = path.join(dataDir, "..", name);
    await fs.writeFile(file, `${key.toString("hex")}\n`, { mode });
    await fs.chmod(file, mode);
    return file;
  };

  beforeEach(async () => {
    ({ db, close } = await openTestDatabase());
    const root = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-rotate-"));
    dataDir = path.join(root, "data");
    await fs.mkdir(dataDir, { mode: 0o700 });
    first = await load();
    const keys = new TenantKeys(db, first);
    dataKeys = new Map();
    for (const tenant of ["acme", "globex"]) {
      await ensureTenant(db, tenant, tenant);
      dataKeys.set(tenant, await keys.get(tenant));
    }
  });
  afterEach(async () => {
    await close();
    await fs.rm(path.dirname(dataDir), { recursive: true, force: true });
  });

  it("wraps every tenant key with a new key file, 0600; the tenant keys stay, the old master opens none", async () => {
    const result = await rotateMasterKey({ db, dataDir });
    const file = path.join(dataDir, "master.key");
    expect(result).toEqual({ rewrapped: 2, alreadyNew: 0, newKeyAt: file, fromEnvironment: false });
    const second = await load();
    expect(second).not.toEqual(first);
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    expect(await fs.readdir(dataDir)).toEqual(["master.key"]);
    await opensAll(second);
    await expect(new TenantKeys(db, first).verify()).rejects.toThrow(/cannot unwrap the data key of tenant acme/);

    // --new-key-file: that key, not a random one.
    const chosen = randomBytes(32);
    await rotateMasterKey({ db, dataDir, newKeyFile: await keyFile("chosen.key", chosen) });
    expect(await load()).toEqual(chosen);
    await opensAll(chosen);
  });

  it("a control plane still running with the old master key makes no new tenant's key after the rotation", async () => {
    const running = new TenantKeys(db, first); // started before the rotation, never stopped for it
    await ensureTenant(db, "initech", "initech");
    const second = randomBytes(32);
    await rewrapTenantKeys(db, first, second);
    // Wrapped by the old key, the new tenant's key would open with nothing once that key is destroyed.
    await expect(running.get("initech")).rejects.toThrow(
      /wrapped by another master key than this control plane's \(the master key was rotated since it started\)/,
    );
    await expect(running.get("initech")).rejects.toMatchObject({ code: Code.FailedPrecondition });
    expect(await stored()).toBe(2);
    const restarted = new TenantKeys(db, second);
    const made = await restarted.get("initech");
    expect(await new TenantKeys(db, second).get("initech")).toEqual(made);
  });

  it("finishes a rotation stopped after the database was re-wrapped; the control plane will not start meanwhile", async () => {
    const next = randomBytes(32);
    await fs.writeFile(path.join(dataDir, "master.key.next"), next.toString("hex"), { mode: 0o600 });
    await rewrapTenantKeys(db, first, next); // committed; then the stop, before the rename
    await expect(load()).rejects.toThrow(
      `a master key rotation did not finish (${path.join(dataDir, "master.key.next")} is there): run \`dumont master-key rotate\``,
    );
    const result = await rotateMasterKey({ db, dataDir });
    expect(result).toMatchObject({ rewrapped: 0, alreadyNew: 2 });
    expect(await load()).toEqual(next);
    await opensAll(next);
  });

  it("finishes a rotation stopped before the database changed, with the key it had chosen", async () => {
    const next = randomBytes(32);
    await fs.writeFile(path.join(dataDir, "master.key.next"), next.toString("hex"), { mode: 0o600 });
    // Another key named now is refused: that rotation must finish first.
    await expect(
      rotateMasterKey({ db, dataDir, newKeyFile: await keyFile("other.key", randomBytes(32)) }),
    ).rejects.toThrow(/a rotation to another master key did not finish .*master\.key\.next holds it/);
    expect(await rotateMasterKey({ db, dataDir })).toMatchObject({ rewrapped: 2, alreadyNew: 0 });
    expect(await load()).toEqual(next);
    await opensAll(next);
  });

  it("keeps the key it made when the database's answer to the commit is lost, and finishes with it next time", async () => {
    // The connection drops during COMMIT: the database took the keys wrapped by the new master key, the command
    // heard an error. Removing master.key.next then left no copy of the only key that opens them.
    const lostAnswer = new Proxy(db, {
      get(target, name) {
        if (name === "transaction") {
          return () => ({
            execute: async (work: Parameters<ReturnType<Db["transaction"]>["execute"]>[0]) => {
              await target.transaction().execute(work);
              throw new Error("Connection terminated unexpectedly");
            },
          });
        }
        const value = Reflect.get(target, name);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    await expect(rotateMasterKey({ db: lostAnswer, dataDir })).rejects.toThrow("Connection terminated unexpectedly");
    expect((await fs.readdir(dataDir)).sort()).toEqual(["master.key", "master.key.next"]);
    await expect(load()).rejects.toThrow(/master\.key\.next/); // the control plane will not start meanwhile
    expect(await rotateMasterKey({ db, dataDir })).toMatchObject({ rewrapped: 0, alreadyNew: 2 });
    await opensAll(await load());
  });

  it("changes nothing when a tenant key is wrapped by neither master key, naming the tenant", async () => {
    await ensureTenant(db, "initech", "initech");
    await db
      .insertInto("tenant_keys")
      .values({ tenant_id: "initech", wrapped_key: wrapTenantKey(randomBytes(32), randomBytes(32), "initech") })
      .execute();
    const before = await wrapped();
    await expect(rotateMasterKey({ db, dataDir })).rejects.toThrow(
      "the data key of tenant initech is wrapped by neither the current master key nor the new one: nothing was changed",
    );
    expect(await wrapped()).toEqual(before);
    expect(await fs.readdir(dataDir)).toEqual(["master.key"]); // the new key it had made is gone
    expect(await load()).toEqual(first);
  });

  it("with DUMONT_MASTER_KEY: needs --new-key-file, leaves the data dir's file alone, and can mend a mixed table", async () => {
    const fromEnv = first.toString("hex");
    await expect(rotateMasterKey({ db, dataDir, fromEnv })).rejects.toThrow(
      /comes from DUMONT_MASTER_KEY, which this command cannot change: .*--new-key-file/,
    );
    await expect(
      rotateMasterKey({ db, dataDir, fromEnv, newKeyFile: await keyFile("same.key", first) }),
    ).rejects.toThrow(/holds the master key in use \(DUMONT_MASTER_KEY\)/);
    await expect(
      rotateMasterKey({ db, dataDir, fromEnv, newKeyFile: await keyFile("open.key", randomBytes(32), 0o644) }),
    ).rejects.toThrow(/open to other users \(mode 0644\)/);

    const next = randomBytes(32);
    const nextFile = await keyFile("next.key", next);
    const durableBefore = durable.calls;
    expect(await rotateMasterKey({ db, dataDir, fromEnv, newKeyFile: nextFile })).toEqual({
      rewrapped: 2,
      alreadyNew: 0,
      newKeyAt: nextFile,
      fromEnvironment: true,
    });
    expect(await load()).toEqual(first); // the file is not what the control planes read here
    expect(durable.calls).toBe(durableBefore + 1); // made durable before the old key is said to open nothing
    await opensAll(next);

    // A tenant's key wrapped by the old key (as a control plane left running with it made before it was refused
    // that, in an earlier version): the next start says so, and the same command, run with the old key, wraps
    // that one again.
    await ensureTenant(db, "umbrella", "umbrella");
    const umbrella = randomBytes(32);
    await db
      .insertInto("tenant_keys")
      .values({ tenant_id: "umbrella", wrapped_key: wrapTenantKey(first, umbrella, "umbrella") })
      .execute();
    dataKeys.set("umbrella", umbrella);
    await expect(new TenantKeys(db, next).verify()).rejects.toThrow(
      /the data keys of 1 of 3 tenants are wrapped by another master key than this one \(umbrella\).*DUMONT_MASTER_KEY=\$\(cat OLD_KEY_FILE\) dumont master-key rotate --new-key-file/,
    );
    expect(await rotateMasterKey({ db, dataDir, fromEnv, newKeyFile: nextFile })).toMatchObject({
      rewrapped: 1,
      alreadyNew: 2,
    });
    await opensAll(next);
  });
});
