-- The last hour of a realistic day for the data set (bench/run, before truxe.metrics() is
-- timed): every one of the :U users logs in once a day by magic link, and an active
-- session rotates its refresh token about every quarter of an hour. Per hour, at scale 1
-- (100,000 users): 4,200 links sent, 4,000 verified, 300 failed (250 wrong secrets, 50
-- expired), 20,000 sessions created (4,000 logins, 16,000 rotations), 16,400 revoked
-- (the rotated ones and 400 logouts), 2 refresh-token reuses. The data set's own 1M audit
-- rows are already dated within the last 24 hours (bench/data.sql), so they are the rest of
-- the day. Rows are dated in id order, after the data set's (within the hour, since the
-- load), and not vacuumed afterwards (as between two autovacuum runs: their index entries
-- are not yet all-visible).
-- Usage: psql -v U=<users> -f bench/metrics_hour.sql
SET session_replication_role = replica;
INSERT INTO truxe.audit_logs (action, target_type, target_id, details, created_at)
  SELECT e.action, e.target_type, gen_random_uuid()::text, e.details,
         t.start + (row_number() OVER (ORDER BY random())) * (now() - t.start) / (sum(1) OVER ())
    FROM (VALUES ('magic_link.sent', 'magic_link', '{}'::jsonb, 4200),
                 ('magic_link.verified', 'magic_link', '{}', 4000),
                 ('magic_link.failed', 'magic_link', '{"reason": "invalid"}', 250),
                 ('magic_link.failed', 'magic_link', '{"reason": "expired"}', 50),
                 ('session.created', 'session', '{}', 20000),
                 ('session.revoked', 'session', '{"reason": "rotated"}', 16000),
                 ('session.revoked', 'session', '{"reason": "logout"}', 400),
                 ('session.reuse_detected', 'session', '{}', 2)) AS e(action, target_type, details, per_100k),
         LATERAL generate_series(1, greatest(1, e.per_100k * :U / 100000)) g,
         -- after the data set's own rows, as a day's rows are written in id order
         (SELECT greatest(now() - interval '1 hour', max(a.created_at)) AS start
            FROM truxe.audit_logs a) t
   ORDER BY 5;
RESET session_replication_role;
