// `dumont key list`'s table: a header, aligned columns, each key's state in words.
import { describe, expect, it } from "vitest";
import { type keyJson, keyTable } from "./key-command.js";

const now = new Date("2026-12-04T00:00:00.000Z");
const key = (fields: Partial<ReturnType<typeof keyJson>>): ReturnType<typeof keyJson> => ({
  id: "0123456789abcdef",
  tenantId: "acme",
  role: "provider",
  label: "acme rack",
  createdAt: "2026-12-01T10:00:00.000Z",
  revokedAt: null,
  expiresAt: null,
  lastUsedAt: null,
  ...fields,
});

describe("keyTable", () => {
  it("prints a header and one aligned row per key, the label quoted and last", () => {
    const out = keyTable(
      [
        key({}),
        key({
          id: "fedcba9876543210",
          tenantId: "admin",
          role: "admin",
          label: "",
          lastUsedAt: "2026-12-03T23:59:00.000Z",
        }),
      ],
      now,
    );
    expect(out).toBe(
      "ID                ROLE      TENANT  CREATED                   LAST USED                 STATUS  LABEL\n" +
        '0123456789abcdef  provider  acme    2026-12-01T10:00:00.000Z  never                     active  "acme rack"\n' +
        'fedcba9876543210  admin     admin   2026-12-01T10:00:00.000Z  2026-12-03T23:59:00.000Z  active  ""\n',
    );
  });

  it("says when a key expires, expired or was revoked", () => {
    const rows = keyTable(
      [
        key({ expiresAt: "2027-03-04T00:00:00.000Z" }),
        key({ expiresAt: "2026-12-03T00:00:00.000Z" }),
        key({ expiresAt: "2026-12-03T00:00:00.000Z", revokedAt: "2026-12-02T00:00:00.000Z" }),
      ],
      now,
    ).split("\n");
    expect(rows[1]).toMatch(/ {2}expires 2027-03-04T00:00:00\.000Z {2}"acme rack"$/);
    expect(rows[2]).toMatch(/ {2}expired 2026-12-03T00:00:00\.000Z {2}"acme rack"$/);
    expect(rows[3]).toMatch(/ {2}revoked 2026-12-02T00:00:00\.000Z {2}"acme rack"$/);
  });
});
