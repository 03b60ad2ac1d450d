-- truxe demo: run by scripts/run in database truxe_demo after CREATE EXTENSION truxe CASCADE.
\echo '== the extension and its schema'
\dx truxe
SELECT truxe.version() AS truxe_version;

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
UPDATE truxe.organizations SET name = 'Pwned' WHERE slug = 'globex';
COMMIT;
SELECT check_name, ok FROM truxe.security_report();

-- == organisations, hierarchy and audit ==

-- == login flow: magic link, session, refresh, logout ==
