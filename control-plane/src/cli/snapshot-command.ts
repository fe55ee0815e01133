// `dumont snapshot …` (admin): snapshot a directory on a host through its agent, list, ls, diff, restore, check,
// repair-index, repair-packs, repair-snapshots, forget. Create and restore use the streaming RPCs, so a terminal
// shows bytes, rate and time left as the agent works.
import { api } from "@dumont/proto";
import { collect, flagParsers, READ_DATA_SUBSET, SNAPSHOT_ID_OR_PREFIX } from "@dumont/repository/cli-flags";
import { flushStdout } from "@dumont/repository/cli-output";
import { counted, firstFew } from "@dumont/repository/counted";
import { type ListedEntry, listingLine, mtimeText, withOwnerAndTarget } from "@dumont/repository/listing";
import {
  type DiffChange,
  type DiffEntry,
  type DiffSummary,
  diffLine,
  diffSummaryLine,
} from "@dumont/repository/manifest-diff";
// The meter and byte formatting alone: a CLI call needs nothing else of the package.
import { checkExcludePatterns, checkPathPatterns, IGNORE_FILE } from "@dumont/repository/path-patterns";
import { formatBytes, ProgressMeter, roundSeconds } from "@dumont/repository/progress-meter";
import { readSubsetOption } from "@dumont/repository/read-subset";
import { repairIndexAdvice, repairIndexText } from "@dumont/repository/repair-index-report";
import {
  damagedPacks,
  packRepairMends,
  repairPacksAdvice,
  repairPacksText,
} from "@dumont/repository/repair-packs-report";
import { repairSnapshotsText, unreadableSnapshotAdvice } from "@dumont/repository/repair-snapshots-report";
import { quoted } from "@dumont/repository/text-table";
import { type Command, InvalidArgumentError } from "commander";
import { type ApiOptions, apiClients, tenantFlag } from "./api-client.js";
import { iso, print, printable, table } from "./output.js";

const INCLUDE_HELP =
  `restore only what matches this pattern (gitignore syntax, relative to the snapshot's directory: "models/", ` +
  `"*.pt"; repeat for more), with the directories holding it`;

