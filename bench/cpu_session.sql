-- In-backend CPU of the session operations that 0.1.0 runs beside truxe (issue 20;
-- bench/README.md, "Performance work after the 0.2 run"): load this file into both servers
-- of a `bench/run --load-only` data set (truxe's, and 0.1.0's on the next port: the
-- procedure names only functions both versions have), then call it on each in turn.
-- Variants, each n times in a row after 20 that are not counted (they plan the statements):
--   1 create + refresh: bench/sql/truxe_create_refresh.sql (a random user's unscoped
--     session, ttl 1 hour, then a refresh of its refresh_jti), committing after each as
--     pgbench does;
--   2 validate, first touch or every call a touch: a random session of sessions 1..s whose
--     last_used_at is stale (as the 1M-session row of bench/run: each call writes);
--   3 validate, read path: sessions 1..s touched first (not counted), then read (as the
--     10k-active read row: last_used_at fresh, nothing written).
-- Time: the backend's own CPU (/proc/self/schedstat, first field, ns; a superuser reads it).
--   psql -p 54316 -f bench/cpu_session.sql bench; psql -p 54317 -f bench/cpu_session.sql bench
--   for r in $(seq 8); do for p in $(shuf -e 54316 54317); do
--     psql -p $p -c "CALL bench.cpu_session($r, 1, 2000, 100000, 0)" bench; done; done
--   psql -c "SELECT variant, percentile_cont(0.5) WITHIN GROUP (ORDER BY ns::float / n / 1000)
--              FROM bench.cpu_runs GROUP BY variant" bench    -- µs per operation, each server
CREATE TABLE IF NOT EXISTS bench.cpu_runs (round int, variant text, n int, ns bigint);
CREATE OR REPLACE FUNCTION bench.cpu_now() RETURNS bigint LANGUAGE sql AS
  $$ SELECT split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint $$;
-- u: users to choose from (create + refresh); s: sessions to choose from (validate)
CREATE OR REPLACE PROCEDURE bench.cpu_session(rnd int, variant int, n int, u int, s int)
LANGUAGE plpgsql AS $$
DECLARE
  t0 bigint; acc bigint := 0; k int; r uuid; j uuid; i int; v int := variant;
BEGIN
  IF v = 3 THEN  -- the first touch of every session, not counted
    FOR i IN 1..s LOOP
      PERFORM truxe.validate_session(bench.token(3, i));
    END LOOP;
    COMMIT;
  END IF;
  FOR k IN -19..n LOOP
    IF v = 1 THEN
      i := 1 + floor(random() * u)::int;
      t0 := bench.cpu_now();
      SELECT x.refresh_jti INTO r FROM truxe.create_session(bench.uid(1, i), NULL, '1 hour') x;
      COMMIT;
      SELECT x.jti INTO j FROM truxe.refresh_session(r) x;
      COMMIT;
    ELSE
      i := 1 + floor(random() * s)::int;
      t0 := bench.cpu_now();
      SELECT x.user_id INTO j FROM truxe.validate_session(bench.token(3, i)) x;
      COMMIT;
    END IF;
    IF k > 0 THEN
      acc := acc + bench.cpu_now() - t0;
    END IF;
  END LOOP;
  INSERT INTO bench.cpu_runs
    VALUES (rnd, (ARRAY['create_refresh', 'validate_touch', 'validate_read'])[v], n, acc);
  COMMIT;
END $$;
