// The snapshot commands as an operator types them: flags, JSON output, exit codes and error sentences.
import { execFile, execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import {
  chmod,
  chown,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runAgentCli as run } from "./run-in-process.js";

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "dumont-cli-"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("dumont-agent snapshot", () => {
  it("creates, lists, restores, checks and forgets", async () => {
    const source = join(root, "src");
    await mkdir(join(source, "d"), { recursive: true });
    await writeFile(join(source, "d", "a.txt"), "hello\n".repeat(1000));
    await writeFile(join(root, "key"), "11".repeat(32), { mode: 0o600 });
    const repo = pathToFileURL(join(root, "repo")).href;
    const common = ["--repo", repo, "--key-file", join(root, "key")];
    const state = ["--state-dir", join(root, "state")];

    const created = await run("snapshot", "create", "--source", source, ...common, ...state, "--json");
    expect(created.code).toBe(0);
    const result = JSON.parse(created.out);
    expect(Object.keys(result)).toEqual([
      "id",
      "files",
      "bytesRead",
      "bytesNew",
      "bytesStored",
      "chunksNew",
      "seconds",
    ]);
    expect(result).toMatchObject({ files: 1, bytesRead: 6000, bytesNew: 6000, chunksNew: 1 });
    // Making the repository is said, on stderr (stdout is the JSON): a mistyped --repo shows at once.
    const config = JSON.parse(await readFile(join(root, "repo", "config"), "utf8"));
    expect(created.err).toBe(
      `created a new repository at ${repo} (id ${config.id}); only its key opens it: keep a copy\n`,
    );

    const again = await run("snapshot", "create", "--source", source, ...common, ...state, "--json");
    expect(again.err).toBe("");
    const second = JSON.parse(again.out);
    const listed = JSON.parse((await run("snapshot", "list", ...common, "--json")).out);
    expect(listed.map((s: { id: string }) => s.id).sort()).toEqual([result.id, second.id].sort());

    // Its config lost (deleted by hand): said, with the way back; another key makes no repository over it, and its
    // own key's next create makes the config anew (its snapshots open again).
    const configFile = join(root, "repo", "config");
    const saved = await readFile(configFile);
    await rm(configFile);
    const lost = await run("snapshot", "list", ...common);
    expect([lost.code, lost.err]).toEqual([
      1,
      expect.stringMatching(/holds a repository's objects \(snapshots\/\w+\) but no config: its config was lost/),
    ]);
    await writeFile(join(root, "other-key"), "55".repeat(32), { mode: 0o600 });
    const other = ["--repo", repo, "--key-file", join(root, "other-key")];
    const refused = await run("snapshot", "create", "--source", source, ...other, ...state);
    expect([refused.code, refused.err]).toEqual([1, expect.stringMatching(/a new repository is not made over/)]);
    const remade = await run("snapshot", "create", "--source", source, ...common, ...state, "--json");
    expect([remade.code, remade.err]).toEqual([
      0,
      expect.stringMatching(
        /^the repository at .* had lost its config; made a new one \(id \w+\), as its objects open/,
      ),
    ]);
    const relisted = JSON.parse((await run("snapshot", "list", ...common, "--json")).out);
    expect(relisted).toHaveLength(3);
    expect(JSON.parse(await readFile(configFile, "utf8")).id).not.toBe(JSON.parse(saved.toString()).id);
    expect((await run("snapshot", "forget", ...common, JSON.parse(remade.out).id)).code).toBe(0); // as before

    const target = join(root, "out");
    const restored = await run(
      "snapshot",
      "restore",
      ...common,
      "--id",
      result.id.slice(0, 8),
      "--target",
      target,
      "--json",
    );
    expect(JSON.parse(restored.out)).toMatchObject({ id: result.id, files: 1, bytesWritten: 6000 });
    expect(await readdir(join(target, "d"))).toEqual(["a.txt"]);
    // `latest` (restic's word) is the newest snapshot; the JSON names the one it restored.
    const newest = join(root, "newest");
    const latest = await run("snapshot", "restore", ...common, "--id", "latest", "--target", newest, "--json");
    expect(JSON.parse(latest.out)).toMatchObject({ id: second.id, files: 1, bytesWritten: 6000 });
    expect(await readdir(join(newest, "d"))).toEqual(["a.txt"]);

    expect((await run("snapshot", "check", ...common)).out).toMatch(/^no problems: 2 snapshots, 1 pack, 1 chunk, /);
    expect((await run("snapshot", "check", ...common, "--no-lock")).out).toMatch(/^no problems/);
    expect((await run("snapshot", "check", ...common, "--read-data-subset", "1/1")).out).toMatch(
      /^no problems: 2 snapshots, 1 pack, 1 chunk, \d+ B verified \(subset 1\/1: 1 pack read\)\n$/,
    );
    expect(await readdir(join(root, "repo", "locks"))).toEqual([]); // the check's shared lock is gone
    // Two snapshots of one unchanged 6,000-byte file: twice that to restore, once stored.
    const stats = JSON.parse((await run("snapshot", "stats", ...common, "--json")).out);
    expect(stats).toMatchObject({ snapshots: 2, files: 2, bytes: 12_000, chunks: 1, chunkBytes: 6_000, packs: 1 });
    expect(stats.packBytes).toBeGreaterThan(0);
    expect((await run("snapshot", "stats", ...common)).out).toMatch(
      /^snapshots +2\nrestore size +11\.7 KiB in 2 files \(every snapshot, each whole\)\ndeduplicated +5\.9 KiB in 1 chunk\nstored +\S+ \S+ in 1 pack \(compressed and encrypted; \d+% of the restore size\)\n$/,
    );
    // A record that would not open: named on stderr, and the rest listed and counted; put back after.
    const recordFile = join(root, "repo", "snapshots", second.id);
    const record = await readFile(recordFile);
    await writeFile(
      recordFile,
      Buffer.concat([record.subarray(0, -1), Buffer.from([record[record.length - 1] ^ 0xff])]),
    );
    try {
      const listedAround = await run("snapshot", "list", ...common, "--json");
      expect(listedAround.code).toBe(0);
      expect(JSON.parse(listedAround.out).map((s: { id: string }) => s.id)).toEqual([result.id]);
      expect(listedAround.err).toMatch(
        new RegExp(`^warning: snapshot record ${second.id}: .*; not listed \\(\`snapshot check\` says more\\)\\n$`),
      );
      const countedAround = await run("snapshot", "stats", ...common, "--json");
      expect(JSON.parse(countedAround.out)).toMatchObject({ snapshots: 1, unreadableSnapshots: [second.id] });
      expect(countedAround.err).toBe(
        "warning: 1 snapshot record would not open and is not counted (`snapshot check` says why)\n",
      );
      // check names it, and the way out: forget it by id.
      const checked = await run("snapshot", "check", ...common, "--structure-only");
      expect(checked.code).toBe(1);
      expect(checked.err).toContain(
        `\`dumont-agent snapshot forget --repo ${repo} ${second.id.slice(0, 12)}\` forgets it (the data other ` +
          "snapshots use stays; a prune then frees what only it used)",
      );
    } finally {
      await writeFile(recordFile, record);
    }

    // Counts with nouns that agree: one snapshot, no packs.
    const dry = await run("snapshot", "forget", ...common, "--keep-last", "1", "--prune", "--dry-run");
    expect(dry.out).toMatch(/^would forget 1 snapshot, keeping 1\n/);
    expect(dry.out).toMatch(
      /: 0 unused packs, 0 left by interrupted snapshots, 0 repacked, 0 temp files of cut-short writes\n$/,
    );
    const forgot = await run("snapshot", "forget", ...common, "--keep-last", "1", "--prune", "--json");
    expect(JSON.parse(forgot.out).forgotten).toHaveLength(1);
    const [last] = JSON.parse((await run("snapshot", "list", ...common, "--json")).out);
    expect(last.id).toBe(JSON.parse(forgot.out).kept[0]);
    // By id (a prefix will do), the last one too: ids are not a policy.
    const byId = JSON.parse((await run("snapshot", "forget", ...common, last.id.slice(0, 8), "--json")).out);
    expect(byId).toMatchObject({ forgotten: [last.id], kept: [] });
    expect(JSON.parse((await run("snapshot", "list", ...common, "--json")).out)).toEqual([]);
  });

  it("diffs two snapshots: each path changed, and the bytes of chunks added and dropped", async () => {
    const source = join(root, "diffed");
    await mkdir(source, { recursive: true });
    await writeFile(join(source, "keep.txt"), "same\n");
    await writeFile(join(source, "edit.txt"), "before\n");
    await writeFile(join(source, "drop.txt"), "dropped\n");
    await writeFile(join(root, "diff-key"), "22".repeat(32), { mode: 0o600 });
    const common = ["--repo", pathToFileURL(join(root, "diff-repo")).href, "--key-file", join(root, "diff-key")];
    const snap = async () =>
      JSON.parse((await run("snapshot", "create", "--source", source, ...common, "--json")).out).id as string;
    const a = await snap();
    await writeFile(join(source, "edit.txt"), "after, longer\n");
    await rm(join(source, "drop.txt"));
    await writeFile(join(source, "new.txt"), "new\n");
    const b = await snap();

    const text = await run("snapshot", "diff", a.slice(0, 8), b, ...common);
    expect(text.out).toBe(
      "-    drop.txt\nM    edit.txt\n+    new.txt\n" +
        "1 added, 1 removed, 1 modified, 0 changed in metadata only, 0 changed in type; 18 B of new data, 15 B no longer used\n",
    );
    const json = JSON.parse((await run("snapshot", "diff", a, b, ...common, "--json")).out);
    expect(json.changes[1]).toEqual({ path: "edit.txt", change: "modified", sizeBefore: 7, sizeAfter: 14 });
    expect((await run("snapshot", "diff", a, "0000ffff", ...common)).err).toMatch(
      /no snapshot 0000ffff in \S+; `snapshot list` shows the snapshots it holds/,
    );
  });

  it("warns about what it left out, and says so in JSON and in the list", async () => {
    const source = join(root, "with-pipe");
    await mkdir(source, { recursive: true });
    await writeFile(join(source, "kept.txt"), "kept\n");
    execFileSync("mkfifo", [join(source, "events.pipe")]);
    await writeFile(join(root, "key"), "11".repeat(32), { mode: 0o600 });
    const common = ["--repo", pathToFileURL(join(root, "repo-pipe")).href, "--key-file", join(root, "key")];
    const reason = "a FIFO (named pipe): only regular files, directories and symlinks are kept";

    const human = await run("snapshot", "create", "--source", source, ...common);
    expect(human.code).toBe(0);
    expect(human.err).toContain(`warning: left out "events.pipe": ${reason}`);
    expect(human.out).toMatch(/, 1 left out\n$/);
    const json = await run("snapshot", "create", "--source", source, ...common, "--json");
    expect(JSON.parse(json.out)).toMatchObject({
      files: 1,
      filesSkipped: 1,
      skipped: [{ path: "events.pipe", reason }],
    });
    const listed = (await run("snapshot", "list", ...common)).out.trim().split("\n");
    expect(listed[0]).toMatch(/^ID +CREATED +FILES +SIZE +WORKSPACE$/);
    expect(listed).toHaveLength(3);
    for (const line of listed.slice(1)) expect(line).toMatch(/^[0-9a-f]{12} +\S+ +1 \(1 left out\) +\d+ B +\S/);

    // A name holding a C1 control (U+009B is a terminal's CSI) is escaped in the warning as `ls` escapes it.
    const c1 = join(root, "with-c1");
    await mkdir(c1, { recursive: true });
    execFileSync("mkfifo", [join(c1, "p\u009b2J")]);
    const escaped = await run("snapshot", "create", "--source", c1, ...common);
    expect(escaped.code).toBe(0);
    expect(escaped.err).toContain(`warning: left out "p\\u009b2J": ${reason}`);
    expect(escaped.err).not.toMatch(/[\u007f-\u009f]/);
  });

  it("leaves out what --exclude (repeated) and the source's .dumontignore name, restores a part with --include", async () => {
    const source = join(root, "with-excludes");
    await mkdir(join(source, "cache"), { recursive: true });
    await mkdir(join(source, "out"), { recursive: true });
    for (const file of ["train.py", "cache/blob", "out/model.bin", "out/log.txt", "scratch.tmp"])
      await writeFile(join(source, file), `${file}\n`);
    await writeFile(join(source, ".dumontignore"), "*.tmp\n");
    // Modes as a umask of 022 leaves them, whatever this shell's is: ls shows them.
    await chmod(join(source, "out"), 0o755);
    await chmod(join(source, "out", "log.txt"), 0o644);
    await writeFile(join(root, "key"), "11".repeat(32), { mode: 0o600 });
    const common = ["--repo", pathToFileURL(join(root, "repo-excludes")).href, "--key-file", join(root, "key")];
    const create = (...flags: string[]) => run("snapshot", "create", "--source", source, ...common, ...flags);
    const restore = (id: string, target: string, ...flags: string[]) =>
      run("snapshot", "restore", ...common, "--id", id, "--target", join(root, target), ...flags);
    const files = async (dir: string) => (await readdir(join(root, dir), { recursive: true })).sort();

    const created = await create("--exclude", "cache/", "--exclude", "out/*.bin", "--json");
    expect(created.code).toBe(0);
    const { id, files: count } = JSON.parse(created.out);
    expect(count).toBe(3); // train.py, out/log.txt, .dumontignore
    expect((await restore(id, "with-excludes-restored")).code).toBe(0);
    expect(await files("with-excludes-restored")).toEqual([".dumontignore", "out", "out/log.txt", "train.py"]);

    // ls lists it (with --include, what restore --include writes), as lines and as JSON.
    const ls = await run("snapshot", "ls", ...common, "--id", id);
    expect(
      ls.out
        .split("\n")
        .filter(Boolean)
        .map((line) => line.split(" ").at(-1)),
    ).toEqual([".dumontignore", "out/", "out/log.txt", "train.py"]);
    const { uid, gid } = await stat(join(source, "out"));
    expect(ls.out).toMatch(
      new RegExp(`^-rw-r--r-- ${uid}/${gid} +12 \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d out/log\\.txt$`, "m"),
    );
    const lsJson = JSON.parse((await run("snapshot", "ls", ...common, "--id", id, "--include", "out/", "--json")).out);
    expect(lsJson).toEqual([
      { path: "out", type: "dir", mode: 0o755, size: 0, mtime: expect.stringMatching(/Z$/), uid, gid },
      { path: "out/log.txt", type: "file", mode: 0o644, size: 12, mtime: expect.stringMatching(/Z$/), uid, gid },
    ]);

    // --include restores part of it; a pattern matching nothing fails before anything is written.
    const partly = await restore(id, "with-excludes-part", "--include", "out/", "--json");
    expect(partly.code).toBe(0);
    expect(JSON.parse(partly.out)).toMatchObject({ files: 1 });
    expect(await files("with-excludes-part")).toEqual(["out", "out/log.txt"]);
    const none = await restore(id, "none", "--include", "*.ckpt");
    expect(none.code).toBe(1);
    expect(none.err).toMatch(/^nothing in snapshot \w+ matches "\*\.ckpt"/);

    const bad = await create("--exclude", "ok", "--exclude", "");
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/^--exclude\[1\] is empty: give a pattern such as "\*\.tmp" or "cache\/"\n$/);
  });

  it("restores a part without the outward link it leaves out; ls and restore fail alike on patterns matching nothing", async () => {
    const source = join(root, "with-extlink");
    await mkdir(join(source, "data"), { recursive: true });
    await writeFile(join(source, "data", "a.txt"), "a\n");
    await symlink("/etc/hostname", join(source, "extlink"));
    await writeFile(join(root, "key-extlink"), "66".repeat(32), { mode: 0o600 });
    const common = ["--repo", pathToFileURL(join(root, "repo-extlink")).href, "--key-file", join(root, "key-extlink")];
    const created = await run("snapshot", "create", "--source", source, ...common, "--json");
    expect(created.code).toBe(0);
    const { id } = JSON.parse(created.out);
    const restore = (target: string, ...flags: string[]) =>
      run("snapshot", "restore", ...common, "--id", id, "--target", join(root, target), ...flags);

    const part = await restore("extlink-part", "--include", "data/");
    expect(part.err).toBe("");
    expect(part.code).toBe(0);
    expect((await readdir(join(root, "extlink-part"), { recursive: true })).sort()).toEqual(["data", "data/a.txt"]);

    // Nothing matching is said as such, by restore and by ls (which shows what that restore would write).
    const nothing = new RegExp(`^nothing in snapshot ${id.slice(0, 12)} matches "nomatch", "\\*\\.ckpt": `);
    const none = await restore("extlink-none", "--include", "nomatch", "--include", "*.ckpt");
    expect(none.code).toBe(1);
    expect(none.err).toMatch(nothing);
    const ls = await run("snapshot", "ls", ...common, "--id", id, "--include", "nomatch", "--include", "*.ckpt");
    expect({ code: ls.code, out: ls.out }).toEqual({ code: 1, out: "" });
    expect(ls.err).toMatch(nothing);

    // Writing the link is refused as a choice to make, not as a damaged manifest; the flag writes it.
    const whole = await restore("extlink-whole");
    expect(whole.code).toBe(1);
    expect(whole.err).toBe(
      'symlink "extlink" -> "/etc/hostname" points outside the restore target; restore with ' +
        "--allow-external-symlinks to write it anyway (a restore creates links and never follows one), or leave " +
        "it out with --include\n",
    );
    expect((await restore("extlink-allowed", "--allow-external-symlinks")).code).toBe(0);
    expect(await readlink(join(root, "extlink-allowed", "extlink"))).toBe("/etc/hostname");
  });

  // chown takes root (CI here); elsewhere skipped.
  it.runIf(process.geteuid?.() === 0)("gives owners back as root, and leaves them with --no-owners", async () => {
    const source = join(root, "owned");
    await mkdir(source);
    await writeFile(join(source, "notebook.ipynb"), "{}");
    await chown(join(source, "notebook.ipynb"), 1000, 100);
    await chown(source, 1000, 100);
    const common = ["--repo", pathToFileURL(join(root, "owned-repo")).href, "--key-file", join(root, "owned-key")];
    await writeFile(join(root, "owned-key"), "22".repeat(32), { mode: 0o600 });
    expect((await run("snapshot", "create", "--source", source, ...common)).code).toBe(0);
    const owner = async (dir: string) => {
      const [top, file] = [await stat(dir), await stat(join(dir, "notebook.ipynb"))];
      return [top.uid, top.gid, file.uid, file.gid];
    };
    for (const [flags, expected] of [
      [[], [1000, 100, 1000, 100]],
      [["--no-owners"], [0, 0, 0, 0]],
    ] as const) {
      const target = join(root, `owned-out${flags.length}`);
      const restored = await run("snapshot", "restore", "--id", "latest", "--target", target, ...common, ...flags);
      expect(restored.code, restored.err).toBe(0);
      expect(await owner(target)).toEqual(expected);
    }
    // Root in a user namespace (a rootless container) may not give ids outside its map (EINVAL): the restore
    // goes on, leaving them as created, as tar and restic do.
    if (spawnSync("unshare", ["--user", "--map-root-user", "true"]).status === 0) {
      const target = join(root, "owned-userns");
      const bin = fileURLToPath(new URL("../../bin/dumont-agent.js", import.meta.url));
      const args = ["snapshot", "restore", "--id", "latest", "--target", target, ...common];
      const inside = spawnSync("unshare", ["--user", "--map-root-user", process.execPath, bin, ...args]);
      expect(inside.status, String(inside.stderr)).toBe(0);
      expect(await owner(target)).toEqual([0, 0, 0, 0]);
      expect(await readFile(join(target, "notebook.ipynb"), "utf8")).toBe("{}");
    }
  });

  it("stops on Ctrl-C, cleaning up: no snapshot, an emptied restore target, a check cut short, no lock left; exits 130", async () => {
    const source = join(root, "interrupted-src");
    await mkdir(source);
    for (let i = 0; i < 4; i++) await writeFile(join(source, `shard-${i}.bin`), randomBytes(32 * 1024 * 1024));
    await writeFile(join(root, "interrupted-key"), "33".repeat(32), { mode: 0o600 });
    const repoDir = join(root, "interrupted-repo");
    const common = ["--repo", pathToFileURL(repoDir).href, "--key-file", join(root, "interrupted-key")];
    const state = ["--state-dir", join(root, "interrupted-state")];
    const bin = fileURLToPath(new URL("../../bin/dumont-agent.js", import.meta.url));
    const names = async (dir: string) =>
      (await readdir(dir).catch(() => [] as string[])).filter((name) => !name.startsWith(".tmp-"));
    /** Runs the CLI, stops it once `ready` (SIGSTOP: it is mid-work), sends SIGINT, and lets it go on. */
    const interrupted = async (args: string[], ready: () => Promise<boolean>) => {
      const child = spawn(process.execPath, [bin, ...args], { stdio: ["ignore", "ignore", "pipe"] });
      let err = "";
      child.stderr.on("data", (d) => {
        err += String(d);
      });
      const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
      const until = Date.now() + 30_000;
      while (!(await ready()) && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
      child.kill("SIGSTOP");
      child.kill("SIGINT");
      child.kill("SIGCONT");
      return { code: await exited, err };
    };

    // A snapshot interrupted once it holds its lock: nothing listed, no lock, and the next one succeeds.
    const create = ["snapshot", "create", "--source", source, ...common, ...state];
    const stopped = await interrupted(create, async () => (await names(join(repoDir, "locks"))).length > 0);
    expect(stopped.err).toContain("interrupted (SIGINT): no snapshot was made");
    expect(stopped.code).toBe(130);
    expect(await names(join(repoDir, "locks"))).toEqual([]);
    expect(JSON.parse((await run("snapshot", "list", ...common, "--json")).out)).toEqual([]);
    expect((await run(...create)).code).toBe(0);

    // A restore interrupted once its first file is made: the target is empty again, so it can simply run again.
    const target = join(root, "interrupted-out");
    const restore = ["snapshot", "restore", "--id", "latest", "--target", target, ...common];
    const cut = await interrupted(restore, async () => (await names(target)).length > 0);
    expect(cut.err).toContain(`interrupted (SIGINT): the restore was stopped and what it had written removed`);
    expect(cut.code).toBe(130);
    expect(await readdir(target)).toEqual([]);
    expect(await names(join(repoDir, "locks"))).toEqual([]);
    expect((await run(...restore)).code).toBe(0);
    const [restored, original] = [
      await readFile(join(target, "shard-3.bin")),
      await readFile(join(source, "shard-3.bin")),
    ];
    expect(restored.equals(original)).toBe(true); // not toEqual: it walks 32 MiB element by element

    // A check interrupted once it holds its lock stops between packs and releases it.
    const check = ["snapshot", "check", ...common];
    const unchecked = await interrupted(check, async () => (await names(join(repoDir, "locks"))).length > 0);
    expect(unchecked.err).toContain("interrupted (SIGINT): the check stopped before it finished");
    expect(unchecked.code).toBe(130);
    expect(await names(join(repoDir, "locks"))).toEqual([]);
    expect((await run(...check)).code).toBe(0);
  });

  it.runIf(process.geteuid?.() === 0 && existsSync("/usr/bin/setpriv"))(
    "as a user other than root, clears a restore stopped or killed after its read-only directories got their modes; says a target it may not write",
    async () => {
      // As nobody: root may remove entries of a read-only directory, another user may not (Go's module cache,
      // a read-only dataset), nor list one it may not read (0311, a drop box). Directory modes are given last,
      // deepest first, just before the final flush.
      const work = join(root, "read-only-dirs");
      const source = join(work, "src");
      await mkdir(join(source, "ro", "sub"), { recursive: true });
      await writeFile(join(source, "ro", "f"), "in a read-only directory\n");
      await writeFile(join(source, "ro", "sub", "g"), "deeper\n");
      await chmod(join(source, "ro", "sub"), 0o311);
      await chmod(join(source, "ro"), 0o555);
      const key = "44".repeat(32);
      await writeFile(join(work, "key"), key, { mode: 0o600 });
      const repo = pathToFileURL(join(work, "repo")).href;
      const common = ["--repo", repo, "--key-file", join(work, "key")];
      expect(
        (await run("snapshot", "create", "--source", source, ...common, "--state-dir", join(work, "state"))).code,
      ).toBe(0);
      await chmod(root, 0o755);
      await chmod(work, 0o777);
      execFileSync("chmod", ["-R", "a+rwX", join(work, "repo")]);
      // A `sync` that never returns: the restore waits in its final flush, the directories' modes given.
      const fakeBin = join(work, "bin");
      await mkdir(fakeBin);
      await writeFile(join(fakeBin, "sync"), "#!/bin/sh\nexec sleep 600\n", { mode: 0o755 });
      const bin = fileURLToPath(new URL("../../bin/dumont-agent.js", import.meta.url));
      const asNobody = (target: string, path = process.env.PATH) => {
        const args = ["snapshot", "restore", "--id", "latest", "--target", target, "--repo", repo];
        const child = spawn(
          "/usr/bin/setpriv",
          ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, bin, ...args],
          {
            env: { ...process.env, PATH: path, DUMONT_REPO_KEY: key },
            stdio: ["ignore", "ignore", "pipe"],
            detached: true,
          },
        );
        let err = "";
        child.stderr.on("data", (d) => {
          err += String(d);
        });
        const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
        return { child, exited, err: () => err };
      };
      /** Runs the restore into `target` until its directory `ro` is read-only, then stops it with `signal`. */
      const stopped = async (target: string, signal: NodeJS.Signals) => {
        const restore = asNobody(target, `${fakeBin}:${process.env.PATH}`);
        const until = Date.now() + 30_000;
        const readOnly = async () => ((await stat(join(target, "ro")).catch(() => undefined))?.mode ?? 0) & 0o777;
        while (Date.now() < until && (await readOnly()) !== 0o555) await new Promise((r) => setTimeout(r, 10));
        expect((await stat(join(target, "ro"))).mode & 0o777).toBe(0o555);
        if (signal === "SIGKILL")
          process.kill(-(restore.child.pid ?? 0), signal); // its `sync` too
        else restore.child.kill(signal);
        return { code: await restore.exited, err: restore.err() };
      };

      // Stopped (Ctrl-C): what it wrote is removed, the read-only directories too; the marker with it.
      const target = join(work, "out");
      const cut = await stopped(target, "SIGINT");
      expect(cut.err).toContain("interrupted (SIGINT): the restore was stopped and what it had written removed");
      expect(cut.code).toBe(130);
      expect(await readdir(target)).toEqual([]);

      // Killed: the next restore clears what it left and restores the whole snapshot.
      const killed = join(work, "killed");
      await stopped(killed, "SIGKILL");
      expect(await readdir(killed)).toEqual([".dumont-restore-incomplete", "ro"]);
      const again = asNobody(killed);
      expect([await again.exited, again.err()]).toEqual([
        0,
        expect.stringContaining("cleared and the restore started over"),
      ]);
      expect(await readFile(join(killed, "ro", "sub", "g"), "utf8")).toBe("deeper\n");
      expect(await readdir(killed)).toEqual(["ro"]);
      expect((await stat(join(killed, "ro"))).mode & 0o777).toBe(0o555);
      expect((await stat(join(killed, "ro", "sub"))).mode & 0o777).toBe(0o311);

      // An empty target it may not write (root's, 0755): said as that, not as a temp file's EACCES.
      const rootOnly = join(work, "root-only");
      await mkdir(rootOnly, { mode: 0o755 });
      const refused = asNobody(rootOnly);
      expect([await refused.exited, refused.err()]).toEqual([
        1,
        `dumont-agent: cannot write into the restore target ${rootOnly} (EACCES): the agent's user (uid 65534) ` +
          "needs write access there; restore into a directory it may write\n",
      ]);
      expect(await readdir(rootOnly)).toEqual([]);
    },
  );

  it("says what to do when the key or the flags are wrong", async () => {
    const source = join(root, "src2");
    await mkdir(source);
    await writeFile(join(root, "key2"), "22".repeat(32), { mode: 0o600 });
    await writeFile(join(root, "key3"), "33".repeat(32), { mode: 0o600 });
    const repo = pathToFileURL(join(root, "repo2")).href;
    expect(
      (await run("snapshot", "create", "--source", source, "--repo", repo, "--key-file", join(root, "key2"), "--json"))
        .code,
    ).toBe(0);

    const wrong = await run("snapshot", "list", "--repo", repo, "--key-file", join(root, "key3"));
    expect(wrong.code).toBe(1);
    expect(wrong.err).toMatch(
      /^the key from --key-file .*key3 does not open the repository at .*; use the key it was created with\n$/,
    );

    const saved = process.env.DUMONT_REPO_KEY;
    delete process.env.DUMONT_REPO_KEY;
    const noKey = await run("snapshot", "list", "--repo", repo);
    if (saved !== undefined) process.env.DUMONT_REPO_KEY = saved;
    expect(noKey.err).toMatch(/no repository key: pass --key-file FILE or set DUMONT_REPO_KEY/);

    const badRepo = await run("snapshot", "list", "--repo", "ftp://x", "--key-file", join(root, "key2"));
    expect(badRepo.err).toMatch(/^--repo: repository URL "ftp:\/\/x" is not supported/);
    const missing = await run(
      "snapshot",
      "list",
      "--repo",
      pathToFileURL(join(root, "nothing")).href,
      "--key-file",
      join(root, "key2"),
    );
    expect(missing.err).toMatch(/there is no repository at --repo/);
    const forget = await run("snapshot", "forget", "--repo", repo, "--key-file", join(root, "key2"));
    expect(forget.err).toMatch(/say what to keep/);
  });

  it("warns when users other than the owner may read the key file, and uses it all the same", async () => {
    const source = join(root, "src-open-key");
    await mkdir(source);
    const key = join(root, "open-key");
    await writeFile(key, "88".repeat(32), { mode: 0o600 });
    const repo = pathToFileURL(join(root, "repo-open-key")).href;
    const made = await run("snapshot", "create", "--source", source, "--repo", repo, "--key-file", key, "--json");
    expect([made.code, made.err]).toEqual([0, expect.stringMatching(/^created a new repository at /)]);
    expect(made.err).not.toContain("warning");

    await chmod(key, 0o644); // what `openssl rand -hex 32 > FILE` makes under umask 022
    const listed = await run("snapshot", "list", "--repo", repo, "--key-file", key, "--json");
    expect(listed.code).toBe(0);
    expect(JSON.parse(listed.out)).toHaveLength(1);
    expect(listed.err).toBe(
      `warning: --key-file ${key} is open to other users (mode 0644): whoever can read it can read every snapshot ` +
        `of the repository; run \`chmod 600 ${key}\`, and if others did read it, treat the key as leaked\n`,
    );
    expect(listed.err).not.toContain("88".repeat(32));
  });

  it("exits non-zero from check, naming the damaged file", async () => {
    const source = join(root, "src3");
    await mkdir(source);
    await writeFile(join(source, "precious.bin"), Buffer.alloc(50_000, 9));
    await writeFile(join(root, "key4"), "44".repeat(32), { mode: 0o600 });
    const repoDir = join(root, "repo3");
    const common = ["--repo", pathToFileURL(repoDir).href, "--key-file", join(root, "key4")];
    await run("snapshot", "create", "--source", source, ...common, "--json");
    const packDir = join(repoDir, "data", (await readdir(join(repoDir, "data")))[0]);
    const packFile = join(packDir, (await readdir(packDir))[0]);
    const { readFile } = await import("node:fs/promises");
    const bytes = await readFile(packFile);
    bytes[30] ^= 1;
    await writeFile(packFile, bytes);
    const check = await run("snapshot", "check", ...common);
    expect(check.code).toBe(1);
    expect(check.err).toMatch(/chunk .* is damaged .*"precious\.bin"/);
    expect(check.err).toMatch(/check found 1 problem in /);
    // With --json, as `dumont snapshot check --json` prints it (less the tenant): snapshotId, files with theirs.
    const json = await run("snapshot", "check", ...common, "--json");
    expect(json.code).toBe(1);
    const report = JSON.parse(json.out);
    expect(report).toMatchObject({ ok: false, packs: 1, packsRead: 1 });
    expect(report.problems).toEqual([
      expect.objectContaining({
        kind: "chunk-corrupt",
        files: [{ snapshotId: expect.any(String), path: "precious.bin" }],
      }),
    ]);
    expect(report.problems[0].snapshot).toBeUndefined();
  });

  it("repairs lost index objects from the packs, so prune runs again and the next snapshot stores lost data again", async () => {
    const source = join(root, "src-repair");
    await mkdir(source);
    const data = randomBytes(200_000);
    await writeFile(join(source, "model.bin"), data);
    await writeFile(join(root, "key-repair"), "77".repeat(32), { mode: 0o600 });
    const repoDir = join(root, "repo-repair");
    const common = ["--repo", pathToFileURL(repoDir).href, "--key-file", join(root, "key-repair")];
    const state = ["--state-dir", join(root, "state-repair")];
    const first = JSON.parse((await run("snapshot", "create", "--source", source, ...common, ...state, "--json")).out);
    const [indexObject] = await readdir(join(repoDir, "index"));
    await rm(join(repoDir, "index", indexObject));

    // Prune will not guess whether the pack is an interrupted writer's; it points at the repair.
    const pruned = await run("snapshot", "forget", ...common, "--prune");
    expect(pruned.code).not.toBe(0);
    expect(pruned.err).toMatch(/the prune deletes nothing\. Run `snapshot repair-index`/);
    const dry = await run("snapshot", "repair-index", ...common, "--dry-run", "--json");
    expect(JSON.parse(dry.out)).toEqual({
      dryRun: true,
      packs: 1,
      rebuilt: [indexObject],
      removed: [],
      unrepairable: [],
    });
    expect(await readdir(join(repoDir, "index"))).toEqual([]);
    const repaired = await run("snapshot", "repair-index", ...common);
    expect(repaired).toMatchObject({ code: 0, err: "" });
    expect(repaired.out).toMatch(
      /^1 pack: rebuilt 1 index object from their packs' headers, removed 0 index objects of packs gone or unreadable\n/,
    );
    expect(await readdir(join(repoDir, "index"))).toEqual([indexObject]);
    expect((await run("snapshot", "check", ...common)).code).toBe(0);
    expect((await run("snapshot", "forget", ...common, "--prune")).code).toBe(0);

    // The pack itself lost: its index object goes, check names the file, and the next snapshot stores it again
    // though the agent's local index says the file is unchanged.
    const packDir = join(repoDir, "data", indexObject.slice(0, 2));
    await rm(join(packDir, indexObject));
    const notAPack = `${indexObject.slice(0, 2)}${"e".repeat(62)}`;
    await writeFile(join(packDir, notAPack), randomBytes(10)); // and a pack that is not one
    const removed = await run("snapshot", "repair-index", ...common);
    expect(removed.code).toBe(1);
    expect(removed.out).toMatch(
      /removed 1 index object of packs gone or unreadable\n.*\(pack missing\)\nthe snapshots that used/,
    );
    expect(removed.err).toMatch(
      new RegExp(
        `^cannot repair pack ${notAPack}: .*\\n1 pack could not be read whole \\(a header that does not open, or chunks that do not verify\\); run \`snapshot check\``,
      ),
    );
    expect(await readdir(join(repoDir, "index"))).toEqual([]);
    const check = await run("snapshot", "check", ...common);
    expect(check.err).toMatch(/chunk \w+ is in no pack; it breaks "model\.bin" in snapshot /);
    expect(check.err).toContain("`dumont-agent snapshot repair-index` rebuilds it from the packs' own headers");
    // Run after the repair removed what it could not rebuild: the advice goes on to what to do then.
    expect(check.err).toContain(
      "If it rebuilds nothing, those chunks are gone with their packs: the next snapshot of each workspace stores",
    );
    expect(check.err).toContain("`snapshot repair-snapshots --forget` then replaces those still damaged");
    const second = JSON.parse((await run("snapshot", "create", "--source", source, ...common, ...state, "--json")).out);
    expect(second).toMatchObject({ files: 1, bytesNew: data.length });
    expect(second.id).not.toBe(first.id);
    const target = join(root, "out-repair");
    expect((await run("snapshot", "restore", ...common, "--id", second.id, "--target", target)).code).toBe(0);
    expect((await readFile(join(target, "model.bin"))).equals(data)).toBe(true);
  });

  it("rewrites a pack without a damaged chunk, and the next snapshot of the unchanged workspace heals the old one", async () => {
    const source = join(root, "src-repair-packs");
    await mkdir(source);
    const files = { "a.bin": randomBytes(150_000), "b.bin": randomBytes(150_000) };
    for (const [name, data] of Object.entries(files)) await writeFile(join(source, name), data);
    await writeFile(join(root, "key-repair-packs"), "78".repeat(32), { mode: 0o600 });
    const repoDir = join(root, "repo-repair-packs");
    const common = ["--repo", pathToFileURL(repoDir).href, "--key-file", join(root, "key-repair-packs")];
    const state = ["--state-dir", join(root, "state-repair-packs")];
    const first = JSON.parse((await run("snapshot", "create", "--source", source, ...common, ...state, "--json")).out);
    // One pack holding both files' chunks: a byte flipped early in it damages the first chunk written.
    const [packId] = await readdir(join(repoDir, "index"));
    const packFile = join(repoDir, "data", packId.slice(0, 2), packId);
    const pack = await readFile(packFile);
    pack[1_000] ^= 0x01;
    await writeFile(packFile, pack);

    const check = await run("snapshot", "check", ...common);
    expect(check.code).toBe(1);
    expect(check.err).toMatch(/chunk \w+ is damaged .*; it breaks "[ab]\.bin" in snapshot /);
    // The way out, for this repository's damaged pack alone.
    expect(check.err).toContain(
      `\`dumont-agent snapshot repair-packs --repo ${pathToFileURL(repoDir).href} ${packId.slice(0, 16)}\` ` +
        "rewrites packs without their damaged chunks",
    );

    const dry = await run("snapshot", "repair-packs", ...common, "--dry-run", "--json");
    expect(dry.code).toBe(1);
    const dryReport = JSON.parse(dry.out);
    expect(dryReport).toMatchObject({
      dryRun: true,
      packs: 1,
      packsRead: 1,
      repaired: [{ pack: packId, salvaged: 1 }],
    });
    expect(dryReport.lost).toHaveLength(1);
    expect(await readdir(join(repoDir, "index"))).toEqual([packId]);

    const repaired = await run("snapshot", "repair-packs", ...common, packId.slice(0, 12));
    expect(repaired.code).toBe(1);
    expect(repaired.out).toMatch(/^1 pack read of 1: rewrote 1 pack without their damaged chunks\n/);
    expect(repaired.err).toMatch(
      /^1 damaged chunk is in no other pack \(\w{12}\): `dumont-agent snapshot check --repo /,
    );
    expect(await readdir(join(repoDir, "index"))).not.toContain(packId);
    const missing = await run("snapshot", "check", ...common);
    expect(missing.err).toMatch(/chunk \w+ is in no pack; it breaks "[ab]\.bin" in snapshot /);

    // The workspace has not changed, and its local index says so: the snapshot sends the lost chunk all the same.
    const second = JSON.parse((await run("snapshot", "create", "--source", source, ...common, ...state, "--json")).out);
    expect(second.bytesNew).toBe(150_000);
    expect((await run("snapshot", "check", ...common)).code).toBe(0);
    const target = join(root, "out-repair-packs");
    expect((await run("snapshot", "restore", ...common, "--id", first.id, "--target", target)).code).toBe(0);
    for (const [name, data] of Object.entries(files))
      expect((await readFile(join(target, name))).equals(data)).toBe(true);
  });

  it("replaces a snapshot whose file's data is gone for good with one without that file, which restores the rest", async () => {
    const source = join(root, "src-repair-snapshots");
    await mkdir(join(source, "empty"), { recursive: true });
    const files = { "a.bin": randomBytes(150_000), "b.bin": randomBytes(150_000), "note.txt": Buffer.from("kept\n") };
    for (const [name, data] of Object.entries(files)) await writeFile(join(source, name), data);
    await writeFile(join(root, "key-repair-snapshots"), "79".repeat(32), { mode: 0o600 });
    const repoDir = join(root, "repo-repair-snapshots");
    const repo = pathToFileURL(repoDir).href;
    const common = ["--repo", repo, "--key-file", join(root, "key-repair-snapshots")];
    const first = JSON.parse((await run("snapshot", "create", "--source", source, ...common, "--json")).out);
    // A byte flipped in the one pack damages the first chunk written; repair-packs takes it out, and the workspace
    // that had it is gone: that file's data is lost for good.
    const [packId] = await readdir(join(repoDir, "index"));
    const packFile = join(repoDir, "data", packId.slice(0, 2), packId);
    const pack = await readFile(packFile);
    pack[1_000] ^= 0x01;
    await writeFile(packFile, pack);
    expect((await run("snapshot", "repair-packs", ...common)).code).toBe(1);

    expect((await run("snapshot", "repair-snapshots", "not-hex", ...common)).err).toMatch(
      /^ID "not-hex" is not a snapshot id: give an id from `snapshot list`/,
    );
    const dry = await run("snapshot", "repair-snapshots", ...common, "--dry-run", "--json");
    expect(dry.code).toBe(0);
    const dryReport = JSON.parse(dry.out);
    expect(dryReport).toMatchObject({
      dryRun: true,
      snapshots: 1,
      repaired: [{ snapshot: first.id, filesRemoved: 1, bytesRemoved: 150_000, forgotten: false }],
      unrepairable: [],
    });
    const lost: string = dryReport.repaired[0].removed[0].path;
    expect(["a.bin", "b.bin"]).toContain(lost);

    // Without --forget the damaged snapshot stays beside its repair, and `snapshot diff` names every file left out.
    const repaired = await run("snapshot", "repair-snapshots", "latest", ...common);
    expect(repaired.code).toBe(0);
    expect(repaired.out).toMatch(
      new RegExp(
        `^snapshot ${first.id.slice(0, 12)} of ".*" at .*:\n  removed "${lost}": chunk \\w{12} is in no index\n` +
          "  1 file \\(146\\.5 KiB\\) left out; saved as snapshot (\\w{12})\n1 snapshot read: 1 snapshot repaired\n$",
      ),
    );
    expect(repaired.err).toContain(
      `\`dumont-agent snapshot forget --repo ${repo} ${first.id.slice(0, 12)}\` forgets it`,
    );
    const repairedId = repaired.out.match(/saved as snapshot (\w{12})/)![1];
    expect((await run("snapshot", "list", ...common)).out).toMatch(
      new RegExp(`^${repairedId} .* 2 \\(repaired from ${first.id.slice(0, 12)}\\) `, "m"),
    );
    const diff = JSON.parse((await run("snapshot", "diff", first.id, repairedId, ...common, "--json")).out);
    expect(diff.changes.map((c: { path: string; change: string }) => [c.path, c.change])).toEqual([[lost, "removed"]]);

    // With --forget, the repair already there is found (no second one), and the damaged snapshot goes.
    const forgot = await run("snapshot", "repair-snapshots", ...common, "--forget", "--json");
    expect(JSON.parse(forgot.out).repaired).toMatchObject([{ snapshot: first.id, forgotten: true }]);
    const listed = JSON.parse((await run("snapshot", "list", ...common, "--json")).out);
    expect(listed.map((s: { id: string; repairedFrom?: string }) => [s.id.slice(0, 12), s.repairedFrom])).toEqual([
      [repairedId, first.id],
    ]);
    expect((await run("snapshot", "check", ...common)).code).toBe(0);
    const target = join(root, "out-repair-snapshots");
    expect((await run("snapshot", "restore", ...common, "--id", "latest", "--target", target)).code).toBe(0);
    expect((await readdir(target)).sort()).toEqual(["a.bin", "b.bin", "empty", "note.txt"].filter((n) => n !== lost));
    for (const [name, data] of Object.entries(files)) {
      if (name !== lost) expect((await readFile(join(target, name))).equals(data)).toBe(true);
    }
  });

  it("round trips without WebAssembly (node --jitless): the JavaScript chunker, lz4-napi, buffered writes", async () => {
    const source = join(root, "src-jitless");
    await mkdir(join(source, "empty-dir"), { recursive: true });
    const files: Record<string, Buffer> = {
      "weights.bin": randomBytes(3 * 1024 * 1024), // several chunks, incompressible
      "metrics.csv": Buffer.from("step,loss,lr\n".concat("1024,0.25,0.001\n".repeat(150_000))), // LZ4 shrinks it
      "empty.txt": Buffer.alloc(0),
    };
    for (const [name, data] of Object.entries(files)) await writeFile(join(source, name), data);
    await writeFile(join(root, "key-jitless"), "66".repeat(32), { mode: 0o600 });
    const common = ["--repo", pathToFileURL(join(root, "repo-jitless")).href, "--key-file", join(root, "key-jitless")];
    const bin = fileURLToPath(new URL("../../bin/dumont-agent.js", import.meta.url));
    const agent = async (...args: string[]) =>
      (await promisify(execFile)(process.execPath, ["--jitless", bin, ...args], { encoding: "utf8" })).stdout;

    const created = JSON.parse(await agent("snapshot", "create", "--source", source, ...common, "--json"));
    const bytes = Object.values(files).reduce((sum, data) => sum + data.length, 0);
    expect(created).toMatchObject({ files: 3, bytesRead: bytes });
    expect(created.bytesStored).toBeLessThan(bytes - 1_000_000); // the CSV went through LZ4
    const target = join(root, "out-jitless");
    const restored = JSON.parse(
      await agent("snapshot", "restore", ...common, "--id", created.id, "--target", target, "--json"),
    );
    expect(restored).toMatchObject({ files: 3, bytesWritten: bytes });
    for (const [name, data] of Object.entries(files))
      expect((await readFile(join(target, name))).equals(data)).toBe(true);
    expect(await readdir(join(target, "empty-dir"))).toEqual([]);
    // And a restore with WebAssembly reads what the fallback wrote (the format does not depend on the codec).
    const again = join(root, "out-jitless-2");
    expect((await run("snapshot", "restore", ...common, "--id", created.id, "--target", again)).code).toBe(0);
    expect((await readFile(join(again, "metrics.csv"))).equals(files["metrics.csv"])).toBe(true);
  });

  it("stops quietly, as a process, when its reader closes the pipe (`… --json | head`)", async () => {
    const source = join(root, "src4");
    await mkdir(source);
    await writeFile(join(source, "a.txt"), "a\n");
    await writeFile(join(root, "key5"), "55".repeat(32), { mode: 0o600 });
    const common = ["--repo", pathToFileURL(join(root, "repo4")).href, "--key-file", join(root, "key5")];
    expect((await run("snapshot", "create", "--source", source, ...common, "--json")).code).toBe(0);
    const bin = fileURLToPath(new URL("../../bin/dumont-agent.js", import.meta.url));
    const child = spawn(process.execPath, [bin, "snapshot", "list", ...common, "--json"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.destroy(); // the reader is gone before the listing is printed
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const code = await new Promise((resolve) => child.once("close", resolve));
    expect({ code, stderr }).toEqual({ code: 0, stderr: "" }); // was: an unhandled EPIPE's stack trace, exit 1
  });
});
