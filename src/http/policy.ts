// What a type or instance interaction may do under the request's token, for an HTTP request
// and a Bundle entry alike (src/http/session.ts asks it): the permission is the route's
// (src/interactions/routes.ts), so no handler picks its own, and the restriction and write
// guard are composed once.
import type { Ctx } from './context.ts';
import { permit, restriction, visible, writeGuard } from '../auth/enforce.ts';
import type { Access, Permission } from '../auth/scopes.ts';
import type { EntryPolicy } from '../interactions/bundle.ts';

export interface Policy extends EntryPolicy {
  /** The token's access for the interaction's permission. */
  access: Access;
}

/**
 * The access for the route's permission (403 when the token lacks it). `matches`: the interaction also
 * finds resources by criteria (a conditional update or delete, If-None-Exist), which then
 * needs search access too and is confined by its restriction.
 */
export function policyOf(ctx: Ctx, type: string, perm: Permission, matches: boolean): Policy {
  const access = permit(ctx, type, perm);
  const searchAccess = perm === 's' ? access : matches ? permit(ctx, type, 's') : undefined;
  const writes = perm === 'c' || perm === 'u' || perm === 'd';
  return {
    access,
    guard: writes ? writeGuard(ctx, type, access) : undefined,
    restrict: searchAccess ? restriction(ctx, type, searchAccess) : [],
    visible: perm === 'r' ? (tx, resourceType, id, json) => visible(ctx, tx, resourceType, id, json, access) : undefined,
  };
}
