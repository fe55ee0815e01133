// `dumont-agent snapshot create|restore|ls|diff|list|check|repair-index|repair-packs|repair-snapshots|forget`: direct mode, the engine writing straight to a
// repository URL with no control plane (operators, benchmarks). Same engine and format as the stream.
import { existsSync } from "node:fs";
import { open } from "node:fs/promises";
import { constants as osConstants } from "node:os";
import {
  type CheckReport,
  checkExcludePatterns,
  checkPathPatterns,
  checkRepository,
  counted,
  damagedPacks,
  diffLine,
  diffManifests,
  diffSummaryLine,
  forgetSnapshots,
  formatBytes,
  hasRetentionRule,
  isRepositoryError,
  listedEntry,
  listingLine,
  nothingIncluded,
  ProgressMeter,
  parseRepositoryKey,
  pruneAfterForget,
  pruneRepository,
  type RetentionPolicy,
  readSubsetOption,
  repairIndex,
  repairIndexAdvice,
  repairIndexText,
  repairPacks,
  repairPacksAdvice,
  repairPacksText,
  repairSnapshots,
  repairSnapshotsText,
  repositoryStats,
  roundSeconds,
  selectIncluded,
  statsText,
  table,
  unreadableSnapshotAdvice,
} from "@dumont/repository";
import { collect, flagParsers, READ_DATA_SUBSET } from "@dumont/repository/cli-flags";
import { flushStdout } from "@dumont/repository/cli-output";
import { printable, quoted } from "@dumont/repository/text-table";
import { type Command, InvalidArgumentError, Option } from "commander";
import {
  createDirectSnapshot,
  type DirectCreateOptions,
  type DirectRestoreOptions,
  defaultStateDir,
  RestoreDamagedError,
  RestoreLeftBehindError,
  restoreDirectSnapshot,
  withDirectRepository,
} from "../snapshot/index.js";

const { once, wholeNumber, retentionOptions, snapshotId } = flagParsers(InvalidArgumentError);
// --key-file's refusals are plain Errors, which the bin prints as their message alone: commander's
// InvalidArgumentError quotes the value, and a second --key-file may be the key itself.
const { once: onceUnquoted } = flagParsers(Error);

const REPO_HELP =
  "repository URL: file:///absolute/path or s3://bucket/prefix (S3 credentials and region from the AWS_* " +
  "variables, endpoint from DUMONT_S3_ENDPOINT)";
const EXCLUDE_HELP =
  "leave out what matches this pattern (gitignore syntax, relative to the source; repeat for more), after the " +
  "patterns of the source's own .dumontignore";
const ID_HELP = "snapshot id, a unique prefix of it (at least 4 characters), or `latest` for the newest";
const INCLUDE_HELP =
  'restore only what matches this pattern (gitignore syntax, relative to the snapshot\'s directory: "models/", ' +
  '"*.pt"; repeat for more), with the directories holding it';
const KEY_HELP =
  "file holding the repository key: 32 random bytes as 64 hex characters, as base64, or raw (default: DUMONT_REPO_KEY)";

/** --repo and --key-file, as every command takes them: given once, never empty. */
const repoOption = () =>
  new Option("--repo <url>", REPO_HELP).makeOptionMandatory().argParser(once("--repo", "a repository URL"));
const keyFileOption = () =>
  new Option("--key-file <file>", KEY_HELP).argParser(
    onceUnquoted("--key-file", "the path of the file holding the repository key"),
  );

interface KeyOptions {
  keyFile?: string;
}

interface RepoOptions extends KeyOptions {
  repo: string;
  json?: boolean;
}

