// The AuditEvent of one HTTP request: the router names the interaction, the handler
// adds what it touched and records it either in its write transaction (writes) or
// through the group-commit writer before answering (reads, searches, operations), and
// the router records a refused or failed request.
import { databaseUnavailable, DatabaseUnavailable, type Tx } from '../store/resources.ts';
import type { AccessContext } from '../auth/verify.ts';
import { compartmentPatients } from '../auth/scopes.ts';
import { FhirError } from '../fhir/outcome.ts';
import { insertAuditEvents, partsOf, timeOrderedId, type AuditRow } from '../store/auditWrite.ts';
import { outcomeOf, type AuditAction, type AuditAgent, type AuditFacts } from './event.ts';
import { auditEventText } from './eventText.ts';
import type { AuditWriter } from './writer.ts';

/** The row of an AuditEvent the server records now (`at`, ms: another time, for tests and benchmarks). */
export function serverAuditRow(facts: AuditFacts, agent: AuditAgent, base: string, at = Date.now()): AuditRow {
  const recorded = new Date(at).toISOString();
  const id = timeOrderedId(at);
  const { part, detail, keys } = auditEventText(facts, agent, base, recorded, id);
  return { id, part, detail, lastUpdated: recorded, clinicalTime: recorded, keys };
}

/**
 * OAuth credentials a client may put in a URL or form (RFC 6750 §2.3 `access_token`, RFC
 * 6749 client and refresh credentials, OpenID's id_token), by lower-cased name. Kiln takes
 * none of them from a query (only the Authorization header), and an AuditEvent is kept for
 * years and read by auditors: they are dropped from the recorded query. Not `code`: in a
 * FHIR query it is the search parameter (Observation?code=...), and the authorization code
 * only ever goes to the token endpoint, which records no AuditEvent.
 */
const CREDENTIAL_PARAMETERS = new Set(['access_token', 'refresh_token', 'id_token', 'client_secret', 'client_assertion', 'password']);
const MAYBE_CREDENTIAL = /token|secret|assertion|password|%/i;

/** The query string without its credential parameters (any modifier, any case, percent-encoded names too); the rest as sent. */
export function withoutCredentials(query: string): string {
  if (!MAYBE_CREDENTIAL.test(query)) return query; // the usual search: nothing to look at
  return query.split('&').filter((pair) => {
    const raw = pair.split('=', 1)[0].replace(/\+/g, ' ');
    let name: string;
    try { name = decodeURIComponent(raw); } catch { name = raw; }
    return !CREDENTIAL_PARAMETERS.has(name.split(':')[0].trim().toLowerCase());
  }).join('&');
}

export interface Touched {
  resources?: string[];
  patients?: string[];
}

export class RequestAudit {
  subtype?: string;
  operation?: string;
  action: AuditAction = 'R';
  query?: { type?: string; text: string };
  readonly resources: string[] = [];
  readonly patients = new Set<string>();
  /** Set once recorded: a request leaves exactly one AuditEvent. */
  done = false;
  access?: AccessContext;

  constructor(private readonly writer: AuditWriter, readonly orgId: number, readonly base: string, readonly address: string | undefined) {}

  /** Names the interaction (called by the router once it knows the route). */
  interaction(subtype: string | undefined, action: AuditAction, extra: { operation?: string; query?: string; type?: string } = {}): void {
    this.subtype = subtype;
    this.action = action;
    this.operation = extra.operation;
    if (extra.query !== undefined) this.query = { type: extra.type, text: withoutCredentials(extra.query) };
  }

  /** A separate AuditEvent of the same request (a batch entry). */
  child(subtype: string, action: AuditAction): RequestAudit {
    const c = new RequestAudit(this.writer, this.orgId, this.base, this.address);
    c.access = this.access;
    c.interaction(subtype, action);
    return c;
  }

  touch(t: Touched): void {
    for (const r of t.resources ?? []) if (!this.resources.includes(r)) this.resources.push(r);
    for (const p of t.patients ?? []) this.patients.add(p);
  }

  private facts(outcome: AuditFacts['outcome'], outcomeDesc?: string): AuditFacts {
    return {
      subtype: this.subtype, operation: this.operation, action: this.action, outcome, outcomeDesc,
      resources: this.resources, query: this.query, patients: [...this.patients],
    };
  }

  private row(outcome: AuditFacts['outcome'], outcomeDesc?: string): AuditRow {
    const a = this.access;
    return serverAuditRow(this.facts(outcome, outcomeDesc), { clientId: a?.clientId, subject: a?.subject, fhirUser: a?.fhirUser, address: this.address }, this.base);
  }

  /** A successful access, committed (with others) before the response goes out. */
  async success(t: Touched = {}): Promise<void> {
    if (this.done) return;
    this.touch(t);
    this.done = true;
    await this.writer.record(this.orgId, this.row('0'));
  }

  /**
   * A successful write: recorded in the write's own transaction, so it commits or rolls
   * back with it. Its part is stored by the group commit first (writer.ts storeParts).
   */
  async inTx(tx: Tx, t: Touched = {}): Promise<void> {
    this.touch(t);
    const row = this.row('0');
    await this.writer.storeParts(this.orgId, partsOf([row]));
    await insertAuditEvents(tx, this.orgId, [row], { parts: [] });
    this.done = true;
  }

  /** A refused or failed request. */
  async failure(err: unknown): Promise<void> {
    if (this.done) return;
    this.done = true;
    // A lost database or an exhausted pool is answered 503 (src/http/app.ts), not 500.
    err = databaseUnavailable(err) ?? err;
    const status = err instanceof FhirError ? err.status : typeof (err as { status?: unknown })?.status === 'number' ? (err as { status: number }).status : 500;
    const desc = err instanceof FhirError ? `${status} ${err.message}` : status < 500 || err instanceof DatabaseUnavailable ? `${status} ${(err as Error)?.message ?? ''}` : `${status} internal error`;
    await this.writer.record(this.orgId, this.row(outcomeOf(status), desc));
  }
}

/** `Type/id` of a stored resource and the patients whose compartment holds it. */
export function touchedResource(type: string, id: string, json: string | undefined, versionId?: number): Touched {
  let patients: string[] = [];
  if (type === 'Patient') patients = [id];
  else if (json) {
    try {
      patients = compartmentPatients(type, JSON.parse(json));
    } catch { /* stored JSON always parses */ }
  }
  return { resources: [versionId ? `${type}/${id}/_history/${versionId}` : `${type}/${id}`], patients };
}

/** Patients a query names (`patient=`, `subject=Patient/..`, Patient `_id=`), for the audit's patient entity. */
export function queryPatients(type: string | undefined, pairs: [string, string][]): string[] {
  const out: string[] = [];
  for (const [name, value] of pairs) {
    const base = name.split(':')[0];
    for (const v of value.split(',')) {
      if (type === 'Patient' && base === '_id') out.push(v);
      else if (base === 'patient' || base === 'subject') {
        const m = /(?:^|\/)Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(v) ?? (base === 'patient' && /^[A-Za-z0-9\-.]{1,64}$/.test(v) ? [v, v] : null);
        if (m) out.push(m[1]);
      }
    }
  }
  return [...new Set(out)];
}
