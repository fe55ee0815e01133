// Vitest's global setup (vitest.config.ts): runs once in the main process before any test file, and its
// teardown once after.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { PGLITE_TEMPLATE_ENV } from "./test-database.js";

/**
 * Offers the test processes a directory for the run's migrated embedded database (see test-database.ts), which
 * the first one that opens a test database fills; removed when the run ends. Test processes inherit the
 * environment. Not with DATABASE_URL: each test database is then a fresh one on that server.
 */
export default async function setup(): Promise<() => Promise<void>> {
  if (process.env.DATABASE_URL || process.env[PGLITE_TEMPLATE_ENV]) return async () => {};
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-test-pglite-"));
  process.env[PGLITE_TEMPLATE_ENV] = dir;
  return async () => {
    delete process.env[PGLITE_TEMPLATE_ENV];
    await fs.rm(dir, { recursive: true, force: true });
  };
}
