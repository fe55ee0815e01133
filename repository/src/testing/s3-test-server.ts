// A real S3-compatible server (s3rver) on loopback for tests, in its own temp directory. Not part of the
// package's main entry: import it from "@dumont/repository/testing".
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import S3rver from "s3rver";
import type { S3BlobStoreOptions } from "../s3-blob-store.js";

export interface S3TestServer {
  bucket: string;
  endpoint: string;
  /** Options that point an S3BlobStore at this server. */
  s3: S3BlobStoreOptions;
  /** `s3://bucket/prefix` */
  url(prefix: string): string;
  close(): Promise<void>;
}

export async function startS3TestServer(bucket = "dumont-test"): Promise<S3TestServer> {
  const directory = await mkdtemp(join(tmpdir(), "dumont-s3rver-"));
  const server = new S3rver({
    address: "127.0.0.1",
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
  });
  const address = await server.run();
  const endpoint = `http://127.0.0.1:${address.port}`;
  return {
    bucket,
    endpoint,
    s3: { endpoint, region: "us-east-1", credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" } },
    url: (prefix) => `s3://${bucket}/${prefix}`,
    async close() {
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}
