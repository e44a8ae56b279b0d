-- A stored audit part is the text its id names (issue 21). A part's id is a hash of its
-- JSON (src/audit/eventText.ts: sha256 of the UTF-8 text, base64url, 22 characters), and
-- the insert of 027 skips a part whose id is stored, so a row planted ahead of the server
-- by anyone holding kiln_app's password made every event naming that id render the
-- planted text: another user, client and address. Now no row can hold an id that is not
-- the hash of its text, whoever inserts it. The check runs only when a part is inserted
-- (once per distinct part per writer connection), never per event.
--
-- A database that already holds such a part has had its audit trail tampered with: the
-- migration stops and names how many, for the operator to investigate (the rows are
-- evidence too, and are not removed here).
CREATE FUNCTION kiln_audit_part_id(p_json text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN left(translate(encode(sha256(convert_to(p_json, 'UTF8')), 'base64'), '+/', '-_'), 22);

DO $$
DECLARE
  n bigint;
BEGIN
  SELECT count(*) INTO n FROM audit_event_parts WHERE id <> kiln_audit_part_id(json);
  IF n > 0 THEN
    RAISE EXCEPTION '% stored audit part(s) in audit_event_parts have an id that is not the hash of their text: AuditEvents naming them render text the server did not record', n
      USING HINT = 'SELECT org_id, id, json FROM audit_event_parts WHERE id <> kiln_audit_part_id(json)';
  END IF;
END $$;

ALTER TABLE audit_event_parts ADD CONSTRAINT audit_event_parts_id_is_hash CHECK (id = kiln_audit_part_id(json));
