-- 0.1.0's validate_session (bench/v010): sessions chosen as truxe_validate.sql chooses them
\set i random(1, :S)
SELECT user_id FROM truxe.validate_session(bench.token(3, :i));
