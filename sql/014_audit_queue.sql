-- Write-behind audit log (issue 5). A read's AuditEvent is made durable before the
-- response by appending it here, in the read path's group commit: one narrow row and
-- one btree entry instead of a FHIR resource with ~20 index rows. A background
-- materializer (src/audit/materializer.ts) moves the rows into audit_events, deleting
-- them in the same transaction that inserts the FHIR AuditEvents, so each event is
-- materialized exactly once, also across crashes.
CREATE TABLE audit_log_queue (
  seq       bigint GENERATED ALWAYS AS IDENTITY,
  org_id    integer NOT NULL REFERENCES organizations (id),
  event     json NOT NULL,
  queued_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, seq)
);
-- The request path only appends. The materializer claims and deletes through the owner
-- pool (maintenance work), setting app.org_id per tenant for the AuditEvent rows it writes.
SELECT kiln_tenant_table('audit_log_queue', 'INSERT');
