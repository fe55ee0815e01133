// Repository keys: 32 random bytes, written as 64 hex characters or base64.
import { randomBytes } from "node:crypto";
import { RepositoryError } from "./errors.js";

export const KEY_LENGTH = 32;

/**
 * Parses key material from a key file or an environment variable. Accepts 64 hex characters or the
 * base64 of 32 bytes (surrounding whitespace ignored), or exactly 32 raw bytes from a file.
 */
export function parseRepositoryKey(material: string | Buffer, source = "the key"): Buffer {
  let key: Buffer | undefined;
  // 32 raw bytes, unless they read as text (printable characters and whitespace only: a 31-character password
  // and its newline, a cut-short hex key), which 32 random bytes do about once in 10^13.
  if (
    Buffer.isBuffer(material) &&
    material.length === KEY_LENGTH &&
    !/^[\t-\r\x20-\x7e]+$/.test(material.toString("latin1"))
  ) {
    key = Buffer.from(material);
  }
  const text = (Buffer.isBuffer(material) ? material.toString("utf8") : material).trim();
  if (!key && /^[0-9a-fA-F]{64}$/.test(text)) key = Buffer.from(text, "hex");
  if (!key && /^[A-Za-z0-9+/_-]{43}=?$/.test(text)) {
    const decoded = Buffer.from(text, "base64");
    if (decoded.length === KEY_LENGTH) key = decoded;
  }
  if (key) return key;
  if (Buffer.isBuffer(material) && material.length === KEY_LENGTH) {
    throw new RepositoryError(
      "invalid-argument",
      `${source} is not a repository key: its 32 bytes read as text (a password, a cut-short key), not 32 random ` +
        "bytes; a key is 64 hex characters (`openssl rand -hex 32`). A repository made with this file as its key " +
        "opens with its bytes written as hex: `od -An -vtx1 FILE | tr -d ' \\n' > FILE.hex`, then --key-file FILE.hex.",
    );
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
