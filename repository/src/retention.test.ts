import { describe, expect, it } from "vitest";
import { planRetention } from "./retention.js";

const snap = (id: string, time: string, workspace = "w") => ({ id, time, workspace });

describe("planRetention", () => {
  const snaps = [
    snap("a", "2026-01-01T10:05:00Z"),
    snap("b", "2026-01-01T10:45:00Z"),
    snap("c", "2026-01-01T11:10:00Z"),
    snap("d", "2026-01-02T09:00:00Z"),
    snap("e", "2026-01-02T09:30:00Z"),
    snap("x", "2026-01-01T00:00:00Z", "other"),
  ];

  it("keeps the newest N per workspace", () => {
    const plan = planRetention(snaps, { last: 2 });
    expect(plan.keep.sort()).toEqual(["d", "e", "x"]);
    expect(plan.forget.sort()).toEqual(["a", "b", "c"]);
  });

  it("keeps the newest of each hour and day", () => {
    expect(planRetention(snaps, { hourly: 3 }).keep.sort()).toEqual(["b", "c", "e", "x"]);
    expect(planRetention(snaps, { daily: 2 }).keep.sort()).toEqual(["c", "e", "x"]);
    expect(planRetention(snaps, { last: 1, daily: 2 }).keep.sort()).toEqual(["c", "e", "x"]);
  });
});
