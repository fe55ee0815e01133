import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { agentPaths } from "../platform/paths.js";
import { loadIdentity } from "./identity.js";

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
});
