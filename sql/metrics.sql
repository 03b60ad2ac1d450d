-- truxe.metrics(): operational gauges for monitoring (docs/operations.md). One row per
-- metric (and label set), each read through an index:
--  * live sessions: exact below 10,000; from there on estimated from the 10,000 live sessions
--    with the smallest jti_hash (sessions_jti_hash_key, in order): counting a million live
--    sessions costs 60-350 ns each, more than the whole budget (bench/README.md);
--  * events of the last hour: idx_audit_logs_action_created (action, created_at), exact;
--  * audit rows of the last 24 hours: exact below 100,000, else the span of ids from the
--    day's first row (idx_audit_logs_created_at, (created_at, id)) to the newest (the key);
--  * exhausted rate-limit windows: idx_rate_limits_exhausted (partial);
--  * live API keys: idx_api_keys_created_by (partial on revoked_at IS NULL); verified
--    second factors: a small table, one row per enrolled factor;
--  * pending invitations: invitations_one_pending (partial on neither accepted nor revoked);
--  * cleanup lag: the smallest expiry/revocation/use/window end, each the first entry of
--    its own index.
-- SECURITY DEFINER: monitoring logins (pg_monitor) hold no right on the tables and RLS
-- would hide the rows from anyone else; only aggregates come out, never a row.
-- PL/pgSQL so that the statement is planned once per connection (a SQL function with a SET
-- clause is planned on every call: 3-8 ms here).
CREATE FUNCTION truxe.metrics()
RETURNS TABLE(metric text, labels jsonb, value double precision)
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  -- audit rows of the last 24 hours: exact while the ids from the day's first row (the
  -- oldest, by (created_at, id)) to the newest span fewer than 100,000, or when one of the 16
  -- rows before that first one (in id order) is itself of the day (rows written out of date
  -- order). Otherwise the span itself: a few index probes instead of a count of every row of
  -- the day; it then also counts the ids of audit writes that rolled back and of rows
  -- written since with an older date. Separate statements: Citus plans no correlated
  -- subquery over a distributed audit_logs (docs/scaling.md).
  day_first bigint;
  day_rows bigint;
