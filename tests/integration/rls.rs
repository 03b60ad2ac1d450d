//! Row Level Security (docs/reference.md, "Tables and Row Level Security") as a real NOSUPERUSER login that is a member of
//! `authenticated`: two tenants (A with child A1, and B), an owner, a member, a pending
//! invitee and a member of the child org.
use crate::harness::{as_user, code_of, server, sorted, sqlstate, strings, Tenants, TestDb};
use postgres::Client;

const ORG_A: &str = "a0000000-0000-0000-0000-00000000000a";
const ORG_A1: &str = "a1000000-0000-0000-0000-0000000000a1";
const ORG_B: &str = "b0000000-0000-0000-0000-00000000000b";
const ALICE: &str = "00000000-0000-0000-0000-00000000a11c"; // owner of A
const BOB: &str = "00000000-0000-0000-0000-000000000b0b"; // member of A
const CAROL: &str = "00000000-0000-0000-0000-0000000ca201"; // owner of B
const DAVE: &str = "00000000-0000-0000-0000-00000000da7e"; // pending invitee of A
const ERIN: &str = "00000000-0000-0000-0000-00000000e217"; // member of A1 only

fn populated() -> TestDb {
    let db = server().fresh_db(true);
    Tenants::new()
        .user(ALICE, "alice@a.example")
        .user(BOB, "bob@a.example")
        .user(CAROL, "carol@b.example")
        .user(DAVE, "dave@d.example")
        .user(ERIN, "erin@a.example")
        .org(ORG_A, "org-a", "A", None)
        .org(ORG_B, "org-b", "B", None)
        .org(ORG_A1, "org-a1", "A1", Some(ORG_A))
        .member(ORG_A, ALICE, "owner")
        .member(ORG_A, BOB, "member")
        .invited_by(ALICE)
        .member(ORG_B, CAROL, "owner")
        .pending(ORG_A, DAVE, "member")
        .invited_by(ALICE)
        .member(ORG_A1, ERIN, "member")
        .invited_by(ALICE)
        .seed(&db);
    db.superuser()
        .batch_execute(&format!(
            "INSERT INTO truxe.sessions (user_id, org_id, family_id, expires_at)
               SELECT id, NULL, gen_random_uuid(), now() + interval '1 day' FROM truxe.users;
             INSERT INTO truxe.audit_logs (org_id, action) VALUES
               ('{ORG_A}', 'org.updated'), ('{ORG_A1}', 'org.updated'), ('{ORG_B}', 'org.updated');
             INSERT INTO truxe.usage_metrics (org_id, metric_type, metric_value, period_start, period_end)
               VALUES ('{ORG_A}', 'api_requests', 5, '2026-11-01', '2026-12-01'),
                      ('{ORG_B}', 'api_requests', 7, '2026-11-01', '2026-12-01');
             INSERT INTO truxe.magic_link_challenges (email, token_hash, expires_at)
               VALUES ('alice@a.example', repeat('0', 64), now() + interval '10 minutes');
             INSERT INTO truxe.rate_limits (key_hash, window_start, window_end) VALUES (repeat('1', 64), now(), now() + interval '1 minute');"
        ))
        .expect("populate");
    db
}

fn orgs(c: &mut Client) -> Vec<String> {
    strings(c, "SELECT id::text FROM truxe.organizations")
}
fn users(c: &mut Client) -> Vec<String> {
    strings(c, "SELECT id::text FROM truxe.users")
}
fn members(c: &mut Client) -> Vec<String> {
    strings(
        c,
        "SELECT org_id::text || '/' || user_id::text FROM truxe.memberships",
    )
}
fn count(c: &mut Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM truxe.{table}"), &[])
        .unwrap()
        .get(0)
}
/// Orgs whose audit rows are visible (the audit triggers add rows of their own).
fn audit_orgs(c: &mut Client) -> Vec<String> {
    strings(
        c,
        "SELECT DISTINCT org_id::text FROM truxe.audit_logs WHERE org_id IS NOT NULL",
    )
}

