#!/usr/bin/env node
// CommonJS on purpose: this file runs before anything else has used libuv's thread pool (an ES module entry is
// itself read through it), and the pool's size is read once, at its first use.
//
// The pool runs the control plane's file reads and writes (a file:// blob store's packs, the embedded
// database's files), its DNS lookups (an S3 endpoint's name) and some of its crypto. Node's default of 4 is
// small for a server writing several agents' snapshots at once, and a file:// store on a mount that stopped
// answering holds a thread for every call hung on it: with 16, the (at most 4, STORE_CALLS_UNRETURNED_MAX) calls
// given up on leave 12 for everything else. An operator's own UV_THREADPOOL_SIZE wins. (The local agent that
// `dumont dev` starts inherits the setting; it costs it 12 idle threads.)
"use strict";

process.env.UV_THREADPOOL_SIZE ??= "16";

import("../dist/cli/main.js")
  .then(({ main }) => main(process.argv))
  .catch((err) => {
    // Control characters escaped: a message may quote what a user or an agent sent (a path, a host id), and a
    // terminal would act on an escape sequence in it (as `printable` does in the CLIs' output).
    const text = err instanceof Error ? err.message : String(err);
    process.stderr.write(
      `dumont: ${text.replace(/\p{Cc}/gu, (c) => (c === "\n" ? c : `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`))}\n`,
    );
    // For a bug report: the stack too, only when asked for.
    if (process.env.DUMONT_DEBUG === "1" && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    process.exit(1);
  });
