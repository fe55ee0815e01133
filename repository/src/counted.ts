// A count with its noun, for the messages both CLIs and the control plane print: "1 snapshot", "3 snapshots".

/** `n` and the noun that agrees with it: counted(1, "pack") is "1 pack", counted(0, "pack") is "0 packs". */
export function counted(n: number, singular: string, plural = `${singular}s`): string {
  return `${n} ${n === 1 ? singular : plural}`;
}

/** The first `max` of `items`, and how many more: firstFew(["a", "b", "c"], 2) is "a, b and 1 more". */
export function firstFew(items: readonly string[], max: number): string {
  const shown = items.slice(0, max).join(", ");
  return items.length > max ? `${shown} and ${items.length - max} more` : shown;
}
