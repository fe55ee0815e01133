// What a pack repair did (repair-packs.ts), and how both CLIs print it: `dumont-agent snapshot repair-packs` for a
// repository URL, `dumont snapshot repair-packs` for each tenant of the control plane. Apart from the repair, so
// the control plane's CLI imports the words without the engine.
import { counted } from "./counted.js";

export interface DamagedChunk {
  /** The chunk's id, in hex. */
  chunk: string;
  /** Why it does not verify (its tag, its hash, its length, or it lies beyond the pack's end). */
  reason: string;
}

export interface RepairedPack {
  pack: string;
  /**
   * Chunks that verify, kept: copied (with dryRun: to be copied) into new packs before this one is deleted, unless
   * a pack read whole holds them.
   */
  salvaged: number;
  /** Chunks that do not verify, left behind with the pack. */
  damaged: DamagedChunk[];
  /** Why a pack is rewritten besides damaged chunks (it is longer than its index says), in a few words. */
  reason?: string;
}

export interface SkippedPack {
  pack: string;
  /** Why it was not read, and what to do instead. */
  message: string;
}

export interface RepairPacksReport {
  /** Packs: those the index holds, and those in the store without an index object. */
  packs: number;
  /** Packs read whole and verified chunk by chunk. */
  packsRead: number;
  /** Packs some of whose chunks do not verify, or longer than their index says: rewritten without them (dryRun: to be). */
  repaired: RepairedPack[];
  /**
   * Packs it could not repair, each saying why and what to do: indexed but missing from the store, indexed as
   * impossibly large, without an index object and a header that opens, or without an index object and holding the
   * only whole copy of a damaged chunk (repair-index mends those).
   */
  skipped: SkippedPack[];
  /**
   * Damaged chunks (hex ids) a snapshot uses and no other pack holds once the repair is done: lost until a snapshot
   * of a workspace that still has those bytes stores them again (every snapshot using them is whole again then). A
   * damaged chunk another pack also holds is not lost (it is found there), nor one no snapshot uses (garbage).
   */
  lost: string[];
}

/** A report of nothing read: a repository that is not there. */
export function emptyRepairPacksReport(): RepairPacksReport {
  return { packs: 0, packsRead: 0, repaired: [], skipped: [], lost: [] };
}

/**
 * The report as lines for stdout (what was done, pack by pack) and stderr (what could not be done, and chunks lost),
 * each line prefixed with `prefix` ("tenant t-a: ", or nothing). `command` is how the user runs a check.
 */
export function repairPacksText(
  report: RepairPacksReport,
  dryRun: boolean,
  check: string,
  prefix = "",
): { out: string; err: string } {
  const rewrote = dryRun ? "would rewrite" : "rewrote";
  const out = [
    `${counted(report.packsRead, "pack")} read of ${report.packs}: ${rewrote} ${counted(report.repaired.length, "pack")} ` +
      "without their damaged chunks",
    ...report.repaired.map(
      (p) =>
        `  ${rewrote} ${p.pack.slice(0, 12)}: ${counted(p.salvaged, "chunk")} kept` +
        (p.damaged.length === 0 && p.reason
          ? ` (${p.reason})`
          : `, ${counted(p.damaged.length, "damaged chunk")} left out (${p.damaged
              .slice(0, 3)
              .map((d) => `${d.chunk.slice(0, 12)}: ${d.reason}`)
              .join("; ")}${p.damaged.length > 3 ? "; …" : ""}${p.reason ? `; ${p.reason}` : ""})`),
    ),
  ];
  const err: string[] = report.skipped.map((s) => `cannot repair pack ${s.pack.slice(0, 12)}: ${s.message}`);
  if (report.lost.length > 0) {
    const ids = report.lost.slice(0, 5).map((id) => id.slice(0, 12));
    err.push(
      `${counted(report.lost.length, "damaged chunk")} ${report.lost.length === 1 ? "is" : "are"} in no other pack ` +
        `(${ids.join(", ")}${report.lost.length > 5 ? ", …" : ""})${dryRun ? " and would be lost" : ""}: \`${check}\` ` +
        "names the files they break. The next snapshot of a workspace that still has those bytes stores them " +
        `again${report.skipped.length > 0 ? " (once `snapshot repair-index` has mended the packs it could not repair, above)" : ""}, ` +
        "and every snapshot using them is whole again; `snapshot repair-snapshots --forget` replaces the snapshots " +
        "whose files are gone for good with ones without those files",
    );
  } else if (report.repaired.length > 0) {
    out.push(
      `no snapshot ${dryRun ? "would lose" : "loses"} a chunk: each damaged one is also held by another pack, or no ` +
        "snapshot uses it",
    );
  }
  const lines = (list: string[]) => list.map((line) => `${prefix}${line}\n`).join("");
  return { out: lines(out), err: lines(err) };
}

/**
 * What a check's report should add for damaged chunks (a pack a repair may rewrite without them). Undefined for
 * others. Both CLIs print it after the problems.
 */
export function repairPacksAdvice(problems: readonly { kind: string }[], command: string): string | undefined {
  if (!problems.some(packRepairMends)) return undefined;
  return (
    `\`${command}\` rewrites packs without their damaged chunks (--dry-run says what it would do); a chunk also ` +
    "held by another pack is then found there, and the next snapshot of a workspace that still has the others " +
    "stores them again, making every snapshot that uses them whole"
  );
}

/** The most packs `damagedPacks` names; for more, a repair of every pack is the shorter command. */
const MAX_PACKS_ADVISED = 5;

/**
 * The packs a check found damaged chunks in (the kinds repairPacksAdvice answers), as 16-character prefixes for a
 * command line: none where there are more than MAX_PACKS_ADVISED (then every pack is read).
 */
export function damagedPacks(problems: readonly { kind: string; pack?: string }[]): string[] {
  const packs = new Set(problems.flatMap((p) => (packRepairMends(p) && p.pack ? [p.pack.slice(0, 16)] : [])));
  return packs.size <= MAX_PACKS_ADVISED ? [...packs] : [];
}

/** Whether a check's problem is one repair-packs mends: a damaged chunk, or one past the end of a pack cut short. */
export function packRepairMends(problem: { kind: string }): boolean {
  return problem.kind === "chunk-corrupt" || problem.kind === "pack-size";
}
