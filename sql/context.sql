-- Request context (SPEC §2). The getters current_user_id()/current_org_id() are Rust
-- (src/context.rs). Trust model: these are ordinary settings; the backend that owns the
-- connection sets them after authenticating the request (README, "Context").

-- Sets the acting user and organisation; transaction-local by default (safe behind a
-- transaction-pooling connection pooler). NULL clears a value.
-- (No SET search_path: it runs on every request, is not SECURITY DEFINER, and names
-- pg_catalog explicitly.)
CREATE FUNCTION truxe.set_context(user_id uuid, org_id uuid DEFAULT NULL, is_local boolean DEFAULT true)
RETURNS void LANGUAGE sql VOLATILE AS $$
  SELECT pg_catalog.set_config('app.current_user_id', coalesce(user_id::pg_catalog.text, ''), is_local),
         pg_catalog.set_config('app.current_org_id', coalesce(org_id::pg_catalog.text, ''), is_local);
$$;

-- Clears both settings (session and transaction values).
CREATE FUNCTION truxe.clear_context()
RETURNS void LANGUAGE sql VOLATILE AS $$
  SELECT pg_catalog.set_config('app.current_user_id', '', false),
         pg_catalog.set_config('app.current_org_id', '', false);
$$;

-- Orgs where the current user is a joined owner or admin, and every descendant of those:
-- where the user holds an administrator's view (audit logs, usage, org updates).
-- SECURITY DEFINER: reads memberships/organizations past RLS (policies call it, so it must
-- not recurse into them). The helpers are PL/pgSQL with a single RETURN (…): PL/pgSQL keeps
-- the query's plan for the session, where a non-inlinable SQL function is planned again on
-- every call (measured: 3× slower; bench/).
CREATE FUNCTION truxe.admin_org_ids()
RETURNS uuid[] LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN (WITH RECURSIVE tree(org_id) AS (
    SELECT m.org_id FROM truxe.memberships m
     WHERE m.user_id = truxe.current_user_id() AND m.joined_at IS NOT NULL
       AND m.role IN ('owner', 'admin')
    UNION
    SELECT o.id FROM truxe.organizations o JOIN tree t ON o.parent_org_id = t.org_id
  )
  SELECT coalesce(array_agg(org_id), '{}') FROM tree);
END
$$;

-- Orgs the current user may see (SPEC §2): joined memberships, plus every descendant of an
-- org where the user is owner or admin. Empty with no context.
CREATE FUNCTION truxe.accessible_org_ids()
RETURNS uuid[] LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN (SELECT coalesce(array_agg(DISTINCT org_id), '{}') FROM (
    SELECT m.org_id FROM truxe.memberships m
     WHERE m.user_id = truxe.current_user_id() AND m.joined_at IS NOT NULL
    UNION ALL
    SELECT unnest(truxe.admin_org_ids())
  ) visible);
END
$$;

-- Orgs that have a pending (not yet accepted) invitation for the current user: the invitee
-- may read the org and the invitation, nothing else of it.
CREATE FUNCTION truxe.invited_org_ids()
RETURNS uuid[] LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN (SELECT coalesce(array_agg(m.org_id), '{}') FROM truxe.memberships m
           WHERE m.user_id = truxe.current_user_id() AND m.joined_at IS NULL);
END
$$;