BEGIN
  SELECT a.id INTO day_first FROM truxe.audit_logs a
   WHERE a.created_at > now() - interval '24 hours' ORDER BY a.created_at, a.id LIMIT 1;
  day_rows := (SELECT max(a.id) FROM truxe.audit_logs a) - day_first + 1;
  IF day_first IS NULL THEN
    day_rows := 0;
  ELSIF day_rows <= 100000
        OR (SELECT max(b.created_at) FROM (
              SELECT a.created_at FROM truxe.audit_logs a WHERE a.id < day_first
               ORDER BY a.id DESC LIMIT 16) b) > now() - interval '24 hours' THEN
    day_rows := (SELECT count(*) FROM truxe.audit_logs a
                  WHERE a.created_at > now() - interval '24 hours');
  END IF;
  RETURN QUERY
  WITH events AS MATERIALIZED (  -- one pass over the hour's audit rows, not one per metric
    SELECT a.action::text AS action, count(*) AS n
      FROM truxe.audit_logs a
     WHERE a.action IN ('session.created', 'session.revoked', 'session.reuse_detected',
                        'magic_link.sent', 'magic_link.verified', 'magic_link.failed')
       AND a.created_at > now() - interval '1 hour'
     GROUP BY a.action
  ), event(metric, action) AS (
    VALUES ('sessions_created_last_hour', 'session.created'),
           ('sessions_revoked_last_hour', 'session.revoked'),
           ('sessions_reuse_detected_last_hour', 'session.reuse_detected'),
           ('magic_links_sent_last_hour', 'magic_link.sent'),
           ('magic_links_verified_last_hour', 'magic_link.verified'),
           ('magic_links_failed_last_hour', 'magic_link.failed')
  ), overdue(tbl, due) AS (
    -- when the oldest row cleanup_expired_data should already have deleted became due
    SELECT 'sessions', LEAST((SELECT min(s.expires_at) FROM truxe.sessions s),
                             (SELECT min(s.revoked_at) FROM truxe.sessions s)) + interval '7 days'
    UNION ALL
    SELECT 'magic_link_challenges',
           LEAST((SELECT min(c.expires_at) FROM truxe.magic_link_challenges c),
                 (SELECT min(c.used_at) FROM truxe.magic_link_challenges c)) + interval '1 day'
    UNION ALL
    SELECT 'rate_limits', (SELECT min(r.window_end) FROM truxe.rate_limits r) + interval '1 hour'
    UNION ALL
    SELECT 'invitations',
           LEAST((SELECT min(i.expires_at) FROM truxe.invitations i),
                 (SELECT min(i.accepted_at) FROM truxe.invitations i),
                 (SELECT min(i.revoked_at) FROM truxe.invitations i)) + interval '30 days'
  )
  -- Exact below 10,000 live sessions. From 10,000 on, estimated from the 10,000 live ones with
  -- the smallest jti_hash: a SHA-256 is uniform, so the k-th smallest of n lies near k/n of
  -- the hash range, and (k - 1) / (its first 48 bits / 2^48) estimates n (one standard error
  -- 1%). Counting every live session would cost 60 to 350 ns each (bench/README.md).
  SELECT 'sessions_live', '{}'::jsonb,
         (SELECT CASE WHEN k.n < 10000 THEN k.n
                      ELSE round((k.n - 1) / ((k.top + 1) / 2.0 ^ 48)) END
            FROM (SELECT count(*) AS n,
                         max(('x' || encode(substr(f.jti_hash, 1, 6), 'hex'))::bit(48)::bigint) AS top
                    FROM (SELECT s.jti_hash FROM truxe.sessions s
                           WHERE s.revoked_at IS NULL AND s.expires_at > now()
                           ORDER BY s.jti_hash LIMIT 10000) f) k)::double precision
  UNION ALL
  SELECT e.metric, '{}'::jsonb, COALESCE(v.n, 0)::double precision
    FROM event e LEFT JOIN events v ON v.action = e.action
  UNION ALL
  -- links that reached the attempt limit in the last hour: their fifth wrong secret (the
  -- last one a link can count) is a failure of reason `invalid` within the hour
  SELECT 'magic_links_locked_last_hour', '{}'::jsonb,
         (SELECT count(*) FROM (
            SELECT DISTINCT a.target_id FROM truxe.audit_logs a
             WHERE a.action = 'magic_link.failed' AND a.created_at > now() - interval '1 hour'
               AND a.details ->> 'reason' = 'invalid') f
           JOIN truxe.magic_link_challenges c
             ON c.id = CASE WHEN f.target_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                            THEN f.target_id::uuid END
            AND c.attempts >= 5)::double precision
  UNION ALL
  SELECT 'api_keys_live', '{}'::jsonb,
         (SELECT count(*) FROM truxe.api_keys k
           WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now()))::double precision
  UNION ALL
  SELECT 'invitations_pending', '{}'::jsonb,
         (SELECT count(*) FROM truxe.invitations i
           WHERE i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now())::double precision
  UNION ALL
  SELECT 'mfa_factors_verified', '{}'::jsonb,
         (SELECT count(*) FROM truxe.mfa_factors f WHERE f.status = 'verified')::double precision
  UNION ALL
  SELECT 'rate_limit_windows_exhausted', '{}'::jsonb,
         (SELECT count(*) FROM truxe.rate_limits r
           WHERE r.exhausted_at IS NOT NULL AND r.window_end > now())::double precision
  UNION ALL
  SELECT 'audit_rows_last_day', '{}'::jsonb, day_rows::double precision
  UNION ALL
  SELECT 'cleanup_overdue_seconds', jsonb_build_object('table', o.tbl),
         COALESCE(GREATEST(extract(epoch FROM now() - o.due), 0), 0)::double precision
    FROM overdue o;
END
$$;
REVOKE ALL ON FUNCTION truxe.metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION truxe.metrics() TO pg_monitor;
-- pg_monitor reaches the schema for this function only: it holds no other truxe right
GRANT USAGE ON SCHEMA truxe TO pg_monitor;
