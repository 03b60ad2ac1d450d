-- truxe schema (docs/reference.md, "Tables and Row Level Security"): the eight data tables,
-- in schema truxe, with these deliberate choices:
--  * NOT NULL on every column that has a default and no meaning when NULL;
--  * no index that duplicates a unique constraint's or primary key's index
--    (users.email, organizations.slug, sessions.refresh_jti_hash), nor one that is a
--    prefix of another (memberships.user_id is served by (user_id, org_id));
--  * magic-link challenges are found by primary key (the token carries the id), so there
--    is no index on token_hash;
--  * sessions keep only the SHA-256 of their two bearer tokens (jti_hash,
--    refresh_jti_hash) and are known by a public id; sessions.family_id (a random id per
--    refresh chain) with its index, and sessions.replaced_by (the id of the session its
--    rotation created);
--  * rate_limits.window_end: windows have different sizes, so cleanup needs their end;
--  * rate_limits.exhausted_at (0.2): set by a window's first refused call, for metrics();
--  * audit_logs (action, created_at) (0.2, replacing (action)): metrics() counts an hour;
--  * indexes on sessions.revoked_at and magic_link_challenges.used_at for the cleanup batches;
--  * audit_logs.action is text (0.2): truxe's own actions are the labels of the enum
--    truxe.audit_action, an application's own are any other 'resource.verb'
--    (constraint action_format, sql/apptables.sql);
--  * audit_logs has no foreign keys (it keeps ids of deleted users and orgs) and is
--    append-only through a raising trigger (src/audit.rs), not silent rules;
--  * slug and email checks compare as text: on citext `~` is case-insensitive, which would
--    let 'Acme' through a lowercase-only slug pattern;
--  * memberships (user_id, org_id) also carries role and joined_at (INCLUDE): every RLS
--    statement reads a user's memberships through it, index-only (both columns are
--    indexed already, so no update that was HOT becomes non-HOT).

-- truxe.user_status and truxe.membership_role are declared in src/types.rs (Rust reads
-- them); this file requires them.
CREATE TYPE truxe.audit_action AS ENUM (
  'user.created', 'user.updated', 'user.status_changed', 'user.deleted', 'user.login',
  'org.created', 'org.updated', 'org.parent_changed', 'org.deleted',
  'membership.invited', 'membership.joined', 'membership.role_changed', 'membership.removed',
  'session.created', 'session.refreshed', 'session.revoked', 'session.reuse_detected',
  'settings.updated', 'api_key.created', 'api_key.revoked',
  'magic_link.sent', 'magic_link.verified', 'magic_link.failed',
  -- 0.2: the vault, second factors and session assurance (src/vault.rs, src/mfa.rs)
  'secret.written', 'secret.read', 'secret.deleted', 'session.mfa_verified',
  'mfa.enrolled', 'mfa.unenrolled', 'mfa.locked', 'mfa.recovery_codes_generated',
  'mfa.recovery_code_used',
  -- 0.2: invitations by e-mail (src/invitation.rs)
  'invitation.sent', 'invitation.accepted'
);

-- updated_at maintenance, shared by every table that has the column
CREATE FUNCTION truxe.set_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

