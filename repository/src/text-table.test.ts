// The table the list commands print: a header, columns aligned, nothing trailing.
import { describe, expect, it } from "vitest";
import { table } from "./text-table.js";

describe("table", () => {
  it("pads each column to its widest cell, header included, two spaces apart", () => {
    expect(
      table(
        ["ID", "ROLE", "LABEL"],
        [
          ["a1", "provider", '"acme rack"'],
          ["b2222", "admin", '""'],
        ],
      ),
    ).toBe('ID     ROLE      LABEL\na1     provider  "acme rack"\nb2222  admin     ""\n');
  });

  it("leaves the last column unpadded and no line ending in spaces", () => {
    const out = table(
      ["NAME", "NOTE"],
      [
        ["x", ""],
        ["longer", "a note"],
      ],
    );
    expect(out).toBe("NAME    NOTE\nx\nlonger  a note\n");
  });

  it("quotes a cell with a control character in it, so a row stays one line", () => {
    expect(
      table(
        ["ID", "PATH"],
        [
          ["a1", "/w/one\ntwo"],
          ["b2", "/w/\u009b31m"],
        ],
      ),
    ).toBe('ID  PATH\na1  "/w/one\\ntwo"\nb2  "/w/\\u009b31m"\n');
  });

  it("prints the header alone when there are no rows", () => {
    expect(table(["ID", "ROLE"], [])).toBe("ID  ROLE\n");
  });
});
