// One suite, two stores: the local directory and a real S3-compatible server (s3rver) on loopback.
import { closeSync, constants, existsSync, openSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { type AddressInfo, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { alignedBuffer, PAGE } from "./aligned-memory.js";
import { isRepositoryError } from "./errors.js";
import { FileBlobStore } from "./file-blob-store.js";
import { openBlobStore } from "./open-blob-store.js";
import { maxAttemptsFromEnv, S3BlobStore, s3EndpointFromEnv } from "./s3-blob-store.js";
import { bothStores } from "./testing/repository-fixtures.js";

const env = bothStores("dumont-store-");
const { stores } = env;
let counter = 0;

describe.each(stores)("%s blob store", (_name, make) => {
  it("stores, lists, ranges and deletes objects", async () => {
    const store = make();
    const big = Buffer.alloc(3 * 1024 * 1024, 7);
    await store.put("data/ab/one", Buffer.from("hello"));
    await store.put("data/cd/two", [Buffer.from("wor"), Buffer.alloc(0), Buffer.from("ld"), big]);
    await store.put("snapshots/x", Buffer.from("s"));
    expect((await store.get("data/ab/one")).toString()).toBe("hello");
    const two = await store.get("data/cd/two");
    expect(two.length).toBe(5 + big.length);
    expect(two.subarray(0, 5).toString()).toBe("world");
    expect((await store.getRange("data/cd/two", 3, 4)).toString("latin1")).toBe("ld\x07\x07");
    expect((await store.stat("data/ab/one"))?.size).toBe(5);
    expect(await store.stat("data/nope")).toBeUndefined();
    const listed: string[] = [];
    for await (const info of store.list("data/")) listed.push(`${info.key}:${info.size}`);
    expect(listed.sort()).toEqual(["data/ab/one:5", `data/cd/two:${5 + big.length}`]);
    const prefixed: string[] = [];
    for await (const info of store.list("data/a")) prefixed.push(info.key);
    expect(prefixed).toEqual(["data/ab/one"]);
    await store.delete("data/ab/one");
    await store.delete("data/ab/one"); // deleting twice is fine
    expect(await store.stat("data/ab/one")).toBeUndefined();
    await store.close();
  });

  it("reports missing objects and short ranges with typed errors", async () => {
    const store = make();
    await store.put("a", Buffer.from("abc"));
    await expect(store.get("missing")).rejects.toSatisfy((e) => isRepositoryError(e, "not-found"));
    await expect(store.getRange("a", 1, 10)).rejects.toSatisfy((e) => isRepositoryError(e));
    await store.close();
  });

  it("refuses to read whole an object over maxBytes, naming it and its size", async () => {
    const store = make();
    await store.put("snapshots/x", Buffer.alloc(1_000, 7));
    expect(await store.get("snapshots/x", { maxBytes: 1_000 })).toEqual(Buffer.alloc(1_000, 7));
    const err = await store.get("snapshots/x", { maxBytes: 999 }).catch((e: unknown) => e);
    expect(isRepositoryError(err, "corrupt"), String(err)).toBe(true);
    expect(String(err)).toContain(
      `${store.url}/snapshots/x is 1000 bytes, more than any object of its kind holds (999)`,
    );
    await store.close();
  });

  it("replaces whole objects and keeps an existing one with ifAbsent", async () => {
    const store = make();
    expect(await store.put("config", Buffer.from("first"), { ifAbsent: true })).toBe(true);
    await store.put("k", Buffer.from("v1"));
    await store.put("k", Buffer.from("v2"));
    expect((await store.get("k")).toString()).toBe("v2");
    if (store instanceof FileBlobStore) {
      // s3rver ignores If-None-Match; real S3 and the file store honour it.
      expect(await store.put("config", Buffer.from("second"), { ifAbsent: true })).toBe(false);
      expect((await store.get("config")).toString()).toBe("first");
    }
    await store.close();
  });

  it("refuses keys that could leave the store", async () => {
    const store = make();
    for (const key of ["../x", "/abs", "a//b", "a/./b", "", "a/..", "a/", "."]) {
      await expect(store.put(key, Buffer.from("x"))).rejects.toSatisfy((e) => isRepositoryError(e, "invalid-argument"));
    }
    await store.close();
  });
});

describe("file blob store", () => {
  it("leaves no temporary files behind", async () => {
    const root = join(env.dir, "atomic");
    const store = new FileBlobStore(root);
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.put(`data/00/${i}`, Buffer.alloc(1000, i))));
    expect((await readdir(join(root, "data", "00"))).sort()).toEqual(
      Array.from({ length: 20 }, (_, i) => String(i)).sort(),
    );
  });

  it("makes no write or delete its caller gave up on while it waited on the disk", async () => {
    const root = join(env.dir, "given-up");
    const store = new FileBlobStore(root);
    await store.put("data/kept", Buffer.from("kept"));
    const givenUp = AbortSignal.abort();
    const failures = [
      await store.put("data/small", Buffer.alloc(100, 1), { signal: givenUp }).catch((e: unknown) => e),
      await store.put("data/large", Buffer.alloc(2 * 1024 * 1024, 2), { signal: givenUp }).catch((e: unknown) => e),
      await store.delete("data/kept", { signal: givenUp }).catch((e: unknown) => e),
    ];
    // A streamed pack whose caller gave up between its writes and its commit: the commit, which would have made
    // it visible, fails and leaves nothing (what happens when its fsync hung and returned after the deadline).
    const cancel = new AbortController();
    const writer = await store.openWriter("data/pack", { signal: cancel.signal });
    await writer.write(Buffer.alloc(5 * 1024 * 1024 + 7, 3));
    cancel.abort();
    failures.push(await writer.commit().catch((e: unknown) => e));
    for (const err of failures) {
      expect(isRepositoryError(err, "unavailable"), String(err)).toBe(true);
      expect((err as Error).message).toMatch(/data\/\w+: (writing|deleting) was given up on by its caller; not done/);
    }
    expect((await store.get("data/kept")).toString()).toBe("kept");
    // Nothing else there, temp files included (list skips them, so look at the directory itself).
    expect(await readdir(join(root, "data"))).toEqual(["kept"]);
  });
});