export function registerSnapshotCommands(program: Command): void {
  const snapshot = program
    .command("snapshot")
    .description("take, restore and manage workspace snapshots directly in a repository (no control plane)");

  snapshot
    .command("create")
    .description("snapshot a directory (creates the repository on first use; unchanged files are not re-read)")
    .requiredOption("--source <dir>", "directory to snapshot", once("--source", "the directory to snapshot"))
    .addOption(repoOption())
    .addOption(keyFileOption())
    .option("--json", "print the result as one JSON object and no progress")
    .option(
      "--workspace <id>",
      "workspace id to record (default: the absolute source path)",
      once("--workspace", "a workspace id"),
    )
    // No commander default: it would reach once() as an earlier value.
    .option("--tenant <id>", "tenant id to record (default: local)", once("--tenant", "a tenant id"))
    .option(
      "--state-dir <dir>",
      "where the local index lives (default: DUMONT_STATE_DIR, else $XDG_STATE_HOME/dumont or ~/.local/state/dumont)",
      once("--state-dir", "the directory for the local index"),
    )
    .option("--exclude <pattern>", EXCLUDE_HELP, collect, [])
    .addOption(
      new Option("--pack-size <bytes>", "pack size")
        .argParser(once("--pack-size", wholeNumber("--pack-size", 1, 2 ** 30)))
        .hideHelp(),
    )
    .action(
      (
        opts: RepoOptions & {
          source: string;
          workspace?: string;
          tenant?: string;
          stateDir?: string;
          exclude: string[];
          packSize?: number;
        },
      ) =>
        withFriendlyErrors(opts, async () => {
          const exclude = checkExcludePatterns(opts.exclude, "--exclude");
          const key = await loadKey(opts);
          const meter = ProgressMeter.forStderr("snapshot", opts.json === true);
          const create: DirectCreateOptions = {
            repo: opts.repo,
            key,
            source: opts.source,
            workspace: opts.workspace,
            tenant: opts.tenant ?? "local",
            stateDir: opts.stateDir ?? defaultStateDir(),
            exclude,
            packSize: opts.packSize,
            onProgress: (p) => meter?.update(p.bytesRead, p.bytesToRead),
            // On stderr, --json or not: a mistyped --repo starts a repository nobody meant, and shows only here.
            create: {
              onCreated: (r, recreated) =>
                process.stderr.write(
                  recreated
                    ? `the repository at ${printable(opts.repo)} had lost its config; made a new one (id ${r.id}), ` +
                        "as its objects open with this key\n"
                    : `created a new repository at ${printable(opts.repo)} (id ${r.id}); only its key opens it: keep a copy\n`,
                ),
            },
          };
          const result = await interruptible(
            "no snapshot was made; what it had written is reused by the next one",
            (signal) => createDirectSnapshot({ ...create, signal }),
          ).finally(() => meter?.finish());
          for (const s of result.skipped) {
            process.stderr.write(`warning: left out ${quoted(s.path)}: ${printable(s.reason)}\n`);
          }
          printWarnings(result.warnings);
          const summary = {
            id: result.id,
            files: result.files,
            bytesRead: result.bytesRead,
            bytesNew: result.bytesNew,
            bytesStored: result.bytesStored,
            chunksNew: result.chunksNew,
            seconds: roundSeconds(result.seconds),
          };
          // As `dumont snapshot create --json`: what was left out, only when something was.
          const left = result.skipped.length;
          if (opts.json) print(left > 0 ? { ...summary, filesSkipped: left, skipped: result.skipped } : summary);
          else {
            process.stdout.write(
              `snapshot ${result.id} saved: ${counted(result.files, "file")}, ${formatBytes(result.bytesTotal)} ` +
                `(${formatBytes(result.bytesRead)} read, ${formatBytes(result.bytesNew)} new, ` +
                `${formatBytes(result.bytesStored)} stored) in ${result.seconds.toFixed(1)}s` +
                `${left > 0 ? `, ${left} left out` : ""}\n`,
            );
          }
          // Said when the output is lost (a full disk): its id, lest the snapshot be thought failed and taken again.
          await flushStdout((why) => `snapshot ${result.id} was saved; ${why}`);
        }),
    );

  snapshot
    .command("restore")
    .description("restore a snapshot into a new or empty directory, checking every chunk")
    .addOption(repoOption())
    .requiredOption("--id <id>", ID_HELP, once("--id", snapshotId("--id")))
    .requiredOption(
      "--target <dir>",
      "new or empty directory to restore into",
      once("--target", "a new or empty directory to restore into"),
    )
    .addOption(keyFileOption())
    .option("--json", "print the result as one JSON object and no progress")
    .option("--allow-external-symlinks", "also create symlinks that point outside the target (never followed)")
    .option("--no-owners", "leave everything owned by this user (as root, the recorded owners are given back)")
    .option("--include <pattern>", INCLUDE_HELP, collect, [])
    .option("--no-lock", "take no lock (for a repository you may only read); a prune may then run meanwhile")
    .action(
      (
        opts: RepoOptions & {
          id: string;
          target: string;
          allowExternalSymlinks?: boolean;
          include: string[];
          lock: boolean;
          owners: boolean;
        },
      ) =>
        withFriendlyErrors(opts, async () => {
          const include = checkPathPatterns(opts.include, "--include");
          const key = await loadKey(opts);
          const meter = ProgressMeter.forStderr("restore", opts.json === true);
          const restore: DirectRestoreOptions = {
            repo: opts.repo,
            key,
            snapshotId: opts.id,
            target: opts.target,
            allowExternalSymlinks: opts.allowExternalSymlinks,
            include,
            lock: opts.lock,
            // Commander's default for --no-owners is true: "as the restore's user allows", not "always".
            owners: opts.owners ? undefined : false,
            onProgress: (p) => meter?.update(p.bytesWritten, p.bytesTotal),
          };
          const result = await interruptible(
            `the restore was stopped and what it had written removed from ${opts.target}; run it again`,
            (signal) => restoreDirectSnapshot({ ...restore, signal }),
          ).finally(() => meter?.finish());
          printWarnings(result.warnings);
          if (opts.json)
            print({
              id: result.snapshotId,
              files: result.files,
              bytesWritten: result.bytesWritten,
              seconds: roundSeconds(result.seconds),
            });
          else {
            process.stdout.write(
              `restored snapshot ${result.snapshotId.slice(0, 12)} into ${opts.target}: ${counted(result.files, "file")}, ` +
                `${formatBytes(result.bytesWritten)} in ${result.seconds.toFixed(1)}s\n`,
            );
          }
        }),
    );

  snapshot
    .command("ls")
    .description("list the files of a snapshot (with --include, what `restore --include` would write)")
    .addOption(repoOption())
    .requiredOption("--id <id>", ID_HELP, once("--id", snapshotId("--id")))
    .option("--include <pattern>", INCLUDE_HELP.replace("restore only", "list only"), collect, [])
    .addOption(keyFileOption())
    .option("--json", "print a JSON array of {path, type, mode, size, mtime, uid, gid, target}")
    .action((opts: RepoOptions & { id: string; include: string[] }) =>
      withFriendlyErrors(opts, async () => {
        const include = checkPathPatterns(opts.include, "--include");
        const key = await loadKey(opts);
        const entries = await withDirectRepository({ repo: opts.repo, key }, async (r) => {
          const record = await r.findSnapshot(opts.id);
          const listed = selectIncluded((await r.readManifest(record)).entries, include);
          // What `restore --include` would write: nothing is that restore's error, so it is this listing's too.
          if (include.length > 0 && listed.length === 0) throw nothingIncluded(record.id, include);
          return listed;
        });
        if (opts.json) return print(entries.map(listedEntry));
        for (const e of entries) process.stdout.write(`${listingLine(listedEntry(e))}\n`);
      }),
    );

  snapshot
    .command("diff <before> <after>")
    .description("what changed from one snapshot to another (ids, unique prefixes or `latest`), path by path")
    .addOption(repoOption())
    .addOption(keyFileOption())
    .option("--json", "print {changes: [{path, change, sizeBefore, sizeAfter}], summary}")
    .action((before: string, after: string, opts: RepoOptions) =>
      withFriendlyErrors(opts, async () => {
        snapshotId("BEFORE")(before);
        snapshotId("AFTER")(after);
        const key = await loadKey(opts);
        const diff = await withDirectRepository({ repo: opts.repo, key }, async (r) =>
          diffManifests(
            await r.readManifest(await r.findSnapshot(before)),
            await r.readManifest(await r.findSnapshot(after)),
          ),
        );
        if (opts.json) return print(diff);
        for (const c of diff.changes) process.stdout.write(`${diffLine(c)}\n`);
        process.stdout.write(`${diffSummaryLine(diff.summary)}\n`);
      }),
    );

  snapshot
    .command("list")
    .description("list the snapshots in a repository, oldest first")
    .addOption(repoOption())
    .addOption(keyFileOption())
    .option("--json", "print a JSON array")
    .action((opts: RepoOptions) =>
      withFriendlyErrors(opts, async () => {
        const key = await loadKey(opts);
        // A record that would not open is named on stderr and the rest listed (restic's `snapshots` does the same).
        const unreadable: string[] = [];
        const snapshots = await withDirectRepository({ repo: opts.repo, key }, (r) =>
          r.listSnapshots({ onCorrupt: (id, err) => unreadable.push(`${id}: ${err.message}`) }),
        );
        for (const line of unreadable.sort()) {
          process.stderr.write(`warning: snapshot record ${line}; not listed (\`snapshot check\` says more)\n`);
        }
        if (opts.json) return print(snapshots);
        if (snapshots.length === 0) return void process.stdout.write("no snapshots\n");
        // Ids cut to 12 characters: `--id` takes any unique prefix, and 12 hex digits stay unique.
        process.stdout.write(
          table(
            ["ID", "CREATED", "FILES", "SIZE", "WORKSPACE"],
            snapshots.map((s) => [
              s.id.slice(0, 12),
              s.time,
              // A repair's snapshot says so: files its damaged one had are not in it (`snapshot diff` names them).
              `${s.totals.files}${s.stats?.filesSkipped ? ` (${s.stats.filesSkipped} left out)` : ""}` +
                `${s.repairedFrom ? ` (repaired from ${s.repairedFrom.slice(0, 12)})` : ""}`,
              formatBytes(s.totals.bytes),
              `${s.workspace}${s.epoch ? ` (epoch ${s.epoch})` : ""}`,
            ]),
          ),
        );
      }),
    );

  snapshot
    .command("stats")
    .description("what the repository's snapshots restore, what that is deduplicated, and what the store holds")
    .addOption(repoOption())
    .addOption(keyFileOption())
    .option(
      "--json",
      'print {"snapshots","files","bytes","chunks","chunkBytes","packs","packBytes","unreadableSnapshots"}',
    )
    .action((opts: RepoOptions) =>
      withFriendlyErrors(opts, async () => {
        const key = await loadKey(opts);
        const stats = await withDirectRepository({ repo: opts.repo, key }, (r) => repositoryStats(r));
        if (opts.json) {
          // The text says so in its table; JSON alone would undercount in silence for a script that reads the totals.
          if (stats.unreadableSnapshots.length > 0) {
            process.stderr.write(
              `warning: ${counted(stats.unreadableSnapshots.length, "snapshot record")} would not open and ` +
                `${stats.unreadableSnapshots.length === 1 ? "is" : "are"} not counted (\`snapshot check\` says why)\n`,
            );
          }
          return print(stats);
        }
        process.stdout.write(statsText(stats));
      }),
    );

  snapshot
    .command("check")
    .description("verify every index, snapshot and chunk hash; exits non-zero naming what is broken")
    .addOption(repoOption())
    .addOption(keyFileOption())
    .option("--json", "print the report as JSON and no progress")
    .option("--structure-only", "skip reading the packs (no chunk hashes checked)")
    .option(
      "--read-data-subset <subset>",
      `read only some packs, ${READ_DATA_SUBSET.help}`,
      once("--read-data-subset", READ_DATA_SUBSET.what),
    )
    .option("--no-lock", "take no lock (for a repository you may only read); a prune may then run meanwhile")
    .action((opts: RepoOptions & { structureOnly?: boolean; readDataSubset?: string; lock: boolean }) =>
      withFriendlyErrors(opts, async () => {
        const readSubset = readSubsetOption(opts.readDataSubset, opts.structureOnly === true, {
          subset: "--read-data-subset",
          structureOnly: "--structure-only",
        });
        const key = await loadKey(opts);
        const meter = ProgressMeter.forStderr("check", opts.json === true);
        const report = await interruptible("the check stopped before it finished; it changes nothing", (signal) =>
          withDirectRepository({ repo: opts.repo, key }, (r) =>
            checkRepository(r, {
              readData: !opts.structureOnly,
              readSubset,
              lock: opts.lock,
              onProgress: (p) => meter?.update(p.bytesDone, p.bytesTotal),
              signal,
            }),
          ),
        ).finally(() => meter?.finish());
        // Problems as `dumont snapshot check --json` prints them (snapshotId where the report says snapshot).
        if (opts.json) print(checkJson(report));
        else if (report.ok) {
          const subset = readSubset
            ? ` (subset ${opts.readDataSubset}: ${counted(report.packsRead, "pack")} read)`
            : "";
          process.stdout.write(
            `no problems: ${counted(report.snapshots, "snapshot")}, ${counted(report.packs, "pack")}, ` +
              `${counted(report.chunks, "chunk")}` +
              `${opts.structureOnly ? "" : `, ${formatBytes(report.bytesChecked)} verified${subset}`}\n`,
          );
        } else {
          for (const p of report.problems) process.stderr.write(`${p.message}\n`);
        }
        if (!report.ok) {
          process.stderr.write(`check found ${counted(report.problems.length, "problem")} in ${opts.repo}\n`);
          if (!opts.json) {
            const advice = [
              unreadableSnapshotAdvice(report.problems, `dumont-agent snapshot forget --repo ${opts.repo}`),
              repairIndexAdvice(report.problems, "dumont-agent snapshot repair-index"),
              repairPacksAdvice(
                report.problems,
                `dumont-agent snapshot repair-packs --repo ${opts.repo}${damagedPacks(report.problems)
                  .map((p) => ` ${p}`)
                  .join("")}`,
              ),
            ];
            for (const line of advice) if (line) process.stderr.write(`${line}\n`);
          }
          process.exitCode = 1;
        }
      }),
    );

  snapshot
    .command("repair-index")
    .description(
      "rebuild lost or damaged index objects from the packs' own headers, and remove those whose pack is gone " +
        "(then run check)",
    )
    .addOption(repoOption())
    .addOption(keyFileOption())
    .option("--dry-run", "say what would be repaired, change nothing")
    .option("--json", "print the report as JSON and no progress")
    .action((opts: RepoOptions & { dryRun?: boolean }) =>
      withFriendlyErrors(opts, async () => {
        const key = await loadKey(opts);
        const meter = ProgressMeter.forStderr("repair-index", opts.json === true, "packs");
        const report = await interruptible(
          "the repair stopped; the index objects it wrote are whole, and running it again goes on",
          (signal) =>
            withDirectRepository({ repo: opts.repo, key }, (r) =>
              repairIndex(r, {
                dryRun: opts.dryRun,
                signal,
                onProgress: (p) => meter?.update(p.packsDone, p.packsTotal),
              }),
            ),
        ).finally(() => meter?.finish());
        const text = repairIndexText(report, opts.dryRun === true);
        if (opts.json) print({ dryRun: opts.dryRun === true, ...report });
        else process.stdout.write(text.out);
        if (report.unrepairable.length > 0) {
          process.stderr.write(text.err);
          process.stderr.write(
            `${counted(report.unrepairable.length, "pack")} could not be read whole (a header that does not open, or ` +
              `chunks that do not verify); run \`snapshot check\` on ${opts.repo} ` +
              "to see what they break (a prune deletes them once no snapshot needs them)\n",
          );
          process.exitCode = 1;
        }
      }),
    );

  snapshot
    .command("repair-packs [packs...]")
    .description(
      "rewrite packs whose chunks do not verify without those chunks (the packs named, as check names them, or " +
        "every pack), so the next snapshot that has their bytes stores them again (then run check)",
    )
    .addOption(repoOption())
    .addOption(keyFileOption())
    .option("--dry-run", "say what would be rewritten and lost, change nothing")
    .option("--json", "print the report as JSON and no progress")
    .action((packs: string[], opts: RepoOptions & { dryRun?: boolean }) =>
      withFriendlyErrors(opts, async () => {
        const key = await loadKey(opts);
        const meter = ProgressMeter.forStderr("repair-packs", opts.json === true);
        const report = await interruptible(
          "the repair stopped; what it rewrote is whole, and running it again goes on",
          (signal) =>
            withDirectRepository({ repo: opts.repo, key }, (r) =>
              repairPacks(r, {
                dryRun: opts.dryRun,
                packs: packs.length > 0 ? packs : undefined,
                signal,
                onProgress: (p) => meter?.update(p.bytesDone, p.bytesTotal),
              }),
            ),
        ).finally(() => meter?.finish());
        const text = repairPacksText(report, opts.dryRun === true, `dumont-agent snapshot check --repo ${opts.repo}`);
        if (opts.json) print({ dryRun: opts.dryRun === true, ...report });
        else process.stdout.write(text.out);
        process.stderr.write(text.err);
        // Exit 1 while anything is still broken: a pack it could not read, or chunks no pack holds now.
        if (report.skipped.length > 0 || report.lost.length > 0) process.exitCode = 1;
      }),
    );

  snapshot
    .command("repair-snapshots [ids...]")
    .description(
      "replace each snapshot whose files' data is gone for good (in no index, or in packs the store no longer has) " +
        "with one without those files (the snapshots named: ids, unique prefixes or `latest`; or every one). Run " +
        "check, repair-index and repair-packs first, and snapshot again what still exists: that heals instead",
    )
    .addOption(repoOption())
    .addOption(keyFileOption())
    .option("--forget", "forget each damaged snapshot once its repair is saved")
    .option("--dry-run", "say which files would be left out, change nothing")
    .option("--json", "print the report as JSON and no progress")
    .action((ids: string[], opts: RepoOptions & { forget?: boolean; dryRun?: boolean }) =>
      withFriendlyErrors(opts, async () => {
        for (const id of ids) snapshotId("ID")(id);
        const key = await loadKey(opts);
        const meter = ProgressMeter.forStderr("repair-snapshots", opts.json === true, "snapshots");
        const report = await interruptible(
          "the repair stopped; each snapshot it saved is whole, and running it again goes on",
          (signal) =>
            withDirectRepository({ repo: opts.repo, key }, (r) =>
              repairSnapshots(r, {
                ids,
                forget: opts.forget,
                dryRun: opts.dryRun,
                signal,
                onProgress: (p) => meter?.update(p.snapshotsDone, p.snapshotsTotal),
              }),
            ),
        ).finally(() => meter?.finish());
        const text = repairSnapshotsText(
          report,
          opts.dryRun === true,
          `dumont-agent snapshot forget --repo ${opts.repo}`,
        );
        if (opts.json) print({ dryRun: opts.dryRun === true, ...report });
        else process.stdout.write(text.out);
        process.stderr.write(text.err);
        // Exit 1 while a snapshot is still broken: one whose record or manifest does not open.
        if (report.unrepairable.length > 0) process.exitCode = 1;
      }),
    );

  const forget = snapshot
    .command("forget [ids...]")
    .description(
      "forget the snapshots named (ids, unique prefixes or `latest`), or by a retention policy (per workspace); --prune " +
        "then deletes data nothing needs",
    )
    .addOption(repoOption())
    .addOption(keyFileOption());
  for (const [flags, help, parse] of retentionOptions()) forget.option(flags, help, parse);
  forget
    .option("--workspace <id>", "only consider snapshots of this workspace", once("--workspace", "a workspace id"))
    .option("--prune", "delete the packs no remaining snapshot needs (and repack mostly-unused ones)")
    .option("--dry-run", "say what would happen, change nothing")
    .option("--json", "print the result as JSON")
    .action(
      (
        ids: string[],
        opts: RepoOptions & {
          keepLast?: number;
          keepHourly?: number;
          keepDaily?: number;
          keepWeekly?: number;
          workspace?: string;
          prune?: boolean;
          dryRun?: boolean;
        },
      ) =>
        withFriendlyErrors(opts, async () => {
          for (const id of ids) snapshotId("ID")(id);
          const policy: RetentionPolicy = {
            last: opts.keepLast,
            hourly: opts.keepHourly,
            daily: opts.keepDaily,
            weekly: opts.keepWeekly,
          };
          const forgetting = hasRetentionRule(policy) || ids.length > 0;
          if (!forgetting && !opts.prune) {
            throw new Error(
              "say what to keep: --keep-last N (or --keep-hourly/--keep-daily/--keep-weekly), or which snapshot " +
                "ids to forget, and/or --prune",
            );
          }
          if (opts.workspace !== undefined && !hasRetentionRule(policy)) {
            // Not ignored: a prune alone covers the whole repository, and a typo would go unnoticed.
            throw new Error(
              "--workspace narrows a --keep-* policy: give one with it (a prune covers the whole repository, and " +
                "snapshot ids name their snapshots already)",
            );
          }
          const key = await loadKey(opts);
          const work = (signal?: AbortSignal) =>
            withDirectRepository({ repo: opts.repo, key }, async (r) => {
              const forgot = forgetting
                ? await forgetSnapshots(r, {
                    policy,
                    ids,
                    workspace: opts.workspace,
                    refuseUnknownWorkspace: true,
                    dryRun: opts.dryRun,
                  })
                : { kept: [], forgotten: [] };
              // A dry run's prune counts what the forget would remove as gone: what the two would free together.
              const assumeForgotten = new Set(forgot.forgotten);
              return {
                ...forgot,
                ...(opts.prune
                  ? {
                      prune: await pruneAfterForget(
                        forgot.forgotten,
                        () => pruneRepository(r, { dryRun: opts.dryRun, assumeForgotten, signal }),
                        { dryRun: opts.dryRun },
                      ),
                    }
                  : {}),
              };
            });
          // Forgetting deletes a few small objects and takes its signals as any command; a prune stops before it
          // deletes a pack, or between the packs it repacks, and releases its lock.
          const result = opts.prune
            ? await interruptible(
                "the prune stopped; what it had not deleted is still there, and the next prune goes on",
                work,
              )
            : await work();
          if (opts.json) return print({ dryRun: opts.dryRun === true, ...result });
          const verb = opts.dryRun ? "would forget" : "forgot";
          if (forgetting) {
            process.stdout.write(
              `${verb} ${counted(result.forgotten.length, "snapshot")}, keeping ${result.kept.length}\n`,
            );
            for (const id of result.forgotten) process.stdout.write(`  ${id.slice(0, 12)}\n`);
          }
          if (result.prune) {
            const p = result.prune;
            process.stdout.write(
              `${opts.dryRun ? "would free" : "freed"} ${formatBytes(Math.max(0, p.bytesFreed))}: ` +
                `${counted(p.packsDeleted, "unused pack")}, ${p.orphanPacksDeleted} left by interrupted snapshots, ` +
                `${p.packsRepacked} repacked, ${counted(p.tempFilesDeleted, "temp file")} of cut-short writes\n`,
            );
          }
        }),
    );
}

