-- Second factors (src/mfa.rs): TOTP factors with their seed encrypted like a secret
-- (src/crypto.rs; bound to the factor's id and user), and recovery codes kept as SHA-256.
-- A user reads their own factors' metadata (policy factor_self_read and the column grants
-- of sql/grants.sql: never key_id, nonce or ciphertext); the functions are the only writers.
CREATE TABLE truxe.mfa_factors (
  id              uuid NOT NULL DEFAULT gen_random_uuid(),
  user_id         uuid NOT NULL REFERENCES truxe.users (id) ON DELETE CASCADE,
  kind            text NOT NULL DEFAULT 'totp',
  friendly_name   text NOT NULL,
  key_id          text NOT NULL,
  nonce           bytea NOT NULL,
  ciphertext      bytea NOT NULL,
  status          text NOT NULL DEFAULT 'unverified',
  created_at      timestamptz NOT NULL DEFAULT now(),
  verified_at     timestamptz,
  last_used_step  bigint,
  failed_attempts integer NOT NULL DEFAULT 0,
  locked_until    timestamptz,
  CONSTRAINT mfa_factors_pkey PRIMARY KEY (id),
  CONSTRAINT valid_kind CHECK (kind IN ('totp')),
  CONSTRAINT valid_status CHECK (status IN ('unverified', 'verified')),
  CONSTRAINT verified_at_when_verified CHECK ((status = 'verified') = (verified_at IS NOT NULL)),
  CONSTRAINT friendly_name_length CHECK (length(friendly_name) BETWEEN 1 AND 100),
  CONSTRAINT nonce_is_96_bits CHECK (octet_length(nonce) = 12),
  CONSTRAINT max_failed_attempts CHECK (failed_attempts BETWEEN 0 AND 5)
);
CREATE INDEX idx_mfa_factors_user ON truxe.mfa_factors (user_id);

-- One row per recovery code: SHA-256 of the user's id and the normalised code (so equal
-- codes of two users do not hash alike); used_at set by the code's one use.
CREATE TABLE truxe.mfa_recovery_codes (
  user_id    uuid NOT NULL REFERENCES truxe.users (id) ON DELETE CASCADE,
  code_hash  bytea NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  used_at    timestamptz,
  CONSTRAINT mfa_recovery_codes_pkey PRIMARY KEY (user_id, code_hash),
  CONSTRAINT code_hash_is_sha256 CHECK (octet_length(code_hash) = 32)
);

ALTER TABLE truxe.mfa_factors ENABLE ROW LEVEL SECURITY;
ALTER TABLE truxe.mfa_recovery_codes ENABLE ROW LEVEL SECURITY;
-- service_account reads factor metadata (column grants); authenticated its own factors'
CREATE POLICY service_all ON truxe.mfa_factors TO service_account USING (true) WITH CHECK (true);
CREATE POLICY factor_self_read ON truxe.mfa_factors FOR SELECT TO authenticated
  USING (user_id = (SELECT truxe.current_user_id()));
-- mfa_recovery_codes: no policy, no grant (the functions only)

SELECT pg_catalog.pg_extension_config_dump('truxe.mfa_factors', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.mfa_recovery_codes', '');
