// What a snapshot repair did (repair-snapshots.ts), and how both CLIs print it: `dumont-agent snapshot
// repair-snapshots` for a repository URL, `dumont snapshot repair-snapshots` for each tenant of the control plane.
// Apart from the repair, so the control plane's CLI imports the words without the engine.
import { counted } from "./counted.js";
import { formatBytes } from "./progress-meter.js";

/** The most removed files a report lists per snapshot; `filesRemoved` counts them all. */
export const MAX_REMOVED_LISTED = 1000;

export interface RemovedFile {
  path: string;
  /** Which of its chunks is gone, and how: in no index, or in a pack the store no longer has. */
  reason: string;
}

export interface RepairedSnapshot {
  /** The damaged snapshot's id. */
  snapshot: string;
  workspace: string;
  time: string;
  /**
   * The id of the snapshot that replaces it, without the files below; absent in a dry run, unless that snapshot is
   * there already (`reused`).
   */
  repaired?: string;
  /**
   * Whether an equal repair was there already (one a run cut short left, or another snapshot's this run made): taken,
   * nothing written.
   */
  reused: boolean;
  /** Whether the damaged snapshot was forgotten (`forget`) once its repair was there (with dryRun: would be). */
  forgotten: boolean;
  /** Files left out of the repaired snapshot (hard links to them included), and their bytes. */
  filesRemoved: number;
  bytesRemoved: number;
  /** The first MAX_REMOVED_LISTED of them, in manifest order. */
  removed: RemovedFile[];
}

export interface UnrepairableSnapshot {
  snapshot: string;
  /** Why its files cannot be told (a record or manifest part that does not open), and what to do. */
  message: string;
}

export interface RepairSnapshotsReport {
  /** Snapshots read: every one, or those named. */
  snapshots: number;
  /** Snapshots some of whose files' data is gone: each replaced (with dryRun: to be) by one without those files. */
  repaired: RepairedSnapshot[];
  unrepairable: UnrepairableSnapshot[];
}

/** A report of nothing read: a repository that is not there. */
export function emptyRepairSnapshotsReport(): RepairSnapshotsReport {
  return { snapshots: 0, repaired: [], unrepairable: [] };
}

/**
 * The report as lines for stdout (snapshot by snapshot, each file removed: restic's shape) and stderr (what could
 * not be repaired, and the damaged snapshots left beside their repairs), each line prefixed with `prefix`
 * ("tenant t-a: ", or nothing). `forget` is how the user forgets snapshots ("dumont-agent snapshot forget --repo …").
 */
export function repairSnapshotsText(
  report: RepairSnapshotsReport,
  dryRun: boolean,
  forget: string,
  prefix = "",
): { out: string; err: string } {
  const out: string[] = [];
  for (const r of report.repaired) {
    out.push(`snapshot ${r.snapshot.slice(0, 12)} of ${JSON.stringify(r.workspace)} at ${r.time}:`);
    for (const f of r.removed)
      out.push(`  ${dryRun ? "would remove" : "removed"} ${JSON.stringify(f.path)}: ${f.reason}`);
    if (r.filesRemoved > r.removed.length)
      out.push(`  … and ${counted(r.filesRemoved - r.removed.length, "file")} more`);
    out.push(
      `  ${counted(r.filesRemoved, "file")} (${formatBytes(r.bytesRemoved)}) ${dryRun ? "would be " : ""}left out; ` +
        (r.reused
          ? `${dryRun ? "would take" : "took"} snapshot ${r.repaired?.slice(0, 12)}, the same repair made before`
          : dryRun
            ? "would save a new snapshot"
            : `saved as snapshot ${r.repaired?.slice(0, 12)}`) +
        (r.forgotten ? `, ${dryRun ? "would forget" : "forgot"} ${r.snapshot.slice(0, 12)}` : ""),
    );
  }
  out.push(
    `${counted(report.snapshots, "snapshot")} read: ${counted(report.repaired.length, "snapshot")} ` +
      `${dryRun ? "would be " : ""}repaired`,
  );
  const err = report.unrepairable.map((u) => `cannot repair snapshot ${u.snapshot.slice(0, 12)}: ${u.message}`);
  const kept = report.repaired.filter((r) => !r.forgotten && !dryRun);
  if (kept.length > 0) {
    err.push(
      `the damaged ${kept.length === 1 ? "snapshot stays" : "snapshots stay"} beside ${kept.length === 1 ? "its repair" : "their repairs"}: ` +
        `\`${forget} ${kept.map((r) => r.snapshot.slice(0, 12)).join(" ")}\` forgets ${kept.length === 1 ? "it" : "them"} ` +
        "(or repair again with --forget)",
    );
  }
  const lines = (list: string[]) => list.map((line) => `${prefix}${line}\n`).join("");
  return { out: lines(out), err: lines(err) };
}

/**
 * What a check's report should add for snapshot records that do not open (damaged, or not what their id says):
 * nothing can read or repair such a snapshot, and forgetting it by id is the way out. `forget` is how the user
 * runs a forget. Undefined for other problems. Both CLIs print it after the problems.
 */
export function unreadableSnapshotAdvice(
  /** As the engine words them (`snapshot`), or as the control plane's API does (`snapshotId`). */
  problems: readonly { kind: string; snapshot?: string; snapshotId?: string }[],
  forget: string,
): string | undefined {
  const ids = problems.flatMap((p) => {
    const id = p.snapshot ?? p.snapshotId;
    return p.kind === "snapshot-unreadable" && id ? [id] : [];
  });
  if (ids.length === 0) return undefined;
  const shown = ids.slice(0, 5).map((id) => id.slice(0, 12));
  return (
    `a snapshot record that does not open cannot be read, restored or repaired: \`${forget} ${shown.join(" ")}` +
    `${ids.length > 5 ? " …" : ""}\` forgets ${ids.length === 1 ? "it" : "them"} (the data other snapshots use ` +
    "stays; a prune then frees what only it used)"
  );
}
