\set i random(1, :S)
SELECT user_id FROM truxe.validate_session(bench.uid(3, :i));
