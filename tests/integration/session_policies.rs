//! Session policies through real logins: a family's hard end (truxe.session_max_lifetime),
//! the idle timeout, the per-user cap (also under concurrent creates) and
//! revoke_other_sessions. The settings are set per database (ALTER DATABASE … SET, as a
//! superuser), which a NOSUPERUSER service login then runs under; timestamps are moved back
//! as the superuser instead of waiting.
use crate::harness::{active_user, server, sqlstate, TestDb};
use postgres::{Client, GenericClient};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// A database with two active users; their ids.
fn two_users() -> (TestDb, String, String) {
    let db = server().fresh_db(true);
    let mut su = db.superuser();
    let ada = active_user(&mut su, "ada@x.example");
    let bob = active_user(&mut su, "bob@x.example");
    (db, ada, bob)
}

/// Sets `name = value` for every later connection to `db` (as its superuser).
fn set_for_db(db: &TestDb, name: &str, value: &str) {
    db.superuser()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET {name} = '{value}'",
            db.name
        ))
        .unwrap();
}

/// create_session as `c`: (jti, refresh_jti) as text.
fn create(c: &mut impl GenericClient, user: &str, ttl: &str) -> (String, String) {
    let r = c
        .query_one(
            "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid, NULL, $2::text::interval)",
            &[&user, &ttl],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// refresh_session: Some((jti, refresh_jti)) or None for no row.
fn refresh(c: &mut impl GenericClient, refresh_jti: &str, ttl: &str) -> Option<(String, String)> {
    c.query(
        "SELECT jti::text, refresh_jti::text FROM truxe.refresh_session($1::text::uuid, $2::text::interval)",
        &[&refresh_jti, &ttl],
    )
    .unwrap()
    .first()
    .map(|r| (r.get(0), r.get(1)))
}

/// validate_session: the seconds from now to the expiry it answers, or None for no row.
fn validate(c: &mut impl GenericClient, jti: &str) -> Option<f64> {
    c.query(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM truxe.validate_session($1::text::uuid)",
        &[&jti],
    )
    .unwrap()
    .first()
    .map(|r| r.get(0))
}

/// The row of the session holding this access token, read as superuser: (id, family_id,
/// revoked_reason).
fn row(su: &mut Client, jti: &str) -> (String, String, Option<String>) {
    let r = su
        .query_one(
            "SELECT id::text, family_id::text, revoked_reason FROM truxe.sessions
              WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&jti],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Runs `sql` as superuser on the session of this access token (`$1` is its jti).
fn on_session(su: &mut Client, jti: &str, set: &str) {
    let n = su
        .execute(
            &format!(
                "UPDATE truxe.sessions SET {set} WHERE jti_hash = sha256(uuid_send($1::text::uuid))"
            ),
            &[&jti],
        )
        .unwrap();
    assert_eq!(n, 1, "{set}");
}

fn live_sessions(su: &mut Client, user: &str) -> i64 {
    su.query_one(
        "SELECT count(*) FROM truxe.sessions
          WHERE user_id = $1::text::uuid AND revoked_at IS NULL AND expires_at > now()",
        &[&user],
    )
    .unwrap()
    .get(0)
}

/// Waits (up to 20 s) until `n` backends of this database wait for a lock.
fn wait_for_lock_waiters(su: &mut Client, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} waiting for a lock, not {n}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A family refreshed again and again still ends at its first login plus
/// truxe.session_max_lifetime (default 90 days): the instant rides on every row of the
/// family, each rotation's expiry is cut to it, and past it refresh, validate and
/// authenticate give no row (0.1: every refresh started a new ttl, so a family never ended).
#[test]
fn a_family_refreshed_past_the_max_lifetime_stops() {
    let (db, ada, _) = two_users();
    let mut su = db.superuser();
    let mut svc = db.service();
    let (a, ra) = create(&mut svc, &ada, "1 hour");
    let (b, rb) = refresh(&mut svc, &ra, "1 hour").expect("a rotation");
    let family = row(&mut su, &b).1;
    let first_login: bool = su
        .query_one(
            "SELECT count(DISTINCT s.family_created_at) = 1
                    AND min(s.family_created_at) = (SELECT created_at FROM truxe.sessions
                                                      WHERE jti_hash = sha256(uuid_send($1::text::uuid)))
               FROM truxe.sessions s WHERE s.family_id = $2::text::uuid",
            &[&a, &family],
        )
        .unwrap()
        .get(0);
    assert!(first_login, "every row of the family keeps the first login");

    // the family began 90 days less 30 minutes ago: 30 minutes left, whatever the ttl
    su.execute(
        "UPDATE truxe.sessions
            SET family_created_at = now() - interval '90 days' + interval '30 minutes'
          WHERE family_id = $1::text::uuid",
        &[&family],
    )
    .unwrap();
    let left = validate(&mut svc, &b).expect("still within the lifetime");
    assert!(
        left > 1700.0 && left <= 1800.0,
        "validate answers the family's end: {left}"
    );
    let (c, rc) = refresh(&mut svc, &rb, "1 hour").expect("refreshed within the lifetime");
    let expiry: f64 = su
        .query_one(
            "SELECT extract(epoch FROM expires_at - now())::float8 FROM truxe.sessions
              WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&c],
        )
        .unwrap()
        .get(0);
    assert!(
        expiry <= 1800.0,
        "the new row's expiry is cut to the family's end: {expiry}"
    );

    // … and 31 minutes later the family is over, though the row's own expiry is not
    su.execute(
        "UPDATE truxe.sessions SET family_created_at = family_created_at - interval '31 minutes',
                                   expires_at = now() + interval '1 hour'
          WHERE family_id = $1::text::uuid",
        &[&family],
    )
    .unwrap();
    let rows_before: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.sessions WHERE family_id = $1::text::uuid",
            &[&family],
        )
        .unwrap()
        .get(0);
    assert_eq!(validate(&mut svc, &c), None, "validate: no row");
    assert_eq!(refresh(&mut svc, &rc, "1 hour"), None, "refresh: no row");
    let mut tenant = db.authenticated();
    assert!(
        tenant
            .query("SELECT 1 FROM truxe.authenticate($1)", &[&c])
            .unwrap()
            .is_empty(),
        "authenticate: no row"
    );
    let rows_after: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.sessions WHERE family_id = $1::text::uuid",
            &[&family],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows_after, rows_before, "no new session of the family");
    assert_eq!(
        row(&mut su, &c).2,
        None,
        "not revoked: over, as an expired one is"
    );
}

