import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { agentPaths } from "../platform/paths.js";
import { completeRenewal, loadIdentity, storeRenewedIdentity } from "./identity.js";
import { selfSignedPair as pair } from "./testing.js";

describe("loadIdentity", () => {
  let dir: string;
  let current: { keyPem: string; certPem: string };
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-identity-"));
    const paths = agentPaths(dir);
    current = await pair();
    await fs.mkdir(paths.identityDir, { mode: 0o700 });
    await fs.writeFile(paths.privateKey, current.keyPem, { mode: 0o600 });
    await fs.writeFile(paths.certificate, current.certPem);
    await fs.writeFile(paths.caCertificate, "CA");
    await fs.writeFile(paths.enrollment, JSON.stringify({ hostId: "h-1", server: "cp:8443" }));
  });
  afterEach(() => fs.rm(dir, { recursive: true, force: true }));

  it("loads an identity whose key only its owner may read", async () => {
    await expect(loadIdentity(dir)).resolves.toMatchObject({ hostId: "h-1", ...current });
  });

  it("refuses a key and a certificate that do not belong together, naming both files", async () => {
    const paths = agentPaths(dir);
    await fs.writeFile(paths.certificate, (await pair()).certPem);
    await expect(loadIdentity(dir)).rejects.toThrow(
      `${paths.certificate} is not the certificate of the key in ${paths.privateKey}`,
    );
  });

  it("refuses a private key that other users may read, naming the file and the fix", async () => {
    const key = agentPaths(dir).privateKey;
    await fs.chmod(key, 0o640);
    await expect(loadIdentity(dir)).rejects.toThrow(
      `${key} is open to other users (mode 0640): run \`chmod 600 ${key}\` and start again`,
    );
  });

  describe("a stored renewal", () => {
    // What storeRenewedIdentity leaves at each step, as a crash (or another agent process) would find it: what
    // loads next is one matching pair.
    const renewalFile = (p: { keyPem: string; certPem: string }) =>
      fs.writeFile(agentPaths(dir).renewal, `${p.keyPem}\n${p.certPem}\n`, { mode: 0o600 });
    const loaded = async () => {
      const { keyPem, certPem } = await loadIdentity(dir);
      return { keyPem: keyPem.trim(), certPem: certPem.trim() };
    };
    const trimmed = (p: { keyPem: string; certPem: string }) => ({
      keyPem: p.keyPem.trim(),
      certPem: p.certPem.trim(),
    });
    const renewalLeft = () =>
      fs.access(agentPaths(dir).renewal).then(
        () => true,
        () => false,
      );

    it("is installed at the next load when a crash came before it was", async () => {
      const next = await pair();
      await renewalFile(next);
      expect(await loaded()).toEqual(trimmed(next));
      expect(await renewalLeft()).toBe(false);
    });

    it("is installed whole when a crash came after the key was copied and before the certificate", async () => {
      const next = await pair();
      await renewalFile(next);
      await fs.writeFile(agentPaths(dir).privateKey, next.keyPem, { mode: 0o600 });
      expect(await loaded()).toEqual(trimmed(next));
    });

    it("is dropped, keeping the current pair, when its certificate is not for its key", async () => {
      const [a, b] = [await pair(), await pair()];
      await renewalFile({ keyPem: a.keyPem, certPem: b.certPem });
      await expect(loadIdentity(dir)).resolves.toMatchObject(current);
      expect(await renewalLeft()).toBe(false);
    });

    it("is installed once when two processes finish it at the same time, the key its owner's only", async () => {
      const next = await pair();
      await renewalFile(next);
      await Promise.all([completeRenewal(agentPaths(dir)), completeRenewal(agentPaths(dir)), loadIdentity(dir)]);
      expect(await loaded()).toEqual(trimmed(next));
      expect((await fs.stat(agentPaths(dir).privateKey)).mode & 0o777).toBe(0o600);
      const again = await pair();
      await storeRenewedIdentity(agentPaths(dir), again.keyPem, again.certPem);
      expect(await loaded()).toEqual(trimmed(again));
    });
  });
});
