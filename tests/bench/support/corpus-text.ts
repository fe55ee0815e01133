// The snapshot corpus's content, deterministic: incompressible bytes like model weights, and CSV, training-log
// and Python-like text. Shared by the snapshot benchmark (files on disk) and the LZ4 one (chunks in memory).
import { createCipheriv, createHash } from "node:crypto";

/** Deterministic bytes that do not compress (AES-CTR keystream of a fixed key). */
export function noise(seed: string, size: number): Buffer {
  const key = createHash("sha256").update(`noise:${seed}`).digest();
  const cipher = createCipheriv("aes-256-ctr", key, Buffer.alloc(16));
  return cipher.update(Buffer.alloc(size));
}

/** A small deterministic PRNG (xorshift32) for the text generators. */
export function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

const WORDS =
  "alpha beta gamma delta epsilon zeta theta lambda sigma omega train eval loss step epoch batch grad norm".split(" ");

/** `head`, then lines from `line` until `size` bytes, cut at `size`. */
function linesUpTo(size: number, line: () => string, head = ""): Buffer {
  const parts: string[] = [head];
  let length = head.length;
  while (length < size) {
    const next = line();
    parts.push(next);
    length += next.length;
  }
  return Buffer.from(parts.join("")).subarray(0, size);
}

export function csvText(size: number, seed: number): Buffer {
  const next = prng(seed);
  let row = 0;
  return linesUpTo(
    size,
    () =>
      `${row++},${WORDS[next() % WORDS.length]}_${next() % 1000},${(next() % 100000) / 1000},` +
      `${next() % 2 ? "true" : "false"},2026-${String((next() % 12) + 1).padStart(2, "0")}-${String((next() % 28) + 1).padStart(2, "0")}\n`,
  );
}

export function logText(size: number, seed: number): Buffer {
  const next = prng(seed);
  let step = 0;
  return linesUpTo(
    size,
    () =>
      `[2026-01-01 12:${String(step % 60).padStart(2, "0")}:00] step=${step++} loss=${(next() % 100000) / 10000} lr=0.0003 grad_norm=${(next() % 1000) / 100} ${WORDS[next() % WORDS.length]}\n`,
  );
}

export function sourceText(size: number, seed: number): Buffer {
  const next = prng(seed);
  return linesUpTo(
    size,
    () => {
      const name = `${WORDS[next() % WORDS.length]}_${next() % 500}`;
      return `def ${name}(x, y={}):\n    """${WORDS[next() % WORDS.length]} helper."""\n    return x * ${next() % 97} + y.get("${name}", 0)\n\n`;
    },
    `# module ${seed}\nimport torch\n\n`,
  );
}