/** Whether `text` is a key as parseRepositoryKey reads one (hex or base64 of 32 bytes). */
function readsAsKey(text: string): boolean {
  try {
    parseRepositoryKey(text);
    return true;
  } catch {
    return false;
  }
}

async function loadKey(opts: KeyOptions): Promise<Buffer> {
  if (opts.keyFile) {
    // The key itself given for the path (`--key-file "$DUMONT_REPO_KEY"`): said without repeating it, as the
    // control plane's CLI never repeats --api-key (errors end up in logs and CI output). Checked here, not in the
    // flag's parser, whose errors commander prints with the value.
    if (!existsSync(opts.keyFile) && readsAsKey(opts.keyFile)) {
      throw new Error(
        "--key-file takes the path of a file holding the repository key, and was given what looks like the key " +
          "itself (not repeated here): put the key in a file only you can read, or set DUMONT_REPO_KEY",
      );
    }
    return parseRepositoryKey(await readKeyFile(opts.keyFile), `--key-file ${opts.keyFile}`);
  }
  const env = process.env.DUMONT_REPO_KEY;
  // Not left for the processes this one starts (a restore's `sync`, found on PATH), as the control plane does
  // with DUMONT_MASTER_KEY.
  delete process.env.DUMONT_REPO_KEY;
  if (env) return parseRepositoryKey(env, "DUMONT_REPO_KEY");
  throw new Error(
    "no repository key: pass --key-file FILE or set DUMONT_REPO_KEY (create a key with `(umask 077; openssl rand -hex 32 > FILE)` " +
      "and keep it safe: without it the snapshots cannot be read)",
  );
}

