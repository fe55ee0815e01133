import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { IdTable } from "./id-table.js";

const id = (n: number): Buffer => createHash("sha256").update(String(n)).digest();

describe("IdTable", () => {
  it("finds each row by its id inside rows of any stride, past its growths, and keeps or replaces a repeat", () => {
    // Rows of 44 bytes behind a 5-byte header, as a pack's entry list lays them out; the buffer grows meanwhile.
    let rows = Buffer.alloc(5 + 44 * 4);
    const table = new IdTable(() => rows, 5, 44);
    const count = 3000;
    for (let r = 0; r < count; r++) {
      if (5 + 44 * (r + 1) > rows.length) {
        const grown = Buffer.alloc(5 + 2 * (rows.length - 5));
        rows.copy(grown);
        rows = grown;
      }
      // Row r holds id(r), except that every tenth row repeats the row before it.
      id(r % 10 === 9 ? r - 1 : r).copy(rows, 5 + 44 * r);
      expect(table.add(r)).toBe(r % 10 !== 9);
    }
    expect(table.size).toBe(count - count / 10);
    for (let r = 0; r < count; r++) {
      expect(table.find(id(r))).toBe(r % 10 === 9 ? -1 : r); // a repeat stays under its first row
    }
    expect(table.find(Buffer.concat([Buffer.alloc(3), id(17)]), 3)).toBe(17);
    expect(table.find(id(count + 1))).toBe(-1);

    // With `replace`, the row filed last wins, and the one it replaced is told (the chunk index: a chunk in several
    // packs is read from the last, and the others are its other copies).
    const index = new IdTable(() => rows, 5, 44);
    for (let r = 0; r < count; r++) expect(index.replace(r)).toBe(r % 10 === 9 ? r - 1 : -1);
    expect(index.find(id(8))).toBe(9);
    expect(index.find(id(7))).toBe(7);
    expect(index.size).toBe(count - count / 10);
  });
});
