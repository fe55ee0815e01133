// `dumont dev`'s banner: the command it suggests works from the shell it was started in.
import { describe, expect, it } from "vitest";
import { tryCommand } from "./dev-command.js";

describe("tryCommand", () => {
  it("is the plain command on the defaults, however the data dir was written", () => {
    expect(tryCommand("http://localhost:8000", ".dumont", "/repo")).toBe("npx dumont host list");
    expect(tryCommand("http://localhost:8000", "/repo/.dumont", "/repo")).toBe("npx dumont host list");
  });

  it("puts the API's URL and the data dir in front when they are not the CLI's defaults", () => {
    expect(tryCommand("http://localhost:18000", "/tmp/walk/dd", "/repo")).toBe(
      "DUMONT_API_URL=http://localhost:18000 DUMONT_DATA_DIR=/tmp/walk/dd npx dumont host list",
    );
    expect(tryCommand("http://localhost:8000", "/tmp/my data/it's", "/repo")).toBe(
      "DUMONT_DATA_DIR='/tmp/my data/it'\\''s' npx dumont host list",
    );
  });
});
