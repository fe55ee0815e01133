// What every `dumont` API command prints with: JSON for --json, ISO times for timestamps, tables for lists.
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";

export { printable, table } from "@dumont/repository/text-table";

export function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function iso(t: Timestamp | undefined): string | null {
  return t ? timestampDate(t).toISOString() : null;
}
