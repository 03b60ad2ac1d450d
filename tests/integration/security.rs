//! truxe.security_report() and the privileges (docs/reference.md, "Monitoring and checks", "Roles and privileges").
use crate::harness::server;
use postgres::Client;

fn report(c: &mut Client) -> Vec<(String, bool, String)> {
    c.query(
        "SELECT check_name, ok, detail FROM truxe.security_report()",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[test]
fn fresh_install_is_all_ok() {
    let db = server().fresh_db(true);
    let rows = report(&mut db.service());
    assert!(rows.len() >= 12, "{rows:?}");
    // the harness's `authenticated` login can claim any identity under the default mode:
    // exactly what the identity_mode row reports; and a new database lets PUBLIC connect
    // (issue 17: this test asserted all else ok before the database_connect row existed)
    let mut bad: Vec<_> = rows.iter().filter(|r| !r.1).collect();
    bad.sort();
    assert!(
        bad.len() == 2
            && bad[0].0 == "database_connect"
            && bad[1].0 == "identity_mode"
            && bad[1].2.contains("trusted")
            && bad[1].2.contains(crate::harness::AUTH_LOGIN),
        "not ok on a fresh install: {bad:?}"
    );
    db.superuser()
        .batch_execute(&format!(
            "ALTER DATABASE {0} SET truxe.identity_mode = verified;
             REVOKE CONNECT ON DATABASE {0} FROM PUBLIC;
             GRANT CONNECT ON DATABASE {0} TO {1}, {2}, {3}",
            db.name,
            crate::harness::AUTH_LOGIN,
            crate::harness::SERVICE_LOGIN,
            crate::harness::PLAIN_LOGIN
        ))
        .unwrap();
    let rows = report(&mut db.service());
    let bad: Vec<_> = rows.iter().filter(|r| !r.1).collect();
    assert!(
        bad.is_empty(),
        "not ok under identity_mode = verified: {bad:?}"
    );
    for t in [
        "users",
        "organizations",
        "memberships",
        "sessions",
        "audit_logs",
        "usage_metrics",
        "magic_link_challenges",
        "rate_limits",
    ] {
        assert!(
            rows.iter().any(|r| r.0 == format!("rls_enabled:{t}")),
            "row for {t}"
        );
    }
}

#[test]
fn report_flags_disabled_rls_public_grants_and_missing_guard() {
    let db = server().fresh_db(true);
    db.superuser()
        .batch_execute(
            "ALTER TABLE truxe.sessions DISABLE ROW LEVEL SECURITY;
             GRANT SELECT ON truxe.users TO PUBLIC;
             ALTER TABLE truxe.audit_logs DISABLE TRIGGER audit_logs_append_only;",
        )
        .unwrap();
    let rows = report(&mut db.service());
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("{name}: {rows:?}"))
    };
    assert!(!get("rls_enabled:sessions").1);
    assert!(get("rls_enabled:users").1);
    let public = get("no_public_grants");
    assert!(!public.1 && public.2.contains("truxe.users"), "{public:?}");
    assert!(!get("audit_logs_append_only").1);
}

/// Roles are cluster-wide: a login granted service_account for one database holds it in
/// every database it may connect to. security_report() warns while PUBLIC may connect to
/// the current database (the default), naming the fix, and turns ok once only granted
/// logins may; other databases' grants do not count. (0.1 had no such row.)
#[test]
fn report_warns_while_public_may_connect_to_the_database() {
    let db = server().fresh_db(true);
    let other = server().fresh_db(true);
    let row = |c: &mut Client| {
        report(c)
            .into_iter()
            .find(|r| r.0 == "database_connect")
            .unwrap_or_else(|| panic!("no database_connect row"))
    };
    let (_, ok, detail) = row(&mut db.service());
    assert!(!ok, "PUBLIC may connect by default: {detail}");
    assert!(
        detail.contains(&db.name) && detail.contains("REVOKE CONNECT ON DATABASE"),
        "{detail}"
    );
    // revoking on another database changes nothing here
    let mut su = db.superuser();
    su.batch_execute(&format!(
        "REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
        other.name
    ))
    .unwrap();
    assert!(!row(&mut db.service()).1, "another database's ACL counted");
    su.batch_execute(&format!(
        "REVOKE CONNECT ON DATABASE {0} FROM PUBLIC;
         GRANT CONNECT ON DATABASE {0} TO {1}",
        db.name,
        crate::harness::SERVICE_LOGIN
    ))
    .unwrap();
    let (_, ok, detail) = row(&mut db.service());
    assert!(ok, "{detail}");
    // and it is true: a login without the grant cannot connect any more
    let refused = postgres::Config::new()
        .host_path(server().socket_dir())
        .port(server().port())
        .user(crate::harness::PLAIN_LOGIN)
        .dbname(&db.name)
        .connect(postgres::NoTls);
    assert_eq!(
        refused
            .err()
            .and_then(|e| e.code().map(|c| c.code().to_string())),
        Some("42501".to_string())
    );
    // a grant to PUBLIC again (directly, not by default) is flagged again
    su.batch_execute(&format!("GRANT CONNECT ON DATABASE {} TO PUBLIC", db.name))
        .unwrap();
    assert!(!row(&mut db.service()).1);
}

/// The organisation functions' internal helpers are not API: not even service_account
/// executes them (the SECURITY DEFINER functions that use them run as the owner), while the
/// API built on them keeps working for it.
#[test]
fn internal_helpers_are_executable_by_nobody_but_the_owner() {
    let db = server().fresh_db(true);
    let mut s = db.service();
    for call in [
        "truxe.effective_role(gen_random_uuid(), gen_random_uuid())",
        "truxe.require_user()",
        "truxe.require_org_admin(gen_random_uuid(), gen_random_uuid())",
        "truxe.lock_org_for_change(gen_random_uuid(), gen_random_uuid())",
        "truxe.member_role(gen_random_uuid(), gen_random_uuid())",
        "truxe.other_owners(gen_random_uuid(), gen_random_uuid())",
        "truxe.calling_role()",
        "truxe.caller_is_service()",
        "truxe.permission_matches('*', 'users:read')",
        "truxe.user_holds_permission(gen_random_uuid(), 'users:read', gen_random_uuid())",
        "truxe.require_grant_rights(gen_random_uuid(), gen_random_uuid(), 'member', '[]')",
        "truxe.inviter_still_may_invite(gen_random_uuid())",
    ] {
        assert_eq!(
            crate::harness::sqlstate(s.query(&format!("SELECT {call}"), &[])),
            "42501",
            "service_account executed {call}"
        );
    }
    let u = crate::harness::active_user(&mut s, "owner@example.com");
    let mut t = s.transaction().unwrap();
    t.execute("SELECT truxe.set_context($1::text::uuid)", &[&u])
        .unwrap();
    let org: String = t
        .query_one(
            "SELECT truxe.create_organization('acme', 'Acme')::text",
            &[],
        )
        .unwrap()
        .get(0);
    let held: bool = t
        .query_one(
            "SELECT truxe.has_permission($1::text::uuid, 'users:write')",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert!(
        held,
        "the API built on the helpers works for service_account"
    );
}
