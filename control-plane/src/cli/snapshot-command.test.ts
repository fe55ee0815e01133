// `dumont snapshot list`'s table: the snapshot's own size, what it newly stored, what it left out, the path last.
import { describe, expect, it } from "vitest";
import { type snapshotJson, snapshotTable } from "./snapshot-command.js";

type Listed = ReturnType<typeof snapshotJson>;
const listed = (over: Partial<Listed>): Listed => ({
  id: "a1b2",
  tenantId: "acme",
  hostId: "h-1",
  workspaceId: "h-1:/w",
  path: "/work/my model",
  epoch: 0,
  createdAt: "2026-12-04T00:00:00.000Z",
  files: 5,
  bytesRead: 0,
  bytesNew: 0,
  bytesStored: 592,
  chunksNew: 0,
  seconds: 0.1,
  bytesTotal: 3_040_870,
  ...over,
});

describe("snapshotTable", () => {
  it("puts a header over aligned columns, the path last as it is", () => {
    const table = snapshotTable([
      listed({}),
      listed({ id: "c3d4e5", files: 12, bytesTotal: null, filesSkipped: 2, skipped: [] } as Partial<Listed>),
    ]);
    expect(table.split("\n")).toEqual([
      "ID      CREATED                   TENANT  HOST  FILES            SIZE     NEW    PATH",
      "a1b2    2026-12-04T00:00:00.000Z  acme    h-1   5                2.9 MiB  592 B  /work/my model",
      "c3d4e5  2026-12-04T00:00:00.000Z  acme    h-1   12 (2 left out)  unknown  592 B  /work/my model",
      "",
    ]);
  });
});