-- Users: global identity -----------------------------------------------------------------
CREATE TABLE truxe.users (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email          citext NOT NULL UNIQUE,
  email_verified boolean NOT NULL DEFAULT false,
  status         truxe.user_status NOT NULL DEFAULT 'pending',
  metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT valid_email CHECK (email::text ~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$'),
  CONSTRAINT metadata_is_object CHECK (jsonb_typeof(metadata) = 'object')
);
CREATE INDEX idx_users_status ON truxe.users (status) WHERE status <> 'active';
CREATE INDEX idx_users_created_at ON truxe.users (created_at);
CREATE INDEX idx_users_email_verified ON truxe.users (email_verified) WHERE email_verified = false;
CREATE TRIGGER users_updated_at BEFORE UPDATE ON truxe.users
  FOR EACH ROW EXECUTE FUNCTION truxe.set_updated_at();

-- Organizations: tenants, in a hierarchy --------------------------------------------------
CREATE TABLE truxe.organizations (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  slug          citext NOT NULL UNIQUE,
  name          text NOT NULL,
  parent_org_id uuid REFERENCES truxe.organizations (id) ON DELETE SET NULL,
  settings      jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT valid_slug CHECK (slug::text ~ '^[a-z0-9][a-z0-9-]*[a-z0-9]$'),
  CONSTRAINT slug_length CHECK (length(slug::text) BETWEEN 2 AND 63),
  CONSTRAINT name_length CHECK (length(trim(name)) >= 1 AND length(name) <= 255),
  CONSTRAINT no_self_parent CHECK (id <> parent_org_id),
  CONSTRAINT settings_is_object CHECK (jsonb_typeof(settings) = 'object')
);
CREATE INDEX idx_organizations_parent ON truxe.organizations (parent_org_id)
  WHERE parent_org_id IS NOT NULL;
CREATE INDEX idx_organizations_created_at ON truxe.organizations (created_at);
CREATE INDEX idx_organizations_name_trgm ON truxe.organizations USING gin (name gin_trgm_ops);
CREATE TRIGGER organizations_updated_at BEFORE UPDATE ON truxe.organizations
  FOR EACH ROW EXECUTE FUNCTION truxe.set_updated_at();

-- Memberships: who belongs to which org, with which role ---------------------------------
CREATE TABLE truxe.memberships (
  org_id      uuid NOT NULL REFERENCES truxe.organizations (id) ON DELETE CASCADE,
  user_id     uuid NOT NULL REFERENCES truxe.users (id) ON DELETE CASCADE,
  role        truxe.membership_role NOT NULL DEFAULT 'member',
  permissions jsonb NOT NULL DEFAULT '[]'::jsonb,
  invited_by  uuid REFERENCES truxe.users (id) ON DELETE SET NULL,
  invited_at  timestamptz NOT NULL DEFAULT now(),
  joined_at   timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, user_id),
  CONSTRAINT permissions_is_array CHECK (jsonb_typeof(permissions) = 'array'),
  CONSTRAINT joined_after_invited CHECK (joined_at IS NULL OR joined_at >= invited_at),
  CONSTRAINT self_invite_check CHECK (user_id <> invited_by)
);
CREATE INDEX idx_memberships_user_org ON truxe.memberships (user_id, org_id) INCLUDE (role, joined_at);
CREATE INDEX idx_memberships_role ON truxe.memberships (role);
CREATE INDEX idx_memberships_invited_at ON truxe.memberships (invited_at);
CREATE INDEX idx_memberships_joined_at ON truxe.memberships (joined_at) WHERE joined_at IS NOT NULL;
CREATE INDEX idx_org_admins ON truxe.memberships (org_id) WHERE role IN ('owner', 'admin');
CREATE INDEX idx_memberships_invited_by ON truxe.memberships (invited_by) WHERE invited_by IS NOT NULL;
CREATE TRIGGER memberships_updated_at BEFORE UPDATE ON truxe.memberships
  FOR EACH ROW EXECUTE FUNCTION truxe.set_updated_at();

