//! Invitations by e-mail through real logins: invite_by_email as an org's owner or admin,
//! inspect_invitation and accept_invitation_token as service_account, every status, the
//! attempt lock across transactions, the accept race, the hourly limit, and who reads the
//! table.
use crate::harness::{code_of, server, sqlstate, wrong_secret, TestDb, SERVICE_LOGIN};
use postgres::Client;
use std::sync::{Arc, Barrier};
use std::thread;

/// An org `acme` owned by `owner@acme.example`, with `admin@acme.example` (admin, joined)
/// and `member@acme.example` (member, joined), and an outsider with no membership.
struct Org {
    db: TestDb,
    id: String,
    owner: String,
    admin: String,
    member: String,
    outsider: String,
}

fn user(su: &mut Client, email: &str) -> String {
    su.query_one(
        "INSERT INTO truxe.users (email, status, email_verified) VALUES ($1, 'active', true)
         RETURNING id::text",
        &[&email],
    )
    .unwrap()
    .get(0)
}

fn org() -> Org {
    let db = server().fresh_db(true);
    let mut su = db.superuser();
    let owner = user(&mut su, "owner@acme.example");
    let admin = user(&mut su, "admin@acme.example");
    let member = user(&mut su, "member@acme.example");
    let outsider = user(&mut su, "outsider@other.example");
    let mut o = db.acting_as(&owner);
    let id: String = o
        .query_one(
            "SELECT truxe.create_organization('acme', 'Acme Inc')::text",
            &[],
        )
        .unwrap()
        .get(0);
    for (who, role) in [(&admin, "admin"), (&member, "member")] {
        o.execute(
            "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid, $3::text::truxe.membership_role)",
            &[&id, who, &role],
        )
        .unwrap();
        db.acting_as(who)
            .execute("SELECT truxe.accept_invitation($1::text::uuid)", &[&id])
            .unwrap();
    }
    Org {
        db,
        id,
        owner,
        admin,
        member,
        outsider,
    }
}

