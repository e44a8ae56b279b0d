import type { HumanName, Identifier, Patient } from '@medplum/fhirtypes';
import { commonColumns, orNull, type MappedRow } from './common.ts';

const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';

// An MRN is unique within its assigning system, so the key is 'system|value'.
function mrnKey(id: Identifier | undefined): string | null {
  return id?.value ? `${id.system ?? ''}|${id.value}` : null;
}

function isMrn(id: Identifier): boolean {
  return !!id.value && !!id.type?.coding?.some((c) => c.code === 'MR' && c.system === V2_0203);
}

// The official name is what a family-name search should hit; fall back to whatever comes first.
function primaryName(names: HumanName[] | undefined): HumanName | undefined {
  return names?.find((n) => n.use === 'official') ?? names?.[0];
}

// Partial birth dates fill to the first day so the `date` column can hold them.
function toDate(value: string | undefined): string | null {
  const m = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/.exec(value ?? '');
  return m ? `${m[1]}-${m[2] ?? '01'}-${m[3] ?? '01'}` : null;
}

function deceased(p: Patient): boolean | null {
  if (typeof p.deceasedBoolean === 'boolean') return p.deceasedBoolean;
  return p.deceasedDateTime ? true : null;
}

export function mapPatient(p: Patient): MappedRow {
  const name = primaryName(p.name);
  const given = (name?.given ?? []).filter((g) => typeof g === 'string' && g !== '');
  return {
    columns: {
      ...commonColumns(p),
      mrn: mrnKey(p.identifier?.find(isMrn)),
      family_name: orNull(name?.family),
      given_names: given.length > 0 ? given.join(' ') : null,
      birth_date: toDate(p.birthDate),
      sex: orNull(p.gender),
      active: orNull(p.active),
      deceased: deceased(p),
    },
  };
}
