//! Organisation and membership functions through real connections: the last-owner race.
use crate::harness::server;
use std::sync::{Arc, Barrier};
use std::thread;

#[test]
fn concurrent_removal_of_the_last_two_owners_leaves_one() {
    let db = server().fresh_db(true);
    let (a, b) = (
        "00000000-0000-0000-0000-0000000000c1",
        "00000000-0000-0000-0000-0000000000c2",
    );
    let mut s = db.superuser();
    s.batch_execute(&format!(
        "INSERT INTO truxe.users (id, email, status) VALUES ('{a}', 'a@x.example', 'active'), ('{b}', 'b@x.example', 'active');"
    ))
    .unwrap();
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
                .unwrap_or_else(|e| e.code().map(|c| c.code().to_string()).unwrap_or_default())
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
