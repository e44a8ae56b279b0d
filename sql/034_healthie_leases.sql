-- Healthie workers hold leases, not transactions (issue 24): the push and webhook workers
-- claim rows by writing a lease (owner, until) in a short transaction, call Healthie with no
-- transaction open, and finish a row only while their lease on it still stands. A worker
-- that dies leaves its rows pending; they are claimed again once the lease has run out.
-- A pull holds one lease per tenant (a row here, renewed while it runs), so a second pull
-- in another process sees it and stands aside (src/healthie/lease.ts).

ALTER TABLE healthie_outbox ADD COLUMN lease_owner text, ADD COLUMN leased_until timestamptz;
ALTER TABLE healthie_webhook_events ADD COLUMN lease_owner text, ADD COLUMN leased_until timestamptz;
-- A claim skips deliveries about an object another worker holds a delivery of.
CREATE INDEX healthie_webhook_object ON healthie_webhook_events (org_id, resource_type, resource_id) WHERE status = 'pending';

CREATE TABLE healthie_pull_leases (
  org_id       integer PRIMARY KEY REFERENCES organizations (id),
  lease_owner  text NOT NULL,
  leased_until timestamptz NOT NULL,
  started_at   timestamptz NOT NULL DEFAULT now()
);
SELECT kiln_tenant_table('healthie_pull_leases', 'SELECT, INSERT, UPDATE, DELETE');
