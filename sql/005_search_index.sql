-- Search index side tables: one row per (resource, search parameter, value), filled
-- on every write from mappings/search (FHIRPath over the R4 SearchParameters).
-- Searches join them to the resource tables by (org_id, resource_type, id).
-- Value indexes lead with param (every search names one) so that the planner never
-- prefers them over the (org_id, resource_type, id) index when a write replaces a
-- resource's rows: with stale statistics it did, and an update took 185 ms.

CREATE TABLE search_tokens (
  org_id integer NOT NULL, resource_type text NOT NULL, id text NOT NULL, param text NOT NULL,
  system text, code text, text text
);
CREATE INDEX search_tokens_value ON search_tokens (param, org_id, resource_type, code, system);
CREATE INDEX search_tokens_resource ON search_tokens (org_id, resource_type, id);

CREATE TABLE search_strings (
  org_id integer NOT NULL, resource_type text NOT NULL, id text NOT NULL, param text NOT NULL,
  value text NOT NULL, raw text NOT NULL
);
CREATE INDEX search_strings_value ON search_strings (param, org_id, resource_type, value text_pattern_ops);
CREATE INDEX search_strings_resource ON search_strings (org_id, resource_type, id);

CREATE TABLE search_dates (
  org_id integer NOT NULL, resource_type text NOT NULL, id text NOT NULL, param text NOT NULL,
  lo timestamptz NOT NULL, hi timestamptz NOT NULL
);
CREATE INDEX search_dates_value ON search_dates (param, org_id, resource_type, lo, hi);
CREATE INDEX search_dates_resource ON search_dates (org_id, resource_type, id);

CREATE TABLE search_references (
  org_id integer NOT NULL, resource_type text NOT NULL, id text NOT NULL, param text NOT NULL,
  target_type text, target_id text, reference text NOT NULL
);
CREATE INDEX search_references_value ON search_references (param, org_id, resource_type, target_id);
CREATE INDEX search_references_target ON search_references (target_id, org_id, target_type);
CREATE INDEX search_references_resource ON search_references (org_id, resource_type, id);

CREATE TABLE search_quantities (
  org_id integer NOT NULL, resource_type text NOT NULL, id text NOT NULL, param text NOT NULL,
  value numeric NOT NULL, lo numeric NOT NULL, hi numeric NOT NULL, system text, code text, unit text
);
CREATE INDEX search_quantities_value ON search_quantities (param, org_id, resource_type, value);
CREATE INDEX search_quantities_resource ON search_quantities (org_id, resource_type, id);

CREATE TABLE search_numbers (
  org_id integer NOT NULL, resource_type text NOT NULL, id text NOT NULL, param text NOT NULL,
  value numeric NOT NULL, lo numeric NOT NULL, hi numeric NOT NULL
);
CREATE INDEX search_numbers_value ON search_numbers (param, org_id, resource_type, value);
CREATE INDEX search_numbers_resource ON search_numbers (org_id, resource_type, id);

CREATE TABLE search_uris (
  org_id integer NOT NULL, resource_type text NOT NULL, id text NOT NULL, param text NOT NULL,
  value text NOT NULL
);
CREATE INDEX search_uris_value ON search_uris (param, org_id, resource_type, value text_pattern_ops);
CREATE INDEX search_uris_resource ON search_uris (org_id, resource_type, id);

-- Composite values (e.g. code-value-quantity): the parts evaluated from one element.
CREATE TABLE search_composites (
  org_id integer NOT NULL, resource_type text NOT NULL, id text NOT NULL, param text NOT NULL,
  parts jsonb NOT NULL
);
CREATE INDEX search_composites_value ON search_composites USING gin (parts jsonb_path_ops);
CREATE INDEX search_composites_resource ON search_composites (org_id, resource_type, id);

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['search_tokens', 'search_strings', 'search_dates', 'search_references',
                           'search_quantities', 'search_numbers', 'search_uris', 'search_composites'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %I TO kiln_app
                      USING (org_id = nullif(current_setting('app.org_id', true), '')::integer)
                      WITH CHECK (org_id = nullif(current_setting('app.org_id', true), '')::integer)$p$, t);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON %I TO kiln_app', t);
  END LOOP;
END $$;
