import { describe, expect, it } from "vitest";
import { MAX_MANIFEST_PARTS } from "./limits.js";
import { ManifestPartsReceiver } from "./manifest-parts.js";

describe("ManifestPartsReceiver", () => {
  it("gives back the parts in order with the last, when the count says how many came", () => {
    const r = new ManifestPartsReceiver();
    const sent = Buffer.from("part 0");
    expect(r.add(0, sent)).toBeUndefined();
    sent.fill(0); // a copy was kept, not the message's memory
    expect(r.add(1, Buffer.from("part 1"))).toBeUndefined();
    expect(r.received).toBe(2);
    expect(r.complete(Buffer.from("last"), 4)).toBeUndefined();
    expect(r.complete(Buffer.from("last"), 3)?.map(String)).toEqual(["part 0", "part 1", "last"]);
    // A sender from before parts says 0: one part, the last.
    expect(new ManifestPartsReceiver().complete(Buffer.from("only"), 0)?.map(String)).toEqual(["only"]);
    expect(new ManifestPartsReceiver().complete(Buffer.from("only"), 2)).toBeUndefined();
  });

  it("refuses a part out of order or past the limit, and everything after it", () => {
    const r = new ManifestPartsReceiver();
    expect(r.add(1, Buffer.from("x"))).toBe("manifest part 1 after 0 parts (at most 256 in all, in order)");
    expect(r.add(0, Buffer.from("x"))).toBe(r.refused);
    expect(r.complete(Buffer.from("last"), 1)).toBeUndefined();

    const many = new ManifestPartsReceiver();
    for (let i = 0; i < MAX_MANIFEST_PARTS - 1; i++) expect(many.add(i, Buffer.from("p"))).toBeUndefined();
    expect(many.add(MAX_MANIFEST_PARTS - 1, Buffer.from("p"))).toMatch(/^manifest part 255 after 255 parts/);
  });
});
