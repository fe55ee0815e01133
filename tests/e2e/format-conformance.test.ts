// Conformance of the repository format: snapshots written by the real tool (`dumont-agent snapshot create`, a
// child process) are listed, verified and restored by an independent reader written from repository/FORMAT.md
// alone (format-conformance/independent-reader.mjs, no code shared with repository/ or host-agent/), and what it
// restores is compared with the source byte for byte, mode for mode and microsecond for microsecond. A change to
// the format that FORMAT.md does not describe fails here.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { agentBin, repoRoot, runNode, tempDir } from "../support/processes.js";
import { describeExactly, type ExactEntry, treeDifferences } from "./format-conformance/exact-tree.js";

const readerBin = path.join(repoRoot, "tests/e2e/format-conformance/independent-reader.mjs");

const MiB = 1024 * 1024;
/** Small packs (the default is 32 MiB): a file several times this size spans packs. */
const PACK_SIZE = MiB;
/**
 * Tiny files added for the second snapshot. FORMAT.md: parts are cut from 1 MiB of entries on and never grow
 * past 4 MiB; each of these entries is some 230 bytes of JSON, so 30,000 make ~7 MB: at least 2 parts, whatever
 * the cut points.
 */
const MANY_FILES = 30_000;
const asRoot = process.getuid?.() === 0;

/** The reader's and the CLI's runs: a second snapshot's `show` prints ~30,000 entries. */
const run = (script: string, args: string[]) => runNode(script, args, {}, 60_000);

/** Runs a command that must succeed, returning its JSON output. */
async function json<T>(script: string, args: string[]): Promise<T> {
  const res = await run(script, args);
  if (res.code !== 0) throw new Error(`${path.basename(script)} ${args.join(" ")} exited ${res.code}: ${res.stderr}`);
  return JSON.parse(res.stdout) as T;
}

/** Sets a time to the nanosecond (Node's utimes stops at the microsecond); -h: a symlink's own. */
const touch = (file: string, seconds: string) => execFileSync("touch", ["-h", "-d", `@${seconds}`, file]);

interface SnapshotRecord {
  id: string;
  version: number;
  time: string;
  workspace: string;
  totals: { files: number; dirs: number; symlinks: number; bytes: number; chunks: number };
  manifest?: string;
  manifests?: string[];
}

interface ManifestEntry {
  type: "file" | "dir" | "symlink";
  path: string;
  linkOf?: string;
}

interface Shown {
  id: string;
  record: SnapshotRecord;
  root?: { mode: number; mtimeNs: string };
  parts: { id: string; entries: number; plainBytes: number; root: boolean }[];
  totals: SnapshotRecord["totals"];
  entries: ManifestEntry[];
}

interface VerifyReport {
  packs: { id: string; size: number; chunks: number }[];
  chunks: number;
  unindexedPacks: string[];
  snapshots: { id: string; version: number; parts: number; entries: number }[];
  manifestNonces: Record<string, boolean>;
  codecs: Record<string, Record<string, number>>;
  problems: string[];
}

/**
 * The awkward cases, each once: empty file and directory, nested directories, UTF-8 names with spaces (and one
 * outside the BMP, which UTF-16 orders otherwise than code points), symlinks (to a file, to a directory,
 * through another symlink, dangling), a hard-link group of three, files bigger than a pack, compressible
 * (LZ4) and incompressible ones, setuid/setgid files (restored without those bits), setgid and sticky
 * directories, a directory without write permission, times before 1970 and to the nanosecond, and owners.
 */
