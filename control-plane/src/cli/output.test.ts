// What the CLI prints from elsewhere (an agent's warnings) reaches the terminal without its control characters.
import { describe, expect, it } from "vitest";
import { printable } from "./output.js";

describe("printable", () => {
  it("writes control characters as \\uXXXX (an escape sequence cannot reach the terminal) and keeps the rest", () => {
    expect(printable("cleared /w\x1b[2J\x1b]0;owned\x07 at 12:00\r\n\u0085")).toBe(
      "cleared /w\\u001b[2J\\u001b]0;owned\\u0007 at 12:00\\u000d\\u000a\\u0085",
    );
    expect(printable("/work/my model — données ✓")).toBe("/work/my model — données ✓");
  });
});