export function registerSnapshotCommands(program: Command): void {
  const snapshot = program.command("snapshot").description("workspace snapshots stored by the control plane (admin)");
  const apiOpts = (cmd: Command): ApiOptions => cmd.optsWithGlobals() as ApiOptions;

  snapshot
    .command("create")
    .description("snapshot a directory on a host; the agent streams it to the control plane's blob store")
    .requiredOption("--host <hostId>", "the host holding the directory", once("--host", nonEmpty("--host", HOST_WHAT)))
    .requiredOption("--path <dir>", "absolute path of the directory on that host", once("--path", absolute("--path")))
    .option(
      "--workspace <id>",
      "workspace id to file the snapshot under (default HOST:PATH)",
      once("--workspace", nonEmpty("--workspace", "a workspace id")),
    )
    .option(
      "--exclude <pattern>",
      `leave out what matches this pattern (gitignore syntax, relative to --path; repeat for more), after the ` +
        `patterns of the directory's own ${IGNORE_FILE}`,
      collect,
      [],
    )
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const exclude = checkExcludePatterns(opts.exclude, "--exclude");
      const snapshot = await follow<api.Snapshot>(
        "snapshot",
        opts.json === true,
        apiClients(apiOpts(cmd)).snapshots.createSnapshotStream({
          hostId: opts.host,
          path: opts.path,
          workspaceId: opts.workspace,
          exclude,
        }),
      );
      const s = snapshotJson(snapshot);
      warnSkipped(s);
      if (opts.json) print(s);
      else {
        process.stdout.write(
          `snapshot ${s.id}: ${counted(s.files, "file")}, ${formatBytes(s.bytesRead)} read, ${formatBytes(s.bytesNew)} new, ` +
            `${formatBytes(s.bytesStored)} stored in ${s.seconds.toFixed(1)}s` +
            `${s.filesSkipped ? `, ${s.filesSkipped} left out` : ""}\n`,
        );
      }
      // Said when the output is lost (a full disk): its id, lest the snapshot be thought failed and taken again.
      await flushStdout((why) => `snapshot ${s.id} was saved; ${why}`);
    });

  snapshot
    .command("list")
    .description("committed snapshots")
    .option("--host <hostId>", "only this host's", once("--host", nonEmpty("--host", HOST_WHAT)))
    .option("--workspace <id>", "only this workspace's", once("--workspace", nonEmpty("--workspace", "a workspace id")))
    .option("--tenant <id>", "only this tenant's", tenantFlag)
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const res = await apiClients(apiOpts(cmd)).snapshots.listSnapshots({
        hostId: opts.host,
        workspaceId: opts.workspace,
        tenantId: opts.tenant,
      });
      const list = res.snapshots.map(snapshotJson);
      if (opts.json) return print(list);
      if (list.length === 0) {
        // Narrowed to nothing (a mistyped workspace id, say): which filters, and how to see them all.
        const filters = [
          opts.workspace && `of workspace ${JSON.stringify(opts.workspace)}`,
          opts.host && `from host ${opts.host}`,
          opts.tenant && `of tenant ${opts.tenant}`,
        ].filter(Boolean);
        process.stdout.write(
          filters.length > 0
            ? `No snapshots ${filters.join(", ")}; \`dumont snapshot list\` lists every one.\n`
            : "No snapshots. Take one with `dumont snapshot create --host HOST_ID --path DIR`.\n",
        );
        return;
      }
      process.stdout.write(snapshotTable(list));
    });

  snapshot
    .command("ls <snapshotId>")
    .description("list a snapshot's files (with --include, what `restore --include` would write)")
    .option("--include <pattern>", INCLUDE_HELP.replace("restore only", "list only"), collect, [])
    .option("--json", "print a JSON array of {path, type, mode, size, mtime, uid, gid, target}")
    .action(async (snapshotId: string, opts, cmd: Command) => {
      checkSnapshotIds("SNAPSHOT_ID", [snapshotId]);
      const include = checkPathPatterns(opts.include, "--include");
      const listed: ListedEntry[] = [];
      for await (const batch of apiClients(apiOpts(cmd)).snapshots.listSnapshotFiles({ snapshotId, include })) {
        for (const f of batch.files) {
          const e = listedFromApi(f);
          if (opts.json) listed.push(e);
          else process.stdout.write(`${listingLine(e)}\n`);
        }
      }
      if (opts.json) print(listed);
    });

  snapshot
    .command("diff <before> <after>")
    .description("what changed from one snapshot to another (ids or unique prefixes), path by path")
    .option("--json", "print {changes: [{path, change, sizeBefore, sizeAfter}], summary}")
    .action(async (before: string, after: string, opts, cmd: Command) => {
      checkSnapshotIds("SNAPSHOT_ID", [before, after]);
      const changes: DiffEntry[] = [];
      let summary: DiffSummary | undefined;
      for await (const batch of apiClients(apiOpts(cmd)).snapshots.diffSnapshots({
        beforeId: before,
        afterId: after,
      })) {
        for (const c of batch.changes) {
          const e = {
            path: c.path,
            change: c.change as DiffChange,
            sizeBefore: Number(c.sizeBefore),
            sizeAfter: Number(c.sizeAfter),
          };
          if (opts.json) changes.push(e);
          else process.stdout.write(`${diffLine(e)}\n`);
        }
        if (batch.summary) {
          const { bytesAdded, bytesRemoved, ...counts } = batch.summary;
          summary = {
            added: Number(counts.added),
            removed: Number(counts.removed),
            modified: Number(counts.modified),
            metadata: Number(counts.metadata),
            type: Number(counts.type),
            bytesAdded: Number(bytesAdded),
            bytesRemoved: Number(bytesRemoved),
          };
        }
      }
      if (!summary) throw new Error("the control plane ended the diff without its summary; see its log");
      if (opts.json) print({ changes, summary });
      else process.stdout.write(`${diffSummaryLine(summary)}\n`);
    });

  snapshot
    .command("restore <snapshotId>")
    .description("restore a snapshot (an id or a unique prefix) into a new or empty directory on a host")
    .requiredOption("--host <hostId>", "the host to restore onto", once("--host", nonEmpty("--host", HOST_WHAT)))
    .requiredOption(
      "--target <dir>",
      "absolute path of a new or empty directory on that host",
      once("--target", absolute("--target")),
    )
    .option("--include <pattern>", INCLUDE_HELP, collect, [])
    .option(
      "--no-owners",
      "leave everything owned by the agent's user (an agent running as root gives the recorded owners back)",
    )
    .option("--json", "print JSON")
    .action(async (snapshotId: string, opts, cmd: Command) => {
      checkSnapshotIds("SNAPSHOT_ID", [snapshotId]);
      const include = checkPathPatterns(opts.include, "--include");
      const res = await follow<api.RestoreSnapshotResponse>(
        "restore",
        opts.json === true,
        apiClients(apiOpts(cmd)).snapshots.restoreSnapshotStream({
          snapshotId,
          hostId: opts.host,
          target: opts.target,
          include,
          // Commander sets `owners` false for --no-owners.
          noOwners: opts.owners === false,
        }),
      );
      // As `dumont-agent snapshot restore` prints them: on stderr, with or without --json.
      for (const w of res.warnings) process.stderr.write(`warning: ${printable(w)}\n`);
      // As `dumont-agent snapshot restore --json` prints it (an older control plane names no id: the one asked).
      const out = {
        id: res.snapshotId || snapshotId,
        files: Number(res.files),
        bytesWritten: Number(res.bytesWritten),
        seconds: roundSeconds(res.seconds),
      };
      if (opts.json) return print(out);
      process.stdout.write(
        `restored snapshot ${out.id.slice(0, 12)} into ${opts.target} on ${opts.host}: ${counted(out.files, "file")}, ` +
          `${formatBytes(out.bytesWritten)} in ${out.seconds.toFixed(1)}s\n`,
      );
    });

  snapshot
    .command("check")
    .description(
      "verify the blob store: every index, snapshot and manifest opens and every chunk hashes to its id; exits " +
        "non-zero naming what is broken and the files it breaks",
    )
    .option("--structure-only", "skip reading the packs (no chunk hashes checked)")
    .option(
      "--read-data-subset <subset>",
      `read only some packs of each tenant, ${READ_DATA_SUBSET.help}`,
      once("--read-data-subset", nonEmpty("--read-data-subset", READ_DATA_SUBSET.what)),
    )
    .option("--tenant <id>", "only this tenant's repository (else every tenant's)", tenantFlag)
    .option("--json", "print the report as JSON")
    .action(async (opts, cmd: Command) => {
      // Checked here too, to name the flags (the API's refusal names its fields).
      readSubsetOption(opts.readDataSubset, opts.structureOnly === true, {
        subset: "--read-data-subset",
        structureOnly: "--structure-only",
      });
      const report = await follow<api.CheckReport>(
        "check",
        opts.json === true,
        apiClients(apiOpts(cmd)).snapshots.checkSnapshots({
          structureOnly: opts.structureOnly === true,
          readDataSubset: opts.readDataSubset ?? "",
          tenantId: opts.tenant,
        }),
      );
      // As `dumont-agent snapshot check --json` prints it, with each problem's tenant.
      const out = {
        ok: report.ok,
        snapshots: Number(report.snapshots),
        packs: Number(report.packs),
        packsRead: Number(report.packsRead),
        chunks: Number(report.chunks),
        bytesChecked: Number(report.bytesChecked),
        problems: report.problems.map((p) => ({
          tenantId: p.tenantId,
          kind: p.kind,
          message: p.message,
          ...(p.pack ? { pack: p.pack } : {}),
          ...(p.chunk ? { chunk: p.chunk } : {}),
          ...(p.snapshotId ? { snapshotId: p.snapshotId } : {}),
          files: p.files.map((f) => ({ snapshotId: f.snapshotId, path: f.path })),
          ...(p.filesNotNamed > 0n ? { filesNotNamed: Number(p.filesNotNamed) } : {}),
          ...(p.wholeIn ? { wholeIn: p.wholeIn } : {}),
        })),
      };
      if (opts.json) print(out);
      else if (out.ok) {
        process.stdout.write(
          `no problems: ${counted(out.snapshots, "snapshot")}, ${counted(out.packs, "pack")}, ${counted(out.chunks, "chunk")}` +
            `${opts.structureOnly ? "" : `, ${formatBytes(out.bytesChecked)} verified`}` +
            `${opts.readDataSubset ? ` (subset ${opts.readDataSubset} of each tenant's packs: ${counted(out.packsRead, "pack")} read)` : ""}\n`,
        );
      } else for (const p of out.problems) process.stderr.write(`${p.message}\n`);
      if (!out.ok) {
        process.stderr.write(`check found ${counted(out.problems.length, "problem")}\n`);
        const forgetAdvice = !opts.json && unreadableSnapshotAdvice(out.problems, "dumont snapshot forget");
        if (forgetAdvice) process.stderr.write(`${forgetAdvice}\n`);
        const advice = !opts.json && repairIndexAdvice(out.problems, "dumont snapshot repair-index");
        if (advice) process.stderr.write(`${advice}\n`);
        const packsAdvice = !opts.json && repairPacksAdvice(out.problems, repairPacksCommand(out.problems));
        if (packsAdvice) process.stderr.write(`${packsAdvice}\n`);
        process.exitCode = 1;
      }
    });

  snapshot
    .command("repair-index")
    .description(
      "rebuild each tenant's lost or damaged index objects from the packs' own headers, and remove those of packs " +
        "gone or unreadable (then run check); a tenant with a snapshot, restore or check running is skipped, saying so",
    )
    .option("--tenant <id>", "only this tenant's blob store", tenantFlag)
    .option("--dry-run", "say what would be repaired, change nothing")
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const dryRun = opts.dryRun === true;
      const res = await apiClients(apiOpts(cmd)).snapshots.repairIndex({ dryRun, tenantId: opts.tenant });
      const tenants = res.tenants.map((t) => ({
        tenantId: t.tenantId,
        packs: Number(t.packs),
        rebuilt: t.rebuilt,
        removed: t.removed,
        unrepairable: t.unrepairable.map((p) => ({ pack: p.pack, message: p.message })),
        ...(t.error ? { error: t.error } : {}),
      }));
      const { failed, unrepaired: unrepairable } = printTenantRepairs(tenants, opts.json === true, dryRun, (t) => ({
        ...repairIndexText(t, dryRun, `tenant ${t.tenantId}: `),
        unrepaired: t.unrepairable.length,
      }));
      if (unrepairable > 0) {
        process.stderr.write(
          `${counted(unrepairable, "pack")} could not be read whole (a header that does not open, or chunks that do ` +
            "not verify); run `dumont snapshot check` to see what they break\n",
        );
      }
      if (unrepairable + failed > 0) process.exitCode = 1;
    });

  snapshot
    .command("repair-packs [packs...]")
    .description(
      "rewrite each tenant's packs holding chunks that do not verify without those chunks (then run check): a " +
        "damaged chunk another pack holds is found there, and the next snapshot of a workspace that still has the " +
        "others stores them again; PACKS (ids or unique prefixes, as check names them; with --tenant) reads only " +
        "those; a tenant with a snapshot, restore or check running is skipped, saying so",
    )
    .option("--tenant <id>", "only this tenant's blob store", tenantFlag)
    .option("--dry-run", "say what would be rewritten, change nothing")
    .option("--json", "print JSON")
    .action(async (packs: string[], opts, cmd: Command) => {
      checkPackIds(packs, opts.tenant);
      const dryRun = opts.dryRun === true;
      const res = await apiClients(apiOpts(cmd)).snapshots.repairPacks({ dryRun, tenantId: opts.tenant, packs });
      const tenants = res.tenants.map((t) => ({
        tenantId: t.tenantId,
        packs: Number(t.packs),
        packsRead: Number(t.packsRead),
        repaired: t.repaired.map((p) => ({
          pack: p.pack,
          salvaged: Number(p.salvaged),
          ...(p.reason ? { reason: p.reason } : {}),
          damaged: p.damaged.map((d) => ({ chunk: d.chunk, reason: d.reason })),
        })),
        skipped: t.skipped.map((p) => ({ pack: p.pack, message: p.message })),
        lost: t.lost,
        ...(t.error ? { error: t.error } : {}),
      }));
      // Packs it could not read, and chunks lost (or that would be): said on stderr, with what to do.
      const { failed, unrepaired } = printTenantRepairs(tenants, opts.json === true, dryRun, (t) => ({
        ...repairPacksText(t, dryRun, `dumont snapshot check --tenant ${t.tenantId}`, `tenant ${t.tenantId}: `),
        unrepaired: t.skipped.length + t.lost.length > 0 ? 1 : 0,
      }));
      if (unrepaired + failed > 0) process.exitCode = 1;
    });

  snapshot
    .command("repair-snapshots [ids...]")
    .description(
      "replace each snapshot whose files' data is gone for good (in no index, or in packs the blob store no longer " +
        "has) with one without those files, listed at once (IDS: ids or unique prefixes; else every snapshot of each " +
        "tenant). Run check, repair-index and repair-packs first, and snapshot again what still exists: that heals " +
        "instead; a tenant with a snapshot, restore or check running is skipped, saying so",
    )
    .option("--tenant <id>", "only this tenant's snapshots (else every tenant's, or those holding the IDS)", tenantFlag)
    .option("--forget", "forget each damaged snapshot once its repair is saved")
    .option("--dry-run", "say which files would be left out, change nothing")
    .option("--json", "print JSON")
    .action(async (ids: string[], opts, cmd: Command) => {
      checkSnapshotIds("SNAPSHOT_ID", ids);
      const dryRun = opts.dryRun === true;
      const res = await apiClients(apiOpts(cmd)).snapshots.repairSnapshots({
        snapshotIds: ids,
        forget: opts.forget === true,
        dryRun,
        tenantId: opts.tenant,
      });
      // Each tenant's report as the engine words it (`dumont-agent snapshot repair-snapshots --json` prints one).
      const tenants = res.tenants.map((t) => ({
        tenantId: t.tenantId,
        snapshots: Number(t.snapshots),
        repaired: t.repaired.map((r) => ({
          snapshot: r.snapshotId,
          workspace: r.workspaceId,
          time: r.time,
          ...(r.repairedId ? { repaired: r.repairedId } : {}),
          reused: r.reused,
          forgotten: r.forgotten,
          filesRemoved: Number(r.filesRemoved),
          bytesRemoved: Number(r.bytesRemoved),
          removed: r.removed.map((f) => ({ path: f.path, reason: f.reason })),
        })),
        unrepairable: t.unrepairable.map((u) => ({ snapshot: u.snapshotId, message: u.message })),
        ...(t.error ? { error: t.error } : {}),
      }));
      // Snapshots it could not repair, and damaged ones left beside their repairs: said on stderr, with what to do.
      const { failed, unrepaired: unrepairable } = printTenantRepairs(tenants, opts.json === true, dryRun, (t) => ({
        ...repairSnapshotsText(t, dryRun, "dumont snapshot forget", `tenant ${t.tenantId}: `),
        unrepaired: t.unrepairable.length,
      }));
      // A damaged snapshot kept beside its repair (no --forget) is what was asked: exit 0, the text saying how to
      // forget it. A snapshot still broken, or a tenant not repaired, is not.
      if (unrepairable + failed > 0) process.exitCode = 1;
    });

  snapshot
    .command("stats")
    .description(
      "what each tenant's repository holds: what its snapshots restore, that deduplicated, and what the blob store " +
        "holds (compressed and encrypted)",
    )
    .option("--tenant <id>", "only this tenant's repository", tenantFlag)
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const res = await apiClients(apiOpts(cmd)).snapshots.getSnapshotStats({ tenantId: opts.tenant });
      const tenants = res.tenants.map((t) => ({
        tenantId: t.tenantId,
        snapshots: Number(t.snapshots),
        files: Number(t.files),
        bytes: Number(t.bytes),
        chunks: Number(t.chunks),
        chunkBytes: Number(t.chunkBytes),
        packs: Number(t.packs),
        packBytes: Number(t.packBytes),
        unreadableSnapshots: t.unreadableSnapshots,
        ...(t.error ? { error: t.error } : {}),
      }));
      const failed = tenants.filter((t) => t.error !== undefined);
      for (const t of failed) process.stderr.write(`tenant ${t.tenantId}: no stats: ${t.error}\n`);
      // Counted around and named, not a failed answer: the figures are what the readable snapshots hold.
      for (const t of tenants.filter((t) => t.unreadableSnapshots.length > 0)) {
        process.stderr.write(
          `tenant ${t.tenantId}: ${counted(t.unreadableSnapshots.length, "snapshot record")} would not open and ` +
            `${t.unreadableSnapshots.length === 1 ? "is" : "are"} not counted: ${firstFew(t.unreadableSnapshots, 10)}; ` +
            `\`dumont snapshot check --tenant ${t.tenantId}\` says why\n`,
        );
      }
      if (failed.length > 0) process.exitCode = 1;
      if (opts.json) return print(tenants);
      const read = tenants.filter((t) => t.error === undefined);
      if (tenants.length === 0) return void process.stdout.write("no tenant has a repository yet\n");
      if (read.length === 0) return;
      process.stdout.write(
        table(
          ["TENANT", "SNAPSHOTS", "RESTORE SIZE", "DEDUPLICATED", "STORED", "PACKS"],
          read.map((t) => [
            t.tenantId,
            String(t.snapshots),
            formatBytes(t.bytes),
            formatBytes(t.chunkBytes),
            formatBytes(t.packBytes),
            String(t.packs),
          ]),
        ),
      );
    });

  registerForget(snapshot, apiOpts);
}

