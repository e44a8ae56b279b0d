-- Authorization and audit (issue 5).
-- AuditEvents need no table of their own here: they live in the weekly-partitioned
-- audit_events (001) with the locator, history and search index rows of any resource,
-- written in bulk by src/store/auditWrite.ts.

-- The client that started each export: its status URL and files are for that client only.
CREATE TABLE export_job_owners (
  org_id    integer NOT NULL,
  job_id    uuid NOT NULL,
  client_id text NOT NULL,
  PRIMARY KEY (org_id, job_id),
  FOREIGN KEY (org_id, job_id) REFERENCES export_jobs (org_id, id) ON DELETE CASCADE
);
SELECT kiln_tenant_table('export_job_owners', 'SELECT, INSERT');
