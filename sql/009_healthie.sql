-- Healthie sync: pull watermarks, the push outbox and the webhook queue. All three are
-- tenant rows under the same RLS policy as resources, because the outbox is filled by a
-- trigger inside request transactions (kiln_app) and webhooks arrive as requests.

CREATE TABLE healthie_watermarks (
  org_id     integer NOT NULL REFERENCES organizations (id),
  kind       text NOT NULL,             -- users | appointments | entries | medications
  updated_at timestamptz NOT NULL,      -- newest Healthie updated_at fully imported
  pulled_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, kind)
);

-- One row per FHIR version to send to Healthie. Filled in the writing transaction, so a
-- committed change is never lost and a rolled-back one never sent.
CREATE TABLE healthie_outbox (
  id              bigint GENERATED ALWAYS AS IDENTITY,
  org_id          integer NOT NULL REFERENCES organizations (id),
  resource_type   text NOT NULL,
  resource_id     text NOT NULL,
  version_id      integer NOT NULL,
  status          text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'done', 'failed', 'skipped', 'superseded')),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_error      text,
  healthie_id     text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, id)
);
CREATE INDEX healthie_outbox_due ON healthie_outbox (org_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX healthie_outbox_resource ON healthie_outbox (org_id, resource_type, resource_id);

-- Webhook deliveries, stored before they are acknowledged and processed afterwards.
-- Identical deliveries still waiting collapse into one (replays are harmless anyway:
-- processing re-fetches the object and writes only when it changed).
CREATE TABLE healthie_webhook_events (
  id              bigint GENERATED ALWAYS AS IDENTITY,
  org_id          integer NOT NULL REFERENCES organizations (id),
  event_type      text NOT NULL,
  resource_type   text NOT NULL,
  resource_id     text NOT NULL,
  body            json NOT NULL,
  body_hash       text NOT NULL,
  status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed', 'ignored')),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_error      text,
  received_at     timestamptz NOT NULL DEFAULT now(),
  processed_at    timestamptz,
  PRIMARY KEY (org_id, id)
);
CREATE UNIQUE INDEX healthie_webhook_pending ON healthie_webhook_events (org_id, body_hash) WHERE status = 'pending';
CREATE INDEX healthie_webhook_due ON healthie_webhook_events (org_id, next_attempt_at) WHERE status = 'pending';

SELECT kiln_tenant_table(t, 'SELECT, INSERT, UPDATE, DELETE')
  FROM unnest(ARRAY['healthie_watermarks', 'healthie_outbox', 'healthie_webhook_events']) AS t;
GRANT USAGE ON SEQUENCE healthie_outbox_id_seq, healthie_webhook_events_id_seq TO kiln_app;

-- Enqueues FHIR writes of the four synced types whose patient is linked to Healthie
-- (carries a Healthie user identifier). Writes made by the sync itself set
-- kiln.healthie_sync = 'on' in their transaction and are not enqueued: no echo loops.
CREATE FUNCTION kiln_healthie_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  linked boolean;
  pid text;
BEGIN
  IF NEW.resource IS NULL OR coalesce(current_setting('kiln.healthie_sync', true), '') = 'on' THEN
    RETURN NULL;
  END IF;
  IF NEW.resource_type = 'Patient' THEN
    linked := json_typeof(NEW.resource -> 'identifier') = 'array' AND EXISTS (
      SELECT 1 FROM json_array_elements(NEW.resource -> 'identifier') i
       WHERE i ->> 'system' = 'https://gethealthie.com/fhir/identifier/user');
  ELSE
    pid := substring(NEW.resource -> 'subject' ->> 'reference' FROM '^Patient/([A-Za-z0-9.-]{1,64})$');
    linked := pid IS NOT NULL AND EXISTS (
      SELECT 1 FROM patients p
       WHERE p.org_id = NEW.org_id AND p.id = pid
         AND EXISTS (SELECT 1 FROM unnest(p.identifier_tokens) tok
                      WHERE tok LIKE 'https://gethealthie.com/fhir/identifier/user|%'));
  END IF;
  IF linked THEN
    INSERT INTO healthie_outbox (org_id, resource_type, resource_id, version_id)
    VALUES (NEW.org_id, NEW.resource_type, NEW.id, NEW.version_id);
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER healthie_outbox_enqueue AFTER INSERT ON resource_history
  FOR EACH ROW WHEN (NEW.resource_type IN ('Patient', 'Encounter', 'Observation', 'MedicationStatement'))
  EXECUTE FUNCTION kiln_healthie_enqueue();
