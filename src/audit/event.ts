// The AuditEvent Kiln records for one access, in the spirit of IHE Basic Audit Log
// Patterns (BALP): type `rest`, subtype = the FHIR interaction, action C/R/U/D/E,
// outcome 0/4/8, agents (the user, the client application, this server), the server
// as source observer, and entities for the resource or the query and the patient.
// Pure: no I/O.
import type { AuditEvent, AuditEventAgent, AuditEventEntity, Coding } from '@medplum/fhirtypes';

export type AuditAction = 'C' | 'R' | 'U' | 'D' | 'E';
/** 0 success, 4 minor failure (refused, not found, invalid), 8 serious failure (server error). */
export type AuditOutcome = '0' | '4' | '8';

/** What happened: filled by the interaction handlers, completed by the router. */
export interface AuditFacts {
  /** A http://hl7.org/fhir/restful-interaction code (read, search-type, create, operation, ...). */
  subtype?: string;
  /** For subtype `operation`: everything, export, export-status, export-file, export-cancel. */
  operation?: string;
  action: AuditAction;
  outcome: AuditOutcome;
  outcomeDesc?: string;
  /** Resources touched, `Type/id` or `Type/id/_history/v`. */
  resources: string[];
  /** A search or history query: the request's query string. */
  query?: { type?: string; text: string };
  /** Patients the access concerns (ids). */
  patients: string[];
}

/** Who asked: from the access token (absent fields when auth is off or the token was refused). */
export interface AuditAgent {
  clientId?: string;
  subject?: string;
  /** `Type/id` on this server, or an absolute URL. */
  fhirUser?: string;
  address?: string;
}

const DCM = 'http://dicom.nema.org/resources/ontology/DCM';
export const REST_INTERACTION = 'http://hl7.org/fhir/restful-interaction';
export const KILN_OPERATION = 'urn:kiln:audit:operation';
export const CLIENT_ID_SYSTEM = 'urn:kiln:client-id';
export const USER_SYSTEM = 'urn:kiln:user';
const ENTITY_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-entity-type';
const OBJECT_ROLE = 'http://terminology.hl7.org/CodeSystem/object-role';

const ACTION_OF: Record<string, AuditAction> = {
  read: 'R', vread: 'R', 'history-instance': 'R',
  'search-type': 'E', 'search-system': 'E', 'history-type': 'E', 'history-system': 'E',
  create: 'C', update: 'U', patch: 'U', delete: 'D',
  batch: 'E', transaction: 'E', operation: 'E',
};

/** The BALP action of an interaction (E for queries and operations). */
export function actionOf(subtype: string | undefined, method: string): AuditAction {
  if (subtype && ACTION_OF[subtype]) return ACTION_OF[subtype];
  return method === 'POST' ? 'C' : method === 'PUT' || method === 'PATCH' ? 'U' : method === 'DELETE' ? 'D' : 'R';
}

export function outcomeOf(status: number): AuditOutcome {
  return status < 400 ? '0' : status < 500 ? '4' : '8';
}

function reference(ref: string): { reference?: string; display?: string } {
  return /^https?:\/\//.test(ref) || /^[A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64}(\/_history\/\d+)?$/.test(ref) ? { reference: ref } : { display: ref };
}

/** The agents: the user (when there is one), the client application, this server. */
export function agents(agent: AuditAgent, base: string): AuditEventAgent[] {
  const network = agent.address ? { network: { address: agent.address, type: '2' as const } } : {};
  const out: AuditEventAgent[] = [];
  const user = agent.fhirUser ?? (agent.subject && agent.subject !== agent.clientId ? agent.subject : undefined);
  if (user) {
    out.push({
      type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/extra-security-role-type', code: 'humanuser', display: 'human user' }] },
      who: agent.fhirUser ? { ...reference(agent.fhirUser), ...(agent.subject ? { identifier: { system: USER_SYSTEM, value: agent.subject } } : {}) }
        : { identifier: { system: USER_SYSTEM, value: user }, display: user },
      ...(agent.subject ? { altId: agent.subject } : {}),
      name: agent.subject ?? user,
      requestor: true,
      ...network,
    });
  }
  out.push({
    type: { coding: [{ system: DCM, code: '110150', display: 'Application' }] },
    who: agent.clientId ? { identifier: { system: CLIENT_ID_SYSTEM, value: agent.clientId }, display: agent.clientId } : { display: 'anonymous' },
    ...(agent.clientId ? { altId: agent.clientId, name: agent.clientId } : { name: 'anonymous' }),
    requestor: !user,
    ...network,
  });
  out.push({
    type: { coding: [{ system: DCM, code: '110152', display: 'Destination Role ID' }] },
    who: { display: 'Kiln FHIR server', identifier: { system: 'urn:ietf:rfc:3986', value: base } },
    requestor: false,
    network: { address: base, type: '5' },
  });
  return out;
}

