// Healthie Medication (MedicationType) <-> FHIR MedicationStatement. The code is RxNorm
// when it looks like an RxCUI, else a Healthie code system. Status follows `active`
// (with dates deciding intended/completed/stopped); dosage, frequency, directions and
// route keep their own places so they go back separately.
import type { Dosage, MedicationStatement } from '@medplum/fhirtypes';
import type { HealthieMedication, PatientContext } from './types.ts';
import { compact, extValue, hasTag, healthieMeta, identifierValue, text } from './common.ts';
import { toFhirDateTime } from './dates.ts';
import { EXT, MIRRORED_TAG, RXNORM, SYSTEM } from './systems.ts';

const RXCUI = /^\d{1,10}$/;

function status(m: HealthieMedication, now: string): MedicationStatement['status'] {
  const today = now.slice(0, 10);
  const start = text(m.start_date);
  const end = text(m.end_date);
  if (m.active) return start && start > today ? 'intended' : 'active';
  return end && end < today ? 'completed' : 'stopped';
}

function dosage(m: HealthieMedication): Dosage | undefined {
  const dose = text(m.dosage);
  const frequency = text(m.frequency);
  const directions = text(m.directions);
  const route = text(m.route);
  if (!dose && !frequency && !directions && !route) return undefined;
  const summary = [[dose, frequency].filter(Boolean).join(' '), directions].filter(Boolean).join(' — ');
  const parsed = dose ? /^(\d+(?:\.\d+)?)\s+(\S+)$/.exec(dose) : null;
  return compact({
    extension: dose ? [{ url: EXT.medicationDosage, valueString: dose }] : undefined,
    text: summary || undefined,
    patientInstruction: directions,
    timing: frequency ? { code: { text: frequency } } : undefined,
    route: route ? { text: route } : undefined,
    doseAndRate: parsed && String(Number(parsed[1])) === parsed[1] ? [{ doseQuantity: { value: Number(parsed[1]), unit: parsed[2] } }] : undefined,
  });
}

export function medicationToStatement(m: HealthieMedication, ctx: PatientContext): MedicationStatement {
  const code = text(m.code);
  const name = text(m.name);
  const d = dosage(m);
  return compact({
    resourceType: 'MedicationStatement' as const,
    meta: healthieMeta(ctx.source, m.mirrored ? [{ ...MIRRORED_TAG }] : []),
    identifier: [{ system: SYSTEM.medication, value: m.id }],
    // Rows Healthie has not reconciled from a CCDA yet are not asserted either way.
    status: m.requires_consolidation ? 'unknown' as const : status(m, ctx.now),
    medicationCodeableConcept: compact({
      coding: code ? [compact({ system: RXCUI.test(code) ? RXNORM : SYSTEM.medicationCode, code, display: name })] : undefined,
      text: name ?? code ?? 'Unnamed medication',
    }),
    subject: { reference: `Patient/${ctx.patientId}`, identifier: m.user_id ? { system: SYSTEM.user, value: String(m.user_id) } : undefined },
    effectivePeriod: text(m.start_date) || text(m.end_date) ? compact({ start: text(m.start_date), end: text(m.end_date) }) : undefined,
    dateAsserted: toFhirDateTime(m.created_at),
    dosage: d ? [d] : undefined,
    note: text(m.comment) ? [{ text: text(m.comment)! }] : undefined,
  });
}

export function isMirroredStatement(s: MedicationStatement): boolean {
  return hasTag(s, MIRRORED_TAG.system, MIRRORED_TAG.code);
}

/** createMedication / updateMedication variables for a MedicationStatement. */
export function statementToMedicationInputs(s: MedicationStatement, clientId: string, healthieId?: string):
  { create: Record<string, unknown>; update: Record<string, unknown> } {
  const concept = s.medicationCodeableConcept;
  const coding = concept?.coding?.find((c) => c.system === RXNORM || c.system === SYSTEM.medicationCode) ?? concept?.coding?.[0];
  const d = s.dosage?.[0];
  const q = d?.doseAndRate?.[0]?.doseQuantity;
  const common = compact({
    name: concept?.text ?? coding?.display,
    code: coding?.code,
    dosage: extValue(d?.extension, EXT.medicationDosage) ?? (q?.value !== undefined ? `${q.value} ${q.unit ?? ''}`.trim() : undefined),
    frequency: d?.timing?.code?.text,
    directions: d?.patientInstruction ?? (d && !d.timing && !d.extension ? d.text : undefined),
    route: d?.route?.text ?? d?.route?.coding?.[0]?.display,
    comment: s.note?.map((n) => n.text).join('\n') || undefined,
    start_date: s.effectivePeriod?.start?.slice(0, 10) ?? s.effectiveDateTime?.slice(0, 10),
    end_date: s.effectivePeriod?.end?.slice(0, 10),
    active: s.status === 'active' || s.status === 'intended',
  });
  return {
    create: { user_id: clientId, ...common },
    update: compact({ id: healthieId ?? identifierValue(s.identifier, SYSTEM.medication), ...common }),
  };
}
