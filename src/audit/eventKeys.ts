// The search keys (mappings/search/rowKeys.ts) of an AuditEvent that auditEvent() made,
// read straight off its known shape. Every access records one, and the general
// extraction (FHIRPath over all AuditEvent parameters) cost more than building the event
// itself. test/auditEventKeys.test.ts checks that both give the same keys for any facts;
// AuditEvents that clients send still go through the general extraction. Pure: no I/O.
import type { AuditEvent, Coding, Reference } from '@medplum/fhirtypes';
import { parseReference } from '../../mappings/search/extract.ts';
import { codeKey, presenceKey, refKey, refTypeKey, tokenKey, type RowKeys } from '../../mappings/search/rowKeys.ts';

/** The keys of an AuditEvent built by auditEvent() (no contained resources, no Reference.type). */
export function auditEventKeys(event: AuditEvent): RowKeys {
  const ref = new Set<string>();
  const tok = new Set<string>();
  const token = (param: string, into: Set<string>, system: string | undefined, code: string | undefined) => {
    if (!code) return;
    into.add(tokenKey(param, system || null, code));
    into.add(codeKey(param, code));
    tok.add(presenceKey(param));
  };
  const coding = (param: string, c: Coding | undefined) => token(param, tok, c?.system, c?.code);
  const reference = (param: string, r: Reference | undefined) => {
    const target = r?.reference ? parseReference(r.reference) : undefined;
    // `patient` is read from the agent and entity keys (storedAs), but for its identifiers
    if (target?.type === 'Patient') token('patient:identifier', ref, r?.identifier?.system, r?.identifier?.value);
    if (r?.reference) {
      if (target) {
        ref.add(refKey(param, `${target.type}/${target.id}`));
        tok.add(refTypeKey(param, target.type));
      } else {
        ref.add(refKey(param, r.reference));
      }
      tok.add(presenceKey(param));
    }
    token(`${param}:identifier`, ref, r?.identifier?.system, r?.identifier?.value);
  };
  coding('type', event.type);
  for (const c of event.subtype ?? []) coding('subtype', c);
  token('action', tok, undefined, event.action);
  token('outcome', tok, undefined, event.outcome);
  for (const a of event.agent) reference('agent', a.who);
  for (const e of event.entity ?? []) reference('entity', e.what);
  return { refKeys: [...ref], tokenKeys: [...tok] };
}
