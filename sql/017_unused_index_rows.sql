-- Index rows no search reads any more (mappings/search/definitions.ts): `_id` and
-- `_lastUpdated` are searched on the resource row's own columns, and AuditEvents are
-- indexed for their audit parameters only. New writes no longer make these rows; this
-- removes those written before.
DELETE FROM search_tokens WHERE param = '_id';
DELETE FROM search_dates WHERE param = '_lastUpdated';
DO $$
DECLARE
  t text;
  kept text[] := ARRAY['date', 'agent', 'entity', 'patient', 'type', 'subtype', 'action', 'outcome',
                       '_profile', '_security', '_source', '_tag'];
BEGIN
  FOREACH t IN ARRAY ARRAY['search_tokens', 'search_strings', 'search_dates', 'search_references',
                           'search_quantities', 'search_numbers', 'search_uris', 'search_composites'] LOOP
    -- `agent:identifier` and the like belong to their parameter.
    EXECUTE format('DELETE FROM %I WHERE resource_type = %L AND split_part(param, %L, 1) <> ALL (%L)', t, 'AuditEvent', ':', kept);
  END LOOP;
END $$;
