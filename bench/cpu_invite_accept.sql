-- In-backend CPU of invite + accept (issue 12; bench/README.md, "invite + accept: the
-- floor"): truxe's pair (1), the reference's (2), the floor's writes (3:
-- bench/sql/floor_invite_accept.sql as PL/pgSQL statements), or an empty iteration (4: what
-- the measuring itself costs), n times in a row, each pair committing after the invite and
-- after the accept as the pgbench scripts do; the backend's own CPU time
-- (/proc/self/schedstat, first field, ns: read as a superuser) summed into bench.cpu_runs.
-- One variant per connection and call, as pgbench runs one script per connection: two
-- variants interleaved in one backend run the same foreign-key checks under different
-- search_paths (truxe's functions pin theirs), and PostgreSQL re-plans a cached plan whose
-- search_path changed, 8% of such a loop (bench/README.md). The first 20 pairs of a call
-- are not counted (they plan the statements). On a `bench/run --load-only` data set:
--   psql -f bench/cpu_invite_accept.sql bench
--   for r in $(seq 12); do for v in $(shuf -e 1 2 3); do
--     psql -c "CALL bench.cpu_block($r, $v, 200)" bench; done; done
--   psql -c "SELECT variant, percentile_cont(0.5) WITHIN GROUP (ORDER BY ns::float / n / 1000)
--              FROM bench.cpu_runs GROUP BY variant" bench
-- Each pair invites a fresh address to a random one of the 10,000 invitation orgs: a few
-- dozen rounds stay far from the limit of 100 invitations per org and hour.
CREATE TABLE IF NOT EXISTS bench.cpu_runs (round int, variant text, n int, ns bigint);
CREATE OR REPLACE PROCEDURE bench.cpu_block(rnd int, variant int, n int) LANGUAGE plpgsql AS $$
DECLARE
  t0 bigint; acc bigint := 0; g int; e text; tok text; iid uuid; v int := variant; k int;
BEGIN
  FOR k IN -19..n LOOP
    BEGIN
      g := 1 + floor(random() * 10000)::int;
      e := 'c' || replace(gen_random_uuid()::text, '-', '') || '@bench.example';
      t0 := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
      IF v = 1 THEN
        PERFORM truxe.set_context(bench.uid(10, g));
        SELECT x.token INTO tok FROM truxe.invite_by_email(bench.uid(9, g), e::citext) x;
        COMMIT;
        PERFORM truxe.accept_invitation_token(tok);
        COMMIT;
      ELSIF v = 2 THEN
        PERFORM truxe.set_context(bench.uid(10, g));
        SELECT x.token INTO tok FROM ref.invite_by_email(bench.uid(9, g), e::citext) x;
        COMMIT;
        PERFORM ref.accept_invitation_token(tok);
        COMMIT;
      ELSIF v = 3 THEN
        WITH i AS (
          INSERT INTO truxe.invitations (org_id, email, role, permissions, token_hash, invited_by, expires_at)
          VALUES (bench.uid(9, g), e::citext, 'member', '[]',
                  '0000000000000000000000000000000000000000000000000000000000000000', bench.uid(10, g),
                  now() + interval '7 days')
          RETURNING id, org_id, invited_by, email),
        a AS (
          INSERT INTO truxe.audit_logs (org_id, actor_user_id, action, target_type, target_id, details,
                                        ip, user_agent, request_id)
          SELECT i.org_id, i.invited_by, 'invitation.sent', 'invitation', i.id::text,
                 jsonb_build_object('email', i.email, 'role', 'member'), NULL, NULL, NULL FROM i)
        SELECT i.id INTO iid FROM i;
        COMMIT;
        WITH u AS (
          INSERT INTO truxe.users (email, status, email_verified)
          VALUES (e::citext, 'active', true) RETURNING id),
        i AS (
          UPDATE truxe.invitations v SET accepted_at = now(), accepted_by = u.id FROM u
           WHERE v.org_id = bench.uid(9, g) AND v.id = iid
          RETURNING v.org_id, v.role, v.permissions, v.invited_by, v.created_at, u.id AS user_id),
        m AS (
          INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by, invited_at, joined_at)
          SELECT i.org_id, i.user_id, i.role, i.permissions, i.invited_by, i.created_at, now() FROM i
          RETURNING org_id, user_id)
        INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id, details, ip, user_agent, request_id)
        SELECT m.org_id, 'invitation.accepted', 'invitation', iid::text,
               jsonb_build_object('user_id', m.user_id, 'status', 'accepted'), NULL, NULL, NULL FROM m;
        COMMIT;
      ELSE
        COMMIT;
        COMMIT;
      END IF;
      IF k > 0 THEN  -- the first 20 plan the statements in this connection
        acc := acc + split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint - t0;
      END IF;
    END;
  END LOOP;
  INSERT INTO bench.cpu_runs
    VALUES (rnd, (ARRAY['truxe', 'ref', 'floor', 'empty'])[variant], n, acc);
  COMMIT;
END $$;
