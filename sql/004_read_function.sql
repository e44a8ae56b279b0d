-- A read in one round trip: binds the tenant for this statement's transaction,
-- finds the locator row, then fetches the current row from exactly one partition
-- (the clinical time is a plan-time constant of the dynamic statement).
CREATE FUNCTION kiln_read(p_org integer, p_type text, p_table text, p_id text,
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
  IF t IS NULL THEN
    EXECUTE format('SELECT resource::text FROM %I WHERE org_id = $1 AND id = $2', p_table) INTO body USING p_org, p_id;
  ELSE
    EXECUTE format('SELECT resource::text FROM %I WHERE org_id = $1 AND id = $2 AND clinical_time = $3', p_table) INTO body USING p_org, p_id, t;
  END IF;
END $$;
GRANT EXECUTE ON FUNCTION kiln_read(integer, text, text, text) TO kiln_app;
