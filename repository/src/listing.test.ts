import { describe, expect, it } from "vitest";
import { listedEntry, listingLine, printablePath } from "./listing.js";

describe("listingLine", () => {
  it("prints an entry in ls -l's manner, a directory with a slash and a link with its target", () => {
    const mtimeNs = String(BigInt(Date.UTC(2024, 0, 2, 3, 4, 5)) * 1_000_000n);
    const file = listedEntry({
      type: "file",
      path: "d/a b.txt",
      mode: 0o640,
      mtimeNs,
      size: 12,
      chunks: [],
      lengths: [],
    });
    expect(listingLine(file)).toBe(`-rw-r----- ${"12".padStart(12)} 2024-01-02 03:04 d/a b.txt`);
    expect(listingLine(listedEntry({ type: "dir", path: "d", mode: 0o755, mtimeNs }))).toMatch(
      /^drwxr-xr-x +0 .* d\/$/,
    );
    const link = listedEntry({ type: "symlink", path: "l", mode: 0o777, mtimeNs, uid: 1000, gid: 0, target: "../x" });
    // The owner, tar's way, where the snapshot recorded one; snapshots from before owners were kept have none.
    expect(listingLine(link)).toBe(`lrwxrwxrwx ${"1000/0".padEnd(11)} ${"0".padStart(12)} 2024-01-02 03:04 l -> ../x`);
    // JSON: the owner where the snapshot recorded one, before the target; nothing where it did not.
    expect(Object.entries(link).slice(5)).toEqual([
      ["uid", 1000],
      ["gid", 0],
      ["target", "../x"],
    ]);
    expect(file).not.toHaveProperty("uid");
    // Before 1970, rounded down as after it (and as the control plane's listing): not a millisecond late.
    const early = listedEntry({ type: "dir", path: "old", mode: 0o755, mtimeNs: "-315619199876543211" });
    expect(early.mtime).toBe("1960-01-01T00:00:00.123Z");
  });

  it("shows a time past what a Date holds as seconds after an @, where listing it used to throw", () => {
    // The manifest takes up to 25 digits (a damaged or forged one, or a filesystem's far future); `ls` threw
    // RangeError on such an entry and listed nothing (helper-62's finding).
    const far = listedEntry({ type: "dir", path: "far", mode: 0o755, mtimeNs: "9999999999999999999999999" });
    expect(far.mtime).toBe("@9999999999999999.999999999");
    expect(listingLine(far)).toBe(`drwxr-xr-x ${"0".padStart(12)} @9999999999999999.999999999 far/`);
    const before = listedEntry({ type: "dir", path: "b", mode: 0o755, mtimeNs: "-9000000000000000000000" });
    expect(before.mtime).toBe("@-9000000000000");
    const fraction = listedEntry({ type: "dir", path: "f", mode: 0o755, mtimeNs: "-9000000000000250000000" });
    expect(fraction.mtime).toBe("@-9000000000000.250000000"); // as `date -d @S` reads it, not floored
    // The last time a Date holds is still ISO's; a year past 9999 is shown whole in the line.
    const edge = listedEntry({ type: "dir", path: "e", mode: 0o755, mtimeNs: "8640000000000000999999" });
    expect(edge.mtime).toBe("+275760-09-13T00:00:00.000Z");
    expect(listingLine(edge)).toContain(" +275760-09-13T00:00:00.000Z e/");
  });

  it("quotes a name or target that would break the line or drive the terminal, and nothing else", () => {
    for (const plain of ["plain.txt", "spaces and ünïcode/名前", 'mid"quote', "back\\slash"]) {
      expect(printablePath(plain)).toBe(plain);
    }
    expect(printablePath("new\nline")).toBe('"new\\nline"');
    expect(printablePath("esc\u001b[2Jclear")).toBe('"esc\\u001b[2Jclear"');
    expect(printablePath("del\u007f c1\u009b")).toBe('"del\\u007f c1\\u009b"');
    expect(printablePath('"quoted"')).toBe('"\\"quoted\\""'); // a leading quote, so quoting stays unambiguous
    const mtimeNs = "0";
    const line = listingLine(listedEntry({ type: "symlink", path: "a\rb", mode: 0o777, mtimeNs, target: "t\nu" }));
    expect(line.split("\n")).toHaveLength(1);
    expect(line).toMatch(/ "a\\rb" -> "t\\nu"$/);
  });
});