-- Sessions: one row per access token, chained by refresh rotation ------------------------
-- The access token (jti) and refresh token (refresh_jti) are bearer credentials: only their
-- SHA-256 (of the uuid's 16 bytes, as sha256(uuid_send(x)); src/session.rs bearer_hash) is
-- kept, as 32 raw bytes — bytea, not hex text: half the size in the row and in both unique
-- indexes, compared as bytes. A row inserted without jti_hash gets the hash of a random
-- uuid nobody holds: it never validates. `id` is the public, non-secret name of a session
-- (family_id, replaced_by, audit rows); it is the last column because 0.2 added it (the
-- upgrade from 0.1.0 hashes jti/refresh_jti in place and appends id: same column order).
-- `aal` is the session's authentication assurance level: 1 after a magic link, 2 once a
-- second factor was verified for it (docs/security.md); truxe.authenticate returns it.
-- validate_session rewrites `last_used_at` once a minute per session in use: no index
-- holds that column and a fifth of each page is left free, so the rewrite can be a HOT
-- update that touches none of the table's indexes (bench/README.md, "The touch").
CREATE TABLE truxe.sessions (
  jti_hash         bytea NOT NULL DEFAULT sha256(uuid_send(gen_random_uuid())),
  user_id          uuid NOT NULL REFERENCES truxe.users (id) ON DELETE CASCADE,
  org_id           uuid REFERENCES truxe.organizations (id) ON DELETE CASCADE,
  refresh_jti_hash bytea,
  family_id        uuid NOT NULL,
  device_info      jsonb NOT NULL DEFAULT '{}'::jsonb,
  ip               inet,
  user_agent       text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  expires_at       timestamptz NOT NULL,
  last_used_at     timestamptz NOT NULL DEFAULT now(),
  revoked_at       timestamptz,
  revoked_reason   text,
  replaced_by      uuid,
  id               uuid NOT NULL DEFAULT gen_random_uuid(),
  aal              smallint NOT NULL DEFAULT 1,
  -- the family's first login, copied to every row of the family (cleanup deletes old
  -- rows): no session of the family outlives it by more than truxe.session_max_lifetime
  family_created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT sessions_pkey PRIMARY KEY (id),
  CONSTRAINT sessions_jti_hash_key UNIQUE (jti_hash),
  CONSTRAINT sessions_refresh_jti_hash_key UNIQUE (refresh_jti_hash),
  CONSTRAINT jti_hash_is_sha256 CHECK (octet_length(jti_hash) = 32),
  CONSTRAINT refresh_jti_hash_is_sha256 CHECK (octet_length(refresh_jti_hash) = 32),
  CONSTRAINT device_info_is_object CHECK (jsonb_typeof(device_info) = 'object'),
  CONSTRAINT expires_after_created CHECK (expires_at > created_at),
  CONSTRAINT aal_is_1_or_2 CHECK (aal IN (1, 2)),
  CONSTRAINT revoked_after_created CHECK (revoked_at IS NULL OR revoked_at >= created_at),
  CONSTRAINT revoked_reason_when_revoked CHECK (
    (revoked_at IS NULL AND revoked_reason IS NULL) OR
    (revoked_at IS NOT NULL AND revoked_reason IS NOT NULL))
) WITH (fillfactor = 80);
CREATE INDEX idx_sessions_user_id ON truxe.sessions (user_id);
CREATE INDEX idx_sessions_org_id ON truxe.sessions (org_id) WHERE org_id IS NOT NULL;
CREATE INDEX idx_sessions_expires_at ON truxe.sessions (expires_at);
CREATE INDEX idx_sessions_active ON truxe.sessions (user_id, expires_at) WHERE revoked_at IS NULL;
CREATE INDEX idx_sessions_family ON truxe.sessions (family_id);
CREATE INDEX idx_sessions_revoked_at ON truxe.sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Audit logs: append-only compliance trail (no foreign keys) -----------------------------
CREATE TABLE truxe.audit_logs (
  id            bigserial PRIMARY KEY,
  org_id        uuid,
  actor_user_id uuid,
  action        text NOT NULL,
  target_type   text,
  target_id     text,
  details       jsonb NOT NULL DEFAULT '{}'::jsonb,
  ip            inet,
  user_agent    text,
  request_id    uuid,
  created_at    timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT details_is_object CHECK (jsonb_typeof(details) = 'object'),
  CONSTRAINT target_consistency CHECK (
    (target_type IS NULL AND target_id IS NULL) OR
    (target_type IS NOT NULL AND target_id IS NOT NULL))
);
CREATE INDEX idx_audit_logs_org_id ON truxe.audit_logs (org_id, created_at) WHERE org_id IS NOT NULL;
CREATE INDEX idx_audit_logs_actor ON truxe.audit_logs (actor_user_id) WHERE actor_user_id IS NOT NULL;
-- (action, created_at): metrics() counts the last hour's events of an action index-only;
-- it also serves every lookup by action alone
CREATE INDEX idx_audit_logs_action_created ON truxe.audit_logs (action, created_at);
-- (created_at, id) (0.2, was (created_at)): metrics() finds the day's first audit row, the
-- smallest id among the oldest, in one index-only probe, also when a bulk write gave many
-- rows one timestamp
CREATE INDEX idx_audit_logs_created_at ON truxe.audit_logs (created_at, id);
CREATE INDEX idx_audit_logs_target ON truxe.audit_logs (target_type, target_id) WHERE target_type IS NOT NULL;
CREATE INDEX idx_audit_logs_request_id ON truxe.audit_logs (request_id) WHERE request_id IS NOT NULL;

