// Errors no handler meant to raise (anything but a ConnectError: a database failure, a bug). Connect answers
// them "internal error", keeping what went wrong from the client; this keeps it for the operators, in the log.
import { ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "../logger.js";

/**
 * Logs an unexpected error of any call at error level, with its procedure ("dumont.api.v1.HostService/ListHosts")
 * and the error; never the request, whose headers carry the API key. A stream's error is caught where it happens,
 * after its first messages were sent as well as before.
 */
export function logUnexpectedErrors(log: Logger): Interceptor {
  return (next) => async (req) => {
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const report = (err: unknown) => {
      if (err instanceof ConnectError) return;
      // The client went away (a CLI stopped following with Ctrl-C): the answer, or the stream's next message,
      // cannot be written to it, which is no fault here; what the call started goes on. Only that: a failure of
      // the work itself after the client left is still an unexpected error.
      const unwritable = err === req.signal.reason || (err as NodeJS.ErrnoException)?.code === "ERR_STREAM_DESTROYED";
      if (req.signal.aborted && unwritable) {
        log.info({ procedure, reason: (err as Error)?.message }, "API call's client went away before its answer");
        return;
      }
      log.error(
        { err, procedure },
        "API call failed with an unexpected error; the client was answered 'internal error'",
      );
    };
    try {
      const res = await next(req);
      return res.stream ? { ...res, message: reporting(res.message, report) } : res;
    } catch (err) {
      report(err);
      throw err;
    }
  };
}

async function* reporting<T>(messages: AsyncIterable<T>, report: (err: unknown) => void): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (err) {
    report(err);
    throw err;
  }
}
