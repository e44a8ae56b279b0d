// The JSON text and search keys of an AuditEvent the server records, as a part that
// repeats across events (the interaction's codes, the agents of one token at one
// address, the source of one base), serialized, keyed and hashed once and kept, and the
// detail that is new per event: the time, the id and the entities. Only the detail is
// stored per event (sql/027: the part is stored once). Every access records an
// event, and building it as an object, stringifying it and reading its keys cost about
// 45 µs per read. test/auditEventKeys.test.ts checks that the rendered text parses to auditEvent()'s
// event and that the keys equal auditEventKeys()'s. Pure but for the kept parts.
import crypto from 'node:crypto';
import type { RowKeys } from '../../mappings/search/rowKeys.ts';
import { agents, entities, interaction, source, type AuditAgent, type AuditFacts } from './event.ts';
import { agentKeys, entityKeys, interactionKeys, joinKeys } from './eventKeys.ts';

/**
 * The shared part of events of one interaction by one agent set at one base: its JSON
 * members and the id under which it is stored (sql/027 audit_event_parts). The id is a
 * hash of the text, so it names the part in any process and a part stored twice is one.
 */
export interface AuditPart {
  id: string;
  json: string;
}

/**
 * A part's id: the first 22 characters of the base64url SHA-256 of its UTF-8 text. The
 * database refuses a part whose id is anything else (sql/028 kiln_audit_part_id).
 */
export function auditPartId(json: string): string {
  return crypto.createHash('sha256').update(json).digest('base64url').slice(0, 22);
}

/** Parts kept, with their keys; when full the map is emptied (agents vary with users and addresses). */
const MAX_KEPT = 10_000;
const kept = new Map<string, { part: AuditPart; keys: RowKeys }>();

function sharedPart(facts: AuditFacts, agent: AuditAgent, base: string): { part: AuditPart; keys: RowKeys } {
  // JSON arrays delimit themselves, so the two joined name one combination.
  const key = JSON.stringify([facts.subtype, facts.operation, facts.action, facts.outcome]) +
    JSON.stringify([agent.clientId, agent.subject, agent.fhirUser, agent.address, base]);
  let shared = kept.get(key);
  if (!shared) {
    const i = interaction(facts);
    const a = agents(agent, base);
    const json = `${JSON.stringify(i).slice(1, -1)},"agent":${JSON.stringify(a)},"source":${JSON.stringify(source(base))}`;
    shared = { part: { id: auditPartId(json), json }, keys: joinKeys(interactionKeys(i), agentKeys(a)) };
    if (kept.size >= MAX_KEPT) kept.clear();
    kept.set(key, shared);
  }
  return shared;
}

/**
 * An event as its part and detail (sql/027): `detail` runs from `,"recorded":` to the
 * opening quote of its meta's lastUpdated value, which the insert closes (auditEventJson).
 * `recorded`, `id`: an ISO instant and a UUID (JSON text as they are).
 */
export function auditEventText(facts: AuditFacts, agent: AuditAgent, base: string, recorded: string, id: string): { part: AuditPart; detail: string; keys: RowKeys } {
  const shared = sharedPart(facts, agent, base);
  let detail = `,"recorded":"${recorded}"`;
  if (facts.outcomeDesc) detail += `,"outcomeDesc":${JSON.stringify(facts.outcomeDesc.slice(0, 1000))}`;
  const entity = entities(facts);
  if (entity.length) detail += `,"entity":${JSON.stringify(entity)}`;
  detail += `,"id":"${id}","meta":{"versionId":"1","lastUpdated":"`;
  return { part: shared.part, detail, keys: entity.length ? joinKeys(shared.keys, entityKeys(entity)) : shared.keys };
}

/** The JSON text of an event stored as part and detail, as audit_event_resources renders it. */
export function auditEventJson(part: AuditPart, detail: string, lastUpdated: string): string {
  return `{"resourceType":"AuditEvent",${part.json}${detail}${lastUpdated}"}}`;
}
