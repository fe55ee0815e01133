// A count with its noun, for the messages both CLIs and the control plane print: "1 snapshot", "3 snapshots".

/** `n` and the noun that agrees with it: counted(1, "pack") is "1 pack", counted(0, "pack") is "0 packs". */
export function counted(n: number, singular: string, plural = `${singular}s`): string {
  return `${n} ${n === 1 ? singular : plural}`;
}
