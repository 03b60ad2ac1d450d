\set s random(1, 1000)
\set u 1 + :s % :U
\set o 1 + ((:u * 10 + random(0, 9)) % :O)
BEGIN;
SELECT 1 FROM truxe.authenticate(bench.token(3, :s)::text);
SELECT user_id, role FROM truxe.memberships WHERE org_id = bench.uid(2, :o);
END;
