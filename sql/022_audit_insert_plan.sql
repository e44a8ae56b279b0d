-- kiln_insert_audit_events (021) took a custom plan on every call: its parameters are
-- the batch texts, so PL/pgSQL's plan cache kept re-planning the INSERT with the batch
-- folded in as constants (re-parsing the JSON at plan time), which cost a read's group
-- commit about a third of its database time. The statement's plan does not depend on
-- the values, so the function always uses the generic plan.
ALTER FUNCTION kiln_insert_audit_events(integer, text, text) SET plan_cache_mode = force_generic_plan;
