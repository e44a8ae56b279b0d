-- AuditEvents are stored as one row each (issue 5). Every access writes one, and as a
-- generic resource it cost a locator row, a history version carrying the body again and
-- eight search-index rows: four times the row itself. They are immutable (016), so they
-- need neither a locator (the lock and version pointer of updates) nor history (one
-- version), and their search index fits in the row as two key arrays, filled from the
-- same extraction as the index tables (mappings/search/rowKeys.ts):
--   ref_keys    references and agent/entity identifiers: selective, GIN-indexed;
--   token_keys  type, subtype, action, outcome codes and presence keys: shared by most
--               rows, so not indexed (an index would cost every insert and serve no
--               selective search; they filter rows found by date, patient, agent or entity).
-- The `date` parameter (recorded) is clinical_time, the partition key.
ALTER TABLE audit_events
  ADD COLUMN ref_keys text[] NOT NULL DEFAULT '{}',
  ADD COLUMN token_keys text[] NOT NULL DEFAULT '{}';

-- Existing AuditEvents: their keys from their index rows (the forms rowKeys() writes).
WITH keyed AS (
  SELECT org_id, id,
         array_agg(DISTINCT k) FILTER (WHERE indexed) AS ref_keys,
         array_agg(DISTINCT k) FILTER (WHERE NOT indexed) AS token_keys
    FROM (
      SELECT t.org_id, t.id, k.k, k.indexed
        FROM search_tokens t
       CROSS JOIN LATERAL (VALUES
         (t.param || '=' || coalesce(t.system, '') || '|' || t.code, t.param LIKE '%:identifier'),
         (t.param || '#' || t.code, t.param LIKE '%:identifier'),
         (t.param || '?', false)) AS k(k, indexed)
       WHERE t.resource_type = 'AuditEvent' AND t.code IS NOT NULL
      UNION ALL
      SELECT r.org_id, r.id, k.k, k.indexed
        FROM search_references r
       CROSS JOIN LATERAL (VALUES
         (r.param || '>' || CASE WHEN r.target_type IS NOT NULL AND r.target_id IS NOT NULL THEN r.target_type || '/' || r.target_id ELSE r.reference END, true),
         (CASE WHEN r.target_type IS NOT NULL AND r.target_id IS NOT NULL THEN r.param || '>' || r.target_type || '/' END, false),
         (r.param || '?', false)) AS k(k, indexed)
       WHERE r.resource_type = 'AuditEvent' AND k.k IS NOT NULL
    ) keys
   GROUP BY org_id, id)
UPDATE audit_events a
   SET ref_keys = coalesce(keyed.ref_keys, '{}'), token_keys = coalesce(keyed.token_keys, '{}')
  FROM keyed
 WHERE a.org_id = keyed.org_id AND a.id = keyed.id;

-- Their index rows, versions and locator rows go (the owner may: kiln_refuse_audit_change),
-- and the locator and history refuse AuditEvent rows from now on: there is one way to store one.
DELETE FROM search_tokens WHERE resource_type = 'AuditEvent';
DELETE FROM search_strings WHERE resource_type = 'AuditEvent';
DELETE FROM search_dates WHERE resource_type = 'AuditEvent';
DELETE FROM search_references WHERE resource_type = 'AuditEvent';
DELETE FROM search_quantities WHERE resource_type = 'AuditEvent';
DELETE FROM search_numbers WHERE resource_type = 'AuditEvent';
DELETE FROM search_uris WHERE resource_type = 'AuditEvent';
DELETE FROM search_composites WHERE resource_type = 'AuditEvent';
DELETE FROM resource_history WHERE resource_type = 'AuditEvent';
DELETE FROM resource_ids WHERE resource_type = 'AuditEvent';
DROP TRIGGER resource_history_audit_immutable ON resource_history;
DROP TRIGGER resource_ids_audit_immutable ON resource_ids;
ALTER TABLE resource_ids ADD CONSTRAINT resource_ids_not_audit CHECK (resource_type <> 'AuditEvent');
ALTER TABLE resource_history ADD CONSTRAINT resource_history_not_audit CHECK (resource_type <> 'AuditEvent');

