import { describe, expect, it } from "vitest";
import { progressReporter } from "./snapshot-commands.js";

describe("progressReporter", () => {
  it("sends at most one report per interval, and the latest again when a step goes quiet, until stopped", async () => {
    const sent: number[] = [];
    const reporter = progressReporter(0, (p) => sent.push(p), { minMs: 1_000, heartbeatMs: 150 });
    reporter.report(1); // the first goes out at once
    reporter.report(2); // within the interval: held back, but kept as the latest
    reporter.report(3);
    expect(sent).toEqual([1]);
    // Nothing is reported for a while (a long listing): the latest goes out again, again and again.
    await new Promise((r) => setTimeout(r, 500));
    expect(sent.length).toBeGreaterThanOrEqual(3);
    expect(sent.slice(1).every((p) => p === 3)).toBe(true);
    reporter.stop();
    const count = sent.length;
    await new Promise((r) => setTimeout(r, 400));
    expect(sent.length).toBe(count);
  });

  it("has something to send before the first report", async () => {
    const sent: { bytes: number }[] = [];
    const reporter = progressReporter({ bytes: 0 }, (p) => sent.push(p), { minMs: 1_000, heartbeatMs: 100 });
    await new Promise((r) => setTimeout(r, 250));
    reporter.stop();
    expect(sent[0]).toEqual({ bytes: 0 });
  });
});