function registerForget(snapshot: Command, apiOpts: (cmd: Command) => ApiOptions): void {
  const forget = snapshot
    .command("forget [ids...]")
    .description(
      "forget the snapshots named (ids or unique prefixes), or by a retention policy, each workspace judged on " +
        "its own; --prune then deletes the data nothing needs",
    );
  for (const [flags, help, parse] of retentionOptions(0xffffffff)) forget.option(flags, help, parse);
  forget
    .option(
      "--workspace <id>",
      "only this workspace's snapshots",
      once("--workspace", nonEmpty("--workspace", "a workspace id")),
    )
    .option("--tenant <id>", "only this tenant's snapshots and repository (else every tenant's)", tenantFlag)
    .option("--prune", "then delete the packs no remaining snapshot needs (and repack mostly-unused ones)")
    .option("--dry-run", "say what would be forgotten (and what the prune after it would free); change nothing")
    .option("--json", "print JSON")
    .action(async (ids: string[], opts, cmd: Command) => {
      checkSnapshotIds("SNAPSHOT_ID", ids);
      const keep = [opts.keepLast, opts.keepHourly, opts.keepDaily, opts.keepWeekly];
      if (ids.length > 0 && (keep.some((n) => n !== undefined) || opts.workspace !== undefined)) {
        throw new Error(
          "SNAPSHOT_IDs name the snapshots to forget: give no --keep-* or --workspace with them (those choose by a " +
            "policy)",
        );
      }
      if (!keep.some((n) => (n ?? 0) > 0) && ids.length === 0 && !opts.prune) {
        throw new Error(
          "say what to keep: --keep-last N (or --keep-hourly/--keep-daily/--keep-weekly), or which snapshot ids to " +
            "forget, and/or --prune",
        );
      }
      if (opts.workspace !== undefined && !keep.some((n) => (n ?? 0) > 0)) {
        throw new Error(
          "--workspace narrows a --keep-* policy: give one with it (a prune covers the whole repository)",
        );
      }
      const res = await apiClients(apiOpts(cmd)).snapshots.forgetSnapshots({
        snapshotIds: ids,
        tenantId: opts.tenant,
        workspaceId: opts.workspace,
        keepLast: opts.keepLast,
        keepHourly: opts.keepHourly,
        keepDaily: opts.keepDaily,
        keepWeekly: opts.keepWeekly,
        prune: opts.prune === true,
        dryRun: opts.dryRun === true,
      });
      const prune = res.prune && {
        packsDeleted: Number(res.prune.packsDeleted),
        packsRepacked: Number(res.prune.packsRepacked),
        orphanPacksDeleted: Number(res.prune.orphanPacksDeleted),
        bytesFreed: Number(res.prune.bytesFreed),
      };
      if (opts.json) return print({ dryRun: opts.dryRun === true, kept: res.kept, forgotten: res.forgotten, prune });
      // A prune alone forgets nothing: no "forgot 0 snapshots, keeping 0" line (direct mode's forget says the same).
      if (ids.length > 0 || keep.some((n) => n !== undefined)) {
        const verb = opts.dryRun ? "would forget" : "forgot";
        process.stdout.write(`${verb} ${counted(res.forgotten.length, "snapshot")}, keeping ${res.kept.length}\n`);
        for (const id of res.forgotten) process.stdout.write(`  ${id}\n`);
      }
      if (prune) {
        process.stdout.write(
          `${opts.dryRun ? "would free" : "freed"} ${formatBytes(Math.max(0, prune.bytesFreed))}: ` +
            `${counted(prune.packsDeleted, "unused pack")}, ${prune.orphanPacksDeleted} left by interrupted snapshots, ` +
            `${prune.packsRepacked} repacked\n`,
        );
      }
    });
}

