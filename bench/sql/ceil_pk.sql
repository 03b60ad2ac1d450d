\set i random(1, :S)
SELECT user_id, org_id, expires_at FROM truxe.sessions WHERE jti_hash = sha256(uuid_send(bench.token(3, :i)));
