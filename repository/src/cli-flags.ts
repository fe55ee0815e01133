// Flag parsers both CLIs give commander (`dumont-agent snapshot` in direct mode, `dumont snapshot` through the
// control plane), so a flag is refused the same way in either. Each CLI passes commander's
// InvalidArgumentError, which commander prints as the flag's error: this package does not depend on commander.

/** A snapshot id or a unique prefix of it, as every command and the repository take it: 4 to 64 hex characters. */
export const SNAPSHOT_ID_OR_PREFIX = /^[0-9a-fA-F]{4,64}$/;

/** The retention flags of both `forget` commands, by unit, with their help. */
const RETENTION_FLAGS = [
  ["last", "keep the newest n snapshots"],
  ["hourly", "keep the newest snapshot of each of the last n hours"],
  ["daily", "keep the newest snapshot of each of the last n days"],
  ["weekly", "keep the newest snapshot of each of the last n weeks"],
] as const;

export function flagParsers(InvalidArgument: new (message: string) => Error) {
  /** A parser that refuses an empty or blank value, saying what to give. */
  const nonEmpty =
    (flag: string, what: string) =>
    (value: string): string => {
      if (value.trim() === "") throw new InvalidArgument(`${flag} is empty: give ${what}`);
      return value;
    };
  /**
   * A flag's parser that refuses a second value instead of silently keeping the last one; `parse` is a
   * parser, or what to give (a non-empty string).
   */
  const once = <T = string>(
    flag: string,
    parse: string | ((value: string) => T),
  ): ((value: string, previous: T | undefined) => T) => {
    const parseValue = typeof parse === "string" ? nonEmpty(flag, parse) : parse;
    return (value, previous) => {
      if (previous !== undefined) throw new InvalidArgument(`${flag} was given twice: give it once`);
      return parseValue(value) as T;
    };
  };
  /** A count in plain decimal digits (no "", "1.5", "1e3" or "0x10"), from `min` to `max`. */
  const wholeNumber =
    (flag: string, min: number, max = Number.MAX_SAFE_INTEGER) =>
    (value: string): number => {
      const n = Number(value);
      if (/^\d+$/.test(value) && n > max) {
        throw new InvalidArgument(`${flag} ${value} is too large: give at most ${max}`);
      }
      if (!/^\d+$/.test(value) || n < min) {
        const range = max === Number.MAX_SAFE_INTEGER ? `of ${min} or more` : `from ${min} to ${max}`;
        throw new InvalidArgument(`${flag} must be a whole number ${range}, got ${JSON.stringify(value)}`);
      }
      return n;
    };
  /**
   * A snapshot as direct mode names one (`--id`, or an argument named `name`): its id, a unique prefix of it, or
   * `latest`; anything else is refused here, naming the flag, before the repository is opened.
   */
  const snapshotId =
    (name: string) =>
    (value: string): string => {
      if (value === "latest" || SNAPSHOT_ID_OR_PREFIX.test(value)) return value;
      throw new InvalidArgument(
        `${name} ${JSON.stringify(value.slice(0, 80))} is not a snapshot id: give an id from \`snapshot list\`, a ` +
          "unique prefix of it (4 to 64 hex characters), or latest",
      );
    };
  return {
    nonEmpty,
    once,
    wholeNumber,
    snapshotId,
    /**
     * `--keep-last|hourly|daily|weekly <n>` as [flags, help, parser] for commander's `option`: each a count from
     * 1 to `max`, given once.
     */
    retentionOptions(max?: number) {
      return RETENTION_FLAGS.map(([unit, help]) => {
        const flag = `--keep-${unit}`;
        return [`${flag} <n>`, help, once(flag, wholeNumber(flag, 1, max))] as const;
      });
    },
  };
}

/**
 * `--read-data-subset`'s help after "read only some packs" (and, through the control plane, "of each tenant"),
 * and what it takes, as both `check` commands say them.
 */
export const READ_DATA_SUBSET = {
  help:
    "as restic's: n/t reads the n-th of t groups by pack id (1/5 today, 2/5 tomorrow... covers every pack), a " +
    "percentage (5%) that share at random; the structure is checked whole",
  what: "n/t or a percentage, e.g. 1/5 or 5%",
};

/** A repeatable option's values, in order. */
export function collect(value: string, all: string[]): string[] {
  return [...all, value];
}

/**
 * commander's output settings both CLIs take (`program.configureOutput(oneLineErrors("dumont"))`, before their
 * commands are added, which inherit it): commander's own errors (an unknown option, a required one missing, a value
 * a flag's parser refused) as one line, `NAME: what; add --help for the usage`, as the CLIs' other errors are. They
 * were "error: …" followed by the whole usage text, 15 lines and more, the error scrolled off above them.
 */
export function oneLineErrors(name: string): { outputError: (text: string, write: (text: string) => void) => void } {
  return {
    outputError: (text, write) => {
      const line = text
        .replace(/^error: /, "")
        .trim()
        .replace(/\s*\n\s*/g, " ");
      write(`${name}: ${line}${/[.!?]$/.test(line) ? "" : ";"} add --help for the usage\n`);
    },
  };
}