// The API's keep counts are uint32.
const { once, nonEmpty, retentionOptions } = flagParsers(InvalidArgumentError);

const HOST_WHAT = "a host id from `dumont host list`";

/** A path on the host: the agent resolves nothing against a working directory of ours. */
function absolute(flag: string): (value: string) => string {
  return (value) => {
    if (!value.startsWith("/"))
      throw new InvalidArgumentError(`${flag} must be an absolute path on the host, got ${JSON.stringify(value)}`);
    return value;
  };
}

/** Snapshot ids or prefixes as `dumont snapshot list` prints them, checked before any request. */
function checkSnapshotIds(name: string, ids: string[]): void {
  for (const id of ids) {
    if (id === "latest") {
      // Direct mode's word: an admin sees many tenants' workspaces, where "the newest" would be a guess.
      throw new Error(
        `${name} "latest" is direct mode's: the control plane names snapshots by id; \`dumont snapshot list ` +
          "--workspace ID` shows a workspace's, newest last",
      );
    }
    if (!SNAPSHOT_ID_OR_PREFIX.test(id)) {
      throw new Error(
        `${name} ${JSON.stringify(id.slice(0, 80))} is not a snapshot id: give an id from \`dumont snapshot list\` ` +
          "or a unique prefix of it (4 to 64 hex characters)",
      );
    }
  }
}