#[test]
fn no_context_sees_nothing_and_writes_nothing() {
    let db = populated();
    let mut c = as_user(&db, None);
    for t in [
        "users",
        "organizations",
        "memberships",
        "sessions",
        "audit_logs",
        "usage_metrics",
    ] {
        assert_eq!(count(&mut c, t), 0, "{t} without context");
    }
    assert_eq!(
        c.execute("UPDATE truxe.users SET metadata = '{\"x\":1}'", &[])
            .unwrap(),
        0
    );
    assert_eq!(
        c.execute("UPDATE truxe.organizations SET name = 'x'", &[])
            .unwrap(),
        0
    );
    // a malformed context is no context
    c.batch_execute("SET app.current_user_id = 'garbage'")
        .unwrap();
    assert_eq!(count(&mut c, "users"), 0);
}

#[test]
fn owner_sees_own_tenant_and_its_descendants_only() {
    let db = populated();
    let mut c = as_user(&db, Some(ALICE));
    assert_eq!(orgs(&mut c), sorted(&[ORG_A, ORG_A1]));
    // 0.2: Dave's pending invitation no longer shows his user row (issue 21 finding 3)
    assert_eq!(users(&mut c), sorted(&[ALICE, BOB, ERIN]));
    let m = members(&mut c);
    assert_eq!(m.len(), 4, "{m:?}");
    assert!(m.iter().all(|r| !r.starts_with(ORG_B)), "{m:?}");
    assert_eq!(
        strings(&mut c, "SELECT user_id::text FROM truxe.sessions"),
        sorted(&[ALICE])
    );
    assert_eq!(audit_orgs(&mut c), sorted(&[ORG_A, ORG_A1]));
    assert_eq!(
        strings(&mut c, "SELECT org_id::text FROM truxe.usage_metrics"),
        sorted(&[ORG_A])
    );

    // writes: own org yes, other tenant affects nothing
    assert_eq!(
        c.execute(
            "UPDATE truxe.organizations SET name = 'A!' WHERE id = $1::text::uuid",
            &[&ORG_A]
        )
        .unwrap(),
        1
    );
    assert_eq!(
        c.execute(
            "UPDATE truxe.organizations SET name = 'B!' WHERE id = $1::text::uuid",
            &[&ORG_B]
        )
        .unwrap(),
        0
    );
    // own metadata yes, someone else's no, status never
    assert_eq!(
        c.execute(
            "UPDATE truxe.users SET metadata = '{\"a\":1}' WHERE id = $1::text::uuid",
            &[&ALICE]
        )
        .unwrap(),
        1
    );
    assert_eq!(
        c.execute(
            "UPDATE truxe.users SET metadata = '{\"a\":1}' WHERE id = $1::text::uuid",
            &[&BOB]
        )
        .unwrap(),
        0
    );
    assert_eq!(
        sqlstate(c.execute(
            "UPDATE truxe.users SET status = 'active' WHERE id = $1::text::uuid",
            &[&ALICE]
        )),
        "42501"
    );
    // no direct inserts/deletes into the tables the functions own
    assert_eq!(
        sqlstate(c.execute(
            "INSERT INTO truxe.organizations (slug, name) VALUES ('evil', 'Evil')",
            &[]
        )),
        "42501"
    );
    assert_eq!(
        sqlstate(c.execute("INSERT INTO truxe.memberships (org_id, user_id, role) VALUES ($1::text::uuid, $2::text::uuid, 'owner')", &[&ORG_B, &ALICE])),
        "42501"
    );
    assert_eq!(
        sqlstate(c.execute("DELETE FROM truxe.memberships", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(c.execute("DELETE FROM truxe.sessions", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(c.execute(
            "UPDATE truxe.sessions SET revoked_at = now(), revoked_reason = 'x'",
            &[]
        )),
        "42501"
    );
    // audit rows only in one's own name, and (0.2) never with truxe's own actions: the
    // 'settings.updated' row 0.1 let an owner write is refused now (issue 18)
    assert_eq!(
        sqlstate(c.execute("INSERT INTO truxe.audit_logs (org_id, actor_user_id, action) VALUES ($1::text::uuid, $2::text::uuid, 'settings.updated')", &[&ORG_A, &ALICE])),
        "42501"
    );
    assert_eq!(
        sqlstate(c.execute("INSERT INTO truxe.audit_logs (org_id, actor_user_id, action) VALUES ($1::text::uuid, $2::text::uuid, 'settings.updated')", &[&ORG_A, &BOB])),
        "42501"
    );
    // magic links and rate limits are out of reach
    assert_eq!(
        sqlstate(c.query("SELECT * FROM truxe.magic_link_challenges", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(c.query("SELECT * FROM truxe.rate_limits", &[])),
        "42501"
    );
}

#[test]
fn member_sees_own_org_but_not_descendants_nor_admin_data() {
    let db = populated();
    let mut c = as_user(&db, Some(BOB));
    assert_eq!(orgs(&mut c), sorted(&[ORG_A]));
    // 0.2: joined members only; Dave is a pending invitee (issue 21 finding 3)
    assert_eq!(users(&mut c), sorted(&[ALICE, BOB]));
    assert_eq!(audit_orgs(&mut c), Vec::<String>::new());
    assert_eq!(count(&mut c, "usage_metrics"), 0);
    assert_eq!(
        c.execute("UPDATE truxe.organizations SET name = 'x'", &[])
            .unwrap(),
        0
    );
}

#[test]
fn pending_invitee_sees_the_org_and_own_invitation_only() {
    let db = populated();
    let mut c = as_user(&db, Some(DAVE));
    assert_eq!(orgs(&mut c), sorted(&[ORG_A]));
    assert_eq!(members(&mut c), vec![format!("{ORG_A}/{DAVE}")]);
    assert_eq!(users(&mut c), sorted(&[DAVE]));
    assert_eq!(audit_orgs(&mut c), Vec::<String>::new());
}

#[test]
fn other_tenant_and_child_member_are_isolated() {
    let db = populated();
    let mut carol = as_user(&db, Some(CAROL));
    assert_eq!(orgs(&mut carol), sorted(&[ORG_B]));
    assert_eq!(users(&mut carol), sorted(&[CAROL]));
    assert_eq!(audit_orgs(&mut carol), sorted(&[ORG_B]));
    assert_eq!(
        carol
            .execute(
                "UPDATE truxe.organizations SET name = 'x' WHERE id = $1::text::uuid",
                &[&ORG_A]
            )
            .unwrap(),
        0
    );
    let mut erin = as_user(&db, Some(ERIN));
    assert_eq!(orgs(&mut erin), sorted(&[ORG_A1]));
    assert_eq!(users(&mut erin), sorted(&[ERIN]));
}

#[test]
fn service_account_sees_everything_and_nobody_gets_nothing() {
    let db = populated();
    let mut s = db.service();
    assert_eq!(count(&mut s, "users"), 5);
    assert_eq!(count(&mut s, "organizations"), 3);
    assert_eq!(count(&mut s, "memberships"), 5);
    assert_eq!(count(&mut s, "sessions"), 5);
    let updated: i64 = s
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE action = 'org.updated'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(updated, 3);
    assert_eq!(count(&mut s, "magic_link_challenges"), 1);
    assert_eq!(count(&mut s, "rate_limits"), 1);
    let mut n = db.nobody();
    assert_eq!(sqlstate(n.query("SELECT * FROM truxe.users", &[])), "42501");
    assert_eq!(
        sqlstate(n.query("SELECT truxe.current_user_id()", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(n.query("SELECT truxe.security_report()", &[])),
        "42501"
    );
}

#[test]
fn set_context_is_transaction_local_by_default() {
    let db = populated();
    let mut c = db.authenticated();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT truxe.set_context($1::text::uuid)", &[&ALICE])
        .unwrap();
    let inside: i64 = tx
        .query_one("SELECT count(*) FROM truxe.organizations", &[])
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(inside, 2);
    assert_eq!(
        count(&mut c, "organizations"),
        0,
        "context ended with the transaction"
    );
    c.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&ALICE],
    )
    .unwrap();
    assert_eq!(
        count(&mut c, "organizations"),
        2,
        "session context persists"
    );
    c.batch_execute("SELECT truxe.clear_context()").unwrap();
    assert_eq!(count(&mut c, "organizations"), 0);
    // inside a transaction it also ends a transaction-local context, for good
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT truxe.set_context($1::text::uuid)", &[&ALICE])
        .unwrap();
    tx.batch_execute("SELECT truxe.clear_context()").unwrap();
    let inside: i64 = tx
        .query_one("SELECT count(*) FROM truxe.organizations", &[])
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(inside, 0, "cleared inside the transaction");
    assert_eq!(count(&mut c, "organizations"), 0, "and after it");
}

#[test]
fn policies_are_initplans_and_use_the_policy_column_index() {
    let db = populated();
    db.superuser()
        .batch_execute(
            "INSERT INTO truxe.users (id, email)
               SELECT ('00000000-0000-0000-0001-' || lpad(g::text, 12, '0'))::uuid, 'u' || g || '@x.example'
                 FROM generate_series(1, 4000) g;
             INSERT INTO truxe.organizations (id, slug, name)
               SELECT ('00000000-0000-0000-0002-' || lpad(g::text, 12, '0'))::uuid, 'bulk-' || g, 'Bulk'
                 FROM generate_series(1, 200) g;
             INSERT INTO truxe.memberships (org_id, user_id, joined_at)
               SELECT ('00000000-0000-0000-0002-' || lpad((1 + g % 200)::text, 12, '0'))::uuid,
                      ('00000000-0000-0000-0001-' || lpad(g::text, 12, '0'))::uuid, now()
                 FROM generate_series(1, 4000) g;
             ANALYZE truxe.memberships; ANALYZE truxe.organizations; ANALYZE truxe.users;",
        )
        .unwrap();
    let mut c = as_user(&db, Some(ALICE));
    let plan: Vec<String> = c
        .query("EXPLAIN SELECT * FROM truxe.memberships", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("InitPlan"),
        "helpers evaluated once per statement:\n{plan}"
    );
    assert!(!plan.contains("SubPlan"), "no per-row subplan:\n{plan}");
    assert!(
        plan.contains("Index"),
        "an index on the policy column is used:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on memberships"),
        "no full scan:\n{plan}"
    );
}

/// The personas of the matrices below: name, user (None = no context).
const PERSONAS: [(&str, Option<&str>); 6] = [
    ("no context", None),
    ("alice (owner of A)", Some(ALICE)),
    ("bob (member of A)", Some(BOB)),
    ("carol (owner of B)", Some(CAROL)),
    ("dave (pending invitee of A)", Some(DAVE)),
    ("erin (member of A1)", Some(ERIN)),
];

/// Whether `c` may insert an audit row with `action` for `org` (None = no org) in the name
/// of the acting user: "ok", or the SQLSTATE.
fn try_audit(c: &mut Client, org: Option<&str>, action: &str) -> String {
    // the action as a literal: it takes the column's type, enum or (later) text
    match c.execute(
        &format!(
            "INSERT INTO truxe.audit_logs (org_id, actor_user_id, action, details)
             VALUES ($1::text::uuid, truxe.current_user_id(), '{action}', '{{\"note\": \"app\"}}')"
        ),
        &[&org],
    ) {
        Ok(_) => "ok".into(),
        Err(e) => code_of(&e),
    }
}

/// Issue 18, finding 1, exactly as reported: a stranger to org A writes a forged
/// `org.deleted` row into A's audit trail (0.1: INSERT 0 1, and A's owner reads it).
#[test]
fn forged_audit_row_in_a_victims_log_is_refused() {
    let db = populated();
    let mut eve = db.authenticated();
    let mut tx = eve.transaction().unwrap();
    tx.execute("SELECT truxe.set_context($1::text::uuid)", &[&CAROL])
        .unwrap();
    let forged = tx.execute(
        "INSERT INTO truxe.audit_logs (action, actor_user_id, org_id, details)
         VALUES ('org.deleted', $1::text::uuid, $2::text::uuid, '{\"note\":\"forged\"}')",
        &[&CAROL, &ORG_A],
    );
    assert_eq!(sqlstate(forged), "42501");
    tx.rollback().unwrap();
    let mut alice = as_user(&db, Some(ALICE));
    let n: i64 = alice
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE details ? 'note'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing forged in A's trail");
}

/// "Write audit rows" column, as installed: every label of truxe.audit_action is truxe's
/// own word, so `authenticated` writes none of them for any org (or none), whoever it is;
/// service_account still may.
#[test]
fn matrix_write_audit_rows_builtin_actions() {
    let db = populated();
    for (name, user) in PERSONAS {
        let mut c = as_user(&db, user);
        for org in [Some(ORG_A), Some(ORG_A1), Some(ORG_B), None] {
            for action in [
                "org.deleted",
                "settings.updated",
                "user.login",
                "membership.joined",
            ] {
                assert_eq!(
                    try_audit(&mut c, org, action),
                    "42501",
                    "{name} writing {action} for {org:?}"
                );
            }
        }
    }
    let mut s = db.service();
    s.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&ALICE],
    )
    .unwrap();
    assert_eq!(try_audit(&mut s, Some(ORG_B), "settings.updated"), "ok");
}

/// "Write audit rows" column with an application-defined action: in the acting user's own
/// name, for an org the user may act in (accessible_org_ids(): joined member, or owner/admin
/// of an ancestor) or for no org; never truxe's own actions, never someone else's name.
#[test]
fn matrix_write_audit_rows_app_actions() {
    let db = populated();
    let expected: [(&str, &[&str]); 6] = [
        ("no context", &[]),
        ("alice (owner of A)", &[ORG_A, ORG_A1, "-"]),
        ("bob (member of A)", &[ORG_A, "-"]),
        ("carol (owner of B)", &[ORG_B, "-"]),
        ("dave (pending invitee of A)", &["-"]),
        ("erin (member of A1)", &[ORG_A1, "-"]),
    ];
    for ((name, user), (name2, allowed)) in PERSONAS.into_iter().zip(expected) {
        assert_eq!(name, name2);
        let mut c = as_user(&db, user);
        for org in [Some(ORG_A), Some(ORG_A1), Some(ORG_B), None] {
            let want = if allowed.contains(&org.unwrap_or("-")) {
                "ok"
            } else {
                "42501"
            };
            assert_eq!(
                try_audit(&mut c, org, "report.exported"),
                want,
                "{name} writing report.exported for {org:?}"
            );
            assert_eq!(
                try_audit(&mut c, org, "org.deleted"),
                "42501",
                "{name} writing org.deleted for {org:?}"
            );
        }
        // never in someone else's name
        let other = if user == Some(CAROL) { ALICE } else { CAROL };
        assert_eq!(
            sqlstate(c.execute(
                "INSERT INTO truxe.audit_logs (org_id, actor_user_id, action) VALUES (NULL, $1::text::uuid, 'report.exported')",
                &[&other]
            )),
            "42501",
            "{name} writing in {other}'s name"
        );
    }
}

/// action, host(ip), user_agent, request_id of an audit row
type AuditContext = (String, Option<String>, Option<String>, Option<String>);

/// An app's audit row carries the request context of the settings, like truxe's own rows;
/// ip, user_agent, request_id, id and created_at cannot be chosen by `authenticated`.
#[test]
fn app_audit_rows_take_the_request_context_from_the_settings() {
    let db = populated();
    let mut c = as_user(&db, Some(BOB));
    c.batch_execute(
        "SET app.ip = '203.0.113.9'; SET app.user_agent = 'app/2';
         SET app.request_id = '11111111-2222-3333-4444-555555555555';",
    )
    .unwrap();
    assert_eq!(try_audit(&mut c, Some(ORG_A), "report.exported"), "ok");
    for (col, val) in [
        ("ip", "'10.9.9.9'::inet"),
        ("user_agent", "'forged'"),
        ("request_id", "gen_random_uuid()"),
        ("created_at", "'2001-01-01'::timestamptz"),
        ("id", "1"),
    ] {
        assert_eq!(
            sqlstate(c.execute(
                &format!("INSERT INTO truxe.audit_logs (org_id, actor_user_id, action, {col}) VALUES ($1::text::uuid, truxe.current_user_id(), 'report.exported', {val})"),
                &[&ORG_A]
            )),
            "42501",
            "authenticated sets {col}"
        );
    }
    // garbage settings are ignored, never an error
    c.batch_execute(
        "SET app.ip = '999.1.1.1'; SET app.request_id = 'nope'; SET app.user_agent = ''",
    )
    .unwrap();
    assert_eq!(try_audit(&mut c, None, "report.viewed"), "ok");
    let rows: Vec<AuditContext> = db
        .service()
        .query(
            "SELECT action, host(ip), user_agent, request_id::text FROM truxe.audit_logs
              WHERE action IN ('report.exported', 'report.viewed') ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "report.exported".into(),
                Some("203.0.113.9".into()),
                Some("app/2".into()),
                Some("11111111-2222-3333-4444-555555555555".into())
            ),
            ("report.viewed".into(), None, None, None),
        ]
    );
}

/// "Probe has_permission" column (issue 18, finding 2): each persona asks whether each
/// user holds 'users:read' where that user really does (alice, bob: A; carol: B; erin: A1).
/// `authenticated` gets an answer only about itself or about users joined in an org it owns
/// or administers (directly or via an ancestor); anything else is false, unread. 0.1
/// answered true to everyone.
#[test]
fn matrix_probe_has_permission() {
    let db = populated();
    let targets = [(ALICE, ORG_A), (BOB, ORG_A), (CAROL, ORG_B), (ERIN, ORG_A1)];
    let expected: [&[&str]; 6] = [&[], &[ALICE, BOB, ERIN], &[BOB], &[CAROL], &[], &[ERIN]];
    let probe = |c: &mut Client, org: &str, who: &str| -> bool {
        c.query_one(
            "SELECT truxe.has_permission($1::text::uuid, 'users:read', $2::text::uuid)",
            &[&org, &who],
        )
        .unwrap()
        .get(0)
    };
    for ((name, user), allowed) in PERSONAS.into_iter().zip(expected) {
        let mut c = as_user(&db, user);
        for (who, org) in targets {
            assert_eq!(
                probe(&mut c, org, who),
                allowed.contains(&who),
                "{name} probing {who} on {org}"
            );
        }
    }
    // the probe that told a stranger who owns org A
    let mut carol = as_user(&db, Some(CAROL));
    let owner: bool = carol
        .query_one(
            "SELECT truxe.has_permission($1::text::uuid, '*', $2::text::uuid)",
            &[&ORG_A, &ALICE],
        )
        .unwrap()
        .get(0);
    assert!(!owner, "a stranger learns nothing of A's owner");
    // own permissions, with the default argument, still answer
    let own: bool = carol
        .query_one(
            "SELECT truxe.has_permission($1::text::uuid, 'anything:at_all')",
            &[&ORG_B],
        )
        .unwrap()
        .get(0);
    assert!(own);
    // service_account and superusers ask about anyone (ancestors through the closure)...
    for mut c in [db.service(), db.superuser()] {
        for (who, org) in targets {
            assert!(probe(&mut c, org, who), "trusted caller probing {who}");
        }
        assert!(probe(&mut c, ORG_A1, ALICE), "owner of A holds A1's rights");
        assert!(!probe(&mut c, ORG_A1, BOB), "a member of A does not");
        assert!(
            !probe(&mut c, ORG_A, DAVE),
            "a pending invitation grants nothing"
        );
    }
    // ...but not once they SET ROLE authenticated: the rule follows the role acting
    let mut s = db.superuser();
    s.batch_execute(&format!(
        "SELECT truxe.set_context('{CAROL}', NULL, false); SET ROLE authenticated"
    ))
    .unwrap();
    assert!(!probe(&mut s, ORG_A, ALICE));
    assert!(probe(&mut s, ORG_B, CAROL));
}

/// A user whose status leaves `active` opens no org, whoever sets their context: no org,
/// member or audit row of their tenant is visible, and a direct UPDATE of their org
/// (a rename, a move) affects nothing — the same holds for pending and deleted users.
#[test]
fn a_suspended_user_opens_no_org_through_rls() {
    let db = populated();
    let mut alice = as_user(&db, Some(ALICE));
    assert_eq!(
        orgs(&mut alice),
        sorted(&[ORG_A, ORG_A1]),
        "active, the owner sees her tenant"
    );
    for status in ["suspended", "deleted", "pending"] {
        db.superuser()
            .execute(
                "UPDATE truxe.users SET status = $2::text::truxe.user_status WHERE id = $1::text::uuid",
                &[&ALICE, &status],
            )
            .unwrap();
        assert!(orgs(&mut alice).is_empty(), "{status}: no org visible");
        assert_eq!(audit_orgs(&mut alice), Vec::<String>::new(), "{status}");
        assert_eq!(
            strings(
                &mut alice,
                "SELECT unnest(truxe.accessible_org_ids())::text"
            ),
            Vec::<String>::new(),
            "{status}"
        );
        assert_eq!(
            users(&mut alice),
            vec![ALICE.to_string()],
            "{status}: only her own row"
        );
        let renamed = alice
            .execute(
                "UPDATE truxe.organizations SET name = 'taken' WHERE id = $1::text::uuid",
                &[&ORG_A],
            )
            .unwrap();
        let moved = alice
            .execute(
                "UPDATE truxe.organizations SET parent_org_id = NULL WHERE id = $1::text::uuid",
                &[&ORG_A1],
            )
            .unwrap();
        assert_eq!(
            (renamed, moved),
            (0, 0),
            "{status}: direct updates affect nothing"
        );
    }
}

/// accessible_org_ids() and admin_org_ids() without an acting org read users, memberships
/// and org_closure through their indexes (src/index_read.rs), index-only where the
/// visibility map allows. Over a tree of orgs and users in every state — rows on
/// all-visible pages (after VACUUM), rows changed since (pages no longer all-visible, dead
/// index entries), suspended users, pending and deleted memberships, a promoted member —
/// they answer exactly what their SQL (the one the SERIALIZABLE fallback runs) answers, in
/// READ COMMITTED, REPEATABLE READ and SERIALIZABLE, and a change made by the same
/// transaction is seen.
#[test]
fn org_sets_read_through_the_indexes_match_their_sql() {
    let db = server().fresh_db(true);
    let mut su = db.superuser();
    // 24 orgs in chains of 6; 40 users with 4 memberships each: owner, admin, 2 members
    su.batch_execute(
        "CREATE FUNCTION pg_temp.id(kind int, n int) RETURNS uuid LANGUAGE sql IMMUTABLE AS
           $$ SELECT (lpad(kind::text, 8, '0') || '-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;
         INSERT INTO truxe.users (id, email, status, email_verified)
           SELECT pg_temp.id(1, g), 'u' || g || '@x.example', 'active', true FROM generate_series(1, 40) g;
         DO $$ BEGIN
           FOR g IN 1..24 LOOP
             INSERT INTO truxe.organizations (id, slug, name, parent_org_id)
             VALUES (pg_temp.id(2, g), 'o-' || g, 'O' || g,
                     CASE WHEN (g - 1) % 6 = 0 THEN NULL ELSE pg_temp.id(2, g - 1) END);
           END LOOP;
         END $$;
         INSERT INTO truxe.memberships (org_id, user_id, role, invited_at, joined_at)
           SELECT pg_temp.id(2, 1 + (u * 5 + k) % 24), pg_temp.id(1, u),
                  (CASE k WHEN 0 THEN 'owner' WHEN 1 THEN 'admin' ELSE 'member' END)::truxe.membership_role,
                  now(), now()
             FROM generate_series(1, 40) u, generate_series(0, 3) k;",
    )
    .unwrap();
    su.batch_execute("VACUUM (ANALYZE) truxe.users, truxe.memberships, truxe.org_closure")
        .unwrap();
    // changes after VACUUM: their pages are no longer all-visible
    su.batch_execute(
        "UPDATE truxe.users SET status = 'suspended' WHERE id = pg_temp.id(1, 3);
         UPDATE truxe.memberships SET joined_at = NULL WHERE user_id = pg_temp.id(1, 4) AND role = 'owner';
         DELETE FROM truxe.memberships WHERE user_id = pg_temp.id(1, 5) AND role = 'admin';
         UPDATE truxe.memberships SET role = 'admin'
          WHERE user_id = pg_temp.id(1, 6) AND org_id = pg_temp.id(2, 1 + (6 * 5 + 2) % 24);
         UPDATE truxe.organizations SET parent_org_id = NULL WHERE id = pg_temp.id(2, 10);",
    )
    .unwrap();
    let compare = |su: &mut Client, isolation: &str, own_change: bool| {
        let mut seen = 0;
        for u in 1..=40 {
            let mut tx = su
                .build_transaction()
                .isolation_level(match isolation {
                    "serializable" => postgres::IsolationLevel::Serializable,
                    "repeatable read" => postgres::IsolationLevel::RepeatableRead,
                    _ => postgres::IsolationLevel::ReadCommitted,
                })
                .start()
                .unwrap();
            tx.execute(
                "SELECT set_config('app.current_user_id', pg_temp.id(1, $1)::text, true)",
                &[&u],
            )
            .unwrap();
            if own_change {
                // the transaction's own change: the user's first membership becomes pending
                tx.execute(
                    "UPDATE truxe.memberships SET joined_at = NULL
                      WHERE user_id = pg_temp.id(1, $1) AND org_id = pg_temp.id(2, 1 + ($1 * 5) % 24)",
                    &[&u],
                )
                .unwrap();
            }
            let row = tx
                .query_one(
                    "WITH flat(admin_only) AS (VALUES (false), (true))
                     SELECT (SELECT array_agg(x ORDER BY x)::text FROM unnest(truxe.accessible_org_ids()) x),
                            (SELECT array_agg(x ORDER BY x)::text FROM unnest(truxe.admin_org_ids()) x),
                            array_agg((SELECT array_agg(DISTINCT s.org_id ORDER BY s.org_id)::text FROM (
                                SELECT m.org_id FROM truxe.memberships m
                                 WHERE m.user_id = pg_temp.id(1, $1) AND m.joined_at IS NOT NULL
                                   AND (NOT f.admin_only OR m.role IN ('owner', 'admin'))
                                UNION ALL
                                SELECT c.descendant_id FROM truxe.memberships m
                                  JOIN truxe.org_closure c ON c.ancestor_id = m.org_id
                                 WHERE m.user_id = pg_temp.id(1, $1) AND m.joined_at IS NOT NULL
                                   AND m.role IN ('owner', 'admin')) s
                              WHERE EXISTS (SELECT 1 FROM truxe.users v
                                             WHERE v.id = pg_temp.id(1, $1) AND v.status = 'active'))
                              ORDER BY f.admin_only)
                       FROM flat f",
                    &[&u],
                )
                .unwrap();
            let (accessible, admin): (Option<String>, Option<String>) = (row.get(0), row.get(1));
            seen += usize::from(admin.is_some());
            let expected: Vec<Option<String>> = row.get(2);
            assert_eq!(
                vec![accessible, admin],
                expected,
                "user {u}, {isolation}, own change: {own_change}"
            );
            tx.rollback().unwrap();
        }
        assert!(seen >= 35, "{isolation}: admin sets for {seen} of 40 users");
    };
    for isolation in ["read committed", "repeatable read", "serializable"] {
        compare(&mut su, isolation, false);
        compare(&mut su, isolation, true);
    }
}
