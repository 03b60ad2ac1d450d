-- Organisations and memberships (SPEC §5). Called by authenticated and service_account;
-- they write past RLS, so they are SECURITY DEFINER with a pinned search_path and act for
-- truxe.current_user_id(). Errors: no context or insufficient role 42501; unknown org,
-- user or invitation P0002; bad input 22023; an org's last owner 23514.

-- The strongest role `who` holds on `org`: a joined membership of the org itself, or owner
-- or admin of one of its ancestors (those hold their role on descendants). NULL if none.
CREATE FUNCTION truxe.effective_role(org uuid, who uuid)
RETURNS truxe.membership_role LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN (SELECT min(m.role) FROM truxe.memberships m
           WHERE m.user_id = who AND m.joined_at IS NOT NULL
             AND (m.org_id = org
                  OR (m.role IN ('owner', 'admin')
                      AND m.org_id IN (SELECT a.org_id FROM truxe.org_ancestors(org) a))));
END
$$;

-- The acting user, or 42501.
CREATE FUNCTION truxe.require_user() RETURNS uuid LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE me uuid := truxe.current_user_id();
BEGIN
  IF me IS NULL THEN
    RAISE EXCEPTION 'no current user: call truxe.set_context(user_id) first'
      USING ERRCODE = '42501';
  END IF;
  RETURN me;
END
$$;

-- Creates an org; the caller becomes its owner, joined now. With a parent, the caller
-- must be owner or admin of the parent (or of one of its ancestors).
CREATE FUNCTION truxe.create_organization(slug citext, name text, parent_org_id uuid DEFAULT NULL,
                                          settings jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me uuid := truxe.require_user();
  new_id uuid;
BEGIN
  IF slug IS NULL OR slug::text !~ '^[a-z0-9][a-z0-9-]*[a-z0-9]$' OR length(slug::text) > 63 THEN
    RAISE EXCEPTION 'invalid slug %: 2-63 lowercase letters, digits and inner dashes', quote_nullable(slug::text)
      USING ERRCODE = '22023';
  END IF;
  IF name IS NULL OR length(trim(name)) = 0 OR length(name) > 255 THEN
    RAISE EXCEPTION 'invalid name: 1-255 characters, not blank' USING ERRCODE = '22023';
  END IF;
  IF settings IS NULL OR jsonb_typeof(settings) <> 'object' THEN
    RAISE EXCEPTION 'settings must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = me) THEN
    RAISE EXCEPTION 'unknown user %', me USING ERRCODE = 'P0002';
  END IF;
  IF create_organization.parent_org_id IS NOT NULL THEN
    IF NOT EXISTS (SELECT 1 FROM truxe.organizations o WHERE o.id = create_organization.parent_org_id) THEN
      RAISE EXCEPTION 'unknown organization %', create_organization.parent_org_id USING ERRCODE = 'P0002';
    END IF;
    IF coalesce(truxe.effective_role(create_organization.parent_org_id, me) NOT IN ('owner', 'admin'), true) THEN
      RAISE EXCEPTION 'creating a child of organization % requires owner or admin on it',
        create_organization.parent_org_id USING ERRCODE = '42501';
    END IF;
  END IF;
  INSERT INTO truxe.organizations AS o (slug, name, parent_org_id, settings)
    VALUES (create_organization.slug, create_organization.name, create_organization.parent_org_id,
            create_organization.settings)
    RETURNING o.id INTO new_id;
  INSERT INTO truxe.memberships (org_id, user_id, role, invited_at, joined_at)
    VALUES (new_id, me, 'owner', now(), now());
  RETURN new_id;
END
$$;

-- Invites a user (a pending membership). Caller: owner or admin; only an owner may invite
-- an owner.
CREATE FUNCTION truxe.invite_member(org_id uuid, user_id uuid, role truxe.membership_role DEFAULT 'member',
                                    permissions jsonb DEFAULT '[]')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me uuid := truxe.require_user();
  my_role truxe.membership_role;
BEGIN
  IF role IS NULL OR permissions IS NULL OR jsonb_typeof(permissions) <> 'array'
     OR EXISTS (SELECT 1 FROM jsonb_array_elements(permissions) p WHERE jsonb_typeof(p) <> 'string') THEN
    RAISE EXCEPTION 'role must be given and permissions must be a JSON array of strings'
      USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM truxe.organizations o WHERE o.id = invite_member.org_id) THEN
    RAISE EXCEPTION 'unknown organization %', invite_member.org_id USING ERRCODE = 'P0002';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = invite_member.user_id) THEN
    RAISE EXCEPTION 'unknown user %', invite_member.user_id USING ERRCODE = 'P0002';
  END IF;
  my_role := truxe.effective_role(invite_member.org_id, me);
  IF my_role IS NULL OR my_role NOT IN ('owner', 'admin') THEN
    RAISE EXCEPTION 'inviting to organization % requires owner or admin', invite_member.org_id
      USING ERRCODE = '42501';
  END IF;
  IF invite_member.role = 'owner' AND my_role <> 'owner' THEN
    RAISE EXCEPTION 'only an owner may invite an owner' USING ERRCODE = '42501';
  END IF;
  INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by)
    VALUES (invite_member.org_id, invite_member.user_id, invite_member.role, invite_member.permissions,
            CASE WHEN me = invite_member.user_id THEN NULL ELSE me END);
