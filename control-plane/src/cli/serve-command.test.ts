// waitForSignal: the first SIGINT or SIGTERM ends the wait, and its listeners go with it (as they do when the
// wait is cancelled), so that a second Ctrl-C while the control plane closes gets the default action: the process
// ends at once. A listener left behind would swallow it, and the process would keep closing however often asked.
// But for a second after the first, which is taken for the same signal delivered twice (npm forwards Ctrl-C).
import { afterEach, describe, expect, it, onTestFinished, vi } from "vitest";
import { capturingLogger } from "../test-logger.js";
import { ECHO_MS, waitForSignal } from "./serve-command.js";

const counts = () => ({ int: process.listenerCount("SIGINT"), term: process.listenerCount("SIGTERM") });

describe("waitForSignal", () => {
  const before = counts();
  afterEach(() => expect(counts()).toEqual(before));

  it.each(["SIGINT", "SIGTERM"] as const)(
    "ends on %s, logging it, and listens for neither signal a second after",
    async (sig) => {
      vi.useFakeTimers({ toFake: ["setTimeout"] });
      onTestFinished(() => {
        vi.useRealTimers();
      });
      const lines: string[] = [];
      const waiting = waitForSignal(capturingLogger(lines));
      expect(counts()).toEqual({ int: before.int + 1, term: before.term + 1 });
      process.emit(sig);
      await waiting;
      // For a second, another signal is the same one again (`npm start` forwards the terminal's): taken, ignored.
      expect(counts()).toEqual({ int: before.int + 1, term: before.term + 1 });
      process.emit(sig);
      vi.advanceTimersByTime(ECHO_MS);
      expect(counts()).toEqual(before);
      expect(lines.map((l) => JSON.parse(l))).toEqual([
        expect.objectContaining({ signal: sig, msg: expect.stringMatching(/^shutting down/) }),
      ]);
    },
  );

  it("stops listening when cancelled (`dumont dev` whose agent stopped), before or while it waits", async () => {
    const lines: string[] = [];
    const cancel = new AbortController();
    const waiting = waitForSignal(capturingLogger(lines), cancel.signal);
    cancel.abort();
    await waiting;
    await waitForSignal(capturingLogger(lines), AbortSignal.abort());
    expect(lines).toEqual([]);
  });
});
