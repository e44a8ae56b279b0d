// The FHIR interactions each stored type supports: the router and Bundle entries refuse
// the others with 405, and the CapabilityStatement advertises exactly these, so the two
// cannot disagree.
import { FhirError } from '../fhir/outcome.ts';

export const TYPE_INTERACTIONS = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'history-type', 'create', 'search-type'] as const;
export type TypeInteraction = typeof TYPE_INTERACTIONS[number];

/** Interactions a type refuses, and why. */
const REFUSED: Record<string, { interactions: ReadonlySet<TypeInteraction>; reason: string }> = {
  // AuditEvents are evidence: once recorded, no client may change or remove one, whatever
  // KILN_AUTH says. Create stays open (external systems record their own events).
  // sql/016_audit_immutable.sql holds the same line in the database.
  AuditEvent: { interactions: new Set(['update', 'patch', 'delete']), reason: 'AuditEvents are evidence and cannot be updated, patched or deleted' },
};

export function supports(type: string, interaction: TypeInteraction): boolean {
  return !(Object.hasOwn(REFUSED, type) && REFUSED[type].interactions.has(interaction));
}

export function interactionsOf(type: string): TypeInteraction[] {
  return TYPE_INTERACTIONS.filter((code) => supports(type, code));
}

/** 405 for an interaction the type does not support (its conditional and update-as-create forms too). */
export function requireSupported(type: string, interaction: TypeInteraction): void {
  if (!supports(type, interaction)) throw new FhirError(405, 'not-supported', `${interaction} of ${type}: ${REFUSED[type].reason}`);
}
