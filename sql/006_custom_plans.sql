-- Kiln prepares its hot statements once per connection. A generic plan, cached while
-- the search index tables were small, went on scanning them sequentially as they grew
-- (updates fell to a tenth of their speed); planning each execution with its actual
-- parameters keeps the savings of skipping the parse and avoids that trap.
ALTER ROLE kiln_app SET plan_cache_mode = 'force_custom_plan';
