//! A hostile tenant, round two (docs/security.md, "Hardening"): moves within one's own
//! authority, per-tree serialisation, trigger functions that cannot be called, no
//! backtraces in errors, and the input checks of magic links and usage. Every test goes
//! through real NOSUPERUSER logins and would fail on 0.1.
use crate::harness::{server, sqlstate, Tenants, TestDb};
use postgres::Client;

const OWNER: &str = "00000000-0000-0000-0000-0000000000c1"; // owner of A
const ADMIN: &str = "00000000-0000-0000-0000-0000000000c2"; // admin of A: the attacker
const OTHER: &str = "00000000-0000-0000-0000-0000000000c3"; // owner of B, another tenant
const ORG_A: &str = "a0000000-0000-0000-0000-0000000000c1";
const ORG_B: &str = "b0000000-0000-0000-0000-0000000000c2";

fn tenants() -> TestDb {
    let db = server().fresh_db(true);
    Tenants::new()
        .user(OWNER, "owner@a.example")
        .user(ADMIN, "admin@a.example")
        .user(OTHER, "other@b.example")
        .org(ORG_A, "org-a", "A", None)
        .org(ORG_B, "org-b", "B", None)
        .member(ORG_A, OWNER, "owner")
        .member(ORG_A, ADMIN, "admin")
        .member(ORG_B, OTHER, "owner")
        .seed(&db);
    db
}

fn create_org(c: &mut Client, slug: &str, parent: Option<&str>) -> Result<String, postgres::Error> {
    c.query_one(
        "SELECT truxe.create_organization($1, $2, $3::text::uuid)::text",
        &[&slug, &slug, &parent],
    )
    .map(|r| r.get(0))
}

fn set_parent(c: &mut Client, org: &str, parent: Option<&str>) -> Result<u64, postgres::Error> {
    c.execute(
        "UPDATE truxe.organizations SET parent_org_id = $1::text::uuid WHERE id = $2::text::uuid",
        &[&parent, &org],
    )
}

fn parent_of(db: &TestDb, org: &str) -> Option<String> {
    db.superuser()
        .query_one(
            "SELECT parent_org_id::text FROM truxe.organizations WHERE id = $1::text::uuid",
            &[&org],
        )
        .unwrap()
        .get(0)
}

/// The takeover of the issue: an admin of A creates an org of their own, grafts A under it
/// (0.1 allowed it: admin of A, owner of the new parent), and would then be A's owner
/// through the ancestor. Refused: a move needs owner rights on the org.
#[test]
fn an_admin_cannot_graft_their_org_under_one_of_their_own() {
    let db = tenants();
    let mut admin = db.acting_as(ADMIN);
    let mine = create_org(&mut admin, "admins-own", None).unwrap();
    assert_eq!(
        sqlstate(set_parent(&mut admin, ORG_A, Some(&mine))),
        "42501"
    );
    assert_eq!(parent_of(&db, ORG_A), None, "A stays a root");
    // … so the follow-up (making themself owner of A) stays out of reach
    assert_eq!(
        sqlstate(admin.execute(
            "SELECT truxe.change_role($1::text::uuid, $2::text::uuid, 'owner')",
            &[&ORG_A, &ADMIN],
        )),
        "42501"
    );
    // the owner of A may put A under an org where they are owner or admin
    let mut owner = db.acting_as(OWNER);
    let holding = create_org(&mut owner, "owners-holding", None).unwrap();
    assert_eq!(set_parent(&mut owner, ORG_A, Some(&holding)).unwrap(), 1);
    assert_eq!(parent_of(&db, ORG_A).as_deref(), Some(holding.as_str()));
    // … but not under another tenant's org
    assert_eq!(
        sqlstate(set_parent(&mut owner, ORG_A, Some(ORG_B))),
        "42501"
    );
}

/// Clearing the parent is a move too (0.1 did not check it at all): it needs owner rights
/// on the org and on its current parent.
#[test]
fn detaching_an_org_needs_owner_on_it_and_on_its_parent() {
    let db = tenants();
    let mut owner = db.acting_as(OWNER);
    let child = create_org(&mut owner, "a-child", Some(ORG_A)).unwrap();
    // ADMIN is admin of A and, invited by the owner, direct owner of the child
    owner
        .execute(
            "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid, 'owner')",
            &[&child, &ADMIN],
        )
        .unwrap();
    let mut admin = db.acting_as(ADMIN);
    admin
        .execute("SELECT truxe.accept_invitation($1::text::uuid)", &[&child])
        .unwrap();
    // owner of the child, only admin of its parent: cannot take it out of A's tree
    assert_eq!(sqlstate(set_parent(&mut admin, &child, None)), "42501");
    assert_eq!(parent_of(&db, &child).as_deref(), Some(ORG_A));
    // nor move it under an org of their own
    let mine = create_org(&mut admin, "admins-two", None).unwrap();
    assert_eq!(
        sqlstate(set_parent(&mut admin, &child, Some(&mine))),
        "42501"
    );
    // the owner of the parent may
    assert_eq!(set_parent(&mut owner, &child, None).unwrap(), 1);
    assert_eq!(parent_of(&db, &child), None);
}

