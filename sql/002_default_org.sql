-- The organization served at /fhir without a tenant slug.
INSERT INTO organizations (slug, name) VALUES ('default', 'Default organization') ON CONFLICT (slug) DO NOTHING;
