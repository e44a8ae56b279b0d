// The JSON text and search keys of an AuditEvent the server records, assembled from
// parts that repeat across events: the interaction's codes, the agents of one token at
// one address, the source of one base. Each part is serialized and keyed once and kept;
// only the time, the id and the entities are new per event. Every access records an
// event, and building it as an object, stringifying it and reading its keys cost about
// 45 µs per read. test/auditEventKeys.test.ts checks that the text parses to auditEvent()'s
// event and that the keys equal auditEventKeys()'s. Pure but for the kept parts.
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

function kept(parts: Map<string, Part>, key: string, make: () => Part): Part {
  let part = parts.get(key);
  if (!part) {
    if (parts.size >= MAX_KEPT) parts.clear();
    part = make();
    parts.set(key, part);
  }
  return part;
}

/** `recorded`, `id`: an ISO instant and a UUID (JSON text as they are). The event's meta names lastUpdated = recorded. */
export function auditEventText(facts: AuditFacts, agent: AuditAgent, base: string, recorded: string, id: string): { json: string; keys: RowKeys } {
  const head = kept(interactions, JSON.stringify([facts.subtype, facts.operation, facts.action, facts.outcome]), () => {
    const i = interaction(facts);
    return { json: JSON.stringify(i).slice(1, -1), keys: interactionKeys(i) };
  });
  const who = kept(agentParts, JSON.stringify([agent.clientId, agent.subject, agent.fhirUser, agent.address, base]), () => {
    const a = agents(agent, base);
    return { json: JSON.stringify(a), keys: agentKeys(a) };
  });
  const site = kept(sources, base, () => ({ json: JSON.stringify(source(base)), keys: NO_KEYS }));
  let json = `{"resourceType":"AuditEvent",${head.json},"recorded":"${recorded}"`;
  if (facts.outcomeDesc) json += `,"outcomeDesc":${JSON.stringify(facts.outcomeDesc.slice(0, 1000))}`;
  json += `,"agent":${who.json},"source":${site.json}`;
  const entity = entities(facts);
  if (entity.length) json += `,"entity":${JSON.stringify(entity)}`;
  json += `,"id":"${id}","meta":{"versionId":"1","lastUpdated":"${recorded}"}}`;
  return { json, keys: entity.length ? joinKeys(head.keys, who.keys, entityKeys(entity)) : joinKeys(head.keys, who.keys) };
}
