\set e random(1, 1000000000)
SELECT token FROM ref.issue_magic_link(('b' || :e || '@bench.example')::citext) \gset
SELECT status FROM ref.verify_magic_link(:token);
