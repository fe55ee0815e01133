// Bad flags to `dumont-agent snapshot …` stop it before any work: exit 1, one sentence on stderr naming the flag
// and what to give instead, nothing on stdout (so `--json` output is never half a result).
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { runAgentCli as run } from "./run-in-process.js";

const KEY = "5a".repeat(32);
let root: string;
let repo: string;
let key: string;
let source: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-cli-validation-"));
  repo = pathToFileURL(join(root, "repo")).href;
  key = join(root, "key");
  source = join(root, "src");
  await writeFile(key, KEY, { mode: 0o600 });
  await writeFile(join(root, "too-long-key"), "0".repeat(5000), { mode: 0o600 });
  await mkdir(join(root, "key-dir"));
  await mkdir(source);
  await writeFile(join(source, "a.txt"), "a\n");
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});
afterEach(() => {
  vi.unstubAllEnvs();
});

describe("dumont-agent snapshot: bad flags", () => {
  const forget = (...flags: string[]) => ["forget", "--repo", repo, "--key-file", key, "--dry-run", "--json", ...flags];
  const cases: [string, () => string[], RegExp][] = [
    ["an empty --source (was: the working directory)", () => create("--source", ""), /--source is empty: give/],
    ["--source twice (was: the last)", () => create("--source", source, "--source", source), /--source was given/],
    ["an empty --tenant", () => create("--source", source, "--tenant", ""), /--tenant is empty: give a tenant id/],
    ["an empty --workspace", () => create("--source", source, "--workspace", ""), /--workspace is empty/],
    ["an empty --state-dir", () => create("--source", source, "--state-dir", ""), /--state-dir is empty/],
    [
      "a --pack-size over 1 GiB",
      () => create("--source", source, "--pack-size", "1e12"),
      /--pack-size must be a whole number from 1 to 1073741824, got "1e12"/,
    ],
    ["an empty --target", () => restore("--id", "abcd", "--target", ""), /--target is empty: give a new or empty/],
    ["--id twice", () => restore("--id", "abcd", "--id", "ef01", "--target", join(root, "t")), /--id was given twice/],
    [
      "an --id that is no snapshot id (was: the repository's words, naming no flag)",
      () => restore("--id", "zz!", "--target", join(root, "t")),
      /--id "zz!" is not a snapshot id: give an id from `snapshot list`, a unique prefix of it \(4 to 64 hex/,
    ],
    ["an --id prefix of 3 characters", () => ["ls", "--repo", repo, "--key-file", key, "--id", "abc"], /--id "abc" is/],
    [
      "a diff's second snapshot that is no id",
      () => ["diff", "--repo", repo, "--key-file", key, "latest", "v1"],
      /AFTER "v1" is not a snapshot id/,
    ],
    ["a forget's id that is no id", () => forget("abcd", "last"), /ID "last" is not a snapshot id/],
    ["--repo twice", () => ["list", "--repo", repo, "--repo", `${repo}2`, "--key-file", key], /--repo was given twice/],
    [
      "--key-file twice, the second the key itself (was: quoted back)",
      () => ["list", "--repo", repo, "--key-file", key, "--key-file", KEY],
      /--key-file was given twice/,
    ],
    [
      "an empty --key-file (was: DUMONT_REPO_KEY)",
      () => ["list", "--repo", repo, "--key-file", ""],
      /--key-file is empty/,
    ],
    [
      "a --key-file that does not exist",
      () => ["list", "--repo", repo, "--key-file", join(root, "nope")],
      /--key-file \S+nope: there is no such file; give the file holding the repository key/,
    ],
    [
      "the key itself as --key-file (its error repeated the key)",
      () => ["list", "--repo", repo, "--key-file", KEY],
      /--key-file takes the path of a file holding the repository key, and was given what looks like the key itself \(not repeated here\)/,
    ],
    [
      "a --key-file that is a directory",
      () => ["list", "--repo", repo, "--key-file", join(root, "key-dir")],
      /--key-file \S+key-dir: it is a directory; give the file holding the repository key/,
    ],
    [
      "a --key-file too large to be a key (read whole before: /dev/zero never ended)",
      () => ["list", "--repo", repo, "--key-file", join(root, "too-long-key")],
      /--key-file \S+too-long-key: it holds more than 4096 bytes, too many for a key/,
    ],
    ...["0", "-1", "1.5", "1e309", "abc", "", "0x10", "1e3"].map((n): [string, () => string[], RegExp] => [
      `--keep-last ${JSON.stringify(n)}`,
      () => forget("--keep-last", n),
      new RegExp(`--keep-last must be a whole number of 1 or more, got ${JSON.stringify(n).replace(".", "\\.")}`),
    ]),
    [
      "a --keep-last past what a count can be (it said 'of 1 or more')",
      () => forget("--keep-last", "99999999999999999999"),
      /--keep-last 99999999999999999999 is too large: give at most 9007199254740991/,
    ],
    [
      "a --repo that is a file (a raw ENOTDIR before)",
      () => ["list", "--repo", pathToFileURL(key).href, "--key-file", key],
      /file:\/\/\S+\/key is a file, or lies under one: a file:\/\/ repository is a directory/,
    ],
    ["--keep-daily twice", () => forget("--keep-daily", "7", "--keep-daily", "1"), /--keep-daily was given twice/],
    ["an empty --workspace to forget", () => forget("--keep-last", "1", "--workspace", ""), /--workspace is empty/],
    [
      "--workspace with only --prune (it was ignored, the prune covering the whole repository)",
      () => forget("--workspace", "typo", "--prune"),
      /--workspace narrows a --keep-\* policy: give one with it/,
    ],
    [
      "a --read-data-subset that names no subset",
      () => ["check", "--repo", repo, "--key-file", key, "--read-data-subset", "6/5"],
      /--read-data-subset "6\/5" is not a subset of the packs: give n\/t \(the n-th of t groups/,
    ],
    [
      "--read-data-subset with --structure-only",
      () => ["check", "--repo", repo, "--key-file", key, "--read-data-subset", "1/5", "--structure-only"],
      /--read-data-subset reads some packs, --structure-only none: give one of them/,
    ],
  ];

  it.each(cases)("refuses %s", async (_, args, message) => {
    // A key in the environment too: an empty --key-file must not fall back to it.
    vi.stubEnv("DUMONT_REPO_KEY", KEY);
    vi.stubEnv("DUMONT_STATE_DIR", join(root, "state"));
    const { out, err, code } = await run("snapshot", ...args());
    expect(code).toBe(1);
    expect(err).toMatch(message);
    expect(out).toBe("");
    expect(err).not.toContain(KEY);
  });
});

function create(...flags: string[]): string[] {
  return ["create", "--repo", repo, "--key-file", key, "--json", ...flags];
}

function restore(...flags: string[]): string[] {
  return ["restore", "--repo", repo, "--key-file", key, "--json", ...flags];
}
