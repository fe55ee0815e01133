import { describe, expect, it } from "vitest";
import { formatBytes, formatDuration, ProgressMeter } from "./progress-meter.js";

describe("formatBytes", () => {
  it("counts in 1024s, or in 1000s where asked", () => {
    expect([0, 1023, 1024, 1_000_000, 2 ** 40 * 2048].map((n) => formatBytes(n))).toEqual([
      "0 B",
      "1023 B",
      "1.0 KiB",
      "976.6 KiB",
      "2048.0 TiB",
    ]);
    expect([999, 1_000, 1_000_000, 1.5e12, 2 ** 20].map((n) => formatBytes(n, { decimal: true }))).toEqual([
      "999 B",
      "1.0 kB",
      "1.0 MB",
      "1.5 TB",
      "1.0 MB",
    ]);
    // Never "1000.0 kB" or "1024.0 KiB": what would round to the next unit is given in it.
    expect(formatBytes(999_960, { decimal: true })).toBe("1.0 MB");
    expect(formatBytes(999_940, { decimal: true })).toBe("999.9 kB");
    expect(formatBytes(2 ** 20 - 1)).toBe("1.0 MiB");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1023.6)).toBe("1.0 KiB"); // a rate: bytes a second need not be whole
    expect(formatBytes(999.4, { decimal: true })).toBe("999 B");
  });
});

describe("formatDuration", () => {
  it("rounds up to whole seconds before it splits them, so a minute never shows 60 seconds", () => {
    expect(formatDuration(0.2)).toBe("1s");
    expect(formatDuration(59.5)).toBe("1m00s");
    expect(formatDuration(119.5)).toBe("2m00s"); // "1m60s" before
    expect(formatDuration(3599.5)).toBe("1h00m"); // "59m60s" before
    expect(formatDuration(3 * 3600 + 5 * 60)).toBe("3h05m");
  });
});

describe("ProgressMeter", () => {
  const drawn = (unit?: string) => {
    const written: string[] = [];
    const out = { write: (s: string) => written.push(s) } as unknown as NodeJS.WriteStream;
    const meter = new ProgressMeter(out, "job", unit);
    meter.update(3 * 1024 * 1024, 12 * 1024 * 1024, true);
    meter.finish();
    return written;
  };

  it("shows bytes by default, and counts when given a unit; clears its line when done", () => {
    const [bytes, cleared] = drawn();
    expect(bytes.startsWith("\r\x1b[K")).toBe(true);
    expect(bytes.slice(4)).toMatch(/^job: 3\.0 MiB \/ 12\.0 MiB \(25%\) {2}[\d.]+ \w+\/s( ETA \d+s)?$/);
    expect(cleared).toBe("\r\x1b[K");
    expect(drawn("packs")[0].slice(4)).toMatch(/^job: 3145728 \/ 12582912 packs \(25%\) {2}[\d.]+\/s( ETA \d+s)?$/);
  });
});
