-- kiln_insert_audit_events (023) took each event's id, times and keys as a JSON array:
-- parsing it as jsonb and expanding the key arrays through two subqueries per row, and
-- the strpos() check before replace() (strpos counts characters up to the match), cost
-- about a sixth of the insert. The same fields now come as text split on control
-- characters that JSON text cannot hold and keys do not (src/store/auditWrite.ts
-- replaces them in keys): p_rows holds one line per event, joined by U+001E, of
--   id U+001F last_updated U+001F clinical_time U+001F ref_keys U+001F token_keys
-- with each key list joined by U+001D. p_bodies, p_stamp: as in 023. A stamped text that
-- replace() left as it was does not hold its lastUpdated (unless the stamp is that same
-- millisecond): a bug, refused as before.
CREATE OR REPLACE FUNCTION kiln_insert_audit_events(p_org integer, p_rows text, p_bodies text, p_stamp boolean) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
  t text;
BEGIN
  PERFORM set_config('app.org_id', p_org::text, true);
  IF p_stamp THEN
    PERFORM pg_current_xact_id();
    t := to_char(date_trunc('milliseconds', clock_timestamp()) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
  END IF;
  INSERT INTO audit_events (org_id, id, version_id, last_updated, clinical_time, resource, ref_keys, token_keys)
  SELECT p_org, u.f[1], 1, coalesce(t, u.f[2])::timestamptz, u.f[3]::timestamptz,
         (CASE WHEN t IS NULL THEN u.b
               ELSE (SELECT CASE WHEN x <> u.b OR t = u.f[2] THEN x ELSE kiln_unexpected_audit_text(u.f[1]) END
                       FROM replace(u.b, '"lastUpdated":"' || u.f[2] || '"', '"lastUpdated":"' || t || '"') AS x) END)::json,
         string_to_array(u.f[4], chr(29)), string_to_array(u.f[5], chr(29))
    FROM (SELECT string_to_array(v.r, chr(31)) AS f, v.b
            FROM unnest(string_to_array(p_rows, chr(30)), string_to_array(p_bodies, chr(30))) AS v(r, b)) AS u;
END $$;
