// What an index repair did (repair-index.ts), and how both CLIs print it: `dumont-agent snapshot repair-index` for a
// repository URL, `dumont snapshot repair-index` for each tenant of the control plane. Apart from the repair, so
// the control plane's CLI imports the words without the engine.
import { counted } from "./counted.js";

export interface UnrepairablePack {
  pack: string;
  message: string;
}

export interface RepairIndexReport {
  /** Packs in the repository. */
  packs: number;
  /**
   * Packs whose index object was (with dryRun: would be) written from their header: it was missing, did not
   * open, or gave another size than the pack's.
   */
  rebuilt: string[];
  /**
   * Index objects (by pack id) removed (with dryRun: to be removed): their pack is not in the store, or neither they
   * nor their pack's header open (that pack is also among `unrepairable`).
   */
  removed: string[];
  /**
   * Packs needing an index object whose header cannot be read, or not one of whose chunks verifies (left as they
   * are: `check` names what they break); and packs indexed again some of whose chunks do not verify.
   */
  unrepairable: UnrepairablePack[];
}

/**
 * The report as lines for stdout (what was done, pack by pack) and stderr (the packs it could not repair), each
 * line prefixed with `prefix` ("tenant t-a: ", or nothing).
 */
export function repairIndexText(report: RepairIndexReport, dryRun: boolean, prefix = ""): { out: string; err: string } {
  const [rebuilt, removed] = dryRun ? ["would rebuild", "would remove"] : ["rebuilt", "removed"];
  const unreadable = new Set(report.unrepairable.map((p) => p.pack));
  const out = [
    `${counted(report.packs, "pack")}: ${rebuilt} ${counted(report.rebuilt.length, "index object")} from their ` +
      `packs' headers, ${removed} ${counted(report.removed.length, "index object")} of packs gone or unreadable`,
    ...report.rebuilt.map((id) => `  ${rebuilt} ${id.slice(0, 12)}`),
    ...report.removed.map(
      (id) =>
        `  ${removed} ${id.slice(0, 12)} (${unreadable.has(id) ? "it does not open, nor does its pack's header, or no chunk it lists verifies" : "pack missing"})`,
    ),
  ];
  if (report.removed.length > 0 && !dryRun) {
    out.push(
      "the snapshots that used those packs' chunks are damaged: `snapshot check` names their files; forget them " +
        "(the next snapshot of a workspace stores what it still has again)",
    );
  }
  const lines = (list: string[]) => list.map((line) => `${prefix}${line}\n`).join("");
  // "cannot repair" where the pack got no index object; a pack indexed with chunks that do not verify says so itself.
  const err = report.unrepairable.map((p) =>
    report.rebuilt.includes(p.pack) ? p.message : `cannot repair ${p.message}`,
  );
  return { out: lines(out), err: lines(err) };
}

/**
 * What a check's report should add for problems an index repair may mend: chunks in no pack (their pack's index
 * object lost or damaged, the pack itself whole), index objects that do not open, and packs gone whose index
 * objects stay. Undefined for others. Both
 * CLIs print it after the problems: restic users read "in no pack" as data lost.
 */
export function repairIndexAdvice(problems: readonly { kind: string }[], command: string): string | undefined {
  // A pack gone while its index object stays: every snapshot takes its chunks for stored, and sends none again.
  const packGone = problems.some(({ kind }) => kind === "pack-missing")
    ? `\`${command}\` removes the index objects of packs gone from the store, so that the next snapshot of each ` +
      "workspace stores again what its source still has (until then, snapshots take those chunks for stored). "
    : "";
  if (!problems.some(({ kind }) => kind === "chunk-missing" || kind === "index-unreadable")) {
    return packGone === "" ? undefined : `${packGone}Run it (--dry-run says what it would do), then check again`;
  }
  return (
    packGone +
    `${packGone === "" ? "if" : "If"} an index object was lost or damaged (a pack whole but not indexed), \`${command}\` rebuilds it from the ` +
    "packs' own headers: run it (--dry-run says what it would do), then check again. If it rebuilds nothing, " +
    "those chunks are gone with their packs: the next snapshot of each workspace stores again what its source " +
    "still has (which makes the snapshots named whole again), and `snapshot repair-snapshots --forget` then " +
    "replaces those still damaged with snapshots without the files nothing has any more"
  );
}
