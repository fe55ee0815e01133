// `dumont snapshot list`'s table: the snapshot's own size, what it newly stored, what it left out, the path last;
// the pack repair `dumont snapshot check` advises.
import { describe, expect, it } from "vitest";
import { repairPacksCommand, type snapshotJson, snapshotTable } from "./snapshot-command.js";

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

describe("repairPacksCommand", () => {
  const damaged = (tenantId: string, pack: string) => ({ tenantId, kind: "chunk-corrupt", pack });
  const pack = (c: string) => c.repeat(64);

  it("names the one tenant whose packs are damaged, and those packs while they are few; else every tenant's", () => {
    const missing = { tenantId: "t-b", kind: "chunk-missing" }; // not a pack repair's: the index's
    expect(repairPacksCommand([damaged("t-a", pack("a")), damaged("t-a", pack("a")), missing])).toBe(
      `dumont snapshot repair-packs --tenant t-a ${"a".repeat(16)}`,
    );
    const six = [..."abcdef"].map((c) => damaged("t-a", pack(c)));
    expect(repairPacksCommand(six.slice(0, 5))).toBe(
      `dumont snapshot repair-packs --tenant t-a ${[..."abcde"].map((c) => c.repeat(16)).join(" ")}`,
    );
    expect(repairPacksCommand(six)).toBe("dumont snapshot repair-packs --tenant t-a");
    expect(repairPacksCommand([damaged("t-a", pack("a")), damaged("t-b", pack("b"))])).toBe(
      "dumont snapshot repair-packs",
    );
  });
});
