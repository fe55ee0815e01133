import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ChunkTable } from "./chunk-table.js";

const id = (n: number): Buffer => createHash("sha256").update(String(n)).digest();

describe("ChunkTable", () => {
  it("keeps every row in order, knows which ids it holds, and says which pushes were new", () => {
    const table = new ChunkTable();
    // Past the first growth of the columns (1,024 rows) and several of the set (2,048 slots).
    const rows = 5000;
    const fresh: boolean[] = [];
    for (let r = 0; r < rows; r++) {
      // Every third row repeats an id already held: the rows keep it, the set does not count it again.
      const n = r % 3 === 2 ? r - 1 : r;
      expect(table.has(id(n))).toBe(r % 3 === 2);
      fresh.push(table.push(id(n), r + 1));
    }
    expect(table.count).toBe(rows);
    expect(fresh.filter(Boolean).length).toBe(rows - Math.floor(rows / 3));
    for (let r = 0; r < rows; r++) expect(fresh[r]).toBe(r % 3 !== 2);
    for (let r = 0; r < rows; r += 997) {
      const n = r % 3 === 2 ? r - 1 : r;
      expect(table.hexIds(r, 1)).toEqual([id(n).toString("hex")]);
      expect(table.lengthList(r, 1)).toEqual([r + 1]);
      expect(table.idsOf(r, 1).equals(id(n))).toBe(true);
      expect([...table.lengthsOf(r, 1)]).toEqual([r + 1]);
    }
    expect(table.hexIds(10, 3)).toEqual([id(10), id(10), id(12)].map((b) => b.toString("hex")));
    expect(table.idsOf(10, 3).equals(Buffer.concat([id(10), id(10), id(12)]))).toBe(true);
    expect(table.lengthList(10, 3)).toEqual([11, 12, 13]);
    expect(table.has(id(rows + 1))).toBe(false);
    // An id read from the middle of a larger buffer, as the workers hand them over.
    const shared = Buffer.concat([Buffer.alloc(7), id(4), Buffer.alloc(3)]);
    expect(table.has(shared, 7)).toBe(true);
    expect(table.has(shared, 8)).toBe(false);
  });

  it("refuses an id that is not 32 bytes", () => {
    expect(() => new ChunkTable().push(Buffer.alloc(31), 1)).toThrow(/32 bytes, not 31/);
  });
});
