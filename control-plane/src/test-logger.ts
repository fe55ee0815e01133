// For tests: the control plane's own logger (its redaction included), writing its JSON lines into an array.
import { Writable } from "node:stream";
import { createLogger, type Logger } from "./logger.js";

export function capturingLogger(lines: string[], level = "info"): Logger {
  const sink = new Writable({
    write(chunk, _encoding, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return createLogger(level, sink as never);
}
