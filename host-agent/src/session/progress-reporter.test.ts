import { describe, expect, it } from "vitest";
import { progressReporter } from "./snapshot-commands.js";

describe("progressReporter", () => {
  it("sends at most one report per interval, the last of a burst later, and nothing while nothing moves", async () => {
    const sent: number[] = [];
    const reporter = progressReporter(0, (p) => sent.push(p), { minMs: 1_000, heartbeatMs: 150 });
    reporter.report(1); // the first goes out at once
    reporter.report(2); // within the interval: held back, but kept as the latest
    reporter.report(3);
    expect(sent).toEqual([1]);
    await new Promise((r) => setTimeout(r, 500));
    // The held-back latest went out once; then nothing, however long: an operation that reports nothing (a read
    // hung on a dead mount) must look silent to the control plane, which gives up on it.
    expect(sent).toEqual([1, 3]);
    reporter.report(4);
    reporter.stop();
    await new Promise((r) => setTimeout(r, 400));
    expect(sent).toEqual([1, 3]);
  });

  it("has something to send before the first report", async () => {
    const sent: { bytes: number }[] = [];
    const reporter = progressReporter({ bytes: 0 }, (p) => sent.push(p), { minMs: 1_000, heartbeatMs: 100 });
    await new Promise((r) => setTimeout(r, 250));
    reporter.stop();
    expect(sent).toEqual([{ bytes: 0 }]);
  });
});
