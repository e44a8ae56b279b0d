// The search keys (mappings/search/rowKeys.ts) of an AuditEvent that auditEvent() made,
// read straight off its known shape. Every access records one, and the general
// extraction (FHIRPath over all AuditEvent parameters) cost more than building the event
// itself. test/auditEventKeys.test.ts checks that both give the same keys for any facts;
// AuditEvents that clients send still go through the general extraction. The keys come in
// parts (the interaction's codes, the agents, the entities) so that src/audit/eventText.ts
// can compute the parts that repeat across events once. Pure: no I/O.
import type { AuditEvent, AuditEventAgent, AuditEventEntity, Coding, Reference } from '@medplum/fhirtypes';
import { parseReference } from '../../mappings/search/extract.ts';
import { codeKey, presenceKey, refKey, refTypeKey, tokenKey, type RowKeys } from '../../mappings/search/rowKeys.ts';

/** Collects one part's keys. */
class Keys {
  readonly ref = new Set<string>();
  readonly tok = new Set<string>();

  token(param: string, into: Set<string>, system: string | undefined, code: string | undefined): void {
    if (!code) return;
    into.add(tokenKey(param, system || null, code));
    into.add(codeKey(param, code));
    this.tok.add(presenceKey(param));
  }

  coding(param: string, c: Coding | undefined): void {
    this.token(param, this.tok, c?.system, c?.code);
  }

  reference(param: string, r: Reference | undefined): void {
    const target = r?.reference ? parseReference(r.reference) : undefined;
    // `patient` is read from the agent and entity keys (storedAs), but for its identifiers
    if (target?.type === 'Patient') this.token('patient:identifier', this.ref, r?.identifier?.system, r?.identifier?.value);
    if (r?.reference) {
      if (target) {
        this.ref.add(refKey(param, `${target.type}/${target.id}`));
        this.tok.add(refTypeKey(param, target.type));
      } else {
        this.ref.add(refKey(param, r.reference));
      }
      this.tok.add(presenceKey(param));
    }
    this.token(`${param}:identifier`, this.ref, r?.identifier?.system, r?.identifier?.value);
  }

  rowKeys(): RowKeys {
    return { refKeys: [...this.ref], tokenKeys: [...this.tok] };
  }
}

/** The keys of the interaction: type, subtype, action, outcome. */
export function interactionKeys(event: Pick<AuditEvent, 'type' | 'subtype' | 'action' | 'outcome'>): RowKeys {
  const k = new Keys();
  k.coding('type', event.type);
  for (const c of event.subtype ?? []) k.coding('subtype', c);
  k.token('action', k.tok, undefined, event.action);
  k.token('outcome', k.tok, undefined, event.outcome);
  return k.rowKeys();
}

export function agentKeys(agents: AuditEventAgent[]): RowKeys {
  const k = new Keys();
  for (const a of agents) k.reference('agent', a.who);
  return k.rowKeys();
}

export function entityKeys(entities: AuditEventEntity[]): RowKeys {
  const k = new Keys();
  for (const e of entities) k.reference('entity', e.what);
  return k.rowKeys();
}

/** The parts' keys together. Each key names its parameter, and no two parts have a parameter in common, so none repeats. */
export function joinKeys(first: RowKeys, ...rest: RowKeys[]): RowKeys {
  return { refKeys: first.refKeys.concat(...rest.map((p) => p.refKeys)), tokenKeys: first.tokenKeys.concat(...rest.map((p) => p.tokenKeys)) };
}

/** The keys of a whole AuditEvent built by auditEvent() (no contained resources, no Reference.type):
 * the parts joined, as test/auditEventKeys.test.ts checks them against the general extraction. */
export function auditEventKeys(event: AuditEvent): RowKeys {
  return joinKeys(interactionKeys(event), agentKeys(event.agent), entityKeys(event.entity ?? []));
}