/**
 * Prints a per-tenant repair's result (repair-index, repair-packs, repair-snapshots): the whole of it as JSON with
 * --json, else each tenant's text; each tenant's stderr text either way, and a tenant the repair did not reach
 * (its error) with what to do. text words one tenant's report and counts what it left unrepaired.
 */
function printTenantRepairs<T extends { tenantId: string; error?: string }>(
  tenants: T[],
  json: boolean,
  dryRun: boolean,
  text: (tenant: T) => { out: string; err: string; unrepaired: number },
): { failed: number; unrepaired: number } {
  if (json) print({ dryRun, tenants });
  else if (tenants.length === 0) process.stdout.write("no tenant has a repository: nothing to repair\n");
  let failed = 0;
  let unrepaired = 0;
  for (const tenant of tenants) {
    if (tenant.error !== undefined) {
      failed++;
      process.stderr.write(`tenant ${tenant.tenantId}: not repaired: ${tenant.error}\n`);
      continue;
    }
    const words = text(tenant);
    if (!json) process.stdout.write(words.out);
    process.stderr.write(words.err);
    unrepaired += words.unrepaired;
  }
  if (failed > 0) process.stderr.write(`${counted(failed, "tenant")} not repaired; run it again for them\n`);
  return { failed, unrepaired };
}

