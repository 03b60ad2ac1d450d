\set g random(1, 10000)
\set e random(1, 1000000000)
BEGIN;
SELECT truxe.set_context(bench.uid(10, :g));
SELECT token FROM ref.invite_by_email(bench.uid(9, :g), ('r' || :e || '@bench.example')::citext) \gset
COMMIT;
SELECT status FROM ref.accept_invitation_token(:token);
