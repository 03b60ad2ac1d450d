\set i random(1, :S)
SELECT user_id FROM ref.validate_session(bench.token(3, :i));
