-- truxe 0.1.0 -> 0.2.0, run by ALTER EXTENSION truxe UPDATE (TO '0.2.0').
--
-- 0.1.0 is released and its install script (sql/truxe--0.1.0.sql) is frozen: every change
-- that 0.2.0 makes to the catalog is made twice, once in the fresh-install sources (sql/*.sql
-- and the Rust #[pg_extern]s) and once here, and tests/integration/upgrade.rs proves that
-- both give the same catalog. Sections follow the order of the changes; each says why.
\echo Use "ALTER EXTENSION truxe UPDATE TO '0.2.0'" to load this file. \quit

-- == Authorization rules (issues 18, 20, 21) ==
-- Why: a hostile tenant could forge audit rows in another tenant's trail, probe anyone's
-- permissions, grant permissions it does not hold, read any user's row by inviting it, tell
-- existing orgs/users/memberships from missing ones, and keep acting while suspended. The
-- fresh-install side of every statement is in sql/orgs.sql, sql/rls.sql, sql/context.sql
-- and sql/grants.sql.

-- The permission format in one place: a function used by role_permissions' CHECK and by
-- invite_member (which 0.1 did not check at all).
CREATE FUNCTION truxe.valid_permission(permission text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT permission ~ '^(\*|[a-z_]+:(\*|[a-z_]+))$';
$$;
REVOKE ALL ON FUNCTION truxe.valid_permission(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.valid_permission(text) TO service_account;
ALTER TABLE truxe.role_permissions DROP CONSTRAINT permission_format,
  ADD CONSTRAINT permission_format CHECK (truxe.valid_permission(permission));

-- Ancestors from truxe.org_closure instead of a recursive walk (same result).
CREATE OR REPLACE FUNCTION truxe.effective_role(org uuid, who uuid)
RETURNS truxe.membership_role LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN (SELECT min(m.role) FROM truxe.memberships m
           WHERE m.user_id = who AND m.joined_at IS NOT NULL
             AND (m.org_id = org
                  OR (m.role IN ('owner', 'admin')
                      AND m.org_id IN (SELECT c.ancestor_id FROM truxe.org_closure c
                                        WHERE c.descendant_id = org))));
END
$$;

-- A suspended, deleted or pending caller is refused (42501): require_user's final text is
-- in section "Error messages a client can act on (issue 17)".

-- New: rights are checked first, from the caller's own memberships, with one message.
CREATE FUNCTION truxe.require_org_admin(org uuid, me uuid)
RETURNS truxe.membership_role LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE r truxe.membership_role := truxe.effective_role(org, me);
BEGIN
  IF r IS NULL OR r NOT IN ('owner', 'admin') THEN
    RAISE EXCEPTION 'permission denied: the current user is not an owner or admin of organization %', org
      USING ERRCODE = '42501';
  END IF;
  RETURN r;
END
$$;
REVOKE ALL ON FUNCTION truxe.require_org_admin(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.require_org_admin(uuid, uuid) TO service_account;

-- Rights before any lookup (no P0002 for an unknown parent), an inactive caller refused, a
-- taken slug is 23505 in words, the slug quoted in at most 64 characters.
CREATE OR REPLACE FUNCTION truxe.create_organization(slug citext, name text, parent_org_id uuid DEFAULT NULL,
                                          settings jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me uuid := truxe.require_user();
  new_id uuid;
BEGIN
  IF slug IS NULL OR slug::text !~ '^[a-z0-9][a-z0-9-]*[a-z0-9]$' OR length(slug::text) > 63 THEN
    RAISE EXCEPTION 'invalid slug %: 2-63 lowercase letters, digits and inner dashes',
      coalesce(to_json(left(slug::text, 64))::text, 'NULL') USING ERRCODE = '22023';
  END IF;
  IF name IS NULL OR length(trim(name)) = 0 OR length(name) > 255 THEN
    RAISE EXCEPTION 'invalid name: 1-255 characters, not blank' USING ERRCODE = '22023';
  END IF;
  IF settings IS NULL OR jsonb_typeof(settings) <> 'object' THEN
    RAISE EXCEPTION 'settings must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF create_organization.parent_org_id IS NOT NULL THEN
    PERFORM truxe.require_org_admin(create_organization.parent_org_id, me);
  END IF;
  INSERT INTO truxe.organizations AS o (slug, name, parent_org_id, settings)
    VALUES (create_organization.slug, create_organization.name, create_organization.parent_org_id,
            create_organization.settings)
    ON CONFLICT ON CONSTRAINT organizations_slug_key DO NOTHING
    RETURNING o.id INTO new_id;
  IF new_id IS NULL THEN
    RAISE EXCEPTION 'the organization slug % is already taken', to_json(slug::text)::text
      USING ERRCODE = '23505';
  END IF;
  INSERT INTO truxe.memberships (org_id, user_id, role, invited_at, joined_at)
    VALUES (new_id, me, 'owner', now(), now());
  RETURN new_id;
END
$$;

-- Rights before any lookup; extra permissions well-formed and held by the granter; a
-- second membership is 23505 in words.
CREATE OR REPLACE FUNCTION truxe.invite_member(org_id uuid, user_id uuid, role truxe.membership_role DEFAULT 'member',
                                    permissions jsonb DEFAULT '[]')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me uuid := truxe.require_user();
  my_role truxe.membership_role;
  p text;
BEGIN
  IF role IS NULL OR permissions IS NULL OR jsonb_typeof(permissions) <> 'array'
     OR EXISTS (SELECT 1 FROM jsonb_array_elements(permissions) e WHERE jsonb_typeof(e) <> 'string') THEN
    RAISE EXCEPTION 'role must be given and permissions must be a JSON array of strings'
      USING ERRCODE = '22023';
  END IF;
  my_role := truxe.require_org_admin(invite_member.org_id, me);
  IF invite_member.role = 'owner' AND my_role <> 'owner' THEN
    RAISE EXCEPTION 'only an owner may invite an owner' USING ERRCODE = '42501';
  END IF;
  FOR p IN SELECT jsonb_array_elements_text(invite_member.permissions) LOOP
    IF NOT truxe.valid_permission(p) THEN
      RAISE EXCEPTION 'invalid permission %: expected resource:action, resource:* or *',
        to_json(left(p, 64))::text USING ERRCODE = '22023';
    END IF;
    IF my_role <> 'owner' AND NOT truxe.has_permission(invite_member.org_id, p, me) THEN
      RAISE EXCEPTION 'granting permission % requires holding it in organization %',
        to_json(left(p, 64))::text, invite_member.org_id USING ERRCODE = '42501';
    END IF;
  END LOOP;
  IF NOT EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = invite_member.user_id) THEN
    RAISE EXCEPTION 'unknown user %', invite_member.user_id USING ERRCODE = 'P0002';
  END IF;
  INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by)
    VALUES (invite_member.org_id, invite_member.user_id, invite_member.role, invite_member.permissions,
            CASE WHEN me = invite_member.user_id THEN NULL ELSE me END)
    ON CONFLICT ON CONSTRAINT memberships_pkey DO NOTHING;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'user % is already a member of organization % or has a pending invitation to it',
      invite_member.user_id, invite_member.org_id USING ERRCODE = '23505';
  END IF;
END
$$;

-- An inactive caller is refused (via require_user); comment only otherwise.
CREATE OR REPLACE FUNCTION truxe.accept_invitation(org_id uuid)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE me uuid := truxe.require_user();
BEGIN
  UPDATE truxe.memberships m SET joined_at = now()
   WHERE m.org_id = accept_invitation.org_id AND m.user_id = me AND m.joined_at IS NULL;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no pending invitation to organization % for user %', accept_invitation.org_id, me
      USING ERRCODE = 'P0002';
  END IF;
END
$$;

-- Rights before the lock, and again once it is held; no P0002 for an unknown org.
CREATE OR REPLACE FUNCTION truxe.lock_org_for_change(org uuid, me uuid)
RETURNS truxe.membership_role LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM truxe.require_org_admin(org, me);
  PERFORM 1 FROM truxe.organizations o WHERE o.id = org FOR NO KEY UPDATE;
  RETURN truxe.require_org_admin(org, me);
END
$$;

-- Rights (lock_org_for_change) before the member lookup.
CREATE OR REPLACE FUNCTION truxe.change_role(org_id uuid, user_id uuid, role truxe.membership_role)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me uuid := truxe.require_user();
  my_role truxe.membership_role;
  old_role truxe.membership_role;
BEGIN
  IF role IS NULL THEN
    RAISE EXCEPTION 'role must be given' USING ERRCODE = '22023';
  END IF;
  my_role := truxe.lock_org_for_change(change_role.org_id, me);
  old_role := truxe.member_role(change_role.org_id, change_role.user_id);
  IF (old_role = 'owner' OR change_role.role = 'owner') AND my_role <> 'owner' THEN
    RAISE EXCEPTION 'only an owner may grant or take the owner role' USING ERRCODE = '42501';
  END IF;
  IF old_role = 'owner' AND change_role.role <> 'owner'
     AND truxe.other_owners(change_role.org_id, change_role.user_id) = 0 THEN
    RAISE EXCEPTION 'organization % would lose its last owner', change_role.org_id USING ERRCODE = '23514';
  END IF;
  UPDATE truxe.memberships m SET role = change_role.role
   WHERE m.org_id = change_role.org_id AND m.user_id = change_role.user_id AND m.role <> change_role.role;
END
$$;

-- Rights before any lookup or lock unless the caller removes their own membership.
CREATE OR REPLACE FUNCTION truxe.remove_member(org_id uuid, user_id uuid)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me uuid := truxe.require_user();
  my_role truxe.membership_role;
  old_role truxe.membership_role;
BEGIN
  IF me IS DISTINCT FROM remove_member.user_id THEN
    my_role := truxe.lock_org_for_change(remove_member.org_id, me);
    old_role := truxe.member_role(remove_member.org_id, remove_member.user_id);
    IF old_role = 'owner' AND my_role <> 'owner' THEN
      RAISE EXCEPTION 'only an owner may remove an owner' USING ERRCODE = '42501';
    END IF;
  ELSE
    -- the caller's own membership: nothing but the caller's own row is looked at before the lock
    PERFORM truxe.member_role(remove_member.org_id, me);
    PERFORM 1 FROM truxe.organizations o WHERE o.id = remove_member.org_id FOR NO KEY UPDATE;
    old_role := truxe.member_role(remove_member.org_id, me);
  END IF;
  IF old_role = 'owner' AND truxe.other_owners(remove_member.org_id, remove_member.user_id) = 0 THEN
    RAISE EXCEPTION 'organization % would lose its last owner', remove_member.org_id USING ERRCODE = '23514';
  END IF;
  DELETE FROM truxe.memberships m WHERE m.org_id = remove_member.org_id AND m.user_id = remove_member.user_id;
END
$$;

-- New: the role running the statement (a SET ROLE's, else the login), and whether it is a
-- superuser or service_account member (both inlined: no SET clause, every name qualified).
CREATE FUNCTION truxe.calling_role()
RETURNS name LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN pg_catalog.current_setting('role') OPERATOR(pg_catalog.=) 'none' THEN session_user
              ELSE pg_catalog.current_setting('role')::pg_catalog.name END;
$$;

CREATE FUNCTION truxe.caller_is_service()
RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT pg_catalog.pg_has_role(truxe.calling_role(), 'service_account', 'MEMBER');
$$;
-- calling_role is internal from the start (owner only: sql/grants.sql)
REVOKE ALL ON FUNCTION truxe.calling_role() FROM PUBLIC;
REVOKE ALL ON FUNCTION truxe.caller_is_service() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.caller_is_service() TO service_account;

-- has_permission: as authenticated only about oneself or users joined in an org one
-- administers (else false); ancestors from truxe.org_closure.
CREATE OR REPLACE FUNCTION truxe.has_permission(org_id uuid, permission text,
                                     user_id uuid DEFAULT truxe.current_user_id())
RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  -- (nested: the outer test stays a simple expression, cheap for the common callers)
  IF has_permission.user_id IS DISTINCT FROM truxe.current_user_id() AND NOT truxe.caller_is_service() THEN
    IF NOT EXISTS (SELECT 1 FROM truxe.memberships m
                    WHERE m.user_id = has_permission.user_id AND m.joined_at IS NOT NULL
                      AND m.org_id = ANY (truxe.admin_org_ids())) THEN
      RETURN false;
    END IF;
  END IF;
  RETURN (
    WITH held AS (
      SELECT m.role, m.permissions FROM truxe.memberships m
       WHERE m.org_id = has_permission.org_id AND m.user_id = has_permission.user_id
         AND m.joined_at IS NOT NULL
      UNION ALL
      SELECT m.role, '[]'::jsonb FROM truxe.org_closure c JOIN truxe.memberships m ON m.org_id = c.ancestor_id
       WHERE c.descendant_id = has_permission.org_id AND m.user_id = has_permission.user_id
         AND m.joined_at IS NOT NULL AND m.role IN ('owner', 'admin')
    ), granted(p) AS (
      SELECT rp.permission FROM held h JOIN truxe.role_permissions rp ON rp.role = h.role
      UNION ALL
      SELECT e FROM held h, jsonb_array_elements_text(h.permissions) e
    )
    SELECT coalesce(bool_or(g.p = '*' OR g.p = has_permission.permission
                            OR (g.p LIKE '%:*'
                                AND split_part(g.p, ':', 1) = split_part(has_permission.permission, ':', 1))),
                    false)
      FROM granted g);
END
$$;

-- New: the request settings as audit rows record them; defaults of audit_logs' request
-- columns, evaluated as the inserting role.
-- request_ip() and request_id() are Rust (src/audit.rs): the parsers of truxe's own audit
-- rows, without an exception block (Citus refuses a subtransaction per row of a bulk insert)
CREATE FUNCTION truxe.request_ip() RETURNS inet
LANGUAGE c STABLE SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'request_ip_setting_wrapper';
REVOKE ALL ON FUNCTION truxe.request_ip() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.request_ip() TO service_account, authenticated;

CREATE FUNCTION truxe.request_user_agent()
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT left(nullif(current_setting('app.user_agent', true), ''), 512);
$$;
REVOKE ALL ON FUNCTION truxe.request_user_agent() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.request_user_agent() TO service_account, authenticated;

CREATE FUNCTION truxe.request_id() RETURNS uuid
LANGUAGE c STABLE SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'request_id_setting_wrapper';
REVOKE ALL ON FUNCTION truxe.request_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.request_id() TO service_account, authenticated;

-- New: truxe's own audit actions (every audit_action label), which no app may write.
CREATE FUNCTION truxe.is_builtin_audit_action(action text)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
  SELECT action = ANY (enum_range(NULL::truxe.audit_action)::text[]);
$$;
REVOKE ALL ON FUNCTION truxe.is_builtin_audit_action(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.is_builtin_audit_action(text) TO service_account, authenticated;
ALTER TABLE truxe.audit_logs
  ALTER COLUMN ip SET DEFAULT truxe.request_ip(),
  ALTER COLUMN user_agent SET DEFAULT truxe.request_user_agent(),
  ALTER COLUMN request_id SET DEFAULT truxe.request_id();

-- audit_logs: own name, an org one may act in (or none), never a truxe action.
DROP POLICY audit_self_insert ON truxe.audit_logs;
CREATE POLICY audit_self_insert ON truxe.audit_logs FOR INSERT TO authenticated
  WITH CHECK (actor_user_id = (SELECT truxe.current_user_id())
              AND (org_id IS NULL OR org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[]))
              AND NOT truxe.is_builtin_audit_action(action::text));
-- authenticated chooses neither the request context nor id/created_at of its audit rows.
REVOKE INSERT ON truxe.audit_logs FROM authenticated;
GRANT INSERT (org_id, actor_user_id, action, target_type, target_id, details)
  ON truxe.audit_logs TO authenticated;

-- users: visible through joined memberships only (a pending invitation reveals nothing).
DROP POLICY user_read ON truxe.users;
CREATE POLICY user_read ON truxe.users FOR SELECT TO authenticated
  USING (id = (SELECT truxe.current_user_id())
         OR id IN (SELECT m.user_id FROM truxe.memberships m
                    WHERE m.org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
                      AND m.joined_at IS NOT NULL));

-- == Sessions: hashed bearer values, device list, access ends (issue 20) ==
-- A session's jti and refresh_jti are bearer credentials: from 0.2 only their SHA-256 (of
-- the uuid's 16 bytes: sha256(uuid_send(x)), the same bytes as src/session.rs bearer_hash)
-- is stored, and a public `id` names the session everywhere else. Existing rows are hashed
-- in place, so sessions issued by 0.1.0 keep validating and refreshing.
-- Audit rows written before this update are left as they are (append-only) and contain
-- jtis: `SELECT truxe.revoke_user_sessions(id, 'upgrade') FROM truxe.users` ends every
-- session they could name (docs/security.md).

-- the primary key moves to the new id; the jti's index is rebuilt on its hash below
ALTER TABLE truxe.sessions DROP CONSTRAINT sessions_pkey;
-- the columns keep their place (fresh installs declare them in the same order) and get
-- names that say what they hold
ALTER TABLE truxe.sessions RENAME COLUMN jti TO jti_hash;
ALTER TABLE truxe.sessions RENAME COLUMN refresh_jti TO refresh_jti_hash;
ALTER TABLE truxe.sessions RENAME CONSTRAINT sessions_refresh_jti_key TO sessions_refresh_jti_hash_key;
-- PostgreSQL 18 keeps NOT NULL as a named constraint, named after the column when it was
-- made: give it the name a fresh install gives (15 and 16 have no such constraint)
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_constraint
              WHERE conrelid = 'truxe.sessions'::pg_catalog.regclass
                AND conname = 'sessions_jti_not_null') THEN
    ALTER TABLE truxe.sessions RENAME CONSTRAINT sessions_jti_not_null TO sessions_jti_hash_not_null;
  END IF;
END
$$;
-- one rewrite: hash both tokens, append the public id (a random one per existing row),
-- and the constraints sql/schema.sql declares (32-byte hashes: a clear uuid cannot be
-- stored there by mistake)
ALTER TABLE truxe.sessions
  ALTER COLUMN jti_hash DROP DEFAULT,
  ALTER COLUMN jti_hash TYPE bytea USING sha256(uuid_send(jti_hash)),
  ALTER COLUMN jti_hash SET DEFAULT sha256(uuid_send(gen_random_uuid())),
  ALTER COLUMN jti_hash SET NOT NULL,
  ALTER COLUMN refresh_jti_hash TYPE bytea USING sha256(uuid_send(refresh_jti_hash)),
  ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid(),
  ADD COLUMN aal smallint NOT NULL DEFAULT 1,
  ADD CONSTRAINT sessions_pkey PRIMARY KEY (id),
  ADD CONSTRAINT sessions_jti_hash_key UNIQUE (jti_hash),
  ADD CONSTRAINT jti_hash_is_sha256 CHECK (octet_length(jti_hash) = 32),
  ADD CONSTRAINT refresh_jti_hash_is_sha256 CHECK (octet_length(refresh_jti_hash) = 32),
  ADD CONSTRAINT aal_is_1_or_2 CHECK (aal IN (1, 2));
-- family_id was the family's first jti (a bearer value, and the audit rows' family_id):
-- each family gets a fresh random id — not the id of its first row, which cleanup may
-- already have deleted. replaced_by was the jti of the session a rotation created: now
-- that session's id (NULL when cleanup deleted it: the grace needs it live anyway).
-- MATERIALIZED: one random id per family, computed once.
WITH f AS MATERIALIZED (
  SELECT s.family_id AS old_id, gen_random_uuid() AS new_id
    FROM truxe.sessions s GROUP BY s.family_id
)
UPDATE truxe.sessions s
   SET family_id = f.new_id,
       replaced_by = (SELECT c.id FROM truxe.sessions c
                       WHERE c.jti_hash = sha256(uuid_send(s.replaced_by)))
  FROM f
 WHERE s.family_id = f.old_id;

-- authenticated lists its own sessions (policy session_read) without the token hashes
REVOKE SELECT ON truxe.sessions FROM authenticated;
GRANT SELECT (id, user_id, org_id, family_id, device_info, ip, user_agent, created_at,
  expires_at, last_used_at, revoked_at, revoked_reason, replaced_by, aal) ON truxe.sessions TO authenticated;

-- create_session / refresh_session read truxe.org_closure (the ancestor owner/admin
-- re-check), which no role may read: SECURITY DEFINER, still service_account-only. Every
-- session function pins its search_path (0.1's refresh_session called make_interval
-- through the caller's path).
ALTER FUNCTION truxe.create_session(uuid, uuid, interval, jsonb, inet, text)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.refresh_session(uuid, interval)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.revoke_session(uuid, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.revoke_user_sessions(uuid, text) SET search_path = pg_catalog, pg_temp;

-- "sign out that device": own sessions as authenticated, any as service_account
CREATE FUNCTION truxe.revoke_session_by_id(session_id uuid) RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'revoke_session_by_id_wrapper';
REVOKE ALL ON FUNCTION truxe.revoke_session_by_id(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.revoke_session_by_id(uuid) TO service_account, authenticated;

-- access ends with membership and status, in the same transaction (src/session.rs)
CREATE FUNCTION truxe.end_sessions_on_membership_delete() RETURNS trigger LANGUAGE c SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'end_sessions_on_membership_delete_wrapper';
CREATE FUNCTION truxe.end_sessions_on_status_change() RETURNS trigger LANGUAGE c SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'end_sessions_on_status_change_wrapper';
CREATE TRIGGER memberships_end_sessions AFTER DELETE ON truxe.memberships
  FOR EACH ROW EXECUTE FUNCTION truxe.end_sessions_on_membership_delete();
CREATE TRIGGER users_end_sessions AFTER UPDATE OF status ON truxe.users
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status <> 'active')
  EXECUTE FUNCTION truxe.end_sessions_on_status_change();
-- trigger functions are called by their triggers only
REVOKE ALL ON FUNCTION truxe.end_sessions_on_membership_delete(), truxe.end_sessions_on_status_change() FROM PUBLIC;

-- == Hardening: moves, name resolution, per-tree locks, hostile input (issue 21) ==

-- Name resolution: every function pins search_path, so none resolves a function, operator
-- or type through a path the caller chose (current_user_id/current_org_id resolve no name
-- at all and stay unpinned: src/context.rs).
-- The two SQL tree walkers keep no SET clause (it would stop their inlining): their bodies
-- name every table and operator with its schema instead (sql/hierarchy.sql).
CREATE OR REPLACE FUNCTION truxe.org_ancestors(org_id uuid)
RETURNS TABLE(org_id uuid, depth int) LANGUAGE sql STABLE AS $$
  WITH RECURSIVE up(org_id, depth) AS (
    SELECT o.parent_org_id, 1 FROM truxe.organizations o
     WHERE o.id OPERATOR(pg_catalog.=) $1 AND o.parent_org_id IS NOT NULL
    UNION ALL
    SELECT o.parent_org_id, up.depth OPERATOR(pg_catalog.+) 1
      FROM truxe.organizations o JOIN up ON o.id OPERATOR(pg_catalog.=) up.org_id
     WHERE o.parent_org_id IS NOT NULL AND up.depth OPERATOR(pg_catalog.<) 1000
  )
  SELECT up.org_id, up.depth FROM up ORDER BY up.depth;
$$;

CREATE OR REPLACE FUNCTION truxe.org_descendants(org_id uuid)
RETURNS TABLE(org_id uuid, depth int) LANGUAGE sql STABLE AS $$
  WITH RECURSIVE down(org_id, depth) AS (
    SELECT o.id, 1 FROM truxe.organizations o WHERE o.parent_org_id OPERATOR(pg_catalog.=) $1
    UNION ALL
    SELECT o.id, down.depth OPERATOR(pg_catalog.+) 1
      FROM truxe.organizations o JOIN down ON o.parent_org_id OPERATOR(pg_catalog.=) down.org_id
     WHERE down.depth OPERATOR(pg_catalog.<) 1000
  )
  SELECT down.org_id, down.depth FROM down ORDER BY down.depth, down.org_id;
$$;

ALTER FUNCTION truxe.set_context(uuid, uuid, boolean) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.clear_context() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.audit_logs_append_only() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.verify_magic_link(text, inet, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.inspect_magic_link(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.record_usage(uuid, text, bigint, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.rate_limit_hit(text, integer, interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.cleanup_expired_sessions(interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.cleanup_expired_data(integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.purge_audit_logs(interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.version() SET search_path = pg_catalog, pg_temp;

-- Trigger functions are not callable as functions by anyone (they fire whatever the grants
-- say); 0.1 granted them to service_account with every other function.
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

-- Moves need owner rights on the org and its current parent: the re-parent trigger asks
-- owner_org_ids() (as admin_org_ids(), but owners only), which runs past RLS.
CREATE  FUNCTION truxe."owner_org_ids"() RETURNS uuid[] /* Vec < Uuid > */
STRICT STABLE SECURITY DEFINER PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'owner_org_ids_wrapper';
REVOKE ALL ON FUNCTION truxe.owner_org_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.owner_org_ids() TO service_account;
GRANT EXECUTE ON FUNCTION truxe.owner_org_ids() TO authenticated;

-- The hierarchy triggers move to their 0.2 entry points (the owner rule for moves, per-tree
-- locks); the 0.1 symbols keep 0.1's behaviour for databases not yet updated.
CREATE OR REPLACE FUNCTION truxe.check_org_reparent() RETURNS trigger
LANGUAGE c SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'check_org_reparent_v2_wrapper';
CREATE OR REPLACE FUNCTION truxe.maintain_org_hierarchy() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_bitmapscan = off
AS 'MODULE_PATHNAME', 'maintain_org_hierarchy_v2_wrapper';

-- Per-tree serialisation: one lock row per tree (its root) instead of one row for all
-- trees, so one tenant's open transaction no longer stalls every other tenant's hierarchy
-- change. The old row held no data; the new rows are created on demand. (The update's own
-- transaction holds the table's lock, so no tree change interleaves.)
LOCK TABLE truxe.org_tree;
DROP TABLE truxe.org_tree;
CREATE TABLE truxe.org_tree (
  root_id uuid PRIMARY KEY,
  version bigint NOT NULL DEFAULT 0
);
ALTER TABLE truxe.org_tree ENABLE ROW LEVEL SECURITY;
-- the same ACL as a fresh install (grants.sql grants every table, then takes this one back)
GRANT SELECT ON truxe.org_tree TO service_account;
REVOKE ALL ON truxe.org_tree FROM service_account;

-- issue_magic_link: org_slug is citext like organizations.slug (issue 17), validated like it
-- (22023), and must name an existing org (P0002); search_path pinned. Created in its final
-- form in section "One error path (issue 16)".

-- security_report() also checks that every function pins search_path: see the final
-- replacement (section "Your own tables"), which carries every 0.2 check.

-- == Operations: metrics (issue 15) ==
-- rate_limits.exhausted_at: set by the first refused call of a window (rate_limit_hit), so
-- that metrics() can count exhausted windows; the table does not store the limit itself.
ALTER TABLE truxe.rate_limits ADD COLUMN exhausted_at timestamptz;
-- the open exhausted windows, counted index-only by metrics()
CREATE INDEX idx_rate_limits_exhausted ON truxe.rate_limits (window_end) WHERE exhausted_at IS NOT NULL;
-- metrics() counts the last hour's events per action index-only; the new index replaces
-- idx_audit_logs_action, its prefix
CREATE INDEX idx_audit_logs_action_created ON truxe.audit_logs (action, created_at);
DROP INDEX truxe.idx_audit_logs_action;
-- New: truxe.metrics(), for service_account and pg_monitor: created once, at the end of this
-- script (section "Metrics read indexes only"), after the last of the tables it reads.
-- pg_monitor reaches the schema for this function only: it holds no other truxe right
GRANT USAGE ON SCHEMA truxe TO pg_monitor;

-- == Verified identity (issue 11) ==
-- The identity getters, authenticate and switch_org are Rust (src/identity.rs). Their
-- storage, truxe.verified_identity, and truxe.identity_mode are settings the library
-- registers: nothing to create here.
CREATE FUNCTION truxe."authenticate"(
	"token" TEXT
) RETURNS TABLE (
	"user_id" uuid,
	"org_id" uuid,
	"expires_at" timestamp with time zone,
	"aal" smallint
)
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'authenticate_wrapper';
CREATE FUNCTION truxe."switch_org"(
	"org_id" uuid
) RETURNS void
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'switch_org_wrapper';
CREATE FUNCTION truxe."current_session_id"() RETURNS uuid
STRICT STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'current_session_id_wrapper';
CREATE FUNCTION truxe."current_api_key_id"() RETURNS uuid
STRICT STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'current_api_key_id_wrapper';
CREATE FUNCTION truxe."current_aal"() RETURNS smallint
STRICT STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'current_aal_wrapper';
CREATE FUNCTION truxe."identity_source"() RETURNS TEXT
STRICT STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'identity_source_wrapper';
REVOKE ALL ON FUNCTION truxe.authenticate(text), truxe.switch_org(uuid),
  truxe.current_session_id(), truxe.current_api_key_id(), truxe.current_aal(),
  truxe.identity_source() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.authenticate(text), truxe.switch_org(uuid),
  truxe.current_session_id(), truxe.current_api_key_id(), truxe.current_aal(),
  truxe.identity_source() TO authenticated, service_account;

-- set_context refuses an org the user may not act in, and any call from an untrusted login
-- under identity_mode = verified: Rust now (it reads memberships, SECURITY DEFINER); same
-- signature and grants
CREATE OR REPLACE FUNCTION truxe."set_context"(
	"user_id" uuid,
	"org_id" uuid DEFAULT NULL,
	"is_local" bool DEFAULT true
) RETURNS void
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_context_wrapper';

-- the org sets narrow to the acting org, and know API keys: same C symbols; pgrx now
-- declares them, STRICT like every argument-less pgrx function (no behaviour change)
ALTER FUNCTION truxe.accessible_org_ids() STRICT;
ALTER FUNCTION truxe.admin_org_ids() STRICT;
ALTER FUNCTION truxe.invited_org_ids() STRICT;

-- with an acting org, a user's own memberships elsewhere are outside it: only their own
-- pending invitations stay visible
ALTER POLICY membership_read ON truxe.memberships
  USING (org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
         OR (user_id = (SELECT truxe.current_user_id())
             AND (joined_at IS NULL OR (SELECT truxe.current_org_id()) IS NULL)));


-- == API keys (issue 11) ==
-- the table, its policies and the creator-removal trigger: the same text as sql/api_keys.sql
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

-- the key functions are Rust (src/api_key.rs)
CREATE FUNCTION truxe.create_api_key(org_id uuid, name text, scopes text[] DEFAULT '{}',
                                     ttl interval DEFAULT NULL, metadata jsonb DEFAULT '{}')
RETURNS TABLE(key_id uuid, key text, expires_at timestamptz)
LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'create_api_key_wrapper';
CREATE FUNCTION truxe."authenticate_api_key"(
	"key" TEXT
) RETURNS TABLE (
	"key_id" uuid,
	"org_id" uuid,
	"scopes" TEXT[]
)
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'authenticate_api_key_wrapper';
CREATE FUNCTION truxe."revoke_api_key"(
	"key_id" uuid
) RETURNS bool
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'revoke_api_key_wrapper';

-- has_permission knows API keys; the wildcard rule and the rights computation become
-- functions of their own, shared with create_api_key (the same text as sql/orgs.sql)
-- Whether a granted permission covers the wanted one: equal, '*', or 'resource:*' for any
-- action on that resource. The one wildcard rule: memberships and API key scopes use it.
CREATE FUNCTION truxe.permission_matches(granted text, wanted text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT granted OPERATOR(pg_catalog.=) '*' OR granted OPERATOR(pg_catalog.=) wanted
         OR (granted OPERATOR(pg_catalog.~~) '%:*'
             AND pg_catalog.split_part(granted, ':', 1)
                 OPERATOR(pg_catalog.=) pg_catalog.split_part(wanted, ':', 1));
$$;

-- Whether user_id holds `permission` on org_id: the role defaults of truxe.role_permissions
-- plus the membership's own permissions array; owners/admins of an ancestor
-- (truxe.org_closure) hold their role's permissions here too. Pending memberships grant
-- nothing. No rights check: only has_permission and create_api_key (SECURITY DEFINER) call
-- it, after their own.
CREATE FUNCTION truxe.user_holds_permission(org_id uuid, permission text, user_id uuid)
RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN EXISTS (
    SELECT 1 FROM truxe.memberships m
     WHERE m.user_id = user_holds_permission.user_id AND m.joined_at IS NOT NULL
       AND (m.org_id = user_holds_permission.org_id
            OR (m.role IN ('owner', 'admin')
                AND m.org_id IN (SELECT c.ancestor_id FROM truxe.org_closure c
                                  WHERE c.descendant_id = user_holds_permission.org_id)))
       AND (EXISTS (SELECT 1 FROM truxe.role_permissions rp
                     WHERE rp.role = m.role
                       AND truxe.permission_matches(rp.permission, user_holds_permission.permission))
            OR (m.org_id = user_holds_permission.org_id
                AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(m.permissions) e
                             WHERE truxe.permission_matches(e, user_holds_permission.permission)))));
END
$$;

-- Whether user_id holds `permission` ('resource:action') on org_id
-- (truxe.user_holds_permission). False (never NULL) for unknown users/orgs. Callable by
-- authenticated and service_account; a caller that is not a superuser or service_account
-- member may ask only about itself (the current user) or about a user with a joined
-- membership in an org where the caller is owner or admin (directly or through an
-- ancestor): for anyone else the answer is false, without reading their rights. Under an
-- API key identity (user_id NULL): true exactly when org_id is the key's org, a scope of
-- the live key matches, and the key's creator still holds the permission there.
CREATE OR REPLACE FUNCTION truxe.has_permission(org_id uuid, permission text,
                                     user_id uuid DEFAULT truxe.current_user_id())
RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  acting_key uuid;
  key_creator uuid;
BEGIN
  IF has_permission.user_id IS NULL AND truxe.current_api_key_id() IS NOT NULL THEN
    -- the live key's row by its org and id, then its creator's rights apart: on Citus
    -- api_keys is distributed by org_id, so the row is read in one shard, where neither
    -- the identity (a variable here, sent as a value) nor the memberships are
    acting_key := truxe.current_api_key_id();
    SELECT k.created_by INTO key_creator FROM truxe.api_keys k
     WHERE k.org_id = has_permission.org_id AND k.id = acting_key
       AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
       AND EXISTS (SELECT 1 FROM unnest(k.scopes) s
                    WHERE truxe.permission_matches(s, has_permission.permission));
    RETURN FOUND AND truxe.user_holds_permission(has_permission.org_id, has_permission.permission,
                                                 key_creator);
  END IF;
  -- (nested: the outer test stays a simple expression, cheap for the common callers)
  IF has_permission.user_id IS DISTINCT FROM truxe.current_user_id() AND NOT truxe.caller_is_service() THEN
    IF NOT EXISTS (SELECT 1 FROM truxe.memberships m
                    WHERE m.user_id = has_permission.user_id AND m.joined_at IS NOT NULL
                      AND m.org_id = ANY (truxe.admin_org_ids())) THEN
      RETURN false;
    END IF;
  END IF;
  RETURN truxe.user_holds_permission(has_permission.org_id, has_permission.permission,
                                     has_permission.user_id);
END
$$;


REVOKE ALL ON truxe.api_keys FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON truxe.api_keys TO service_account;
GRANT SELECT (id, org_id, name, scopes, created_by, created_at, expires_at, last_used_at,
  revoked_at, metadata) ON truxe.api_keys TO authenticated;
REVOKE ALL ON FUNCTION truxe.create_api_key(uuid, text, text[], interval, jsonb),
  truxe.authenticate_api_key(text), truxe.revoke_api_key(uuid),
  truxe.permission_matches(text, text), truxe.user_holds_permission(uuid, text, uuid),
  truxe.revoke_api_keys_on_membership_delete() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.create_api_key(uuid, text, text[], interval, jsonb),
  truxe.authenticate_api_key(text), truxe.revoke_api_key(uuid) TO authenticated, service_account;
-- == Second factors and secrets at rest (issue 13) ==
-- Why: TOTP second factors with recovery codes, a session assurance level raised by a
-- second factor, and an encrypted vault for an org's credentials, with keys kept in a file
-- outside the database (truxe.encryption_key_file) and rotation. The fresh-install side is
-- in sql/schema.sql (enum labels), sql/vault.sql, sql/mfa.sql, sql/grants.sql,
-- src/vault.rs and src/mfa.rs.

-- New audit actions (appended: the same order as the fresh install's enum).
ALTER TYPE truxe.audit_action ADD VALUE 'secret.written';
ALTER TYPE truxe.audit_action ADD VALUE 'secret.read';
ALTER TYPE truxe.audit_action ADD VALUE 'secret.deleted';
ALTER TYPE truxe.audit_action ADD VALUE 'session.mfa_verified';
ALTER TYPE truxe.audit_action ADD VALUE 'mfa.enrolled';
ALTER TYPE truxe.audit_action ADD VALUE 'mfa.unenrolled';
ALTER TYPE truxe.audit_action ADD VALUE 'mfa.locked';
ALTER TYPE truxe.audit_action ADD VALUE 'mfa.recovery_codes_generated';
ALTER TYPE truxe.audit_action ADD VALUE 'mfa.recovery_code_used';

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
-- a dump keeps the ciphertexts (never a key)
SELECT pg_catalog.pg_extension_config_dump('truxe.secrets', '');

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

-- Nobody but the extension owner reads the vault, the seeds or the code hashes; factor
-- metadata is readable by service_account and (its own, policy factor_self_read) by
-- authenticated. (GRANT then REVOKE gives the same ACL as a fresh install, where
-- sql/grants.sql grants every table to service_account and then takes these back.)
GRANT SELECT ON truxe.secrets, truxe.mfa_factors, truxe.mfa_recovery_codes TO service_account;
REVOKE ALL ON truxe.secrets, truxe.mfa_factors, truxe.mfa_recovery_codes FROM service_account;
GRANT SELECT (id, user_id, kind, friendly_name, status, created_at, verified_at, last_used_step,
  failed_attempts, locked_until) ON truxe.mfa_factors TO service_account, authenticated;

-- New functions (src/vault.rs, src/mfa.rs), service_account only.
CREATE FUNCTION truxe.put_secret(org_id uuid, name text, value text, metadata jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'put_secret_wrapper';
CREATE FUNCTION truxe.get_secret(org_id uuid, name text)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'get_secret_wrapper';
CREATE FUNCTION truxe.delete_secret(org_id uuid, name text)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'delete_secret_wrapper';
CREATE FUNCTION truxe.rotate_encryption_key(batch_size integer DEFAULT 1000)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'rotate_encryption_key_wrapper';
CREATE FUNCTION truxe.enroll_totp(user_id uuid, issuer text, friendly_name text DEFAULT 'authenticator')
RETURNS TABLE(factor_id uuid, secret text, otpauth_uri text)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'enroll_totp_wrapper';
CREATE FUNCTION truxe.verify_totp(factor_id uuid, code text)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'verify_totp_wrapper';
CREATE FUNCTION truxe.unenroll_factor(factor_id uuid)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'unenroll_factor_wrapper';
CREATE FUNCTION truxe.generate_recovery_codes(user_id uuid, n integer DEFAULT 10)
RETURNS SETOF text
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 10 AS 'MODULE_PATHNAME', 'generate_recovery_codes_wrapper';
CREATE FUNCTION truxe.use_recovery_code(user_id uuid, code text)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'use_recovery_code_wrapper';
CREATE FUNCTION truxe.elevate_session(jti uuid, factor_id uuid, code text)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'elevate_session_wrapper';
REVOKE ALL ON FUNCTION truxe.put_secret(uuid, text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.put_secret(uuid, text, text, jsonb) TO service_account;
REVOKE ALL ON FUNCTION truxe.get_secret(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.get_secret(uuid, text) TO service_account;
REVOKE ALL ON FUNCTION truxe.delete_secret(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.delete_secret(uuid, text) TO service_account;
REVOKE ALL ON FUNCTION truxe.rotate_encryption_key(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.rotate_encryption_key(integer) TO service_account;
REVOKE ALL ON FUNCTION truxe.enroll_totp(uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.enroll_totp(uuid, text, text) TO service_account;
REVOKE ALL ON FUNCTION truxe.verify_totp(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.verify_totp(uuid, text) TO service_account;
REVOKE ALL ON FUNCTION truxe.unenroll_factor(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.unenroll_factor(uuid) TO service_account;
REVOKE ALL ON FUNCTION truxe.generate_recovery_codes(uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.generate_recovery_codes(uuid, integer) TO service_account;
REVOKE ALL ON FUNCTION truxe.use_recovery_code(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.use_recovery_code(uuid, text) TO service_account;
REVOKE ALL ON FUNCTION truxe.elevate_session(uuid, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.elevate_session(uuid, uuid, text) TO service_account;

-- == Your own tables (issue 14) ==
-- Why: an application's own tables (projects, invoices…) need the same tenant policies and
-- audit trail as truxe's, audit_logs must take the application's own actions, and the audit
-- log must show any later change, deletion or insertion, even by a superuser. The
-- fresh-install side is sql/apptables.sql, sql/seal.sql, sql/schema.sql (the action
-- column), sql/security_report.sql, sql/grants.sql, src/apptables.rs and src/seal.rs.

-- audit_logs.action becomes text, so that an application may record its own actions
-- ('resource.verb'); truxe's own stay the labels of the enum truxe.audit_action — every label
-- present now, including any added since 0.1.0 — and is_builtin_audit_action() keeps reading
-- them from the enum. Every existing value is kept as its text. The INSERT policy names the
-- column, so it is dropped and created again with the same expression; the column's index
-- is rebuilt by the type change (a rewrite of the table: README, "Upgrading").
-- valid_audit_action, the rule of the CHECK constraint action_format, is Rust
-- (src/apptables.rs): the constraint runs it for every audit row, and a SQL function was
-- parsed (with a SET clause, planned) for each; it resolves no name, so no SET clause.
CREATE FUNCTION truxe."valid_audit_action"(
	"action" TEXT /* & str */
) RETURNS bool /* bool */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'valid_audit_action_wrapper';
REVOKE ALL ON FUNCTION truxe.valid_audit_action(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.valid_audit_action(text) TO service_account, authenticated;
DROP POLICY audit_self_insert ON truxe.audit_logs;
ALTER TABLE truxe.audit_logs ALTER COLUMN action TYPE text USING action::text;
ALTER TABLE truxe.audit_logs ADD CONSTRAINT action_format CHECK (truxe.valid_audit_action(action));
CREATE POLICY audit_self_insert ON truxe.audit_logs FOR INSERT TO authenticated
  WITH CHECK (actor_user_id = (SELECT truxe.current_user_id())
              AND (org_id IS NULL OR org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[]))
              AND NOT truxe.is_builtin_audit_action(action::text));

-- New: the audit trigger of application tables (src/apptables.rs); nobody holds EXECUTE.
CREATE FUNCTION truxe.audit_app_table() RETURNS trigger LANGUAGE c
  SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'audit_app_table_wrapper';
REVOKE ALL ON FUNCTION truxe.audit_app_table() FROM PUBLIC;

-- New: permitted_org_ids, protect_table, unprotect_table, audit_table and their helpers
-- (the text of sql/apptables.sql).

-- The orgs where the acting identity holds `permission` ('resource:action'): the rules of
-- truxe.has_permission (role defaults of truxe.role_permissions, the membership's own
-- permissions array, 'resource:*' and '*' wildcards, owners/admins of an ancestor holding
-- their role's permissions on descendants), within truxe.accessible_org_ids() — so every
-- rule that narrows what a user may see (an inactive user, a pending invitation) narrows
-- this too. Under an API key: the key's org when the key holds the permission there.
-- Empty with no context. For policies, evaluated once per statement:
--   org_id = ANY ((SELECT truxe.permitted_org_ids('projects:write'))::uuid[])
-- Callable by authenticated and service_account. A malformed permission is 22023.
CREATE FUNCTION truxe.permitted_org_ids(permission text)
RETURNS uuid[] LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE me uuid := truxe.current_user_id();
BEGIN
  IF permission IS NULL OR permission !~ '^[a-z_]+:[a-z_]+$' THEN
    RAISE EXCEPTION 'invalid permission %: expected resource:action in lowercase letters and _',
      coalesce(to_json(left(permission, 64))::text, 'NULL') USING ERRCODE = '22023';
  END IF;
  IF me IS NULL THEN
    -- an API key: its own org, when it holds the permission there (has_permission's rule
    -- for keys: a matching scope, still held by the key's creator)
    IF truxe.current_api_key_id() IS NOT NULL
       AND truxe.has_permission(truxe.current_org_id(), permission) THEN
      RETURN ARRAY[truxe.current_org_id()];
    END IF;
    RETURN '{}';
  END IF;
  RETURN (
    WITH visible AS (SELECT truxe.accessible_org_ids() AS ids),
    held AS (
      SELECT m.org_id, m.role, m.permissions
        FROM truxe.memberships m, visible v
       WHERE m.user_id = me AND m.joined_at IS NOT NULL AND m.org_id = ANY (v.ids)
      UNION ALL
      SELECT c.descendant_id, m.role, '[]'::jsonb
        FROM truxe.memberships m JOIN truxe.org_closure c ON c.ancestor_id = m.org_id, visible v
       WHERE m.user_id = me AND m.joined_at IS NOT NULL AND m.role IN ('owner', 'admin')
         AND c.descendant_id = ANY (v.ids)
    )
    SELECT coalesce(array_agg(DISTINCT h.org_id), '{}') FROM held h
     WHERE EXISTS (
       SELECT 1 FROM (SELECT rp.permission FROM truxe.role_permissions rp WHERE rp.role = h.role
                      UNION ALL
                      SELECT e FROM jsonb_array_elements_text(h.permissions) e) g(p)
        WHERE truxe.permission_matches(g.p, permitted_org_ids.permission)));
END
$$;

-- Checks that `who` owns the application table `tbl` (42501, before anything else of it is
-- read: the same message whether or not it is a table), then that it is an ordinary or
-- partitioned table outside truxe and the system schemas (22023).
CREATE FUNCTION truxe.require_table_owner(tbl regclass, who name)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE c record;
BEGIN
  SELECT r.relowner, r.relkind, r.relnamespace INTO c FROM pg_class r WHERE r.oid = tbl;
  IF tbl IS NULL OR NOT FOUND OR NOT pg_has_role(who, c.relowner, 'USAGE') THEN
    RAISE EXCEPTION 'permission denied: only the owner of a table may protect or audit it'
      USING ERRCODE = '42501';
  END IF;
  IF c.relkind NOT IN ('r', 'p') THEN
    RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '22023';
  END IF;
  IF c.relnamespace IN ('truxe'::regnamespace, 'pg_catalog'::regnamespace,
                        'information_schema'::regnamespace, 'pg_toast'::regnamespace) THEN
    RAISE EXCEPTION '% is not an application table', tbl USING ERRCODE = '22023';
  END IF;
END
$$;

-- The number of column `org_column` of `tbl`, which must be a uuid column (22023).
CREATE FUNCTION truxe.org_column_of(tbl regclass, org_column name)
RETURNS smallint LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE a record;
BEGIN
  SELECT t.attnum, t.atttypid INTO a FROM pg_attribute t
   WHERE t.attrelid = tbl AND t.attname = org_column AND t.attnum > 0 AND NOT t.attisdropped;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'table % has no column %', tbl, coalesce(quote_ident(org_column), 'NULL')
      USING ERRCODE = '22023';
  END IF;
  IF a.atttypid <> 'uuid'::regtype THEN
    RAISE EXCEPTION 'column % of table % must be of type uuid, not %', quote_ident(org_column), tbl,
      a.atttypid::regtype USING ERRCODE = '22023';
  END IF;
  RETURN a.attnum;
END
$$;

-- Gives application table `tbl` truxe's tenant policies: enables and forces row level
-- security (the owner is subject to it too) and creates, replacing its own earlier ones:
--   truxe_read    SELECT for authenticated: rows whose org_column is in accessible_org_ids()
--   truxe_insert, truxe_update, truxe_delete for authenticated: the row's org (old and new
--                 for an update) in permitted_org_ids('<resource>:write')
--   truxe_service everything for service_account (the trusted backend), as on truxe's tables
-- each helper wrapped in (SELECT …), so it is evaluated once per statement (an InitPlan),
-- and an index on org_column when no valid, non-partial index leads with it. `resource`
-- defaults to the table's name and must be lowercase letters and _ (22023), as permissions
-- are. Idempotent. Caller: the table's owner (42501). No such uuid column: 22023. Runs as
-- the caller (SECURITY INVOKER): Postgres' own ownership checks apply as well.
CREATE FUNCTION truxe.protect_table(tbl regclass, org_column name DEFAULT 'org_id',
                                    resource text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  col smallint;
  res text;
  readable text;
  writable text;
  p name;
  idx regclass;
BEGIN
  PERFORM truxe.require_table_owner(tbl, current_user);
  col := truxe.org_column_of(tbl, org_column);
  res := coalesce(resource, (SELECT c.relname::text FROM pg_class c WHERE c.oid = tbl));
  IF res !~ '^[a-z_]+$' THEN
    RAISE EXCEPTION 'invalid resource %: lowercase letters and _ (pass resource => ''...'' for this table)',
      to_json(left(res, 64))::text USING ERRCODE = '22023';
  END IF;
  EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', tbl);
  FOR p IN SELECT pol.polname FROM pg_policy pol
            WHERE pol.polrelid = tbl
              AND pol.polname IN ('truxe_read', 'truxe_insert', 'truxe_update', 'truxe_delete', 'truxe_service')
  LOOP
    EXECUTE format('DROP POLICY %I ON %s', p, tbl);
  END LOOP;
  readable := format('%I = ANY ((SELECT truxe.accessible_org_ids())::uuid[])', org_column);
  writable := format('%I = ANY ((SELECT truxe.permitted_org_ids(%L))::uuid[])', org_column, res || ':write');
  EXECUTE format('CREATE POLICY truxe_read ON %s FOR SELECT TO authenticated USING (%s)', tbl, readable);
  EXECUTE format('CREATE POLICY truxe_insert ON %s FOR INSERT TO authenticated WITH CHECK (%s)', tbl, writable);
  EXECUTE format('CREATE POLICY truxe_update ON %s FOR UPDATE TO authenticated USING (%s) WITH CHECK (%s)',
                 tbl, writable, writable);
  EXECUTE format('CREATE POLICY truxe_delete ON %s FOR DELETE TO authenticated USING (%s)', tbl, writable);
  EXECUTE format('CREATE POLICY truxe_service ON %s TO service_account USING (true) WITH CHECK (true)', tbl);
  IF NOT EXISTS (SELECT 1 FROM pg_index i
                  WHERE i.indrelid = tbl AND i.indkey[0] = col AND i.indpred IS NULL AND i.indisvalid) THEN
    EXECUTE format('CREATE INDEX ON %s (%I)', tbl, org_column);
    SELECT i.indexrelid::regclass INTO idx FROM pg_index i
     WHERE i.indrelid = tbl AND i.indkey[0] = col AND i.indpred IS NULL
     ORDER BY i.indexrelid::oid::bigint DESC LIMIT 1;
    EXECUTE format('COMMENT ON INDEX %s IS %L', idx, 'created by truxe.protect_table');
  END IF;
END
$$;

-- Removes what protect_table created on `tbl`: its truxe_* policies and the index it made;
-- then, when no other policy is left on the table, turns row level security off (forced
-- and enabled). Idempotent. Caller: the table's owner (42501). SECURITY INVOKER.
CREATE FUNCTION truxe.unprotect_table(tbl regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  p name;
  idx regclass;
BEGIN
  PERFORM truxe.require_table_owner(tbl, current_user);
  FOR p IN SELECT pol.polname FROM pg_policy pol
            WHERE pol.polrelid = tbl
              AND pol.polname IN ('truxe_read', 'truxe_insert', 'truxe_update', 'truxe_delete', 'truxe_service')
  LOOP
    EXECUTE format('DROP POLICY %I ON %s', p, tbl);
  END LOOP;
  FOR idx IN SELECT i.indexrelid::regclass FROM pg_index i
              WHERE i.indrelid = tbl
                AND obj_description(i.indexrelid, 'pg_class') = 'created by truxe.protect_table'
  LOOP
    EXECUTE format('DROP INDEX %s', idx);
  END LOOP;
  IF NOT EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = tbl) THEN
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY', tbl);
  END IF;
END
$$;

-- Attaches truxe's audit trigger (truxe_audit, src/apptables.rs) to application table
-- `tbl`: one audit_logs row per inserted, updated or deleted row, action
-- '<table>.created|updated|deleted', with the acting user, the row's org (`org_column`, a
-- uuid column; NULL: rows without an org), the request context, target_type the table and
-- target_id its primary key, and details {table, new} / {table, old} / {table, old, new}
-- (an update records only the columns whose value changed, and nothing when none did).
-- Idempotent (run it again after changing the primary key). The table's name must make
-- valid actions that are not truxe's own (22023). Caller: the role running the statement
-- must own the table (42501). SECURITY DEFINER: creating a trigger needs EXECUTE on the
-- trigger function, which no role holds.
CREATE FUNCTION truxe.audit_table(tbl regclass, org_column name DEFAULT 'org_id')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  res text;
  verb text;
  args text[];
BEGIN
  PERFORM truxe.require_table_owner(tbl, truxe.calling_role());
  IF org_column IS NOT NULL THEN
    PERFORM truxe.org_column_of(tbl, org_column);
  END IF;
  res := (SELECT c.relname::text FROM pg_class c WHERE c.oid = tbl);
  FOREACH verb IN ARRAY ARRAY['created', 'updated', 'deleted'] LOOP
    IF NOT truxe.valid_audit_action(res || '.' || verb) THEN
      RAISE EXCEPTION 'table name % cannot name audit actions (resource.verb: lowercase letters, digits and _)',
        to_json(left(res, 64))::text USING ERRCODE = '22023';
    END IF;
    IF truxe.is_builtin_audit_action(res || '.' || verb) THEN
      RAISE EXCEPTION 'the audit actions of table % would be truxe''s own (%)', tbl, res || '.' || verb
        USING ERRCODE = '22023';
    END IF;
  END LOOP;
  args := ARRAY[res, coalesce(org_column::text, '')]
          || ARRAY(SELECT a.attname::text
                     FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord), pg_attribute a
                    WHERE i.indrelid = tbl AND i.indisprimary
                      AND a.attrelid = tbl AND a.attnum = k.attnum
                    ORDER BY k.ord);
  IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = 'truxe_audit') THEN
    EXECUTE format('DROP TRIGGER truxe_audit ON %s', tbl);
  END IF;
  EXECUTE format('CREATE TRIGGER truxe_audit AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW '
                 'EXECUTE FUNCTION truxe.audit_app_table(%s)',
                 tbl, (SELECT string_agg(quote_literal(x), ', ' ORDER BY n)
                         FROM unnest(args) WITH ORDINALITY u(x, n)));
END
$$;
REVOKE ALL ON FUNCTION truxe.permitted_org_ids(text),
  truxe.require_table_owner(regclass, name), truxe.org_column_of(regclass, name),
  truxe.protect_table(regclass, name, text), truxe.unprotect_table(regclass),
  truxe.audit_table(regclass, name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.permitted_org_ids(text),
  truxe.require_table_owner(regclass, name), truxe.org_column_of(regclass, name),
  truxe.protect_table(regclass, name, text), truxe.unprotect_table(regclass),
  truxe.audit_table(regclass, name) TO service_account;
-- policies call permitted_org_ids as the querying user
GRANT EXECUTE ON FUNCTION truxe.permitted_org_ids(text) TO authenticated;

-- security_report() also flags application tables with an org_id column and no row level
-- security: replaced once, in its final form, at the end of this script.

-- New: the sealed audit log (the text of sql/seal.sql) and the writers' wait it uses
-- (src/seal.rs).
CREATE  FUNCTION truxe."wait_for_audit_writers"() RETURNS void
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wait_for_audit_writers_wrapper';
CREATE TABLE truxe.audit_seals (
  id             bigserial PRIMARY KEY,
  after_id       bigint NOT NULL,
  to_id          bigint NOT NULL,
  row_count      bigint NOT NULL,
  rows_hash      bytea NOT NULL,
  min_created_at timestamptz,
  max_created_at timestamptz,
  floor_at       timestamptz NOT NULL,
  prev_hash      bytea NOT NULL,
  seal_hash      bytea NOT NULL,
  -- NULL: seal_hash is a plain SHA-256 chain. Reserved for an HMAC keyed from truxe's key
  -- file: the id of the key that computed seal_hash.
  key_id         text,
  sealed_at      timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT seal_range CHECK (after_id >= 0 AND to_id >= after_id),
  CONSTRAINT seal_row_count CHECK (row_count >= 0),
  CONSTRAINT seal_hash_lengths CHECK (length(rows_hash) = 32 AND length(prev_hash) = 32
                                      AND length(seal_hash) = 32)
);
COMMENT ON TABLE truxe.audit_seals IS
  'HMAC-SHA-256 (under the key file) or SHA-256 chain over truxe.audit_logs: written by truxe.seal_audit_log(), checked by truxe.verify_audit_log()';
SELECT pg_catalog.pg_extension_config_dump('truxe.audit_seals', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.audit_seals_id_seq', '');
-- deny by default; the trusted backend reads the seals (to copy the latest seal_hash out of
-- the database, where a superuser cannot rewrite it); only seal_audit_log writes them
ALTER TABLE truxe.audit_seals ENABLE ROW LEVEL SECURITY;
CREATE POLICY service_read ON truxe.audit_seals FOR SELECT TO service_account USING (true);

-- Append-only, as audit_logs: UPDATE, DELETE and TRUNCATE raise 55000, for every role, also
-- under session_replication_role = replica (ENABLE ALWAYS).
CREATE FUNCTION truxe.audit_seals_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RAISE EXCEPTION 'truxe.audit_seals is append-only: % is not allowed', lower(TG_OP)
    USING ERRCODE = '55000';
END
$$;
CREATE TRIGGER audit_seals_append_only
  BEFORE UPDATE OR DELETE OR TRUNCATE ON truxe.audit_seals
  FOR EACH STATEMENT EXECUTE FUNCTION truxe.audit_seals_append_only();
ALTER TABLE truxe.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only;

-- The audit rows with after_id < id <= to_id: how many, the SHA-256 over their digests in id
-- order, and their oldest and newest created_at. A row's digest is the SHA-256 of its
-- columns as a row literal, the columns named one by one (a column a later version adds
-- does not change the digest of rows sealed before it), with DateStyle and TimeZone pinned
-- so that no session setting changes the text of created_at.
CREATE FUNCTION truxe.audit_rows_digest(after_id bigint, to_id bigint,
                                        OUT row_count bigint, OUT rows_hash bytea,
                                        OUT min_created_at timestamptz, OUT max_created_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, MDY' SET TimeZone = 'UTC' AS $$
  SELECT count(*),
         sha256(coalesce(string_agg(sha256(textsend(ROW(
                  a.id, a.org_id, a.actor_user_id, a.action, a.target_type, a.target_id, a.details,
                  a.ip, a.user_agent, a.request_id, a.created_at)::text)), ''::bytea ORDER BY a.id),
                ''::bytea)),
         min(a.created_at), max(a.created_at)
    FROM truxe.audit_logs a
   WHERE a.id > audit_rows_digest.after_id AND a.id <= audit_rows_digest.to_id;
$$;

-- audit_seal_hash, seal_audit_log and verify_audit_log: created once, in their final form,
-- in the section "Sealed audit log under the key file" at the end of this script.
REVOKE ALL ON FUNCTION truxe.wait_for_audit_writers(), truxe.audit_seals_append_only(),
  truxe.audit_rows_digest(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.wait_for_audit_writers(), truxe.audit_rows_digest(bigint, bigint)
  TO service_account;
REVOKE ALL ON truxe.audit_seals, truxe.audit_seals_id_seq FROM PUBLIC;
-- the backend reads the seals (to keep the latest seal_hash outside the database); only
-- seal_audit_log writes them
GRANT SELECT ON truxe.audit_seals TO service_account;

-- == Codebase: internal helpers are not API (issue 16) ==
-- the organisation functions' helpers are called only by the SECURITY DEFINER functions
-- that use them (as the owner): service_account no longer executes them (sql/grants.sql)
REVOKE EXECUTE ON FUNCTION truxe.effective_role(uuid, uuid), truxe.require_user(),
  truxe.require_org_admin(uuid, uuid), truxe.lock_org_for_change(uuid, uuid),
  truxe.member_role(uuid, uuid), truxe.other_owners(uuid, uuid), truxe.caller_is_service()
  FROM service_account;


-- == One error path (issue 16) ==
-- truxe's own SQLSTATE TX429 cannot be raised through pgrx (it reports a code Postgres does
-- not define as XX000, src/error.rs): the functions that raise it have a hand-written C
-- entry point that raises it itself. issue_magic_link: the 0.1.0 function is dropped (a
-- different org_slug type; its C symbol raises 53400, kept for 0.1.0 schemas), created
-- again on the new symbol, SECURITY DEFINER with a pinned search_path, granted again.
DROP FUNCTION truxe.issue_magic_link(citext, text, interval, inet, text);
CREATE FUNCTION truxe.issue_magic_link(email citext, org_slug citext DEFAULT NULL,
                                       ttl interval DEFAULT '15 minutes', ip inet DEFAULT NULL,
                                       user_agent text DEFAULT NULL)
RETURNS TABLE(challenge_id uuid, token text, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'issue_magic_link_limited_wrapper';
REVOKE ALL ON FUNCTION truxe.issue_magic_link(citext, citext, interval, inet, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.issue_magic_link(citext, citext, interval, inet, text)
  TO service_account;


-- == Session policies (issue 12) ==
-- A family of sessions gets a hard end (truxe.session_max_lifetime from its first login),
-- an optional idle timeout and a per-user cap, all read from settings by the session
-- functions (src/session.rs); the catalog gains one column and one function.

-- the family's first login, on every row of the family (cleanup deletes old rows, so the
-- first row cannot be asked later); last column, as in sql/schema.sql
ALTER TABLE truxe.sessions ADD COLUMN family_created_at timestamptz NOT NULL DEFAULT now();
-- existing families: the oldest row each still has. A family whose first rows cleanup has
-- already deleted starts at its oldest remaining row (later than its real first login).
UPDATE truxe.sessions s
   SET family_created_at = f.first_login
  FROM (SELECT family_id, min(created_at) AS first_login
          FROM truxe.sessions GROUP BY family_id) f
 WHERE s.family_id = f.family_id;
-- a user sees when each of their sessions' families began
GRANT SELECT (family_created_at) ON truxe.sessions TO authenticated;

-- "sign out every other device": service_account for any live session, authenticated for
-- the session authenticate() verified (src/session.rs)
CREATE FUNCTION truxe.revoke_other_sessions(jti uuid) RETURNS integer
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'revoke_other_sessions_wrapper';
REVOKE ALL ON FUNCTION truxe.revoke_other_sessions(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.revoke_other_sessions(uuid) TO service_account, authenticated;


-- == Invitations by e-mail (issue 12) ==
-- truxe's own audit actions of the invitations (the enum's labels, as in sql/schema.sql;
-- not used in this script, so ADD VALUE inside the update's transaction is fine)
ALTER TYPE truxe.audit_action ADD VALUE 'invitation.sent';
ALTER TYPE truxe.audit_action ADD VALUE 'invitation.accepted';

-- invite_member's granting rules move to require_grant_rights, which invite_by_email
-- shares (the same text as sql/orgs.sql)
-- The rules every function that grants a membership follows (invite_member,
-- invite_by_email): `me` must be owner or admin of the org (42501 before any lookup); only
-- an owner may grant the owner role; each extra permission must have the format of
-- truxe.valid_permission (22023) and be held by `me` in that org (42501; an owner may grant
-- anything). A NULL role or permissions that are not a JSON array of strings: 22023.
-- Returns `me`'s effective role. With `quiet`, a refusal of rights (each 42501 above) is
-- NULL instead (truxe.inviter_still_may_invite: no exception block, so no subtransaction);
-- bad input still raises 22023. Executable by nobody but the owner (it takes `me` as an
-- argument): the SECURITY DEFINER functions that use it run as the owner. The checks of
-- each permission are queries, run only when there are permissions (most grants have none).
CREATE FUNCTION truxe.require_grant_rights(org uuid, me uuid, role truxe.membership_role,
                                           permissions jsonb, quiet boolean DEFAULT false)
RETURNS truxe.membership_role LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  my_role truxe.membership_role;
  bad boolean;
  p text;
BEGIN
  bad := role IS NULL OR permissions IS NULL OR jsonb_typeof(permissions) <> 'array';
  IF NOT bad AND jsonb_array_length(permissions) > 0 THEN
    bad := EXISTS (SELECT 1 FROM jsonb_array_elements(permissions) e WHERE jsonb_typeof(e) <> 'string');
  END IF;
  IF bad THEN
    RAISE EXCEPTION 'role must be given and permissions must be a JSON array of strings'
      USING ERRCODE = '22023';
  END IF;
  my_role := truxe.effective_role(org, me);
  IF my_role IS NULL OR my_role NOT IN ('owner', 'admin') THEN
    IF NOT quiet THEN
      PERFORM truxe.require_org_admin(org, me); -- raises its 42501
    END IF;
    RETURN NULL;
  END IF;
  IF require_grant_rights.role = 'owner' AND my_role <> 'owner' THEN
    IF quiet THEN RETURN NULL; END IF;
    RAISE EXCEPTION 'only an owner may invite an owner' USING ERRCODE = '42501';
  END IF;
  IF jsonb_array_length(permissions) > 0 THEN
    FOR p IN SELECT jsonb_array_elements_text(require_grant_rights.permissions) LOOP
      IF NOT truxe.valid_permission(p) THEN
        RAISE EXCEPTION 'invalid permission %: expected resource:action, resource:* or *',
          to_json(left(p, 64))::text USING ERRCODE = '22023';
      END IF;
      IF my_role <> 'owner' AND NOT truxe.has_permission(org, p, me) THEN
        IF quiet THEN RETURN NULL; END IF;
        RAISE EXCEPTION 'granting permission % requires holding it in organization %',
          to_json(left(p, 64))::text, org USING ERRCODE = '42501';
      END IF;
    END LOOP;
  END IF;
  RETURN my_role;
END
$$;

-- Invites a user (a pending membership), with the rules of truxe.require_grant_rights
-- (owner/admin, 42501 before any lookup; only an owner invites an owner; permissions within
-- the caller's, 22023/42501). Unknown user P0002; a second membership of the same user 23505.
CREATE OR REPLACE FUNCTION truxe.invite_member(org_id uuid, user_id uuid, role truxe.membership_role DEFAULT 'member',
                                    permissions jsonb DEFAULT '[]')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me uuid := truxe.require_user();
BEGIN
  PERFORM truxe.require_grant_rights(invite_member.org_id, me, invite_member.role,
                                     invite_member.permissions);
  IF NOT EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = invite_member.user_id) THEN
    RAISE EXCEPTION 'unknown user %', invite_member.user_id USING ERRCODE = 'P0002';
  END IF;
  INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by)
    VALUES (invite_member.org_id, invite_member.user_id, invite_member.role, invite_member.permissions,
            CASE WHEN me = invite_member.user_id THEN NULL ELSE me END)
    ON CONFLICT ON CONSTRAINT memberships_pkey DO NOTHING;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'user % is already a member of organization % or has a pending invitation to it',
      invite_member.user_id, invite_member.org_id USING ERRCODE = '23505';
  END IF;
END
$$;
-- an internal helper: only invite_member and invite_by_email (SECURITY DEFINER) call it
REVOKE ALL ON FUNCTION truxe.require_grant_rights(uuid, uuid, truxe.membership_role, jsonb, boolean) FROM PUBLIC;

-- the table, its policies and revoke_invitation: the same text as sql/invitations.sql
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

-- the token functions (src/invitation.rs), as pgrx declares them
CREATE FUNCTION truxe.accept_invitation_token(token text, user_id uuid DEFAULT NULL)
RETURNS TABLE(status text, org_id uuid, user_id uuid)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, truxe, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'accept_invitation_token_wrapper';
CREATE FUNCTION truxe.inspect_invitation(token text)
RETURNS TABLE(status text, org_id uuid, org_name text, email citext,
              role truxe.membership_role, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, truxe, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'inspect_invitation_wrapper';
-- invite_by_email: a C entry point that raises TX429 itself (section "One error path
-- (issue 16)"), SECURITY DEFINER: the acting user's rights are checked in its body
CREATE FUNCTION truxe.invite_by_email(org_id uuid, email citext,
                                      role truxe.membership_role DEFAULT 'member',
                                      permissions jsonb DEFAULT '[]', ttl interval DEFAULT '7 days')
RETURNS TABLE(invitation_id uuid, token text, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'invite_by_email_wrapper';

-- privileges as sql/grants.sql gives them: service_account everything; an org's
-- owners/admins read every column but the hash (policy invitation_admin_read) and invite or
-- revoke as the acting user; the token functions are service_account's
REVOKE ALL ON truxe.invitations FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON truxe.invitations TO service_account;
GRANT SELECT (id, org_id, email, role, permissions, invited_by, created_at, expires_at,
  accepted_at, accepted_by, revoked_at, attempts) ON truxe.invitations TO authenticated;
REVOKE ALL ON FUNCTION truxe.invite_by_email(uuid, citext, truxe.membership_role, jsonb, interval),
  truxe.revoke_invitation(uuid), truxe.inspect_invitation(text),
  truxe.accept_invitation_token(text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.invite_by_email(uuid, citext, truxe.membership_role, jsonb, interval),
  truxe.revoke_invitation(uuid), truxe.inspect_invitation(text),
  truxe.accept_invitation_token(text, uuid) TO service_account;
GRANT EXECUTE ON FUNCTION truxe.invite_by_email(uuid, citext, truxe.membership_role, jsonb, interval),
  truxe.revoke_invitation(uuid) TO authenticated;

-- New (issue 15): truxe.metrics() is created once, in its final form, in the section
-- "Metrics read indexes only" at the end of this script, after the last of the tables it
-- reads (it counts pending invitations, live API keys and verified second factors too);
-- cleanup_expired_data's new row is Rust (src/cleanup.rs), its declaration unchanged

-- == Error messages a client can act on (issue 17) ==
-- require_user: the 42501 "no current user" names both ways to set the context and gets a
-- HINT that it is transaction-local (autocommit loses it); an inactive caller is refused
-- (42501, issue 21). The same text as sql/orgs.sql.
CREATE OR REPLACE FUNCTION truxe.require_user() RETURNS uuid LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE me uuid := truxe.current_user_id();
BEGIN
  IF me IS NULL THEN
    RAISE EXCEPTION 'no current user: call truxe.authenticate or truxe.set_context first, in the same transaction'
      USING ERRCODE = '42501',
            HINT = 'The context lasts until the transaction ends (set_context''s is_local defaults to true): '
                   'in autocommit every statement is its own transaction, so it is gone by the next '
                   'statement. Run the calls in one transaction (BEGIN ... COMMIT), or keep it for the '
                   'session with truxe.set_context(user_id, is_local => false).';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = me AND u.status = 'active') THEN
    RAISE EXCEPTION 'the current user % is not an active user', me USING ERRCODE = '42501';
  END IF;
  RETURN me;
END
$$;


-- == Sealed audit log under the key file (issue 14) ==
-- With truxe.encryption_key_file set, seals are HMAC-SHA-256 under an audit sealing key
-- derived from the key file's current key (src/crypto.rs), computed and checked in Rust
-- (src/seal.rs) so that the key never reaches SQL; plain SHA-256 otherwise. The fresh-install
-- side is sql/seal.sql, sql/grants.sql and src/seal.rs.
-- an HMAC seal's key check value: tells another key under the same id from an altered seal
ALTER TABLE truxe.audit_seals ADD COLUMN key_check bytea;
ALTER TABLE truxe.audit_seals ADD CONSTRAINT seal_key CHECK ((key_id IS NULL) = (key_check IS NULL)
                             AND (key_check IS NULL OR length(key_check) = 8));
-- New: the Rust side of sealing — append one seal (HMAC under the key file, never a MAC of a
-- caller's message), check one seal, name the key sealing now
CREATE FUNCTION truxe.append_audit_seal(after_id bigint, to_id bigint, floor_at timestamptz)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'append_audit_seal_wrapper';
CREATE FUNCTION truxe.audit_seal_verifies(seal_id bigint, key_id text, key_check bytea,
                                          message bytea, seal_hash bytea)
RETURNS boolean
LANGUAGE c STABLE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_seal_verifies_wrapper';
CREATE FUNCTION truxe.audit_seal_key_id()
RETURNS text
LANGUAGE c STABLE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_seal_key_id_wrapper';
-- New: what a seal's hash covers, shared by the plain hash and the HMAC
CREATE FUNCTION truxe.audit_seal_message(s truxe.audit_seals)
RETURNS bytea LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT s.prev_hash || convert_to(jsonb_build_array(
           s.after_id, s.to_id, s.row_count, encode(s.rows_hash, 'hex'),
           s.min_created_at AT TIME ZONE 'UTC', s.max_created_at AT TIME ZONE 'UTC',
           s.floor_at AT TIME ZONE 'UTC', s.key_id)::text, 'UTF8');
$$;
-- the plain hash is SHA-256 of that message
CREATE FUNCTION truxe.audit_seal_hash(s truxe.audit_seals)
RETURNS bytea LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT sha256(truxe.audit_seal_message(s));
$$;
-- seals are written by truxe.append_audit_seal; never a plain seal after an HMAC seal
CREATE FUNCTION truxe.seal_audit_log(max_rows integer DEFAULT 100000, rest double precision DEFAULT 0)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  last truxe.audit_seals;
  horizon bigint;
  last_floor timestamptz;
  seal_floor timestamptz;
  new_floor timestamptz;
  lo bigint;
  hi bigint;
  total bigint := 0;
  started timestamptz;
  on_worker boolean;
BEGIN
  IF max_rows IS NULL OR max_rows < 1 THEN
    RAISE EXCEPTION 'max_rows must be at least 1' USING ERRCODE = '22023';
  END IF;
  IF rest IS NULL OR NOT (rest >= 0 AND rest <= 100) THEN
    RAISE EXCEPTION 'rest must be between 0 and 100' USING ERRCODE = '22023';
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'seal_audit_log runs at READ COMMITTED only: it must see the rows committed while it waits'
      USING ERRCODE = '55000';
  END IF;
  IF (SELECT q.seqcache FROM pg_sequence q WHERE q.seqrelid = 'truxe.audit_logs_id_seq'::regclass) <> 1 THEN
    RAISE EXCEPTION 'truxe.audit_logs_id_seq must have CACHE 1: cached ids would be drawn after the horizon'
      USING ERRCODE = '55000';
  END IF;
  -- on Citus the seals are one chain on every node (a reference table), sealed in the
  -- order of the coordinator's lock and ids: a worker's own sequence of audit ids is not
  -- the horizon, and its lock serialises nothing (docs/scaling.md)
  IF pg_catalog.to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL THEN
    EXECUTE 'SELECT g.groupid <> 0 FROM pg_catalog.pg_dist_local_group g' INTO on_worker;
    IF on_worker THEN
      RAISE EXCEPTION 'seal_audit_log runs on the Citus coordinator, not on a worker'
        USING ERRCODE = '55000';
    END IF;
  END IF;
  LOCK TABLE truxe.audit_seals IN SHARE ROW EXCLUSIVE MODE;
  SELECT * INTO last FROM truxe.audit_seals x ORDER BY x.id DESC LIMIT 1;
  -- 1. the floor: no transaction that draws an id after step 2 started before it
  PERFORM pg_stat_clear_snapshot();
  SELECT least(now(), min(a.xact_start)) - interval '1 second' INTO new_floor
    FROM pg_stat_activity a WHERE a.datname = current_database();
  -- 2. the horizon: every id up to it has been handed out
  SELECT CASE WHEN q.is_called THEN q.last_value ELSE q.last_value - 1 END INTO horizon
    FROM truxe.audit_logs_id_seq q;
  -- 3. the writers that may still hold such an id end
  PERFORM truxe.wait_for_audit_writers();
  lo := coalesce(last.to_id, 0);
  last_floor := last.floor_at;
  horizon := greatest(horizon, lo);
  LOOP
    started := clock_timestamp();
    hi := coalesce((SELECT a.id FROM truxe.audit_logs a WHERE a.id > lo AND a.id <= horizon
                     ORDER BY a.id OFFSET max_rows - 1 LIMIT 1), horizon);
    seal_floor := CASE WHEN hi = horizon THEN greatest(new_floor, last_floor)
                       ELSE coalesce(last_floor, '-infinity') END;
    total := total + truxe.append_audit_seal(lo, hi, seal_floor);
    last_floor := seal_floor;
    lo := hi;
    EXIT WHEN hi >= horizon;
    IF rest > 0 THEN
      PERFORM pg_sleep(rest * extract(epoch FROM clock_timestamp() - started)::double precision);
    END IF;
  END LOOP;
  RETURN total;
END
$$;
-- HMAC seals checked under their key; a downgrade to plain seals, and a plain latest seal
-- while the key file is set, are reported; the success text counts the HMAC seals
CREATE FUNCTION truxe.verify_audit_log("from" timestamptz DEFAULT '-infinity',
                                       "to" timestamptz DEFAULT 'infinity')
RETURNS TABLE(ok boolean, seals_checked bigint, seal_id bigint, reason text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  s truxe.audit_seals;
  prev truxe.audit_seals;
  latest truxe.audit_seals;
  d record;
  bad record;
  first_seal bigint;
  last_seal bigint;
  n bigint := 0;
  hmac_seals bigint := 0;
  current_key text;
BEGIN
  IF verify_audit_log."from" IS NULL OR verify_audit_log."to" IS NULL
     OR verify_audit_log."from" > verify_audit_log."to" THEN
    RAISE EXCEPTION 'verify_audit_log needs "from" <= "to"' USING ERRCODE = '22023';
  END IF;
  SELECT min(x.id) INTO first_seal FROM truxe.audit_seals x
   WHERE coalesce(x.max_created_at, x.sealed_at) >= verify_audit_log."from";
  SELECT max(x.id) INTO last_seal FROM truxe.audit_seals x
   WHERE coalesce(x.min_created_at, x.sealed_at) <= verify_audit_log."to";
  SELECT * INTO prev FROM truxe.audit_seals x WHERE x.id < first_seal ORDER BY x.id DESC LIMIT 1;
  FOR s IN SELECT * FROM truxe.audit_seals x WHERE x.id BETWEEN first_seal AND last_seal ORDER BY x.id LOOP
    n := n + 1;
    IF s.prev_hash IS DISTINCT FROM coalesce(prev.seal_hash, decode(repeat('00', 32), 'hex'))
       OR s.after_id IS DISTINCT FROM coalesce(prev.to_id, 0) THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'the chain is broken: seal %s does not follow %s (a seal was removed or rewritten)',
        s.id, coalesce('seal ' || prev.id, 'the start of the chain'));
      RETURN;
    END IF;
    IF s.key_id IS NULL AND prev.key_id IS NOT NULL THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'the chain was downgraded: seal %s is a plain SHA-256 seal after seal %s, an HMAC seal under key %s (seal_audit_log never does that: the seals from %s on were recomputed without the key)',
        s.id, prev.id, prev.key_id, s.id);
      RETURN;
    END IF;
    IF NOT truxe.audit_seal_verifies(s.id, s.key_id, s.key_check, truxe.audit_seal_message(s),
                                     s.seal_hash) THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'seal %s was altered: its %s does not match its fields', s.id,
        CASE WHEN s.key_id IS NULL THEN 'hash' ELSE 'HMAC under key ' || s.key_id END);
      RETURN;
    END IF;
    IF s.key_id IS NOT NULL THEN
      hmac_seals := hmac_seals + 1;
    END IF;
    d := truxe.audit_rows_digest(s.after_id, s.to_id);
    IF d.row_count <> s.row_count THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'rows were %s: seal %s (audit ids %s to %s) sealed %s rows, %s are there now',
        CASE WHEN d.row_count < s.row_count THEN 'deleted' ELSE 'inserted' END,
        s.id, s.after_id + 1, s.to_id, s.row_count, d.row_count);
      RETURN;
    END IF;
    IF d.rows_hash IS DISTINCT FROM s.rows_hash THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'rows were changed: the rows of seal %s (audit ids %s to %s) no longer hash to the sealed value',
        s.id, s.after_id + 1, s.to_id);
      RETURN;
    END IF;
    IF d.min_created_at < prev.floor_at THEN
      SELECT a.id, a.created_at INTO bad FROM truxe.audit_logs a
       WHERE a.id > s.after_id AND a.id <= s.to_id AND a.created_at < prev.floor_at
       ORDER BY a.id LIMIT 1;
      RETURN QUERY SELECT false, n, s.id, format(
        'a backdated row was sealed: audit row %s of seal %s has created_at %s, before the floor %s of seal %s',
        bad.id, s.id, bad.created_at, prev.floor_at, prev.id);
      RETURN;
    END IF;
    prev := s;
  END LOOP;
  SELECT * INTO latest FROM truxe.audit_seals x ORDER BY x.id DESC LIMIT 1;
  IF latest.id IS NULL THEN
    RETURN QUERY SELECT true, n, NULL::bigint, 'no seal yet: run truxe.seal_audit_log()'::text;
    RETURN;
  END IF;
  SELECT a.id, a.created_at INTO bad FROM truxe.audit_logs a
   WHERE a.id > latest.to_id AND a.created_at < latest.floor_at
     AND a.created_at >= verify_audit_log."from" AND a.created_at <= verify_audit_log."to"
   ORDER BY a.id LIMIT 1;
  IF FOUND THEN
    RETURN QUERY SELECT false, n, latest.id, format(
      'a backdated row was written after seal %s: audit row %s has created_at %s, before that seal''s floor %s',
      latest.id, bad.id, bad.created_at, latest.floor_at);
    RETURN;
  END IF;
  current_key := truxe.audit_seal_key_id();
  IF latest.key_id IS NULL AND current_key IS NOT NULL THEN
    RETURN QUERY SELECT false, n, latest.id, format(
      'the latest seal %s is a plain SHA-256 seal although the key file is set (key %s): the chain may have been recomputed without the key; if the key file was set only since that seal, run truxe.seal_audit_log() and verify again',
      latest.id, current_key);
    RETURN;
  END IF;
  RETURN QUERY SELECT true, n, NULL::bigint, format('%s seals verified (%s HMAC, %s plain SHA-256)',
                                                    n, hmac_seals, n - hmac_seals);
END
$$;
REVOKE ALL ON FUNCTION truxe.append_audit_seal(bigint, bigint, timestamptz),
  truxe.audit_seal_verifies(bigint, text, bytea, bytea, bytea), truxe.audit_seal_key_id(),
  truxe.audit_seal_message(truxe.audit_seals) FROM PUBLIC;
REVOKE ALL ON FUNCTION truxe.audit_seal_hash(truxe.audit_seals),
  truxe.seal_audit_log(integer, double precision),
  truxe.verify_audit_log(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.audit_seal_message(truxe.audit_seals),
  truxe.audit_seal_hash(truxe.audit_seals), truxe.seal_audit_log(integer, double precision),
  truxe.verify_audit_log(timestamptz, timestamptz) TO service_account;

-- == Ready for Citus (issue 22) ==

-- truxe.distribute(): the one-time conversion of a new database on a Citus coordinator
-- (docs/scaling.md); a superuser's step, so nobody else may execute it. Its body is
-- sql/distribute.sql's: audit_logs, usage_metrics, secrets, invitations and api_keys
-- by org_id, colocated, mfa_factors and mfa_recovery_codes by user_id, and sessions by jti_hash (validate_session and authenticate single-shard),
-- with the claim policies (src/claim.rs) included, the row digest of the sealed audit
-- log in a form Citus can plan (sealing on Citus, issue 22), and the coordinator triggers
-- that delete or clear a deleted org's or user's distributed rows as the dropped foreign
-- keys did (deletes that cascade on Citus, issue 22), and audit_seals and role_permissions
-- as reference tables, has_permission and permitted_org_ids reading the coordinator's copy
-- of the latter (issue 22), and rate_limits and sessions, which lose their primary key,
-- given their unique key as replica identity so that Citus can move their shards online
-- when a worker is added (issue 22)
CREATE FUNCTION truxe.distribute()
RETURNS TABLE (table_name text, placement text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  t name;
  has_rows boolean;
  is_coordinator boolean;
  propagate text;
  tables_owner name;
  rp_shard bigint;
  reader regprocedure;
  definition text;
BEGIN
  IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
    RAISE EXCEPTION 'truxe.distribute() must be run by a superuser' USING ERRCODE = '42501';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
    RAISE EXCEPTION 'truxe.distribute() needs Citus: run CREATE EXTENSION citus first'
      USING ERRCODE = '55000', HINT = 'see docs/scaling.md';
  END IF;
  -- Citus' own catalog, read through EXECUTE: it exists only where Citus is installed
  EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_local_group WHERE groupid = 0)'
    INTO is_coordinator;
  IF NOT is_coordinator THEN
    RAISE EXCEPTION 'truxe.distribute() runs on the Citus coordinator, not on a worker'
      USING ERRCODE = '55000';
  END IF;
  EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                           WHERE p.logicalrelid = ''truxe.rate_limits''::regclass)'
    INTO has_rows;
  IF has_rows THEN
    RAISE EXCEPTION 'truxe is already distributed in this database' USING ERRCODE = '55000';
  END IF;
  FOR t IN
    SELECT c.relname FROM pg_catalog.pg_class c
     WHERE c.relnamespace = 'truxe'::regnamespace AND c.relkind = 'r'
       AND c.relname <> 'role_permissions'
     ORDER BY c.relname
  LOOP
    EXECUTE format('SELECT EXISTS (SELECT FROM truxe.%I)', t) INTO has_rows;
    IF has_rows THEN
      RAISE EXCEPTION 'truxe.distribute() converts a new database only: truxe.% holds rows', t
        USING ERRCODE = '55000', HINT = 'docs/scaling.md gives the steps for a database with data';
    END IF;
  END LOOP;
  -- the reference tables need a copy on the coordinator (has_permission reads it there)
  EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_node n WHERE n.groupid = 0)'
    INTO is_coordinator;
  IF NOT is_coordinator THEN
    RAISE EXCEPTION 'truxe.distribute() needs the coordinator in Citus'' metadata: run citus_set_coordinator_host first'
      USING ERRCODE = '55000', HINT = 'see docs/scaling.md';
  END IF;

  -- the claim functions of audit_logs' Citus policies (below), first: Citus propagates a
  -- function to the workers only before any parallel operation on a distributed table in
  -- the transaction. No SET search_path: they resolve no name (no SPI), and a SET would
  -- cost a setting's save and restore per row of every audit read
  CREATE FUNCTION truxe.claim_user() RETURNS uuid
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_user_wrapper';
  CREATE FUNCTION truxe.claim_administers(org_id uuid) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_administers_wrapper';
  CREATE FUNCTION truxe.claim_may_act_in(org_id uuid) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_may_act_in_wrapper';
  CREATE FUNCTION truxe.claim_org() RETURNS uuid
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_org_wrapper';
  CREATE FUNCTION truxe.claim_invited_to(org_id uuid) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_invited_to_wrapper';
  -- … and the guard of the distributed memberships and organizations (below), which runs
  -- on the shards: a write reaches them only from the coordinator's copy (the trigger's
  -- arguments: the table, its copy), whose trigger turns truxe.copy_write on around it;
  -- anything else (a superuser's or the owner's direct write, which would leave the copy
  -- behind) is 55000
  CREATE FUNCTION truxe.citus_written_through_copy() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $guard$
  BEGIN
    IF pg_catalog.current_setting('truxe.copy_write', true) IS DISTINCT FROM 'on' THEN
      RAISE EXCEPTION 'on Citus, truxe.% is written through truxe.%', TG_ARGV[0], TG_ARGV[1]
        USING ERRCODE = '55000',
              HINT = pg_catalog.format('write truxe.%s (or call truxe''s functions): see docs/scaling.md',
                                       TG_ARGV[1]);
    END IF;
    RETURN NULL;
  END
  $guard$;
  REVOKE ALL ON FUNCTION truxe.citus_written_through_copy() FROM PUBLIC;
  REVOKE ALL ON FUNCTION truxe.claim_user(), truxe.claim_administers(uuid),
    truxe.claim_may_act_in(uuid), truxe.claim_org(), truxe.claim_invited_to(uuid) FROM PUBLIC;
  GRANT EXECUTE ON FUNCTION truxe.claim_user(), truxe.claim_administers(uuid),
    truxe.claim_may_act_in(uuid), truxe.claim_org(), truxe.claim_invited_to(uuid)
    TO authenticated, service_account;

  -- what the foreign keys that the conversion drops below did (sql/schema.sql,
  -- sql/vault.sql, sql/invitations.sql, sql/api_keys.sql, sql/mfa.sql): users and the
  -- copy of organizations are plain tables on the coordinator, where a trigger may write a
  -- distributed table. After a DELETE of organizations, the orgs' rows of the distributed tables whose
  -- key to organizations was ON DELETE CASCADE go (sessions, usage_metrics, secrets,
  -- invitations, api_keys; audit_logs had no key: its rows stay, as on a single node).
  -- After a DELETE of users, their sessions, factors and recovery codes go (CASCADE), and
  -- invitations.invited_by/accepted_by and api_keys.created_by become NULL (SET NULL).
  -- One statement per table for the whole DELETE (a statement trigger with the deleted
  -- rows' transition table), at the end of the statement like the foreign keys' actions;
  -- a DELETE that removes no row changes nothing. The functions run as the owner of the
  -- tables (SECURITY DEFINER, owned below by audit_logs' owner), the role truxe writes
  -- every distributed row as (Citus refuses a transaction that writes a shard as two
  -- roles, 25001); nobody else may execute them. Created before any parallel operation,
  -- like the claim functions
  CREATE FUNCTION truxe.citus_organizations_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $cascade$
  DECLARE
    ids uuid[];
  BEGIN
    SELECT pg_catalog.array_agg(g.id) INTO ids FROM gone g;
    IF ids IS NULL THEN
      RETURN NULL;
    END IF;
    DELETE FROM truxe.sessions s WHERE s.org_id = ANY (ids);
    DELETE FROM truxe.usage_metrics u WHERE u.org_id = ANY (ids);
    DELETE FROM truxe.secrets s WHERE s.org_id = ANY (ids);
    DELETE FROM truxe.invitations i WHERE i.org_id = ANY (ids);
    DELETE FROM truxe.api_keys k WHERE k.org_id = ANY (ids);
    RETURN NULL;
  END
  $cascade$;
  CREATE FUNCTION truxe.citus_users_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $cascade$
  DECLARE
    ids uuid[];
  BEGIN
    SELECT pg_catalog.array_agg(g.id) INTO ids FROM gone g;
    IF ids IS NULL THEN
      RETURN NULL;
    END IF;
    DELETE FROM truxe.sessions s WHERE s.user_id = ANY (ids);
    DELETE FROM truxe.mfa_factors f WHERE f.user_id = ANY (ids);
    DELETE FROM truxe.mfa_recovery_codes r WHERE r.user_id = ANY (ids);
    UPDATE truxe.invitations i
       SET invited_by = CASE WHEN i.invited_by = ANY (ids) THEN NULL ELSE i.invited_by END,
           accepted_by = CASE WHEN i.accepted_by = ANY (ids) THEN NULL ELSE i.accepted_by END
     WHERE i.invited_by = ANY (ids) OR i.accepted_by = ANY (ids);
    UPDATE truxe.api_keys k SET created_by = NULL WHERE k.created_by = ANY (ids);
    RETURN NULL;
  END
  $cascade$;
  -- … and the keys' refusal (NO ACTION, checked at the end of the statement) of an UPDATE
  -- that changes the id of an org or a user whom distributed rows still name: 23503 with
  -- the dropped key's name, as on a single node (an old id that another row holds again
  -- at the end of the statement is no violation, as there). Row triggers with a WHEN: an
  -- UPDATE that keeps the ids runs no function. One function for both tables: each
  -- trigger names the dropped keys' columns as its arguments
  CREATE FUNCTION truxe.citus_id_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $cascade$
  DECLARE
    ref text;
    tbl text;
    named boolean;
  BEGIN
    -- (one row or none, not EXISTS: Citus cannot plan a zero-column subquery over a
    -- distributed table)
    EXECUTE pg_catalog.format('SELECT true FROM truxe.%I WHERE id = $1 LIMIT 1', TG_TABLE_NAME)
      INTO named USING OLD.id;
    IF named THEN
      RETURN NULL;
    END IF;
    -- the trigger's arguments: the dropped keys' columns, 'table.column', in the order
    -- the error names the first that still holds the old id
    FOREACH ref IN ARRAY TG_ARGV LOOP
      tbl := pg_catalog.split_part(ref, '.', 1);
      EXECUTE pg_catalog.format('SELECT true FROM truxe.%I WHERE %I = $1 LIMIT 1',
                                tbl, pg_catalog.split_part(ref, '.', 2))
        INTO named USING OLD.id;
      IF named THEN
        RAISE EXCEPTION 'update or delete on table "%" violates foreign key constraint "%_%_fkey" on table "%"',
          TG_TABLE_NAME, tbl, pg_catalog.split_part(ref, '.', 2), tbl
          USING ERRCODE = '23503',
                DETAIL = pg_catalog.format('Key (id)=(%s) is still referenced from table "%s".',
                                           OLD.id, tbl);
      END IF;
    END LOOP;
    RETURN NULL;
  END
  $cascade$;
  -- every change of a coordinator copy (truxe.memberships_by_user,
  -- truxe.organizations_by_slug: below) made again in its distributed table, in the same
  -- transaction: an org's rows in its shard, as the owner (like every distributed row truxe
  -- writes). The trigger makes the write through a function call: Citus opens a remote
  -- transaction block (committed with the coordinator's, two-phase) for a write made
  -- inside a function, and only then passes on a SET LOCAL; the trigger of a top-level
  -- statement would write the shard in an autocommit of its own. The guard's setting is on
  -- for that write only. A change of the distribution column (org_id, id: Citus does not
  -- move a row between shards) is a delete and an insert
  CREATE FUNCTION truxe.citus_copied() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $copy$
  BEGIN
    PERFORM truxe.citus_copy(TG_TABLE_NAME, TG_OP, pg_catalog.to_jsonb(OLD), pg_catalog.to_jsonb(NEW));
    RETURN NULL;
  END
  $copy$;
  CREATE FUNCTION truxe.citus_copy(copy name, op text, old_row jsonb, new_row jsonb)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $copy$
  DECLARE
    old_m truxe.memberships := pg_catalog.jsonb_populate_record(NULL::truxe.memberships, old_row);
    new_m truxe.memberships := pg_catalog.jsonb_populate_record(NULL::truxe.memberships, new_row);
    old_o truxe.organizations := pg_catalog.jsonb_populate_record(NULL::truxe.organizations, old_row);
    new_o truxe.organizations := pg_catalog.jsonb_populate_record(NULL::truxe.organizations, new_row);
  BEGIN
    DO $on$BEGIN SET LOCAL citus.propagate_set_commands = 'local';
                 SET LOCAL truxe.copy_write = on; END$on$;
    IF copy = 'memberships_by_user' AND op = 'UPDATE' AND new_m.org_id = old_m.org_id THEN
      UPDATE truxe.memberships m
         SET user_id = new_m.user_id, role = new_m.role, permissions = new_m.permissions,
             invited_by = new_m.invited_by, invited_at = new_m.invited_at, joined_at = new_m.joined_at,
             created_at = new_m.created_at, updated_at = new_m.updated_at
       WHERE m.org_id = old_m.org_id AND m.user_id = old_m.user_id;
    ELSIF copy = 'memberships_by_user' THEN
      IF op IN ('UPDATE', 'DELETE') THEN
        DELETE FROM truxe.memberships m WHERE m.org_id = old_m.org_id AND m.user_id = old_m.user_id;
      END IF;
      IF op IN ('INSERT', 'UPDATE') THEN
        INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by,
                                       invited_at, joined_at, created_at, updated_at)
          VALUES (new_m.org_id, new_m.user_id, new_m.role, new_m.permissions, new_m.invited_by,
                  new_m.invited_at, new_m.joined_at, new_m.created_at, new_m.updated_at);
      END IF;
    ELSIF copy = 'organizations_by_slug' AND op = 'UPDATE' AND new_o.id = old_o.id THEN
      UPDATE truxe.organizations o
         SET slug = new_o.slug, name = new_o.name, parent_org_id = new_o.parent_org_id,
             settings = new_o.settings, created_at = new_o.created_at, updated_at = new_o.updated_at
       WHERE o.id = old_o.id;
    ELSIF copy = 'organizations_by_slug' THEN
      IF op IN ('UPDATE', 'DELETE') THEN
        DELETE FROM truxe.organizations o WHERE o.id = old_o.id;
      END IF;
      IF op IN ('INSERT', 'UPDATE') THEN
        INSERT INTO truxe.organizations (id, slug, name, parent_org_id, settings, created_at,
                                         updated_at)
          VALUES (new_o.id, new_o.slug, new_o.name, new_o.parent_org_id, new_o.settings, new_o.created_at,
                  new_o.updated_at);
      END IF;
    ELSE
      RAISE EXCEPTION 'truxe.% is not a coordinator copy', copy USING ERRCODE = 'XX000';
    END IF;
    DO $off$BEGIN SET LOCAL truxe.copy_write = off; END$off$;
  END
  $copy$;
  -- … and, for users (which stays on the coordinator and has no copy), a statement
  -- trigger that makes the transaction a coordinated one before any row changes, for the
  -- same reason: the single-shard writes of its row triggers (an audit row, a user's
  -- factors) then join a remote transaction block, where a top-level statement would give
  -- each an autocommit of its own on its worker. It locks no row: a read FOR UPDATE of an
  -- audit row that does not exist, in the org-less shard that user rows are audited in,
  -- as the owner (the role those rows are written as), inside a function call
  CREATE FUNCTION truxe.citus_coordinated() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $coord$
  BEGIN
    PERFORM truxe.citus_coordinate();
    RETURN NULL;
  END
  $coord$;
  CREATE FUNCTION truxe.citus_coordinate() RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $coord$
  BEGIN
    PERFORM 1 FROM truxe.audit_logs a
     WHERE a.org_id = '00000000-0000-0000-0000-000000000000'::uuid AND a.id = 0 FOR UPDATE;
  END
  $coord$;
  REVOKE ALL ON FUNCTION truxe.citus_organizations_deleted(), truxe.citus_users_deleted(),
    truxe.citus_id_changed(), truxe.citus_copied(), truxe.citus_copy(name, text, jsonb, jsonb),
    truxe.citus_coordinated(), truxe.citus_coordinate() FROM PUBLIC;
  SELECT r.rolname INTO tables_owner
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
   WHERE c.oid = 'truxe.audit_logs'::regclass;
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_organizations_deleted() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_users_deleted() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_id_changed() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_copied() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_coordinated() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_coordinate() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_copy(name, text, jsonb, jsonb) OWNER TO %I',
                            tables_owner);
  CREATE TRIGGER _users_coordinated BEFORE INSERT OR UPDATE OR DELETE ON truxe.users
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_coordinated();
  CREATE TRIGGER users_citus_cascade AFTER DELETE ON truxe.users
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_users_deleted();
  CREATE TRIGGER users_citus_id_changed AFTER UPDATE OF id ON truxe.users
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION truxe.citus_id_changed('sessions.user_id', 'mfa_factors.user_id',
                                            'mfa_recovery_codes.user_id', 'invitations.invited_by',
                                            'invitations.accepted_by', 'api_keys.created_by');

  -- the sealed audit log's row digest (sql/seal.sql) in a form Citus can plan: the SQL
  -- function there (a statement with parameters over audit_logs) cannot be planned once
  -- audit_logs is distributed (0A000). Same result for the same rows, same signature,
  -- settings and grants; only the body changes, in this database only (a single-node
  -- install keeps the SQL function and its speed). The shards hash their rows (the query
  -- has no parameter: the ids are written into it as numbers), the coordinator folds the
  -- hashes in id order (a materialized CTE: Citus gathers the shards' rows into an
  -- intermediate result, then the aggregate runs on the coordinator). A row's text is the
  -- single-node one: its created_at is written out as the ISO style in UTC gives it
  -- (DateStyle 'ISO, MDY', TimeZone 'UTC', which the function pins on the coordinator
  -- but Citus does not pass to the workers), by to_char, which no setting changes.
  CREATE OR REPLACE FUNCTION truxe.audit_rows_digest(after_id bigint, to_id bigint,
                                          OUT row_count bigint, OUT rows_hash bytea,
                                          OUT min_created_at timestamptz, OUT max_created_at timestamptz)
  LANGUAGE plpgsql STABLE
  SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, MDY' SET TimeZone = 'UTC' AS $digest$
  BEGIN
    IF audit_rows_digest.after_id IS NULL OR audit_rows_digest.to_id IS NULL THEN
      SELECT 0, sha256(''::bytea), NULL, NULL
        INTO row_count, rows_hash, min_created_at, max_created_at;
      RETURN;
    END IF;
    EXECUTE format($q$
      WITH r AS MATERIALIZED (
        SELECT a.id, a.created_at,
               sha256(textsend(ROW(
                 a.id, a.org_id, a.actor_user_id, a.action, a.target_type, a.target_id,
                 a.details, a.ip, a.user_agent, a.request_id,
                 CASE WHEN isfinite(a.created_at) THEN
                   to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                   || coalesce('.' || nullif(rtrim(to_char(a.created_at AT TIME ZONE 'UTC', 'US'),
                                                   '0'), ''), '')
                   || '+00'
                   || CASE WHEN a.created_at < '0001-01-01 00:00:00+00'::timestamptz
                           THEN ' BC' ELSE '' END
                 ELSE a.created_at::text END)::text)) AS h
          FROM truxe.audit_logs a
         WHERE a.id > %s AND a.id <= %s)
      SELECT count(*), sha256(coalesce(string_agg(r.h, ''::bytea ORDER BY r.id), ''::bytea)),
             min(r.created_at), max(r.created_at)
        FROM r$q$, audit_rows_digest.after_id, audit_rows_digest.to_id)
      INTO row_count, rows_hash, min_created_at, max_created_at;
  END
  $digest$;

  -- by the hash of the key: its primary key (a bigserial id, used by nothing) cannot hold
  -- the distribution column, and (key_hash, window_start), the key rate_limit_hit
  -- upserts on, stays unique
  ALTER TABLE truxe.rate_limits DROP CONSTRAINT rate_limits_pkey;
  -- a table without a primary key needs a replica identity for Citus to move its shards
  -- online (the logical-replication mover of citus_rebalance_start and
  -- citus_move_shard_placement, when a worker is added: docs/scaling.md, "Adding a
  -- worker"): the unique key it keeps. Set before distributing, so every shard copies it
  ALTER TABLE truxe.rate_limits REPLICA IDENTITY USING INDEX unique_key_window;
  PERFORM pg_catalog.create_distributed_table('truxe.rate_limits', 'key_hash',
                                              colocate_with => 'none');
  -- by the challenge id that every token carries
  PERFORM pg_catalog.create_distributed_table('truxe.magic_link_challenges', 'id',
                                              colocate_with => 'none');

  -- audit_logs by org_id: each org's rows in its shard. What it needs (docs/scaling.md,
  -- "audit_logs on Citus"), on the empty table:
  --  * the primary key holds the distribution column: (org_id, id) instead of (id), which
  --    makes org_id NOT NULL; truxe's writer (src/audit.rs) then writes a row with no org
  --    under the nil uuid (Citus refuses a NULL distribution key);
  --  * the policies read the request identity from the signed claim (src/claim.rs) that
  --    authenticate/set_context write on the coordinator and Citus passes to the workers:
  --    no subquery, no other table. The claim functions (created above) are not part of
  --    the extension: a single-node install never has them;
  --  * the append-only guard, a statement trigger, runs on the shards (Citus copies it
  --    there only with citus.enable_unsafe_triggers).
  DROP POLICY audit_admin_read ON truxe.audit_logs;
  DROP POLICY audit_self_insert ON truxe.audit_logs;
  ALTER TABLE truxe.audit_logs DROP CONSTRAINT audit_logs_pkey;
  ALTER TABLE truxe.audit_logs ADD CONSTRAINT audit_logs_pkey PRIMARY KEY (org_id, id);
  PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
  -- authenticated may insert only some columns (sql/grants.sql), which the coordinator
  -- checks; but it sends the shard an INSERT of every column, the defaults filled in. So
  -- the shards (which copy the table's grants when they are made) get a table-level
  -- INSERT, and the coordinator's table gets the column list back without telling them
  GRANT INSERT ON truxe.audit_logs TO authenticated;
  PERFORM pg_catalog.create_distributed_table('truxe.audit_logs', 'org_id',
                                              colocate_with => 'none');
  propagate := pg_catalog.current_setting('citus.enable_ddl_propagation');
  PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
  REVOKE INSERT ON truxe.audit_logs FROM authenticated;
  GRANT INSERT (org_id, actor_user_id, action, target_type, target_id, details)
    ON truxe.audit_logs TO authenticated;
  PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', propagate, true);
  -- the single-node policies (sql/rls.sql) with the claim in place of the org-set helpers,
  -- under names of their own: each worker's own copy of the extension's table (Citus'
  -- shell of it there) still has the single-node ones, which the DROP above, made before
  -- the table was distributed, did not reach (the shards, made from this table, do not)
  CREATE POLICY audit_admin_read_claim ON truxe.audit_logs FOR SELECT TO authenticated
    USING (truxe.claim_administers(org_id));
  CREATE POLICY audit_self_insert_claim ON truxe.audit_logs FOR INSERT TO authenticated
    WITH CHECK (actor_user_id = truxe.claim_user()
                AND (org_id = '00000000-0000-0000-0000-000000000000'::uuid
                     OR truxe.claim_may_act_in(org_id))
                AND NOT truxe.is_builtin_audit_action(action::text));

  -- usage_metrics by org_id, colocated with audit_logs (docs/scaling.md, "usage_metrics and
  -- secrets on Citus"), on the empty table:
  --  * the primary key (id), a bigserial that nothing looks up, becomes (org_id, id); the
  --    key record_usage upserts on, (org_id, metric_type, period_start), holds org_id;
  --  * the foreign key to organizations goes: Citus keeps none from a distributed table to
  --    a coordinator table. record_usage checks the org itself (23503, as the key did);
  --  * the admins' read policy reads the claim, under a name of its own (as audit_logs')
  DROP POLICY usage_admin_read ON truxe.usage_metrics;
  ALTER TABLE truxe.usage_metrics DROP CONSTRAINT usage_metrics_org_id_fkey;
  ALTER TABLE truxe.usage_metrics DROP CONSTRAINT usage_metrics_pkey;
  ALTER TABLE truxe.usage_metrics ADD CONSTRAINT usage_metrics_pkey PRIMARY KEY (org_id, id);
  PERFORM pg_catalog.create_distributed_table('truxe.usage_metrics', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  CREATE POLICY usage_admin_read_claim ON truxe.usage_metrics FOR SELECT TO authenticated
    USING (truxe.claim_administers(org_id));
  -- secrets (the vault) by org_id, colocated: its keys lead with org_id already, it has no
  -- policy and no trigger (only the vault's SECURITY DEFINER functions read it); the foreign
  -- key to organizations goes (put_secret checks the org itself, P0002 as before)
  ALTER TABLE truxe.secrets DROP CONSTRAINT secrets_org_id_fkey;
  PERFORM pg_catalog.create_distributed_table('truxe.secrets', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  -- invitations by org_id, colocated: their keys lead with org_id already; the foreign
  -- keys to organizations and users go (an inviter gone still revokes the invitation at
  -- its next use: inviter_still_may_invite); the admins' read policy reads the claim. On
  -- Citus their functions (src/invitation.rs) find an invitation by id without a lock, then
  -- lock it by (org_id, id), and read and write it as the owner
  DROP POLICY invitation_admin_read ON truxe.invitations;
  ALTER TABLE truxe.invitations DROP CONSTRAINT invitations_org_id_fkey;
  ALTER TABLE truxe.invitations DROP CONSTRAINT invitations_invited_by_fkey;
  ALTER TABLE truxe.invitations DROP CONSTRAINT invitations_accepted_by_fkey;
  PERFORM pg_catalog.create_distributed_table('truxe.invitations', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  CREATE POLICY invitation_admin_read_claim ON truxe.invitations FOR SELECT TO authenticated
    USING (truxe.claim_administers(org_id));

  -- api_keys by org_id, colocated with audit_logs (docs/scaling.md, "api_keys on Citus"),
  -- on the empty table: its primary key (org_id, id) holds org_id already;
  --  * the foreign keys to organizations and users go: deleting an org or a user no
  --    longer deletes its keys or clears created_by (authenticate_api_key reads the
  --    creator's status and org access on the coordinator, so such a key authenticates
  --    nothing);
  --  * the admins' read policy reads the claim, under a name of its own (as audit_logs');
  --  * service_account may no longer insert keys: a key has an entry in the coordinator's
  --    truxe.api_key_orgs (below), which create_api_key writes, or authenticates nothing.
  -- On Citus authenticate_api_key finds a key's org by its id in truxe.api_key_orgs (a key
  -- does not carry its org), reads the key in that org's shard, then checks the creator on
  -- the coordinator (src/api_key.rs)
  DROP POLICY api_key_admin_read ON truxe.api_keys;
  ALTER TABLE truxe.api_keys DROP CONSTRAINT api_keys_org_id_fkey;
  ALTER TABLE truxe.api_keys DROP CONSTRAINT api_keys_created_by_fkey;
  REVOKE INSERT ON truxe.api_keys FROM service_account;
  PERFORM pg_catalog.create_distributed_table('truxe.api_keys', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  CREATE POLICY api_key_admin_read_claim ON truxe.api_keys FOR SELECT TO authenticated
    USING (truxe.claim_administers(org_id));

  -- organizations by id and memberships by org_id, colocated with audit_logs: an org's row
  -- and members in its shard (docs/scaling.md, "organizations and memberships on Citus"), on
  -- the empty tables. Both stay on the coordinator too, as copies: plain tables there with
  -- the same columns, checks and foreign keys, which truxe reads and writes (the SQL
  -- functions are rewritten below to name them, the Rust statements are mapped to them:
  -- src/distribute.rs):
  --  * truxe.memberships_by_user, keyed for the lookup every request makes, a user's
  --    memberships (the org sets under RLS, the claim, has_permission): distributed by
  --    org_id, that read would ask every shard;
  --  * truxe.organizations_by_slug, which keeps slugs unique across the cluster (a unique
  --    key of a distributed table must hold its distribution column), the self-reference of
  --    the hierarchy and the foreign keys to organizations.
  -- Their triggers are the single-node tables' (audit rows; the hierarchy's closure and
  -- checks; sessions ended and API keys revoked when a membership goes; the updated_at
  -- stamps; the cascades above), and one more makes each change again in the distributed
  -- table (citus_copied). On the distributed tables:
  --  * the foreign keys, the slug's unique key and the triggers go (the copies keep them; on
  --    a shard the triggers could not write audit_logs, sessions or api_keys);
  --  * the read policies read the claim, under names of their own (as audit_logs');
  --  * nobody writes them but the copies' trigger: service_account's and authenticated's
  --    writes go to the copies (not granted here), and a guard on the shards refuses any
  --    other write
  CREATE TABLE truxe.organizations_by_slug (LIKE truxe.organizations INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
  ALTER TABLE truxe.organizations_by_slug
    ADD CONSTRAINT organizations_by_slug_pkey PRIMARY KEY (id),
    ADD CONSTRAINT organizations_by_slug_slug_key UNIQUE (slug),
    ADD CONSTRAINT organizations_by_slug_parent_org_id_fkey FOREIGN KEY (parent_org_id)
      REFERENCES truxe.organizations_by_slug (id) ON DELETE SET NULL;
  CREATE INDEX organizations_by_slug_parent ON truxe.organizations_by_slug (parent_org_id)
    WHERE parent_org_id IS NOT NULL;
  CREATE TABLE truxe.memberships_by_user (LIKE truxe.memberships INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
  ALTER TABLE truxe.memberships_by_user
    ADD CONSTRAINT memberships_by_user_pkey PRIMARY KEY (org_id, user_id),
    ADD CONSTRAINT memberships_by_user_org_id_fkey FOREIGN KEY (org_id)
      REFERENCES truxe.organizations_by_slug (id) ON DELETE CASCADE,
    ADD CONSTRAINT memberships_by_user_user_id_fkey FOREIGN KEY (user_id)
      REFERENCES truxe.users (id) ON DELETE CASCADE,
    ADD CONSTRAINT memberships_by_user_invited_by_fkey FOREIGN KEY (invited_by)
      REFERENCES truxe.users (id) ON DELETE SET NULL;
  CREATE INDEX memberships_by_user_user_org ON truxe.memberships_by_user (user_id, org_id)
    INCLUDE (role, joined_at);
  CREATE INDEX memberships_by_user_invited_by ON truxe.memberships_by_user (invited_by)
    WHERE invited_by IS NOT NULL;
  -- truxe.api_key_orgs, each API key's org by the key's id: what authenticate_api_key reads
  -- first, one index probe on the coordinator, so that it then reads the one shard of the
  -- key's org, not every shard. create_api_key writes it; an org's entries go with the org;
  -- nobody but truxe's functions reads or writes it (row level security with no policy,
  -- nothing granted)
  CREATE TABLE truxe.api_key_orgs (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES truxe.organizations_by_slug (id)
      ON DELETE CASCADE ON UPDATE CASCADE
  );
  CREATE INDEX api_key_orgs_org_id ON truxe.api_key_orgs (org_id);
  ALTER TABLE truxe.api_key_orgs ENABLE ROW LEVEL SECURITY;
  REVOKE ALL ON truxe.api_key_orgs FROM PUBLIC, authenticated, service_account;
  EXECUTE pg_catalog.format('ALTER TABLE truxe.organizations_by_slug OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER TABLE truxe.memberships_by_user OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER TABLE truxe.api_key_orgs OWNER TO %I', tables_owner);
  -- the single-node policies and grants (sql/rls.sql, sql/grants.sql) on the copies
  ALTER TABLE truxe.organizations_by_slug ENABLE ROW LEVEL SECURITY;
  ALTER TABLE truxe.memberships_by_user ENABLE ROW LEVEL SECURITY;
  CREATE POLICY service_all ON truxe.organizations_by_slug TO service_account
    USING (true) WITH CHECK (true);
  CREATE POLICY org_read ON truxe.organizations_by_slug FOR SELECT TO authenticated
    USING (id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
           OR id = ANY ((SELECT truxe.invited_org_ids())::uuid[]));
  CREATE POLICY org_admin_update ON truxe.organizations_by_slug FOR UPDATE TO authenticated
    USING (id = ANY ((SELECT truxe.admin_org_ids())::uuid[]))
    WITH CHECK (id = ANY ((SELECT truxe.admin_org_ids())::uuid[]));
  CREATE POLICY service_all ON truxe.memberships_by_user TO service_account
    USING (true) WITH CHECK (true);
  CREATE POLICY membership_read ON truxe.memberships_by_user FOR SELECT TO authenticated
    USING (org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
           OR (user_id = (SELECT truxe.current_user_id())
               AND (joined_at IS NULL OR (SELECT truxe.current_org_id()) IS NULL)));
  GRANT SELECT ON truxe.organizations_by_slug, truxe.memberships_by_user TO authenticated;
  GRANT UPDATE (slug, name, parent_org_id, settings) ON truxe.organizations_by_slug TO authenticated;
  GRANT SELECT, INSERT, UPDATE, DELETE ON truxe.organizations_by_slug, truxe.memberships_by_user
    TO service_account;
  -- the single-node triggers (sql/schema.sql, sql/hierarchy.sql, src/audit.rs,
  -- src/session.rs, sql/api_keys.sql), the cascades of the dropped foreign keys (above),
  -- and the copy into the distributed tables. The copy's name puts it first among the row
  -- triggers after the foreign keys' checks (PostgreSQL fires them by name): its write
  -- makes the transaction a coordinated one (above), so that the single-shard writes of
  -- the triggers after it (an audit row) are in the remote transaction too, and not an
  -- autocommit of their own when the statement is a top-level one
  CREATE TRIGGER organizations_updated_at BEFORE UPDATE ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.set_updated_at();
  CREATE TRIGGER organizations_1_reparent_check
    BEFORE UPDATE OF parent_org_id ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.check_org_reparent();
  CREATE TRIGGER organizations_2_hierarchy
    AFTER INSERT OR UPDATE OF parent_org_id OR DELETE ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.maintain_org_hierarchy();
  CREATE TRIGGER audit_organizations AFTER INSERT OR UPDATE OR DELETE ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.audit_organizations();
  CREATE TRIGGER organizations_citus_cascade AFTER DELETE ON truxe.organizations_by_slug
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_organizations_deleted();
  CREATE TRIGGER organizations_citus_id_changed AFTER UPDATE OF id ON truxe.organizations_by_slug
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION truxe.citus_id_changed('sessions.org_id', 'usage_metrics.org_id',
                                            'secrets.org_id', 'invitations.org_id',
                                            'api_keys.org_id');
  CREATE TRIGGER _organizations_copied AFTER INSERT OR UPDATE OR DELETE ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.citus_copied();
  CREATE TRIGGER memberships_updated_at BEFORE UPDATE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.set_updated_at();
  CREATE TRIGGER audit_memberships AFTER INSERT OR UPDATE OR DELETE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.audit_memberships();
  CREATE TRIGGER memberships_end_sessions AFTER DELETE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.end_sessions_on_membership_delete();
  CREATE TRIGGER memberships_revoke_api_keys AFTER DELETE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.revoke_api_keys_on_membership_delete();
  CREATE TRIGGER _memberships_copied AFTER INSERT OR UPDATE OR DELETE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.citus_copied();
  -- users' read policy reads the copy (a coordinator table reading a coordinator table)
  DROP POLICY user_read ON truxe.users;
  CREATE POLICY user_read ON truxe.users FOR SELECT TO authenticated
    USING (id = (SELECT truxe.current_user_id())
           OR id IN (SELECT m.user_id FROM truxe.memberships_by_user m
                      WHERE m.org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
                        AND m.joined_at IS NOT NULL));
  -- the distributed tables: memberships first (its key to organizations goes before
  -- organizations is distributed)
  DROP POLICY membership_read ON truxe.memberships;
  DROP TRIGGER memberships_updated_at ON truxe.memberships;
  DROP TRIGGER audit_memberships ON truxe.memberships;
  DROP TRIGGER memberships_end_sessions ON truxe.memberships;
  DROP TRIGGER memberships_revoke_api_keys ON truxe.memberships;
  ALTER TABLE truxe.memberships DROP CONSTRAINT memberships_org_id_fkey;
  ALTER TABLE truxe.memberships DROP CONSTRAINT memberships_user_id_fkey;
  ALTER TABLE truxe.memberships DROP CONSTRAINT memberships_invited_by_fkey;
  REVOKE INSERT, UPDATE, DELETE ON truxe.memberships FROM service_account;
  CREATE TRIGGER memberships_written_through_copy
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON truxe.memberships
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_written_through_copy('memberships',
                                                                        'memberships_by_user');
  ALTER TABLE truxe.memberships ENABLE ALWAYS TRIGGER memberships_written_through_copy;
  PERFORM pg_catalog.create_distributed_table('truxe.memberships', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  -- (num_nulls: "joined_at IS NULL OR claim_org() IS NULL", which Citus fails to pass to
  -- the shards: XX000 "unrecognized node type")
  CREATE POLICY membership_read_claim ON truxe.memberships FOR SELECT TO authenticated
    USING (truxe.claim_may_act_in(org_id)
           OR (user_id = truxe.claim_user()
               AND pg_catalog.num_nulls(joined_at, truxe.claim_org()) > 0));
  DROP POLICY org_read ON truxe.organizations;
  DROP POLICY org_admin_update ON truxe.organizations;
  DROP TRIGGER organizations_updated_at ON truxe.organizations;
  DROP TRIGGER organizations_1_reparent_check ON truxe.organizations;
  DROP TRIGGER organizations_2_hierarchy ON truxe.organizations;
  DROP TRIGGER audit_organizations ON truxe.organizations;
  ALTER TABLE truxe.organizations DROP CONSTRAINT organizations_parent_org_id_fkey;
  ALTER TABLE truxe.organizations DROP CONSTRAINT organizations_slug_key;
  REVOKE UPDATE ON truxe.organizations FROM authenticated;
  REVOKE INSERT, UPDATE, DELETE ON truxe.organizations FROM service_account;
  CREATE TRIGGER organizations_written_through_copy
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON truxe.organizations
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_written_through_copy('organizations',
                                                                        'organizations_by_slug');
  ALTER TABLE truxe.organizations ENABLE ALWAYS TRIGGER organizations_written_through_copy;
  PERFORM pg_catalog.create_distributed_table('truxe.organizations', 'id',
                                              colocate_with => 'truxe.audit_logs');
  CREATE POLICY org_read_claim ON truxe.organizations FOR SELECT TO authenticated
    USING (truxe.claim_may_act_in(id) OR truxe.claim_invited_to(id));
  -- the extension's SQL functions that name truxe.memberships or truxe.organizations,
  -- rewritten to name the copies (and the constraints invite_member and create_organization
  -- name); this one and the functions it made above, which are not the extension's, keep
  -- naming the distributed tables
  FOR reader IN
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass
                                 AND d.objid = p.oid AND d.deptype = 'e'
      JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'truxe'
     WHERE p.prolang IN (SELECT l.oid FROM pg_catalog.pg_language l
                          WHERE l.lanname IN ('sql', 'plpgsql'))
       AND p.prosrc ~ 'truxe\.(memberships|organizations)\M'
       AND p.oid <> 'truxe.distribute()'::regprocedure
  LOOP
    definition := pg_catalog.pg_get_functiondef(reader);
    definition := pg_catalog.regexp_replace(definition, 'truxe\.memberships\M',
                                            'truxe.memberships_by_user', 'g');
    definition := pg_catalog.regexp_replace(definition, 'truxe\.organizations\M',
                                            'truxe.organizations_by_slug', 'g');
    definition := pg_catalog.regexp_replace(definition, '\mmemberships_pkey\M',
                                            'memberships_by_user_pkey', 'g');
    EXECUTE pg_catalog.regexp_replace(definition, '\morganizations_slug_key\M',
                                      'organizations_by_slug_slug_key', 'g');
  END LOOP;

  -- mfa_factors and mfa_recovery_codes by user_id, colocated with each other (a user's
  -- factors and codes in one shard group; users stay on the coordinator), on the empty
  -- tables (docs/scaling.md, "mfa on Citus"):
  --  * mfa_factors' primary key (id) becomes (user_id, id): ids are random uuids, and
  --    verify_totp and unenroll_factor, which have only the id, read the factor's user in
  --    truxe.mfa_factor_users on the coordinator (below), then the factor by (user_id, id)
  --    in its shard; mfa_recovery_codes' key leads with user_id already;
  --  * the foreign keys to users go: deleting a user row no longer deletes its factors and
  --    codes (enroll_totp and generate_recovery_codes check the user on the coordinator);
  --  * a user's read of their factors reads the claim, under a name of its own
  DROP POLICY factor_self_read ON truxe.mfa_factors;
  ALTER TABLE truxe.mfa_factors DROP CONSTRAINT mfa_factors_user_id_fkey;
  ALTER TABLE truxe.mfa_factors DROP CONSTRAINT mfa_factors_pkey;
  ALTER TABLE truxe.mfa_factors ADD CONSTRAINT mfa_factors_pkey PRIMARY KEY (user_id, id);
  ALTER TABLE truxe.mfa_recovery_codes DROP CONSTRAINT mfa_recovery_codes_user_id_fkey;
  PERFORM pg_catalog.create_distributed_table('truxe.mfa_factors', 'user_id',
                                              colocate_with => 'none');
  PERFORM pg_catalog.create_distributed_table('truxe.mfa_recovery_codes', 'user_id',
                                              colocate_with => 'truxe.mfa_factors');
  CREATE POLICY factor_self_read_claim ON truxe.mfa_factors FOR SELECT TO authenticated
    USING (user_id = truxe.claim_user());
  -- truxe.mfa_factor_users, each factor's user by the factor's id, on the coordinator (as
  -- api_key_orgs for API keys): enroll_totp writes it, unenroll_factor deletes it; a user's
  -- entries go with the user; nobody but truxe's functions reads or writes it
  CREATE TABLE truxe.mfa_factor_users (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES truxe.users (id) ON DELETE CASCADE ON UPDATE CASCADE
  );
  CREATE INDEX mfa_factor_users_user_id ON truxe.mfa_factor_users (user_id);
  ALTER TABLE truxe.mfa_factor_users ENABLE ROW LEVEL SECURITY;
  REVOKE ALL ON truxe.mfa_factor_users FROM PUBLIC, authenticated, service_account;
  EXECUTE pg_catalog.format('ALTER TABLE truxe.mfa_factor_users OWNER TO %I', tables_owner);

  -- sessions by jti_hash, what validate_session and authenticate look up: one shard each
  -- (docs/scaling.md, "sessions on Citus"), on the empty table:
  --  * the keys without jti_hash go: the primary key (id) and the unique refresh_jti_hash
  --    become plain indexes (both are SHA-256 or random uuids; refresh_session finds a
  --    refresh token on every shard, then locks its row by jti_hash);
  --  * the foreign keys to users and organizations go: deleting a user or an org no
  --    longer deletes its sessions (they stop validating and refreshing, since the user's
  --    status and the org access are read on the coordinator; cleanup removes them);
  --  * the audit trigger goes (a shard cannot write audit_logs): on Citus the session
  --    functions write session.created and session.revoked themselves (src/session/citus.rs);
  --  * the user's read policy reads the claim, under a name of its own (as audit_logs')
  DROP POLICY session_read ON truxe.sessions;
  DROP TRIGGER audit_sessions ON truxe.sessions;
  ALTER TABLE truxe.sessions DROP CONSTRAINT sessions_user_id_fkey;
  ALTER TABLE truxe.sessions DROP CONSTRAINT sessions_org_id_fkey;
  ALTER TABLE truxe.sessions DROP CONSTRAINT sessions_pkey;
  ALTER TABLE truxe.sessions DROP CONSTRAINT sessions_refresh_jti_hash_key;
  CREATE INDEX sessions_id_idx ON truxe.sessions (id);
  CREATE INDEX sessions_refresh_jti_hash_idx ON truxe.sessions (refresh_jti_hash);
  -- no primary key left: the unique jti_hash is the replica identity (as rate_limits')
  ALTER TABLE truxe.sessions REPLICA IDENTITY USING INDEX sessions_jti_hash_key;
  PERFORM pg_catalog.create_distributed_table('truxe.sessions', 'jti_hash',
                                              colocate_with => 'none');
  CREATE POLICY session_read_claim ON truxe.sessions FOR SELECT TO authenticated
    USING (user_id = truxe.claim_user());

  -- audit_seals, the sealed audit log's chain, as a reference table (docs/scaling.md, "The
  -- sealed audit log on Citus"): small, append-only, one row per seal. Its append-only
  -- guard (a statement trigger, ENABLE ALWAYS) is copied onto every copy
  -- (citus.enable_unsafe_triggers, set above), as are its policy (service_account reads)
  -- and grants. Seals are written through the coordinator only (seal_audit_log refuses on
  -- a worker, 55000): the coordinator's lock orders them and its sequence numbers them, as
  -- on a single node
  PERFORM pg_catalog.create_reference_table('truxe.audit_seals');

  -- role_permissions as a reference table (small, rarely written); the default role rights
  -- it holds from the start are copied into its shard, and the coordinator's own table (the
  -- shell) is emptied. has_permission (in truxe.user_holds_permission) and
  -- truxe.permitted_org_ids read it joined with memberships and org_closure, which stay on
  -- the coordinator. Citus plans such a join as a router query on the coordinator's copy,
  -- but runs it by deparsing it to text and parsing and planning that text again on every
  -- call (its local plan cache serves only queries with a distribution column): about
  -- eight times the backend CPU of has_permission (bench/README.md). So on Citus the two
  -- functions read the coordinator's copy, the shard, by its name: a plain table to the
  -- planner, planned once per connection. Citus writes that copy with every change of the
  -- table, in the changing transaction (two-phase commit over the nodes). Their Citus form
  -- is their own definition with that one name changed: the same rules and answers; a
  -- single node keeps them as they are
  PERFORM pg_catalog.create_reference_table('truxe.role_permissions');
  PERFORM pg_catalog.truncate_local_data_after_distributing_table('truxe.role_permissions');
  EXECUTE 'SELECT s.shardid FROM pg_catalog.pg_dist_shard s
            JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid AND p.groupid = 0
           WHERE s.logicalrelid = ''truxe.role_permissions''::regclass'
    INTO rp_shard;
  IF rp_shard IS NULL THEN
    RAISE EXCEPTION 'truxe.role_permissions has no copy on the coordinator'
      USING ERRCODE = '55000', HINT = 'see docs/scaling.md';
  END IF;
  FOREACH reader IN ARRAY ARRAY['truxe.user_holds_permission(uuid, text, uuid)',
                                'truxe.permitted_org_ids(text)']::regprocedure[] LOOP
    definition := pg_catalog.pg_get_functiondef(reader);
    IF pg_catalog.strpos(definition, 'FROM truxe.role_permissions rp') = 0 THEN
      RAISE EXCEPTION '% no longer reads truxe.role_permissions as distribute() expects', reader
        USING ERRCODE = 'XX000';
    END IF;
    EXECUTE pg_catalog.replace(definition, 'FROM truxe.role_permissions rp',
                               pg_catalog.format('FROM truxe.%I rp', 'role_permissions_' || rp_shard));
  END LOOP;

  RETURN QUERY
    SELECT c.relname::text,
           CASE c.relname
             WHEN 'audit_logs' THEN 'distributed by org_id'
             WHEN 'usage_metrics' THEN 'distributed by org_id'
             WHEN 'secrets' THEN 'distributed by org_id'
             WHEN 'invitations' THEN 'distributed by org_id'
             WHEN 'api_keys' THEN 'distributed by org_id'
             WHEN 'memberships' THEN 'distributed by org_id'
             WHEN 'organizations' THEN 'distributed by id'
             WHEN 'mfa_factors' THEN 'distributed by user_id'
             WHEN 'mfa_recovery_codes' THEN 'distributed by user_id'
             WHEN 'rate_limits' THEN 'distributed by key_hash'
             WHEN 'magic_link_challenges' THEN 'distributed by id'
             WHEN 'sessions' THEN 'distributed by jti_hash'
             WHEN 'audit_seals' THEN 'reference'
             WHEN 'role_permissions' THEN 'reference'
             ELSE 'coordinator'
           END
      FROM pg_catalog.pg_class c
     WHERE c.relnamespace = 'truxe'::regnamespace AND c.relkind = 'r'
     ORDER BY 1;
END
$$;
REVOKE ALL ON FUNCTION truxe.distribute() FROM PUBLIC;

-- clear_context() also withdraws the signed claim on Citus (src/context.rs): Rust, SECURITY
-- DEFINER as set_context, since the claim's org sets are read past RLS.
CREATE OR REPLACE FUNCTION truxe.clear_context() RETURNS void
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'clear_context_wrapper';

-- == Invitations carry their inviter's authority (issue 12) ==
-- New: an invitation whose inviter could no longer send it (removed, suspended, deleted,
-- demoted) is revoked at its next use (src/invitation.rs); the text of sql/invitations.sql.
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
-- an internal helper: only the SECURITY DEFINER token functions call it, as the owner
REVOKE ALL ON FUNCTION truxe.inviter_still_may_invite(uuid) FROM PUBLIC;

-- == Performance (issues 12, 15, 16, 20) ==
-- Measured misses of bench/run (bench/README.md, "Performance work after the 0.2 run"):
-- caller_is_service, permission_matches and user_holds_permission (has_permission was
-- planned anew on every call) and valid_audit_action (parsed and planned for every audit
-- row) are created above in their final form; security_report(), which knows the functions
-- that resolve no name and so carry no SET clause, is replaced below.
-- validate_session's once-a-minute touch of last_used_at can be a HOT update: the column
-- loses its index (nothing in truxe reads sessions by it) and new pages keep a fifth free.
-- Pages written before the update are full until rewritten: VACUUM FULL truxe.sessions
-- (README, "Upgrading") gives every page the room at once.
DROP INDEX truxe.idx_sessions_last_used;
ALTER TABLE truxe.sessions SET (fillfactor = 80);
-- security_report(): the text of sql/security_report.sql (issues 11, 14, 17, and the unpinned
-- functions above)
CREATE OR REPLACE FUNCTION truxe.security_report()
RETURNS TABLE(check_name text, ok boolean, detail text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  -- RLS enabled on every data table (docs/reference.md, "Tables and Row Level Security")
  SELECT 'rls_enabled:' || t.name, coalesce(c.relrowsecurity, false),
         CASE WHEN c.oid IS NULL THEN 'table missing'
              WHEN c.relrowsecurity THEN 'row level security enabled'
              ELSE 'row level security is DISABLED' END
    FROM unnest(ARRAY['users', 'organizations', 'memberships', 'sessions', 'audit_logs',
                      'usage_metrics', 'magic_link_challenges', 'rate_limits']) AS t(name)
    LEFT JOIN pg_class c ON c.relname = t.name AND c.relnamespace = 'truxe'::regnamespace
  UNION ALL
  -- nothing of the extension granted to PUBLIC (grantee 0); a NULL acl means the default
  -- one, which for functions includes EXECUTE to PUBLIC
  SELECT 'no_public_grants', count(*) = 0,
         CASE WHEN count(*) = 0 THEN 'PUBLIC holds no privilege on truxe tables or functions'
              ELSE 'granted to PUBLIC: ' || string_agg(obj, ', ' ORDER BY obj) END
    FROM (
      SELECT c.oid::regclass::text AS obj FROM pg_class c
       WHERE c.relnamespace = 'truxe'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
         AND EXISTS (SELECT 1 FROM aclexplode(coalesce(c.relacl, acldefault(
                       (CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) a
                      WHERE a.grantee = 0)
      UNION ALL
      SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'truxe'::regnamespace
         AND EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f'::"char", p.proowner))) a
                      WHERE a.grantee = 0)
    ) public_objects
  UNION ALL
  -- every SECURITY DEFINER function pins search_path
  SELECT 'security_definer_search_path', count(*) = 0,
         CASE WHEN count(*) = 0 THEN 'every SECURITY DEFINER function sets search_path'
              ELSE 'no fixed search_path: ' || string_agg(p.oid::regprocedure::text, ', ') END
    FROM pg_proc p
   WHERE p.pronamespace = 'truxe'::regnamespace AND p.prosecdef
     AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) cfg WHERE cfg LIKE 'search_path=%')
  UNION ALL
  -- every function pins search_path (none resolves names through the caller's path), except
  -- the Rust functions that resolve no name at all (the two getters, src/identity.rs, the
  -- audit action check, src/apptables.rs, and on Citus the five claim checks that
  -- truxe.distribute() creates, src/claim.rs) and the SQL functions whose
  -- bodies qualify every name because a SET would stop inlining: the two tree walkers
  -- (sql/hierarchy.sql), the wildcard rule and the calling-role and service-caller tests
  -- (sql/orgs.sql)
  SELECT 'search_path_pinned', count(*) = 0,
         CASE WHEN count(*) = 0 THEN 'every function sets search_path (current_user_id, current_org_id, valid_audit_action and the claim checks resolve no name; org_ancestors, org_descendants, permission_matches, calling_role and caller_is_service qualify every name)'
              ELSE 'no fixed search_path: ' || string_agg(p.oid::regprocedure::text, ', ' ORDER BY p.oid::regprocedure::text) END
    FROM pg_proc p
   WHERE p.pronamespace = 'truxe'::regnamespace
     AND p.oid::regprocedure::text NOT IN ('truxe.current_user_id()', 'truxe.current_org_id()',
                                           'truxe.org_ancestors(uuid)', 'truxe.org_descendants(uuid)',
                                           'truxe.permission_matches(text,text)',
                                           'truxe.calling_role()', 'truxe.caller_is_service()',
                                           'truxe.valid_audit_action(text)',
                                           'truxe.claim_user()', 'truxe.claim_administers(uuid)',
                                           'truxe.claim_may_act_in(uuid)', 'truxe.claim_org()',
                                           'truxe.claim_invited_to(uuid)')
     AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) cfg WHERE cfg LIKE 'search_path=%')
  UNION ALL
  -- the identity mode: under `trusted`, any login that can become `authenticated` can claim
  -- any identity through app.current_user_id; flagged when such a login exists (a superuser
  -- or service_account member is trusted either way). The CASE loads truxe's library first,
  -- so the setting is truxe's own and not a placeholder a session made up.
  SELECT 'identity_mode', mode = 'verified' OR count(r.oid) = 0,
         CASE WHEN mode = 'verified' THEN 'identity_mode = verified: only truxe.authenticate and truxe.authenticate_api_key establish an end user''s identity'
              WHEN count(r.oid) = 0 THEN 'identity_mode = trusted, and no login but trusted ones can become authenticated'
              ELSE 'identity_mode = trusted: these logins can claim any identity through app.current_user_id: '
                   || string_agg(r.rolname::text, ', ' ORDER BY r.rolname) END
    FROM (SELECT CASE WHEN truxe.version() IS NOT NULL
                      THEN coalesce(current_setting('truxe.identity_mode', true), 'trusted') END) m(mode)
    LEFT JOIN pg_roles r
      ON mode <> 'verified' AND r.rolcanlogin AND NOT r.rolsuper
     AND pg_has_role(r.oid, 'authenticated', 'MEMBER')
     AND NOT pg_has_role(r.oid, 'service_account', 'MEMBER')
   GROUP BY mode
  UNION ALL
  -- the append-only guard: enabled, statement-level, on UPDATE, DELETE and TRUNCATE
  SELECT 'audit_logs_append_only', count(*) > 0,
         CASE WHEN count(*) > 0 THEN 'trigger ' || min(tg.tgname) || ' refuses UPDATE, DELETE, TRUNCATE'
              ELSE 'no enabled append-only trigger on truxe.audit_logs' END
    FROM pg_trigger tg
   WHERE tg.tgrelid = 'truxe.audit_logs'::regclass AND tg.tgenabled IN ('O', 'A')
     AND tg.tgfoid = 'truxe.audit_logs_append_only()'::regprocedure
     AND tg.tgtype & (8 | 16 | 32) = (8 | 16 | 32) AND tg.tgtype & 1 = 0
  UNION ALL
  -- application tables (outside truxe and the system schemas) with an org_id column and row
  -- level security off: every role with a privilege on them sees every tenant's rows
  -- (truxe.protect_table turns it on with truxe's tenant policies)
  SELECT 'app_tables_rls', count(*) = 0,
         CASE WHEN count(*) = 0 THEN 'every application table with an org_id column has row level security enabled'
              ELSE 'org_id column but row level security disabled: '
                   || string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid::regclass::text) END
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p') AND NOT c.relrowsecurity
     AND n.nspname NOT IN ('truxe', 'pg_catalog', 'information_schema')
     AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
     AND EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attname = 'org_id' AND a.attnum > 0
                    AND NOT a.attisdropped)
  UNION ALL
  -- who may connect to this database: roles are cluster-wide, so a login granted
  -- service_account or authenticated for one database holds that role in every database
  -- of the cluster it may connect to, and PUBLIC's default CONNECT lets every login in
  -- (docs/integration.md, "Isolating databases")
  SELECT 'database_connect', count(*) = 0,
         CASE WHEN count(*) = 0
              THEN 'PUBLIC may not connect to database ' || quote_ident(current_database())
              ELSE 'PUBLIC may connect to database ' || quote_ident(current_database())
                   || ', so every login of the cluster can: REVOKE CONNECT ON DATABASE '
                   || quote_ident(current_database())
                   || ' FROM PUBLIC, and GRANT CONNECT to this database''s own logins' END
    FROM pg_database d
   CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d'::"char", d.datdba))) a
   WHERE d.datname = current_database() AND a.grantee = 0 AND a.privilege_type = 'CONNECT';
$$;

-- == Metrics read indexes only (issue 15) ==
-- metrics() finds the day's first audit row (the smallest id among the oldest of the day) in
-- one index-only probe, also when a bulk write gave many rows one timestamp: the index
-- gains id (rebuilt: it takes a while on a large audit log, and blocks audit writes meanwhile)
DROP INDEX truxe.idx_audit_logs_created_at;
CREATE INDEX idx_audit_logs_created_at ON truxe.audit_logs (created_at, id);
-- New (issue 15): truxe.metrics(), the text of sql/metrics.sql: sessions_live estimated above
-- 10,000 live sessions and audit_rows_last_day from ids above 100,000 rows (docs/operations.md),
-- in PL/pgSQL so that it is planned once per connection
CREATE FUNCTION truxe.metrics()
RETURNS TABLE(metric text, labels jsonb, value double precision)
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  -- audit rows of the last 24 hours: exact while the ids from the day's first row (the
  -- oldest, by (created_at, id)) to the newest span fewer than 100,000, or when one of the 16
  -- rows before that first one (in id order) is itself of the day (rows written out of date
  -- order). Otherwise the span itself: a few index probes instead of a count of every row of
  -- the day; it then also counts the ids of audit writes that rolled back and of rows
  -- written since with an older date. Separate statements: Citus plans no correlated
  -- subquery over a distributed audit_logs (docs/scaling.md).
  day_first bigint;
  day_rows bigint;
BEGIN
  SELECT a.id INTO day_first FROM truxe.audit_logs a
   WHERE a.created_at > now() - interval '24 hours' ORDER BY a.created_at, a.id LIMIT 1;
  day_rows := (SELECT max(a.id) FROM truxe.audit_logs a) - day_first + 1;
  IF day_first IS NULL THEN
    day_rows := 0;
  ELSIF day_rows <= 100000
        OR (SELECT max(b.created_at) FROM (
              SELECT a.created_at FROM truxe.audit_logs a WHERE a.id < day_first
               ORDER BY a.id DESC LIMIT 16) b) > now() - interval '24 hours' THEN
    day_rows := (SELECT count(*) FROM truxe.audit_logs a
                  WHERE a.created_at > now() - interval '24 hours');
  END IF;
  RETURN QUERY
  WITH events AS MATERIALIZED (  -- one pass over the hour's audit rows, not one per metric
    SELECT a.action::text AS action, count(*) AS n
      FROM truxe.audit_logs a
     WHERE a.action IN ('session.created', 'session.revoked', 'session.reuse_detected',
                        'magic_link.sent', 'magic_link.verified', 'magic_link.failed')
       AND a.created_at > now() - interval '1 hour'
     GROUP BY a.action
  ), event(metric, action) AS (
    VALUES ('sessions_created_last_hour', 'session.created'),
           ('sessions_revoked_last_hour', 'session.revoked'),
           ('sessions_reuse_detected_last_hour', 'session.reuse_detected'),
           ('magic_links_sent_last_hour', 'magic_link.sent'),
           ('magic_links_verified_last_hour', 'magic_link.verified'),
           ('magic_links_failed_last_hour', 'magic_link.failed')
  ), overdue(tbl, due) AS (
    -- when the oldest row cleanup_expired_data should already have deleted became due
    SELECT 'sessions', LEAST((SELECT min(s.expires_at) FROM truxe.sessions s),
                             (SELECT min(s.revoked_at) FROM truxe.sessions s)) + interval '7 days'
    UNION ALL
    SELECT 'magic_link_challenges',
           LEAST((SELECT min(c.expires_at) FROM truxe.magic_link_challenges c),
                 (SELECT min(c.used_at) FROM truxe.magic_link_challenges c)) + interval '1 day'
    UNION ALL
    SELECT 'rate_limits', (SELECT min(r.window_end) FROM truxe.rate_limits r) + interval '1 hour'
    UNION ALL
    SELECT 'invitations',
           LEAST((SELECT min(i.expires_at) FROM truxe.invitations i),
                 (SELECT min(i.accepted_at) FROM truxe.invitations i),
                 (SELECT min(i.revoked_at) FROM truxe.invitations i)) + interval '30 days'
  )
  -- Exact below 10,000 live sessions. From 10,000 on, estimated from the 10,000 live ones with
  -- the smallest jti_hash: a SHA-256 is uniform, so the k-th smallest of n lies near k/n of
  -- the hash range, and (k - 1) / (its first 48 bits / 2^48) estimates n (one standard error
  -- 1%). Counting every live session would cost 60 to 350 ns each (bench/README.md).
  SELECT 'sessions_live', '{}'::jsonb,
         (SELECT CASE WHEN k.n < 10000 THEN k.n
                      ELSE round((k.n - 1) / ((k.top + 1) / 2.0 ^ 48)) END
            FROM (SELECT count(*) AS n,
                         max(('x' || encode(substr(f.jti_hash, 1, 6), 'hex'))::bit(48)::bigint) AS top
                    FROM (SELECT s.jti_hash FROM truxe.sessions s
                           WHERE s.revoked_at IS NULL AND s.expires_at > now()
                           ORDER BY s.jti_hash LIMIT 10000) f) k)::double precision
  UNION ALL
  SELECT e.metric, '{}'::jsonb, COALESCE(v.n, 0)::double precision
    FROM event e LEFT JOIN events v ON v.action = e.action
  UNION ALL
  -- links that reached the attempt limit in the last hour: their fifth wrong secret (the
  -- last one a link can count) is a failure of reason `invalid` within the hour
  SELECT 'magic_links_locked_last_hour', '{}'::jsonb,
         (SELECT count(*) FROM (
            SELECT DISTINCT a.target_id FROM truxe.audit_logs a
             WHERE a.action = 'magic_link.failed' AND a.created_at > now() - interval '1 hour'
               AND a.details ->> 'reason' = 'invalid') f
           JOIN truxe.magic_link_challenges c
             ON c.id = CASE WHEN f.target_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                            THEN f.target_id::uuid END
            AND c.attempts >= 5)::double precision
  UNION ALL
  SELECT 'api_keys_live', '{}'::jsonb,
         (SELECT count(*) FROM truxe.api_keys k
           WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now()))::double precision
  UNION ALL
  SELECT 'invitations_pending', '{}'::jsonb,
         (SELECT count(*) FROM truxe.invitations i
           WHERE i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now())::double precision
  UNION ALL
  SELECT 'mfa_factors_verified', '{}'::jsonb,
         (SELECT count(*) FROM truxe.mfa_factors f WHERE f.status = 'verified')::double precision
  UNION ALL
  SELECT 'rate_limit_windows_exhausted', '{}'::jsonb,
         (SELECT count(*) FROM truxe.rate_limits r
           WHERE r.exhausted_at IS NOT NULL AND r.window_end > now())::double precision
  UNION ALL
  SELECT 'audit_rows_last_day', '{}'::jsonb, day_rows::double precision
  UNION ALL
  SELECT 'cleanup_overdue_seconds', jsonb_build_object('table', o.tbl),
         COALESCE(GREATEST(extract(epoch FROM now() - o.due), 0), 0)::double precision
    FROM overdue o;
END
$$;
REVOKE ALL ON FUNCTION truxe.metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.metrics() TO pg_monitor;
GRANT EXECUTE ON FUNCTION truxe.metrics() TO service_account;
