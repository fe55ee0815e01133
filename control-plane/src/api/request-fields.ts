// Checks of request fields both API services make, with the same words: a value Postgres could not hold (a
// NUL) or no host could have answers INVALID_ARGUMENT naming the field, never an internal error.
import { InvalidArgumentError, NotFoundError } from "../errors.js";

/** Longest host id taken (the control plane makes them far shorter). */
export const MAX_HOST_ID = 256;

/** A request's id or name: Postgres text holds no NUL (it answered with an internal error). */
export function checkText(field: string, value: string, max: number): void {
  if (value.includes("\0") || value.length > max)
    throw new InvalidArgumentError(`${field} must be at most ${max} characters with no NUL, got ${shown(value)}`);
}

/** A tenant id: as a DNS label, 2..63 lowercase letters, digits and dashes, a letter or digit at each end. */
const TENANT_ID = /^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$/;

/** Why `id` is not a tenant id, naming it as `field` (the API's tenant_id, the CLI's --tenant); undefined if it is. */
export function tenantIdProblem(id: string, field: string): string | undefined {
  if (TENANT_ID.test(id)) return undefined;
  return `${field} must be 2..63 lowercase letters, digits and dashes, starting and ending with a letter or digit, got ${shown(id)}`;
}

export function checkTenantId(id: string, field = "tenant_id"): string {
  const problem = tenantIdProblem(id, field);
  if (problem !== undefined) throw new InvalidArgumentError(problem);
  return id;
}

/** A value echoed in an error, cut to a readable length. */
export function shown(value: string): string {
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
}

/** A tenant named in a request that does not exist: a typo, said so rather than listed as an empty tenant. */
export function noSuchTenant(tenantId: string): NotFoundError {
  return new NotFoundError(
    `there is no tenant ${shown(tenantId)}: \`dumont key list\` shows the tenants that hold keys`,
  );
}
