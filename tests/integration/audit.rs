//! Audit trail (docs/reference.md, "Audit trail"): one row per event, with actor, target, details and request
//! context; none for a no-op update; append-only.
use crate::harness::{server, sqlstate};
use postgres::Client;

const ACTOR: &str = "00000000-0000-0000-0000-0000000000ac";
const USER: &str = "00000000-0000-0000-0000-0000000000b2";

/// The audit rows written since id `after`, as "action|target_type|target_id|actor".
fn rows_since(c: &mut Client, after: i64) -> Vec<String> {
    c.query(
        "SELECT action::text || '|' || coalesce(target_type, '') || '|' || coalesce(target_id, '') || '|'
                || coalesce(actor_user_id::text, '')
           FROM truxe.audit_logs WHERE id > $1 ORDER BY id",
        &[&after],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn last_id(c: &mut Client) -> i64 {
    c.query_one("SELECT coalesce(max(id), 0) FROM truxe.audit_logs", &[])
        .unwrap()
        .get(0)
}

fn details(c: &mut Client, action: &str) -> String {
    c.query_one(
        "SELECT details::text FROM truxe.audit_logs WHERE action = $1 ORDER BY id DESC LIMIT 1",
        &[&action],
    )
    .unwrap()
    .get(0)
}

#[test]
fn every_event_writes_exactly_one_row() {
    let db = server().fresh_db(true);
    let mut c = db.superuser();
    c.batch_execute(&format!(
        "SET app.current_user_id = '{ACTOR}';
         SET app.ip = '203.0.113.7'; SET app.user_agent = 'test-agent/1.0';
         SET app.request_id = '11111111-2222-3333-4444-555555555555';"
    ))
    .unwrap();
    let a = ACTOR;
    let u = USER;
    let steps: Vec<(String, Vec<String>)> = vec![
        (format!("INSERT INTO truxe.users (id, email) VALUES ('{u}', 'u@x.example')"), vec![format!("user.created|user|{u}|{a}")]),
        (format!("UPDATE truxe.users SET status = 'active' WHERE id = '{u}'"), vec![format!("user.status_changed|user|{u}|{a}")]),
        (format!("UPDATE truxe.users SET status = 'active' WHERE id = '{u}'"), vec![]),
        (format!("UPDATE truxe.users SET metadata = '{{\"k\":1}}' WHERE id = '{u}'"), vec![]),
        ("INSERT INTO truxe.organizations (id, slug, name) VALUES ('00000000-0000-0000-0000-00000000000a', 'par', 'Parent')".into(),
         vec![format!("org.created|organization|00000000-0000-0000-0000-00000000000a|{a}")]),
        ("INSERT INTO truxe.organizations (id, slug, name) VALUES ('00000000-0000-0000-0000-00000000000b', 'kid', 'Kid')".into(),
         vec![format!("org.created|organization|00000000-0000-0000-0000-00000000000b|{a}")]),
        ("UPDATE truxe.organizations SET name = 'Kid 2' WHERE slug = 'kid'".into(),
         vec![format!("org.updated|organization|00000000-0000-0000-0000-00000000000b|{a}")]),
        ("UPDATE truxe.organizations SET name = 'Kid 2' WHERE slug = 'kid'".into(), vec![]),
        ("UPDATE truxe.organizations SET parent_org_id = '00000000-0000-0000-0000-00000000000a' WHERE slug = 'kid'".into(),
         vec![format!("org.parent_changed|organization|00000000-0000-0000-0000-00000000000b|{a}")]),
        (format!("INSERT INTO truxe.memberships (org_id, user_id, role) VALUES ('00000000-0000-0000-0000-00000000000b', '{u}', 'member')"),
         vec![format!("membership.invited|user|{u}|{a}")]),
        (format!("UPDATE truxe.memberships SET joined_at = now() WHERE user_id = '{u}'"), vec![format!("membership.joined|user|{u}|{a}")]),
        (format!("UPDATE truxe.memberships SET role = 'admin' WHERE user_id = '{u}'"), vec![format!("membership.role_changed|user|{u}|{a}")]),
        (format!("UPDATE truxe.memberships SET role = 'admin' WHERE user_id = '{u}'"), vec![]),
        (format!("DELETE FROM truxe.memberships WHERE user_id = '{u}'"), vec![format!("membership.removed|user|{u}|{a}")]),
        (format!("INSERT INTO truxe.sessions (id, user_id, family_id, expires_at) VALUES ('00000000-0000-0000-0000-0000000000e1', '{u}', gen_random_uuid(), now() + interval '1 h')"),
         vec![format!("session.created|session|00000000-0000-0000-0000-0000000000e1|{a}")]),
        ("UPDATE truxe.sessions SET last_used_at = now()".into(), vec![]),
        ("UPDATE truxe.sessions SET revoked_at = now(), revoked_reason = 'logout'".into(),
         vec![format!("session.revoked|session|00000000-0000-0000-0000-0000000000e1|{a}")]),
        ("DELETE FROM truxe.organizations WHERE slug = 'kid'".into(),
         vec![format!("org.deleted|organization|00000000-0000-0000-0000-00000000000b|{a}")]),
        (format!("DELETE FROM truxe.users WHERE id = '{u}'"), vec![format!("user.deleted|user|{u}|{a}")]),
    ];
    for (sql, expected) in steps {
        let before = last_id(&mut c);
        c.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(rows_since(&mut c, before), expected, "after: {sql}");
    }
    assert_eq!(
        details(&mut c, "user.status_changed"),
        r#"{"new_status": "active", "old_status": "pending"}"#
    );
    assert_eq!(
        details(&mut c, "membership.role_changed"),
        r#"{"new_role": "admin", "old_role": "member"}"#
    );
    assert_eq!(
        details(&mut c, "org.updated"),
        r#"{"name": {"new": "Kid 2", "old": "Kid"}}"#
    );
    assert_eq!(
        details(&mut c, "org.parent_changed"),
        r#"{"new_parent_org_id": "00000000-0000-0000-0000-00000000000a", "old_parent_org_id": null}"#
    );
    assert_eq!(
        details(&mut c, "session.revoked"),
        format!(r#"{{"reason": "logout", "user_id": "{USER}"}}"#)
    );
    let ctx: (String, String, String) = c
        .query_one(
            "SELECT host(ip), user_agent, request_id::text FROM truxe.audit_logs WHERE action = 'user.deleted'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        ctx,
        (
            "203.0.113.7".into(),
            "test-agent/1.0".into(),
            "11111111-2222-3333-4444-555555555555".into()
        )
    );
    // the deleted user's rows keep their ids (no foreign keys)
    let kept: i64 = c
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE target_id = $1",
            &[&USER],
        )
        .unwrap()
        .get(0);
    // created, status_changed, invited, joined, role_changed, removed, deleted
    assert_eq!(kept, 7, "audit rows of the deleted user stay");
}

#[test]
fn garbage_context_is_ignored_never_an_error() {
    let db = server().fresh_db(true);
    let mut c = db.superuser();
    c.batch_execute(
        "SET app.current_user_id = 'not-a-uuid'; SET app.ip = '999.1.1.1';
         SET app.request_id = 'nope';
         INSERT INTO truxe.users (email) VALUES ('g@x.example');",
    )
    .unwrap();
    let row: (Option<String>, Option<String>, Option<String>) = c
        .query_one("SELECT actor_user_id::text, host(ip), request_id::text FROM truxe.audit_logs WHERE action = 'user.created'", &[])
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(row, (None, None, None));
}

#[test]
fn audit_log_is_append_only_for_every_role() {
    let db = server().fresh_db(true);
    let mut c = db.superuser();
    c.batch_execute("INSERT INTO truxe.users (email) VALUES ('a@x.example')")
        .unwrap();
    for sql in [
        "UPDATE truxe.audit_logs SET details = '{}'",
        "DELETE FROM truxe.audit_logs",
        "TRUNCATE truxe.audit_logs",
    ] {
        assert_eq!(sqlstate(c.execute(sql, &[])), "55000", "superuser: {sql}");
        assert_eq!(
            sqlstate(db.service().execute(sql, &[])),
            if sql.starts_with("TRUNCATE") {
                "42501"
            } else {
                "55000"
            },
            "service: {sql}"
        );
    }
    // truxe.audit_purge (what purge_audit_logs sets on a Citus cluster, for the shards)
    // opens nothing on a single node, for the owner either
    for sql in [
        "UPDATE truxe.audit_logs SET details = '{}'",
        "DELETE FROM truxe.audit_logs",
    ] {
        let mut t = c.transaction().unwrap();
        t.batch_execute("SET LOCAL truxe.audit_purge = on").unwrap();
        assert_eq!(
            sqlstate(t.execute(sql, &[])),
            "55000",
            "superuser with truxe.audit_purge: {sql}"
        );
        drop(t);
        let mut s = db.service();
        let mut t = s.transaction().unwrap();
        t.batch_execute("SET LOCAL truxe.audit_purge = on").unwrap();
        assert_eq!(
            sqlstate(t.execute(sql, &[])),
            "55000",
            "service with truxe.audit_purge: {sql}"
        );
    }
    // not even as a replica (pg_restore's mode): the guard is ENABLE ALWAYS
    c.batch_execute("SET session_replication_role = replica")
        .unwrap();
    assert_eq!(
        sqlstate(c.execute("DELETE FROM truxe.audit_logs", &[])),
        "55000"
    );
    assert_eq!(
        sqlstate(
            db.service()
                .query("SELECT truxe.purge_audit_logs('1 day')", &[])
        ),
        "22023"
    );
    assert_eq!(
        db.service()
            .query_one("SELECT truxe.purge_audit_logs('90 days')", &[])
            .unwrap()
            .get::<_, i64>(0),
        0
    );
}