function checkPackIds(packs: string[], tenant: string | undefined): void {
  if (packs.length > 0 && tenant === undefined) {
    throw new Error("PACKs belong to one tenant's repository: give --tenant with them (check names each one's tenant)");
  }
  for (const id of packs) {
    if (!/^[0-9a-fA-F]{8,64}$/.test(id)) {
      throw new Error(
        `PACK ${JSON.stringify(id.slice(0, 80))} is not a pack id: give an id from \`dumont snapshot check\` or a ` +
          "unique prefix of it (8 to 64 hex characters)",
      );
    }
  }
}

/**
 * The repair-packs command a check's report advises (repairPacksAdvice): for one tenant's damaged packs, that tenant
 * and, for a few, those packs, so only they are read again; for several tenants', every tenant's packs.
 */
export function repairPacksCommand(problems: readonly { tenantId: string; kind: string; pack?: string }[]): string {
  const damaged = problems.filter(packRepairMends);
  const tenants = new Set(damaged.map((p) => p.tenantId));
  if (tenants.size !== 1) return "dumont snapshot repair-packs";
  const named = damagedPacks(damaged)
    .map((p) => ` ${p}`)
    .join("");
  return `dumont snapshot repair-packs --tenant ${[...tenants][0]}${named}`;
}

/**
 * `dumont snapshot list`: a row per snapshot under a header. SIZE is the snapshot's own, as `dumont-agent snapshot
 * list` shows it; NEW is what it added to the blob store (a few bytes for an unchanged workspace). PATH, free
 * text, is last.
 */
