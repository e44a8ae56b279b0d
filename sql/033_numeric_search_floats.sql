-- Quantity and number searches under row-level security: PostgreSQL makes a condition an
-- index condition for the request role only when its operator is leakproof, and numeric
-- comparisons (numeric_ge, ...) are not, so `value >= $1` filtered every row of the
-- parameter in the tenant. float8 comparisons are leakproof: each row keeps its value as
-- float8 too (written with the row, src/store/searchIndex.ts), the value index is on it,
-- and searches compare it (src/store/searchSql.ts numberCond).
ALTER TABLE search_quantities ADD COLUMN value_f double precision;
UPDATE search_quantities SET value_f = value::double precision;
DROP INDEX search_quantities_value;
CREATE INDEX search_quantities_value ON search_quantities (param, org_id, resource_type, value_f) INCLUDE (id, clinical_time, system, code);

ALTER TABLE search_numbers ADD COLUMN value_f double precision;
UPDATE search_numbers SET value_f = value::double precision;
DROP INDEX search_numbers_value;
CREATE INDEX search_numbers_value ON search_numbers (param, org_id, resource_type, value_f) INCLUDE (id, clinical_time);