/** A command stopped by SIGINT or SIGTERM, once it had cleaned up: exit 128 + the signal's number, as shells expect. */
class Interrupted extends Error {
  readonly exitCode: number;
  constructor(signal: NodeJS.Signals, outcome: string) {
    super(`interrupted (${signal}): ${outcome}`);
    this.exitCode = 128 + osConstants.signals[signal];
  }
}

/**
 * Runs `work` so that the first SIGINT (Ctrl-C) or SIGTERM aborts it, and it cleans up as on any failure (a
 * restore empties its target, a snapshot drops its unfinished pack and releases its lock), then fails with
 * Interrupted, saying `outcome`. A second signal exits at once, as restic's does. Killed by the signal instead,
 * a restore leaves its half-written target with its marker (the next restore clears it and starts over), and
 * the lock behind.
 */
async function interruptible<T>(outcome: string, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  let received: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    if (received) process.exit(128 + osConstants.signals[signal]);
    received = signal;
    process.stderr.write(`\n${signal}: stopping and cleaning up (again to stop at once)\n`);
    controller.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    return await work(controller.signal);
  } catch (err) {
    // A restore that could not take back all it wrote says so instead of the outcome hoped for.
    if (received) throw new Interrupted(received, err instanceof RestoreLeftBehindError ? err.leftBehind : outcome);
    throw err;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/** What a snapshot or restore wants its caller told though it went through: on stderr, `--json` or not. */
function printWarnings(warnings: string[] = []): void {
  for (const w of warnings) process.stderr.write(`warning: ${printable(w)}\n`);
}

/** Turns repository errors into sentences that name the flag to change. */
async function withFriendlyErrors(opts: RepoOptions, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof RestoreDamagedError) {
      // It kept all but the damaged files, and may have warnings (a failed flush) like a restore that succeeded.
      printWarnings(err.result.warnings);
      throw new Error(`${err.message}; run \`snapshot check\` on ${opts.repo}`);
    }
    if (!isRepositoryError(err)) throw err;
    const keySource = opts.keyFile ? `--key-file ${opts.keyFile}` : "DUMONT_REPO_KEY";
    switch (err.code) {
      case "wrong-key":
        throw new Error(
          `the key from ${keySource} does not open the repository at ${opts.repo}; use the key it was created with`,
        );
      case "not-initialised":
        throw new Error(`there is no repository at --repo ${opts.repo} (the first \`snapshot create\` makes one)`);
      case "invalid-argument":
        throw new Error(/repository URL/.test(err.message) ? `--repo: ${err.message}` : err.message);
      case "read-only":
        // Only the commands that offer --no-lock (restore, check) have a way round it.
        if ("lock" in opts) {
          throw new Error(
            `${err.message}. For a repository you may only read, add --no-lock (nothing then stops a prune ` +
              "from deleting what this reads meanwhile)",
          );
        }
        throw err;
      default:
        throw err;
    }
  }
}

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/** Largest key file read: a key is 64 hex characters; this leaves room for whitespace, never for /dev/zero. */
const MAX_KEY_FILE = 4096;

