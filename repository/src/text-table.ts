// The tables both CLIs print for lists (snapshots, hosts, keys): a header row over aligned columns.

/**
 * Rows under a header row, each column as wide as its widest cell and two spaces from the next; the last column
 * is not padded (free text such as a label goes there), and no line ends in spaces. One string, "\n" after each
 * line.
 */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const lines = [header, ...rows];
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
