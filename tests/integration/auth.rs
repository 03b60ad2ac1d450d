//! Auth flows (docs/reference.md, "Magic links" to "Cleanup") through real connections as service_account: the SQLSTATE a client
//! sees, failed attempts that persist, races, and hostile tokens.
use crate::harness::{
    assert_one_verified, issue_link as issue, server, sqlstate, verify_link as verify,
    wrong_secret, TestDb,
};
use postgres::Client;
use rand::{Rng, RngCore};
use std::sync::{Arc, Barrier};
use std::thread;

/// `n` threads, each with its own service_account connection, start together and run `f`.
fn race<T: Send + 'static>(
    db: &TestDb,
    n: usize,
    f: impl Fn(&mut Client) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    (0..n)
        .map(|_| {
            let (barrier, f, name) = (barrier.clone(), f.clone(), db.name.clone());
            thread::spawn(move || {
                let mut c = server().client(&name, crate::harness::SERVICE_LOGIN);
                barrier.wait();
                f(&mut c)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn issuance_limit_reaches_the_client_as_tx429() {
    let db = server().fresh_db(true);
    let mut c = db.service();
    for _ in 0..5 {
        issue(&mut c, "limit@example.com");
    }
    // raised by the function's own C entry point: TX429 at ERROR with its message
    let e = c
        .query(
            "SELECT * FROM truxe.issue_magic_link('LIMIT@example.com')",
            &[],
        )
        .unwrap_err();
    let db_error = e.as_db_error().expect("a server error");
    assert_eq!(db_error.code().code(), "TX429", "{e}");
    assert_eq!(db_error.severity(), "ERROR");
    assert_eq!(
        db_error.message(),
        "too many magic links for this e-mail address; try again in 15 minutes"
    );
    assert_eq!(
        sqlstate(c.query("SELECT * FROM truxe.issue_magic_link('nope')", &[])),
        "22023"
    );
    // the connection is fine afterwards
    issue(&mut c, "other@example.com");
}

#[test]
fn e_mails_compare_case_insensitively_whatever_the_search_path() {
    let db = server().fresh_db(true);
    let mut c = db.service();
    c.execute(
        "INSERT INTO truxe.users (email, status) VALUES ('Case@Example.com', 'active')",
        &[],
    )
    .unwrap();
    // citext's schema (public) off the path: a plain `=` would fall back to text's
    c.batch_execute("SET search_path = pg_catalog").unwrap();
    let token: String = c
        .query_one(
            "SELECT token FROM truxe.issue_magic_link('case@EXAMPLE.COM'::public.citext)",
            &[],
        )
        .unwrap()
        .get(0);
    let user: (String, i64) = c
        .query_one(
            "SELECT v.status || ':' || (v.user_id = u.id)::text, (SELECT count(*) FROM truxe.users)
               FROM truxe.verify_magic_link($1) v, truxe.users u",
            &[&token],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        user,
        ("verified:true".to_string(), 1),
        "the existing user, not a new one"
    );
    for _ in 0..4 {
        c.query(
            "SELECT * FROM truxe.issue_magic_link('CASE@example.com'::public.citext)",
            &[],
        )
        .unwrap();
    }
    assert_eq!(
        sqlstate(c.query(
            "SELECT * FROM truxe.issue_magic_link('case@example.COM'::public.citext)",
            &[]
        )),
        "TX429"
    );
}

#[test]
fn five_failed_verifications_in_separate_transactions_lock_the_challenge() {
    let db = server().fresh_db(true);
    let mut c = db.service();
    let token = issue(&mut c, "lock@example.com");
    let wrong = wrong_secret(&token);
    for _ in 0..5 {
        // autocommit: each call is its own transaction, and its increment persists
        assert_eq!(verify(&mut db.service(), &wrong), "invalid");
    }
    let attempts: i32 = c
        .query_one("SELECT attempts FROM truxe.magic_link_challenges", &[])
        .unwrap()
        .get(0);
    assert_eq!(attempts, 5);
    assert_eq!(verify(&mut c, &token), "locked");
    // the limit is stated once per layer and they agree: the table's CHECK allows no sixth
    // attempt, and metrics() counts this link as locked
    assert_eq!(
        sqlstate(db.superuser().execute(
            "UPDATE truxe.magic_link_challenges SET attempts = attempts + 1",
            &[]
        )),
        "23514"
    );
    let locked: f64 = c
        .query_one(
            "SELECT value FROM truxe.metrics() WHERE metric = 'magic_links_locked_last_hour'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(locked, 1.0);
}

#[test]
fn eight_concurrent_verifications_of_one_token_give_one_verified() {
    let db = server().fresh_db(true);
    let token = issue(&mut db.service(), "race@example.com");
    let statuses = race(&db, 8, move |c| verify(c, &token));
    assert_one_verified(&statuses);
}

#[test]
fn thousands_of_random_tokens_are_each_one_invalid_row() {
    let db = server().fresh_db(true);
    let mut c = db.service();
    let real = issue(&mut c, "fuzz@example.com");
    let mut rng = rand::rng();
    let mut inputs: Vec<String> = Vec::new();
    for i in 0..3000 {
        let s = match i % 6 {
            // random printable and non-ASCII characters of random length
            0 => (0..rng.random_range(0..200))
                .map(|_| rng.random_range(1u32..0x2FFF))
                .filter_map(char::from_u32)
                .collect(),
            // token-shaped: the real token with one character of its id or separator changed
            // (a changed secret would rightly count an attempt on the real challenge)
            1 => {
                let mut t: Vec<char> = real.chars().collect();
                let at = rng.random_range(0..33);
                t[at] = ['0', 'z', '.', '-', '_', 'é', 'A'][rng.random_range(0..7)];
                let t: String = t.into_iter().collect();
                if t == real {
                    format!("{t}x")
                } else {
                    t
                }
            }
            // random hex id and random secret: well-formed, unknown challenge
            2 => {
                let mut b = [0u8; 48];
                rng.fill_bytes(&mut b);
                format!(
                    "{}.{}",
                    b[..16]
                        .iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<String>(),
                    &real[33..]
                )
            }
            3 => "a".repeat(rng.random_range(70..80)),
            4 => format!("{}.", &real[..32]),
            _ => String::new(),
        };
        inputs.push(s.replace('\0', ""));
    }
    inputs.push("x".repeat(1 << 20));
    for sql in [
        "SELECT t.i, count(*), min(v.status), max(v.status) FROM unnest($1::text[]) WITH ORDINALITY t(tok, i),
           LATERAL truxe.verify_magic_link(t.tok) v GROUP BY t.i",
        "SELECT t.i, count(*), min(v.status), max(v.status) FROM unnest($1::text[]) WITH ORDINALITY t(tok, i),
           LATERAL truxe.inspect_magic_link(t.tok) v GROUP BY t.i",
    ] {
        let rows = c.query(sql, &[&inputs]).unwrap();
        assert_eq!(rows.len(), inputs.len());
        for r in rows {
            let (n, lo, hi): (i64, String, String) = (r.get(1), r.get(2), r.get(3));
            assert_eq!((n, lo.as_str(), hi.as_str()), (1, "invalid", "invalid"));
        }
    }
    // and the real token still works: the garbage neither used up nor locked its link
    assert_eq!(
        verify(&mut c, &real),
        "verified",
        "the real token after the garbage"
    );
}

#[test]
fn session_lifecycle_rotation_grace_and_reuse() {
    let db = server().fresh_db(true);
    let mut s = db.service();
    let user: String = s
        .query_one("INSERT INTO truxe.users (email, status) VALUES ('s@example.com', 'active') RETURNING id::text", &[])
        .unwrap()
        .get(0);
    s.execute(
        "INSERT INTO truxe.users (email) VALUES ('pending@example.com')",
        &[],
    )
    .unwrap();
    assert_eq!(sqlstate(s.query("SELECT * FROM truxe.create_session((SELECT id FROM truxe.users WHERE email = 'pending@example.com'))", &[])), "42501");
    assert_eq!(
        sqlstate(s.query("SELECT * FROM truxe.create_session(gen_random_uuid())", &[])),
        "P0002"
    );
    assert_eq!(
        sqlstate(s.query(
            "SELECT * FROM truxe.create_session($1::text::uuid, gen_random_uuid())",
            &[&user]
        )),
        "P0002"
    );
    let row = s
        .query_one("SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid, NULL, '1 hour')", &[&user])
        .unwrap();
    let (jti, refresh): (String, String) = (row.get(0), row.get(1));

    // authenticated may validate (no context needed), not create
    let mut a = db.authenticated();
    let v = a
        .query(
            "SELECT user_id::text FROM truxe.validate_session($1::text::uuid)",
            &[&jti],
        )
        .unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].get::<_, String>(0), user);
    assert_eq!(
        sqlstate(a.query(
            "SELECT * FROM truxe.create_session($1::text::uuid)",
            &[&user]
        )),
        "42501"
    );
    assert!(a
        .query(
            "SELECT * FROM truxe.validate_session(gen_random_uuid())",
            &[]
        )
        .unwrap()
        .is_empty());

    // last_used_at moves at most once a minute
    // rows are found by the token's hash: the table holds no token
    s.execute("UPDATE truxe.sessions SET last_used_at = now() - interval '5 minutes' WHERE jti_hash = sha256(uuid_send($1::text::uuid))", &[&jti]).unwrap();
    s.query(
        "SELECT * FROM truxe.validate_session($1::text::uuid)",
        &[&jti],
    )
    .unwrap();
    let moved: bool = s.query_one("SELECT last_used_at > now() - interval '1 minute' FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))", &[&jti]).unwrap().get(0);
    assert!(moved);

    // rotation
    let r1 = s
        .query_one(
            "SELECT jti::text, refresh_jti::text FROM truxe.refresh_session($1::text::uuid)",
            &[&refresh],
        )
        .unwrap();
    let (jti2, refresh2): (String, String) = (r1.get(0), r1.get(1));
    assert_ne!(jti2, jti);
    assert!(
        s.query(
            "SELECT * FROM truxe.validate_session($1::text::uuid)",
            &[&jti]
        )
        .unwrap()
        .is_empty(),
        "rotated session is revoked"
    );
    let reason: String = s
        .query_one(
            "SELECT revoked_reason FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&jti],
        )
        .unwrap()
        .get(0);
    assert_eq!(reason, "rotated");
    // the second tab, within the grace period, stays signed in: 0.1 handed it the first
    // tab's session again; 0.2 keeps no token to hand out twice, so it gets a session of
    // its own in the same family, and the first tab's session stays live
    let again: String = s
        .query_one(
            "SELECT jti::text FROM truxe.refresh_session($1::text::uuid)",
            &[&refresh],
        )
        .unwrap()
        .get(0);
    assert_ne!(again, jti2);
    assert_ne!(again, jti);
    let families: i64 = s
        .query_one(
            "SELECT count(DISTINCT family_id) FROM truxe.sessions
              WHERE jti_hash IN (sha256(uuid_send($1::text::uuid)), sha256(uuid_send($2::text::uuid)))",
            &[&again, &jti2],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        families, 1,
        "the second tab's session is of the same family"
    );
    for j in [&again, &jti2] {
        assert_eq!(
            s.query("SELECT * FROM truxe.validate_session($1::text::uuid)", &[j])
                .unwrap()
                .len(),
            1
        );
    }
    // after the grace period, reuse revokes the whole family and returns nothing
    let mut su = db.superuser();
    su.batch_execute("SET truxe.refresh_reuse_grace = 0")
        .unwrap();
    assert!(su
        .query(
            "SELECT * FROM truxe.refresh_session($1::text::uuid)",
            &[&refresh]
        )
        .unwrap()
        .is_empty());
    let live: i64 = s
        .query_one(
            "SELECT count(*) FROM truxe.sessions WHERE revoked_at IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(live, 0, "the family is revoked");
    let reuse: i64 = s
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE action = 'session.reuse_detected'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(reuse, 1);
    assert!(s
        .query(
            "SELECT * FROM truxe.refresh_session($1::text::uuid)",
            &[&refresh2]
        )
        .unwrap()
        .is_empty());

    // revoke
    let fresh: String = s
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
            &[&user],
        )
        .unwrap()
        .get(0);
    assert!(s
        .query_one("SELECT truxe.revoke_session($1::text::uuid)", &[&fresh])
        .unwrap()
        .get::<_, bool>(0));
    assert!(!s
        .query_one("SELECT truxe.revoke_session($1::text::uuid)", &[&fresh])
        .unwrap()
        .get::<_, bool>(0));
    s.query(
        "SELECT * FROM truxe.create_session($1::text::uuid)",
        &[&user],
    )
    .unwrap();
    s.query(
        "SELECT * FROM truxe.create_session($1::text::uuid)",
        &[&user],
    )
    .unwrap();
    let n: i32 = s
        .query_one(
            "SELECT truxe.revoke_user_sessions($1::text::uuid, 'password_reset')",
            &[&user],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[test]
fn rate_limit_allows_exactly_max_under_eight_connections() {
    let db = server().fresh_db(true);
    let allowed: usize = race(&db, 8, |c| {
        (0..50)
            .filter(|_| {
                c.query_one(
                    "SELECT allowed FROM truxe.rate_limit_hit('login:203.0.113.9', 100, '1 day')",
                    &[],
                )
                .unwrap()
                .get::<_, bool>(0)
            })
            .count()
    })
    .into_iter()
    .sum();
    assert_eq!(allowed, 100);
    let mut c = db.service();
    let stored: String = c
        .query_one("SELECT key_hash FROM truxe.rate_limits", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 64, "only the key's SHA-256 is stored");
    let r = c.query_one("SELECT allowed, remaining, reset_at > now() FROM truxe.rate_limit_hit('other', 2, '1 hour')", &[]).unwrap();
    assert_eq!(
        (r.get::<_, bool>(0), r.get::<_, i32>(1), r.get::<_, bool>(2)),
        (true, 1, true)
    );
    assert_eq!(
        sqlstate(c.query("SELECT * FROM truxe.rate_limit_hit('k', 0)", &[])),
        "22023"
    );
}

#[test]
fn usage_counts_every_increment_under_eight_connections() {
    let db = server().fresh_db(true);
    let org: String = db
        .superuser()
        .query_one(
            "INSERT INTO truxe.organizations (slug, name) VALUES ('meter', 'M') RETURNING id::text",
            &[],
        )
        .unwrap()
        .get(0);
    let o = org.clone();
    race(&db, 8, move |c| {
        for _ in 0..100 {
            c.query_one(
                "SELECT truxe.record_usage($1::text::uuid, 'api_requests')",
                &[&o],
            )
            .unwrap();
        }
    });
    let mut c = db.service();
    let total: i64 = c
        .query_one(
            "SELECT truxe.record_usage($1::text::uuid, 'api_requests', 0)",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(total, 800);
    // calendar months in UTC: 23:30 at UTC-5 on Jan 31 is February in UTC
    let feb: i64 = c
        .query_one(
            "SELECT truxe.record_usage($1::text::uuid, 'emails', 3, '2026-01-31 23:30-05')",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(feb, 3);
    let start: String = c
        .query_one("SELECT period_start AT TIME ZONE 'UTC' || '' FROM truxe.usage_metrics WHERE metric_type = 'emails'", &[])
        .unwrap()
        .get(0);
    assert_eq!(start, "2026-02-01 00:00:00");
    assert_eq!(
        sqlstate(c.query(
            "SELECT truxe.record_usage($1::text::uuid, 'x', -1)",
            &[&org]
        )),
        "22023"
    );
}

#[test]
fn cleanup_removes_only_what_is_expired() {
    let db = server().fresh_db(true);
    let mut su = db.superuser();
    su.batch_execute(
        "INSERT INTO truxe.users (id, email, status) VALUES ('00000000-0000-0000-0000-0000000000c1', 'c@example.com', 'active');
         INSERT INTO truxe.sessions (user_id, family_id, created_at, expires_at, revoked_at, revoked_reason) VALUES
           ('00000000-0000-0000-0000-0000000000c1', gen_random_uuid(), now() - interval '30 days', now() - interval '8 days', NULL, NULL),
           ('00000000-0000-0000-0000-0000000000c1', gen_random_uuid(), now() - interval '30 days', now() - interval '6 days', NULL, NULL),
           ('00000000-0000-0000-0000-0000000000c1', gen_random_uuid(), now() - interval '30 days', now() + interval '1 day', now() - interval '9 days', 'logout'),
           ('00000000-0000-0000-0000-0000000000c1', gen_random_uuid(), now(), now() + interval '1 day', NULL, NULL);
         INSERT INTO truxe.magic_link_challenges (email, token_hash, created_at, expires_at, used_at) VALUES
           ('c@example.com', repeat('0', 64), now() - interval '3 days', now() - interval '2 days', NULL),
           ('c@example.com', repeat('1', 64), now() - interval '3 days', now() + interval '1 hour', now() - interval '2 days'),
           ('c@example.com', repeat('2', 64), now() - interval '1 hour', now() - interval '30 minutes', NULL),
           ('c@example.com', repeat('3', 64), now(), now() + interval '10 minutes', NULL);
         INSERT INTO truxe.rate_limits (key_hash, window_start, window_end) VALUES
           ('a', now() - interval '3 hours', now() - interval '2 hours'),
           ('b', now() - interval '90 minutes', now() - interval '30 minutes'),
           ('c', now() - interval '2 days', now() + interval '1 day');
         INSERT INTO truxe.organizations (id, slug, name)
           VALUES ('00000000-0000-0000-0000-0000000000c2', 'cleanup', 'Cleanup');
         INSERT INTO truxe.invitations (org_id, email, token_hash, created_at, expires_at, accepted_at, revoked_at) VALUES
           ('00000000-0000-0000-0000-0000000000c2', 'i1@example.com', repeat('0', 64), now() - interval '40 days', now() - interval '31 days', NULL, NULL),
           ('00000000-0000-0000-0000-0000000000c2', 'i2@example.com', repeat('1', 64), now() - interval '40 days', now() + interval '1 day', now() - interval '31 days', NULL),
           ('00000000-0000-0000-0000-0000000000c2', 'i3@example.com', repeat('2', 64), now() - interval '40 days', now() + interval '1 day', NULL, now() - interval '31 days'),
           ('00000000-0000-0000-0000-0000000000c2', 'i4@example.com', repeat('3', 64), now() - interval '40 days', now() + interval '1 day', NULL, now() - interval '29 days'),
           ('00000000-0000-0000-0000-0000000000c2', 'i5@example.com', repeat('4', 64), now(), now() + interval '1 day', NULL, NULL);",
    )
    .unwrap();
    let mut c = db.service();
    let rows: Vec<(String, i64)> = c
        .query(
            "SELECT table_name, deleted FROM truxe.cleanup_expired_data(1)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("sessions".into(), 2),
            ("magic_link_challenges".into(), 2),
            ("rate_limits".into(), 1),
            ("invitations".into(), 3)
        ]
    );
    let left: (i64, i64, i64, i64) = c
        .query_one(
            "SELECT (SELECT count(*) FROM truxe.sessions), (SELECT count(*) FROM truxe.magic_link_challenges),
                    (SELECT count(*) FROM truxe.rate_limits), (SELECT count(*) FROM truxe.invitations)",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .unwrap();
    assert_eq!(left, (2, 2, 2, 2));
    let n: i32 = c
        .query_one("SELECT truxe.cleanup_expired_sessions('5 days')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        n, 1,
        "the session expired 6 days ago goes with a 5-day retention"
    );
    assert_eq!(
        sqlstate(c.query("SELECT * FROM truxe.cleanup_expired_data(0)", &[])),
        "22023"
    );
}

#[test]
fn auth_flow_functions_are_service_account_only() {
    let db = server().fresh_db(true);
    let mut a = db.authenticated();
    for sql in [
        "SELECT * FROM truxe.issue_magic_link('a@example.com')",
        "SELECT * FROM truxe.verify_magic_link('x')",
        "SELECT * FROM truxe.inspect_magic_link('x')",
        "SELECT * FROM truxe.refresh_session(gen_random_uuid())",
        "SELECT truxe.revoke_session(gen_random_uuid())",
        "SELECT * FROM truxe.rate_limit_hit('k', 1)",
        "SELECT truxe.record_usage(gen_random_uuid(), 'x')",
        "SELECT * FROM truxe.cleanup_expired_data()",
        "SELECT truxe.purge_audit_logs('100 days')",
        "SELECT * FROM truxe.security_report()",
    ] {
        assert_eq!(sqlstate(a.query(sql, &[])), "42501", "{sql}");
    }
}
