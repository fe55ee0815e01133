import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { IdSet } from "./id-set.js";

describe("IdSet", () => {
  it("holds ids given raw or as hex, each once, past its first buffer, and lists them in order", () => {
    const set = new IdSet();
    const ids = Array.from({ length: 3_000 }, () => randomBytes(32));
    for (const [i, id] of ids.entries()) set.add(i % 2 === 0 ? id : id.toString("hex"));
    set.add(ids[7]); // again, the other way
    set.add(ids[8].toString("hex").toUpperCase());
    expect(set.size).toBe(3_000);
    for (const id of ids) {
      expect(set.has(id)).toBe(true);
      expect(set.has(id.toString("hex"))).toBe(true);
    }
    expect(set.has(randomBytes(32))).toBe(false);
    expect([...set.raw()].map((id) => id.toString("hex"))).toEqual(ids.map((id) => id.toString("hex")));
  });

  it("refuses what is not an id, and finds nothing by it", () => {
    const set = new IdSet();
    expect(() => set.add("ab")).toThrow("not a 32-byte id");
    expect(() => set.add(`${"zz".repeat(32)}`)).toThrow("not a 32-byte id");
    expect(() => set.add(randomBytes(31))).toThrow("not a 32-byte id");
    expect(set.size).toBe(0);
    expect(set.has("not hex")).toBe(false);
    expect(set.has(Buffer.alloc(33))).toBe(false);
  });
});
