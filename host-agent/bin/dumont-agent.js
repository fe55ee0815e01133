#!/usr/bin/env node
import { main } from "../dist/cli/main.js";

// A reader that stops early (`… --json | head`) closes the pipe: stop quietly, as shell tools do, not with a trace.
process.stdout.on("error", (err) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});

main(process.argv).catch((err) => {
  process.stderr.write(`dumont-agent: ${err instanceof Error ? err.message : String(err)}\n`);
  // For a bug report: the stack too (a worker's included), only when asked for.
  if (process.env.DUMONT_DEBUG === "1" && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(Number.isInteger(err?.exitCode) ? err.exitCode : 1); // 130 for an interrupted command
});