/// A shorter lifetime set for the database applies to the NOSUPERUSER service login (which
/// cannot change it: 42501): a new session expires at the lifetime even with a longer ttl,
/// and is refused once it has passed.
#[test]
fn a_per_database_max_lifetime_caps_new_sessions_and_cannot_be_loosened() {
    let (db, ada, _) = two_users();
    set_for_db(&db, "truxe.session_max_lifetime", "1h");
    let mut svc = db.service();
    let (a, _) = create(&mut svc, &ada, "7 days");
    // (the library is loaded now: before, a SET would only make a placeholder, which
    // PostgreSQL drops with a warning when the library defines the setting)
    assert_eq!(
        sqlstate(svc.batch_execute("SET truxe.session_max_lifetime = '10d'")),
        "42501"
    );
    assert_eq!(
        sqlstate(svc.batch_execute("SET truxe.max_sessions_per_user = 0")),
        "42501"
    );
    assert_eq!(
        sqlstate(svc.batch_execute("SET truxe.session_idle_timeout = 0")),
        "42501"
    );
    assert_eq!(
        svc.query_one("SHOW truxe.session_max_lifetime", &[])
            .unwrap()
            .get::<_, String>(0),
        "1h"
    );
    let left = validate(&mut svc, &a).unwrap();
    assert!(left > 3500.0 && left <= 3600.0, "{left}");
    let mut su = db.superuser();
    on_session(
        &mut su,
        &a,
        "family_created_at = family_created_at - interval '61 minutes'",
    );
    assert_eq!(validate(&mut svc, &a), None);
}

/// truxe.session_idle_timeout: off by default (a session unused for 30 days validates);
/// with 10 minutes set for the database, a session unused for 11 minutes gives no row from
/// validate, authenticate and refresh, one unused for 9 minutes validates and the use is
/// recorded. With a 2-minute timeout a use is recorded after 30 s (a quarter of it), not a
/// minute.
#[test]
fn a_session_unused_longer_than_the_idle_timeout_is_invalid() {
    let (db, ada, _) = two_users();
    let mut su = db.superuser();
    let mut svc = db.service();
    let (old, _) = create(&mut svc, &ada, "90 days");
    on_session(&mut su, &old, "last_used_at = now() - interval '30 days'");
    assert!(
        validate(&mut svc, &old).is_some(),
        "no idle timeout by default"
    );

    set_for_db(&db, "truxe.session_idle_timeout", "10min");
    let mut svc = db.service();
    let (idle, r_idle) = create(&mut svc, &ada, "1 day");
    let (recent, _) = create(&mut svc, &ada, "1 day");
    on_session(
        &mut su,
        &idle,
        "last_used_at = now() - interval '11 minutes'",
    );
    on_session(
        &mut su,
        &recent,
        "last_used_at = now() - interval '9 minutes'",
    );
    assert_eq!(validate(&mut svc, &idle), None, "validate: no row");
    let mut tenant = db.authenticated();
    assert!(tenant
        .query("SELECT 1 FROM truxe.authenticate($1)", &[&idle])
        .unwrap()
        .is_empty());
    assert_eq!(refresh(&mut svc, &r_idle, "1 day"), None, "refresh: no row");
    assert!(
        validate(&mut svc, &recent).is_some(),
        "9 minutes: still valid"
    );
    let touched: bool = su
        .query_one(
            "SELECT last_used_at > now() - interval '1 minute' FROM truxe.sessions
              WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&recent],
        )
        .unwrap()
        .get(0);
    assert!(touched, "the use was recorded");

    set_for_db(&db, "truxe.session_idle_timeout", "2min");
    let mut svc = db.service();
    let (s, _) = create(&mut svc, &ada, "1 day");
    on_session(&mut su, &s, "last_used_at = now() - interval '40 seconds'");
    assert!(validate(&mut svc, &s).is_some());
    let age: f64 = su
        .query_one(
            "SELECT extract(epoch FROM now() - last_used_at)::float8 FROM truxe.sessions
              WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&s],
        )
        .unwrap()
        .get(0);
    assert!(
        age < 5.0,
        "recorded after 40 s with a 2-minute timeout: {age}"
    );
}

