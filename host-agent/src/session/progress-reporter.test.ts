import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { progressReporter } from "./snapshot-commands.js";

// On fake timers (setInterval and performance.now both): which report goes out when is decided by the clock the
// test moves, not by how promptly a busy machine runs a timer. On real timers, a pause of the test's process
// longer than the interval between two of its steps sent a report the test expected held back.
describe("progressReporter", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("sends at most one report per interval, the last of a burst later, and nothing while nothing moves", () => {
    const sent: number[] = [];
    const reporter = progressReporter(0, (p) => sent.push(p), { minMs: 1_000, heartbeatMs: 150 });
    reporter.report(1); // the first goes out at once
    reporter.report(2); // within the interval: held back, but kept as the latest
    reporter.report(3);
    expect(sent).toEqual([1]);
    vi.advanceTimersByTime(150);
    expect(sent).toEqual([1, 3]);
    // The held-back latest went out once; then nothing, however long: an operation that reports nothing (a read
    // hung on a dead mount) must look silent to the control plane, which gives up on it.
    vi.advanceTimersByTime(10_000);
    expect(sent).toEqual([1, 3]);
    reporter.report(4); // the interval since the last message is over: at once
    expect(sent).toEqual([1, 3, 4]);
    reporter.report(5); // within it: held back, and stopped before the heartbeat
    reporter.stop();
    vi.advanceTimersByTime(10_000);
    expect(sent).toEqual([1, 3, 4]);
  });

  it("has something to send before the first report", () => {
    const sent: { bytes: number }[] = [];
    const reporter = progressReporter({ bytes: 0 }, (p) => sent.push(p), { minMs: 1_000, heartbeatMs: 100 });
    vi.advanceTimersByTime(99);
    expect(sent).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(sent).toEqual([{ bytes: 0 }]);
    vi.advanceTimersByTime(10_000);
    reporter.stop();
    expect(sent).toEqual([{ bytes: 0 }]);
  });
});
