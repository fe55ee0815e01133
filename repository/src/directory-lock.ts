// One process at a time on a directory: the control plane's embedded database, the agent's data dir.
//
// PGlite runs a whole Postgres inside the process and takes no lock of its own on its files (the
// postmaster.pid it writes is ignored by the next one), so a second `dumont serve` on the same data dir opened
// the same database beside the first, ran its migrations and wrote its own WAL over the other's. Two
// `dumont-agent run` on one data dir are one host connecting twice, each session replacing the other's.
// Postgres stops a second postmaster with its pid file; we hold a Linux abstract Unix socket named after the
// directory's device and inode instead. The kernel gives the name to one process only, and takes it back when
// that process exits however it exits (kill -9 included), so there is no stale lock file to judge or clean up;
// the same directory reached through a symlink or a bind mount is the same lock. Whoever holds it answers a
// connection with its pid, so a refusal can say which process to stop.
//
// Linux only (abstract sockets are Linux's): elsewhere nothing is locked. Processes in different network
// namespaces (two containers mounting one volume) do not see each other's names either.
import { stat } from "node:fs/promises";
import net from "node:net";

export interface DirectoryLock {
  /** Gives the lock up; the next process to ask gets it. */
  release(): Promise<void>;
}

/** Who holds a lock, as its holder answers. */
interface Holder {
  pid: number;
  since: string;
}

/** How long a refused process waits for the holder to say who it is before refusing without its pid. */
const ASK_TIMEOUT_MS = 2000;

/**
 * Takes the lock on `dir` (which must exist), or throws an Error with the message `refusal` makes of who holds
 * it: "process 1234 (running since 2026-12-04T16:31:17.847Z)", or "another process" if it does not answer.
 */
export async function lockDirectory(dir: string, refusal: (holder: string) => string): Promise<DirectoryLock> {
  if (process.platform !== "linux") return { release: async () => {} };
  const st = await stat(dir);
  const name = `\0dumont-lock/${st.dev}/${st.ino}`;
  const holder: Holder = { pid: process.pid, since: new Date().toISOString() };
  const server = net.createServer((socket) => {
    socket.on("error", () => {}); // an asker that went away
    socket.end(JSON.stringify(holder));
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ path: name }, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE") throw err;
    const other = await askHolder(name);
    throw new Error(refusal(other ? `process ${other.pid} (running since ${other.since})` : "another process"));
  }
  server.unref(); // the lock must not keep the process alive
  return {
    release: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
      }),
  };
}

/** The holder's answer, or undefined if it gives none in time (busy, or exiting). */
function askHolder(name: string): Promise<Holder | undefined> {
  return new Promise((resolve) => {
    let text = "";
    const socket = net.connect({ path: name });
    const done = (holder: Holder | undefined) => {
      socket.destroy();
      clearTimeout(timer);
      resolve(holder);
    };
    const timer = setTimeout(() => done(undefined), ASK_TIMEOUT_MS);
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
      if (text.length > 1024) done(undefined);
    });
    socket.on("end", () => done(parseHolder(text)));
    socket.on("error", () => done(undefined));
  });
}

function parseHolder(text: string): Holder | undefined {
  try {
    const value = JSON.parse(text) as Partial<Holder>;
    if (Number.isInteger(value.pid) && typeof value.since === "string") return value as Holder;
  } catch {
    // not an answer of ours
  }
  return undefined;
}