/// One tenant holds an open transaction that created a child in tree A; another tenant's
/// child creation and move in tree B finish within a 2-second statement timeout (0.1: one
/// row for all trees, so they waited for A's transaction). A change in tree A itself still
/// waits.
#[test]
fn an_open_change_in_one_tree_does_not_block_another_tree() {
    let db = tenants();
    let mut a = db.acting_as(OWNER);
    a.batch_execute("BEGIN").unwrap();
    create_org(&mut a, "a-kid", Some(ORG_A)).unwrap();

    let mut b = db.acting_as(OTHER);
    b.batch_execute("SET statement_timeout = '2s'").unwrap();
    let b_kid = create_org(&mut b, "b-kid", Some(ORG_B)).expect("a child in tree B");
    let b_two = create_org(&mut b, "b-two", None).unwrap();
    assert_eq!(
        set_parent(&mut b, &b_kid, Some(&b_two)).expect("a move between B's trees"),
        1
    );
    assert_eq!(
        set_parent(&mut b, &b_two, Some(ORG_B)).expect("a subtree attached"),
        1
    );

    // the same tree serialises: A's second change waits for the first (and times out here)
    let mut a2 = db.acting_as(OWNER);
    a2.batch_execute("SET statement_timeout = '300ms'").unwrap();
    assert_eq!(
        sqlstate(create_org(&mut a2, "a-kid-2", Some(ORG_A))),
        "57014"
    );
    a.batch_execute("COMMIT").unwrap();
    create_org(&mut a2, "a-kid-2", Some(ORG_A)).expect("after the commit");
}

/// Trigger functions: no EXECUTE for anyone but their owner, and a superuser calling one
/// as a function gets 0A000, not a panic (0.1: XX000 "PgTrigger::from_fcinfo failed").
#[test]
fn trigger_functions_are_not_callable() {
    let db = server().fresh_db(true);
    let mut su = db.superuser();
    let triggers: Vec<String> = su
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace = 'truxe'::regnamespace AND p.prorettype = 'trigger'::regtype
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(triggers.len() >= 8, "{triggers:?}");
    let granted: Vec<String> = su
        .query(
            "SELECT p.oid::regprocedure::text || ' to ' || r.rolname FROM pg_proc p
               CROSS JOIN (VALUES ('service_account'), ('authenticated'), ('truxe_test_nobody')) r(rolname)
              WHERE p.pronamespace = 'truxe'::regnamespace AND p.prorettype = 'trigger'::regtype
                AND has_function_privilege(r.rolname, p.oid, 'EXECUTE')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(granted.is_empty(), "trigger functions granted: {granted:?}");
    for f in &triggers {
        let e = su.execute(&format!("SELECT {f}"), &[]).unwrap_err();
        let db_error = e.as_db_error().expect("a database error");
        assert_eq!(db_error.code().code(), "0A000", "{f}: {db_error:?}");
        assert!(db_error.message().contains("only be called as"), "{f}");
    }
    let mut service = db.service();
    assert_eq!(
        sqlstate(service.execute("SELECT truxe.audit_users()", &[])),
        "42501"
    );
    // the connection is fine afterwards
    assert_eq!(su.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
}

/// The server the tests start never gets RUST_BACKTRACE (it is set on these machines, and
/// may be in the test process's environment): an error raised from Rust has no backtrace
/// and no build path in its DETAIL.
#[test]
fn errors_raised_from_rust_carry_no_backtrace() {
    let db = tenants();
    let mut service = db.service();
    let pid: i32 = service
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            !environ
                .split('\0')
                .any(|v| v.starts_with("RUST_BACKTRACE=") || v.starts_with("RUST_LIB_BACKTRACE=")),
            "the server was started with a Rust backtrace switch"
        );
    }
    for sql in [
        "SELECT truxe.record_usage(NULL, 'x')",
        "SELECT * FROM truxe.issue_magic_link('not an e-mail')",
        "SELECT * FROM truxe.rate_limit_hit('', 1)",
    ] {
        let e = service.execute(sql, &[]).unwrap_err();
        let db_error = e.as_db_error().expect("a database error");
        assert_eq!(db_error.code().code(), "22023", "{sql}");
        let detail = db_error.detail().unwrap_or_default();
        assert!(
            !detail.contains("backtrace") && !detail.contains(".rs:") && !detail.contains("/root/"),
            "{sql}: DETAIL {detail}"
        );
        assert!(db_error.message().len() < 200, "{sql}");
    }
}

