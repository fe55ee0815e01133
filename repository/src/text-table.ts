// The tables both CLIs print for lists (snapshots, hosts, keys): a header row over aligned columns.

/**
 * Rows under a header row, each column as wide as its widest cell and two spaces from the next; the last column
 * is not padded (free text such as a label goes there), and no line ends in spaces. One string, "\n" after each
 * line.
 */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  // A cell with a control character in it (a workspace id or path holding a newline) would break its row.
  const lines = [header, ...rows.map((cells) => cells.map((cell) => (hasControls(cell) ? quoted(cell) : cell)))];
  const widths = header.map((_, i) => Math.max(...lines.map((cells) => (cells[i] ?? "").length)));
  return lines
    .map((cells) =>
      cells
        .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
        .join("  ")
        .trimEnd(),
    )
    .map((line) => `${line}\n`)
    .join("");
}

/** Whether `text` holds a C0 or C1 control character or DEL (a newline, an escape, 0x9b). */
export function hasControls(text: string): boolean {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
  return /[\u0000-\u001f\u007f-\u009f]/.test(text);
}

/**
 * `text` quoted and escaped as a JSON string (git's core.quotePath), so it stays on its line and no terminal
 * takes part of it for a command: JSON escapes the C0 controls; DEL and the C1 controls are done here.
 */
export function quoted(text: string): string {
  return JSON.stringify(text).replace(/[\u007f-\u009f]/g, (c) => `\\u00${c.charCodeAt(0).toString(16)}`);
}

/** C0 and C1 control characters (escape sequences start with one), DEL among them. */
const CONTROL = /\p{Cc}/gu;

/**
 * `text` from elsewhere (an agent's warning, an error's reason) fit for a terminal: each control character
 * written as `\uXXXX`, so no escape sequence in it reaches the terminal (moving the cursor, rewriting what was
 * printed).
 */
export function printable(text: string): string {
  return text.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}
