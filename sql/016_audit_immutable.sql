-- AuditEvents are evidence: the request role kiln_app may record (INSERT) and read them,
-- never change or remove them. The API refuses update/patch/delete of AuditEvent
-- (src/interactions/supported.ts); this is the same line in the database, in case a
-- code path ever forgets it.

-- 1. Privileges. 001 granted kiln_app SELECT, INSERT, UPDATE, DELETE on audit_events.
-- Access through the partitioned parent is checked against the parent only. Partitions
-- (kiln_create_org_partitions, kiln_ensure_range_partition: CREATE TABLE ... LIKE, then
-- ATTACH) are made by the owner with no grants at all, so kiln_app cannot reach them
-- directly; the loop keeps it that way for any grant an operator may have added.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM kiln_app;
DO $$
DECLARE
  part regclass;
BEGIN
  FOR part IN SELECT relid FROM pg_partition_tree('audit_events') WHERE level > 0 LOOP
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM kiln_app', part);
  END LOOP;
END $$;

-- 2. A trigger, for any role that holds (or is later given) UPDATE/DELETE: only the
-- owner may change AuditEvent rows, for maintenance: kiln_ensure_range_partition and
-- kiln_create_org_partitions move rows out of DEFAULT partitions with DELETE ... INSERT.
-- Retention drops or detaches whole partitions, which fires no row trigger.
CREATE FUNCTION kiln_refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
  END IF;
  RAISE EXCEPTION 'AuditEvents are evidence: % of an AuditEvent row in % is refused for role %', TG_OP, TG_TABLE_NAME, current_user
    USING ERRCODE = 'insufficient_privilege';
END $$;

-- A row trigger on the partitioned table is cloned onto every partition, present and
-- future (ATTACH PARTITION clones it), so statements on a partition hit it too.
CREATE TRIGGER audit_events_immutable BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION kiln_refuse_audit_change();

-- 3. The version history and the locator of AuditEvents. kiln_app needs UPDATE/DELETE on
-- these shared tables for every other type, so the line is drawn per row. The WHEN
-- clause is evaluated without calling the function, so writes of other types pay only
-- that comparison (measured: docs/authorization.md).
-- History rows are never updated or deleted by Kiln.
CREATE TRIGGER resource_history_audit_immutable BEFORE UPDATE OR DELETE ON resource_history
  FOR EACH ROW WHEN (OLD.resource_type = 'AuditEvent') EXECUTE FUNCTION kiln_refuse_audit_change();
-- A create moves the locator from its version-0 placeholder (made by the write lock in
-- src/store/resources.ts lockId) to version 1, and a delete of an id that never existed
-- removes the placeholder: rows at version 0 are not yet evidence.
CREATE TRIGGER resource_ids_audit_immutable BEFORE UPDATE OR DELETE ON resource_ids
  FOR EACH ROW WHEN (OLD.resource_type = 'AuditEvent' AND OLD.version_id > 0) EXECUTE FUNCTION kiln_refuse_audit_change();
