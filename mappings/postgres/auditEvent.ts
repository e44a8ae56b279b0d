import type { AuditEvent, Coding, Reference } from '@medplum/fhirtypes';
import { commonColumns, orNull, referenceId, toInstant, tokensOfCodings, type MappedRow } from './common.ts';

function token(c: Coding | undefined): string | null {
  if (!c?.code) return null;
  return `${c.system ?? ''}|${c.code}`;
}

function referenceStrings(refs: (Reference | undefined)[]): string[] {
  return refs.map((r) => r?.reference).filter((s): s is string => typeof s === 'string' && s !== '');
}

// The patient the event is about: an entity first, since an agent Patient is only the actor.
function patientId(a: AuditEvent): string | null {
  const candidates = [...(a.entity ?? []).map((e) => e.what), ...(a.agent ?? []).map((g) => g.who)];
  for (const ref of candidates) {
    const id = referenceId(ref, 'Patient');
    if (id) return id;
  }
  return null;
}

export function mapAuditEvent(a: AuditEvent): MappedRow {
  const recorded = toInstant(a.recorded);
  const observer = a.source?.observer;
  return {
    columns: {
      ...commonColumns(a),
      type_token: token(a.type),
      subtype_tokens: tokensOfCodings(a.subtype),
      action: orNull(a.action),
      outcome: orNull(a.outcome),
      recorded: orNull(recorded),
      agent_who: referenceStrings((a.agent ?? []).map((g) => g.who)),
      entity_what: referenceStrings((a.entity ?? []).map((e) => e.what)),
      patient_id: patientId(a),
      source_observer: observer?.reference ?? observer?.display ?? null,
    },
    clinicalTime: recorded,
  };
}
