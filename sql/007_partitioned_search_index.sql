-- Search index tables, second shape:
-- * LIST-partitioned by org like the resource tables (a tenant's index is its own
--   set of tables and indexes; a DEFAULT partition catches orgs made elsewhere).
-- * Each row carries its resource's partition key (clinical_time, NULL for Patient),
--   so a join from index rows to a time-partitioned table probes one monthly
--   partition per match instead of every one of the tenant's partitions.
-- * Value indexes INCLUDE (id, clinical_time): the side of a search that finds the
--   matches is an index-only scan. Token and reference indexes have id as the key
--   after the code / target, so one code's or one target's rows come out in id order
--   and an unsorted page can stop after _count matches (src/store/searchRun.ts).

CREATE FUNCTION kiln_create_org_index_partitions(p_org integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  t text;
  part text;
BEGIN
  FOREACH t IN ARRAY ARRAY['search_tokens', 'search_strings', 'search_dates', 'search_references',
                           'search_quantities', 'search_numbers', 'search_uris', 'search_composites'] LOOP
    part := format('%s_o%s', t, p_org);
    IF to_regclass(part) IS NULL THEN
      EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', part, t);
      EXECUTE format('WITH moved AS (DELETE FROM %I WHERE org_id = $1 RETURNING *) INSERT INTO %I SELECT * FROM moved', t || '_default', part) USING p_org;
      EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES IN (%s)', t, part, p_org);
    END IF;
  END LOOP;
END $$;

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['search_tokens', 'search_strings', 'search_dates', 'search_references',
                           'search_quantities', 'search_numbers', 'search_uris', 'search_composites'] LOOP
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS) PARTITION BY LIST (org_id)', t || '_p', t);
    EXECUTE format('ALTER TABLE %I ADD COLUMN clinical_time timestamptz', t || '_p');
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', t || '_default', t || '_p');
    EXECUTE format('INSERT INTO %I SELECT s.*, i.clinical_time FROM %I s
                      LEFT JOIN resource_ids i USING (org_id, resource_type, id)', t || '_p', t);
    EXECUTE format('DROP TABLE %I', t);
    EXECUTE format('ALTER TABLE %I RENAME TO %I', t || '_p', t);
  END LOOP;
END $$;

CREATE INDEX search_tokens_value ON search_tokens (param, org_id, resource_type, code, id) INCLUDE (system, clinical_time);
CREATE INDEX search_tokens_resource ON search_tokens (org_id, resource_type, id);
CREATE INDEX search_strings_value ON search_strings (param, org_id, resource_type, value text_pattern_ops) INCLUDE (id, clinical_time);
CREATE INDEX search_strings_resource ON search_strings (org_id, resource_type, id);
CREATE INDEX search_dates_value ON search_dates (param, org_id, resource_type, lo, hi) INCLUDE (id, clinical_time);
CREATE INDEX search_dates_resource ON search_dates (org_id, resource_type, id);
CREATE INDEX search_references_value ON search_references (param, org_id, resource_type, target_id, id) INCLUDE (target_type, clinical_time);
CREATE INDEX search_references_target ON search_references (target_id, org_id, target_type);
CREATE INDEX search_references_resource ON search_references (org_id, resource_type, id);
CREATE INDEX search_quantities_value ON search_quantities (param, org_id, resource_type, value) INCLUDE (id, clinical_time, system, code);
CREATE INDEX search_quantities_resource ON search_quantities (org_id, resource_type, id);
CREATE INDEX search_numbers_value ON search_numbers (param, org_id, resource_type, value) INCLUDE (id, clinical_time);
CREATE INDEX search_numbers_resource ON search_numbers (org_id, resource_type, id);
CREATE INDEX search_uris_value ON search_uris (param, org_id, resource_type, value text_pattern_ops) INCLUDE (id, clinical_time);
CREATE INDEX search_uris_resource ON search_uris (org_id, resource_type, id);
CREATE INDEX search_composites_value ON search_composites USING gin (parts jsonb_path_ops);
CREATE INDEX search_composites_resource ON search_composites (org_id, resource_type, id);

-- Tenant isolation for a table: RLS on app.org_id, and the request role's privileges.
-- (001 and 005 spelled this out per table; later migrations call this instead.)
CREATE FUNCTION kiln_tenant_table(p_table text, p_privileges text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', p_table);
  EXECUTE format($p$CREATE POLICY tenant_isolation ON %I TO kiln_app
                    USING (org_id = nullif(current_setting('app.org_id', true), '')::integer)
                    WITH CHECK (org_id = nullif(current_setting('app.org_id', true), '')::integer)$p$, p_table);
  EXECUTE format('GRANT %s ON %I TO kiln_app', p_privileges, p_table);
END $$;

DO $$
DECLARE
  t text;
  o integer;
BEGIN
  FOREACH t IN ARRAY ARRAY['search_tokens', 'search_strings', 'search_dates', 'search_references',
                           'search_quantities', 'search_numbers', 'search_uris', 'search_composites'] LOOP
    PERFORM kiln_tenant_table(t, 'SELECT, INSERT, DELETE');
  END LOOP;
  FOR o IN SELECT id FROM organizations LOOP
    PERFORM kiln_create_org_index_partitions(o);
  END LOOP;
END $$;

-- New tenants get their index partitions with their resource partitions.
CREATE OR REPLACE FUNCTION kiln_create_org_partitions(p_org integer)
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
  PERFORM kiln_create_org_index_partitions(p_org);
END $$;

-- Rows older (or later) than the pre-made partitions land in an org's DEFAULT
-- sub-partition, where every search would scan them. This gives each month (week,
-- for audit) found there its own partition, moving the rows.
CREATE FUNCTION kiln_split_default_partitions(p_org integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  t text;
  lo timestamptz;
BEGIN
  FOREACH t IN ARRAY ARRAY['encounters', 'observations', 'medication_statements'] LOOP
    FOR lo IN EXECUTE format($q$SELECT DISTINCT date_trunc('month', clinical_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' FROM %I$q$,
                             format('%s_o%s_default', t, p_org)) LOOP
      PERFORM kiln_ensure_range_partition(t, p_org, lo, lo + interval '1 month');
    END LOOP;
  END LOOP;
  FOR lo IN EXECUTE format($q$SELECT DISTINCT date_trunc('week', clinical_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' FROM %I$q$,
                           format('audit_events_o%s_default', p_org)) LOOP
    PERFORM kiln_ensure_range_partition('audit_events', p_org, lo, lo + interval '1 week');
  END LOOP;
END $$;
