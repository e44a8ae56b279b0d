// The JSON text and search keys of an AuditEvent the server records, assembled from
// parts that repeat across events: the interaction's codes, the agents of one token at
// one address, the source of one base. Each part is serialized and keyed once and kept;
// only the time, the id and the entities are new per event, and only they are stored
// per event (sql/027: the shared part is stored once). Every access records an
// event, and building it as an object, stringifying it and reading its keys cost about
// 45 µs per read. test/auditEventKeys.test.ts checks that the rendered text parses to auditEvent()'s
// event and that the keys equal auditEventKeys()'s. Pure but for the kept parts.
import crypto from 'node:crypto';
import type { RowKeys } from '../../mappings/search/rowKeys.ts';
import { agents, entities, interaction, source, type AuditAgent, type AuditFacts } from './event.ts';
import { agentKeys, entityKeys, interactionKeys, joinKeys } from './eventKeys.ts';

interface Part {
  /** JSON text: members of the event object (interaction), or a value (agents, source). */
  json: string;
  keys: RowKeys;
}

/** Parts kept per map; a map that fills is emptied (agents vary with users and addresses). */
const MAX_KEPT = 10_000;
const interactions = new Map<string, Part>();
const agentParts = new Map<string, Part>();
const sources = new Map<string, Part>();
const NO_KEYS: RowKeys = { refKeys: [], tokenKeys: [] };

function kept<T extends Part>(parts: Map<string, T>, key: string, make: () => T): T {
  let part = parts.get(key);
  if (!part) {
    if (parts.size >= MAX_KEPT) parts.clear();
    part = make();
    parts.set(key, part);
  }
  return part;
}

/**
 * The shared part of events of one interaction by one agent set at one base: its JSON
 * members and the id under which it is stored (sql/027 audit_event_parts). The id is a
 * hash of the text, so it names the part in any process and a part stored twice is one.
 */
export interface AuditPart {
  id: string;
  json: string;
}

const partsOf = new Map<string, Part & { part: AuditPart }>();

/**
 * An event as its part and detail (sql/027): `detail` runs from `,"recorded":` to the
 * opening quote of its meta's lastUpdated value, which the insert closes (auditEventJson).
 * `recorded`, `id`: an ISO instant and a UUID (JSON text as they are).
 */
export function auditEventText(facts: AuditFacts, agent: AuditAgent, base: string, recorded: string, id: string): { part: AuditPart; detail: string; keys: RowKeys } {
  const headKey = JSON.stringify([facts.subtype, facts.operation, facts.action, facts.outcome]);
  const whoKey = JSON.stringify([agent.clientId, agent.subject, agent.fhirUser, agent.address, base]);
  const shared = kept(partsOf, headKey + whoKey, () => {
    const head = kept(interactions, headKey, () => {
      const i = interaction(facts);
      return { json: JSON.stringify(i).slice(1, -1), keys: interactionKeys(i) };
    });
    const who = kept(agentParts, whoKey, () => {
      const a = agents(agent, base);
      return { json: JSON.stringify(a), keys: agentKeys(a) };
    });
    const site = kept(sources, base, () => ({ json: JSON.stringify(source(base)), keys: NO_KEYS }));
    const json = `${head.json},"agent":${who.json},"source":${site.json}`;
    return { json, keys: joinKeys(head.keys, who.keys), part: { id: crypto.createHash('sha256').update(json).digest('base64url').slice(0, 22), json } };
  });
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
