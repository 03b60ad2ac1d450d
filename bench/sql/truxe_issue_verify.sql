\set e random(1, 1000000000)
SELECT token FROM truxe.issue_magic_link(('b' || :e || '@bench.example')::citext) \gset
SELECT status FROM truxe.verify_magic_link(:token);
