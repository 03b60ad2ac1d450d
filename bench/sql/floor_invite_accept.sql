-- invite + accept, the writes alone (issue 12's floor): exactly the rows the pair of
-- bench/sql/truxe_invite_accept.sql writes for a new e-mail, as plain statements with
-- literal values, no checks and no token: the invitation and its `invitation.sent` row
-- (one transaction), then the user (its trigger writes `user.created`), the membership
-- (`membership.joined`), the invitation used up and `invitation.accepted` (another). Each
-- transaction is one statement, so no implementation makes these writes in fewer round
-- trips: a ceiling for the pair, not a competitor (bench/README.md).
\set g random(1, 10000)
\set e random(1, 1000000000000)
WITH i AS (
  INSERT INTO truxe.invitations (org_id, email, role, permissions, token_hash, invited_by, expires_at)
  VALUES (bench.uid(9, :g), ('f' || :e || '@bench.example')::citext, 'member', '[]',
          '0000000000000000000000000000000000000000000000000000000000000000', bench.uid(10, :g),
          now() + interval '7 days')
  RETURNING id, org_id, invited_by, email),
a AS (
  INSERT INTO truxe.audit_logs (org_id, actor_user_id, action, target_type, target_id, details,
                                ip, user_agent, request_id)
  SELECT org_id, invited_by, 'invitation.sent', 'invitation', id::text,
         jsonb_build_object('email', email, 'role', 'member'), NULL, NULL, NULL FROM i)
SELECT id FROM i \gset
WITH u AS (
  INSERT INTO truxe.users (email, status, email_verified)
  VALUES (('f' || :e || '@bench.example')::citext, 'active', true) RETURNING id),
i AS (
  UPDATE truxe.invitations v SET accepted_at = now(), accepted_by = u.id FROM u
   WHERE v.org_id = bench.uid(9, :g) AND v.id = :id::uuid
  RETURNING v.org_id, v.role, v.permissions, v.invited_by, v.created_at, u.id AS user_id),
m AS (
  INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by, invited_at, joined_at)
  SELECT org_id, user_id, role, permissions, invited_by, created_at, now() FROM i
  RETURNING org_id, user_id)
INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id, details, ip, user_agent, request_id)
SELECT org_id, 'invitation.accepted', 'invitation', :id, jsonb_build_object('user_id', user_id, 'status', 'accepted'),
       NULL, NULL, NULL FROM m;
