// BlobStore on any S3-compatible service. Each object is one complete PutObject with a known length and
// no SDK-added checksum framing (see TOOLCHAIN.md: otherwise some servers store aws-chunked bytes).
//
// The SDK is loaded on first use, not at import: it takes ~130 ms to load, which every file:// repository
// command (and the agent CLI's start) would otherwise pay.
import type { ListObjectsV2CommandOutput, S3Client, S3ClientConfig } from "@aws-sdk/client-s3";
import {
  assertBlobKey,
  type BlobCallOptions,
  type BlobInfo,
  type BlobStore,
  type GetOptions,
  objectTooLarge,
} from "./blob-store.js";
import { RepositoryError } from "./errors.js";

export interface S3BlobStoreOptions {
  /** Defaults to DUMONT_S3_ENDPOINT, then the SDK's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL handling. */
  endpoint?: string;
  /** Defaults to AWS_REGION, then AWS_DEFAULT_REGION, then us-east-1. */
  region?: string;
  /** Defaults to the SDK's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, instance roles). */
  credentials?: S3ClientConfig["credentials"];
  /** Escape hatch for tests and unusual deployments. */
  client?: S3Client;
  /** How long a request may wait (S3_TIMEOUTS), and how often it is tried; tests lower them. */
  timeouts?: Partial<typeof S3_TIMEOUTS>;
  /** Defaults to AWS_MAX_ATTEMPTS (the SDK's own variable), then 8. */
  maxAttempts?: number;
}

/**
 * A store that accepts a connection and then says nothing must fail the request, not hold it (and the
 * repository lock its caller keeps fresh meanwhile) for good: the SDK's own defaults wait forever.
 * `idleMs` is the longest silence within a request; `requestMs` bounds a whole one (a 32 MiB pack at 1 MB/s
 * takes ~35 s).
 */
export const S3_TIMEOUTS = { connectMs: 10_000, idleMs: 60_000, requestMs: 10 * 60_000 };

/** Attempts per request (the SDK's standard retry: exponential backoff with jitter, on throttling and 5xx). */
const S3_MAX_ATTEMPTS = 8;
/** Attempts to read an object's body once its answer has begun (see readObject). */
const BODY_ATTEMPTS = 3;

/**
 * DUMONT_S3_ENDPOINT, checked (undefined when unset or blank): the SDK took "minio:9000" and failed each
 * request later with "Invalid URL", far from the variable that caused it.
 */
export function s3EndpointFromEnv(env: NodeJS.ProcessEnv): string | undefined {
  const value = env.DUMONT_S3_ENDPOINT?.trim();
  return value ? checkS3Endpoint(value, "DUMONT_S3_ENDPOINT") : undefined;
}

/**
 * AWS_MAX_ATTEMPTS, the SDK's own variable (which an explicit maxAttempts would otherwise override), checked:
 * a whole number 1..100; undefined when unset or blank.
 */
export function maxAttemptsFromEnv(env: NodeJS.ProcessEnv): number | undefined {
  const value = env.AWS_MAX_ATTEMPTS?.trim();
  if (!value) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 100) {
    throw new RepositoryError(
      "invalid-argument",
      `AWS_MAX_ATTEMPTS "${value}" is not a whole number of attempts 1..100 (unset, each S3 request is tried ${S3_MAX_ATTEMPTS} times)`,
    );
  }
  return n;
}

/** `endpoint` if it is an http(s) URL naming a host; else a RepositoryError naming `source` and an example. */
export function checkS3Endpoint(endpoint: string, source: string): string {
  let url: URL | undefined;
  try {
    url = new URL(endpoint);
  } catch {
    url = undefined;
  }
  // Whatever comes before an "@" may be credentials: never repeated in an error (it would reach logs).
  // (Up to the last one: a secret key may hold "/" and "@".)
  const shown = endpoint.replace(/^(?:[a-z][a-z0-9+.-]*:\/\/)?.*@/i, "<credentials removed>@");
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || url.hostname === "") {
    throw new RepositoryError(
      "invalid-argument",
      `${source} "${shown}" is not an http(s) URL; give the S3 service's address, e.g. ` +
        "https://s3.eu-central-1.amazonaws.com or http://127.0.0.1:9000",
    );
  }
  if (url.username !== "" || url.password !== "") {
    throw new RepositoryError(
      "invalid-argument",
      `${source} "${shown}" carries credentials in its URL, which S3 does not read: give the address alone, ` +
        "and the credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
    );
  }
  return endpoint;
}

/** Tries of a conditional put that S3 answers 409 (another conditional write of the key under way). */
const CONDITIONAL_CONFLICT_TRIES = 5;

type Sdk = typeof import("@aws-sdk/client-s3");
let sdkLoading: Promise<Sdk> | undefined;

