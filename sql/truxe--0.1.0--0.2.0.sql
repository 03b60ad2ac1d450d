-- truxe 0.1.0 -> 0.2.0, run by ALTER EXTENSION truxe UPDATE (TO '0.2.0').
--
-- 0.1.0 is released and its install script (sql/truxe--0.1.0.sql) is frozen: every change
-- that 0.2.0 makes to the catalog is made twice, once in the fresh-install sources (sql/*.sql
-- and the Rust #[pg_extern]s) and once here, and tests/integration/upgrade.rs proves that
-- both give the same catalog. Sections follow the order of the changes; each says why.
\echo Use "ALTER EXTENSION truxe UPDATE TO '0.2.0'" to load this file. \quit

-- == Hardening: moves, name resolution, per-tree locks, hostile input (issue 21) ==

-- Name resolution: every function pins search_path, so none resolves a function, operator
-- or type through a path the caller chose (current_user_id/current_org_id resolve no name
-- at all and stay unpinned: src/context.rs).
ALTER FUNCTION truxe.org_ancestors(uuid) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.org_descendants(uuid) SET search_path = pg_catalog, pg_temp;
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
-- (22023), and must name an existing org (P0002); search_path pinned. A parameter type
-- change: drop, create, grant again.
DROP FUNCTION truxe.issue_magic_link(citext, text, interval, inet, text);
CREATE FUNCTION truxe.issue_magic_link(email citext, org_slug citext DEFAULT NULL,
                                       ttl interval DEFAULT '15 minutes', ip inet DEFAULT NULL,
                                       user_agent text DEFAULT NULL)
RETURNS TABLE(challenge_id uuid, token text, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'issue_magic_link_wrapper';
REVOKE ALL ON FUNCTION truxe.issue_magic_link(citext, citext, interval, inet, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.issue_magic_link(citext, citext, interval, inet, text) TO service_account;

-- security_report() also checks that every function pins search_path (the same text as
-- sql/security_report.sql).
CREATE OR REPLACE FUNCTION truxe.security_report()
RETURNS TABLE(check_name text, ok boolean, detail text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  -- RLS enabled on every table of SPEC §4
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
  -- the two getters that resolve no name at all (src/context.rs)
  SELECT 'search_path_pinned', count(*) = 0,
         CASE WHEN count(*) = 0 THEN 'every function sets search_path (current_user_id and current_org_id resolve no name)'
              ELSE 'no fixed search_path: ' || string_agg(p.oid::regprocedure::text, ', ' ORDER BY p.oid::regprocedure::text) END
    FROM pg_proc p
   WHERE p.pronamespace = 'truxe'::regnamespace
     AND p.oid::regprocedure::text NOT IN ('truxe.current_user_id()', 'truxe.current_org_id()')
     AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) cfg WHERE cfg LIKE 'search_path=%')
  UNION ALL
  -- the append-only guard: enabled, statement-level, on UPDATE, DELETE and TRUNCATE
  SELECT 'audit_logs_append_only', count(*) > 0,
         CASE WHEN count(*) > 0 THEN 'trigger ' || min(tg.tgname) || ' refuses UPDATE, DELETE, TRUNCATE'
              ELSE 'no enabled append-only trigger on truxe.audit_logs' END
    FROM pg_trigger tg
   WHERE tg.tgrelid = 'truxe.audit_logs'::regclass AND tg.tgenabled IN ('O', 'A')
     AND tg.tgfoid = 'truxe.audit_logs_append_only()'::regprocedure
     AND tg.tgtype & (8 | 16 | 32) = (8 | 16 | 32) AND tg.tgtype & 1 = 0;
$$;
