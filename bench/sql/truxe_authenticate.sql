\set i random(1, :S)
SELECT user_id FROM truxe.authenticate(bench.token(3, :i)::text);