function buildWorkspace(ws: string): void {
  const at = (p: string) => path.join(ws, p);
  const write = (p: string, data: string | Buffer, mode?: number) => {
    fs.mkdirSync(path.dirname(at(p)), { recursive: true });
    fs.writeFileSync(at(p), data);
    if (mode !== undefined) fs.chmodSync(at(p), mode);
  };
  fs.mkdirSync(ws, { recursive: true });
  write("empty.txt", "");
  fs.mkdirSync(at("empty-dir"));
  write("a/b/c/deep.txt", "deep\n");
  write("ünïcødé dir/notes with spaces.md", "# notes\n");
  write("ünïcødé dir/\u{1F600} emoji.txt", "astral\n");
  write("ünïcødé dir/\uFF5E fullwidth.txt", "bmp\n");
  write("data/random.bin", randomBytes(3 * MiB)); // over the pack size, incompressible
  write("data/text.log", Array.from({ length: 40_000 }, (_, i) => `${i} INFO step ${i % 97} loss=0.${i}\n`).join(""));
  write("data/zeros.bin", Buffer.alloc(MiB + 12_345)); // LZ4 matches far longer than 255 bytes
  write("a/model.bin", randomBytes(200_000));
  fs.linkSync(at("a/model.bin"), at("data/model-link.bin"));
  fs.linkSync(at("a/model.bin"), at("model-third-link.bin"));
  fs.symlinkSync("a/b/c/deep.txt", at("link-to-file"));
  fs.symlinkSync("a/b", at("link-to-dir"));
  fs.symlinkSync("link-to-dir/c/deep.txt", at("through-link"));
  fs.symlinkSync("not-there-yet", at("dangling"));
  write("bin/setuid-tool", "#!/bin/sh\necho uid\n");
  write("bin/setgid-tool", "#!/bin/sh\necho gid\n");
  write("bin/sticky-file", "sticky\n");
  write("read-only.txt", "read only\n");
  write("shared/inside.txt", "in a setgid dir\n");
  fs.mkdirSync(at("tmp"));
  write("locked/secret.txt", "secret\n");
  write("old/1969.txt", "apollo\n");
  write("old/just-before-1970.txt", "-500 ns\n");
  write("times/late-in-its-microsecond.txt", "999 ns\n");
  fs.symlinkSync("1969.txt", at("old/old-link"));
  if (asRoot) {
    // Owners first: a chown clears setuid and setgid.
    write("owned/file.txt", "owned\n");
    fs.symlinkSync("file.txt", at("owned/link"));
    fs.chownSync(at("owned/file.txt"), 1234, 5678);
    fs.lchownSync(at("owned/link"), 1111, 2222);
    fs.chownSync(at("owned"), 4321, 8765);
    fs.chownSync(ws, 2222, 3333);
  }
  fs.chmodSync(at("bin/setuid-tool"), 0o4755);
  fs.chmodSync(at("bin/setgid-tool"), 0o2750);
  fs.chmodSync(at("bin/sticky-file"), 0o1644);
  fs.chmodSync(at("read-only.txt"), 0o444);
  fs.chmodSync(at("shared"), 0o2775);
  fs.chmodSync(at("tmp"), 0o1777);
  fs.chmodSync(at("locked/secret.txt"), 0o400);
  fs.chmodSync(at("locked"), 0o500);
  fs.chmodSync(ws, 0o750);
  // Times last: creating entries moves their directories' times.
  touch(at("old/1969.txt"), "-14182940.123456789");
  touch(at("old/just-before-1970.txt"), "-0.000000500");
  touch(at("old/old-link"), "-1.5");
  touch(at("old"), "-86400.000001");
  touch(at("times/late-in-its-microsecond.txt"), "1700000000.999999999");
  touch(at("link-to-file"), "1600000000.123456789");
  touch(at("a/model.bin"), "1650000000.5");
  touch(ws, "1500000000.000000001");
}

/** Changes for the second snapshot, and MANY_FILES tiny files that make its manifest several parts. */
function changeWorkspace(ws: string): void {
  const at = (p: string) => path.join(ws, p);
  fs.appendFileSync(at("data/text.log"), "appended\n".repeat(1000));
  fs.rmSync(at("a/b/c/deep.txt")); // link-to-file and through-link now dangle
  fs.writeFileSync(at("new.txt"), "new\n");
  fs.chmodSync(at("read-only.txt"), 0o640);
  fs.writeFileSync(at("a/model.bin"), randomBytes(150_000)); // in place: all three links change
  // One link of the group becomes a copy of its bytes: the same chunks, no longer the same inode.
  const bytes = fs.readFileSync(at("model-third-link.bin"));
  fs.rmSync(at("model-third-link.bin"));
  fs.writeFileSync(at("model-third-link.bin"), bytes);
  fs.rmSync(at("dangling"));
  fs.symlinkSync("new.txt", at("dangling"));
  const base = 1_600_000_000;
  for (let d = 0; d < 30; d++) {
    const dir = at(`many/dir-${String(d).padStart(2, "0")}`);
    fs.mkdirSync(dir, { recursive: true });
    for (let i = d; i < MANY_FILES; i += 30) {
      const file = path.join(dir, `tiny-file-${String(i).padStart(5, "0")}.txt`);
      fs.writeFileSync(file, `tiny file ${i}\n`);
      fs.utimesSync(file, base + i / 1000, base + i / 1000);
    }
  }
}

/** FNV-1a over a path's UTF-16 code units (FORMAT.md, "Manifests and snapshots"). */
function pathHash(p: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < p.length; i++) {
    h ^= p.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * Where FORMAT.md says a manifest's parts end: from 1 MiB of entries on (each entry's JSON bytes + 1), after an
 * entry whose path hashes below 2^32 × (its JSON bytes + 1) / 1 MiB; never past 4 MiB. Returns how many
 * entries each part holds when the rule cuts `entries`.
 */
