-- Every R4 type Kiln has no table of its own for (Organization, Practitioner, Condition,
-- ..., conformance resources too) lives in one generic table keyed (org_id, resource_type,
-- id), LIST-partitioned by tenant like the first-class tables, with RLS, and written
-- through the same locator (resource_ids) and history (resource_history). One table, not
-- one per type: ~140 types times every tenant's partitions would put the partition count,
-- and planning time, out of reach. No clinical-time sub-partitions (docs/storage.md).
--
-- The partitioned tables are listed once, in the catalog kiln_partitioned_tables, which
-- the partition functions below read instead of array literals of their own.

CREATE TABLE kiln_partitioned_tables (
  table_name text PRIMARY KEY,
  -- RANGE sub-partitions on clinical_time of each tenant partition: 'month', 'week', or
  -- NULL for a table partitioned by tenant only.
  time_interval text CHECK (time_interval IN ('month', 'week'))
);
INSERT INTO kiln_partitioned_tables (table_name, time_interval) VALUES
  ('patients', NULL),
  ('encounters', 'month'),
  ('observations', 'month'),
  ('medication_statements', 'month'),
  ('audit_events', 'week'),
  ('resources', NULL);

CREATE TABLE resources (
  org_id            integer NOT NULL,
  resource_type     text NOT NULL,
  id                text NOT NULL,
  version_id        integer NOT NULL,
  last_updated      timestamptz NOT NULL,
  identifier_tokens text[] NOT NULL DEFAULT '{}',
  profiles          text[] NOT NULL DEFAULT '{}',
  tags              text[] NOT NULL DEFAULT '{}',
  resource          json NOT NULL,  -- json, not jsonb: the text is kept exactly as written
  PRIMARY KEY (org_id, resource_type, id)
) PARTITION BY LIST (org_id);
CREATE INDEX resources_last_updated ON resources (org_id, resource_type, last_updated);
CREATE TABLE resources_default PARTITION OF resources DEFAULT;
SELECT kiln_tenant_table('resources', 'SELECT, INSERT, UPDATE, DELETE');

-- A tenant's LIST partitions of every catalogued table (RANGE-partitioned with a DEFAULT
-- where the catalog says so), moving its rows out of the shared DEFAULT partitions, then
-- its search index partitions.
CREATE OR REPLACE FUNCTION kiln_create_org_partitions(p_org integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  c record;
  org_part text;
BEGIN
  FOR c IN SELECT table_name, time_interval FROM kiln_partitioned_tables ORDER BY table_name LOOP
    org_part := format('%s_o%s', c.table_name, p_org);
    CONTINUE WHEN to_regclass(org_part) IS NOT NULL;
    IF c.time_interval IS NULL THEN
      EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', org_part, c.table_name);
    ELSE
      EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (clinical_time)', org_part, c.table_name);
      EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', org_part || '_default', org_part);
    END IF;
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE org_id = $1 RETURNING *) INSERT INTO %I SELECT * FROM moved',
                   c.table_name || '_default', org_part) USING p_org;
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES IN (%s)', c.table_name, org_part, p_org);
  END LOOP;
  PERFORM kiln_create_org_index_partitions(p_org);
END $$;

-- Monthly (weekly) partitions of the time-partitioned tables, from p_months_back months ago
-- to p_months_ahead months ahead.
CREATE OR REPLACE FUNCTION kiln_ensure_time_partitions(p_org integer, p_months_back integer, p_months_ahead integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  c record;
  lo timestamptz;
  step interval;
  start_month timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - make_interval(months => p_months_back);
  end_month   timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + make_interval(months => p_months_ahead + 1);
BEGIN
  PERFORM kiln_create_org_partitions(p_org);
  FOR c IN SELECT table_name, time_interval FROM kiln_partitioned_tables WHERE time_interval IS NOT NULL ORDER BY table_name LOOP
    step := ('1 ' || c.time_interval)::interval;
    lo := date_trunc(c.time_interval, start_month AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    WHILE lo < end_month LOOP
      PERFORM kiln_ensure_range_partition(c.table_name, p_org, lo, lo + step);
      lo := lo + step;
    END LOOP;
  END LOOP;
END $$;

-- Gives each month (week) found in a tenant's DEFAULT sub-partitions its own partition.
CREATE OR REPLACE FUNCTION kiln_split_default_partitions(p_org integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  c record;
  lo timestamptz;
BEGIN
  FOR c IN SELECT table_name, time_interval FROM kiln_partitioned_tables WHERE time_interval IS NOT NULL ORDER BY table_name LOOP
    FOR lo IN EXECUTE format($q$SELECT DISTINCT date_trunc(%L, clinical_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' FROM %I$q$,
                             c.time_interval, format('%s_o%s_default', c.table_name, p_org)) LOOP
      PERFORM kiln_ensure_range_partition(c.table_name, p_org, lo, lo + ('1 ' || c.time_interval)::interval);
    END LOOP;
  END LOOP;
END $$;

-- kiln_read for the generic table too: its key carries the type.
CREATE OR REPLACE FUNCTION kiln_read(p_org integer, p_type text, p_table text, p_id text,
                          OUT version_id integer, OUT deleted boolean, OUT last_updated text, OUT body text)
RETURNS record LANGUAGE plpgsql AS $$
DECLARE
  t timestamptz;
BEGIN
  PERFORM set_config('app.org_id', p_org::text, true);
  SELECT l.version_id, l.deleted, to_char(l.last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), l.clinical_time
    INTO version_id, deleted, last_updated, t
    FROM resource_ids l
   WHERE l.org_id = p_org AND l.resource_type = p_type AND l.id = p_id AND l.version_id > 0;
  IF NOT FOUND OR deleted THEN
    RETURN;
  END IF;
  IF p_table = 'resources' THEN
    SELECT r.resource::text INTO body FROM resources r WHERE r.org_id = p_org AND r.resource_type = p_type AND r.id = p_id;
  ELSIF t IS NULL THEN
    EXECUTE format('SELECT resource::text FROM %I WHERE org_id = $1 AND id = $2', p_table) INTO body USING p_org, p_id;
  ELSE
    EXECUTE format('SELECT resource::text FROM %I WHERE org_id = $1 AND id = $2 AND clinical_time = $3', p_table) INTO body USING p_org, p_id, t;
  END IF;
END $$;

-- Existing tenants get their partitions of the new table.
DO $$
DECLARE
  o integer;
BEGIN
  FOR o IN SELECT id FROM organizations LOOP
    PERFORM kiln_create_org_partitions(o);
  END LOOP;
END $$;
