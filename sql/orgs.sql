-- Organisations and memberships (docs/reference.md, "Organisations and memberships"). Called by authenticated and service_account;
-- they write past RLS, so they are SECURITY DEFINER with a pinned search_path and act for
-- truxe.current_user_id(). Errors: no context, a caller whose user is not active, or
-- insufficient rights 42501; bad input 22023; an org's last owner 23514; a taken slug or a
-- second membership 23505; unknown user, member or invitation P0002 (only once the caller's
-- rights on the org are established, or for the caller's own membership).
--
-- Existence is never an oracle: every function first checks the caller's rights on the org
-- from the caller's own memberships (truxe.require_org_admin, one message for every function),
-- and only then looks anything up or locks anything. A stranger gets the same 42501 whether
-- or not the org, the user or the membership exists. (create_organization's 23505 does tell
-- that a slug is taken: slugs are unique, public names.)

-- The format of a permission string, in one place: 'resource:action', 'resource:*' or '*'.
-- truxe.role_permissions' CHECK and every function that grants permissions use it.
CREATE FUNCTION truxe.valid_permission(permission text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT permission ~ '^(\*|[a-z_]+:(\*|[a-z_]+))$';
$$;
ALTER TABLE truxe.role_permissions
  ADD CONSTRAINT permission_format CHECK (truxe.valid_permission(permission));

-- The strongest role `who` holds on `org`: a joined membership of the org itself, or owner
-- or admin of one of its ancestors (those hold their role on descendants; ancestors come from
-- truxe.org_closure). NULL if none. Reads only `who`'s memberships.
CREATE FUNCTION truxe.effective_role(org uuid, who uuid)
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

-- The acting user, who must exist with status 'active', or 42501: a suspended, deleted or
-- pending user acts in no organisation or membership function. The one place that states
-- the "no current user" error (create_api_key and invite_by_email call it too); its HINT
-- says what a client in autocommit trips over: the context is transaction-local.
CREATE FUNCTION truxe.require_user() RETURNS uuid LANGUAGE plpgsql STABLE
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

-- `me`'s effective role on `org` when it is owner or admin (directly or through an
-- ancestor), else 42501 with the same message whether or not the org exists. Reads only
-- `me`'s own memberships and locks nothing: call it before any lookup or lock.
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

-- Creates an org; the caller (an active user) becomes its owner, joined now. With a parent,
-- the caller must be owner or admin of the parent (or of one of its ancestors), checked
-- before anything else is read: 42501 whether or not the parent exists. A taken slug is
-- 23505 (and so tells that the slug exists: slugs are unique names). The slug and name
-- rules repeat the organizations CHECKs (sql/schema.sql, the source) so that bad input is
-- 22023; tests/integration/constraints.rs
-- (slug_and_email_rules_agree_between_the_checks_sql_and_rust) proves they agree.
CREATE FUNCTION truxe.create_organization(slug citext, name text, parent_org_id uuid DEFAULT NULL,
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
CREATE FUNCTION truxe.invite_member(org_id uuid, user_id uuid, role truxe.membership_role DEFAULT 'member',
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

-- Accepts the current user's pending invitation to org_id. Acts on the caller's own
-- membership only: P0002 when there is none to accept, the same whether or not the org
-- exists.
CREATE FUNCTION truxe.accept_invitation(org_id uuid)
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

-- Checks that `me` is owner or admin of the org (42501, before anything is locked), locks
-- the org row (serialising owner changes of one org), and returns `me`'s effective role as
-- it stands once the lock is held (42501 if it was lost meanwhile, or the org is gone).
CREATE FUNCTION truxe.lock_org_for_change(org uuid, me uuid)
RETURNS truxe.membership_role LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM truxe.require_org_admin(org, me);
  PERFORM 1 FROM truxe.organizations o WHERE o.id = org FOR NO KEY UPDATE;
  RETURN truxe.require_org_admin(org, me);
END
$$;

-- The role of `who`'s membership of `org` (joined or pending), or P0002.
CREATE FUNCTION truxe.member_role(org uuid, who uuid)
RETURNS truxe.membership_role LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE r truxe.membership_role;
BEGIN
  SELECT m.role INTO r FROM truxe.memberships m WHERE m.org_id = org AND m.user_id = who;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'user % is not a member of organization %', who, org USING ERRCODE = 'P0002';
  END IF;
  RETURN r;
END
$$;

-- Joined owners of org other than `except_user`.
CREATE FUNCTION truxe.other_owners(org uuid, except_user uuid)
RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT count(*) FROM truxe.memberships m
   WHERE m.org_id = org AND m.role = 'owner' AND m.joined_at IS NOT NULL AND m.user_id <> except_user;
$$;

-- Changes a member's role. Caller: owner or admin (42501 before any lookup or lock); making
-- or unmaking an owner needs an owner; the last owner cannot be demoted (23514); a user who
-- is not a member P0002.
CREATE FUNCTION truxe.change_role(org_id uuid, user_id uuid, role truxe.membership_role)
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

-- Removes a member. Caller: owner or admin (42501 before any lookup or lock; removing an
-- owner needs an owner), or the member removing themself (P0002 when the caller has no
-- membership there, the same whether or not the org exists); never the last owner (23514).
CREATE FUNCTION truxe.remove_member(org_id uuid, user_id uuid)
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

-- The role that runs the statement, from inside a SECURITY DEFINER function (where
-- current_user is the function's owner): the role a SET ROLE chose (setting `role`), else
-- the login (session_user). Inlined like caller_is_service, which it serves: no SET clause,
-- every name qualified.
CREATE FUNCTION truxe.calling_role()
RETURNS name LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN pg_catalog.current_setting('role') OPERATOR(pg_catalog.=) 'none' THEN session_user
              ELSE pg_catalog.current_setting('role')::pg_catalog.name END;
$$;

-- Whether the role that called into truxe is trusted with every user's data: a superuser
-- or a member of service_account. The role is truxe.calling_role()'s, so a backend that
-- logs in as a service_account member and then runs `SET ROLE authenticated` is not
-- trusted here.
-- No SET clause, so that PostgreSQL inlines it into its callers' queries (a SET would make
-- it planned anew on every call: bench/README.md, "has_permission"); instead its body names
-- every function, operator and type with its schema, and resolves nothing through the
-- caller's search_path.
CREATE FUNCTION truxe.caller_is_service()
RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT pg_catalog.pg_has_role(truxe.calling_role(), 'service_account', 'MEMBER');
$$;

-- Whether a granted permission covers the wanted one: equal, '*', or 'resource:*' for any
-- action on that resource. The one wildcard rule: memberships and API key scopes use it.
-- Inlined into its callers' queries, like caller_is_service (no SET clause; every operator
-- and function named with its schema): called once per granted permission, a SET would
-- plan it anew each time.
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
-- it, after their own. PL/pgSQL, so that its one query is planned once per connection (a
-- SQL function with a SET clause is planned on every call: bench/README.md,
-- "has_permission"). On Citus, truxe.distribute() makes it read the coordinator's copy of
-- the reference table role_permissions: it replaces "FROM truxe.role_permissions rp" in this
-- definition (sql/distribute.sql), so keep that text.
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
CREATE FUNCTION truxe.has_permission(org_id uuid, permission text,
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
