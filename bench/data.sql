-- Benchmark data set, loaded by bench/run with psql variables U (users), O (orgs, in chains
-- of 32), S (sessions), A (audit rows), X (expired sessions for the cleanup test).
-- Ids are deterministic (bench.uid(kind, n)) so pgbench scripts can address any row.
CREATE SCHEMA bench;
-- the RLS benchmark logs in as a member of authenticated (as an app's pool would), and
-- computes ids with bench.uid
CREATE ROLE bench_tenant LOGIN IN ROLE authenticated;
GRANT USAGE ON SCHEMA bench TO authenticated;
CREATE FUNCTION bench.uid(kind int, n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT (lpad(to_hex(kind), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid $$;
-- A bearer token (access kind 3, refresh kind 4) or a session's public id (kind 8): a fixed
-- function of (kind, n), spread over the uuid space as the gen_random_uuid() values truxe and
-- 0.1.0 hand out are. Sequential values would put the loaded sessions into adjacent pages of
-- an index keyed by them (10k active sessions in a few dozen leaves, and every new session
-- to the right of them all), which no deployment has
CREATE FUNCTION bench.token(kind int, n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT md5(kind || '/' || n)::uuid $$;

-- the data set's sizes, as bench/run passes them to pgbench (bench/profile reads them)
CREATE TABLE bench.sizes AS SELECT :U AS u, :O AS o, :S AS s;

-- bulk load as a replica: no audit rows, no per-row hierarchy walk or FK check
SET session_replication_role = replica;
INSERT INTO truxe.users (id, email, status, email_verified)
  SELECT bench.uid(1, g), 'user' || g || '@bench.example', 'active', true FROM generate_series(1, :U) g;
-- chains of 32: org g's parent is g-1 unless g starts a chain; 8 root "movers" (kind 5)
INSERT INTO truxe.organizations (id, slug, name, parent_org_id)
  SELECT bench.uid(2, g), 'org-' || g, 'Org ' || g,
         CASE WHEN (g - 1) % 32 = 0 THEN NULL ELSE bench.uid(2, g - 1) END
    FROM generate_series(1, :O) g;
INSERT INTO truxe.organizations (id, slug, name)
  SELECT bench.uid(5, g), 'mover-' || g, 'Mover ' || g FROM generate_series(1, 8) g;
-- the hierarchy's ancestor/descendant pairs (its trigger is off during a replica load):
-- org g sits (g - 1) % 32 levels below its chain's root
INSERT INTO truxe.org_closure (ancestor_id, descendant_id, depth)
  SELECT bench.uid(2, g - k), bench.uid(2, g), k
    FROM generate_series(1, :O) g, generate_series(1, 31) k
   WHERE k <= (g - 1) % 32;
-- each user: 10 memberships (owner, admin, 8 × member) in distinct orgs; ~100 per org
INSERT INTO truxe.memberships (org_id, user_id, role, invited_at, joined_at)
  SELECT bench.uid(2, 1 + ((u * 10 + k) % :O)), bench.uid(1, u),
         (CASE k WHEN 0 THEN 'owner' WHEN 1 THEN 'admin' ELSE 'member' END)::truxe.membership_role,
         now(), now()
    FROM generate_series(1, :U) u, generate_series(0, 9) k;
-- access token bench.token(3, n), refresh token bench.token(4, n), stored as their SHA-256
-- (as truxe does); public id and family bench.token(8, n)
INSERT INTO truxe.sessions (jti_hash, user_id, refresh_jti_hash, family_id, expires_at, id)
  SELECT sha256(uuid_send(bench.token(3, g))), bench.uid(1, 1 + g % :U), sha256(uuid_send(bench.token(4, g))),
         bench.token(8, g), now() + interval '30 days', bench.token(8, g)
    FROM generate_series(1, :S) g;
INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id)
  SELECT bench.uid(2, 1 + g % :O), 'org.updated', 'organization', g::text FROM generate_series(1, :A) g;
INSERT INTO truxe.organizations (id, slug, name) VALUES (bench.uid(6, 1), 'usage-org', 'Usage');
-- invitations by e-mail: 10,000 orgs (kind 9), each owned by a user of its own (kind 10),
-- so that the invite + accept benchmark stays far below 100 invitations per org per hour
-- and no other benchmark's users or orgs change
INSERT INTO truxe.users (id, email, status, email_verified)
  SELECT bench.uid(10, g), 'inviter' || g || '@bench.example', 'active', true FROM generate_series(1, 10000) g;
INSERT INTO truxe.organizations (id, slug, name)
  SELECT bench.uid(9, g), 'inviter-' || g, 'Inviter ' || g FROM generate_series(1, 10000) g;
INSERT INTO truxe.memberships (org_id, user_id, role, invited_at, joined_at)
  SELECT bench.uid(9, g), bench.uid(10, g), 'owner', now(), now() FROM generate_series(1, 10000) g;
\if :{?citus}
-- on a Citus coordinator (bench/citus, which lets these loads past the guard on the
-- workers): the coordinator's copies that truxe reads and writes, filled from the
-- distributed tables (docs/scaling.md, "The tested deployment")
INSERT INTO truxe.organizations_by_slug SELECT * FROM truxe.organizations;
INSERT INTO truxe.memberships_by_user SELECT * FROM truxe.memberships;
\endif
RESET session_replication_role;

-- an application's own table, protected by truxe.protect_table (README, "Your own tables"):
-- 50 projects per org, read by the bench_tenant login through its policies
CREATE TABLE bench.projects (
  id bigserial PRIMARY KEY, org_id uuid NOT NULL, name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO bench.projects (org_id, name)
  SELECT bench.uid(2, 1 + g % :O), 'project ' || g FROM generate_series(1, :O * 50) g;
DO $$ BEGIN PERFORM truxe.protect_table('bench.projects'); END $$;
GRANT SELECT ON bench.projects TO authenticated;

-- a plain table for the upsert ceiling
CREATE TABLE bench.counter (k text PRIMARY KEY, n bigint NOT NULL);
-- pre-issued magic links for the inspect benchmark (truxe's and the reference's)
CREATE TABLE bench.tokens (i int PRIMARY KEY, token text NOT NULL);
CREATE TABLE bench.ref_tokens (i int PRIMARY KEY, token text NOT NULL);
-- 1,000 API keys, each created by user u as a member of one of its orgs (the key text is
-- only ever shown once: kept here for the authenticate_api_key benchmark)
CREATE TABLE bench.api_keys (i int PRIMARY KEY, key text NOT NULL);
CREATE FUNCTION bench.make_key(u int, o int) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  PERFORM truxe.set_context(bench.uid(1, u));
  RETURN (SELECT k.key FROM truxe.create_api_key(bench.uid(2, o), 'bench') k);
END $$;
INSERT INTO bench.api_keys SELECT u, bench.make_key(u, 1 + ((u * 10 + 2) % :O)) FROM generate_series(1, 1000) u;
VACUUM ANALYZE;
