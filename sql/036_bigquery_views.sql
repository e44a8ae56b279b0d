-- BigQuery sync of ViewDefinitions as flat tables: a run records the views it loads (their
-- definitions, tables and filters) and the full export of a type that a new or changed view is
-- loaded from, so a failed run resumes with the same rows and job ids. Watermarks of views use
-- bigquery_sync_watermarks with resource_type 'ViewDefinition/<id>#<definition hash>'.
ALTER TABLE bigquery_sync_runs ADD COLUMN views jsonb NOT NULL DEFAULT '{}';
