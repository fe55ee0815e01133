// The control plane's small set of typed errors; the API edge maps them to Connect/gRPC codes.
import { Code, ConnectError } from "@connectrpc/connect";

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** A request was malformed; the message names the field and the allowed values. */
export class InvalidArgumentError extends ConnectError {
  constructor(message: string) {
    super(message, Code.InvalidArgument);
  }
}

export class NotFoundError extends ConnectError {
  constructor(message: string) {
    super(message, Code.NotFound);
  }
}

export class UnauthenticatedError extends ConnectError {
  constructor(message: string) {
    super(message, Code.Unauthenticated);
  }
}

export class PermissionDeniedError extends ConnectError {
  constructor(message: string) {
    super(message, Code.PermissionDenied);
  }
}

export class FailedPreconditionError extends ConnectError {
  constructor(message: string) {
    super(message, Code.FailedPrecondition);
  }
}

export class ResourceExhaustedError extends ConnectError {
  constructor(message: string) {
    super(message, Code.ResourceExhausted);
  }
}

/** A dependency that did not answer (the blob store); the same call may succeed later. */
export class UnavailableError extends ConnectError {
  constructor(message: string) {
    super(message, Code.Unavailable);
  }
}

/** Stored data that fails its checks (a damaged object in the blob store): not the caller's to fix by retrying. */
export class DataLossError extends ConnectError {
  constructor(message: string) {
    super(message, Code.DataLoss);
  }
}

export class DeadlineExceededError extends ConnectError {
  constructor(message: string) {
    super(message, Code.DeadlineExceeded);
  }
}

/**
 * A Connect error's code as gRPC writes it ("FAILED_PRECONDITION"), the name the README and the metrics use; any
 * other error is what the API answers for it, INTERNAL.
 */
export function statusName(err: unknown): string {
  if (!(err instanceof ConnectError)) return "INTERNAL";
  return Code[err.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
