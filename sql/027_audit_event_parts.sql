-- The AuditEvents the server records are stored as a part and a detail (issue 5).
-- Every access writes one, and about 1,100 of an event's 1,600-1,900 bytes of JSON are
-- the same for every access of one kind by one token at one address: the interaction's
-- codes, the agents, the source. Storing them in each row cost the audit backend pglz
-- compression, json_in's parse and the WAL and pages of 2 KB rows: about a third of the
-- insert (docs/authorization.md). Now:
--   audit_event_parts  one row per distinct part, its JSON text: the members
--                      `"type":..,"subtype":..,"action":..,"outcome":..,"agent":[..],"source":{..}`;
--                      its id is a hash of the text (src/audit/eventText.ts), so the server
--                      names a part without asking, and inserting it twice is a no-op;
--   audit_events.part, .detail  the part's id and the event's own members, from
--                      `,"recorded":` to its meta's lastUpdated, closed by the insert.
-- audit_event_resources renders the JSON: '{"resourceType":"AuditEvent",' || part || detail.
-- Events sent whole (a client's create, an older server's queue) keep `resource`, as do
-- all rows stored before this migration. The search keys stay in the row (sql/021).
CREATE TABLE audit_event_parts (
  org_id integer NOT NULL REFERENCES organizations (id),
  id text NOT NULL,
  json text NOT NULL,
  PRIMARY KEY (org_id, id)
);
ALTER TABLE audit_event_parts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_event_parts TO kiln_app
  USING (org_id = nullif(current_setting('app.org_id', true), '')::integer)
  WITH CHECK (org_id = nullif(current_setting('app.org_id', true), '')::integer);
-- Parts are evidence as the events are (016): recorded and read, never changed.
GRANT SELECT, INSERT ON audit_event_parts TO kiln_app;
CREATE TRIGGER audit_event_parts_immutable BEFORE UPDATE OR DELETE ON audit_event_parts
  FOR EACH ROW EXECUTE FUNCTION kiln_refuse_audit_change();

ALTER TABLE audit_events
  ADD COLUMN part text,
  ADD COLUMN detail text,
  ALTER COLUMN resource DROP NOT NULL,
  -- Whole, or part and detail. (Every insert statement parses its table's CHECK
  -- expressions again, so this one is kept small.)
  ADD CONSTRAINT audit_events_whole_or_parted CHECK (num_nonnulls(resource, detail) = 1 AND (part IS NULL) = (detail IS NULL));

-- The events as FHIR JSON text, for every read of them (src/store: TABLES.AuditEvent).
-- security_invoker: kiln_app reads through it under its own RLS. A query that does not
-- name `resource` (a count, a key filter) loses the join: the parts' key is unique.
CREATE VIEW audit_event_resources WITH (security_invoker = true) AS
  SELECT a.org_id, a.id, a.version_id, a.last_updated, a.clinical_time, a.ref_keys, a.token_keys,
         coalesce(a.resource::text, '{"resourceType":"AuditEvent",' || p.json || a.detail) AS resource
    FROM audit_events a
    LEFT JOIN audit_event_parts p ON p.org_id = a.org_id AND p.id = a.part;
GRANT SELECT ON audit_event_resources TO kiln_app;

-- The insert (026) with parts. p_parts: parts to store first, one per line joined by
-- U+001E, `id U+001F json` (JSON text holds no control character). p_rows gains a sixth
-- field, the event's part id, empty for an event sent whole; its p_bodies line is then
-- its detail up to its lastUpdated's value, which the insert closes: with the stamp when
-- p_stamp, else with the row's own lastUpdated. A detail is not parsed here: the server
-- assembles it from JSON.stringify'd values (test/auditEventKeys.test.ts parses the whole).
-- A whole event is parsed (json) and never stamped: its text would not show the stamp.
-- Parts are not looked up here: there is no foreign key (its check would lock the part's
-- row for every event), and a per-batch lookup of the batch's parts cost 12 % of a
-- one-event batch. The writer sends every part it has not stored itself over its current
-- connection (src/audit/writer.ts), and parts are never removed (016's trigger).
DROP FUNCTION kiln_insert_audit_events(integer, text, text, boolean);
-- Assignments, not PERFORM, for set_config and pg_current_xact_id: a PERFORM is a
-- statement of its own (4.6 µs against 1.1 µs in a loop).
CREATE FUNCTION kiln_insert_audit_events(p_org integer, p_parts text, p_rows text, p_bodies text, p_stamp boolean) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
  t text;
  ignored text;
BEGIN
  ignored := set_config('app.org_id', p_org::text, true);
  IF p_parts <> '' THEN
    INSERT INTO audit_event_parts (org_id, id, json)
    SELECT p_org, v.f[1], v.f[2] FROM (SELECT string_to_array(l, chr(31)) AS f FROM unnest(string_to_array(p_parts, chr(30))) AS l) AS v
    ON CONFLICT DO NOTHING;
  END IF;
  IF p_rows = '' THEN RETURN; END IF;
  IF p_stamp THEN
    ignored := pg_current_xact_id();
    t := to_char(date_trunc('milliseconds', clock_timestamp()) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
  END IF;
  INSERT INTO audit_events (org_id, id, version_id, last_updated, clinical_time, resource, part, detail, ref_keys, token_keys)
  SELECT p_org, u.f[1], 1, coalesce(t, u.f[2])::timestamptz, u.f[3]::timestamptz,
         CASE WHEN u.f[6] <> '' THEN NULL WHEN t IS NULL THEN u.b::json ELSE kiln_unexpected_audit_text(u.f[1])::json END,
         nullif(u.f[6], ''),
         CASE WHEN u.f[6] <> '' THEN u.b || coalesce(t, u.f[2]) || '"}}' END,
         string_to_array(u.f[4], chr(29)), string_to_array(u.f[5], chr(29))
    FROM (SELECT string_to_array(v.r, chr(31)) AS f, v.b
            FROM unnest(string_to_array(p_rows, chr(30)), string_to_array(p_bodies, chr(30))) AS v(r, b)) AS u;
END $$;
GRANT EXECUTE ON FUNCTION kiln_insert_audit_events(integer, text, text, text, boolean) TO kiln_app;
CREATE OR REPLACE FUNCTION kiln_unexpected_audit_text(p_id text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'AuditEvent % is sent whole and cannot be stamped: its text would not show the stamp', p_id;
END $$;

-- A read by id (025), rendered.
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
    lo := t - interval '1 hour';
    hi := t + interval '1 hour';
    SELECT 1, false, to_char(a.last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), a.resource
      INTO version_id, deleted, last_updated, body
      FROM audit_event_resources a
     WHERE a.org_id = p_org AND a.id = p_id AND a.clinical_time >= lo AND a.clinical_time < hi;
    IF FOUND THEN RETURN; END IF;
  END IF;
  SELECT 1, false, to_char(a.last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), a.resource
    INTO version_id, deleted, last_updated, body
    FROM audit_event_resources a WHERE a.org_id = p_org AND a.id = p_id;
END $$;
