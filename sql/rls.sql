-- Row Level Security (docs/reference.md, "Tables and Row Level Security"). Deny by default: every table below has RLS enabled, and a
-- role sees only what a policy grants it. service_account (the trusted backend) has full
-- access through its own policies; authenticated (end-user requests) sees what the current
-- context allows. Policies call the context helpers wrapped in (SELECT …), so each is an
-- InitPlan evaluated once per statement, and compare the result with
-- = ANY ((SELECT …)::uuid[]) — the cast makes it the array form rather than a subquery —
-- which an index scan on the policy column can use. No policy queries a table that has a policy
-- calling back into it, so nothing recurses; with no context set every helper is empty or
-- NULL, so authenticated sees no rows and its writes affect none.

ALTER TABLE truxe.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE truxe.organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE truxe.memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE truxe.sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE truxe.audit_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE truxe.usage_metrics ENABLE ROW LEVEL SECURITY;
ALTER TABLE truxe.magic_link_challenges ENABLE ROW LEVEL SECURITY;
ALTER TABLE truxe.rate_limits ENABLE ROW LEVEL SECURITY;

-- service_account: everything, on every table
CREATE POLICY service_all ON truxe.users TO service_account USING (true) WITH CHECK (true);
CREATE POLICY service_all ON truxe.organizations TO service_account USING (true) WITH CHECK (true);
CREATE POLICY service_all ON truxe.memberships TO service_account USING (true) WITH CHECK (true);
CREATE POLICY service_all ON truxe.sessions TO service_account USING (true) WITH CHECK (true);
CREATE POLICY service_all ON truxe.audit_logs TO service_account USING (true) WITH CHECK (true);
CREATE POLICY service_all ON truxe.usage_metrics TO service_account USING (true) WITH CHECK (true);
CREATE POLICY service_all ON truxe.magic_link_challenges TO service_account USING (true) WITH CHECK (true);
CREATE POLICY service_all ON truxe.rate_limits TO service_account USING (true) WITH CHECK (true);

-- organizations: accessible orgs, plus orgs with a pending invitation for the user
CREATE POLICY org_read ON truxe.organizations FOR SELECT TO authenticated
  USING (id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
         OR id = ANY ((SELECT truxe.invited_org_ids())::uuid[]));
-- owners/admins (directly or of an ancestor) update; INSERT only via create_organization
CREATE POLICY org_admin_update ON truxe.organizations FOR UPDATE TO authenticated
  USING (id = ANY ((SELECT truxe.admin_org_ids())::uuid[]))
  WITH CHECK (id = ANY ((SELECT truxe.admin_org_ids())::uuid[]));

-- memberships: rows of accessible orgs, and the user's own rows — with an acting org only
-- their pending invitations (the others belong to orgs outside the acting one); writes
-- only through the membership functions
CREATE POLICY membership_read ON truxe.memberships FOR SELECT TO authenticated
  USING (org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
         OR (user_id = (SELECT truxe.current_user_id())
             AND (joined_at IS NULL OR (SELECT truxe.current_org_id()) IS NULL)));

-- users: self, and users with a *joined* membership in an accessible org (a pending
-- invitation by user id reveals nothing of the invitee to the inviting org); UPDATE own row
-- (metadata column only: the column privilege in sql/grants.sql, so status stays out of reach)
CREATE POLICY user_read ON truxe.users FOR SELECT TO authenticated
  USING (id = (SELECT truxe.current_user_id())
         OR id IN (SELECT m.user_id FROM truxe.memberships m
                    WHERE m.org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
                      AND m.joined_at IS NOT NULL));
CREATE POLICY user_self_update ON truxe.users FOR UPDATE TO authenticated
  USING (id = (SELECT truxe.current_user_id()))
  WITH CHECK (id = (SELECT truxe.current_user_id()));

-- sessions: own sessions, read only
CREATE POLICY session_read ON truxe.sessions FOR SELECT TO authenticated
  USING (user_id = (SELECT truxe.current_user_id()));

-- audit_logs: rows of orgs the user administers (directly or via an ancestor). An app may
-- append rows in the acting user's own name, for an org the user may act in (one in
-- accessible_org_ids(): a joined membership, or owner/admin of an ancestor) or for no org,
-- and never with one of truxe's own actions (those rows are truxe's word, written by its
-- triggers and functions as the extension owner, which RLS does not restrict). ip,
-- user_agent, request_id, id and created_at are not the app's to choose: authenticated may
-- insert only the other columns (sql/grants.sql), and the request columns default to the
-- request settings, as in the rows truxe writes.
CREATE FUNCTION truxe.is_builtin_audit_action(action text)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
  SELECT action = ANY (enum_range(NULL::truxe.audit_action)::text[]);
$$;
ALTER TABLE truxe.audit_logs
  ALTER COLUMN ip SET DEFAULT truxe.request_ip(),
  ALTER COLUMN user_agent SET DEFAULT truxe.request_user_agent(),
  ALTER COLUMN request_id SET DEFAULT truxe.request_id();
CREATE POLICY audit_admin_read ON truxe.audit_logs FOR SELECT TO authenticated
  USING (org_id = ANY ((SELECT truxe.admin_org_ids())::uuid[]));
CREATE POLICY audit_self_insert ON truxe.audit_logs FOR INSERT TO authenticated
  WITH CHECK (actor_user_id = (SELECT truxe.current_user_id())
              AND (org_id IS NULL OR org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[]))
              AND NOT truxe.is_builtin_audit_action(action::text));

-- usage_metrics: owners/admins of the org, read only
CREATE POLICY usage_admin_read ON truxe.usage_metrics FOR SELECT TO authenticated
  USING (org_id = ANY ((SELECT truxe.admin_org_ids())::uuid[]));

-- magic_link_challenges, rate_limits: no policy for authenticated (nothing)
