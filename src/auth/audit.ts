// AuditEvents of the authorization server: every sign-in at the login page and every token
// request, granted or refused (docs/security.md). A granted one is stored in the transaction
// that grants it, so a token is never issued without its event; a refusal in a transaction
// of its own, after the refusing one rolled back.
import { authenticationEvent, outcomeOf, type AuditAgent, type AuthenticationKind } from '../audit/event.ts';
import { appendAuditEvent, logFailure, type Tx } from '../store/resources.ts';
import { inOrg, type AuthCtx } from './context.ts';

export interface AuthenticationFacts {
  status: number;
  /** Why it was refused (an OAuth error and its description, or the login page's reason): never a secret. */
  reason?: string;
  agent: Omit<AuditAgent, 'address'>;
  patient?: string;
}

function append(a: AuthCtx, tx: Tx, kind: AuthenticationKind, f: AuthenticationFacts): Promise<void> {
  return appendAuditEvent(tx, (now) => authenticationEvent(kind, {
    outcome: outcomeOf(f.status), outcomeDesc: f.status >= 400 ? `${f.status} ${f.reason ?? ''}`.trim() : undefined, patients: f.patient ? [f.patient] : [],
  }, { ...f.agent, address: a.req.ip }, a.base, now));
}

/** A granted sign-in or token, inside the transaction that grants it. */
export async function auditGranted(a: AuthCtx, tx: Tx, kind: AuthenticationKind, f: AuthenticationFacts): Promise<void> {
  if (a.config.audit === 'off') return;
  await append(a, tx, kind, f);
}

/** A refused sign-in or token request; a failure to store it is logged, the refusal stands. */
export async function auditRefused(a: AuthCtx, kind: AuthenticationKind, f: AuthenticationFacts): Promise<void> {
  if (a.config.audit === 'off') return;
  await inOrg(a, (tx) => append(a, tx, kind, f)).catch((e) => logFailure(`audit of a refused ${kind} not stored`, e));
}
