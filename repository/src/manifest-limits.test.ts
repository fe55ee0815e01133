// The caps on a manifest's size, reached with the limits made small: parts that hold more than a manifest may are
// refused as they are read, before all of them are held (a record naming one large part over and over would
// otherwise have a reader hold gigabytes).
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";

vi.mock("./limits.js", async (original) => {
  const real = await original<typeof import("./limits.js")>();
  return { ...real, MAX_MANIFEST_BYTES: 8192, MAX_SEALED_MANIFEST_BYTES: 9216 };
});

const { generateRepositoryKey } = await import("./key.js");
const { openManifestParts, sealManifest } = await import("./manifest.js");
const { openBlobStore } = await import("./open-blob-store.js");
const { Repository } = await import("./repository.js");
const { sha256 } = await import("./sealing.js");

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "dumont-manifest-limits-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Four parts of ~6,000 plain bytes each (random names: they do not shrink much), each within a part's size. */
function fourParts(key: Buffer): Buffer[] {
  return Array.from({ length: 4 }, () =>
    sealManifest(key, {
      version: 1,
      entries: [{ type: "dir", path: randomBytes(2_900).toString("hex"), mode: 0o755, mtimeNs: "0" }],
    }),
  );
}

describe("a manifest's size caps", () => {
  it("refuses parts that open to more than a manifest may hold", () => {
    const key = generateRepositoryKey();
    expect(() => openManifestParts(key, fourParts(key), "manifest of snapshot s")).toThrow(
      /manifest of snapshot s .*its parts hold more than 0\.0078125 MiB, more than a manifest may/,
    );
  });

  it("reads no more parts once they are more bytes than a writer seals", async () => {
    const store = openBlobStore(pathToFileURL(join(dir, "repo")).href);
    const key = generateRepositoryKey();
    const { repository } = await Repository.openOrInit(store, key);
    const parts = fourParts(key);
    expect(parts.reduce((n, p) => n + p.length, 0)).toBeGreaterThan(9216);
    const ids: string[] = [];
    for (const part of parts) {
      const id = sha256(part).toString("hex");
      await store.put(`manifests/${id}`, part);
      ids.push(id);
    }
    const record = { id: "s1", manifests: ids } as Parameters<typeof repository.readManifestBlobs>[0];
    await expect(repository.readManifestBlobs(record)).rejects.toThrow(
      "the manifest parts of snapshot s1 hold more than the 9216 bytes a writer seals",
    );
    await store.close();
  });
});