-- Magic-link challenges: only the SHA-256 of the secret is stored -------------------------
CREATE TABLE truxe.magic_link_challenges (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email      citext NOT NULL,
  token_hash text NOT NULL,
  org_slug   text,
  expires_at timestamptz NOT NULL,
  used_at    timestamptz,
  attempts   integer NOT NULL DEFAULT 0,
  ip         inet,
  user_agent text,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT token_hash_length CHECK (length(token_hash) >= 32),
  CONSTRAINT max_attempts CHECK (attempts >= 0 AND attempts <= 5),
  CONSTRAINT expires_after_created CHECK (expires_at > created_at),
  CONSTRAINT used_after_created CHECK (used_at IS NULL OR used_at >= created_at),
  CONSTRAINT valid_email CHECK (email::text ~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$')
);
CREATE INDEX idx_magic_links_email ON truxe.magic_link_challenges (email, created_at);
CREATE INDEX idx_magic_links_expires_at ON truxe.magic_link_challenges (expires_at);
CREATE INDEX idx_magic_links_org_slug ON truxe.magic_link_challenges (org_slug) WHERE org_slug IS NOT NULL;
CREATE INDEX idx_magic_links_unused ON truxe.magic_link_challenges (email, expires_at) WHERE used_at IS NULL;
CREATE INDEX idx_magic_links_used_at ON truxe.magic_link_challenges (used_at) WHERE used_at IS NOT NULL;

-- Usage metrics: per org, metric and calendar month ---------------------------------------
CREATE TABLE truxe.usage_metrics (
  id           bigserial PRIMARY KEY,
  org_id       uuid NOT NULL REFERENCES truxe.organizations (id) ON DELETE CASCADE,
  metric_type  text NOT NULL,
  metric_value bigint NOT NULL DEFAULT 0,
  period_start timestamptz NOT NULL,
  period_end   timestamptz NOT NULL,
  metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at   timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT unique_org_metric_period UNIQUE (org_id, metric_type, period_start),
  CONSTRAINT valid_period CHECK (period_end > period_start),
  CONSTRAINT non_negative_value CHECK (metric_value >= 0),
  CONSTRAINT metadata_is_object CHECK (jsonb_typeof(metadata) = 'object')
);
CREATE INDEX idx_usage_metrics_org_period ON truxe.usage_metrics (org_id, period_start);
CREATE INDEX idx_usage_metrics_type ON truxe.usage_metrics (metric_type);

-- Rate limits: fixed windows per hashed key (the Redis alternative) -----------------------
CREATE TABLE truxe.rate_limits (
  id            bigserial PRIMARY KEY,
  key_hash      text NOT NULL,
  window_start  timestamptz NOT NULL,
  window_end    timestamptz NOT NULL,
  request_count integer NOT NULL DEFAULT 1,
  created_at    timestamptz NOT NULL DEFAULT now(),
  exhausted_at  timestamptz,
  CONSTRAINT unique_key_window UNIQUE (key_hash, window_start),
  CONSTRAINT positive_count CHECK (request_count > 0),
  CONSTRAINT window_order CHECK (window_end > window_start)
);
CREATE INDEX idx_rate_limits_cleanup ON truxe.rate_limits (window_end);
-- windows whose limit was reached (the first refused call sets exhausted_at): metrics()
-- counts the open ones index-only
CREATE INDEX idx_rate_limits_exhausted ON truxe.rate_limits (window_end) WHERE exhausted_at IS NOT NULL;

-- Role permissions: what each membership role may do (docs/reference.md, "Permissions") --
CREATE TABLE truxe.role_permissions (
  role       truxe.membership_role NOT NULL,
  permission text NOT NULL,
  PRIMARY KEY (role, permission)
  -- CHECK permission_format: added by sql/orgs.sql with truxe.valid_permission, the one
  -- statement of the format
);
INSERT INTO truxe.role_permissions (role, permission) VALUES
  ('owner', '*'),
  ('admin', 'users:*'), ('admin', 'settings:*'), ('admin', 'audit_logs:read'),
  ('admin', 'sessions:*'), ('admin', 'usage:read'),
  ('member', 'users:read'), ('member', 'settings:read'),
  ('viewer', 'users:read');

-- pg_dump keeps user data (docs/operations.md, "Backup and restore"). The seeded
-- role_permissions rows are filtered out so that a restore, whose CREATE EXTENSION seeds
-- them again, does not insert them twice. The filter repeats the INSERT's list (a dump
-- filter is a fixed text); dump::seeded_role_permissions_and_the_dump_filter_name_the_same_rows
-- and the round-trip test prove the two name the same rows.
SELECT pg_catalog.pg_extension_config_dump('truxe.users', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.organizations', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.memberships', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.sessions', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.audit_logs', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.audit_logs_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.magic_link_challenges', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.usage_metrics', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.usage_metrics_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.rate_limits', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.rate_limits_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.role_permissions', $$WHERE (role, permission) NOT IN (
  ('owner', '*'),
  ('admin', 'users:*'), ('admin', 'settings:*'), ('admin', 'audit_logs:read'),
  ('admin', 'sessions:*'), ('admin', 'usage:read'),
  ('member', 'users:read'), ('member', 'settings:read'),
  ('viewer', 'users:read'))$$);