function loadSdk(): Promise<Sdk> {
  // Dumont runs on Node 20 (its pinned runtime); the SDK's multi-line notice that its future releases will
  // need Node 22 would otherwise print on every s3:// command. A user who sets the variable keeps their choice.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  sdkLoading ??= import("@aws-sdk/client-s3");
  return sdkLoading;
}

export class S3BlobStore implements BlobStore {
  readonly url: string;
  private readonly base: string;
  private readonly config: S3ClientConfig;
  private connecting: Promise<{ sdk: Sdk; client: S3Client }> | undefined;
  /** Until when (ms) the bucket is known to exist: a HEAD's 404 says nothing of which is missing (bucketThere). */
  private bucketSeenUntil = 0;

  constructor(
    readonly bucket: string,
    prefix: string,
    options: S3BlobStoreOptions = {},
  ) {
    this.base = prefix === "" ? "" : `${prefix}/`;
    this.url = `s3://${bucket}${prefix === "" ? "" : `/${prefix}`}`;
    const endpoint =
      options.endpoint !== undefined
        ? checkS3Endpoint(options.endpoint, "the S3 endpoint")
        : s3EndpointFromEnv(process.env);
    const timeouts = { ...S3_TIMEOUTS, ...options.timeouts };
    this.config = {
      region: options.region ?? (process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || "us-east-1"),
      ...(endpoint ? { endpoint } : {}),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      forcePathStyle: true,
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      // A bucket in another region than AWS_REGION answers 301: follow it rather than fail "UnknownError".
      followRegionRedirects: true,
      // The SDK's 3 attempts over ~0.5 s gave up on one burst of 503 SlowDown.
      maxAttempts: options.maxAttempts ?? maxAttemptsFromEnv(process.env) ?? S3_MAX_ATTEMPTS,
      requestHandler: {
        connectionTimeout: timeouts.connectMs,
        socketTimeout: timeouts.idleMs,
        requestTimeout: timeouts.requestMs,
        throwOnRequestTimeout: true,
      },
    };
    const client = options.client;
    if (client) this.connecting = loadSdk().then((sdk) => ({ sdk, client }));
  }

  /** The SDK and this store's client, both made on first use. */
  private connect(): Promise<{ sdk: Sdk; client: S3Client }> {
    this.connecting ??= loadSdk().then((sdk) => ({ sdk, client: new sdk.S3Client(this.config) }));
    return this.connecting;
  }

  private objectKey(key: string): string {
    assertBlobKey(key);
    return this.base + key;
  }

