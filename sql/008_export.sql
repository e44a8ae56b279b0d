-- Bulk Data $export: the Group resource (so Group/[id]/$export has something to
-- name) and durable export jobs with the files each one has committed.

-- Groups are few and small: one plain table, not partitioned by org or time. It has
-- the columns every resource table shares, so the generic write path, the locator
-- (resource_ids.clinical_time stays NULL) and kiln_read work for it unchanged.
CREATE TABLE groups (
  org_id            integer NOT NULL,
  id                text NOT NULL,
  version_id        integer NOT NULL,
  last_updated      timestamptz NOT NULL,
  identifier_tokens text[] NOT NULL DEFAULT '{}',
  profiles          text[] NOT NULL DEFAULT '{}',
  tags              text[] NOT NULL DEFAULT '{}',
  resource          json NOT NULL,  -- json, not jsonb: the text is kept exactly as written
  group_type        text,
  actual            boolean,
  name              text,
  member_ids        text[] NOT NULL DEFAULT '{}',  -- Patient ids of member.entity
  PRIMARY KEY (org_id, id)
);
CREATE INDEX groups_members ON groups USING gin (member_ids);
CREATE INDEX groups_last_updated ON groups (org_id, last_updated);

-- One row per $export request. The worker that runs a job holds a lease it renews;
-- a job whose lease ran out (its process died) is claimed again and resumed.
CREATE TABLE export_jobs (
  org_id           integer NOT NULL REFERENCES organizations (id),
  id               uuid NOT NULL,
  status           text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed')),
  request          text NOT NULL,          -- the kick-off URL, echoed in the manifest
  params           jsonb NOT NULL,         -- the parsed request (src/export/params.ts)
  transaction_time timestamptz,            -- fixed when the job first starts; resumes reuse it
  progress         jsonb NOT NULL DEFAULT '{}',
  done_units       text[] NOT NULL DEFAULT '{}', -- units whose files are committed
  attempts         integer NOT NULL DEFAULT 0,
  lease_owner      text,
  lease_until      timestamptz,
  error            text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  completed_at     timestamptz,
  expires_at       timestamptz,
  PRIMARY KEY (org_id, id)
);
CREATE UNIQUE INDEX export_jobs_id ON export_jobs (id);
CREATE INDEX export_jobs_pending ON export_jobs (status, lease_until) WHERE status IN ('queued', 'running');
CREATE INDEX export_jobs_expiry ON export_jobs (expires_at) WHERE expires_at IS NOT NULL;

-- Files of a job, registered in the same transaction that marks their unit done,
-- after they were fully written, fsynced and renamed into place.
CREATE TABLE export_files (
  org_id   integer NOT NULL,
  job_id   uuid NOT NULL,
  kind     text NOT NULL CHECK (kind IN ('output', 'deleted', 'error')),
  type     text NOT NULL,
  seq      integer NOT NULL,
  name     text NOT NULL,
  count    integer NOT NULL,
  bytes    bigint NOT NULL,
  PRIMARY KEY (org_id, job_id, name),
  FOREIGN KEY (org_id, job_id) REFERENCES export_jobs (org_id, id) ON DELETE CASCADE
);

SELECT kiln_tenant_table('groups', 'SELECT, INSERT, UPDATE, DELETE');
SELECT kiln_tenant_table('export_jobs', 'SELECT, INSERT, UPDATE, DELETE');
SELECT kiln_tenant_table('export_files', 'SELECT, INSERT, UPDATE, DELETE');
