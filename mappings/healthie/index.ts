// Healthie <-> FHIR mappings (pure functions) and the ConceptMaps they use.
export * from './systems.ts';
export * from './types.ts';
export { loadMaps, buildMaps, type HealthieMaps, type MetricCode } from './conceptMaps.ts';
export { toFhirDateTime, toHealthieDateTime, epochMs } from './dates.ts';
export { userToPatient, patientToClientInputs } from './patient.ts';
export { appointmentToEncounter, encounterToAppointmentInputs, isExternalAppointment, isExternalEncounter, isMappableAppointment,
  appointmentClientId, appointmentClientIds, isGroupEncounter, removedAttendeeEncounter } from './encounter.ts';
export { entryToObservation, observationToEntryInputs, UnmappableObservation } from './observation.ts';
export { medicationToStatement, statementToMedicationInputs, isMirroredStatement } from './medicationStatement.ts';
