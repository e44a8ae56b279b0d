-- Kiln prepares its hot statements once per connection; each execution is still
-- planned with its actual parameters, so a plan cached while a table was small (or
-- made from stale statistics) is not reused as the table grows.
ALTER ROLE kiln_app SET plan_cache_mode = 'force_custom_plan';
