-- SMART on FHIR: the built-in authorization server's state (src/auth, src/store/auth*.ts).
-- Secrets are kept as SHA-256 hashes (client secrets, codes, refresh tokens, launch and
-- request ids: all random 256-bit values) or scrypt hashes (user passwords).

-- Kiln's token signing keys. Owner-only: kiln_app never reads private keys; the server
-- loads them through the owner pool into memory (src/auth/keys.ts). One key signs
-- (retired_at NULL); a retired key stays published until every token it signed expired.
CREATE TABLE auth_signing_keys (
  kid         text PRIMARY KEY,
  alg         text NOT NULL,
  private_jwk jsonb NOT NULL,
  public_jwk  jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  retired_at  timestamptz
);
CREATE UNIQUE INDEX auth_signing_keys_one_active ON auth_signing_keys ((true)) WHERE retired_at IS NULL;
REVOKE ALL ON auth_signing_keys FROM PUBLIC;

-- Registered clients (kiln auth client add). client_id is unique across tenants, so a
-- token request names its client without naming the tenant twice.
CREATE TABLE auth_clients (
  org_id        integer NOT NULL REFERENCES organizations (id),
  client_id     text NOT NULL,
  name          text NOT NULL,
  auth_method   text NOT NULL CHECK (auth_method IN ('private_key_jwt', 'client_secret_basic', 'none')),
  jwks          jsonb,
  jwks_uri      text,
  secret_hash   text,
  redirect_uris text[] NOT NULL DEFAULT '{}',
  scopes        text[] NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  revoked_at    timestamptz,
  PRIMARY KEY (org_id, client_id),
  CHECK (auth_method <> 'private_key_jwt' OR num_nonnulls(jwks, jwks_uri) = 1),
  CHECK (auth_method <> 'client_secret_basic' OR secret_hash IS NOT NULL)
);
CREATE UNIQUE INDEX auth_clients_client_id ON auth_clients (client_id);
SELECT kiln_tenant_table('auth_clients', 'SELECT');

-- jti of every client assertion accepted, kept until the assertion expires: a replay
-- collides with the primary key.
CREATE TABLE auth_assertion_jtis (
  org_id     integer NOT NULL REFERENCES organizations (id),
  client_id  text NOT NULL,
  jti        text NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (org_id, client_id, jti)
);
CREATE INDEX auth_assertion_jtis_expiry ON auth_assertion_jtis (org_id, expires_at);
SELECT kiln_tenant_table('auth_assertion_jtis', 'SELECT, INSERT, DELETE');

-- People who log in on the authorize page (kiln auth user add).
CREATE TABLE auth_users (
  org_id        integer NOT NULL REFERENCES organizations (id),
  username      text NOT NULL,
  password_hash text NOT NULL,
  fhir_user     text,            -- e.g. Practitioner/123 or Patient/456
  created_at    timestamptz NOT NULL DEFAULT now(),
  disabled_at   timestamptz,
  PRIMARY KEY (org_id, username)
);
SELECT kiln_tenant_table('auth_users', 'SELECT');

-- EHR launch contexts (kiln auth launch): the opaque `launch` value an EHR hands the app.
CREATE TABLE auth_launches (
  org_id      integer NOT NULL REFERENCES organizations (id),
  launch_hash text NOT NULL,
  patient     text,
  encounter   text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL,
  PRIMARY KEY (org_id, launch_hash)
);
SELECT kiln_tenant_table('auth_launches', 'SELECT');

-- An authorize request between its pages (login, patient picker, consent). The browser
-- that started it holds a cookie whose hash is browser_hash.
CREATE TABLE auth_requests (
  org_id       integer NOT NULL REFERENCES organizations (id),
  request_hash text NOT NULL,
  browser_hash text NOT NULL,
  client_id    text NOT NULL,
  params       jsonb NOT NULL,
  username     text,
  fhir_user    text,
  patient      text,
  encounter    text,
  expires_at   timestamptz NOT NULL,
  PRIMARY KEY (org_id, request_hash)
);
CREATE INDEX auth_requests_expiry ON auth_requests (org_id, expires_at);
SELECT kiln_tenant_table('auth_requests', 'SELECT, INSERT, UPDATE, DELETE');

-- Authorization codes: single use (used_at set atomically on exchange).
CREATE TABLE auth_codes (
  org_id         integer NOT NULL REFERENCES organizations (id),
  code_hash      text NOT NULL,
  client_id      text NOT NULL,
  redirect_uri   text NOT NULL,
  code_challenge text NOT NULL,
  scopes         text[] NOT NULL,
  username       text,
  fhir_user      text,
  patient        text,
  encounter      text,
  nonce          text,
  created_at     timestamptz NOT NULL DEFAULT now(),
  expires_at     timestamptz NOT NULL,
  used_at        timestamptz,
  PRIMARY KEY (org_id, code_hash)
);
CREATE INDEX auth_codes_expiry ON auth_codes (org_id, expires_at);
SELECT kiln_tenant_table('auth_codes', 'SELECT, INSERT, UPDATE, DELETE');

-- Refresh tokens, rotated on use. family = the hash of the code the chain started from:
-- presenting a used token (or reusing the code) revokes the whole family.
CREATE TABLE auth_refresh_tokens (
  org_id      integer NOT NULL REFERENCES organizations (id),
  token_hash  text NOT NULL,
  family      text NOT NULL,
  client_id   text NOT NULL,
  scopes      text[] NOT NULL,
  username    text,
  fhir_user   text,
  patient     text,
  encounter   text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL,
  used_at     timestamptz,
  revoked_at  timestamptz,
  PRIMARY KEY (org_id, token_hash)
);
CREATE INDEX auth_refresh_tokens_family ON auth_refresh_tokens (org_id, family);
SELECT kiln_tenant_table('auth_refresh_tokens', 'SELECT, INSERT, UPDATE');
