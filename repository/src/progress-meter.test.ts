import { describe, expect, it } from "vitest";
import { formatDuration } from "./progress-meter.js";

describe("formatDuration", () => {
  it("rounds up to whole seconds before it splits them, so a minute never shows 60 seconds", () => {
    expect(formatDuration(0.2)).toBe("1s");
    expect(formatDuration(59.5)).toBe("1m00s");
    expect(formatDuration(119.5)).toBe("2m00s"); // "1m60s" before
    expect(formatDuration(3599.5)).toBe("1h00m"); // "59m60s" before
    expect(formatDuration(3 * 3600 + 5 * 60)).toBe("3h05m");
  });
});