function cutAsDocumented(entries: ManifestEntry[]): number[] {
  const counts: number[] = [];
  let bytes = 0;
  let count = 0;
  for (const e of entries) {
    const size = Buffer.byteLength(JSON.stringify(e)) + 1;
    if (count > 0 && bytes + size > 4 * MiB) {
      counts.push(count);
      [bytes, count] = [0, 0];
    }
    bytes += size;
    count++;
    if (bytes >= MiB && pathHash(e.path) < (size / MiB) * 2 ** 32) {
      counts.push(count);
      [bytes, count] = [0, 0];
    }
  }
  if (count > 0) counts.push(count);
  return counts;
}

describe("the repository format, read by an independent reader written from FORMAT.md", () => {
  let root: string;
  let ws: string;
  let repoUrl: string;
  const keyFiles: Record<"hex" | "base64" | "base64url" | "raw" | "wrong", string> = {
    hex: "",
    base64: "",
    base64url: "",
    raw: "",
    wrong: "",
  };
  /** The snapshots the real tool made, oldest first, each with its source as a restore must give it back. */
  const taken: { id: string; expected: Map<string, ExactEntry> }[] = [];

  const reader = (...args: string[]) => run(readerBin, args);
  const agent = (...args: string[]) => run(agentBin, args);
  const snapshot = async () => {
    const expected = describeExactly(ws, { asRestored: true });
    const created = await json<{ id: string }>(agentBin, [
      "snapshot",
      "create",
      "--source",
      ws,
      "--repo",
      repoUrl,
      "--key-file",
      keyFiles.hex,
      "--state-dir",
      path.join(root, "state"),
      "--workspace",
      "conformance",
      "--pack-size",
      String(PACK_SIZE),
      "--json",
    ]);
    taken.push({ id: created.id, expected });
  };

  beforeAll(async () => {
    root = await tempDir("format-conformance");
    ws = path.join(root, "workspace");
    repoUrl = pathToFileURL(path.join(root, "repo")).href;
    const key = randomBytes(32);
    key[0] = 0; // so its 32 raw bytes never read as text
    const keyFile = (name: string, data: string | Buffer) => {
      const file = path.join(root, name);
      fs.writeFileSync(file, data, { mode: 0o600 });
      return file;
    };
    keyFiles.hex = keyFile("key.hex", `${key.toString("hex")}\n`);
    keyFiles.base64 = keyFile("key.b64", ` ${key.toString("base64")}\n`);
    keyFiles.base64url = keyFile("key.b64url", key.toString("base64url"));
    keyFiles.raw = keyFile("key.raw", key);
    keyFiles.wrong = keyFile("wrong.hex", randomBytes(32).toString("hex"));

    buildWorkspace(ws);
    await snapshot();
    changeWorkspace(ws);
    await snapshot();
  });

  afterAll(() => {
    if (!root) return;
    execFileSync("chmod", ["-R", "u+rwX", root]); // directories without write permission, for a non-root run
    fs.rmSync(root, { recursive: true, force: true });
  });

  it("lists the snapshots the real tool lists, record for record, with any form of the key", async () => {
    const real = await json<Omit<SnapshotRecord, "version">[]>(agentBin, [
      "snapshot",
      "list",
      "--repo",
      repoUrl,
      "--key-file",
      keyFiles.hex,
      "--json",
    ]);
    const listed = await json<SnapshotRecord[]>(readerBin, ["list", repoUrl, keyFiles.hex]);
    expect(listed.map((s) => s.id)).toEqual(taken.map((t) => t.id));
    // The real list shows every record as the newer layout does (no version; `manifests`, one part or more);
    // everything else is the record as stored.
    const asListed = listed.map(({ version, manifest, ...rest }) => ({
      ...rest,
      manifests: rest.manifests ?? [manifest],
    }));
    expect(asListed).toEqual(real);
    expect(listed.map((s) => s.version)).toEqual([1, 2]);
    expect(listed[0].manifest).toMatch(/^[0-9a-f]{64}$/);
    expect(listed[1].manifests?.length).toBeGreaterThanOrEqual(2);
    for (const form of ["base64", "base64url", "raw"] as const) {
      expect(await json(readerBin, ["list", path.join(root, "repo"), keyFiles[form]]), form).toEqual(listed);
    }
  });

  it("finds in the manifests the totals each record states, and parts cut as FORMAT.md says", async () => {
    for (const [i, t] of taken.entries()) {
      const shown = await json<Shown>(readerBin, ["show", repoUrl, keyFiles.hex, t.id.slice(0, 10)]);
      expect(shown.id).toBe(t.id);
      expect(shown.totals).toEqual(shown.record.totals);
      // The root is the snapshot's directory, in the first part only.
      expect(shown.root?.mode).toBe(t.expected.get("")?.mode);
      expect(shown.parts.map((p) => p.root)).toEqual(shown.parts.map((_, k) => k === 0));
      // Every entry but the root, and only those (hard links named by linkOf, to an earlier file).
      expect(shown.entries.map((e) => e.path).sort()).toEqual([...t.expected.keys()].filter((p) => p !== "").sort());
      const linkOf = shown.entries.filter((e) => e.linkOf !== undefined);
      expect(linkOf.length).toBe(i === 0 ? 2 : 1);
      for (const e of linkOf) {
        expect(shown.entries.findIndex((x) => x.path === e.linkOf)).toBeLessThan(shown.entries.indexOf(e));
      }
      expect(shown.parts.map((p) => p.entries)).toEqual(cutAsDocumented(shown.entries));
    }
    const latest = await json<Shown>(readerBin, ["show", repoUrl, keyFiles.hex, "latest"]);
    expect(latest.id).toBe(taken[1].id);
    expect(latest.parts.length).toBeGreaterThanOrEqual(2);
    expect(latest.entries.length).toBeGreaterThan(MANY_FILES);
  });

  it("verifies every pack, chunk, index object and manifest part", async () => {
    // Exit 1 with the report on stdout when it finds problems: they show in the failure as a list.
    const verified = await reader("verify", repoUrl, keyFiles.hex);
    expect(verified.stderr).toBe("");
    const report = JSON.parse(verified.stdout) as VerifyReport;
    expect(report.problems).toEqual([]);
    expect(verified.code).toBe(0);
    expect(report.unindexedPacks).toEqual([]);
    const packFiles = fs.readdirSync(path.join(root, "repo/data"), { recursive: true, withFileTypes: true });
    expect(report.packs.length).toBe(packFiles.filter((f) => f.isFile()).length);
    expect(report.packs.length).toBeGreaterThan(3); // 3 MiB of random bytes in 1 MiB packs, at least
    expect(report.snapshots.map((s) => s.id).sort()).toEqual(taken.map((t) => t.id).sort());
    // Manifest parts are sealed with the documented synthetic nonce.
    expect(Object.values(report.manifestNonces).length).toBeGreaterThanOrEqual(3);
    expect(Object.values(report.manifestNonces).every(Boolean)).toBe(true);
    // Both chunk codecs were read (the LZ4 decoder ran), DEFLATE objects too, and nothing else.
    expect(Object.keys(report.codecs.chunk).sort()).toEqual(["0", "1"]);
    expect(report.codecs.manifest["2"]).toBeGreaterThan(0);
    expect(Object.values(report.codecs.chunk).reduce((a, b) => a + b, 0)).toBe(report.chunks); // each once
    // Objects other than chunks are written raw or DEFLATE'd, never LZ4 (which only objects from before codec 2
    // may be): each kind was seen, and none as codec 1.
    for (const kind of ["manifest", "snapshot", "index", "packHeader", "keyCheck"]) {
      expect(Object.keys(report.codecs[kind] ?? {}).length, kind).toBeGreaterThan(0);
      expect(report.codecs[kind]?.["1"], kind).toBeUndefined();
    }
  });

  it("restores each snapshot exactly: bytes, modes, owners, times to the microsecond, symlinks, hard links", async () => {
    for (const [i, t] of taken.entries()) {
      const target = path.join(root, `restored-${i}`);
      const summary = await json<{ id: string; hardLinks: number; files: number }>(readerBin, [
        "restore",
        repoUrl,
        keyFiles.raw,
        t.id,
        target,
      ]);
      expect(summary.id).toBe(t.id);
      expect(summary.hardLinks).toBe(i === 0 ? 2 : 1);
      const differences = treeDifferences(t.expected, describeExactly(target));
      expect(differences.slice(0, 10)).toEqual([]);
      expect(differences.length).toBe(0);
    }
  });

  it("refuses a wrong key in one sentence, as the real tool does", async () => {
    const wrong = await reader("list", repoUrl, keyFiles.wrong);
    expect(wrong.code).toBe(1);
    expect(wrong.stdout).toBe("");
    expect(wrong.stderr).toMatch(/^independent-reader: the key does not open the repository at \S+ \([^\n]*\)\n$/);
    for (const command of ["verify", "restore"]) {
      const res = await reader(command, repoUrl, keyFiles.wrong, taken[0].id, path.join(root, "never"));
      expect(res.stderr).toBe(wrong.stderr);
    }
    expect(fs.existsSync(path.join(root, "never"))).toBe(false);
    const real = await agent("snapshot", "list", "--repo", repoUrl, "--key-file", keyFiles.wrong, "--json");
    expect(real.code).not.toBe(0);
    expect(real.stderr).toMatch(/does not open the repository/);
  });
});
