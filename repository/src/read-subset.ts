// Which packs a check reads (restic's --read-data-subset), parsed from what a person or a client gives. Apart
// from check.ts, so a command line can check the flag without loading the repository code.
import { RepositoryError } from "./errors.js";

/**
 * Which packs a check reads, restic's `--read-data-subset`: the n-th of `of` groups, by pack id (so the checks
 * 1/of, 2/of ... of/of between them read every pack once, and the same group is the same packs while they
 * stay), or a random share of them, different each check. Either way the structure is checked whole.
 */
export type ReadSubset = { group: number; of: number } | { percent: number };

/** "n/t" (1 <= n <= t <= 10000) or "P%" (0 < P <= 100) as a ReadSubset; otherwise an error naming `flag`. */
export function parseReadSubset(text: string, flag: string): ReadSubset {
  const trimmed = text.trim();
  const group = /^(\d{1,5})\/(\d{1,5})$/.exec(trimmed);
  if (group) {
    const [n, t] = [Number(group[1]), Number(group[2])];
    if (n >= 1 && n <= t && t <= 10_000) return { group: n, of: t };
  }
  const percent = /^(\d{1,3}(?:\.\d+)?)%$/.exec(trimmed);
  if (percent) {
    const p = Number(percent[1]);
    if (p > 0 && p <= 100) return { percent: p };
  }
  throw new RepositoryError(
    "invalid-argument",
    `${flag} ${JSON.stringify(text)} is not a subset of the packs: give n/t (the n-th of t groups, 1 <= n <= t ` +
      "<= 10000: check 1/5 today, 2/5 tomorrow...) or a percentage (5%: that share, chosen at random)",
  );
}

/**
 * A check's subset option as given (undefined when not), refused beside its structure-only option, which reads no
 * pack at all. `names` are the two options as the caller's user knows them (CLI flags, API fields).
 */
export function readSubsetOption(
  text: string | undefined,
  structureOnly: boolean,
  names: { subset: string; structureOnly: string },
): ReadSubset | undefined {
  if (text === undefined) return undefined;
  if (structureOnly) {
    throw new RepositoryError(
      "invalid-argument",
      `${names.subset} reads some packs, ${names.structureOnly} none: give one of them`,
    );
  }
  return parseReadSubset(text, names.subset);
}