/// invite_by_email through `c`: (invitation id, token).
fn invite(c: &mut Client, org: &str, email: &str, role: &str, perms: &str) -> (String, String) {
    let r = c
        .query_one(
            "SELECT invitation_id::text, token
               FROM truxe.invite_by_email($1::text::uuid, $2, $3::text::truxe.membership_role, $4::text::jsonb)",
            &[&org, &email, &role, &perms],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn inspect(s: &mut Client, token: &str) -> String {
    s.query_one("SELECT status FROM truxe.inspect_invitation($1)", &[&token])
        .unwrap()
        .get(0)
}

/// accept_invitation_token: (status, org_id, user_id).
fn accept(
    s: &mut Client,
    token: &str,
    user: Option<&str>,
) -> (String, Option<String>, Option<String>) {
    let r = s
        .query_one(
            "SELECT status, org_id::text, user_id::text
               FROM truxe.accept_invitation_token($1, $2::text::uuid)",
            &[&token, &user],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// The owner (`owner`'s client) changes `user`'s role in `org`.
fn set_role(owner: &mut Client, org: &str, user: &str, role: &str) {
    owner
        .execute(
            "SELECT truxe.change_role($1::text::uuid, $2::text::uuid, $3::text::truxe.membership_role)",
            &[&org, &user, &role],
        )
        .unwrap();
}

/// `user`'s extra permissions in `org` become `perms` (a JSON array), written directly.
fn set_permissions(su: &mut Client, org: &str, user: &str, perms: &str) {
    su.execute(
        "UPDATE truxe.memberships SET permissions = $3::text::jsonb
          WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid",
        &[&org, &user, &perms],
    )
    .unwrap();
}

/// (role, permissions, joined) of `user`'s membership of `org`, if any.
fn membership(su: &mut Client, org: &str, user: &str) -> Option<(String, String, bool)> {
    su.query_opt(
        "SELECT role::text, permissions::text, joined_at IS NOT NULL FROM truxe.memberships
          WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid",
        &[&org, &user],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

#[test]
fn a_new_email_is_invited_and_accepted_the_user_is_created_and_joined() {
    let o = org();
    let (mut su, mut s) = (o.db.superuser(), o.db.service());
    let mut owner = o.db.acting_as(&o.owner);
    let (id, token) = invite(
        &mut owner,
        &o.id,
        "New.Person@Example.com",
        "admin",
        r#"["reports:export"]"#,
    );
    assert_eq!(token.len(), 76);
    assert!(token.starts_with(&id.replace('-', "")));
    // only the SHA-256 of the secret is stored; the token is in no row and no audit row
    let (hash_ok, leaked): (bool, i64) = su
        .query_one(
            "SELECT (SELECT token_hash = encode(sha256(decode(translate($2, '-_', '+/') || '=', 'base64')), 'hex')
                       FROM truxe.invitations WHERE id = $1::text::uuid),
                    (SELECT count(*) FROM truxe.invitations i WHERE i::text LIKE '%' || $2 || '%')
                  + (SELECT count(*) FROM truxe.audit_logs a WHERE a::text LIKE '%' || $2 || '%')",
            &[&id, &token[33..].to_string()],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(hash_ok, "token_hash is the SHA-256 of the secret's bytes");
    assert_eq!(leaked, 0);

    // the confirm page: valid, with the org's name, the e-mail and the role; nothing used up
    for _ in 0..2 {
        let r = s
            .query_one(
                "SELECT status, org_id::text, org_name, email::text, role::text, expires_at > now() + interval '6 days'
                   FROM truxe.inspect_invitation($1)",
                &[&token],
            )
            .unwrap();
        let row: (String, String, String, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        assert_eq!(
            row,
            (
                "valid".into(),
                o.id.clone(),
                "Acme Inc".into(),
                "New.Person@Example.com".into(),
                "admin".into(),
                true
            )
        );
    }
    let (status, org, user) = accept(&mut s, &token, None);
    assert_eq!(
        (status.as_str(), org.as_deref()),
        ("accepted", Some(o.id.as_str()))
    );
    let user = user.unwrap();
    let (st, verified): (String, bool) = su
        .query_one(
            "SELECT status::text, email_verified FROM truxe.users
              WHERE id = $1::text::uuid AND email = 'new.person@example.com'",
            &[&user],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((st.as_str(), verified), ("active", true));
    assert_eq!(
        membership(&mut su, &o.id, &user),
        Some(("admin".into(), r#"["reports:export"]"#.into(), true))
    );
    // used up: a second accept and the confirm page both say so
    assert_eq!(accept(&mut s, &token, None).0, "used");
    assert_eq!(inspect(&mut s, &token), "used");
    let actions: Vec<String> = su
        .query(
            "SELECT action FROM truxe.audit_logs
              WHERE action IN ('invitation.sent', 'invitation.accepted', 'membership.joined')
                AND org_id = $1::text::uuid AND created_at >= (SELECT created_at FROM truxe.invitations)
              ORDER BY id",
            &[&o.id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        [
            "invitation.sent",
            "invitation.accepted",
            "membership.joined"
        ]
    );
    let sent_by: Option<String> = su
        .query_one(
            "SELECT actor_user_id::text FROM truxe.audit_logs WHERE action = 'invitation.sent'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(sent_by.as_deref(), Some(o.owner.as_str()));
}

#[test]
fn an_existing_user_a_pending_membership_and_a_joined_member() {
    let o = org();
    let (mut su, mut s) = (o.db.superuser(), o.db.service());
    let mut admin = o.db.acting_as(&o.admin);
    // an existing user, accepting as themself
    let bob = user(&mut su, "bob@else.example");
    let (_, token) = invite(&mut admin, &o.id, "BOB@else.example", "viewer", "[]");
    let (status, _, who) = accept(&mut s, &token, Some(&bob));
    assert_eq!(
        (status.as_str(), who.as_deref()),
        ("accepted", Some(bob.as_str()))
    );
    assert_eq!(
        membership(&mut su, &o.id, &bob),
        Some(("viewer".into(), "[]".into(), true))
    );
    // a pending invite_member membership is joined and takes the invitation's role
    let carol = user(&mut su, "carol@else.example");
    admin
        .execute(
            "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid, 'viewer')",
            &[&o.id, &carol],
        )
        .unwrap();
    assert!(!membership(&mut su, &o.id, &carol).unwrap().2);
    let (_, token) = invite(&mut admin, &o.id, "carol@else.example", "member", "[]");
    assert_eq!(accept(&mut s, &token, None).0, "accepted");
    assert_eq!(
        membership(&mut su, &o.id, &carol),
        Some(("member".into(), "[]".into(), true))
    );
    // an already joined member: already_member, the membership unchanged, the link used up
    let (_, token) = invite(&mut admin, &o.id, "member@acme.example", "viewer", "[]");
    let (status, _, who) = accept(&mut s, &token, None);
    assert_eq!(
        (status.as_str(), who.as_deref()),
        ("already_member", Some(o.member.as_str()))
    );
    assert_eq!(membership(&mut su, &o.id, &o.member).unwrap().0, "member");
    assert_eq!(inspect(&mut s, &token), "used");
}

#[test]
fn a_mismatched_user_gets_email_mismatch_and_the_right_person_still_can_accept() {
    let o = org();
    let (mut su, mut s) = (o.db.superuser(), o.db.service());
    let dave = user(&mut su, "dave@else.example");
    let (_, token) = invite(
        &mut o.db.acting_as(&o.owner),
        &o.id,
        "erin@else.example",
        "member",
        "[]",
    );
    let (status, _, _) = accept(&mut s, &token, Some(&dave));
    assert_eq!(status, "email_mismatch");
    assert_eq!(
        accept(&mut s, &token, Some(&o.outsider)).0,
        "email_mismatch"
    );
    // an unknown user id is no match either
    assert_eq!(
        accept(&mut s, &token, Some("00000000-0000-0000-0000-00000000dead")).0,
        "email_mismatch"
    );
    assert_eq!(membership(&mut su, &o.id, &dave), None);
    assert_eq!(inspect(&mut s, &token), "valid", "nothing was used up");
    let (status, _, erin) = accept(&mut s, &token, None);
    assert_eq!(status, "accepted");
    assert!(membership(&mut su, &o.id, &erin.unwrap()).unwrap().2);
}

#[test]
fn a_suspended_or_deleted_user_is_rejected() {
    let o = org();
    let (mut su, mut s) = (o.db.superuser(), o.db.service());
    let mut owner = o.db.acting_as(&o.owner);
    for status in ["suspended", "deleted"] {
        let email = format!("{status}@else.example");
        let id: String = su
            .query_one(
                "INSERT INTO truxe.users (email, status) VALUES ($1, $2::text::truxe.user_status)
                 RETURNING id::text",
                &[&email, &status],
            )
            .unwrap()
            .get(0);
        let (_, token) = invite(&mut owner, &o.id, &email, "member", "[]");
        assert_eq!(accept(&mut s, &token, None).0, "rejected");
        assert_eq!(accept(&mut s, &token, Some(&id)).0, "rejected");
        assert_eq!(membership(&mut su, &o.id, &id), None);
    }
}

#[test]
fn a_new_invitation_revokes_the_earlier_one_and_revoke_invitation_needs_rights() {
    let o = org();
    let mut s = o.db.service();
    let mut owner = o.db.acting_as(&o.owner);
    let (first_id, first) = invite(&mut owner, &o.id, "frank@else.example", "member", "[]");
    let (second_id, second) = invite(&mut owner, &o.id, "FRANK@else.example", "member", "[]");
    assert_eq!(inspect(&mut s, &first), "revoked");
    assert_eq!(accept(&mut s, &first, None).0, "revoked");
    assert_eq!(inspect(&mut s, &second), "valid");
    // a member, an outsider, and an unknown id: false, the same answer
    for who in [&o.member, &o.outsider] {
        let revoked: bool =
            o.db.acting_as(who)
                .query_one(
                    "SELECT truxe.revoke_invitation($1::text::uuid)",
                    &[&second_id],
                )
                .unwrap()
                .get(0);
        assert!(!revoked);
    }
    assert_eq!(inspect(&mut s, &second), "valid");
    let mut admin = o.db.acting_as(&o.admin);
    let revoke = |c: &mut Client, id: &str| -> bool {
        c.query_one("SELECT truxe.revoke_invitation($1::text::uuid)", &[&id])
            .unwrap()
            .get(0)
    };
    assert!(!revoke(&mut admin, "00000000-0000-0000-0000-00000000dead"));
    assert!(!revoke(&mut admin, &first_id), "already revoked");
    assert!(revoke(&mut admin, &second_id));
    assert_eq!(accept(&mut s, &second, None).0, "revoked");
    // no acting user: 42501
    assert_eq!(
        sqlstate(o.db.authenticated().query(
            "SELECT truxe.revoke_invitation($1::text::uuid)",
            &[&second_id]
        )),
        "42501"
    );
}

#[test]
fn five_wrong_secrets_in_separate_transactions_lock_the_invitation() {
    let o = org();
    let (mut su, mut s) = (o.db.superuser(), o.db.service());
    let (id, token) = invite(
        &mut o.db.acting_as(&o.owner),
        &o.id,
        "gina@else.example",
        "member",
        "[]",
    );
    for n in 1..=5 {
        // each call its own transaction (autocommit): the count survives because the
        // function returns normally
        let status = if n % 2 == 0 {
            inspect(&mut s, &wrong_secret(&token))
        } else {
            accept(&mut s, &wrong_secret(&token), None).0
        };
        assert_eq!(status, "invalid");
        let attempts: i32 = su
            .query_one(
                "SELECT attempts FROM truxe.invitations WHERE id = $1::text::uuid",
                &[&id],
            )
            .unwrap()
            .get(0);
        assert_eq!(attempts, n);
    }
    assert_eq!(inspect(&mut s, &token), "locked");
    assert_eq!(accept(&mut s, &token, None).0, "locked");
    // garbage is invalid, never an error
    for garbage in ["", "x", "not.a.token", &"a".repeat(76), &"é".repeat(5000)] {
        assert_eq!(inspect(&mut s, garbage), "invalid");
        assert_eq!(accept(&mut s, garbage, None).0, "invalid");
    }
    let null: String = s
        .query_one(
            "SELECT status FROM truxe.accept_invitation_token(NULL)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(null, "invalid");
}

#[test]
fn eight_connections_accepting_one_token_at_once_accept_it_once() {
    let o = org();
    let (_, token) = invite(
        &mut o.db.acting_as(&o.owner),
        &o.id,
        "hank@else.example",
        "member",
        "[]",
    );
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (barrier, name, token) = (barrier.clone(), o.db.name.clone(), token.clone());
            thread::spawn(move || {
                let mut c = server().client(&name, SERVICE_LOGIN);
                barrier.wait();
                accept(&mut c, &token, None).0
            })
        })
        .collect();
    let mut statuses: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    statuses.sort();
    let mut expected = vec!["accepted".to_string()];
    expected.extend(std::iter::repeat_n("used".to_string(), 7));
    assert_eq!(statuses, expected);
    let (users, members): (i64, i64) =
        o.db.superuser()
            .query_one(
                "SELECT (SELECT count(*) FROM truxe.users WHERE email = 'hank@else.example'),
                    (SELECT count(*) FROM truxe.memberships m JOIN truxe.users u ON u.id = m.user_id
                      WHERE u.email = 'hank@else.example')",
                &[],
            )
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
    assert_eq!((users, members), (1, 1));
}

#[test]
fn the_rules_of_invite_member_and_the_101st_invitation_of_an_hour() {
    let o = org();
    let mut admin = o.db.acting_as(&o.admin);
    // "" when the call succeeds, else its SQLSTATE
    let call = |c: &mut Client, org: &str, email: &str, role: &str, perms: &str, ttl: &str| {
        c.query(
            "SELECT * FROM truxe.invite_by_email($1::text::uuid, $2, $3::text::truxe.membership_role,
                                                 $4::text::jsonb, $5::text::interval)",
            &[&org, &email, &role, &perms, &ttl],
        )
        .map_or_else(|e| code_of(&e), |_| String::new())
    };
    let ok = |c: &mut Client, email: &str| call(c, &o.id, email, "member", "[]", "7 days");
    // a member or an outsider: 42501, whether or not the org exists
    for who in [&o.member, &o.outsider] {
        let mut c = o.db.acting_as(who);
        assert_eq!(ok(&mut c, "x@else.example"), "42501");
        assert_eq!(
            call(
                &mut c,
                "00000000-0000-0000-0000-00000000dead",
                "x@else.example",
                "member",
                "[]",
                "7 days"
            ),
            "42501"
        );
    }
    // an invitation of x@else.example as a member for 7 days, but with `perms`
    let with_perms =
        |c: &mut Client, perms: &str| call(c, &o.id, "x@else.example", "member", perms, "7 days");
    // an invitation of `email` as a plain member, for `ttl`
    let with_ttl =
        |c: &mut Client, email: &str, ttl: &str| call(c, &o.id, email, "member", "[]", ttl);
    // only an owner invites an owner; an admin grants only what it holds
    assert_eq!(
        call(&mut admin, &o.id, "x@else.example", "owner", "[]", "7 days"),
        "42501"
    );
    assert_eq!(with_perms(&mut admin, r#"["billing:refund"]"#), "42501");
    assert_eq!(with_perms(&mut admin, r#"["Not A Permission"]"#), "22023");
    assert_eq!(with_perms(&mut admin, r#"{"a": 1}"#), "22023");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    assert_eq!(with_perms(&mut admin, &deep), "22023");
    let mut owner = o.db.acting_as(&o.owner);
    assert_eq!(
        call(
            &mut owner,
            &o.id,
            "boss@else.example",
            "owner",
            r#"["billing:refund"]"#,
            "7 days"
        ),
        ""
    );
    // e-mail and ttl (1 hour to 30 days)
    assert_eq!(ok(&mut admin, "not-an-email"), "22023");
    assert_eq!(
        with_ttl(&mut admin, "x@else.example", "59 minutes"),
        "22023"
    );
    assert_eq!(with_ttl(&mut admin, "x@else.example", "31 days"), "22023");
    assert_eq!(with_ttl(&mut admin, "x@else.example", "1 hour"), "");
    assert_eq!(with_ttl(&mut admin, "y@else.example", "30 days"), "");
    // no acting user: 42501; service_account acting for the owner may invite
    assert_eq!(ok(&mut o.db.authenticated(), "x@else.example"), "42501");
    assert_eq!(ok(&mut o.db.service(), "x@else.example"), "42501");
    let mut s = o.db.service();
    let mut t = s.transaction().unwrap();
    t.execute("SELECT truxe.set_context($1::text::uuid)", &[&o.owner])
        .unwrap();
    t.query(
        "SELECT * FROM truxe.invite_by_email($1::text::uuid, 'svc@else.example')",
        &[&o.id],
    )
    .unwrap();
    t.commit().unwrap();
    // 4 sent so far within the hour; up to 100 pass, the 101st is TX429 (for anyone in the org)
    for n in 4..100 {
        assert_eq!(ok(&mut admin, &format!("bulk{n}@else.example")), "", "{n}");
    }
    assert_eq!(ok(&mut owner, "one-too-many@else.example"), "TX429");
    // an hour later the org may invite again
    o.db.superuser()
        .execute(
            "UPDATE truxe.invitations SET created_at = created_at - interval '61 minutes',
                    expires_at = expires_at - interval '61 minutes'",
            &[],
        )
        .unwrap();
    assert_eq!(ok(&mut owner, "one-too-many@else.example"), "");
}

#[test]
fn members_and_outsiders_cannot_read_invitations_an_admin_can() {
    let o = org();
    invite(
        &mut o.db.acting_as(&o.owner),
        &o.id,
        "ivy@else.example",
        "member",
        "[]",
    );
    let count = |c: &mut Client| -> i64 {
        c.query_one("SELECT count(*) FROM truxe.invitations", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(count(&mut o.db.acting_as(&o.member)), 0);
    assert_eq!(count(&mut o.db.acting_as(&o.outsider)), 0);
    assert_eq!(count(&mut o.db.authenticated()), 0);
    let mut admin = o.db.acting_as(&o.admin);
    assert_eq!(count(&mut admin), 1);
    let email: String = admin
        .query_one("SELECT email::text FROM truxe.invitations", &[])
        .unwrap()
        .get(0);
    assert_eq!(email, "ivy@else.example");
    // never the hash of the secret, and no writes
    assert_eq!(
        sqlstate(admin.query("SELECT token_hash FROM truxe.invitations", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(admin.query("UPDATE truxe.invitations SET attempts = 0", &[])),
        "42501"
    );
    // the token functions are service_account's; PUBLIC has nothing
    for sql in [
        "SELECT * FROM truxe.inspect_invitation('x')",
        "SELECT * FROM truxe.accept_invitation_token('x')",
    ] {
        assert_eq!(sqlstate(admin.query(sql, &[])), "42501", "{sql}");
    }
    // the granting rules' helper takes the acting user as an argument: nobody calls it
    // directly, not even service_account (invite_member and invite_by_email run as the owner)
    assert_eq!(
        sqlstate(o.db.service().query(
            "SELECT truxe.require_grant_rights($1::text::uuid, $2::text::uuid, 'owner', '[\"*\"]')",
            &[&o.id, &o.member],
        )),
        "42501"
    );
    let mut nobody = o.db.nobody();
    for sql in [
        "SELECT count(*) FROM truxe.invitations",
        "SELECT * FROM truxe.inspect_invitation('x')",
        "SELECT truxe.revoke_invitation(gen_random_uuid())",
    ] {
        assert_eq!(sqlstate(nobody.query(sql, &[])), "42501", "{sql}");
    }
    // the owner of an ancestor reads a child org's invitations
    let child: String =
        o.db.acting_as(&o.owner)
            .query_one(
                "SELECT truxe.create_organization('acme-child', 'Child', $1::text::uuid)::text",
                &[&o.id],
            )
            .unwrap()
            .get(0);
    invite(
        &mut o.db.acting_as(&o.owner),
        &child,
        "jo@else.example",
        "member",
        "[]",
    );
    assert_eq!(count(&mut admin), 2);
}

/// An invitation carries its inviter's authority, as an API key its creator's: once the
/// inviter is removed, suspended, demoted, or no longer holds a permission it grants, the
/// invitation is revoked at its next use (inspect or accept), and nobody joins through it.
/// (On 0.2's first invitations a removed admin's invitation to their own second address
/// still let them back in.)
#[test]
fn an_invitation_ends_with_its_inviters_authority() {
    let o = org();
    let (mut su, mut s) = (o.db.superuser(), o.db.service());
    let mut owner = o.db.acting_as(&o.owner);

    // the control: the inviter still an admin, the invitation works
    let (_, token) = invite(
        &mut o.db.acting_as(&o.admin),
        &o.id,
        "ok@else.example",
        "member",
        "[]",
    );
    assert_eq!(inspect(&mut s, &token), "valid");
    assert_eq!(accept(&mut s, &token, None).0, "accepted");

    // removed: inspect already says revoked, and so does accept; nobody joined
    let (id, token) = invite(
        &mut o.db.acting_as(&o.admin),
        &o.id,
        "back@door.example",
        "admin",
        "[]",
    );
    owner
        .execute(
            "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
            &[&o.id, &o.admin],
        )
        .unwrap();
    assert_eq!(inspect(&mut s, &token), "revoked");
    assert_eq!(accept(&mut s, &token, None).0, "revoked");
    let revoked: bool = su
        .query_one(
            "SELECT revoked_at IS NOT NULL FROM truxe.invitations WHERE id = $1::text::uuid",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(revoked, "the invitation is marked revoked");
    let joined: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.memberships m JOIN truxe.users u ON u.id = m.user_id
              WHERE u.email = 'back@door.example'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(joined, 0);

    // demoted to member: an admin's invitation is no longer one they could send
    let promoted = o.member.clone();
    set_role(&mut owner, &o.id, &promoted, "admin");
    let (_, token) = invite(
        &mut o.db.acting_as(&promoted),
        &o.id,
        "via@demoted.example",
        "member",
        "[]",
    );
    set_role(&mut owner, &o.id, &promoted, "member");
    assert_eq!(inspect(&mut s, &token), "revoked");
    assert_eq!(accept(&mut s, &token, None).0, "revoked");

    // an extra permission the inviter no longer holds
    set_role(&mut owner, &o.id, &promoted, "admin");
    set_permissions(&mut su, &o.id, &promoted, r#"["billing:read"]"#);
    let (_, token) = invite(
        &mut o.db.acting_as(&promoted),
        &o.id,
        "perm@x.example",
        "member",
        "[\"billing:read\"]",
    );
    set_permissions(&mut su, &o.id, &promoted, "[]");
    assert_eq!(accept(&mut s, &token, None).0, "revoked");

    // suspended
    let (_, token) = invite(
        &mut o.db.acting_as(&promoted),
        &o.id,
        "late@x.example",
        "member",
        "[]",
    );
    su.execute(
        "UPDATE truxe.users SET status = 'suspended' WHERE id = $1::text::uuid",
        &[&promoted],
    )
    .unwrap();
    assert_eq!(inspect(&mut s, &token), "revoked");
    assert_eq!(accept(&mut s, &token, None).0, "revoked");
}

/// The inviter's authority is decided in two places that must agree: the lookup of the
/// invitation answers the plain case (no extra permissions) itself, and
/// inviter_still_may_invite every other one; invite_by_email likewise checks the plain case
/// in one statement and leaves the rest to require_grant_rights. Rights through an
/// ancestor, a permission the inviter still holds, and the owner role an owner granted
/// before becoming an admin each get the rule's answer, whichever path decides.
#[test]
fn an_inviters_authority_is_the_same_whichever_check_decides() {
    let o = org();
    let (mut su, mut s) = (o.db.superuser(), o.db.service());
    let mut owner = o.db.acting_as(&o.owner);
    let child: String = owner
        .query_one(
            "SELECT truxe.create_organization('acme-child', 'Child', $1::text::uuid)::text",
            &[&o.id],
        )
        .unwrap()
        .get(0);

    // an admin of the parent invites into the child (and may: rights through an ancestor);
    // a member of the parent may not
    let (_, token) = invite(
        &mut o.db.acting_as(&o.admin),
        &child,
        "kid@else.example",
        "member",
        "[]",
    );
    assert_eq!(inspect(&mut s, &token), "valid");
    let (status, org_id, _) = accept(&mut s, &token, None);
    assert_eq!(
        (status.as_str(), org_id.as_deref()),
        ("accepted", Some(child.as_str()))
    );
    let refused = o.db.acting_as(&o.member).query_one(
        "SELECT token FROM truxe.invite_by_email($1::text::uuid, 'no@else.example')",
        &[&child],
    );
    assert_eq!(sqlstate(refused), "42501");

    // a permission the inviter holds (the full check, on invite and on accept)
    set_permissions(&mut su, &o.id, &o.admin, r#"["billing:read"]"#);
    let (_, token) = invite(
        &mut o.db.acting_as(&o.admin),
        &o.id,
        "perm-ok@x.example",
        "member",
        "[\"billing:read\"]",
    );
    let (status, _, user) = accept(&mut s, &token, None);
    assert_eq!(status, "accepted");
    assert_eq!(
        membership(&mut su, &o.id, &user.unwrap()),
        Some(("member".into(), "[\"billing:read\"]".into(), true))
    );

    // an owner's invitation of an owner: accepted while the inviter is an owner, revoked
    // once the inviter is only an admin (an admin may not grant the owner role)
    set_role(&mut owner, &o.id, &o.admin, "owner");
    let (_, kept) = invite(
        &mut o.db.acting_as(&o.admin),
        &o.id,
        "co-owner@x.example",
        "owner",
        "[]",
    );
    let (_, dropped) = invite(
        &mut o.db.acting_as(&o.admin),
        &o.id,
        "would-be-owner@x.example",
        "owner",
        "[]",
    );
    assert_eq!(accept(&mut s, &kept, None).0, "accepted");
    set_role(&mut owner, &o.id, &o.admin, "admin");
    assert_eq!(inspect(&mut s, &dropped), "revoked");
    assert_eq!(accept(&mut s, &dropped, None).0, "revoked");
    // and as an admin they cannot send it again
    let refused = o.db.acting_as(&o.admin).query_one(
        "SELECT token FROM truxe.invite_by_email($1::text::uuid, 'would-be-owner@x.example', 'owner')",
        &[&o.id],
    );
    assert_eq!(sqlstate(refused), "42501");
}

/// `invitation.accepted` is the row every other audit row of a function is (the acting user,
/// the details, the request's address, agent and id), in each single-node form of an
/// acceptance: a new e-mail, an existing user without a membership, a pending membership, a
/// joined member. It is written after the statement that uses the invitation up, in one
/// INSERT with that statement's trigger rows (`user.created` of a new e-mail,
/// `membership.joined`), ahead of them.
#[test]
fn the_accepted_row_carries_the_request_and_precedes_membership_joined_in_every_form() {
    let o = org();
    let (mut su, mut s) = (o.db.superuser(), o.db.service());
    let mut admin = o.db.acting_as(&o.admin);
    s.batch_execute(
        "SET app.ip = '203.0.113.7'; SET app.user_agent = 'fold/1.0';
         SET app.request_id = '11111111-2222-3333-4444-555555555555';",
    )
    .unwrap();
    s.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&o.owner],
    )
    .unwrap();
    let bob = user(&mut su, "bob@else.example");
    let carol = user(&mut su, "carol@else.example");
    admin
        .execute(
            "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid, 'viewer')",
            &[&o.id, &carol],
        )
        .unwrap();
    for (email, status, joins) in [
        ("new.person@else.example", "accepted", true),
        ("bob@else.example", "accepted", true),
        ("carol@else.example", "accepted", true),
        ("member@acme.example", "already_member", false),
    ] {
        let (id, token) = invite(&mut admin, &o.id, email, "member", "[]");
        let (st, _, who) = accept(&mut s, &token, None);
        assert_eq!(st, status, "{email}");
        let who = who.unwrap();
        if email == "bob@else.example" {
            assert_eq!(who, bob);
        }
        let r = su
            .query_one(
                "SELECT org_id::text, actor_user_id::text, target_type, details::text, host(ip),
                        user_agent, request_id::text
                   FROM truxe.audit_logs
                  WHERE action = 'invitation.accepted' AND target_id = $1",
                &[&id],
            )
            .unwrap();
        let row: (
            String,
            Option<String>,
            String,
            String,
            String,
            String,
            String,
        ) = (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        );
        assert_eq!(
            row,
            (
                o.id.clone(),
                Some(o.owner.clone()),
                "invitation".into(),
                format!(r#"{{"status": "{status}", "user_id": "{who}"}}"#),
                "203.0.113.7".into(),
                "fold/1.0".into(),
                "11111111-2222-3333-4444-555555555555".into()
            ),
            "{email}"
        );
        // the trail of this acceptance, in order
        let actions: Vec<String> = su
            .query(
                "SELECT action::text FROM truxe.audit_logs
                  WHERE id >= (SELECT id FROM truxe.audit_logs
                                WHERE action = 'invitation.accepted' AND target_id = $1)
                    AND (action IN ('invitation.accepted', 'membership.joined')
                         AND org_id = $2::text::uuid
                         OR action = 'user.created' AND target_id = $3)
                  ORDER BY id",
                &[&id, &o.id, &who],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let expected: &[&str] = if email.starts_with("new.") {
            &["invitation.accepted", "user.created", "membership.joined"]
        } else if joins {
            &["invitation.accepted", "membership.joined"]
        } else {
            &["invitation.accepted"]
        };
        assert_eq!(actions, expected, "{email}");
    }
}

/// TX429 comes from invite_by_email's own C entry point (no PL/pgSQL wrapper raises it
/// any more): the client sees TX429 at ERROR with the refusal's message, never XX000; the
/// transaction behaves as after any error (a savepoint's rollback lets it go on, the
/// refusal repeats, a PL/pgSQL handler catches it by its code, other calls work), and a
/// call in the select list takes the same path.
#[test]
fn tx429_from_the_entry_point_leaves_the_transaction_usable() {
    let o = org();
    let mut su = o.db.superuser();
    // the org sent 100 invitations within the hour
    su.execute(
        "INSERT INTO truxe.invitations (org_id, email, role, permissions, token_hash,
                                        invited_by, expires_at)
         SELECT $1::text::uuid, 'n' || g || '@else.example', 'member', '[]',
                lpad(g::text, 64, '0'), $2::text::uuid, now() + interval '7 days'
           FROM generate_series(1, 100) g",
        &[&o.id, &o.owner],
    )
    .unwrap();
    let mut owner = o.db.acting_as(&o.owner);
    let mut t = owner.transaction().unwrap();
    let refused = |t: &mut postgres::Transaction<'_>| {
        t.batch_execute("SAVEPOINT s").unwrap();
        let e = t
            .query(
                "SELECT * FROM truxe.invite_by_email($1::text::uuid, 'late@else.example')",
                &[&o.id],
            )
            .unwrap_err();
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "TX429", "{e}");
        assert_eq!(db.severity(), "ERROR");
        assert_eq!(
            db.message(),
            "too many invitations for this organization; try again within the hour"
        );
        t.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    };
    refused(&mut t);
    refused(&mut t);
    // the transaction goes on: other calls, a handler catching the code, the select list
    let me: String = t
        .query_one("SELECT truxe.current_user_id()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(me, o.owner);
    t.batch_execute("SAVEPOINT s").unwrap();
    assert_eq!(
        sqlstate(t.query(
            "SELECT (truxe.invite_by_email($1::text::uuid, 'late@else.example')).token",
            &[&o.id]
        )),
        "TX429"
    );
    t.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    t.commit().unwrap();
    // a PL/pgSQL handler catches it by its code (the handler re-raises what it caught
    // under another code, so that the client sees that the handler ran)
    let e = owner
        .batch_execute(&format!(
            "DO $$ BEGIN
               PERFORM * FROM truxe.invite_by_email('{}'::uuid, 'late@else.example');
             EXCEPTION WHEN SQLSTATE 'TX429' THEN
               RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = SQLSTATE || ': ' || SQLERRM;
             END $$",
            o.id
        ))
        .unwrap_err();
    assert_eq!(code_of(&e), "P0001");
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "TX429: too many invitations for this organization; try again within the hour"
    );
    // below the limit (an hour later) the same session invites, in the select list too
    su.execute(
        "UPDATE truxe.invitations SET created_at = created_at - interval '61 minutes'",
        &[],
    )
    .unwrap();
    let token: String = owner
        .query_one(
            "SELECT (truxe.invite_by_email($1::text::uuid, 'late@else.example')).token",
            &[&o.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(token.len(), 76);
}

/// invite_by_email's common case (an owner or admin, no extra permissions) reads the rights
/// and takes the org's invitation lock without SQL (src/invitation.rs,
/// `may_grant_plainly_direct`); that lock must be the very key the SQL path takes, or two
/// inviters could count the hourly limit at once. While another transaction holds the SQL
/// key, the owner's invite (and an admin's) waits for it.
#[test]
fn the_direct_rights_path_takes_the_same_org_lock() {
    let o = org();
    let mut holder = o.db.superuser();
    for who in [&o.owner, &o.admin] {
        let mut t = holder.transaction().unwrap();
        t.execute(
            "SELECT pg_catalog.pg_advisory_xact_lock(
                      pg_catalog.hashtextextended($1::text::uuid::text, 7331))",
            &[&o.id],
        )
        .unwrap();
        let mut c = o.db.acting_as(who);
        c.batch_execute("SET lock_timeout = '300ms'").unwrap();
        let invite = |c: &mut Client| {
            c.query(
                "SELECT * FROM truxe.invite_by_email($1::text::uuid, 'wait@else.example')",
                &[&o.id],
            )
        };
        assert_eq!(sqlstate(invite(&mut c)), "55P03", "{who}");
        t.rollback().unwrap();
        assert_eq!(invite(&mut c).unwrap().len(), 1);
    }
}
