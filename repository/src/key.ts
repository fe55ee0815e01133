// Repository keys: 32 random bytes, written as 64 hex characters or base64.
import { randomBytes } from "node:crypto";
import { RepositoryError } from "./errors.js";

export const KEY_LENGTH = 32;

/**
 * Parses key material from a key file or an environment variable. Accepts 64 hex characters or the
 * base64 of 32 bytes (surrounding whitespace ignored), or exactly 32 raw bytes from a file.
 */
export function parseRepositoryKey(material: string | Buffer, source = "the key"): Buffer {
  if (
    Buffer.isBuffer(material) &&
    material.length === KEY_LENGTH &&
    !/^[\x21-\x7e]+$/.test(material.toString("latin1"))
  ) {
    return Buffer.from(material);
  }
  const text = (Buffer.isBuffer(material) ? material.toString("utf8") : material).trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, "hex");
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(text)) {
    const key = Buffer.from(text, "base64");
    if (key.length === KEY_LENGTH) return key;
  }
  throw new RepositoryError(
    "invalid-argument",
    `${source} is not a repository key: it must be 32 random bytes written as 64 hex characters or base64 ` +
      "(create one with `openssl rand -hex 32`).",
  );
}

export function generateRepositoryKey(): Buffer {
  return randomBytes(KEY_LENGTH);
}

export function assertKey(key: Buffer): void {
  if (!Buffer.isBuffer(key) || key.length !== KEY_LENGTH) {
    throw new RepositoryError("invalid-argument", `a repository key must be ${KEY_LENGTH} bytes`);
  }
}
