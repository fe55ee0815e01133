// What every `dumont` API command prints with: JSON for --json, ISO times for timestamps, tables for lists.
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";

export { table } from "@dumont/repository/text-table";

export function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function iso(t: Timestamp | undefined): string | null {
  return t ? timestampDate(t).toISOString() : null;
}

/** C0 and C1 control characters (escape sequences start with one), DEL among them. */
const CONTROL = /\p{Cc}/gu;

/**
 * `text` from elsewhere (an agent's warning) fit for a terminal: each control character written as `\uXXXX`, so
 * no escape sequence in it reaches the terminal (moving the cursor, rewriting what was printed).
 */
export function printable(text: string): string {
  return text.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}