/// issue_magic_link validates org_slug like organizations.slug (0.1 took anything and failed
/// only past 8 kB with an index error); the parameter is citext; an unknown org is P0002
/// (0.1 dropped it silently).
#[test]
fn magic_link_org_slug_is_validated_and_must_exist() {
    let db = tenants();
    let mut service = db.service();
    let issue = |c: &mut Client, slug: &str| {
        c.query_one(
            "SELECT token FROM truxe.issue_magic_link('x@a.example', $1)",
            &[&slug],
        )
        .map(|r| r.get::<_, String>(0))
    };
    issue(&mut service, "org-a").expect("an existing org");
    issue(&mut service, "ORG-A").expect("citext: any letter case");
    assert_eq!(sqlstate(issue(&mut service, "no-such-org")), "P0002");
    for bad in ["", "a", "-ab", "a b", "a\nb", "x_y"] {
        assert_eq!(sqlstate(issue(&mut service, bad)), "22023", "{bad:?}");
    }
    let huge = "a".repeat(10 << 20);
    let e = issue(&mut service, &huge).unwrap_err();
    let db_error = e.as_db_error().unwrap();
    assert_eq!(db_error.code().code(), "22023");
    assert!(
        db_error.message().len() < 200,
        "{} bytes",
        db_error.message().len()
    );
    let e = issue(&mut service, "ctl\u{1}\u{7}\r\nx").unwrap_err();
    let msg = e.as_db_error().unwrap().message().to_string();
    assert!(!msg.chars().any(|c| c.is_control()), "{msg:?}");
    let arg: String = service
        .query_one(
            "SELECT format_type(proargtypes[1], NULL) FROM pg_proc
              WHERE oid = 'truxe.issue_magic_link'::regproc",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(arg, "citext");
}

/// record_usage refuses a non-finite `at` with 22023 (0.1: the table constraint's 23514).
#[test]
fn record_usage_refuses_non_finite_times() {
    let db = tenants();
    let mut service = db.service();
    for at in ["infinity", "-infinity", "294276-12-31 00:00:00+00"] {
        assert_eq!(
            sqlstate(service.execute(
                "SELECT truxe.record_usage($1::text::uuid, 'api', 1, $2::text::timestamptz)",
                &[&ORG_A, &at],
            )),
            "22023",
            "{at}"
        );
    }
    let total: i64 = service
        .query_one(
            "SELECT truxe.record_usage($1::text::uuid, 'api', 2, '2026-11-15')",
            &[&ORG_A],
        )
        .unwrap()
        .get(0);
    assert_eq!(total, 2);
}

/// jsonb nested far beyond serde's 128 levels in an org's settings, from create_organization
/// and from an owner's UPDATE (which the audit trigger records): stored and audited, never
/// XX000 (0.1: a panic in the audit trigger).
#[test]
fn deeply_nested_settings_are_stored_and_audited() {
    let db = tenants();
    let mut owner = db.acting_as(OWNER);
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let deep_object = format!("{{\"a\": {deep}}}");
    let org: String = owner
        .query_one(
            "SELECT truxe.create_organization('deep-org', 'Deep', NULL, $1::text::jsonb)::text",
            &[&deep_object],
        )
        .expect("deep settings on create")
        .get(0);
    let updated = owner
        .execute(
            "UPDATE truxe.organizations SET settings = jsonb_build_object('b', $1::text::jsonb)
              WHERE id = $2::text::uuid",
            &[&deep, &org],
        )
        .expect("deep settings on update");
    assert_eq!(updated, 1);
    let audited: bool = db
        .superuser()
        .query_one(
            "SELECT details->'settings'->'new' ? 'b' AND details->'settings'->'old' ? 'a'
               FROM truxe.audit_logs WHERE action = 'org.updated' AND target_id = $1",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert!(audited, "org.updated holds old and new settings");
    // an unchanged settings value is not an update of settings
    owner
        .execute(
            "UPDATE truxe.organizations SET name = 'Deeper' WHERE id = $1::text::uuid",
            &[&org],
        )
        .unwrap();
    let with_settings: i64 = db
        .superuser()
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE action = 'org.updated' AND target_id = $1 AND details ? 'settings'",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(with_settings, 1);
}

/// security_report() names any truxe function that does not pin search_path (the two
/// getters that resolve no name are the documented exceptions).
#[test]
fn security_report_flags_a_function_without_a_pinned_search_path() {
    let db = server().fresh_db(true);
    db.superuser()
        .batch_execute("ALTER FUNCTION truxe.version() RESET search_path")
        .unwrap();
    let row = db
        .service()
        .query_one(
            "SELECT ok, detail FROM truxe.security_report() WHERE check_name = 'search_path_pinned'",
            &[],
        )
        .unwrap();
    let (ok, detail): (bool, String) = (row.get(0), row.get(1));
    assert!(!ok && detail.contains("truxe.version()"), "{detail}");
    assert!(!detail.contains("current_user_id"), "{detail}");
}
