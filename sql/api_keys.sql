-- API keys: machine principals acting in one organisation (docs/reference.md, "API keys";
-- the functions are Rust, src/api_key.rs). A key is `trx_` + key id + secret + checksum;
-- only the SHA-256 of the secret is kept (key_hash, hex). The primary key leads with
-- org_id, so the table can be distributed by org without a schema change; keys are found
-- by id alone through idx_api_keys_id (ids are random uuids: unique by construction).
CREATE TABLE truxe.api_keys (
  id           uuid NOT NULL DEFAULT gen_random_uuid(),
  org_id       uuid NOT NULL REFERENCES truxe.organizations (id) ON DELETE CASCADE,
  name         text NOT NULL,
  key_hash     text NOT NULL,
  scopes       text[] NOT NULL DEFAULT '{}',
  created_by   uuid REFERENCES truxe.users (id) ON DELETE SET NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz,
  last_used_at timestamptz,
  revoked_at   timestamptz,
  metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
  CONSTRAINT api_keys_pkey PRIMARY KEY (org_id, id),
  CONSTRAINT api_key_name_length CHECK (length(btrim(name)) BETWEEN 1 AND 255),
  CONSTRAINT key_hash_is_sha256_hex CHECK (key_hash ~ '^[0-9a-f]{64}$'),
  CONSTRAINT api_key_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
  CONSTRAINT api_key_expires_after_created CHECK (expires_at IS NULL OR expires_at > created_at)
);
CREATE INDEX idx_api_keys_id ON truxe.api_keys (id);
CREATE INDEX idx_api_keys_created_by ON truxe.api_keys (created_by, org_id) WHERE revoked_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('truxe.api_keys', '');

-- owners/admins of the org (or of an ancestor) read its keys; nobody writes them directly
ALTER TABLE truxe.api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY service_all ON truxe.api_keys TO service_account USING (true) WITH CHECK (true);
CREATE POLICY api_key_admin_read ON truxe.api_keys FOR SELECT TO authenticated
  USING (org_id = ANY ((SELECT truxe.admin_org_ids())::uuid[]));

-- A key never outlives its creator's access (src/api_key.rs): the trigger function runs as
-- the extension owner with a pinned search_path; sql/grants.sql gives it to nobody.
CREATE FUNCTION truxe.revoke_api_keys_on_membership_delete() RETURNS trigger LANGUAGE c SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'revoke_api_keys_on_membership_delete_wrapper';
CREATE TRIGGER memberships_revoke_api_keys AFTER DELETE ON truxe.memberships
  FOR EACH ROW EXECUTE FUNCTION truxe.revoke_api_keys_on_membership_delete();
