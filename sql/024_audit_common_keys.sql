-- Whether the bound tenant's AuditEvents holding any of p_keys are common, by the
-- planner's own estimate (the column's most-common-element statistics): a search uses it
-- to choose how to find such rows (src/store/searchRun.ts searchKeyForms).
-- kiln_audit_events_with_keys (021) returns every matching row, so the search joins each
-- back and sorts them all to keep a page: 280 ms for the latest 10 of a client's 25,000
-- events in 500,000 (bench:audit-search). For a common key the search instead walks its
-- sort order and checks `ref_keys` on each row (RLS allows `&&` as a filter), stopping at
-- a page. Walking costs about page / selectivity rows, the index form about one join per
-- match; they cross near 2 × sqrt(events) matches, the threshold here (at least 1,000).
-- An estimate costs a plan, not a scan: counting the matches would cost as much as the
-- index form itself for the keys that matter. Runs as the owner (no RLS) and applies the
-- tenant bound to the transaction itself. VOLATILE: PostgreSQL runs EXPLAIN only there.
CREATE FUNCTION kiln_audit_keys_common(p_keys text[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  org integer := current_setting('app.org_id')::integer;
  events float8;
  plan json;
BEGIN
  SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) INTO events
    FROM pg_partition_tree(to_regclass(format('public.audit_events_o%s', org))) t
    JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf;
  EXECUTE 'EXPLAIN (FORMAT JSON) SELECT 1 FROM public.audit_events a WHERE a.org_id = $1 AND a.ref_keys && $2'
    INTO plan USING org, p_keys;
  RETURN (plan->0->'Plan'->>'Plan Rows')::float8 >= greatest(1000, 2 * sqrt(events));
END $$;
REVOKE ALL ON FUNCTION kiln_audit_keys_common(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kiln_audit_keys_common(text[]) TO kiln_app;
