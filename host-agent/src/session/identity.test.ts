import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type AgentPaths, agentPaths } from "../platform/paths.js";
import {
  completeRenewal,
  loadIdentity,
  normalizeServerUrl,
  parseServer,
  serverUrlProblem,
  storeRenewedIdentity,
} from "./identity.js";
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
    // Modes given, not the umask's (002 on many desktops, which refuseUnsafeDataDir would rightly refuse).
    await fs.writeFile(paths.certificate, current.certPem, { mode: 0o644 });
    await fs.writeFile(paths.caCertificate, "CA", { mode: 0o644 });
    await fs.writeFile(paths.enrollment, JSON.stringify({ hostId: "h-1", server: "cp:8443" }), { mode: 0o644 });
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

  describe("a data dir other users could slip another identity into", () => {
    // The attack: an unprivileged user renames identity/ aside in a data dir they may write and puts their own
    // identity and enrollment.json there; a root agent then connects as their host.
    it.each([
      ["the data dir", (p: AgentPaths) => p.dataDir, 0o777, ", the agent's data dir,"],
      ["identity/", (p: AgentPaths) => p.identityDir, 0o770, ", which holds the agent's key and certificates,"],
      ["enrollment.json", (p: AgentPaths) => p.enrollment, 0o666, ""],
      ["ca.crt", (p: AgentPaths) => p.caCertificate, 0o646, ""],
      ["agent.crt", (p: AgentPaths) => p.certificate, 0o664, ""],
    ])("is refused when %s may be written by others, naming it and the fix", async (_, which, mode, role) => {
      const file = which(agentPaths(dir));
      await fs.chmod(file, mode);
      await expect(loadIdentity(dir)).rejects.toThrow(
        `${file}${role} may be written by other users (mode 0${mode.toString(8)}): they could put another host's ` +
          `identity in place of this one's. Run \`chmod go-w ${file}\` and try again`,
      );
    });

    it.skipIf(process.getuid?.() !== 0)(
      "is refused when identity/ belongs to another user (not root), naming the owner and the fix",
      async () => {
        const paths = agentPaths(dir);
        await fs.chown(paths.identityDir, 65534, 65534);
        await expect(loadIdentity(dir)).rejects.toThrow(
          `${paths.identityDir}, which holds the agent's key and certificates, belongs to the user of uid 65534, not ` +
            `to the one the agent runs as (uid ${process.getuid?.()}) nor root`,
        );
      },
    );

    it("speaks of the identity directory, not of a renewal, when none is in progress", async () => {
      const paths = agentPaths(dir);
      await fs.chmod(paths.identityDir, 0o777);
      const err = await loadIdentity(dir).then(
        () => undefined,
        (e: Error) => e.message,
      );
      expect(err).toMatch(/identity, which holds the agent's key and certificates, may be written by other users/);
      expect(err).not.toMatch(/renewal/);
      // And completeRenewal() itself, with nothing to complete, has nothing to say about the directory.
      await expect(completeRenewal(paths)).resolves.toBeUndefined();
    });

    it("says that a data dir which is a file is not a directory, naming --data-dir", async () => {
      const file = path.join(dir, "a-file");
      await fs.writeFile(file, "");
      await expect(loadIdentity(file)).rejects.toThrow(
        `--data-dir (DUMONT_AGENT_DATA_DIR) ${file} is not a directory: pass the data dir this host was enrolled into`,
      );
      await expect(loadIdentity(path.join(file, "sub"))).rejects.toThrow(
        /is not a directory \(a part of its path is a file\)/,
      );
    });
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

describe("serverUrlProblem (--server)", () => {
  it.each([
    "https://cp.example.com:8443",
    "https://cp.example.com",
    "https://cp.example.com:8443/",
    "HTTPS://10.0.0.1:443",
    "https://[::1]:8443",
    "https://cp_1.internal:8443",
    "https://bücher.example:8443",
  ])("takes %s", (server) => {
    expect(serverUrlProblem(server)).toBeUndefined();
  });

  it.each([
    ["zzz", "has no https:// in front"],
    ["localhost:18101", "has no https:// in front"],
    ["grpcs://localhost:18101", "uses grpcs://, not https://"],
    ["https://localhost:18101/foo?x=1", "has a path, query or fragment"],
    ["https://localhost:18101#top", "has a path, query or fragment"],
    ["https://:8443", "names no host"],
    ["https://localhost:99999", 'has the port "99999", not a number from 1 to 65535'],
    ["https://localhost:http", 'has the port "http", not a number from 1 to 65535'],
    ["https://cp example:8443", 'has the host "cp example", which is neither a DNS name nor an IP address'],
    ["https://cp%41:8443", 'has the host "cp%41", which is neither a DNS name nor an IP address'],
  ])("refuses %s: it %s, showing the expected shape", (server, problem) => {
    expect(serverUrlProblem(server)).toBe(
      `--server ${problem}${problem.endsWith("fragment") ? ", which the agent gateway does not take" : ""}: got ` +
        `${JSON.stringify(server)}; it must look like https://HOST:8443 (the agent gateway; \`dumont host ` +
        "join-token create` prints it)",
    );
  });

  it("refuses credentials without repeating them", () => {
    const problem = serverUrlProblem("https://user:pw@localhost:18101", "--server (DUMONT_SERVER)");
    expect(problem).toMatch(/^--server \(DUMONT_SERVER\) carries a user name or password/);
    expect(problem).toContain('got "https://***@localhost:18101"');
    expect(problem).not.toContain("pw");
  });

  it("keeps its refusal of http:// (the API's address, most likely)", () => {
    expect(serverUrlProblem("http://cp:8000")).toBe(
      '--server must be the control plane\'s agent gateway, https://HOST:PORT (port 8443 by default; `dumont host join-token create` prints it), got "http://cp:8000"',
    );
  });

  it("is stored as https://HOST:PORT, an explicit default port kept", () => {
    expect(normalizeServerUrl("https://cp.example.com/")).toBe("https://cp.example.com:8443");
    expect(normalizeServerUrl("https://cp.example.com:443")).toBe("https://cp.example.com:443");
    expect(normalizeServerUrl("https://[::1]:9443")).toBe("https://[::1]:9443");
    expect(parseServer("https://cp.example.com:443").target).toBe("cp.example.com:443");
  });

  it("still dials what enrollments made before the check stored", () => {
    expect(parseServer("cp.example.com:9443").target).toBe("cp.example.com:9443");
    expect(parseServer("grpcs://cp.example.com").target).toBe("cp.example.com:8443");
    expect(parseServer("https://cp.example.com:9443/foo").target).toBe("cp.example.com:9443");
  });
});
