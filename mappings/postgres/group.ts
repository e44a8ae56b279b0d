import type { Group } from '@medplum/fhirtypes';
import { commonColumns, orNull, referenceId, type MappedRow } from './common.ts';

// Only members that are Patients matter to Kiln: they scope Group/[id]/$export.
export function mapGroup(g: Group): MappedRow {
  const members = (g.member ?? []).map((m) => referenceId(m.entity, 'Patient')).filter((id): id is string => !!id);
  return {
    columns: {
      ...commonColumns(g),
      group_type: orNull(g.type),
      actual: orNull(g.actual),
      name: orNull(g.name),
      member_ids: [...new Set(members)],
    },
  };
}
