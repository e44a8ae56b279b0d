-- Per-token revocation of access tokens and the login rate limit (src/auth, src/store/authRevocation.ts).

-- Access tokens revoked one by one (RFC 7009 at {base}/auth/revoke, or `kiln auth token
-- revoke <jti>`), by jti, kept until the token expires: after that it is refused anyway.
-- Every server keeps the live jtis in memory (refreshed every few seconds, src/auth/keys.ts).
CREATE TABLE auth_revoked_tokens (
  org_id     integer NOT NULL REFERENCES organizations (id),
  jti        text NOT NULL,
  client_id  text NOT NULL,
  expires_at timestamptz NOT NULL,
  revoked_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, jti)
);
CREATE INDEX auth_revoked_tokens_expiry ON auth_revoked_tokens (expires_at);
SELECT kiln_tenant_table('auth_revoked_tokens', 'SELECT, INSERT, DELETE');

-- Failed sign-ins on the login page, per username and per client IP in a tenant: a window
-- starts at the first failure; at the limit, sign-ins for that key are refused (429)
-- until the window ends. In the database, so the limit holds across restarts and servers.
CREATE TABLE auth_login_failures (
  org_id       integer NOT NULL REFERENCES organizations (id),
  kind         text NOT NULL CHECK (kind IN ('user', 'ip')),
  key          text NOT NULL,
  failures     integer NOT NULL DEFAULT 0,
  window_start timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, kind, key)
);
CREATE INDEX auth_login_failures_window ON auth_login_failures (org_id, window_start);
SELECT kiln_tenant_table('auth_login_failures', 'SELECT, INSERT, UPDATE, DELETE');
