// What `tests/bench/main.ts` hands every benchmark module; a module reads the flags it knows.
export interface BenchOptions {
  /** Parsed `--name value` flags (all of them, not only the dispatcher's). */
  flags: Record<string, string | boolean | undefined>;
  /** The raw command line after `npm run bench --`, for benchmarks with flags of their own. */
  argv: string[];
  /** One line of progress, to stderr; stdout carries only the final JSON. */
  progress: (line: string) => void;
}