/// truxe.max_sessions_per_user = 3: the 4th create_session revokes the least recently used
/// live session (reason session_limit, audited as session.revoked); another user's
/// sessions are untouched.
#[test]
fn the_fourth_session_revokes_the_least_recently_used() {
    let (db, ada, bob) = two_users();
    set_for_db(&db, "truxe.max_sessions_per_user", "3");
    let mut su = db.superuser();
    let mut svc = db.service();
    let (bobs, _) = create(&mut svc, &bob, "1 day");
    let (a, _) = create(&mut svc, &ada, "1 day");
    let (b, _) = create(&mut svc, &ada, "1 day");
    let (c, _) = create(&mut svc, &ada, "1 day");
    on_session(&mut su, &a, "last_used_at = now() - interval '5 minutes'");
    on_session(&mut su, &b, "last_used_at = now() - interval '10 minutes'");
    on_session(&mut su, &c, "last_used_at = now() - interval '1 minute'");
    assert_eq!(live_sessions(&mut su, &ada), 3);

    let (d, _) = create(&mut svc, &ada, "1 day");
    assert_eq!(row(&mut su, &b).2.as_deref(), Some("session_limit"));
    assert_eq!(validate(&mut svc, &b), None);
    for kept in [&a, &c, &d] {
        assert!(validate(&mut svc, kept).is_some());
    }
    assert_eq!(live_sessions(&mut su, &ada), 3);
    assert!(
        validate(&mut svc, &bobs).is_some(),
        "another user's session"
    );
    let b_id = row(&mut su, &b).0;
    let audited: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE action = 'session.revoked' AND target_id = $1
                AND details ->> 'reason' = 'session_limit'",
            &[&b_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
}

/// Two creates for one user at the limit must not both leave the user above it. One
/// transaction creates a session and stays open; four more creates start meanwhile and wait
/// for it (the user's row is locked); after its commit each counts what the earlier ones
/// added, and the user ends with exactly 3 live sessions. (Without the lock, each waiter
/// would count the snapshot before the first commit and four sessions would survive.)
#[test]
fn concurrent_creates_at_the_limit_leave_exactly_the_limit() {
    let (db, ada, _) = two_users();
    set_for_db(&db, "truxe.max_sessions_per_user", "3");
    let mut su = db.superuser();
    let mut svc = db.service();
    for _ in 0..3 {
        create(&mut svc, &ada, "1 day");
    }
    let mut first = db.service();
    first.batch_execute("BEGIN").unwrap();
    create(&mut first, &ada, "1 day");
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let (name, user) = (db.name.clone(), ada.clone());
            thread::spawn(move || {
                let mut c = TestDb { name }.service();
                create(&mut c, &user, "1 day")
            })
        })
        .collect();
    // all four are waiting for the first transaction's lock
    wait_for_lock_waiters(&mut su, 4);
    first.batch_execute("COMMIT").unwrap();
    for w in waiters {
        w.join().unwrap();
    }
    assert_eq!(live_sessions(&mut su, &ada), 3);
    let limited: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.sessions
              WHERE user_id = $1::text::uuid AND revoked_reason = 'session_limit'",
            &[&ada],
        )
        .unwrap()
        .get(0);
    assert_eq!(limited, 5, "3 + 5 created, 3 live");

    // and eight connections creating at once
    let start = Arc::new(Barrier::new(8));
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (name, user, start) = (db.name.clone(), ada.clone(), start.clone());
            thread::spawn(move || {
                let mut c = TestDb { name }.service();
                start.wait();
                create(&mut c, &user, "1 day")
            })
        })
        .collect();
    for r in racers {
        r.join().unwrap();
    }
    assert_eq!(live_sessions(&mut su, &ada), 3);
}

