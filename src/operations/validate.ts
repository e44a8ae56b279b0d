// $validate (R4 resource-operation-validate.html; Kiln's OperationDefinition is
// conformance/OperationDefinition-Resource-validate.json):
//   POST [base]/[type]/$validate             body: a resource, or Parameters (resource, mode, profile)
//   POST|GET [base]/[type]/[id]/$validate    the body's resource, else the stored one
// Answers 200 with an OperationOutcome whether or not the content is valid; a 4xx means the
// validation could not be done. Nothing is stored: the create/update/delete modes run the
// write itself (write.ts, so they cannot disagree with a real one) in a transaction that is
// always rolled back. Needs the read access a read of the type needs.
import type { OperationOutcomeIssue, Parameters, ParametersParameter, Resource } from '@medplum/fhirtypes';
import type { Ctx } from '../http/context.ts';
import { inTenant, queryPairs } from '../http/context.ts';
import { readJsonBody, requireBodyType, sendOutcome } from '../http/format.ts';
import { FhirError, badRequest, outcome } from '../fhir/outcome.ts';
import { validateSized } from '../fhir/bodyPool.ts';
import { profileIssues } from '../fhir/validate.ts';
import { accessOf, permit, requireVisible, writeGuard, type Access, type Permission } from '../auth/enforce.ts';
import { touchedResource } from '../audit/request.ts';
import { supports, type TypeInteraction } from '../interactions/supported.ts';
import * as write from '../interactions/write.ts';
import { claimedProfileIssues, findProfile } from '../interactions/profiles.ts';
import { readCurrent, requireLive, type Tx } from '../store/resources.ts';

export const MODES = ['create', 'update', 'delete', 'profile'] as const;
type Mode = typeof MODES[number];

interface Input {
  resource?: Resource;
  /** The resource's JSON size, to validate a big one off the main thread. */
  size: number;
  mode?: Mode;
  profile?: string;
}

/** Query parameters that are not the operation's (result formatting). */
const FORMAT_PARAMS = new Set(['_format', '_pretty']);

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** mode and profile from the URL query, then from a Parameters body; the same one twice is a 400. */
function setParam(input: Input, name: string, value: unknown): void {
  if (name === 'mode') {
    if (input.mode !== undefined) throw badRequest('mode is given more than once', ['mode']);
    if (typeof value !== 'string' || !(MODES as readonly string[]).includes(value)) {
      throw badRequest(`mode must be one of ${MODES.join(', ')}, got '${String(value)}'`, ['mode']);
    }
    input.mode = value as Mode;
  } else if (name === 'profile') {
    if (input.profile !== undefined) throw badRequest('profile is given more than once', ['profile']);
    if (typeof value !== 'string' || value === '') throw badRequest('profile must be a uri', ['profile']);
    input.profile = value;
  } else {
    throw badRequest(`$validate has no parameter '${name}' (resource, mode, profile)`);
  }
}

async function readInput(ctx: Ctx, type: string): Promise<Input> {
  const input: Input = { size: 0 };
  for (const [name, value] of queryPairs(ctx.req)) if (!FORMAT_PARAMS.has(name)) setParam(input, name, value);
  const raw = ctx.req.body;
  if (ctx.req.method !== 'POST' || !Buffer.isBuffer(raw) || raw.length === 0) return input;
  requireBodyType(ctx.req);
  // Parsed only: an invalid resource is this operation's answer, not a 400.
  const { value, text } = await readJsonBody(ctx.req, { kind: 'json' });
  if (!isObject(value) || typeof value.resourceType !== 'string') throw badRequest('The body must be a resource or a Parameters resource');
  if (value.resourceType !== 'Parameters' || type === 'Parameters') {
    input.resource = value as unknown as Resource;
    input.size = text.length;
    return input;
  }
  const params = (value as unknown as Parameters).parameter ?? [];
  if (!Array.isArray(params)) throw badRequest('Parameters.parameter must be an array', ['Parameters.parameter']);
  for (const p of params as ParametersParameter[]) {
    if (!isObject(p) || typeof p.name !== 'string') throw badRequest('Each Parameters.parameter needs a name', ['Parameters.parameter']);
    if (p.name === 'resource') {
      if (input.resource) throw badRequest('resource is given more than once', ['resource']);
      if (!isObject(p.resource)) throw badRequest('The resource parameter carries a resource (parameter.resource)', ['resource']);
      input.resource = p.resource;
      input.size = JSON.stringify(p.resource).length;
    } else {
      setParam(input, p.name, p.name === 'mode' ? p.valueCode ?? p.valueString : p.valueUri ?? p.valueCanonical ?? p.valueString ?? p.valueUrl);
    }
  }
  return input;
}

/** Thrown to roll the transaction back once every check ran. */
const ROLL_BACK = Symbol('validate: roll back');

/** The issues of a FhirError the content or a trial write caused; a server-side failure (5xx) is rethrown. */
function issuesOf(e: unknown): OperationOutcomeIssue[] {
  if (e instanceof FhirError && e.status < 500 && e.issues[0]?.code !== 'transient') return e.issues;
  throw e;
}