END
$$;

-- Accepts the current user's pending invitation to org_id.
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

-- Locks the org row (serialising owner changes of one org) and returns the caller's
-- effective role there, or raises: P0002 unknown org, 42501 not owner/admin.
CREATE FUNCTION truxe.lock_org_for_change(org uuid, me uuid)
RETURNS truxe.membership_role LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM 1 FROM truxe.organizations o WHERE o.id = org FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown organization %', org USING ERRCODE = 'P0002';
  END IF;
  RETURN truxe.effective_role(org, me);
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

-- Changes a member's role. Caller: owner or admin; making or unmaking an owner needs an
-- owner; the last owner cannot be demoted (23514).
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
  IF my_role IS NULL OR my_role NOT IN ('owner', 'admin') THEN
    RAISE EXCEPTION 'changing roles in organization % requires owner or admin', change_role.org_id
      USING ERRCODE = '42501';
  END IF;
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

-- Removes a member. Caller: owner or admin, or the member removing themself; removing an
-- owner needs an owner (or the owner themself); never the last owner (23514).
CREATE FUNCTION truxe.remove_member(org_id uuid, user_id uuid)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me uuid := truxe.require_user();
  my_role truxe.membership_role;
  old_role truxe.membership_role;
BEGIN
  my_role := truxe.lock_org_for_change(remove_member.org_id, me);
  old_role := truxe.member_role(remove_member.org_id, remove_member.user_id);
  IF me <> remove_member.user_id AND (my_role IS NULL OR my_role NOT IN ('owner', 'admin')
                                      OR (old_role = 'owner' AND my_role <> 'owner')) THEN
    RAISE EXCEPTION 'removing user % from organization % is not allowed for the current user',
      remove_member.user_id, remove_member.org_id USING ERRCODE = '42501';
  END IF;
  IF old_role = 'owner' AND truxe.other_owners(remove_member.org_id, remove_member.user_id) = 0 THEN
    RAISE EXCEPTION 'organization % would lose its last owner', remove_member.org_id USING ERRCODE = '23514';
  END IF;
  DELETE FROM truxe.memberships m WHERE m.org_id = remove_member.org_id AND m.user_id = remove_member.user_id;
END
$$;

-- Whether user_id holds `permission` ('resource:action') on org_id: the role defaults of
-- truxe.role_permissions plus the membership's own permissions array, with 'resource:*' and
-- '*' wildcards; owners/admins of an ancestor hold their role's permissions here too.
-- Pending memberships grant nothing. False (never NULL) for unknown users/orgs.
CREATE FUNCTION truxe.has_permission(org_id uuid, permission text,
                                     user_id uuid DEFAULT truxe.current_user_id())
RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN (
    WITH RECURSIVE up(id, depth) AS (
      SELECT o.parent_org_id, 1 FROM truxe.organizations o
       WHERE o.id = has_permission.org_id AND o.parent_org_id IS NOT NULL
      UNION ALL
      SELECT o.parent_org_id, up.depth + 1 FROM truxe.organizations o JOIN up ON o.id = up.id
       WHERE o.parent_org_id IS NOT NULL AND up.depth < 1000
    ), held AS (
      SELECT m.role, m.permissions FROM truxe.memberships m
       WHERE m.org_id = has_permission.org_id AND m.user_id = has_permission.user_id
         AND m.joined_at IS NOT NULL
      UNION ALL
      SELECT m.role, '[]'::jsonb FROM up JOIN truxe.memberships m ON m.org_id = up.id
       WHERE m.user_id = has_permission.user_id AND m.joined_at IS NOT NULL
         AND m.role IN ('owner', 'admin')
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
