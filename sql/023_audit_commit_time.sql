-- The group commit (src/audit/writer.ts) builds a read's AuditEvent, lastUpdated included,
-- before its batch's transaction exists. An export's transaction time T
-- (src/store/exportRows.ts committedTransactionTime) counts on every write with
-- lastUpdated <= T having committed by the time T is handed out, which holds for a time
-- taken after the writing transaction has its id: an event stamped in the server and
-- committed a few milliseconds later, after T was handed out, fell below T yet outside
-- that export, and outside every incremental export from T.
-- p_stamp: the events take their lastUpdated here, once the transaction has its id, and
-- their JSON (the server's own, holding "lastUpdated" once, in its meta) shows it.
-- replace() compares bytes; substring and overlay count characters from the start of
-- the text and cost a 1.6 KB event about 15 µs more. Without p_stamp the given
-- lastUpdated stands (a write's or a client's create, taken inside the transaction).
DROP FUNCTION kiln_insert_audit_events(integer, text, text);
CREATE FUNCTION kiln_insert_audit_events(p_org integer, p_rows text, p_bodies text, p_stamp boolean) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  t text;
BEGIN
  PERFORM set_config('app.org_id', p_org::text, true);
  IF p_stamp THEN
    PERFORM pg_current_xact_id();
    t := to_char(date_trunc('milliseconds', clock_timestamp()) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
  END IF;
  INSERT INTO audit_events (org_id, id, version_id, last_updated, clinical_time, resource, ref_keys, token_keys)
  SELECT p_org, u.r->>0, 1, coalesce(t, u.r->>1)::timestamptz, (u.r->>2)::timestamptz,
         (CASE WHEN t IS NULL THEN u.b
               WHEN strpos(u.b, '"lastUpdated":"' || (u.r->>1) || '"') > 0
               THEN replace(u.b, '"lastUpdated":"' || (u.r->>1) || '"', '"lastUpdated":"' || t || '"')
               ELSE kiln_unexpected_audit_text(u.r->>0) END)::json,
         ARRAY(SELECT jsonb_array_elements_text(u.r->3)), ARRAY(SELECT jsonb_array_elements_text(u.r->4))
    FROM unnest(ARRAY(SELECT jsonb_array_elements(p_rows::jsonb)), string_to_array(p_bodies, chr(30))) AS u(r, b);
END $$;
-- A server event whose text does not hold its lastUpdated is a bug: the batch fails (500)
-- rather than storing a lastUpdated the JSON does not show.
CREATE FUNCTION kiln_unexpected_audit_text(p_id text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'AuditEvent % to be stamped does not hold its lastUpdated', p_id;
END $$;
GRANT EXECUTE ON FUNCTION kiln_insert_audit_events(integer, text, text, boolean) TO kiln_app;
GRANT EXECUTE ON FUNCTION kiln_unexpected_audit_text(text) TO kiln_app;
-- As 022: the plan does not depend on the values.
ALTER FUNCTION kiln_insert_audit_events(integer, text, text, boolean) SET plan_cache_mode = force_generic_plan;
