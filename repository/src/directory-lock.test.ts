// The one-process lock on a directory (directory-lock.ts): refused while held, whoever asks and by whichever
// path, with the holder's pid; free again once released, or once its holder dies (kill -9 included).
import { spawn } from "node:child_process";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { lockDirectory } from "./directory-lock.js";

const built = fileURLToPath(new URL("../dist/directory-lock.js", import.meta.url));
const refusal = (holder: string) => `held by ${holder}`;

describe.skipIf(process.platform !== "linux")("lockDirectory", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-lock-"));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("refuses a second holder with the message it is given, naming the holder's pid; free once released", async () => {
    const lock = await lockDirectory(dir, refusal);
    await expect(lockDirectory(dir, (holder) => `${dir} is in use by ${holder}: stop it first`)).rejects.toThrow(
      new RegExp(
        `^${dir} is in use by process ${process.pid} \\(running since \\d{4}-\\d\\d-\\d\\dT[^)]+\\): stop it first$`,
      ),
    );
    await lock.release();
    const again = await lockDirectory(dir, refusal);
    await again.release();
  });

  it("is the same lock through a symlink, and another directory's is another lock", async () => {
    const link = path.join(os.tmpdir(), `dumont-lock-link-${process.pid}-${Date.now()}`);
    await fs.symlink(dir, link);
    const other = await fs.mkdtemp(path.join(os.tmpdir(), "dumont-lock-other-"));
    const lock = await lockDirectory(dir, refusal);
    try {
      await expect(lockDirectory(link, refusal)).rejects.toThrow(`held by process ${process.pid}`);
      const beside = await lockDirectory(other, refusal);
      await beside.release();
    } finally {
      await lock.release();
      await fs.rm(link);
      await fs.rm(other, { recursive: true });
    }
  });

  it("is given back by the kernel when its holder is killed (no stale lock to clean up)", async () => {
    const script = `
      const { lockDirectory } = await import(${JSON.stringify(pathToFileURL(built).href)});
      await lockDirectory(${JSON.stringify(dir)}, () => "");
      process.stdout.write("held\\n");
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.on("data", (d: Buffer) => d.toString().includes("held") && resolve());
        child.on("exit", (code) => reject(new Error(`the holder exited with ${code}`)));
      });
      await expect(lockDirectory(dir, refusal)).rejects.toThrow(`held by process ${child.pid}`);
    } finally {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      await exited;
    }
    const lock = await lockDirectory(dir, refusal);
    await lock.release();
  });
});
