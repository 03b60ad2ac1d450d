\set g random(1, 10000)
\set e random(1, 1000000000)
BEGIN;
SELECT truxe.set_context(bench.uid(10, :g));
SELECT token FROM truxe.invite_by_email(bench.uid(9, :g), ('i' || :e || '@bench.example')::citext) \gset
COMMIT;
SELECT status FROM truxe.accept_invitation_token(:token);
