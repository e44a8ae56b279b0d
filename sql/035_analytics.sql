-- Per-tenant analytics (issue #26 item 4, `kiln views materialize`): each tenant's views live in
-- a schema analytics_<slug>, queried by a read-only role kiln_analytics_<slug> that is a member
-- of kiln_analytics. The views are security_invoker, so the tables they read are read as that
-- role, under the policies below: a member sees the rows of the one tenant kiln_analytics_roles
-- names for it, whatever app.org_id it sets (the policies do not read it), and writes nothing.
-- Roles and schemas are made by src/store/analytics.ts (DDL cannot take parameters).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kiln_analytics') THEN
    CREATE ROLE kiln_analytics NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
  END IF;
END $$;

-- Which tenant each analytics role reads. Owner-only: members learn their own tenant through
-- kiln_analytics_org, not the list of tenants.
CREATE TABLE kiln_analytics_roles (
  role_name name PRIMARY KEY,
  org_id integer NOT NULL UNIQUE REFERENCES organizations (id)
);

-- The tenant of a role (NULL for any other role, which then sees no rows). SECURITY DEFINER
-- so members need no grant on the table; the caller passes current_user, which it cannot
-- change to another tenant's role (it is no member of one).
CREATE FUNCTION kiln_analytics_org(p_role name) RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT org_id FROM public.kiln_analytics_roles WHERE role_name = p_role
$$;
REVOKE ALL ON FUNCTION kiln_analytics_org(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kiln_analytics_org(name) TO kiln_analytics;

-- The tables the views read (every READ_FROM of mappings/postgres, and the parts behind
-- audit_event_resources), read-only. The scalar subquery is evaluated once per query (an
-- InitPlan), not once per row; each table already has RLS enabled for kiln_app.
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['patients', 'encounters', 'observations', 'medication_statements', 'audit_events',
                           'audit_event_parts', 'resources'] LOOP
    EXECUTE format($p$CREATE POLICY analytics_read ON %I FOR SELECT TO kiln_analytics
                      USING (org_id = (SELECT kiln_analytics_org(current_user)))$p$, t);
    EXECUTE format('GRANT SELECT ON %I TO kiln_analytics', t);
  END LOOP;
END $$;
GRANT SELECT ON audit_event_resources TO kiln_analytics;
