-- truxe 0.1.0 -> 0.2.0, run by ALTER EXTENSION truxe UPDATE (TO '0.2.0').
--
-- 0.1.0 is released and its install script (sql/truxe--0.1.0.sql) is frozen: every change
-- that 0.2.0 makes to the catalog is made twice, once in the fresh-install sources (sql/*.sql
-- and the Rust #[pg_extern]s) and once here, and tests/integration/upgrade.rs proves that
-- both give the same catalog. Sections follow the order of the changes; each says why.
\echo Use "ALTER EXTENSION truxe UPDATE TO '0.2.0'" to load this file. \quit

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
  ADD CONSTRAINT sessions_pkey PRIMARY KEY (id),
  ADD CONSTRAINT sessions_jti_hash_key UNIQUE (jti_hash),
  ADD CONSTRAINT jti_hash_is_sha256 CHECK (octet_length(jti_hash) = 32),
  ADD CONSTRAINT refresh_jti_hash_is_sha256 CHECK (octet_length(refresh_jti_hash) = 32);
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
  expires_at, last_used_at, revoked_at, revoked_reason, replaced_by) ON truxe.sessions TO authenticated;

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
CREATE FUNCTION truxe."end_sessions_on_membership_delete"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'end_sessions_on_membership_delete_wrapper';
CREATE FUNCTION truxe."end_sessions_on_status_change"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'end_sessions_on_status_change_wrapper';
CREATE TRIGGER memberships_end_sessions AFTER DELETE ON truxe.memberships
  FOR EACH ROW EXECUTE FUNCTION truxe.end_sessions_on_membership_delete();
CREATE TRIGGER users_end_sessions AFTER UPDATE OF status ON truxe.users
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status <> 'active')
  EXECUTE FUNCTION truxe.end_sessions_on_status_change();
ALTER FUNCTION truxe.end_sessions_on_membership_delete() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION truxe.end_sessions_on_status_change() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- trigger functions are called by their triggers only
REVOKE ALL ON FUNCTION truxe.end_sessions_on_membership_delete(), truxe.end_sessions_on_status_change() FROM PUBLIC;
