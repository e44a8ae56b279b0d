-- A read of an AuditEvent by id (021 kiln_read_audit_event) probed the primary key of
-- every weekly partition of the tenant: 72 at start, and 52 more each year. Its id is a
-- UUIDv7 (src/store/auditWrite.ts timeOrderedId): its first 48 bits are the millisecond it
-- was made, and a server-made event is recorded (its partition time) within a millisecond
-- of that. So the partitions of the hour around the id's time are probed first, and all of
-- them only when the id is not a UUIDv7 or the event is not there (a client's own
-- AuditEvent keeps the `recorded` it was sent with, which may be any time; an unknown id).
CREATE OR REPLACE FUNCTION kiln_read_audit_event(p_org integer, p_id text,
                          OUT version_id integer, OUT deleted boolean, OUT last_updated text, OUT body text)
RETURNS record LANGUAGE plpgsql AS $$
DECLARE
  t timestamptz;
  lo timestamptz;
  hi timestamptz;
BEGIN
  PERFORM set_config('app.org_id', p_org::text, true);
  IF p_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
    t := to_timestamp(('x' || lpad(left(replace(p_id, '-', ''), 12), 16, '0'))::bit(64)::bigint / 1000.0);
    -- Bounds as values: `t - interval` in the statement is only stable, so the planner
    -- would keep every partition in the plan and prune them at run time.
    lo := t - interval '1 hour';
    hi := t + interval '1 hour';
    SELECT 1, false, to_char(a.last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), a.resource::text
      INTO version_id, deleted, last_updated, body
      FROM audit_events a
     WHERE a.org_id = p_org AND a.id = p_id AND a.clinical_time >= lo AND a.clinical_time < hi;
    IF FOUND THEN RETURN; END IF;
  END IF;
  SELECT 1, false, to_char(a.last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), a.resource::text
    INTO version_id, deleted, last_updated, body
    FROM audit_events a WHERE a.org_id = p_org AND a.id = p_id;
END $$;