describe("file blob store, large objects (O_DIRECT where the filesystem allows)", () => {
  const pattern = (size: number, seed: number): Buffer => {
    const b = Buffer.allocUnsafe(size);
    for (let i = 0; i < size; i++) b[i] = (i * 31 + seed) & 0xff;
    return b;
  };

  it("writes odd sizes and parts byte for byte, from plain and from allocated memory", async () => {
    const store = new FileBlobStore(join(env.dir, "direct"));
    // Sizes around the staging size and the block size; parts that cross both.
    const cases: [string, Buffer[]][] = [
      ["plain-odd", [pattern(4 * 1024 * 1024 + 4097, 1)]],
      ["plain-parts", [pattern(1024 * 1024 + 3, 2), pattern(13, 3), pattern(5 * 1024 * 1024 - 1, 4)]],
      ["exact-blocks", [pattern(2 * 1024 * 1024, 5)]],
    ];
    const allocated = store.allocate(6 * 1024 * 1024 + 100);
    pattern(allocated.length, 6).copy(allocated);
    cases.push(["allocated", [allocated.subarray(0, 6 * 1024 * 1024 + 77), pattern(500, 7)]]);
    cases.push(["allocated-short", [allocated.subarray(0, 1024 * 1024 + 1)]]);
    for (const [key, parts] of cases) {
      await store.put(`data/${key}`, parts);
      const back = await store.get(`data/${key}`);
      expect(back.equals(Buffer.concat(parts)), key).toBe(true);
    }
    expect((await readdir(join(env.dir, "direct", "data"))).sort()).toEqual(cases.map(([k]) => k).sort());
  });

  it("writes an object piece by piece, visible only once committed, and leaves nothing when aborted", async () => {
    const store = new FileBlobStore(join(env.dir, "streamed"));
    // Pieces that straddle the 4 MiB stages and the 4 KiB blocks, ending off a block boundary.
    const pieces = [
      pattern(3 * 1024 * 1024 + 5, 1),
      pattern(2 * 1024 * 1024, 2),
      pattern(1, 3),
      pattern(9 * 1024 * 1024 + 4095, 4),
    ];
    const writer = await store.openWriter("data/pack");
    for (const piece of pieces) {
      await writer.write(piece);
      piece.fill(0); // the writer holds no reference to a piece once write resolves
    }
    expect(await store.stat("data/pack")).toBeUndefined();
    await writer.commit();
    const expected = Buffer.concat([
      pattern(3 * 1024 * 1024 + 5, 1),
      pattern(2 * 1024 * 1024, 2),
      pattern(1, 3),
      pattern(9 * 1024 * 1024 + 4095, 4),
    ]);
    expect((await store.get("data/pack")).equals(expected)).toBe(true);
    await expect(writer.write(pattern(10, 5))).rejects.toThrow(/already committed or aborted/);

    // An exact number of stages, and an empty object.
    for (const [key, size] of [
      ["data/stages", 8 * 1024 * 1024],
      ["data/empty", 0],
    ] as const) {
      const w = await store.openWriter(key);
      await w.write(pattern(size, 6));
      await w.commit();
      expect((await store.get(key)).equals(pattern(size, 6)), key).toBe(true);
    }

    const dropped = await store.openWriter("data/dropped");
    await dropped.write(pattern(5 * 1024 * 1024, 7));
    await dropped.abort();
    expect(await store.stat("data/dropped")).toBeUndefined();
    // No temp file is left behind either (list skips them, so look at the directory itself).
    expect((await readdir(join(env.dir, "streamed", "data"))).sort()).toEqual(["empty", "pack", "stages"]);
  });

  it("reads ranges into page-aligned memory around the page cache, byte for byte", async () => {
    const store = new FileBlobStore(join(env.dir, "ranges"));
    const size = 3 * 1024 * 1024 + 1234;
    const object = pattern(size, 9);
    await store.put("data/obj", object);
    // Whether this filesystem takes O_DIRECT at all (tmpfs does not): the reads are right either way.
    let direct = false;
    try {
      closeSync(openSync(join(env.dir, "ranges", "data", "obj"), constants.O_RDONLY | constants.O_DIRECT));
      direct = true;
    } catch {}
    const ranges: [number, number][] = [
      [0, size],
      [1, 4095],
      [4095, 2],
      [5000, 1024 * 1024 + 7],
      [size - 10, 10],
      [size - PAGE - 3, PAGE + 3],
      [2 * PAGE, PAGE],
    ];
    for (const [offset, length] of ranges) {
      const what = `${length} bytes at ${offset}`;
      const into = alignedBuffer(length + 2 * PAGE);
      const got = await store.getRange("data/obj", offset, length, into);
      expect(got.equals(object.subarray(offset, offset + length)), what).toBe(true);
      expect(got.buffer, what).toBe(into.buffer);
      // Read with O_DIRECT, the range sits at its offset within its first page of `into`.
      if (direct) expect(got.byteOffset - into.byteOffset, what).toBe(offset % PAGE);
      // Memory that is not page-aligned, or too small to widen the read to whole pages: read as before.
      for (const other of [Buffer.alloc(length + 2 * PAGE), into.subarray(1), alignedBuffer(length)]) {
        const again = await store.getRange("data/obj", offset, length, other);
        expect(again.equals(object.subarray(offset, offset + length)), what).toBe(true);
      }
    }
    // A filesystem that refuses O_DIRECT (tmpfs, where there is one): the store reads through the cache.
    if (existsSync("/dev/shm")) {
      const shm = await mkdtemp("/dev/shm/dumont-store-");
      try {
        const onTmpfs = new FileBlobStore(shm);
        await onTmpfs.put("data/obj", object);
        for (let i = 0; i < 2; i++) {
          const got = await onTmpfs.getRange("data/obj", 5000, 70_000, alignedBuffer(70_000 + 2 * PAGE));
          expect(got.equals(object.subarray(5000, 75_000))).toBe(true);
        }
      } finally {
        await rm(shm, { recursive: true, force: true });
      }
    }
    // Past the end: refused, as without `into`.
    await expect(store.getRange("data/obj", size - 5, 10, alignedBuffer(10 + 2 * PAGE))).rejects.toSatisfy((e) =>
      isRepositoryError(e, "corrupt"),
    );
    await expect(store.getRange("data/none", 0, 10, alignedBuffer(10 + 2 * PAGE))).rejects.toSatisfy((e) =>
      isRepositoryError(e, "not-found"),
    );
  });
});

