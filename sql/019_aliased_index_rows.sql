-- Index rows that duplicated other parameters' rows (mappings/search/definitions.ts
-- StoredAs): `patient` (`X.subject.where(resolve() is Patient)`) is read from `subject`
-- rows of target type Patient, `combo-code` from `code` and `component-code` rows,
-- `combo-code-value-quantity` from `code-value-quantity` and `component-code-value-quantity`
-- rows (parts are matched by position, so their component codes do not matter), and so
-- on. New writes no longer make these rows; this removes those written before. The list
-- is what deriveStoredAs() finds for the stored types (test/searchIndex.test.ts checks it).
-- `patient:identifier` rows stay: token rows carry no target type to filter by.

-- References whose type is known only from a contained resource or Reference.type now
-- carry that type in target_type (they had NULL): the stored parameter's row takes it
-- from the filtered parameter's row for the same reference before that row goes.
UPDATE search_references s SET target_type = v.target
  FROM (VALUES ('Encounter', 'patient', 'subject', 'Patient'),
               ('Encounter', 'practitioner', 'participant', 'Practitioner'),
               ('Observation', 'patient', 'subject', 'Patient'),
               ('MedicationStatement', 'patient', 'subject', 'Patient'),
               ('AuditEvent', 'patient', 'agent', 'Patient'),
               ('AuditEvent', 'patient', 'entity', 'Patient')) AS v(resource_type, alias, stored, target),
       search_references a
 WHERE a.resource_type = v.resource_type AND a.param = v.alias AND a.target_type IS NULL
   AND s.org_id = a.org_id AND s.resource_type = a.resource_type AND s.id = a.id
   AND s.param = v.stored AND s.reference = a.reference AND s.target_type IS NULL;

DELETE FROM search_references WHERE (resource_type, param) IN (VALUES
  ('Encounter', 'patient'), ('Encounter', 'practitioner'), ('Observation', 'patient'),
  ('MedicationStatement', 'patient'), ('AuditEvent', 'patient'));
DELETE FROM search_strings WHERE resource_type = 'Patient' AND param = 'phonetic';
-- With their modifier rows (`:of-type`, `:text` ...), if any were written.
DELETE FROM search_tokens WHERE resource_type = 'Observation'
  AND split_part(param, ':', 1) IN ('combo-code', 'combo-data-absent-reason', 'combo-value-concept');
DELETE FROM search_quantities WHERE resource_type = 'Observation' AND param = 'combo-value-quantity';
DELETE FROM search_composites WHERE resource_type = 'Observation'
  AND param IN ('combo-code-value-concept', 'combo-code-value-quantity');
