-- 0.1.0's create_session + refresh_session (bench/v010): as truxe_create_refresh.sql
\set u random(1, :U)
SELECT refresh_jti FROM truxe.create_session(bench.uid(1, :u), NULL, '1 hour') \gset
SELECT jti FROM truxe.refresh_session(:refresh_jti);
