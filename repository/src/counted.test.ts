import { describe, expect, it } from "vitest";
import { counted, firstFew } from "./counted.js";

describe("counted", () => {
  it("uses the singular for one and the plural otherwise, zero included", () => {
    expect(counted(1, "snapshot")).toBe("1 snapshot");
    expect(counted(0, "snapshot")).toBe("0 snapshots");
    expect(counted(3, "pack")).toBe("3 packs");
  });

  it("takes an irregular plural", () => {
    expect(counted(1, "snapshot or restore", "snapshots or restores")).toBe("1 snapshot or restore");
    expect(counted(2, "snapshot or restore", "snapshots or restores")).toBe("2 snapshots or restores");
  });
});

describe("firstFew", () => {
  it("names up to max items, then how many more", () => {
    expect(firstFew([], 2)).toBe("");
    expect(firstFew(["a", "b"], 2)).toBe("a, b");
    expect(firstFew(["a", "b", "c", "d"], 2)).toBe("a, b and 2 more");
  });
});
