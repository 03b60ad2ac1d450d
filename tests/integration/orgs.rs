//! Organisation and membership functions through real connections: the last-owner race,
//! grants within one's own rights, no existence oracle, inactive callers, duplicates.
use crate::harness::{code_of, server, sqlstate, Tenants, TestDb};
use postgres::Client;
use std::sync::{Arc, Barrier};
use std::thread;

#[test]
fn concurrent_removal_of_the_last_two_owners_leaves_one() {
    let db = server().fresh_db(true);
    let (a, b) = (
        "00000000-0000-0000-0000-0000000000c1",
        "00000000-0000-0000-0000-0000000000c2",
    );
    Tenants::new()
        .user(a, "a@x.example")
        .user(b, "b@x.example")
        .seed(&db);
    let mut s = db.superuser();
    let mut c = db.authenticated();
    c.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&a],
    )
    .unwrap();
    let org: String = c
        .query_one("SELECT truxe.create_organization('duo', 'Duo')::text", &[])
        .unwrap()
        .get(0);
    c.execute(
        "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid, 'owner')",
        &[&org, &b],
    )
    .unwrap();
    let mut cb = db.authenticated();
    cb.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&b],
    )
    .unwrap();
    cb.execute("SELECT truxe.accept_invitation($1::text::uuid)", &[&org])
        .unwrap();

    // each owner removes themself, at the same moment, each in its own transaction
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [a, b]
        .into_iter()
        .map(|who| {
            let (barrier, name, org) = (barrier.clone(), db.name.clone(), org.clone());
            thread::spawn(move || {
                let mut c = server().client(&name, crate::harness::AUTH_LOGIN);
                c.execute(
                    "SELECT truxe.set_context($1::text::uuid, NULL, false)",
                    &[&who],
                )
                .unwrap();
                barrier.wait();
                c.execute(
                    "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
                    &[&org, &who],
                )
                .map(|_| "removed".to_string())
                .unwrap_or_else(|e| code_of(&e))
            })
        })
        .collect();
    let mut outcomes: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["23514", "removed"], "exactly one removal wins");
    let owners: i64 = s
        .query_one("SELECT count(*) FROM truxe.memberships WHERE org_id = $1::text::uuid AND role = 'owner'", &[&org])
        .unwrap()
        .get(0);
    assert_eq!(owners, 1, "the org keeps an owner");
}

const OWNER: &str = "00000000-0000-0000-0000-0000000000f1";
const ADMIN: &str = "00000000-0000-0000-0000-0000000000f2";
const MEMBER: &str = "00000000-0000-0000-0000-0000000000f3";
const INVITEE: &str = "00000000-0000-0000-0000-0000000000f4"; // pending invitee of acme
const EVE: &str = "00000000-0000-0000-0000-0000000000e5"; // a stranger with an org of her own
const VICTIM: &str = "00000000-0000-0000-0000-0000000000f6"; // in no org at all
const NOBODY: &str = "00000000-0000-0000-0000-0000000000ff"; // no such user
const NO_ORG: &str = "00000000-0000-0000-0000-00000000ffff"; // no such org

