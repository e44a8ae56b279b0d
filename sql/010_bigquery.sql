-- BigQuery sync state (operator work, owner pool only): per tenant and target dataset, the
-- export transaction time each resource type is loaded through (the watermark), and the
-- runs: an export and its loads, kept until every type is loaded so a failed run resumes
-- with the same files and the same BigQuery job ids.
CREATE TABLE bigquery_sync_runs (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  org_id           integer NOT NULL REFERENCES organizations (id),
  target           text NOT NULL,              -- project:dataset
  since            timestamptz,                -- the export's _since (NULL: everything)
  transaction_time timestamptz NOT NULL,       -- the export's transactionTime
  export_job_id    text NOT NULL,
  files            jsonb NOT NULL,             -- [{type, path, count}], deletions as type Bundle
  after_by_type    jsonb NOT NULL DEFAULT '{}', -- type -> instant: rows up to it were loaded before
  staging_dir      text NOT NULL,
  status           text NOT NULL DEFAULT 'loading' CHECK (status IN ('loading', 'done', 'abandoned')),
  loaded           jsonb NOT NULL DEFAULT '{}', -- type -> {jobId, rows, state}
  error            text,
  started_at       timestamptz NOT NULL DEFAULT now(),
  finished_at      timestamptz
);
-- At most one unfinished run per tenant and target: the next sync resumes it.
CREATE UNIQUE INDEX bigquery_sync_runs_pending ON bigquery_sync_runs (org_id, target) WHERE status = 'loading';

CREATE TABLE bigquery_sync_watermarks (
  org_id         integer NOT NULL REFERENCES organizations (id),
  target         text NOT NULL,
  resource_type  text NOT NULL,
  loaded_through timestamptz NOT NULL,         -- transactionTime of the last export loaded for this type
  PRIMARY KEY (org_id, target, resource_type)
);

REVOKE ALL ON bigquery_sync_runs, bigquery_sync_watermarks FROM PUBLIC;
