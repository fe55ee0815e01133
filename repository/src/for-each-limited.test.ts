import { describe, expect, it } from "vitest";
import { forEachLimited } from "./for-each-limited.js";

describe("forEachLimited", () => {
  it("runs at most `limit` calls at once, over every item", async () => {
    let running = 0;
    let most = 0;
    const seen: number[] = [];
    await forEachLimited([...Array(20).keys()], 3, async (item) => {
      most = Math.max(most, ++running);
      await new Promise((resolve) => setTimeout(resolve, 1));
      seen.push(item);
      running--;
    });
    expect(most).toBe(3);
    expect(seen.sort((a, b) => a - b)).toEqual([...Array(20).keys()]);
  });

  it("starts nothing after a failure, and rejects with it only once the calls under way have ended", async () => {
    const started: number[] = [];
    let ended = 0;
    const done = forEachLimited([...Array(50).keys()], 4, async (item) => {
      started.push(item);
      if (item === 5) throw new Error("store said no");
      await new Promise((resolve) => setTimeout(resolve, 20));
      ended++;
    });
    await expect(done).rejects.toThrow("store said no");
    // Four calls at a time: item 5 fails within the second round, and no round starts after it.
    expect(started.length).toBeLessThanOrEqual(8);
    expect(ended).toBe(started.length - 1); // every call started but the failed one had ended by the rejection
  });

  it("refuses a limit that would run nothing (0, NaN, a fraction), rather than resolve having run nothing", async () => {
    for (const limit of [0, Number.NaN, 0.5, -1]) {
      await expect(forEachLimited([1, 2, 3], limit, async () => {})).rejects.toThrow(
        `forEachLimited: limit must be a whole number ≥ 1, got ${limit}`,
      );
    }
  });
});