/// The SQLSTATE and message of a failed statement.
fn error(r: Result<u64, postgres::Error>) -> (String, String) {
    let e = r.expect_err("expected an error");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// Org 'acme' (owner OWNER, admin ADMIN, member MEMBER with 'reports:export', pending
/// INVITEE), and Eve's own org 'eve-org'. Returns (acme, eve-org).
fn acme(db: &TestDb) -> (String, String) {
    Tenants::new()
        .user(OWNER, "owner@acme.example")
        .user(ADMIN, "admin@acme.example")
        .user(MEMBER, "member@acme.example")
        .user(INVITEE, "inv@acme.example")
        .user(EVE, "eve@evil.example")
        .user(VICTIM, "victim@secret.example")
        .seed(db);
    let mut o = db.acting_as(OWNER);
    let acme: String = o
        .query_one(
            "SELECT truxe.create_organization('acme', 'Acme')::text",
            &[],
        )
        .unwrap()
        .get(0);
    for (who, role, perms) in [
        (ADMIN, "admin", "[]"),
        (MEMBER, "member", "[\"reports:export\"]"),
        (INVITEE, "viewer", "[]"),
    ] {
        o.execute(
            "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid, $3::text::truxe.membership_role, $4::text::jsonb)",
            &[&acme, &who, &role, &perms],
        )
        .unwrap();
    }
    for who in [ADMIN, MEMBER] {
        db.acting_as(who)
            .execute("SELECT truxe.accept_invitation($1::text::uuid)", &[&acme])
            .unwrap();
    }
    let eve_org: String = db
        .acting_as(EVE)
        .query_one(
            "SELECT truxe.create_organization('eve-org', 'Eve')::text",
            &[],
        )
        .unwrap()
        .get(0);
    (acme, eve_org)
}

fn invite(
    c: &mut Client,
    org: &str,
    who: &str,
    role: &str,
    perms: &str,
) -> Result<u64, postgres::Error> {
    c.execute(
        "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid, $3::text::truxe.membership_role, $4::text::jsonb)",
        &[&org, &who, &role, &perms],
    )
}

/// Issue 21, finding 2: extra permissions are held by the granter (an owner grants
/// anything) and have role_permissions' format. 0.1 let an admin give a viewer '*'.
#[test]
fn grants_stay_within_the_granters_rights_and_format() {
    let db = server().fresh_db(true);
    let (acme, _) = acme(&db);
    let mut admin = db.acting_as(ADMIN);
    for perms in [
        r#"["*"]"#,                                          // owner-only
        r#"["audit_logs:delete"]"#,                          // admins hold audit_logs:read only
        r#"["billing:*"]"#,                                  // not held at all
        r#"["users:read", "settings:*", "reports:export"]"#, // the last one is not the admin's
    ] {
        let (code, msg) = error(invite(&mut admin, &acme, VICTIM, "viewer", perms));
        assert_eq!(code, "42501", "admin grants {perms}: {msg}");
    }
    for perms in [
        r#"["Users:Read"]"#,
        r#"["users"]"#,
        r#"["users:read:x"]"#,
        r#"["users:*", ""]"#,
        r#"["*:read"]"#,
    ] {
        assert_eq!(
            error(invite(&mut admin, &acme, VICTIM, "viewer", perms)).0,
            "22023",
            "format of {perms}"
        );
    }
    // a long bad permission is quoted in at most 64 characters, control characters escaped
    let long = format!("[\"{}\\u0001\"]", "x".repeat(10_000));
    let (code, msg) = error(invite(&mut admin, &acme, VICTIM, "viewer", &long));
    assert_eq!(code, "22023");
    assert!(msg.len() < 200 && !msg.contains('\u{1}'), "{msg}");
    let no_rows: i64 = db
        .superuser()
        .query_one(
            "SELECT count(*) FROM truxe.memberships WHERE user_id = $1::text::uuid",
            &[&VICTIM],
        )
        .unwrap()
        .get(0);
    assert_eq!(no_rows, 0, "no refused invitation left a row");
    // what the admin holds it may grant: users:* (its own wildcard), sessions:revoke
    invite(
        &mut admin,
        &acme,
        VICTIM,
        "viewer",
        r#"["users:*", "sessions:revoke", "usage:read"]"#,
    )
    .unwrap();
    // a member's own extra permission counts as held... but members cannot invite at all
    let mut member = db.acting_as(MEMBER);
    assert_eq!(
        error(invite(
            &mut member,
            &acme,
            EVE,
            "viewer",
            r#"["reports:export"]"#
        ))
        .0,
        "42501"
    );
    // an owner grants anything well-formed
    let mut owner = db.acting_as(OWNER);
    invite(
        &mut owner,
        &acme,
        EVE,
        "viewer",
        r#"["*", "billing:refund"]"#,
    )
    .unwrap();
    // the format rule is the one of truxe.role_permissions
    let mut s = db.service();
    assert_eq!(
        sqlstate(s.execute(
            "INSERT INTO truxe.role_permissions (role, permission) VALUES ('viewer', 'Bad Perm')",
            &[]
        )),
        "23514"
    );
    s.execute(
        "INSERT INTO truxe.role_permissions (role, permission) VALUES ('viewer', 'reports:*')",
        &[],
    )
    .unwrap();
}

/// Issue 21, finding 3: inviting a user id reveals nothing of that user to the inviting
/// org (0.1: the e-mail, status and metadata, and a rollback left no trace).
#[test]
fn inviting_a_user_id_reveals_nothing_of_the_invitee() {
    let db = server().fresh_db(true);
    let (_, eve_org) = acme(&db);
    let mut eve = db.acting_as(EVE);
    let mut tx = eve.transaction().unwrap();
    tx.execute(
        "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid)",
        &[&eve_org, &VICTIM],
    )
    .unwrap();
    let seen: Vec<String> = tx
        .query("SELECT email::text FROM truxe.users", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec!["eve@evil.example".to_string()]);
    tx.rollback().unwrap();
    // an owner does not see a pending invitee's row either, and does once they joined
    let mut owner = db.acting_as(OWNER);
    let visible = |c: &mut Client, who: &str| -> i64 {
        c.query_one(
            "SELECT count(*) FROM truxe.users WHERE id = $1::text::uuid",
            &[&who],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(visible(&mut owner, INVITEE), 0);
    assert_eq!(visible(&mut owner, MEMBER), 1);
    let acme: String = owner
        .query_one(
            "SELECT id::text FROM truxe.organizations WHERE slug = 'acme'",
            &[],
        )
        .unwrap()
        .get(0);
    db.acting_as(INVITEE)
        .execute("SELECT truxe.accept_invitation($1::text::uuid)", &[&acme])
        .unwrap();
    assert_eq!(visible(&mut owner, INVITEE), 1);
}

/// Issue 21, finding 4: a caller without rights gets one and the same 42501 from every
/// organisation and membership function, whatever exists (0.1: P0002 for unknown orgs and
/// users, 42501 for known ones), and before any lock.
#[test]
fn strangers_get_the_same_42501_whatever_exists() {
    let db = server().fresh_db(true);
    let (acme, _) = acme(&db);
    let mut eve = db.acting_as(EVE);
    let calls: [(&str, &str); 4] = [
        (
            "invite_member",
            "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid)",
        ),
        (
            "change_role",
            "SELECT truxe.change_role($1::text::uuid, $2::text::uuid, 'admin')",
        ),
        (
            "remove_member",
            "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
        ),
        (
            "create_organization",
            "SELECT truxe.create_organization(('kid-' || left(md5($2), 8))::citext, 'Kid', $1::text::uuid)",
        ),
    ];
    for (name, sql) in calls {
        let mut answers = Vec::new();
        for (org, who) in [
            (acme.as_str(), MEMBER),  // existing org, joined member
            (acme.as_str(), INVITEE), // existing org, pending invitee
            (acme.as_str(), VICTIM),  // existing org, existing user who is no member
            (acme.as_str(), NOBODY),  // existing org, no such user
            (NO_ORG, MEMBER),         // no such org
            (NO_ORG, NOBODY),
        ] {
            let (code, msg) = error(eve.execute(sql, &[&org, &who]));
            answers.push((code, msg.replace(org, "<org>")));
        }
        assert!(
            answers.iter().all(|a| a == &answers[0]) && answers[0].0 == "42501",
            "{name}: {answers:?}"
        );
    }
    // a member of acme has no more rights than a stranger
    let mut member = db.acting_as(MEMBER);
    for who in [OWNER, INVITEE, NOBODY] {
        assert_eq!(
            error(member.execute(
                "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
                &[&acme, &who]
            ))
            .0,
            "42501"
        );
    }
    // accepting acts on one's own membership: the same P0002 for any org without an invitation
    let a = error(eve.execute("SELECT truxe.accept_invitation($1::text::uuid)", &[&acme]));
    let b = error(eve.execute("SELECT truxe.accept_invitation($1::text::uuid)", &[&NO_ORG]));
    assert_eq!((a.0.as_str(), b.0.as_str()), ("P0002", "P0002"));
    assert_eq!(a.1.replace(&acme, "<org>"), b.1.replace(NO_ORG, "<org>"));
    // so does leaving: no membership is no membership, whether or not the org exists
    let a = error(eve.execute(
        "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
        &[&acme, &EVE],
    ));
    let b = error(eve.execute(
        "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
        &[&NO_ORG, &EVE],
    ));
    assert_eq!((a.0.as_str(), b.0.as_str()), ("P0002", "P0002"));
    assert_eq!(a.1.replace(&acme, "<org>"), b.1.replace(NO_ORG, "<org>"));

    // rights come before the lock: with acme's row locked by its owner's open change, the
    // stranger is refused at once instead of queueing behind it (0.1: it waited)
    let mut owner = db.acting_as(OWNER);
    let mut tx = owner.transaction().unwrap();
    tx.execute(
        "SELECT truxe.change_role($1::text::uuid, $2::text::uuid, 'viewer')",
        &[&acme, &MEMBER],
    )
    .unwrap();
    eve.batch_execute("SET statement_timeout = '2s'").unwrap();
    for sql in [
        "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
        "SELECT truxe.change_role($1::text::uuid, $2::text::uuid, 'admin')",
    ] {
        assert_eq!(
            error(eve.execute(sql, &[&acme, &MEMBER])).0,
            "42501",
            "{sql}"
        );
    }
    tx.rollback().unwrap();
}

/// Issue 20: a caller whose user is not active (suspended, deleted, pending) is refused by
/// every organisation and membership function (0.1: a suspended admin kept inviting).
#[test]
fn inactive_callers_are_refused() {
    let db = server().fresh_db(true);
    let (acme, _) = acme(&db);
    let mut s = db.superuser();
    for status in ["suspended", "deleted", "pending"] {
        s.execute(
            "UPDATE truxe.users SET status = $1::text::truxe.user_status WHERE id IN ($2::text::uuid, $3::text::uuid)",
            &[&status, &ADMIN, &INVITEE],
        )
        .unwrap();
        let mut admin = db.acting_as(ADMIN);
        for (sql, args) in [
            (
                "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid)",
                [acme.as_str(), VICTIM],
            ),
            (
                "SELECT truxe.change_role($1::text::uuid, $2::text::uuid, 'viewer')",
                [acme.as_str(), MEMBER],
            ),
            (
                "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
                [acme.as_str(), MEMBER],
            ),
            (
                "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
                [acme.as_str(), ADMIN],
            ),
            (
                "SELECT truxe.create_organization(('x-' || left(md5($2), 6))::citext, 'X', $1::text::uuid)",
                [acme.as_str(), ADMIN],
            ),
        ] {
            assert_eq!(
                error(admin.execute(sql, &[&args[0], &args[1]])).0,
                "42501",
                "{status} admin: {sql}"
            );
        }
        assert_eq!(
            error(admin.execute("SELECT truxe.create_organization('mine', 'Mine')", &[])).0,
            "42501",
            "{status} user creates an org"
        );
        let mut inv = db.acting_as(INVITEE);
        assert_eq!(
            error(inv.execute("SELECT truxe.accept_invitation($1::text::uuid)", &[&acme])).0,
            "42501",
            "{status} invitee accepts"
        );
    }
    // active again, the same calls work
    s.execute(
        "UPDATE truxe.users SET status = 'active' WHERE id IN ($1::text::uuid, $2::text::uuid)",
        &[&ADMIN, &INVITEE],
    )
    .unwrap();
    db.acting_as(ADMIN)
        .execute(
            "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid)",
            &[&acme, &VICTIM],
        )
        .unwrap();
    db.acting_as(INVITEE)
        .execute("SELECT truxe.accept_invitation($1::text::uuid)", &[&acme])
        .unwrap();
}

/// Issue 17, point 5: inviting twice and a taken slug raise 23505 with words, not the
/// constraint's name.
#[test]
fn duplicates_say_so_in_words() {
    let db = server().fresh_db(true);
    let (acme, _) = acme(&db);
    let mut owner = db.acting_as(OWNER);
    for who in [MEMBER, INVITEE] {
        let (code, msg) = error(invite(&mut owner, &acme, who, "viewer", "[]"));
        assert_eq!(code, "23505");
        assert!(
            msg.contains("already a member") && !msg.contains("pkey"),
            "{msg}"
        );
    }
    let (code, msg) =
        error(owner.execute("SELECT truxe.create_organization('eve-org', 'Again')", &[]));
    assert_eq!(code, "23505");
    assert!(
        msg.contains("already taken") && !msg.contains("_key"),
        "{msg}"
    );
    // citext: a slug differing only in case is the same slug (and invalid anyway)
    assert_eq!(
        error(owner.execute("SELECT truxe.create_organization('ACME', 'Again')", &[])).0,
        "22023"
    );
}

/// has_permission reads ancestors from truxe.org_closure now (issue 16, point 4); its
/// answers are those of 0.1's recursive walk over parent_org_id, kept here as the
/// reference, for every (org, user, permission) of a tree with roles at every level, after
/// moves.
#[test]
fn has_permission_through_the_closure_matches_the_recursive_walk() {
    let db = server().fresh_db(true);
    let mut s = db.superuser();
    s.batch_execute(
        r#"
        CREATE SCHEMA ref;
        CREATE FUNCTION ref.has_permission(org_id uuid, permission text, user_id uuid)
        RETURNS boolean LANGUAGE plpgsql STABLE AS $$
        BEGIN
          RETURN (
            WITH RECURSIVE up(id, depth) AS (
              SELECT o.parent_org_id, 1 FROM truxe.organizations o
               WHERE o.id = has_permission.org_id AND o.parent_org_id IS NOT NULL
              UNION ALL
              SELECT o.parent_org_id, up.depth + 1 FROM truxe.organizations o JOIN up ON o.id = up.id
               WHERE o.parent_org_id IS NOT NULL AND up.depth < 1000
            ), held AS (
              SELECT m.role, m.permissions FROM truxe.memberships m
               WHERE m.org_id = has_permission.org_id AND m.user_id = has_permission.user_id
                 AND m.joined_at IS NOT NULL
              UNION ALL
              SELECT m.role, '[]'::jsonb FROM up JOIN truxe.memberships m ON m.org_id = up.id
               WHERE m.user_id = has_permission.user_id AND m.joined_at IS NOT NULL
                 AND m.role IN ('owner', 'admin')
            ), granted(p) AS (
              SELECT rp.permission FROM held h JOIN truxe.role_permissions rp ON rp.role = h.role
              UNION ALL
              SELECT e FROM held h, jsonb_array_elements_text(h.permissions) e
            )
            SELECT coalesce(bool_or(g.p = '*' OR g.p = has_permission.permission
                                    OR (g.p LIKE '%:*'
                                        AND split_part(g.p, ':', 1) = split_part(has_permission.permission, ':', 1))),
                            false)
              FROM granted g);
        END
        $$;
        -- a chain of 6 orgs under r1, a second root r2, and 12 users with every role at
        -- every level (some pending, some with extra permissions)
        INSERT INTO truxe.users (id, email, status)
          SELECT ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid, 'u' || g || '@x.example', 'active'
            FROM generate_series(1, 12) g;
        INSERT INTO truxe.organizations (id, slug, name)
          SELECT ('00000000-0000-0000-0001-' || lpad(g::text, 12, '0'))::uuid, 'o-' || g, 'O' FROM generate_series(1, 7) g;
        UPDATE truxe.organizations SET parent_org_id = ('00000000-0000-0000-0001-' || lpad((substr(slug::text, 3)::int - 1)::text, 12, '0'))::uuid
         WHERE slug::text NOT IN ('o-1', 'o-7');
        INSERT INTO truxe.memberships (org_id, user_id, role, joined_at, permissions)
          SELECT ('00000000-0000-0000-0001-' || lpad((1 + (u * 5 + k) % 7)::text, 12, '0'))::uuid,
                 ('00000000-0000-0000-0000-' || lpad(u::text, 12, '0'))::uuid,
                 (ARRAY['owner', 'admin', 'member', 'viewer']::truxe.membership_role[])[1 + (u + k) % 4],
                 CASE WHEN (u + k) % 5 = 0 THEN NULL ELSE now() END,
                 CASE WHEN u % 3 = 0 THEN '["reports:*", "billing:read"]'::jsonb ELSE '[]' END
            FROM generate_series(1, 12) u, generate_series(0, 2) k
          ON CONFLICT DO NOTHING;"#,
    )
    .unwrap();
    let compare = |s: &mut Client, when: &str| {
        let diff: Vec<String> = s
            .query(
                "SELECT o.slug::text || ' ' || u.email::text || ' ' || p
                   FROM truxe.organizations o, truxe.users u,
                        unnest(ARRAY['users:read', 'users:delete', 'audit_logs:read', 'reports:export',
                                     'billing:read', 'billing:write', 'anything:at_all', '*']) p
                  WHERE truxe.has_permission(o.id, p, u.id) IS DISTINCT FROM ref.has_permission(o.id, p, u.id)",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(diff.is_empty(), "{when}: {diff:?}");
        let held: i64 = s
            .query_one(
                "SELECT count(*) FROM truxe.organizations o, truxe.users u
                  WHERE truxe.has_permission(o.id, 'users:read', u.id)",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(held > 10, "{when}: the tree grants something ({held})");
    };
    compare(&mut s, "chain");
    // move a subtree under the other root, and cut one loose
    s.batch_execute(
        "UPDATE truxe.organizations SET parent_org_id = (SELECT id FROM truxe.organizations WHERE slug = 'o-7')
          WHERE slug = 'o-4';
         UPDATE truxe.organizations SET parent_org_id = NULL WHERE slug = 'o-6';",
    )
    .unwrap();
    compare(&mut s, "after moves");
}

/// Issue 17, point 1: set_context is transaction-local by default, so in autocommit the
/// next statement has no context. Its 42501 names both ways to set one and carries a HINT
/// that says why it is gone (0.1: "call truxe.set_context(user_id) first", which the caller
/// had just done, and no hint) — for the organisation functions and create_api_key alike,
/// which state it in one place (truxe.require_user).
#[test]
fn no_current_user_in_autocommit_hints_that_the_context_is_transaction_local() {
    let db = server().fresh_db(true);
    let user = crate::harness::active_user(&mut db.service(), "auto@example.com");
    let mut c = db.authenticated();
    // autocommit: this call is a transaction of its own
    c.execute("SELECT truxe.set_context($1::text::uuid)", &[&user])
        .unwrap();
    for sql in [
        "SELECT truxe.create_organization('auto', 'Auto')",
        "SELECT * FROM truxe.create_api_key(gen_random_uuid(), 'key')",
    ] {
        let e = c.execute(sql, &[]).unwrap_err();
        let e = e.as_db_error().unwrap();
        assert_eq!(e.code().code(), "42501", "{sql}");
        assert!(
            e.message().starts_with("no current user")
                && e.message().contains("truxe.authenticate"),
            "{sql}: {}",
            e.message()
        );
        let hint = e.hint().unwrap_or_default();
        assert!(
            hint.contains("autocommit") && hint.contains("is_local => false"),
            "{sql}: {hint:?}"
        );
    }
    // in one transaction the call works; with is_local => false, across statements too
    let mut t = c.transaction().unwrap();
    t.execute("SELECT truxe.set_context($1::text::uuid)", &[&user])
        .unwrap();
    t.execute("SELECT truxe.create_organization('auto', 'Auto')", &[])
        .unwrap();
    t.commit().unwrap();
    c.execute(
        "SELECT truxe.set_context($1::text::uuid, is_local => false)",
        &[&user],
    )
    .unwrap();
    c.execute(
        "SELECT truxe.create_organization('auto-two', 'Auto two')",
        &[],
    )
    .unwrap();
}
