-- An EHR launch context belongs to the client it was made for (and to one user, when the
-- EHR names one), and is used once (issue 21): the authorize request that presents it
-- marks it used. Launches made before this migration name no client: none can use them.
ALTER TABLE auth_launches
  ADD COLUMN client_id text,
  ADD COLUMN username  text,
  ADD COLUMN used_at   timestamptz;

-- The request role marks a launch used and changes nothing else of it.
GRANT UPDATE (used_at) ON auth_launches TO kiln_app;
