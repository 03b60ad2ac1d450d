-- Invitations by e-mail (docs/reference.md, "Invitations"): an org invites someone who may
-- have no account yet. The token is a magic link's (`<invitation id: 32 hex>.<secret>`);
-- only the SHA-256 of the secret is kept (token_hash), and no end user may read that
-- column. The functions that handle tokens are Rust (src/invitation.rs); revoke_invitation
-- is here. The primary key leads with org_id, so the table can be distributed by org; an
-- invitation is found by id alone through idx_invitations_id (random uuids). At most one
-- pending (neither accepted nor revoked) invitation per (org, e-mail):
-- invitations_one_pending; invite_by_email revokes the earlier one first.
CREATE TABLE truxe.invitations (
  id          uuid NOT NULL DEFAULT gen_random_uuid(),
  org_id      uuid NOT NULL REFERENCES truxe.organizations (id) ON DELETE CASCADE,
  email       citext NOT NULL,
  role        truxe.membership_role NOT NULL DEFAULT 'member',
  permissions jsonb NOT NULL DEFAULT '[]'::jsonb,
  token_hash  text NOT NULL,
  invited_by  uuid REFERENCES truxe.users (id) ON DELETE SET NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL,
  accepted_at timestamptz,
  accepted_by uuid REFERENCES truxe.users (id) ON DELETE SET NULL,
  revoked_at  timestamptz,
  attempts    integer NOT NULL DEFAULT 0,
  CONSTRAINT invitations_pkey PRIMARY KEY (org_id, id),
  CONSTRAINT invitation_token_hash_is_sha256_hex CHECK (token_hash ~ '^[0-9a-f]{64}$'),
  CONSTRAINT invitation_permissions_is_array CHECK (jsonb_typeof(permissions) = 'array'),
  CONSTRAINT invitation_max_attempts CHECK (attempts >= 0 AND attempts <= 5),
  CONSTRAINT invitation_expires_after_created CHECK (expires_at > created_at),
  CONSTRAINT invitation_valid_email
    CHECK (email::text ~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$')
);
CREATE INDEX idx_invitations_id ON truxe.invitations (id);
CREATE UNIQUE INDEX invitations_one_pending ON truxe.invitations (org_id, email)
  WHERE accepted_at IS NULL AND revoked_at IS NULL;
-- the per-org hourly limit counts an org's recent invitations
CREATE INDEX idx_invitations_org_created ON truxe.invitations (org_id, created_at);
-- cleanup_expired_data's batches and metrics()' cleanup lag
CREATE INDEX idx_invitations_expires_at ON truxe.invitations (expires_at);
CREATE INDEX idx_invitations_accepted_at ON truxe.invitations (accepted_at) WHERE accepted_at IS NOT NULL;
CREATE INDEX idx_invitations_revoked_at ON truxe.invitations (revoked_at) WHERE revoked_at IS NOT NULL;
SELECT pg_catalog.pg_extension_config_dump('truxe.invitations', '');

-- owners/admins of the org (or of an ancestor) read its invitations (never token_hash:
-- sql/grants.sql grants the other columns only); nobody writes them directly
ALTER TABLE truxe.invitations ENABLE ROW LEVEL SECURITY;
CREATE POLICY service_all ON truxe.invitations TO service_account USING (true) WITH CHECK (true);
CREATE POLICY invitation_admin_read ON truxe.invitations FOR SELECT TO authenticated
  USING (org_id = ANY ((SELECT truxe.admin_org_ids())::uuid[]));

-- Whether an invitation's inviter could still send it (accept_invitation_token and
-- inspect_invitation answer the plain case in their own lookup and ask this function
-- otherwise, src/invitation.rs): an active user whom truxe.require_grant_rights
-- lets grant the invitation's role and permissions in its org today. An invitation carries
-- its inviter's authority, as an API key its creator's: once the inviter is removed,
-- suspended, deleted or demoted, it is revoked at its next use. False for an unknown id.
CREATE FUNCTION truxe.inviter_still_may_invite(invitation_id uuid)
RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  i truxe.invitations;
BEGIN
  SELECT * INTO i FROM truxe.invitations WHERE id = inviter_still_may_invite.invitation_id;
  IF NOT FOUND OR i.invited_by IS NULL
     OR NOT EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = i.invited_by AND u.status = 'active') THEN
    RETURN false;
  END IF;
  RETURN truxe.require_grant_rights(i.org_id, i.invited_by, i.role, i.permissions, true) IS NOT NULL;
END
$$;

-- Revokes a pending invitation; true when this call revoked it. Caller: the acting user
-- (authenticated, or service_account acting for a user), active (42501 otherwise), owner or
-- admin of the invitation's org (or of an ancestor). False when the invitation is unknown,
-- no longer pending, or in an org where the caller has no such rights: the same answer, so
-- that it tells nothing of other orgs' invitations.
CREATE FUNCTION truxe.revoke_invitation(invitation_id uuid)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me uuid := truxe.require_user();
  org uuid;
  r truxe.membership_role;
BEGIN
  -- the rights are checked here, not in the UPDATE: on Citus the UPDATE runs on the shard,
  -- where memberships are not (docs/scaling.md)
  SELECT i.org_id INTO org FROM truxe.invitations i WHERE i.id = revoke_invitation.invitation_id;
  r := truxe.effective_role(org, me);
  IF org IS NULL OR r IS NULL OR r NOT IN ('owner', 'admin') THEN
    RETURN false;
  END IF;
  UPDATE truxe.invitations i SET revoked_at = now()
   WHERE i.org_id = org AND i.id = revoke_invitation.invitation_id
     AND i.accepted_at IS NULL AND i.revoked_at IS NULL;
  RETURN FOUND;
END
$$;
