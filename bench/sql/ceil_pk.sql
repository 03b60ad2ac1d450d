\set i random(1, :S)
SELECT user_id, org_id, expires_at FROM truxe.sessions WHERE jti = bench.uid(3, :i);
