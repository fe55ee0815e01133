#!/usr/bin/env node
import { main } from "../dist/cli/main.js";

main(process.argv).catch((err) => {
  // Control characters escaped: a message may quote what a user or an agent sent (a path, a host id), and a
  // terminal would act on an escape sequence in it (as `printable` does in the CLIs' output).
  const text = err instanceof Error ? err.message : String(err);
  process.stderr.write(
    `dumont-agent: ${text.replace(/\p{Cc}/gu, (c) => (c === "\n" ? c : `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`))}\n`,
  );
  // For a bug report: the stack too (a worker's included), only when asked for.
  if (process.env.DUMONT_DEBUG === "1" && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(Number.isInteger(err?.exitCode) ? err.exitCode : 1); // 130 for an interrupted command
});