  async put(
    key: string,
    data: Buffer | readonly Buffer[],
    options: { ifAbsent?: boolean } & BlobCallOptions = {},
  ): Promise<boolean> {
    const body = Buffer.isBuffer(data) ? data : Buffer.concat(data);
    for (let attempt = 1; ; attempt++) {
      try {
        const { sdk, client } = await this.connect();
        await client.send(
          new sdk.PutObjectCommand({
            Bucket: this.bucket,
            Key: this.objectKey(key),
            Body: body,
            ContentLength: body.length,
            ...(options.ifAbsent ? { IfNoneMatch: "*" } : {}),
          }),
          { abortSignal: options.signal },
        );
        return true;
      } catch (err) {
        if (options.ifAbsent && httpStatus(err) === 412) return false;
        // 409 ConditionalRequestConflict: another conditional write of the key is under way, and S3 says to try
        // again; the next answer says whether it landed (412) or not. (Two processes making one repository.)
        if (
          options.ifAbsent &&
          httpStatus(err) === 409 &&
          attempt < CONDITIONAL_CONFLICT_TRIES &&
          !options.signal?.aborted
        ) {
          await new Promise<void>((resolve) => {
            // Not past the caller giving up: the next try then fails at once, as given up on.
            const timer = setTimeout(done, 100 * attempt);
            options.signal?.addEventListener("abort", done, { once: true });
            function done() {
              clearTimeout(timer);
              options.signal?.removeEventListener("abort", done);
              resolve();
            }
          });
          continue;
        }
        throw this.wrap(err, key);
      }
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<Buffer> {
    return (await this.readObject(key, undefined, options.signal, options.maxBytes)).bytes;
  }

  async getRange(
    key: string,
    offset: number,
    length: number,
    _into?: Buffer,
    options: BlobCallOptions = {},
  ): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    const range = `bytes=${offset}-${offset + length - 1}`;
    const { bytes: buf, contentRange } = await this.readObject(key, range, options.signal);
    // A server that ignores Range answers with the whole object (200, no Content-Range): its first bytes are not
    // the range asked for, and taken as such they would fail their chunks' checks, data called damaged that is not.
    // (A 200 for a range from 0 of exactly the object's length is that range: the whole object.)
    const whole = contentRange === undefined && offset === 0 && buf.length === length;
    if (!whole && !contentRange?.startsWith(`bytes ${offset}-`)) {
      throw new RepositoryError(
        "invalid-argument",
        `${this.url}/${key}: asked for ${length} bytes at offset ${offset}, the server answered ` +
          `${contentRange ? `with the range ${contentRange}` : "with no range (it ignores Range headers)"}; ` +
          "Dumont needs a store that serves byte ranges, as S3 does",
      );
    }
    if (buf.length !== length) {
      throw new RepositoryError(
        "corrupt",
        `${this.url}/${key} is shorter than expected (wanted ${length} bytes at offset ${offset}, got ${buf.length})`,
      );
    }
    return buf;
  }

  /**
   * An object, or a range of it, with the range the server says it sent. The SDK retries a request until its
   * answer begins; a connection lost while the body comes (a reset, an idle timeout) is retried here, up to
   * BODY_ATTEMPTS times in all: a GET is safe to repeat, and one reset must not fail a restore or a check. (Not
   * once `signal` is aborted: the body was cut because its caller gave up.)
   */
  private async readObject(
    key: string,
    range: string | undefined,
    signal: AbortSignal | undefined,
    maxBytes?: number,
  ): Promise<{ bytes: Buffer; contentRange?: string }> {
    for (let attempt = 1; ; attempt++) {
      let body: { transformToByteArray(): Promise<Uint8Array> } | undefined;
      let contentRange: string | undefined;
      try {
        const { sdk, client } = await this.connect();
        const res = await client.send(
          new sdk.GetObjectCommand({
            Bucket: this.bucket,
            Key: this.objectKey(key),
            ...(range ? { Range: range } : {}),
          }),
          { abortSignal: signal },
        );
        if (!res.Body) throw new RepositoryError("corrupt", `${this.url}/${key} came back without a body`);
        const size = Number(res.ContentLength);
        if (maxBytes !== undefined && size > maxBytes) {
          // Not read: the connection's body is dropped (it would be buffered whole by transformToByteArray).
          (res.Body as { destroy?: () => void }).destroy?.();
          throw objectTooLarge(this.url, key, size, maxBytes);
        }
        body = res.Body;
        contentRange = res.ContentRange;
      } catch (err) {
        throw this.wrap(err, key);
      }
      try {
        const bytes = await body.transformToByteArray();
        return { bytes: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), contentRange };
      } catch (err) {
        if (attempt >= BODY_ATTEMPTS || signal?.aborted) throw this.wrap(err, key);
        await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** attempt));
      }
    }
  }

  async stat(key: string, options: BlobCallOptions = {}): Promise<BlobInfo | undefined> {
    try {
      const { sdk, client } = await this.connect();
      const res = await client.send(new sdk.HeadObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }), {
        abortSignal: options.signal,
      });
      return { key, size: Number(res.ContentLength ?? 0), modified: res.LastModified ?? new Date(0) };
    } catch (err) {
      if (httpStatus(err) !== 404) throw this.wrap(err, key);
      if (await this.bucketThere(options.signal)) return undefined;
      throw this.noSuchBucket(err);
    }
  }

  /**
   * Whether the bucket exists, asked once a minute at most. A HEAD answers 404 with no body for a missing object
   * and a missing bucket alike, and a missing bucket (deleted, renamed, or an endpoint now pointing elsewhere) must
   * not pass for missing objects: repair-index would drop the index of every pack it asked after.
   */
  private async bucketThere(signal: AbortSignal | undefined): Promise<boolean> {
    if (Date.now() < this.bucketSeenUntil) return true;
    try {
      const { sdk, client } = await this.connect();
      await client.send(new sdk.HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: signal });
    } catch (err) {
      if (httpStatus(err) === 404) return false;
      throw this.wrap(err, "(the bucket)");
    }
    this.bucketSeenUntil = Date.now() + BUCKET_SEEN_FOR_MS;
    return true;
  }

  async *list(prefix: string, options: BlobCallOptions = {}): AsyncIterable<BlobInfo> {
    let token: string | undefined;
    do {
      let res: ListObjectsV2CommandOutput;
      try {
        const { sdk, client } = await this.connect();
        res = await client.send(
          new sdk.ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.base + prefix, ContinuationToken: token }),
          { abortSignal: options.signal },
        );
      } catch (err) {
        throw this.wrap(err, prefix);
      }
      for (const item of res.Contents ?? []) {
        // A key ending in "/" is a folder marker (the AWS console's "Create folder", and other tools', make
        // one): no object of ours, and no valid key to get or delete.
        if (!item.Key || item.Key.endsWith("/")) continue;
        yield {
          key: item.Key.slice(this.base.length),
          size: Number(item.Size ?? 0),
          modified: item.LastModified ?? new Date(0),
        };
      }
      if (res.IsTruncated && !res.NextContinuationToken) {
        // Listing on from the start would never end, and stopping here would pass a partial list for whole (a
        // prune would take the packs it did not see for unindexed ones).
        throw new RepositoryError(
          "unavailable",
          `listing ${this.url}/${prefix}: the store said there was more but gave no continuation token; it does ` +
            "not implement ListObjectsV2 fully",
        );
      }
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(key: string, options: BlobCallOptions = {}): Promise<void> {
    try {
      const { sdk, client } = await this.connect();
      await client.send(new sdk.DeleteObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }), {
        abortSignal: options.signal,
      });
    } catch (err) {
      // Deleting what is not there is done (S3 itself answers 204), but not in a bucket that is not there.
      if (httpStatus(err) === 404 && (err as { name?: string }).name !== "NoSuchBucket") return;
      throw this.wrap(err, key);
    }
  }

  async close(): Promise<void> {
    // Nothing to close if the SDK never loaded (its failure was reported by the call that needed it).
    const connected = await this.connecting?.catch(() => undefined);
    connected?.client.destroy();
  }

  private noSuchBucket(err: unknown): RepositoryError {
    return new RepositoryError(
      "invalid-argument",
      `bucket ${this.bucket} does not exist at ${this.config.endpoint ? "the endpoint DUMONT_S3_ENDPOINT names" : "AWS S3"} ` +
        `(${this.url}): check the bucket in the URL and the endpoint, or create the bucket`,
      { cause: err },
    );
  }

  private wrap(err: unknown, key: string): Error {
    if (err instanceof RepositoryError) return err;
    const status = httpStatus(err);
    const name = (err as { name?: string }).name ?? "";
    // Cancelled through BlobCallOptions.signal: whoever asked gave up on it (and has its own error to report).
    if (name === "AbortError") {
      return new RepositoryError("unavailable", `S3 request for ${this.url}/${key} was given up on by its caller`, {
        cause: err,
      });
    }
    // No bucket is no missing object: taken for one, restores called every chunk damaged and check every pack
    // missing. It is the URL or the endpoint to mend (or the bucket to make).
    if (name === "NoSuchBucket") return this.noSuchBucket(err);
    if (status === 404 || name === "NoSuchKey" || name === "NotFound") {
      return new RepositoryError("not-found", `${this.url}/${key} does not exist`, { cause: err });
    }
    if (name === "CredentialsProviderError") {
      return new RepositoryError(
        "invalid-argument",
        `no S3 credentials for ${this.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)`,
        { cause: err },
      );
    }
    // Refusals of the credentials, whatever the status (an expired session token is a 400): they say nothing of
    // the object, and the same call goes through once the credentials are mended.
    if (status === 403 || CREDENTIAL_ERRORS.has(name)) {
      return new RepositoryError(
        "invalid-argument",
        `S3 refused access to ${this.url}/${key} (HTTP ${status ?? "?"}${name ? ` ${name}` : ""}): check the ` +
          "credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, an expired AWS_SESSION_TOKEN) and that they may " +
          "s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on this bucket and prefix",
        { cause: err },
      );
    }
    // A range that starts past the object's end: the object is shorter than what names that range says.
    if (status === 416) {
      return new RepositoryError(
        "corrupt",
        `${this.url}/${key} is shorter than expected (the range asked for starts past its end)`,
        { cause: err },
      );
    }
    if (status === 301) {
      return new RepositoryError(
        "invalid-argument",
        `bucket ${this.bucket} is in another region than ${this.config.region}: set AWS_REGION to the bucket's region`,
        { cause: err },
      );
    }
    const message = err instanceof Error ? err.message : String(err);
    const what = `S3 request for ${this.url}/${key} failed${status ? ` (HTTP ${status})` : ""}: ${message}`;
    // No answer (refused, reset, timed out) or a 5xx or throttling after the retries: the store's state, not the
    // data's, and the same request may succeed later (a 408, or S3's 400 RequestTimeout: the connection was too
    // slow). Any other answer (another 400...) stays a plain error.
    if (
      status === undefined ||
      status >= 500 ||
      status === 429 ||
      status === 408 ||
      name === "RequestTimeout" ||
      name === "ConditionalRequestConflict"
    ) {
      return new RepositoryError(
        "unavailable",
        `${what}; the store is unreachable or failing: try again once it answers`,
        {
          cause: err,
        },
      );
    }
    return new Error(what, { cause: err });
  }
}

/** S3 error codes that refuse the credentials rather than say anything of an object. */
/** How long a HEAD of the bucket that found it is trusted (bucketThere). */
const BUCKET_SEEN_FOR_MS = 60_000;

const CREDENTIAL_ERRORS = new Set([
  "AccessDenied",
  "ExpiredToken",
  "InvalidAccessKeyId",
  "InvalidToken",
  "SignatureDoesNotMatch",
  "TokenRefreshRequired",
]);

function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}
