//! The organisation hierarchy under concurrency, through two real connections.
use crate::harness::{server, sqlstate, TestDb};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

fn two_roots(db: &TestDb) -> (String, String) {
    let mut c = db.superuser();
    let x: String = c
        .query_one(
            "INSERT INTO truxe.organizations (slug, name) VALUES ('x-org', 'X') RETURNING id::text",
            &[],
        )
        .unwrap()
        .get(0);
    let y: String = c
        .query_one(
            "INSERT INTO truxe.organizations (slug, name) VALUES ('y-org', 'Y') RETURNING id::text",
            &[],
        )
        .unwrap()
        .get(0);
    (x, y)
}

/// T1 sets X under Y and stays open; T2 sets Y under X (it must wait); T1 commits; T2 must
/// fail with 23514 — not deadlock, not succeed.
fn two_edge_race(isolation: &'static str, expected: &str) {
    let db = server().fresh_db(true);
    let (x, y) = two_roots(&db);
    let mut t1 = db.superuser();
    t1.batch_execute(&format!("BEGIN ISOLATION LEVEL {isolation}"))
        .unwrap();
    t1.execute(
        "UPDATE truxe.organizations SET parent_org_id = $1::text::uuid WHERE id = $2::text::uuid",
        &[&y, &x],
    )
    .unwrap();

    let (done, result) = mpsc::channel();
    let name = db.name.clone();
    let (x2, y2) = (x.clone(), y.clone());
    let t2 = thread::spawn(move || {
        let mut c = server().client(&name, "postgres");
        c.batch_execute(&format!("BEGIN ISOLATION LEVEL {isolation}; SELECT 1"))
            .unwrap();
        let r = c.execute(
            "UPDATE truxe.organizations SET parent_org_id = $1::text::uuid WHERE id = $2::text::uuid",
            &[&x2, &y2],
        );
        let outcome = match r {
            Ok(n) => c
                .batch_execute("COMMIT")
                .map(|_| format!("committed {n}"))
                .unwrap_or_else(|e| e.code().map(|c| c.code().to_string()).unwrap_or_default()),
            Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_default(),
        };
        done.send(outcome).unwrap();
    });
    // T2 must be blocked behind T1's hierarchy lock, not finished
    assert!(
        result.recv_timeout(Duration::from_millis(500)).is_err(),
        "T2 did not wait for T1"
    );
    t1.batch_execute("COMMIT").unwrap();
    let outcome = result
        .recv_timeout(Duration::from_secs(20))
        .expect("T2 finished");
    t2.join().unwrap();
    assert_eq!(
        outcome, expected,
        "second edge of the cycle under {isolation}"
    );
    let cycle: i64 = db
        .superuser()
        .query_one(
            "SELECT count(*) FROM truxe.organizations WHERE parent_org_id IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cycle, 1, "exactly one edge committed");
}

#[test]
fn two_edge_cycle_race_fails_with_23514_under_read_committed() {
    two_edge_race("READ COMMITTED", "23514");
}

#[test]
fn two_edge_cycle_race_fails_with_40001_under_repeatable_read() {
    two_edge_race("REPEATABLE READ", "40001");
}

#[test]
fn reparenting_as_authenticated_needs_admin_on_both_orgs() {
    let db = server().fresh_db(true);
    let mut s = db.superuser();
    let (x, y) = two_roots(&db);
    let me = "00000000-0000-0000-0000-0000000000f1";
    s.execute("INSERT INTO truxe.users (id, email, status) VALUES ($1::text::uuid, 'me@x.example', 'active')", &[&me])
        .unwrap();
    s.execute(
        "INSERT INTO truxe.memberships (org_id, user_id, role, joined_at) VALUES ($1::text::uuid, $2::text::uuid, 'owner', now())",
        &[&x, &me],
    )
    .unwrap();
    let mut c = db.authenticated();
    c.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&me],
    )
    .unwrap();
    // owner of X, stranger to Y: grafting X under Y is refused
    assert_eq!(
        sqlstate(c.execute("UPDATE truxe.organizations SET parent_org_id = $1::text::uuid WHERE id = $2::text::uuid", &[&y, &x])),
        "42501"
    );
    // admin of Y too: allowed
    s.execute(
        "INSERT INTO truxe.memberships (org_id, user_id, role, joined_at) VALUES ($1::text::uuid, $2::text::uuid, 'admin', now())",
        &[&y, &me],
    )
    .unwrap();
    assert_eq!(
        c.execute("UPDATE truxe.organizations SET parent_org_id = $1::text::uuid WHERE id = $2::text::uuid", &[&y, &x])
            .unwrap(),
        1
    );
}
