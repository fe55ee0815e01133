import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { agentPaths } from "../platform/paths.js";
import { loadIdentity, storeRenewedIdentity } from "./identity.js";

describe("loadIdentity", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-identity-"));
    const paths = agentPaths(dir);
    await fs.mkdir(paths.identityDir, { mode: 0o700 });
    await fs.writeFile(paths.privateKey, "KEY", { mode: 0o600 });
    await fs.writeFile(paths.certificate, "CERT");
    await fs.writeFile(paths.caCertificate, "CA");
    await fs.writeFile(paths.enrollment, JSON.stringify({ hostId: "h-1", server: "cp:8443" }));
  });
  afterEach(() => fs.rm(dir, { recursive: true, force: true }));

  it("loads an identity whose key only its owner may read", async () => {
    await expect(loadIdentity(dir)).resolves.toMatchObject({ hostId: "h-1", keyPem: "KEY" });
  });

  it("refuses a private key that other users may read, naming the file and the fix", async () => {
    const key = agentPaths(dir).privateKey;
    await fs.chmod(key, 0o640);
    await expect(loadIdentity(dir)).rejects.toThrow(
      `${key} is open to other users (mode 0640): run \`chmod 600 ${key}\` and start again`,
    );
  });

  describe("after a renewal a crash interrupted", () => {
    // The steps of storeRenewedIdentity, each as a crash would leave it: what loads next is one matching pair.
    const files = async () => {
      const paths = agentPaths(dir);
      const read = (f: string) => fs.readFile(f, "utf8").catch(() => undefined);
      return {
        key: await read(paths.privateKey),
        cert: await read(paths.certificate),
        nextKey: await read(paths.renewedPrivateKey),
        nextCert: await read(paths.renewedCertificate),
      };
    };

    it("keeps the current pair when only the new key was written", async () => {
      await fs.writeFile(agentPaths(dir).renewedPrivateKey, "KEY2", { mode: 0o600 });
      await expect(loadIdentity(dir)).resolves.toMatchObject({ keyPem: "KEY", certPem: "CERT" });
      expect(await files()).toEqual({ key: "KEY", cert: "CERT", nextKey: undefined, nextCert: undefined });
    });

    it("takes the new pair once both were written, before either was renamed", async () => {
      await fs.writeFile(agentPaths(dir).renewedPrivateKey, "KEY2", { mode: 0o600 });
      await fs.writeFile(agentPaths(dir).renewedCertificate, "CERT2");
      await expect(loadIdentity(dir)).resolves.toMatchObject({ keyPem: "KEY2", certPem: "CERT2" });
      expect(await files()).toEqual({ key: "KEY2", cert: "CERT2", nextKey: undefined, nextCert: undefined });
    });

    it("finishes the swap when the key was renamed and the certificate not yet", async () => {
      await fs.writeFile(agentPaths(dir).privateKey, "KEY2", { mode: 0o600 });
      await fs.writeFile(agentPaths(dir).renewedCertificate, "CERT2");
      await expect(loadIdentity(dir)).resolves.toMatchObject({ keyPem: "KEY2", certPem: "CERT2" });
      expect(await files()).toEqual({ key: "KEY2", cert: "CERT2", nextKey: undefined, nextCert: undefined });
    });

    it("stores a renewal whole, the key still readable by its owner only", async () => {
      await storeRenewedIdentity(agentPaths(dir), "KEY3", "CERT3");
      await expect(loadIdentity(dir)).resolves.toMatchObject({ keyPem: "KEY3", certPem: "CERT3" });
      expect((await fs.stat(agentPaths(dir).privateKey)).mode & 0o777).toBe(0o600);
    });
  });
});
