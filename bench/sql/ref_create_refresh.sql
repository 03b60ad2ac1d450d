\set u random(1, :U)
SELECT refresh_jti FROM ref.create_session(bench.uid(1, :u), '1 hour') \gset
SELECT jti FROM ref.refresh_session(:refresh_jti);
