-- truxe demo: run by scripts/run in database truxe_demo after CREATE EXTENSION truxe CASCADE,
-- and a pg_regress test (tests/pg_regress: scripts/regress, or `cargo pgrx regress`) whose
-- expected output is tests/pg_regress/expected/demo.out. So that output stays the same on
-- every run and version, it shows statuses, counts and booleans, never a generated id,
-- token or timestamp.
\echo '== the extension and its schema'
SELECT extname, truxe.version() = extversion AS library_matches_schema
  FROM pg_extension WHERE extname = 'truxe';

-- == tenant isolation (schema / RLS) ==
\echo '== two tenants, as the authenticated role'
INSERT INTO truxe.users (id, email, status) VALUES
  ('00000000-0000-0000-0000-00000000a11c', 'alice@acme.example', 'active'),
  ('00000000-0000-0000-0000-000000000b0b', 'bob@globex.example', 'active');
INSERT INTO truxe.organizations (id, slug, name) VALUES
  ('a0000000-0000-0000-0000-00000000000a', 'acme', 'Acme'),
  ('b0000000-0000-0000-0000-00000000000b', 'globex', 'Globex');
INSERT INTO truxe.memberships (org_id, user_id, role, joined_at) VALUES
  ('a0000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-00000000a11c', 'owner', now()),
  ('b0000000-0000-0000-0000-00000000000b', '00000000-0000-0000-0000-000000000b0b', 'owner', now());
BEGIN;
SET LOCAL ROLE authenticated;
\echo '-- no context: nothing visible'
SELECT count(*) AS visible_orgs FROM truxe.organizations;
SELECT truxe.set_context('00000000-0000-0000-0000-00000000a11c');
\echo '-- as alice: only Acme'
SELECT slug, name FROM truxe.organizations;
SELECT email FROM truxe.users;
\echo '-- an update of the other tenant affects no row'
WITH u AS (UPDATE truxe.organizations SET name = 'Pwned' WHERE slug = 'globex' RETURNING 1)
SELECT count(*) AS rows_updated FROM u;
COMMIT;
\echo '-- roles are cluster-wide: only this database''s own logins may connect (docs/integration.md)'
DO $$ BEGIN EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database()); END $$;
\echo '-- the security report: every check passes (a failing one would be listed)'
SELECT bool_and(ok) AS all_checks_ok FROM truxe.security_report();
SELECT check_name, detail FROM truxe.security_report() WHERE NOT ok;

-- == organisations, hierarchy and audit ==
\echo '== an org tree, a rejected cycle, and the audit trail'
SELECT truxe.set_context('00000000-0000-0000-0000-00000000a11c', NULL, false);
SET app.request_id = '6f1c2a9e-0000-4000-8000-000000000001';
SELECT truxe.create_organization('acme-eu', 'Acme EU', 'a0000000-0000-0000-0000-00000000000a') AS acme_eu \gset
SELECT truxe.create_organization('acme-eu-paris', 'Acme Paris', :'acme_eu') AS paris \gset
SELECT o.slug, a.depth FROM truxe.org_ancestors(:'paris') a JOIN truxe.organizations o ON o.id = a.org_id;
\echo '-- making acme a child of its own grandchild is rejected (23514):'
DO $$
BEGIN
  UPDATE truxe.organizations SET parent_org_id = (SELECT id FROM truxe.organizations WHERE slug = 'acme-eu-paris')
   WHERE slug = 'acme';
EXCEPTION WHEN check_violation THEN
  RAISE WARNING 'rejected with SQLSTATE %', SQLSTATE;
END
$$;
SELECT truxe.invite_member('a0000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-000000000b0b', 'viewer');
SELECT truxe.has_permission(:'paris', 'users' || ':' || 'write') AS alice_may_write_users_in_paris;
SELECT action, target_type,
       (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(details) k) AS details_keys,
       request_id IS NOT NULL AS has_request_id
  FROM truxe.audit_logs WHERE request_id = '6f1c2a9e-0000-4000-8000-000000000001' ORDER BY id;
SELECT truxe.clear_context();
RESET app.request_id;

-- == login flow: magic link, session, refresh, logout ==
\echo '== the login flow, as service_account'
SET ROLE service_account;
SELECT allowed, remaining FROM truxe.rate_limit_hit('login:203.0.113.9', 10, '15 minutes');
SELECT challenge_id, token FROM truxe.issue_magic_link('ada@acme.example', 'acme') \gset
\echo '-- e-mail the token (76 characters, never stored): returned only here'
SELECT length(:'token') AS token_length,
       :'token' ~ '^[0-9a-f]{32}\.[A-Za-z0-9_-]{43}$' AS id_dot_secret;
SELECT status, email FROM truxe.inspect_magic_link(:'token');
SELECT status, user_id, email FROM truxe.verify_magic_link(:'token', '203.0.113.9') \gset
SELECT :'status' AS status, :'email' AS email;
SELECT status AS second_use FROM truxe.verify_magic_link(:'token');
SELECT jti, refresh_jti FROM truxe.create_session(:'user_id', NULL, '1 hour') \gset
SELECT user_id = :'user_id' AS valid FROM truxe.validate_session(:'jti');
SELECT jti AS new_jti FROM truxe.refresh_session(:'refresh_jti') \gset
SELECT count(*) AS old_still_valid FROM truxe.validate_session(:'jti');
SELECT truxe.revoke_session(:'new_jti') AS logged_out;
SELECT truxe.record_usage('a0000000-0000-0000-0000-00000000000a', 'logins') AS logins_this_month;
SELECT action, target_type FROM truxe.audit_logs
 WHERE action::text LIKE 'magic_link.%' OR action::text LIKE 'session.%' OR action = 'user.login'
 ORDER BY id;
RESET ROLE;