/// revoke_other_sessions(jti): as service_account, every other live session of the jti's
/// user (reason logout_others), not the given one, not another user's; an unknown jti or
/// NULL revokes nothing. As authenticated, only for the session authenticate() verified in
/// the transaction: another of one's own sessions, another user's, or no verified session
/// is 42501; PUBLIC may not call it at all.
#[test]
fn revoke_other_sessions_signs_out_every_other_device() {
    let (db, ada, bob) = two_users();
    let mut su = db.superuser();
    let mut svc = db.service();
    let (a, _) = create(&mut svc, &ada, "1 day");
    let (b, _) = create(&mut svc, &ada, "1 day");
    let (c, _) = create(&mut svc, &ada, "1 day");
    let (bobs, _) = create(&mut svc, &bob, "1 day");
    let revoke = |c: &mut Client, jti: Option<&str>| -> Result<i32, postgres::Error> {
        c.query_one(
            "SELECT truxe.revoke_other_sessions($1::text::uuid)",
            &[&jti],
        )
        .map(|r| r.get(0))
    };
    assert_eq!(revoke(&mut svc, Some(&a)).unwrap(), 2);
    assert!(validate(&mut svc, &a).is_some(), "the given session stays");
    for gone in [&b, &c] {
        assert_eq!(row(&mut su, gone).2.as_deref(), Some("logout_others"));
    }
    assert!(
        validate(&mut svc, &bobs).is_some(),
        "another user's session stays"
    );
    assert_eq!(revoke(&mut svc, Some(&a)).unwrap(), 0, "nothing left");
    assert_eq!(
        revoke(&mut svc, Some("6d1c2a52-0000-4000-8000-000000000001")).unwrap(),
        0
    );
    assert_eq!(revoke(&mut svc, Some(&b)).unwrap(), 0, "a revoked session");
    assert_eq!(revoke(&mut svc, None).unwrap(), 0);

    // authenticated, through the session it verified
    let (d, _) = create(&mut svc, &ada, "1 day");
    let mut tenant = db.authenticated();
    let mut t = tenant.transaction().unwrap();
    t.query("SELECT 1 FROM truxe.authenticate($1)", &[&d])
        .unwrap();
    fn denied(t: &mut postgres::Transaction<'_>, jti: &str) {
        let mut sp = t.transaction().unwrap();
        let r = sp.query_one(
            "SELECT truxe.revoke_other_sessions($1::text::uuid)",
            &[&jti],
        );
        assert_eq!(sqlstate(r), "42501", "{jti}");
    }
    denied(&mut t, &a);
    denied(&mut t, &bobs);
    denied(&mut t, "6d1c2a52-0000-4000-8000-000000000001");
    let n: i32 = t
        .query_one("SELECT truxe.revoke_other_sessions($1::text::uuid)", &[&d])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "a");
    t.commit().unwrap();
    assert_eq!(row(&mut su, &a).2.as_deref(), Some("logout_others"));
    assert!(validate(&mut svc, &d).is_some());
    assert!(validate(&mut svc, &bobs).is_some());

    // acting through a setting, not a verified session: 42501
    let mut acting = db.acting_as(&ada);
    assert_eq!(sqlstate(revoke(&mut acting, Some(&d))), "42501");
    assert_eq!(sqlstate(revoke(&mut db.nobody(), Some(&d))), "42501");
    assert!(validate(&mut svc, &d).is_some());
}

/// Under SERIALIZABLE, two creates that each count the user's sessions in a snapshot
/// taken before the other's commit conflict: the second fails with 40001 instead of leaving
/// the user above the limit. (REPEATABLE READ has no such check: docs/reference.md,
/// "Session policies".)
#[test]
fn serializable_creates_at_the_limit_conflict_instead_of_exceeding_it() {
    let (db, ada, _) = two_users();
    set_for_db(&db, "truxe.max_sessions_per_user", "3");
    let mut su = db.superuser();
    let mut svc = db.service();
    for _ in 0..2 {
        create(&mut svc, &ada, "1 day");
    }
    // both snapshots are taken before either creates
    let mut first = db.service();
    let mut second = db.service();
    for c in [&mut first, &mut second] {
        c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1")
            .unwrap();
    }
    create(&mut first, &ada, "1 day");
    let user = ada.clone();
    let waiter = thread::spawn(move || {
        let created = second.query(
            "SELECT 1 FROM truxe.create_session($1::text::uuid, NULL, '1 day')",
            &[&user],
        );
        sqlstate(created.and_then(|_| second.batch_execute("COMMIT")))
    });
    wait_for_lock_waiters(&mut su, 1);
    first.batch_execute("COMMIT").unwrap();
    assert_eq!(waiter.join().unwrap(), "40001");
    assert_eq!(live_sessions(&mut su, &ada), 3);
}
