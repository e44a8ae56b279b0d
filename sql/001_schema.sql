-- Kiln core schema: tenants, id locator, history, clinical-event hub and one
-- partitioned table per resource type (LIST org_id, then RANGE on clinical time).
-- Every key leads with org_id so the schema can later be distributed by org.

-- Request traffic logs in as kiln_app: not superuser, not owner, so RLS binds it.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kiln_app') THEN
    CREATE ROLE kiln_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
  END IF;
END $$;

CREATE TABLE organizations (
  id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  slug       text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
  name       text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Where the current version of each resource lives; a read goes through here so
-- that it touches exactly one time partition. Also the per-resource write lock.
CREATE TABLE resource_ids (
  org_id        integer NOT NULL REFERENCES organizations (id),
  resource_type text NOT NULL,
  id            text NOT NULL,
  version_id    integer NOT NULL,
  last_updated  timestamptz NOT NULL,
  deleted       boolean NOT NULL DEFAULT false,
  clinical_time timestamptz,
  PRIMARY KEY (org_id, resource_type, id)
);

-- Every version of every resource, deletes included (resource is NULL for a delete).
CREATE TABLE resource_history (
  org_id        integer NOT NULL,
  resource_type text NOT NULL,
  id            text NOT NULL,
  version_id    integer NOT NULL,
  last_updated  timestamptz NOT NULL,
  method        text NOT NULL CHECK (method IN ('POST', 'PUT', 'PATCH', 'DELETE')),
  resource      json,
  PRIMARY KEY (org_id, resource_type, id, version_id)
);
CREATE INDEX resource_history_type_time ON resource_history (org_id, resource_type, last_updated DESC);
CREATE INDEX resource_history_time ON resource_history (org_id, last_updated DESC);

-- Columns every resource table shares.
-- identifier_tokens holds 'system|value' and '|value'; tags/profiles likewise.

CREATE TABLE patients (
  org_id            integer NOT NULL,
  id                text NOT NULL,
  version_id        integer NOT NULL,
  last_updated      timestamptz NOT NULL,
  identifier_tokens text[] NOT NULL DEFAULT '{}',
  profiles          text[] NOT NULL DEFAULT '{}',
  tags              text[] NOT NULL DEFAULT '{}',
  resource          json NOT NULL,  -- json, not jsonb: the text is kept exactly as written
  mrn               text,
  family_name       text,
  given_names       text,
  birth_date        date,
  sex               text,
  active            boolean,
  deceased          boolean,
  PRIMARY KEY (org_id, id)
) PARTITION BY LIST (org_id);
CREATE UNIQUE INDEX patients_mrn ON patients (org_id, mrn) WHERE mrn IS NOT NULL;
CREATE INDEX patients_identifiers ON patients USING gin (identifier_tokens);
CREATE INDEX patients_family ON patients (org_id, lower(family_name));
CREATE INDEX patients_birth_date ON patients (org_id, birth_date);
CREATE INDEX patients_last_updated ON patients (org_id, last_updated);

-- The hub: one row per encounter, naming its patient. Clinical rows reference
-- (org_id, encounter_id, patient_id), so a row whose encounter belongs to a
-- different patient cannot exist.
CREATE TABLE clinical_events (
  org_id       integer NOT NULL,
  encounter_id text NOT NULL,
  patient_id   text,
  PRIMARY KEY (org_id, encounter_id),
  UNIQUE (org_id, encounter_id, patient_id),
  FOREIGN KEY (org_id, patient_id) REFERENCES patients (org_id, id)
);
CREATE INDEX clinical_events_patient ON clinical_events (org_id, patient_id);

CREATE TABLE encounters (
  org_id            integer NOT NULL,
  id                text NOT NULL,
  version_id        integer NOT NULL,
  last_updated      timestamptz NOT NULL,
  identifier_tokens text[] NOT NULL DEFAULT '{}',
  profiles          text[] NOT NULL DEFAULT '{}',
  tags              text[] NOT NULL DEFAULT '{}',
  resource          json NOT NULL,  -- json, not jsonb: the text is kept exactly as written
  clinical_time     timestamptz NOT NULL,
  patient_id        text,
  status            text,
  class_code        text,
  type_tokens       text[] NOT NULL DEFAULT '{}',
  period_start      timestamptz,
  period_end        timestamptz,
  PRIMARY KEY (org_id, id, clinical_time),
  -- CASCADE: re-pointing the hub at a new patient carries the encounter row along;
  -- clinical rows (NO ACTION) still block it while they reference the old pairing.
  FOREIGN KEY (org_id, id, patient_id) REFERENCES clinical_events (org_id, encounter_id, patient_id) ON UPDATE CASCADE
) PARTITION BY LIST (org_id);
CREATE INDEX encounters_patient ON encounters (org_id, patient_id, clinical_time);
CREATE INDEX encounters_identifiers ON encounters USING gin (identifier_tokens);
CREATE INDEX encounters_time_brin ON encounters USING brin (clinical_time);
CREATE INDEX encounters_last_updated ON encounters (org_id, last_updated);

CREATE TABLE observations (
  org_id            integer NOT NULL,
  id                text NOT NULL,
  version_id        integer NOT NULL,
  last_updated      timestamptz NOT NULL,
  identifier_tokens text[] NOT NULL DEFAULT '{}',
  profiles          text[] NOT NULL DEFAULT '{}',
  tags              text[] NOT NULL DEFAULT '{}',
  resource          json NOT NULL,  -- json, not jsonb: the text is kept exactly as written
  clinical_time     timestamptz NOT NULL,
  patient_id        text,
  encounter_id      text,
  status            text,
  category_tokens   text[] NOT NULL DEFAULT '{}',
  code_tokens       text[] NOT NULL DEFAULT '{}',
  effective_start   timestamptz,
  effective_end     timestamptz,
  issued            timestamptz,
  value_quantity    numeric,
  value_unit        text,
  value_code_tokens text[] NOT NULL DEFAULT '{}',
  value_string      text,
  PRIMARY KEY (org_id, id, clinical_time),
  FOREIGN KEY (org_id, patient_id) REFERENCES patients (org_id, id),
  FOREIGN KEY (org_id, encounter_id, patient_id) REFERENCES clinical_events (org_id, encounter_id, patient_id)
) PARTITION BY LIST (org_id);
CREATE INDEX observations_patient ON observations (org_id, patient_id, clinical_time);
CREATE INDEX observations_encounter ON observations (org_id, encounter_id);
CREATE INDEX observations_code ON observations USING gin (code_tokens);
CREATE INDEX observations_identifiers ON observations USING gin (identifier_tokens);
CREATE INDEX observations_time_brin ON observations USING brin (clinical_time);
CREATE INDEX observations_last_updated ON observations (org_id, last_updated);

CREATE TABLE medication_statements (
  org_id            integer NOT NULL,
  id                text NOT NULL,
  version_id        integer NOT NULL,
  last_updated      timestamptz NOT NULL,
  identifier_tokens text[] NOT NULL DEFAULT '{}',
  profiles          text[] NOT NULL DEFAULT '{}',
  tags              text[] NOT NULL DEFAULT '{}',
  resource          json NOT NULL,  -- json, not jsonb: the text is kept exactly as written
  clinical_time     timestamptz NOT NULL,
  patient_id        text,
  encounter_id      text,
  status            text,
  category_tokens   text[] NOT NULL DEFAULT '{}',
  medication_tokens text[] NOT NULL DEFAULT '{}',
  medication_text   text,
  effective_start   timestamptz,
  effective_end     timestamptz,
  date_asserted     timestamptz,
  PRIMARY KEY (org_id, id, clinical_time),
  FOREIGN KEY (org_id, patient_id) REFERENCES patients (org_id, id),
  FOREIGN KEY (org_id, encounter_id, patient_id) REFERENCES clinical_events (org_id, encounter_id, patient_id)
) PARTITION BY LIST (org_id);
CREATE INDEX medication_statements_patient ON medication_statements (org_id, patient_id, clinical_time);
CREATE INDEX medication_statements_code ON medication_statements USING gin (medication_tokens);
CREATE INDEX medication_statements_identifiers ON medication_statements USING gin (identifier_tokens);
CREATE INDEX medication_statements_time_brin ON medication_statements USING brin (clinical_time);
CREATE INDEX medication_statements_last_updated ON medication_statements (org_id, last_updated);

-- AuditEvents are evidence: no foreign keys, so they never block a delete.
CREATE TABLE audit_events (
  org_id            integer NOT NULL,
  id                text NOT NULL,
  version_id        integer NOT NULL,
  last_updated      timestamptz NOT NULL,
  identifier_tokens text[] NOT NULL DEFAULT '{}',
  profiles          text[] NOT NULL DEFAULT '{}',
  tags              text[] NOT NULL DEFAULT '{}',
  resource          json NOT NULL,  -- json, not jsonb: the text is kept exactly as written
  clinical_time     timestamptz NOT NULL,
  type_token        text,
  subtype_tokens    text[] NOT NULL DEFAULT '{}',
  action            text,
  outcome           text,
  recorded          timestamptz,
  agent_who         text[] NOT NULL DEFAULT '{}',
  entity_what       text[] NOT NULL DEFAULT '{}',
  patient_id        text,
  source_observer   text,
  PRIMARY KEY (org_id, id, clinical_time)
) PARTITION BY LIST (org_id);
CREATE INDEX audit_events_patient ON audit_events (org_id, patient_id, clinical_time);
CREATE INDEX audit_events_entity ON audit_events USING gin (entity_what);
CREATE INDEX audit_events_time_brin ON audit_events USING brin (clinical_time);
CREATE INDEX audit_events_last_updated ON audit_events (org_id, last_updated);

-- Rows of an org that has no partitions yet still have somewhere to go.
CREATE TABLE patients_default PARTITION OF patients DEFAULT;
CREATE TABLE encounters_default PARTITION OF encounters DEFAULT;
CREATE TABLE observations_default PARTITION OF observations DEFAULT;
CREATE TABLE medication_statements_default PARTITION OF medication_statements DEFAULT;
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

-- Creates one RANGE sub-partition [lo, hi) of an org's partition, moving any rows
-- that already landed in that org's DEFAULT sub-partition so ATTACH can succeed.
CREATE FUNCTION kiln_ensure_range_partition(p_table text, p_org integer, p_lo timestamptz, p_hi timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  org_part text := format('%s_o%s', p_table, p_org);
  part     text := format('%s_o%s_%s', p_table, p_org, to_char(p_lo AT TIME ZONE 'UTC', 'YYYYMMDD'));
BEGIN
  IF to_regclass(part) IS NOT NULL THEN
    RETURN;
  END IF;
  EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, p_table);
  EXECUTE format('WITH moved AS (DELETE FROM %I WHERE clinical_time >= $1 AND clinical_time < $2 RETURNING *) INSERT INTO %I SELECT * FROM moved',
                 org_part || '_default', part) USING p_lo, p_hi;
  EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', org_part, part, p_lo, p_hi);
END $$;

-- Gives an org its own LIST partitions (each RANGE-partitioned with a DEFAULT),
-- moving rows that were in the shared DEFAULT partitions.
CREATE FUNCTION kiln_create_org_partitions(p_org integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  t text;
  org_part text;
BEGIN
  IF to_regclass(format('patients_o%s', p_org)) IS NULL THEN
    EXECUTE format('CREATE TABLE %I (LIKE patients INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', 'patients_o' || p_org);
    EXECUTE format('WITH moved AS (DELETE FROM patients_default WHERE org_id = $1 RETURNING *) INSERT INTO %I SELECT * FROM moved', 'patients_o' || p_org) USING p_org;
    EXECUTE format('ALTER TABLE patients ATTACH PARTITION %I FOR VALUES IN (%s)', 'patients_o' || p_org, p_org);
  END IF;
  FOREACH t IN ARRAY ARRAY['encounters', 'observations', 'medication_statements', 'audit_events'] LOOP
    org_part := format('%s_o%s', t, p_org);
    IF to_regclass(org_part) IS NULL THEN
      EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (clinical_time)', org_part, t);
      EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', org_part || '_default', org_part);
      EXECUTE format('WITH moved AS (DELETE FROM %I WHERE org_id = $1 RETURNING *) INSERT INTO %I SELECT * FROM moved', t || '_default', org_part) USING p_org;
      EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES IN (%s)', t, org_part, p_org);
    END IF;
  END LOOP;
END $$;

-- Monthly partitions for clinical tables and weekly ones for audit, from
-- p_months_back months ago to p_months_ahead months ahead.
CREATE FUNCTION kiln_ensure_time_partitions(p_org integer, p_months_back integer, p_months_ahead integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  t text;
  m timestamptz;
  w timestamptz;
  start_month timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - make_interval(months => p_months_back);
  end_month   timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + make_interval(months => p_months_ahead + 1);
BEGIN
  PERFORM kiln_create_org_partitions(p_org);
  FOREACH t IN ARRAY ARRAY['encounters', 'observations', 'medication_statements'] LOOP
    m := start_month;
    WHILE m < end_month LOOP
      PERFORM kiln_ensure_range_partition(t, p_org, m, m + interval '1 month');
      m := m + interval '1 month';
    END LOOP;
  END LOOP;
  w := date_trunc('week', start_month AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
  WHILE w < end_month LOOP
    PERFORM kiln_ensure_range_partition('audit_events', p_org, w, w + interval '1 week');
    w := w + interval '1 week';
  END LOOP;
END $$;

-- The app role's password is generated at start (never stored in the repo).
CREATE FUNCTION kiln_set_app_password(p_password text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('ALTER ROLE kiln_app LOGIN PASSWORD %L', p_password);
END $$;

-- Tenant isolation: every tenant table is filtered by the transaction's app.org_id.
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['resource_ids', 'resource_history', 'clinical_events', 'patients', 'encounters',
                           'observations', 'medication_statements', 'audit_events'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %I TO kiln_app
                      USING (org_id = nullif(current_setting('app.org_id', true), '')::integer)
                      WITH CHECK (org_id = nullif(current_setting('app.org_id', true), '')::integer)$p$, t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO kiln_app', t);
  END LOOP;
END $$;
GRANT SELECT ON organizations TO kiln_app;
