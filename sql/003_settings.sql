-- Server-side settings only the owner can read: e.g. the kiln_app password, generated
-- once so that every Kiln process on this database logs in with the same one.
CREATE TABLE kiln_settings (
  key   text PRIMARY KEY,
  value text NOT NULL
);
REVOKE ALL ON kiln_settings FROM PUBLIC;