export function snapshotTable(list: ReturnType<typeof snapshotJson>[]): string {
  return table(
    ["ID", "CREATED", "TENANT", "HOST", "FILES", "SIZE", "NEW", "PATH"],
    list.map((s) => [
      s.id,
      s.createdAt ?? "",
      s.tenantId,
      s.hostId,
      `${s.files}${s.filesSkipped ? ` (${s.filesSkipped} left out)` : ""}` +
        `${s.repairedFrom ? ` (repaired from ${s.repairedFrom.slice(0, 12)})` : ""}`,
      s.bytesTotal === null ? "unknown" : formatBytes(s.bytesTotal),
      formatBytes(s.bytesStored),
      s.path,
    ]),
  );
}

export function snapshotJson(s: api.Snapshot) {
  return {
    id: s.id,
    tenantId: s.tenantId,
    hostId: s.hostId,
    workspaceId: s.workspaceId,
    path: s.path,
    epoch: Number(s.epoch),
    createdAt: iso(s.createdAt),
    files: Number(s.files),
    bytesRead: Number(s.bytesRead),
    bytesNew: Number(s.bytesNew),
    bytesStored: Number(s.bytesStored),
    chunksNew: Number(s.chunksNew),
    seconds: roundSeconds(s.seconds),
    // The bytes of its files; null for a snapshot catalogued before the control plane kept it.
    bytesTotal: s.bytesTotal === undefined ? null : Number(s.bytesTotal),
    // Only when the agent left something out, as `dumont-agent snapshot create --json` does.
    ...(s.filesSkipped > 0n
      ? { filesSkipped: Number(s.filesSkipped), skipped: s.skipped.map(({ path, reason }) => ({ path, reason })) }
      : {}),
    // Only for a snapshot repair-snapshots made, as `dumont-agent snapshot list --json` shows its record.
    ...(s.repairedFrom ? { repairedFrom: s.repairedFrom } : {}),
  };
}