const MODE_INTERACTION: Record<'create' | 'update' | 'delete', { interaction: TypeInteraction; perm: Permission }> = {
  create: { interaction: 'create', perm: 'c' },
  update: { interaction: 'update', perm: 'u' },
  delete: { interaction: 'delete', perm: 'd' },
};

export async function validateOperation(ctx: Ctx, type: string, id?: string): Promise<void> {
  if (id !== undefined) write.checkId(id);
  const access = permit(ctx, type, 'r');
  const input = await readInput(ctx, type);
  const { mode } = input;
  if ((mode === 'update' || mode === 'delete') && id === undefined) throw badRequest(`mode ${mode} needs the instance level: [type]/[id]/$validate`, ['mode']);
  if (mode === 'profile' && input.profile === undefined) throw badRequest('mode profile needs the profile parameter', ['profile']);
  const body = mode === 'delete' ? undefined : input.resource; // delete ignores the content
  if (body === undefined && id === undefined) throw badRequest('$validate needs a resource: the body, or the resource parameter of a Parameters body', ['resource']);
  if (body && body.resourceType !== type) {
    throw badRequest(`resourceType '${String(body.resourceType)}' does not match the type ${type}`, ['resourceType']);
  }

  // Structure, formats, bindings and the claimed profiles in profiles/: as a write's body is checked.
  const issues: OperationOutcomeIssue[] = [];
  if (body) {
    try {
      await validateSized(body, input.size);
    } catch (e) {
      issues.push(...issuesOf(e));
    }
  }

  let stored: string | undefined;
  let trialRunning = false;
  try {
    await inTenant(ctx, async (tx) => {
      if (id !== undefined) stored = await nominated(ctx, tx, type, id, access);
      const resource = body ?? (mode === 'delete' ? undefined : JSON.parse(stored!) as Resource);
      if (resource && body === undefined) {
        try { await validateSized(resource, stored!.length); } catch (e) { issues.push(...issuesOf(e)); }
      }
      const profile = input.profile === undefined ? undefined : await findProfile(tx, input.profile);
      if (input.profile !== undefined && !profile) throw badRequest(`Profile ${input.profile} is not known to this server`, ['profile']);
      if (profile && !profile.sd) throw badRequest(`Profile ${input.profile} cannot be used: ${profile.reason}`, ['profile']);
      if (resource && !issues.length) {
        issues.push(...await claimedProfileIssues(tx, resource));
        if (profile?.sd) issues.push(...profileIssues(resource, profile.sd));
      }
      if (mode && mode !== 'profile' && !issues.length) {
        const modeIssues = allowed(ctx, type, mode);
        issues.push(...modeIssues);
        if (!modeIssues.length) {
          trialRunning = true;
          await trial(ctx, tx, type, mode, id, resource);
        }
      }
      throw ROLL_BACK;
    });
  } catch (e) {
    if (e !== ROLL_BACK) {
      if (!trialRunning) throw e;
      issues.push(...issuesOf(e));
    }
  }
  await ctx.audit?.success(id !== undefined ? touchedResource(type, id, stored) : {});
  sendOutcome(ctx.req, ctx.res, 200, outcome(issues.length ? issues
    : [{ severity: 'information', code: 'informational', diagnostics: `No issues detected${mode ? ` (mode ${mode})` : ''}` }]));
}

/** The stored resource an instance-level call nominates: 404/410 when absent or deleted, 404 outside the token's reach (as a read). */
async function nominated(ctx: Ctx, tx: Tx, type: string, id: string, access: Access): Promise<string> {
  const current = requireLive(await readCurrent(tx, type, id), type, id);
  await requireVisible(ctx, tx, type, id, current.json, access);
  return current.json;
}

/** What the mode's interaction needs before it runs: the type allows it and the token has its scope. */
function allowed(ctx: Ctx, type: string, mode: 'create' | 'update' | 'delete'): OperationOutcomeIssue[] {
  const { interaction, perm } = MODE_INTERACTION[mode];
  if (!supports(type, interaction)) return [{ severity: 'error', code: 'not-supported', diagnostics: `${type} does not support ${interaction}` }];
  try {
    permit(ctx, type, perm);
    return [];
  } catch (e) {
    return issuesOf(e);
  }
}

/** Runs the write the mode names, in the caller's transaction (which is then rolled back). */
async function trial(ctx: Ctx, tx: Tx, type: string, mode: 'create' | 'update' | 'delete', id: string | undefined, resource: Resource | undefined): Promise<void> {
  const guard = writeGuard(ctx, type, accessOf(ctx, type, MODE_INTERACTION[mode].perm)!);
  if (mode === 'create') await write.create(tx, type, resource!, undefined, {}, guard);
  else if (mode === 'update') await write.update(tx, type, id!, resource!, undefined, undefined, guard);
  else await write.remove(tx, type, id!, undefined, guard);
}
