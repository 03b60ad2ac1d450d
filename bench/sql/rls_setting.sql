\set s random(1, 1000)
\set u 1 + :s % :U
\set o 1 + ((:u * 10 + random(0, 9)) % :O)
BEGIN;
SELECT set_config('app.current_user_id', bench.uid(1, :u)::text, true);
SELECT user_id, role FROM truxe.memberships WHERE org_id = bench.uid(2, :o);
END;