/** The entities: the resources touched, the query, the patients. */
export function entities(facts: AuditFacts): AuditEventEntity[] {
  const out: AuditEventEntity[] = [];
  const patients = new Set(facts.patients);
  for (const r of facts.resources) {
    if (/^Patient\/[^/]+$/.test(r.replace(/\/_history\/.*$/, '')) && patients.has(r.split('/')[1])) continue; // listed below as the patient
    out.push({
      what: reference(r),
      type: { system: ENTITY_TYPE, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE, code: '4', display: 'Domain Resource' },
    });
  }
  if (facts.query) {
    out.push({
      type: { system: ENTITY_TYPE, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE, code: '24', display: 'Query' },
      ...(facts.query.type ? { name: facts.query.type } : {}),
      query: Buffer.from(facts.query.text, 'utf8').toString('base64'),
    });
  }
  for (const p of patients) {
    out.push({
      what: { reference: `Patient/${p}` },
      type: { system: ENTITY_TYPE, code: '1', display: 'Person' },
      role: { system: OBJECT_ROLE, code: '1', display: 'Patient' },
    });
  }
  return out;
}

/** What names the interaction: the event's type, subtype, action and outcome. */
export function interaction(facts: AuditFacts): Pick<AuditEvent, 'type' | 'subtype' | 'action' | 'outcome'> {
  const subtype: Coding[] = [];
  if (facts.subtype) subtype.push({ system: REST_INTERACTION, code: facts.subtype });
  if (facts.operation) subtype.push({ system: KILN_OPERATION, code: facts.operation, display: `$${facts.operation.replace(/-.*$/, '')}` });
  return {
    type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'Restful Operation' },
    ...(subtype.length ? { subtype } : {}),
    action: facts.action,
    outcome: facts.outcome,
  };
}

/** This server as the event's source. */
export function source(base: string): AuditEvent['source'] {
  return {
    site: base,
    observer: { display: 'Kiln FHIR server', identifier: { system: 'urn:ietf:rfc:3986', value: base } },
    type: [{ system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4', display: 'Application Server' }],
  };
}

/** The event as an object (src/audit/eventText.ts gives the same event as JSON text, faster). */
export function auditEvent(facts: AuditFacts, agent: AuditAgent, base: string, recorded: string): AuditEvent {
  const entity = entities(facts);
  return {
    resourceType: 'AuditEvent',
    ...interaction(facts),
    recorded,
    ...(facts.outcomeDesc ? { outcomeDesc: facts.outcomeDesc.slice(0, 1000) } : {}),
    agent: agents(agent, base),
    source: source(base),
    ...(entity.length ? { entity } : {}),
  };
}

/** What an authorization-server event records: a sign-in at the login page, or a token request (IHE IUA ITI-71). */
export type AuthenticationKind = 'login' | 'token';

const AUTHENTICATION_SUBTYPE: Record<AuthenticationKind, Coding> = {
  login: { system: DCM, code: '110122', display: 'Login' },
  token: { system: 'urn:oid:1.3.6.1.4.1.19376.1.2', code: 'ITI-71', display: 'Get Access Token' },
};

/**
 * A sign-in or a token request as an AuditEvent (DICOM 110114 User Authentication): who
 * (the user, the client, the address), the outcome, and the patient of the grant's context.
 * It touches no patient data itself; the accesses the token makes are audited as they happen.
 */
export function authenticationEvent(kind: AuthenticationKind, facts: { outcome: AuditOutcome; outcomeDesc?: string; patients: string[] }, agent: AuditAgent, base: string, recorded: string): AuditEvent {
  const entity = entities({ action: 'E', outcome: facts.outcome, resources: [], patients: facts.patients });
  return {
    resourceType: 'AuditEvent',
    type: { system: DCM, code: '110114', display: 'User Authentication' },
    subtype: [AUTHENTICATION_SUBTYPE[kind]],
    action: 'E',
    recorded,
    outcome: facts.outcome,
    ...(facts.outcomeDesc ? { outcomeDesc: facts.outcomeDesc.slice(0, 1000) } : {}),
    agent: agents(agent, base),
    source: source(base),
    ...(entity.length ? { entity } : {}),
  };
}
