-- Secrets vault (src/vault.rs): an org's credentials (OAuth tokens, webhook secrets),
-- encrypted with AES-256-GCM under a key of the key file (src/crypto.rs). The value is
-- bound to its row (table, id, org_id), so a ciphertext copied onto another row does not
-- decrypt. Nobody but the extension owner reads the table: RLS on, no policy, no grant
-- (sql/grants.sql); put_secret, get_secret and delete_secret are the way in.
-- org_id leads the primary key and the unique name, so the table can be distributed by org.
CREATE TABLE truxe.secrets (
  id         uuid NOT NULL,
  org_id     uuid NOT NULL REFERENCES truxe.organizations (id) ON DELETE CASCADE,
  name       text NOT NULL,
  key_id     text NOT NULL,
  nonce      bytea NOT NULL,
  ciphertext bytea NOT NULL,
  metadata   jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT secrets_pkey PRIMARY KEY (org_id, id),
  CONSTRAINT secrets_org_id_name_key UNIQUE (org_id, name),
  CONSTRAINT name_length CHECK (length(name) BETWEEN 1 AND 200),
  CONSTRAINT nonce_is_96_bits CHECK (octet_length(nonce) = 12),
  CONSTRAINT metadata_is_object CHECK (jsonb_typeof(metadata) = 'object')
);
ALTER TABLE truxe.secrets ENABLE ROW LEVEL SECURITY;
-- a dump keeps the ciphertexts (never a key: those live in the key file only)
SELECT pg_catalog.pg_extension_config_dump('truxe.secrets', '');
