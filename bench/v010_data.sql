-- 0.1.0's data set for the rows bench/run compares with 0.1.0 in the same run (bench/v010),
-- loaded into the 0.1.0 server with psql variables U (users), O (orgs), S (sessions) and A
-- (audit rows). The users, sessions and audit rows of bench/data.sql, with the same ids,
-- written for 0.1.0's schema
-- (sql/truxe--0.1.0.sql): 0.1.0 stores the access token `jti` and the refresh token
-- `refresh_jti` in clear, and a family is named after its first jti. 0.1.0's
-- validate_session reads sessions only; create_session reads users (and, with an org,
-- organizations and memberships: the benchmark passes none); refresh_session reads and
-- writes sessions and writes an audit row. The audit log holds as many rows as truxe's
-- (both sides append to it, and its indexes' size is part of what an append costs).
CREATE SCHEMA bench;
CREATE FUNCTION bench.uid(kind int, n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT (lpad(to_hex(kind), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid $$;
-- A bearer token (access kind 3, refresh kind 4), as in bench/data.sql: spread over the uuid
-- space as gen_random_uuid() tokens are
CREATE FUNCTION bench.token(kind int, n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT md5(kind || '/' || n)::uuid $$;

-- bulk load as a replica: no audit rows, no FK check
SET session_replication_role = replica;
INSERT INTO truxe.users (id, email, status, email_verified)
  SELECT bench.uid(1, g), 'user' || g || '@bench.example', 'active', true FROM generate_series(1, :U) g;
-- access token bench.token(3, n), refresh token bench.token(4, n), as in bench/data.sql
INSERT INTO truxe.sessions (jti, user_id, refresh_jti, family_id, expires_at)
  SELECT bench.token(3, g), bench.uid(1, 1 + g % :U), bench.token(4, g), bench.token(3, g),
         now() + interval '30 days'
    FROM generate_series(1, :S) g;
INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id)
  SELECT bench.uid(2, 1 + g % :O), 'org.updated', 'organization', g::text FROM generate_series(1, :A) g;
RESET session_replication_role;
VACUUM ANALYZE;