/** One warning per entry the snapshot left out, on stderr (as `dumont-agent snapshot create` warns). */
function warnSkipped(s: ReturnType<typeof snapshotJson>): void {
  const listed = s.skipped ?? [];
  for (const { path, reason } of listed) {
    process.stderr.write(`warning: left out ${quoted(path)}: ${printable(reason)}\n`);
  }
  const unlisted = (s.filesSkipped ?? 0) - listed.length;
  if (unlisted > 0) {
    process.stderr.write(`warning: and ${unlisted} more entries left out (the first ${listed.length} are listed)\n`);
  }
}

/** Where to see an operation this CLI stopped following (Ctrl-C) go on, by what it is. */
const GOES_ON: Record<string, string> = {
  snapshot: "`dumont snapshot list` shows the snapshot once it is committed",
  restore: "its target holds .dumont-restore-incomplete until every file is written",
  check: "the control plane's dumont_check_problems metric counts what it finds, once it ends",
};

/**
 * Reads a progress stream (CreateSnapshotStream / RestoreSnapshotStream / CheckSnapshots): progress events drive
 * the meter on a TTY, the last event is the result.
 */
async function follow<R>(
  what: string,
  quiet: boolean,
  events: AsyncIterable<{
    event: { case: "progress"; value: api.TransferProgress } | { case: string; value: R } | { case: undefined };
  }>,
): Promise<R> {
  const meter = ProgressMeter.forStderr(what, quiet);
  let result: R | undefined;
  // Ctrl-C (or SIGTERM) stops the following, not the operation: the control plane and the agent carry it on, as
  // they would for a caller whose connection dropped (cancelling would take an API of its own). Said, with where to
  // see it, rather than a silent exit that reads as "stopped".
  let answered = false;
  const detach = (signal: NodeJS.Signals) => {
    meter?.finish();
    // Before the control plane's first word, whether it took the request at all is not known.
    const state = answered
      ? "it goes on in the control plane"
      : "the control plane had not answered: if it took it, it goes on there";
    process.stderr.write(`dumont: stopped following the ${what}; ${state}: ${GOES_ON[what]}\n`);
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", detach);
  process.once("SIGTERM", detach);
  try {
    for await (const { event } of events) {
      answered = true;
      if (event.case === "progress") {
        const p = event.value as api.TransferProgress;
        meter?.update(Number(p.bytesDone), Number(p.bytesTotal));
      } else if (event.case !== undefined) result = event.value as R;
    }
  } finally {
    process.off("SIGINT", detach);
    process.off("SIGTERM", detach);
    meter?.finish();
  }
  if (result === undefined) throw new Error(`the control plane ended the ${what} without a result; see its log`);
  return result;
}

const FILE_TYPES: Record<api.SnapshotFile_Type, ListedEntry["type"] | undefined> = {
  [api.SnapshotFile_Type.UNSPECIFIED]: undefined,
  [api.SnapshotFile_Type.FILE]: "file",
  [api.SnapshotFile_Type.DIR]: "dir",
  [api.SnapshotFile_Type.SYMLINK]: "symlink",
};

function listedFromApi(f: api.SnapshotFile): ListedEntry {
  const type = FILE_TYPES[f.type];
  if (!type) throw new Error(`the control plane listed ${JSON.stringify(f.path)} with no type; upgrade this CLI`);
  const ns = f.mtime ? f.mtime.seconds * 1_000_000_000n + BigInt(f.mtime.nanos) : 0n;
  const e: ListedEntry = { path: f.path, type, mode: f.mode, size: Number(f.size), mtime: mtimeText(ns) };
  return withOwnerAndTarget(e, f.uid, f.gid, type === "symlink" ? f.target : undefined);
}
