// What both CLIs (`dumont-agent`, `dumont`) do when their output cannot be written: stdout on a full disk, an I/O
// error, a pipe whose reader went away. One line on stderr and exit 1, or for a gone reader a quiet exit, never a
// stack trace, and never an exit 0 with the output lost.
import { fstatSync, writeSync } from "node:fs";
import { Socket } from "node:net";
import type { Writable } from "node:stream";
import { getSystemErrorMap } from "node:util";

/** Stdout refused the output: the bins print the message alone, and exit 1. */
export class StdoutError extends Error {
  constructor(cause: NodeJS.ErrnoException, wrap: (why: string) => string = (why) => why) {
    super(wrap(`cannot write the output to stdout: ${errorText(cause)}`), { cause });
    this.name = "StdoutError";
  }
}

/** The first write to stdout that failed (but for EPIPE, which ends the process at once). */
let failed: NodeJS.ErrnoException | undefined;

/**
 * Call first in main: stdout's write errors are recorded for flushStdout, never thrown. Replaces the listeners the
 * bins set before main ran: theirs threw every error but EPIPE, an uncaught exception with its stack, emitted
 * before the command could say what it had done (a snapshot saved).
 */
export function watchStdout(): void {
  process.stdout.removeAllListeners("error");
  process.stdout.on("error", stdoutFailed);
  writeWholeToFiles(process.stdout);
}

/**
 * Stdout on a file: Node writes each chunk with one write(2) and takes a short count for done, so a disk that
 * filled part way through cut the output short with no error, and exit 0. Here the rest is written until all of
 * it is, or write(2) fails (ENOSPC, EFBIG), which then fails the command. Only where Node writes to a file or
 * character device (its SyncWriteStream): pipes, sockets and terminals are Sockets, which write it all.
 */
function writeWholeToFiles(stdout: Writable & { fd?: unknown }): void {
  const fd = stdout.fd;
  if (stdout instanceof Socket || typeof fd !== "number") return;
  const stats = fstatSync(fd);
  if (!stats.isFile() && !stats.isCharacterDevice()) return;
  stdout._write = (chunk: Buffer | string, encoding: BufferEncoding, done: (err?: Error | null) => void) => {
    const bytes = typeof chunk === "string" ? Buffer.from(chunk, encoding) : chunk;
    try {
      for (let at = 0; at < bytes.length; ) {
        const wrote = writeSync(fd, bytes, at);
        // Never a loop for good.
        if (wrote === 0) throw new Error(`it took none of the last ${bytes.length - at} bytes`);
        at += wrote;
      }
    } catch (err) {
      done(err as Error);
      return;
    }
    done();
  };
}

/**
 * Resolves once everything written to stdout so far is written; throws StdoutError if any of it was not.
 * `wrap` words that for the command, e.g. what it did all the same (`snapshot … was saved; ${why}`).
 */
export async function flushStdout(wrap?: (why: string) => string): Promise<void> {
  // Written in order: this empty write's callback comes after every earlier one's, with their error if one failed.
  const err = await new Promise<Error | null | undefined>((resolve) => process.stdout.write("", resolve));
  if (err) stdoutFailed(err);
  if (failed) throw new StdoutError(failed, wrap);
}

function stdoutFailed(err: NodeJS.ErrnoException): void {
  // The reader went away (`dumont-agent snapshot list | head -1`): stop now, quietly, with the exit code the
  // command set so far (0 unless it had found a problem), as ripgrep does and as these bins always did. Not 141 (a
  // death by SIGPIPE, what C tools get): under `set -o pipefail` that fails a script that wanted only the first
  // lines, and the shell says nothing of it either way.
  if (err.code === "EPIPE") process.exit();
  failed ??= err;
}

/** "ENOSPC (no space left on device)", as libuv names and describes the error. */
function errorText(err: NodeJS.ErrnoException): string {
  const known = typeof err.errno === "number" ? getSystemErrorMap().get(err.errno) : undefined;
  if (known) return `${known[0]} (${known[1]})`;
  return err.code ? `${err.code} (${err.message})` : err.message;
}
