-- The GIN indexes on the first-class tables' token arrays served no query: searches read the
-- search index tables, and as the request role (row-level security) PostgreSQL cannot use
-- them at all, because the array operators (@>, &&: arraycontains, arrayoverlap) are not
-- leakproof. Each was as large as the partition's primary key and written on every insert
-- and update. The columns stay (the patient picker reads identifier_tokens as a filter).
DROP INDEX IF EXISTS observations_code;
DROP INDEX IF EXISTS observations_identifiers;
DROP INDEX IF EXISTS encounters_identifiers;
DROP INDEX IF EXISTS medication_statements_code;
DROP INDEX IF EXISTS medication_statements_identifiers;
DROP INDEX IF EXISTS patients_identifiers;