/** A key file's bytes, read up to MAX_KEY_FILE (a pipe from `<(…)` works too). Errors name the flag. */
async function readKeyFile(file: string): Promise<Buffer> {
  const fail = (why: string) =>
    new Error(
      `--key-file ${file}: ${why}; give the file holding the repository key (64 hex characters, as ` +
        "`(umask 077; openssl rand -hex 32 > FILE)` makes)",
    );
  const buffer = Buffer.alloc(MAX_KEY_FILE + 1);
  let length = 0;
  try {
    const handle = await open(file, "r");
    try {
      warnIfOthersMayRead(file, (await handle.stat()).mode);
      for (;;) {
        const { bytesRead } = await handle.read(buffer, length, buffer.length - length);
        length += bytesRead;
        if (bytesRead === 0 || length === buffer.length) break;
      }
    } finally {
      await handle.close();
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === undefined) throw err;
    const why: Record<string, string> = {
      ENOENT: "there is no such file",
      EISDIR: "it is a directory",
      EACCES: "permission denied",
      EPERM: "permission denied",
    };
    throw fail(why[code] ?? `cannot read it (${code})`);
  }
  if (length > MAX_KEY_FILE) throw fail(`it holds more than ${MAX_KEY_FILE} bytes, too many for a key`);
  return buffer.subarray(0, length);
}

/**
 * Warns, on stderr, when users other than the owner may read or write a regular key file. A warning rather than
 * ssh's refusal: `openssl rand -hex 32 > FILE` under the usual umask 022 makes a 0644 file, and a key mounted
 * read-only into a container (0444) is common; but whoever else can read the file can read every snapshot.
 * Pipes (`--key-file <(…)`) and devices have no such mode to judge.
 */
function warnIfOthersMayRead(file: string, mode: number): void {
  if ((mode & 0o170000) !== 0o100000 || !(mode & 0o077)) return;
  printWarnings([
    `--key-file ${file} is open to other users (mode 0${(mode & 0o777).toString(8)}): whoever can read it can read ` +
      `every snapshot of the repository; run \`chmod 600 ${file}\`, and if others did read it, treat the key as leaked`,
  ]);
}

/** A check's report as both CLIs print it with --json (the control plane's adds each problem's tenantId). */
function checkJson(report: CheckReport): object {
  return {
    ...report,
    problems: report.problems.map(({ snapshot, files, ...p }) => ({
      ...p,
      ...(snapshot ? { snapshotId: snapshot } : {}),
      files: (files ?? []).map((f) => ({ snapshotId: f.snapshot, path: f.path })),
    })),
  };
}
