// Write-then-rename with fsync: a crash leaves the old file or the new one, never a torn one.
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";

/** Write to a temp file, fsync, rename: a crash leaves the old file or the new one, never half. */
export async function writeFileAtomic(file: string, data: string | Buffer, mode: number): Promise<void> {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  const handle = await fs.open(tmp, "w", mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.chmod(tmp, mode);
  await fs.rename(tmp, file);
}
