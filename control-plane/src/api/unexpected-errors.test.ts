// What the API logs as an unexpected error: not a stream's answer that could not be written to a client gone
// (Ctrl-C of a CLI following it), but still a real failure that happened after the client left.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import type { Logger } from "../logger.js";
import { logUnexpectedErrors } from "./unexpected-errors.js";

describe("logUnexpectedErrors", () => {
  const run = async (aborted: boolean, err: unknown) => {
    const logged: string[] = [];
    const log = {
      info: (_o: object, msg: string) => logged.push(`info: ${msg}`),
      error: (_o: object, msg: string) => logged.push(`error: ${msg}`),
    } as unknown as Logger;
    const gone = new AbortController();
    if (aborted) gone.abort(new Error("the client went away"));
    const req = {
      service: { typeName: "dumont.api.v1.SnapshotService" },
      method: { name: "ForgetSnapshots" },
      signal: gone.signal,
    };
    const call = (logUnexpectedErrors(log) as Interceptor)(async () => {
      throw typeof err === "function" ? err(gone.signal) : err;
    });
    await call(req as never).catch(() => {});
    return logged;
  };
  const destroyed = Object.assign(new Error("Cannot call write after a stream was destroyed"), {
    code: "ERR_STREAM_DESTROYED",
  });

  it("logs at info an answer that could not be written to a client gone", async () => {
    expect(await run(true, destroyed)).toEqual(["info: API call's client went away before its answer"]);
    expect(await run(true, (signal: AbortSignal) => signal.reason)).toEqual([
      "info: API call's client went away before its answer",
    ]);
  });

  it("still logs as unexpected a failure of the work after the client left, and never a ConnectError", async () => {
    expect(await run(true, new TypeError("x is undefined"))).toEqual([
      "error: API call failed with an unexpected error; the client was answered 'internal error'",
    ]);
    expect(await run(false, destroyed)).toHaveLength(1);
    expect(await run(true, new ConnectError("no", Code.NotFound))).toEqual([]);
  });
});
