-- Privileges (docs/reference.md, "Roles and privileges"), applied last (finalize) so that they cover every function and table
-- the other SQL blocks and the Rust code created. PUBLIC gets nothing.
REVOKE ALL ON ALL TABLES IN SCHEMA truxe FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA truxe FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA truxe FROM PUBLIC;
REVOKE ALL ON SCHEMA truxe FROM PUBLIC;

-- both roles must reach the schema's objects at all
GRANT USAGE ON SCHEMA truxe TO authenticated, service_account;

-- service_account is the trusted backend: it runs every function, including the auth flows
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA truxe TO service_account;
-- … except trigger functions: nobody calls those as functions (they fire as triggers
-- whatever the grants say; EXECUTE is checked only when a trigger is created)
DO $$
DECLARE f regprocedure;
BEGIN
  FOR f IN
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
     WHERE p.pronamespace = 'truxe'::regnamespace AND p.prorettype = 'pg_catalog.trigger'::regtype
  LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, service_account', f);
  END LOOP;
END
$$;
-- … and reads and writes every table (RLS: its service_all policies). audit_logs stays
-- append-only through its trigger whatever the privileges say.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA truxe TO service_account;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA truxe TO service_account;
-- … except the hierarchy's own bookkeeping, which only its trigger writes
REVOKE ALL ON truxe.org_closure, truxe.org_tree FROM service_account;
-- … and except the organisation functions' internal helpers (docs/reference.md, "Internal
-- functions"): only the SECURITY DEFINER functions that use them call them, as the owner
REVOKE EXECUTE ON FUNCTION truxe.effective_role(uuid, uuid), truxe.require_user(),
  truxe.require_org_admin(uuid, uuid), truxe.lock_org_for_change(uuid, uuid),
  truxe.member_role(uuid, uuid), truxe.other_owners(uuid, uuid), truxe.calling_role(),
  truxe.caller_is_service(),
  truxe.permission_matches(text, text), truxe.user_holds_permission(uuid, text, uuid),
  truxe.require_grant_rights(uuid, uuid, truxe.membership_role, jsonb, boolean),
  truxe.inviter_still_may_invite(uuid)
  FROM service_account;
-- … and except truxe.distribute(): a superuser's one-time step on a Citus coordinator
REVOKE EXECUTE ON FUNCTION truxe.distribute() FROM service_account;

-- authenticated (end-user requests) may call the context, organisation/membership,
-- permission, hierarchy and session-validation functions, by name, whatever overloads exist
DO $$
DECLARE f regprocedure;
BEGIN
  FOR f IN
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
     WHERE p.pronamespace = 'truxe'::regnamespace
       AND p.proname IN ('set_context', 'clear_context', 'current_user_id', 'current_org_id',
                         'authenticate', 'switch_org', 'current_session_id', 'identity_source',
                         'current_api_key_id', 'current_aal', 'create_api_key',
                         'authenticate_api_key', 'revoke_api_key',
                         'accessible_org_ids', 'admin_org_ids', 'invited_org_ids', 'owner_org_ids',
                         'create_organization', 'invite_member', 'accept_invitation',
                         'change_role', 'remove_member', 'has_permission',
                         'org_ancestors', 'org_descendants', 'validate_session',
                         'revoke_session_by_id', 'version', 'permitted_org_ids',
                         -- for the session authenticate() verified only (src/session.rs)
                         'revoke_other_sessions',
                         'invite_by_email', 'revoke_invitation',
                         -- evaluated as the caller by audit_logs' INSERT policy and defaults
                         'is_builtin_audit_action', 'request_ip', 'request_user_agent',
                         'request_id',
                         -- … and by its CHECK constraint action_format
                         'valid_audit_action')
  LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO authenticated', f);
  END LOOP;
END
$$;

-- authenticated reads what RLS then narrows to the current context
GRANT SELECT ON truxe.users, truxe.organizations, truxe.memberships,
  truxe.audit_logs, truxe.usage_metrics TO authenticated;
-- a user lists their own sessions (policy session_read): every column but the two token
-- hashes, which no end user needs
GRANT SELECT (id, user_id, org_id, family_id, device_info, ip, user_agent, created_at,
  expires_at, last_used_at, revoked_at, revoked_reason, replaced_by, aal, family_created_at)
  ON truxe.sessions TO authenticated;
-- owners/admins list their orgs' API keys (policy api_key_admin_read): every column but
-- the hash of the secret
GRANT SELECT (id, org_id, name, scopes, created_by, created_at, expires_at, last_used_at,
  revoked_at, metadata) ON truxe.api_keys TO authenticated;
-- owners/admins list their orgs' invitations (policy invitation_admin_read): every column
-- but the hash of the token's secret
GRANT SELECT (id, org_id, email, role, permissions, invited_by, created_at, expires_at,
  accepted_at, accepted_by, revoked_at, attempts) ON truxe.invitations TO authenticated;
-- the role defaults behind has_permission are not secret
GRANT SELECT ON truxe.role_permissions TO authenticated;
-- a user edits only their own metadata (policy user_self_update picks the row)
GRANT UPDATE (metadata) ON truxe.users TO authenticated;
-- owners/admins edit their org (policy org_admin_update); re-parenting is checked again by
-- the hierarchy trigger
GRANT UPDATE (slug, name, parent_org_id, settings) ON truxe.organizations TO authenticated;
-- an app may append audit rows in the acting user's name (policy audit_self_insert); the
-- request context (ip, user_agent, request_id), id and created_at are not its to choose
GRANT INSERT (org_id, actor_user_id, action, target_type, target_id, details)
  ON truxe.audit_logs TO authenticated;
GRANT USAGE ON SEQUENCE truxe.audit_logs_id_seq TO authenticated;
-- trigger functions are called by their triggers only: no role gets EXECUTE on them
REVOKE EXECUTE ON FUNCTION truxe.end_sessions_on_membership_delete(),
  truxe.end_sessions_on_status_change() FROM service_account;
-- Secrets at rest (src/vault.rs, src/mfa.rs): nobody but the extension owner reads the
-- vault, the encrypted TOTP seeds or the recovery-code hashes; the functions are the way
-- in. A user reads their own factors' metadata (policy factor_self_read), service_account
-- any factor's: never key_id, nonce or ciphertext.
REVOKE ALL ON truxe.secrets, truxe.mfa_factors, truxe.mfa_recovery_codes FROM service_account;
GRANT SELECT (id, user_id, kind, friendly_name, status, created_at, verified_at, last_used_step,
  failed_attempts, locked_until) ON truxe.mfa_factors TO service_account, authenticated;
-- the seals are written by truxe.seal_audit_log only; the backend reads them (policy
-- service_read) to keep the latest seal_hash outside the database
REVOKE INSERT, UPDATE, DELETE ON truxe.audit_seals FROM service_account;
REVOKE ALL ON SEQUENCE truxe.audit_seals_id_seq FROM service_account;
-- … and only seal_audit_log and verify_audit_log (as the owner) write and check a seal under
-- the audit sealing key
REVOKE EXECUTE ON FUNCTION truxe.append_audit_seal(bigint, bigint, timestamptz),
  truxe.audit_seal_verifies(bigint, text, bytea, bytea, bytea), truxe.audit_seal_key_id()
  FROM service_account;
