\set i random(1, :S)
SELECT user_id FROM truxe.validate_session(bench.token(3, :i));
