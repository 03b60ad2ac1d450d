-- truxe.security_report() (docs/reference.md, "Monitoring and checks"): one row per check; all ok on a fresh install.
CREATE FUNCTION truxe.security_report()
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
