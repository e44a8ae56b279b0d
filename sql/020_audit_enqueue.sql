-- A read's audit records are appended in one round trip per tenant and batch: the
-- function binds the tenant for its statement's own transaction (as kiln_read does) and
-- inserts the batch, so the group commit needs no BEGIN / set_config / COMMIT of its own.
-- It runs as the caller (kiln_app): RLS still checks every row against the bound tenant.
CREATE FUNCTION kiln_enqueue_audit(p_org integer, p_events text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('app.org_id', p_org::text, true);
  INSERT INTO audit_log_queue (org_id, event) SELECT p_org, e::json FROM unnest(p_events) AS e;
END $$;
GRANT EXECUTE ON FUNCTION kiln_enqueue_audit(integer, text[]) TO kiln_app;