describe("S3 blob store against a server that never answers", () => {
  it("fails the request instead of waiting for good, naming the object", async () => {
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => void sockets.add(socket)); // accepts, then says nothing
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const { port } = silent.address() as AddressInfo;
    const store = new S3BlobStore("quiet-bucket", "repo", {
      endpoint: `http://127.0.0.1:${port}`,
      credentials: { accessKeyId: "test", secretAccessKey: "test" },
      timeouts: { connectMs: 1_000, idleMs: 200, requestMs: 2_000 },
      maxAttempts: 2,
    });
    try {
      const err = await store.get("config").catch((e: unknown) => e);
      expect((err as Error).message).toMatch(/S3 request for s3:\/\/quiet-bucket\/repo\/config failed/);
      // Says nothing of the data: "unavailable", which a restore fails on whole rather than call data damaged.
      expect(isRepositoryError(err, "unavailable")).toBe(true);
    } finally {
      await store.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});

describe("S3 blob store whose caller gives up on a request", () => {
  it("ends the request at once and drops its connection, rather than wait out the timeouts and retries", async () => {
    const sockets = new Set<Socket>();
    let requests = 0;
    let closed = 0;
    const silent = createServer((socket) => {
      sockets.add(socket);
      socket.once("data", () => requests++); // a request's head: it is under way, the server says nothing back
      socket.on("close", () => closed++);
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const { port } = silent.address() as AddressInfo;
    // The default timeouts and attempts: each of these calls would take minutes on its own.
    const store = new S3BlobStore("quiet-bucket", "repo", {
      endpoint: `http://127.0.0.1:${port}`,
      credentials: { accessKeyId: "test", secretAccessKey: "test" },
    });
    try {
      const calls: [string, (signal: AbortSignal) => Promise<unknown>][] = [
        ["put", (signal) => store.put("snapshots/ab", Buffer.alloc(10), { signal })],
        ["get", (signal) => store.get("config", { signal })],
        ["getRange", (signal) => store.getRange("data/ab/cd", 0, 10, undefined, { signal })],
        ["stat", (signal) => store.stat("locks/x", { signal })],
        ["delete", (signal) => store.delete("data/ab/cd", { signal })],
        [
          "list",
          async (signal) => {
            for await (const _ of store.list("data/", { signal }));
          },
        ],
      ];
      for (const [name, call] of calls) {
        const cancel = new AbortController();
        const running = call(cancel.signal).catch((e: unknown) => e);
        const sent = requests;
        for (let i = 0; i < 500 && requests === sent; i++) await new Promise((r) => setTimeout(r, 10));
        expect(requests, `${name} reached the server`).toBe(sent + 1);
        cancel.abort();
        const err = await running;
        expect(isRepositoryError(err, "unavailable"), `${name}: ${err}`).toBe(true);
        expect((err as Error).message).toMatch(
          /S3 request for s3:\/\/quiet-bucket\/repo\/\S+ was given up on by its caller/,
        );
        for (let i = 0; i < 200 && closed < sockets.size; i++) await new Promise((r) => setTimeout(r, 10));
        expect(closed, `${name}'s connection closed`).toBe(sockets.size);
      }
    } finally {
      await store.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it("does not read a body again that was cut because its caller gave up", async () => {
    const object = Buffer.alloc(100_000, 5);
    let requests = 0;
    const cancel = new AbortController();
    await withS3Server(
      "body-bucket",
      (_req, res, nth) => {
        requests = nth;
        res.writeHead(200, { "content-length": object.length });
        res.write(object.subarray(0, 100), () => cancel.abort()); // then nothing more: the caller gives up
      },
      async (store) => {
        const err = await store.get("data/ab/cd", { signal: cancel.signal }).catch((e: unknown) => e);
        expect(isRepositoryError(err, "unavailable"), String(err)).toBe(true);
        expect(requests).toBe(1);
      },
    );
  });
});

describe("S3 blob store reading an object over maxBytes", () => {
  it("refuses it from its length, without waiting for its body", async () => {
    await withS3Server(
      "large-bucket",
      (_req, res) => {
        res.writeHead(200, { "content-length": 5 * 1024 ** 3 });
        res.write(Buffer.alloc(100)); // then nothing more: a body of 5 GiB that is never read
      },
      async (store) => {
        const err = await store.get("snapshots/ab", { maxBytes: 1024 }).catch((e: unknown) => e);
        expect(isRepositoryError(err, "corrupt"), String(err)).toBe(true);
        expect(String(err)).toContain("snapshots/ab is 5368709120 bytes");
      },
    );
  });
});

describe("S3 blob store reading an object's body", () => {
  const object = Buffer.from("0123456789".repeat(10_000));

  it("reads again a body whose connection drops midway, as the SDK does not", async () => {
    let requests = 0;
    await withS3Server(
      "body-bucket",
      (_req, res, nth) => {
        requests = nth;
        res.writeHead(200, { "content-length": object.length, "content-type": "application/octet-stream" });
        if (nth === 1) {
          // Half the body, then the connection goes (a reset, a proxy restarting).
          res.write(object.subarray(0, object.length / 2), () => res.socket?.destroy());
          return;
        }
        res.end(object);
      },
      async (store) => {
        expect((await store.get("data/ab/cd")).equals(object)).toBe(true);
        expect(requests).toBe(2);
      },
    );
  });

  it("gives up after 3 tries, as a store that is not answering", async () => {
    let requests = 0;
    await withS3Server(
      "body-bucket",
      (_req, res, nth) => {
        requests = nth;
        res.writeHead(200, { "content-length": object.length });
        res.write(object.subarray(0, 100), () => res.socket?.destroy());
      },
      async (store) => {
        const err = await store.get("data/ab/cd").catch((e: unknown) => e);
        expect(isRepositoryError(err, "unavailable")).toBe(true);
        expect(requests).toBe(3);
      },
    );
  });

  it("takes a plain 200 for a range from 0 that is the whole object", async () => {
    await withS3Server(
      "body-bucket",
      (_req, res) => {
        res.writeHead(200, { "content-length": 10 });
        res.end(object.subarray(0, 10));
      },
      async (store) => {
        expect((await store.getRange("data/ab/cd", 0, 10)).equals(object.subarray(0, 10))).toBe(true);
      },
    );
  });

  it("refuses the whole object for a range (a server ignoring Range), rather than take its first bytes for the range", async () => {
    await withS3Server(
      "body-bucket",
      (_req, res) => {
        res.writeHead(200, { "content-length": 10 });
        res.end(object.subarray(0, 10)); // an object exactly as long as the range asked for
      },
      async (store) => {
        const err = await store.getRange("data/ab/cd", 20, 10).catch((e: unknown) => e);
        // Not "corrupt": the data may be whole; the server is not one Dumont can use.
        expect(isRepositoryError(err, "invalid-argument")).toBe(true);
        expect((err as Error).message).toMatch(
          /asked for 10 bytes at offset 20, the server answered with no range \(it ignores Range headers\)/,
        );
      },
    );
  });
});

/** An S3BlobStore (one attempt a request) on a loopback server answering each request with `handle`. */
async function withS3Server(
  bucket: string,
  handle: (req: IncomingMessage, res: ServerResponse, nth: number) => void,
  use: (store: S3BlobStore) => Promise<void>,
): Promise<void> {
  let nth = 0;
  const server = createHttpServer((req, res) => handle(req, res, ++nth));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const store = new S3BlobStore(bucket, "", {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    credentials: { accessKeyId: "test", secretAccessKey: "test" },
    maxAttempts: 1,
  });
  try {
    await use(store);
  } finally {
    await store.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

/** withS3Server answering every request with S3's error XML for what `answer` says at the time. */
function withAnsweringServer(
  bucket: string,
  /** An error's status, code and message; or a status and the XML to answer with. */
  answer: () => { status: number; code: string; message: string } | { status: number; xml: string },
  use: (store: S3BlobStore) => Promise<void>,
): Promise<void> {
  return withS3Server(
    bucket,
    (_req, res) => {
      const a = answer();
      res.writeHead(a.status, { "content-type": "application/xml" });
      res.end(
        "xml" in a
          ? a.xml
          : `<?xml version="1.0"?><Error><Code>${a.code}</Code><Message>${a.message}</Message></Error>`,
      );
    },
    use,
  );
}

describe("S3 blob store against a server that fails requests", () => {
  it("calls 5xx and throttling after the retries unavailable, and other refusals what they are", async () => {
    let status = 503;
    const answer = () => ({ status, code: `Code${status}`, message: `status ${status}` });
    await withAnsweringServer("failing-bucket", answer, async (store) => {
      for (const [code, unavailable] of [
        [503, true],
        [500, true],
        [429, true],
        [400, false],
      ] as const) {
        status = code;
        const err = await store.get("config").catch((e: unknown) => e);
        expect((err as Error).message, String(code)).toContain(`(HTTP ${code})`);
        expect(isRepositoryError(err, "unavailable"), String(code)).toBe(unavailable);
      }
    });
  });

  it("calls refused credentials what they are whatever the status, a slow connection unavailable, and a range past the end corrupt", async () => {
    let reply = { status: 400, code: "ExpiredToken", message: "The provided token has expired." };
    await withAnsweringServer(
      "refusing-bucket",
      () => reply,
      async (store) => {
        for (const [status, code] of [
          [400, "ExpiredToken"],
          [400, "TokenRefreshRequired"],
          [403, "InvalidAccessKeyId"],
          [403, "SignatureDoesNotMatch"],
          [403, "AccessDenied"],
        ] as const) {
          reply = { status, code, message: "refused" };
          const err = await store.getRange("data/ab/cd", 0, 10).catch((e: unknown) => e);
          // Not damage (a check or restore would call the pack broken), not "try again later": the credentials.
          expect(isRepositoryError(err, "invalid-argument"), code).toBe(true);
          expect((err as Error).message, code).toMatch(
            new RegExp(
              `S3 refused access to s3://refusing-bucket/data/ab/cd \\(HTTP ${status} ${code}\\): check the credentials`,
            ),
          );
        }
        for (const [status, code] of [
          [408, "RequestTimeout"],
          [400, "RequestTimeout"],
        ] as const) {
          reply = { status, code, message: "Your socket connection to the server was not read from or written to" };
          const err = await store.get("config").catch((e: unknown) => e);
          expect(isRepositoryError(err, "unavailable"), `${status} ${code}`).toBe(true);
        }
        reply = { status: 416, code: "InvalidRange", message: "The requested range is not satisfiable" };
        const err = await store.getRange("data/ab/cd", 4096, 10).catch((e: unknown) => e);
        expect(isRepositoryError(err, "corrupt")).toBe(true);
        expect((err as Error).message).toMatch(
          /data\/ab\/cd is shorter than expected \(the range asked for starts past its end\)/,
        );
      },
    );
  });

  it("lists on page by page with the token each page gives, the token and the prefix sent as they are", async () => {
    // s3rver cannot page on Node 20 (it encrypts its tokens with DES, which OpenSSL 3 refuses): so a server here
    // that pages after one key, with a token full of characters a URL must escape.
    const asked: { prefix: string | null; token: string | null }[] = [];
    const page = (key: string, next?: string) =>
      '<?xml version="1.0"?><ListBucketResult><Name>paged-bucket</Name>' +
      `<IsTruncated>${next ? "true" : "false"}</IsTruncated>` +
      (next ? `<NextContinuationToken>${next}</NextContinuationToken>` : "") +
      `<Contents><Key>${key}</Key><Size>4</Size><LastModified>2026-12-05T00:00:00.000Z</LastModified></Contents>` +
      "</ListBucketResult>";
    await withS3Server(
      "paged-bucket",
      (req, res) => {
        const query = new URL(req.url ?? "/", "http://x").searchParams;
        asked.push({ prefix: query.get("prefix"), token: query.get("continuation-token") });
        res.writeHead(200, { "content-type": "application/xml" });
        res.end(asked.length === 1 ? page("p q+ü/a", "a+b/c=&amp;d") : page("p q+ü/b"));
      },
      async (store) => {
        const listed: string[] = [];
        for await (const info of store.list("p q+ü/")) listed.push(info.key);
        expect(listed).toEqual(["p q+ü/a", "p q+ü/b"]);
      },
    );
    expect(asked).toEqual([
      { prefix: "p q+ü/", token: null },
      { prefix: "p q+ü/", token: "a+b/c=&d" },
    ]);
  });

  it("fails a listing said to go on without a token to go on from, rather than pass part of it for all", async () => {
    const truncated = () => ({
      status: 200,
      xml:
        '<?xml version="1.0"?><ListBucketResult><Name>short-bucket</Name><Prefix>data/</Prefix>' +
        "<KeyCount>1</KeyCount><IsTruncated>true</IsTruncated><Contents><Key>data/ab/cd</Key><Size>4</Size>" +
        "<LastModified>2026-12-05T00:00:00.000Z</LastModified></Contents></ListBucketResult>",
    });
    await withAnsweringServer("short-bucket", truncated, async (store) => {
      const listed: string[] = [];
      const err = await (async () => {
        for await (const info of store.list("data/")) listed.push(info.key);
      })().catch((e: unknown) => e);
      expect(listed).toEqual(["data/ab/cd"]);
      expect(isRepositoryError(err, "unavailable")).toBe(true);
      expect((err as Error).message).toMatch(/said there was more but gave no continuation token/);
    });
  });

  it("tries a conditional put again while S3 says another one of the key is under way (409)", async () => {
    // Two processes making one repository: S3 answers the second conditional write 409 while the first is in
    // progress, saying to try again. It was a plain error, and the second process failed where it should open.
    let conflicts = 2;
    let requests = 0;
    const answer = () =>
      ++requests && conflicts-- > 0
        ? {
            status: 409,
            code: "ConditionalRequestConflict",
            message: "A conflicting conditional operation is in progress",
          }
        : { status: 412, code: "PreconditionFailed", message: "At least one of the preconditions did not hold" };
    await withAnsweringServer("racing-bucket", answer, async (store) => {
      expect(await store.put("config", Buffer.from("c"), { ifAbsent: true })).toBe(false); // the other one's landed
      conflicts = 100; // and one that never clears: the store's state, to try later
      const err = await store.put("config", Buffer.from("c"), { ifAbsent: true }).catch((e: unknown) => e);
      expect(isRepositoryError(err, "unavailable"), String(err)).toBe(true);
      // A caller giving up ends the waiting between tries: not asked again.
      const caller = new AbortController();
      requests = 0;
      const abandoned = store.put("config", Buffer.from("c"), { ifAbsent: true, signal: caller.signal });
      while (requests === 0) await new Promise((r) => setTimeout(r, 5));
      caller.abort();
      await expect(abandoned).rejects.toSatisfy((e) => isRepositoryError(e, "unavailable"));
      expect(requests).toBe(1);
    });
  });

  it("takes AWS_MAX_ATTEMPTS, the SDK's own variable, checked", () => {
    expect(maxAttemptsFromEnv({})).toBeUndefined();
    expect(maxAttemptsFromEnv({ AWS_MAX_ATTEMPTS: " 3 " })).toBe(3);
    for (const bad of ["0", "2.5", "many", "101"]) {
      expect(() => maxAttemptsFromEnv({ AWS_MAX_ATTEMPTS: bad }), bad).toThrow(`AWS_MAX_ATTEMPTS "${bad}"`);
    }
  });
});

describe("S3 blob store against a server that refuses access", () => {
  it("says what to check: the credentials and the actions they must allow", async () => {
    const denied = () => ({ status: 403, code: "AccessDenied", message: "Access Denied" });
    await withAnsweringServer("locked-bucket", denied, async (store) => {
      for (const call of [
        () => store.get("config"),
        () => store.stat("config"),
        () => store.put("k", Buffer.from("x")),
      ]) {
        const err = await call().catch((e: unknown) => e);
        expect(isRepositoryError(err, "invalid-argument")).toBe(true);
        expect((err as Error).message).toMatch(
          /S3 refused access to s3:\/\/locked-bucket\/\w+ \(HTTP 403( \w+)?\): check the credentials/,
        );
      }
    });
  });
});

describe("S3 blob store whose bucket does not exist", () => {
  it("fails every call naming the bucket, rather than calling its objects missing", async () => {
    // A HEAD's 404 has no body: stat asks after the bucket before it answers "no such object" (helper-65's
    // finding: stat said undefined, delete succeeded, and reads were "not found", which restores call damage).
    const store = openBlobStore("s3://no-such-bucket/p", { s3: env.s3.s3 });
    const calls: [string, () => Promise<unknown>][] = [
      ["get", () => store.get("config")],
      ["getRange", () => store.getRange("data/ab/cd", 0, 8)],
      ["stat", () => store.stat("data/ab/cd")],
      ["delete", () => store.delete("locks/l")],
      ["put", () => store.put("locks/l", Buffer.from("x"))],
      [
        "list",
        async () => {
          for await (const _ of store.list("index/")) {
          }
        },
      ],
    ];
    for (const [name, call] of calls) {
      const err = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isRepositoryError(err, "invalid-argument"), `${name}: ${String(err)}`).toBe(true);
      expect((err as Error).message, name).toMatch(
        /^bucket no-such-bucket does not exist at .*\(s3:\/\/no-such-bucket\/p\): check the bucket in the URL/,
      );
    }
    await store.close();
    // In a bucket that is there, a missing object is just that.
    const there = openBlobStore(env.s3.url(`present${++counter}`), { s3: env.s3.s3 });
    expect(await there.stat("data/ab/cd")).toBeUndefined();
    await there.delete("locks/l");
    await there.close();
  });
});

describe("S3 blob store beside folder markers", () => {
  it("lists none of them: empty objects named like folders (the AWS console's Create folder makes them)", async () => {
    const { PutObjectCommand, S3Client } = await import("@aws-sdk/client-s3");
    const client = new S3Client({ ...env.s3.s3, forcePathStyle: true });
    const prefix = `markers${++counter}`;
    try {
      for (const folder of ["", "locks/", "index/", "data/", "data/ab/"]) {
        await client.send(
          new PutObjectCommand({ Bucket: env.s3.bucket, Key: `${prefix}/${folder}`, Body: new Uint8Array(0) }),
        );
      }
    } finally {
      client.destroy();
    }
    const store = openBlobStore(env.s3.url(prefix), { s3: env.s3.s3 });
    await store.put("locks/abc", Buffer.from("lock"));
    await store.put("data/ab/cd", Buffer.from("pack"));
    const listed: string[] = [];
    for await (const info of store.list("")) listed.push(info.key);
    // Before, "locks/" came first, and getting it failed every lock: invalid object key "locks/".
    expect(listed.sort()).toEqual(["data/ab/cd", "locks/abc"]);
    await store.close();
  });
});

describe("openBlobStore", () => {
  it("explains unsupported URLs", () => {
    expect(() => openBlobStore("ftp://x")).toThrow(/file:\/\/\/absolute\/path or s3:\/\/bucket\/prefix/);
    expect(() => openBlobStore("s3://A_B/x")).toThrow(/bucket/);
    expect(openBlobStore("s3://my-bucket/a/b/").url).toBe("s3://my-bucket/a/b");
    for (const bad of ["s3://my-bucket/a/../c", "s3://my-bucket//x", "s3://my-bucket/a//b/", "s3://my-bucket/./a"]) {
      expect(() => openBlobStore(bad), bad).toThrow(/with an empty, "\." or "\.\." component/);
    }
    expect(openBlobStore("/tmp/x").url).toBe("file:///tmp/x");
    // A "?" or "#" ends a file URL's path: what followed was dropped, so the control plane's tenants under
    // file:///srv/a#1 were all /srv/a (helper-65). Percent-encoded, it is part of the name.
    expect(() => openBlobStore("file:///srv/a#1/tenants/t1")).toThrow(
      /^repository URL file:\/\/\/srv\/a#1\/tenants\/t1 holds a "#", which ends a file URL's path: write it percent-encoded \(%23\)/,
    );
    expect(() => openBlobStore("file:///srv/a?x/tenants/t1")).toThrow(/holds a "\?".*\(%3F\)/);
    for (const bare of ["file:///srv/a#", "file:///srv/a?"]) expect(() => openBlobStore(bare), bare).toThrow(/holds a/);
    expect((openBlobStore("file:///srv/a%231/tenants/t1") as { root?: string }).root).toBe("/srv/a#1/tenants/t1");
    // `file://$REPO` with REPO unset: the root directory, where a repository would put data/ and the rest.
    for (const root of ["file://", "file:///", "file:///./", "/"]) {
      expect(() => openBlobStore(root), root).toThrow(/names the root directory \/; write file:\/\/\/absolute\/path/);
    }
    expect(() => openBlobStore("file:///tmp/re%00po")).toThrow(/^repository URL file:\/\/\/tmp\/re%00po holds a NUL/);
  });

  it("refuses credentials written into a repository URL, without repeating them", () => {
    for (const url of [
      "s3://AKIAEXAMPLE:wJalrXUtnFEMI@my-bucket/prefix",
      "s3://AKIAEXAMPLE@my-bucket",
      "file://user:hunter2@localhost/tmp/repo",
      "ftp://user:hunter2@host/x",
      // AWS secret keys often hold "/": what reads as the bucket is then the start of the credentials.
      "s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@my-bucket/prefix",
      "s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG@my-bucket",
    ]) {
      const err = (() => {
        try {
          openBlobStore(url);
        } catch (e) {
          return e as Error;
        }
      })();
      expect(isRepositoryError(err, "invalid-argument"), url).toBe(true);
      expect(err?.message).toMatch(/:\/\/\*\*\*@.* carries a user name or password .*AWS_ACCESS_KEY_ID/);
      expect(err?.message).not.toMatch(/AKIAEXAMPLE|wJalr|hunter2|user:/);
    }
    // An "@" after the first "/" is part of a path or prefix, not a user name.
    expect(openBlobStore("s3://my-bucket/team@acme").url).toBe("s3://my-bucket/team@acme");
    // Any other refusal of a URL holding an "@" shows nothing before the last one.
    expect(() => openBlobStore("s3://my-bucket/a/../hunter2@acme")).toThrow(
      /^repository URL s3:\/\/\*\*\*@acme has prefix "\*\*\*"/,
    );
  });

  it("refuses an S3 endpoint that is no http(s) URL, naming where it came from", () => {
    // The SDK took these and failed each request later with "Invalid URL".
    for (const bad of ["minio:9000", "127.0.0.1:9000", "ftp://minio:9000", "http://"]) {
      expect(() => openBlobStore("s3://bucket/x", { s3: { endpoint: bad } }), bad).toThrow(
        `the S3 endpoint "${bad}" is not an http(s) URL`,
      );
      expect(() => s3EndpointFromEnv({ DUMONT_S3_ENDPOINT: bad }), bad).toThrow(`DUMONT_S3_ENDPOINT "${bad}"`);
    }
    // Credentials in the address: refused, and never repeated in the error (it reaches logs).
    for (const [bad, why] of [
      ["AKIAEXAMPLE:hunter2secret@minio:9000", "is not an http(s) URL"],
      ["http://AKIAEXAMPLE:hunter2secret@minio:9000", "carries credentials in its URL"],
      ["https://hunter2secret@s3.example.com", "carries credentials in its URL"],
      // A secret key may hold "/" (and "@"): redacted up to the last "@".
      ["http://AKIAEXAMPLE:ab/hunter2secret+x@y@minio:9000", "is not an http(s) URL"],
    ]) {
      const err = (() => {
        try {
          s3EndpointFromEnv({ DUMONT_S3_ENDPOINT: bad });
        } catch (e) {
          return e as Error;
        }
      })();
      expect(err?.message, bad).toContain(why);
      expect(err?.message, bad).toContain("<credentials removed>@");
      expect(err?.message, bad).not.toContain("hunter2secret");
    }
    expect(s3EndpointFromEnv({ DUMONT_S3_ENDPOINT: " " })).toBeUndefined();
    expect(s3EndpointFromEnv({ DUMONT_S3_ENDPOINT: "https://s3.example.com" })).toBe("https://s3.example.com");
  });

  it("says which variables to set when there are no S3 credentials", async () => {
    // The SDK's own default chain, with nothing for it to find: no variables, no files, no instance metadata.
    const saved = { ...process.env };
    for (const name of Object.keys(process.env)) if (name.startsWith("AWS_")) delete process.env[name];
    Object.assign(process.env, {
      AWS_SHARED_CREDENTIALS_FILE: join(env.dir, "no-credentials"),
      AWS_CONFIG_FILE: join(env.dir, "no-config"),
      AWS_EC2_METADATA_DISABLED: "true",
    });
    const store = openBlobStore(env.s3.url("no-credentials"), { s3: { endpoint: env.s3.endpoint } });
    try {
      const err = await store.stat("config").catch((e: unknown) => e);
      expect(isRepositoryError(err, "invalid-argument")).toBe(true);
      expect((err as Error).message).toMatch(/no S3 credentials .*AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/);
    } finally {
      await store.close();
      process.env = saved;
    }
  });
});