-- Columns the keys replace (and the identifier, profile and tag tokens AuditEvents are not
-- searched by). patient_id held the first patient only: a patient-level export now finds
-- an event by any patient it names, through the keys (src/store/exportRows.ts).
ALTER TABLE audit_events
  DROP COLUMN identifier_tokens, DROP COLUMN profiles, DROP COLUMN tags, DROP COLUMN patient_id, DROP COLUMN type_token, DROP COLUMN subtype_tokens, DROP COLUMN action, DROP COLUMN outcome,
  DROP COLUMN recorded, DROP COLUMN agent_who, DROP COLUMN entity_what, DROP COLUMN source_observer;

CREATE INDEX audit_events_ref_keys ON audit_events USING gin (ref_keys);
-- The common audit query is the latest events (`_sort=-date`, often with a date range):
-- a btree on the time serves it in order; the BRIN index could only narrow a scan.
CREATE INDEX audit_events_time ON audit_events (org_id, clinical_time);
DROP INDEX audit_events_time_brin;
-- (Dropping patient_id dropped its index, audit_events_patient.)

-- The AuditEvents of the bound tenant that hold any of p_keys in ref_keys. Under RLS the
-- planner may not use an index for `&&`, which is not marked leakproof, so kiln_app's
-- own `ref_keys && ...` reads every partition. This function runs as the owner (no RLS)
-- and applies the tenant itself, exactly as the policy does; the GIN index serves it.
CREATE FUNCTION kiln_audit_events_with_keys(p_keys text[]) RETURNS TABLE (id text, clinical_time timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public ROWS 100 AS $$
  SELECT a.id, a.clinical_time FROM public.audit_events a
   WHERE a.org_id = current_setting('app.org_id')::integer AND a.ref_keys && p_keys
$$;
REVOKE ALL ON FUNCTION kiln_audit_events_with_keys(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kiln_audit_events_with_keys(text[]) TO kiln_app;

-- A read of an AuditEvent has no locator to go through: the row is version 1 for good.
-- kiln_read's counterpart (src/store/resources.ts readById picks it for AuditEvent).
-- The id alone does not name the time partition, so every partition's key is probed.
CREATE FUNCTION kiln_read_audit_event(p_org integer, p_id text,
                          OUT version_id integer, OUT deleted boolean, OUT last_updated text, OUT body text)
RETURNS record LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('app.org_id', p_org::text, true);
  SELECT 1, false, to_char(a.last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), a.resource::text
    INTO version_id, deleted, last_updated, body
    FROM audit_events a WHERE a.org_id = p_org AND a.id = p_id;
END $$;
GRANT EXECUTE ON FUNCTION kiln_read_audit_event(integer, text) TO kiln_app;


-- Appends AuditEvents in one round trip, in the caller's transaction or (called on its
-- own) in the statement's: it binds the tenant as kiln_read does, and runs as the caller
-- (kiln_app), so RLS checks every row. p_rows: a JSON array of
-- [id, last_updated, clinical_time, [ref_keys], [token_keys]] per event;
-- p_bodies: their JSON texts joined by U+001E, a character JSON text cannot contain
-- (one text splits far faster than a text[] literal of escaped JSON is built and parsed).
CREATE FUNCTION kiln_insert_audit_events(p_org integer, p_rows text, p_bodies text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('app.org_id', p_org::text, true);
  INSERT INTO audit_events (org_id, id, version_id, last_updated, clinical_time, resource, ref_keys, token_keys)
  SELECT p_org, u.r->>0, 1, (u.r->>1)::timestamptz, (u.r->>2)::timestamptz, u.b::json,
         ARRAY(SELECT jsonb_array_elements_text(u.r->3)), ARRAY(SELECT jsonb_array_elements_text(u.r->4))
    FROM unnest(ARRAY(SELECT jsonb_array_elements(p_rows::jsonb)), string_to_array(p_bodies, chr(30))) AS u(r, b);
END $$;
GRANT EXECUTE ON FUNCTION kiln_insert_audit_events(integer, text, text) TO kiln_app;

-- The write-behind queue is no longer written; a server drains what an older version
-- left in it at start (src/store/auditQueue.ts), and a later migration drops it.
DROP FUNCTION kiln_enqueue_audit(integer, text[]);
