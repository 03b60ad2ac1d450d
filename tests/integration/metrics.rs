//! truxe.metrics() (docs/operations.md): every metric, with its exact value after a
//! scripted set of events, and who may call it.
use crate::harness::{
    active_user, issue_link as issue, server, sqlstate, verify_link as verify, wrong_secret, TestDb,
};
use postgres::Client;
use std::collections::BTreeMap;

const MONITOR_LOGIN: &str = "truxe_test_monitor";

/// metrics() as `c` sees it: "metric" or "metric{labels}" → value.
fn metrics(c: &mut Client) -> BTreeMap<String, f64> {
    c.query(
        "SELECT metric || CASE WHEN labels = '{}' THEN '' ELSE labels::text END, value
           FROM truxe.metrics()",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// A login that is a member of pg_monitor only (created once per cluster).
fn monitor(db: &TestDb) -> Client {
    db.superuser()
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {MONITOR_LOGIN} LOGIN IN ROLE pg_monitor;
             EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ))
        .unwrap();
    server().client(&db.name, MONITOR_LOGIN)
}

#[test]
fn metrics_count_every_event_of_a_scripted_hour() {
    let db = server().fresh_db(true);
    let mut su = db.superuser();
    let mut s = db.service();
    // a fresh database: every metric is there, at zero
    let empty = metrics(&mut s);
    let names = [
        "api_keys_live",
        "audit_rows_last_day",
        "cleanup_overdue_seconds{\"table\": \"invitations\"}",
        "cleanup_overdue_seconds{\"table\": \"magic_link_challenges\"}",
        "cleanup_overdue_seconds{\"table\": \"rate_limits\"}",
        "cleanup_overdue_seconds{\"table\": \"sessions\"}",
        "invitations_pending",
        "magic_links_failed_last_hour",
        "magic_links_locked_last_hour",
        "magic_links_sent_last_hour",
        "magic_links_verified_last_hour",
        "mfa_factors_verified",
        "rate_limit_windows_exhausted",
        "sessions_created_last_hour",
        "sessions_live",
        "sessions_reuse_detected_last_hour",
        "sessions_revoked_last_hour",
    ];
    assert_eq!(empty.keys().collect::<Vec<_>>(), names);
    assert!(empty.values().all(|v| *v == 0.0), "{empty:?}");

    let (u1, u2) = (
        active_user(&mut s, "u1@example.com"),
        active_user(&mut s, "u2@example.com"),
    );
    // sessions: A, B, C created; A logged out; B refreshed (B' created, B rotated); B's
    // refresh token presented again after the grace: reuse detected, B' revoked
    let create = |c: &mut Client, u: &str| -> (String, String) {
        let r = c
            .query_one(
                "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid)",
                &[&u],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (a, _) = create(&mut s, &u1);
    let (_, b_refresh) = create(&mut s, &u1);
    create(&mut s, &u1);
    assert!(s
        .query_one("SELECT truxe.revoke_session($1::text::uuid)", &[&a])
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(
        s.query(
            "SELECT * FROM truxe.refresh_session($1::text::uuid)",
            &[&b_refresh]
        )
        .unwrap()
        .len(),
        1
    );
    su.batch_execute("SET truxe.refresh_reuse_grace = 0")
        .unwrap();
    assert!(su
        .query(
            "SELECT * FROM truxe.refresh_session($1::text::uuid)",
            &[&b_refresh]
        )
        .unwrap()
        .is_empty());
    // u2's session expired 8 days ago: cleanup (7 days after expiry) is a day late
    create(&mut s, &u2);
    su.execute(
        "UPDATE truxe.sessions SET created_at = now() - interval '10 days',
                last_used_at = now() - interval '9 days', expires_at = now() - interval '8 days'
          WHERE user_id = $1::text::uuid",
        &[&u2],
    )
    .unwrap();

    // magic links: 4 sent; l1 verified; l2 locked by 5 wrong secrets, then refused as
    // locked; l3 one wrong secret; l4 expired 2 days ago (cleanup is a day late)
    let l1 = issue(&mut s, "l1@example.com");
    let l2 = issue(&mut s, "l2@example.com");
    let l3 = issue(&mut s, "l3@example.com");
    issue(&mut s, "l4@example.com");
    assert_eq!(verify(&mut s, &l1), "verified");
    for _ in 0..5 {
        assert_eq!(verify(&mut s, &wrong_secret(&l2)), "invalid");
    }
    assert_eq!(verify(&mut s, &l2), "locked");
    assert_eq!(verify(&mut s, &wrong_secret(&l3)), "invalid");
    su.execute(
        "UPDATE truxe.magic_link_challenges SET created_at = now() - interval '3 days',
                expires_at = now() - interval '2 days' WHERE email = 'l4@example.com'",
        &[],
    )
    .unwrap();

    // rate limits: k1 exhausted (3 calls, limit 2), k2 not; one window ended 2 hours ago
    for _ in 0..3 {
        s.query(
            "SELECT * FROM truxe.rate_limit_hit('k1', 2, '30 days')",
            &[],
        )
        .unwrap();
    }
    s.query(
        "SELECT * FROM truxe.rate_limit_hit('k2', 2, '30 days')",
        &[],
    )
    .unwrap();
    su.execute(
        "INSERT INTO truxe.rate_limits (key_hash, window_start, window_end, request_count)
         VALUES (repeat('a', 64), now() - interval '3 hours', now() - interval '2 hours', 9)",
        &[],
    )
    .unwrap();

    // API keys and second factors: one live key and one revoked, one verified factor and
    // one not yet verified
    su.batch_execute(&format!(
        "INSERT INTO truxe.organizations (id, slug, name)
           VALUES ('0e000000-0000-0000-0000-00000000000e', 'metrics-org', 'Metrics');
         INSERT INTO truxe.api_keys (org_id, name, key_hash, revoked_at) VALUES
           ('0e000000-0000-0000-0000-00000000000e', 'live', repeat('a', 64), NULL),
           ('0e000000-0000-0000-0000-00000000000e', 'gone', repeat('b', 64), now());
         INSERT INTO truxe.mfa_factors (user_id, friendly_name, key_id, nonce, ciphertext, status, verified_at)
           VALUES ('{u1}', 'phone', 'k1', '\\x000000000000000000000000', '\\x00', 'verified', now()),
                  ('{u1}', 'tablet', 'k1', '\\x000000000000000000000000', '\\x00', 'unverified', NULL);"
    ))
    .unwrap();

    // invitations: one pending; one expired 31 days ago and revoked today (cleanup, 30
    // days after the earliest of expiry, use and revocation, is a day late); neither the
    // expired nor the revoked one is pending
    su.batch_execute(
        "INSERT INTO truxe.invitations (org_id, email, token_hash, created_at, expires_at, revoked_at) VALUES
           ('0e000000-0000-0000-0000-00000000000e', 'p1@example.com', repeat('c', 64), now(),
            now() + interval '7 days', NULL),
           ('0e000000-0000-0000-0000-00000000000e', 'p2@example.com', repeat('d', 64),
            now() - interval '32 days', now() - interval '31 days', now());",
    )
    .unwrap();

    // audit rows older than the windows do not count
    su.execute(
        "INSERT INTO truxe.audit_logs (action, created_at) VALUES
           ('session.created', now() - interval '2 hours'),
           ('magic_link.sent', now() - interval '2 days')",
        &[],
    )
    .unwrap();
    let last_day: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE created_at > now() - interval '24 hours'",
            &[],
        )
        .unwrap()
        .get(0);
    let all: i64 = su
        .query_one("SELECT count(*) FROM truxe.audit_logs", &[])
        .unwrap()
        .get(0);
    assert_eq!(all, last_day + 1);

    let mut m = metrics(&mut s);
    assert_eq!(m.keys().collect::<Vec<_>>(), names);
    let lag = |m: &mut BTreeMap<String, f64>, table: &str| {
        m.remove(&format!(
            "cleanup_overdue_seconds{{\"table\": \"{table}\"}}"
        ))
        .unwrap()
    };
    let day = 86_400.0;
    let sessions_lag = lag(&mut m, "sessions");
    assert!(
        (day - 5.0..day + 60.0).contains(&sessions_lag),
        "{sessions_lag}"
    );
    let links_lag = lag(&mut m, "magic_link_challenges");
    assert!((day - 5.0..day + 60.0).contains(&links_lag), "{links_lag}");
    let invitations_lag = lag(&mut m, "invitations");
    assert!(
        (day - 5.0..day + 60.0).contains(&invitations_lag),
        "{invitations_lag}"
    );
    let rl_lag = lag(&mut m, "rate_limits");
    assert!((3595.0..3660.0).contains(&rl_lag), "{rl_lag}");
    let expected: BTreeMap<String, f64> = [
        ("api_keys_live", 1.0),
        ("audit_rows_last_day", last_day as f64),
        ("invitations_pending", 1.0),
        ("magic_links_failed_last_hour", 7.0),
        ("magic_links_locked_last_hour", 1.0),
        ("magic_links_sent_last_hour", 4.0),
        ("magic_links_verified_last_hour", 1.0),
        ("mfa_factors_verified", 1.0),
        ("rate_limit_windows_exhausted", 1.0),
        // A, B, C, B' and u2's
        ("sessions_created_last_hour", 5.0),
        ("sessions_live", 1.0),
        ("sessions_reuse_detected_last_hour", 1.0),
        // A (logout), B (rotated), B' (refresh_token_reuse)
        ("sessions_revoked_last_hour", 3.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(m, expected);

    // cleanup removes what was overdue: the lag falls back to zero
    s.query("SELECT * FROM truxe.cleanup_expired_data()", &[])
        .unwrap();
    let after = metrics(&mut s);
    for table in [
        "sessions",
        "magic_link_challenges",
        "rate_limits",
        "invitations",
    ] {
        let k = format!("cleanup_overdue_seconds{{\"table\": \"{table}\"}}");
        assert_eq!(after[&k], 0.0, "{k}");
    }
}

#[test]
fn metrics_are_for_service_account_and_pg_monitor_only() {
    let db = server().fresh_db(true);
    assert_eq!(metrics(&mut db.service()).len(), 17);
    assert_eq!(metrics(&mut monitor(&db)).len(), 17);
    for mut c in [db.authenticated(), db.nobody()] {
        assert_eq!(
            sqlstate(c.query("SELECT * FROM truxe.metrics()", &[])),
            "42501"
        );
    }
    // the definition resolves nothing through the caller's search_path
    let config: Vec<String> = db
        .superuser()
        .query_one(
            "SELECT proconfig FROM pg_proc WHERE oid = 'truxe.metrics()'::regprocedure",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(config, ["search_path=pg_catalog, pg_temp"]);
}

/// One metric's value as the service sees it.
fn metric(db: &TestDb, name: &str) -> f64 {
    metrics(&mut db.service())[name]
}

#[test]
fn audit_rows_last_day_above_100000_rows_is_the_span_of_the_days_ids() {
    let db = server().fresh_db(true);
    let mut su = db.superuser();
    let exact = |su: &mut Client| -> f64 {
        su.query_one(
            "SELECT count(*)::float8 FROM truxe.audit_logs WHERE created_at > now() - interval '24 hours'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    // below the threshold: exact, also with a rolled-back audit write (its id is skipped)
    let one_row = "INSERT INTO truxe.audit_logs (action) VALUES ('org.updated')";
    su.batch_execute(one_row).unwrap();
    su.batch_execute(&format!("BEGIN; {one_row}; ROLLBACK"))
        .unwrap();
    su.batch_execute(one_row).unwrap();
    assert_eq!(metric(&db, "audit_rows_last_day"), exact(&mut su));
    // a day of 100,000 rows more, written in id order: the ids from the day's first row to
    // the newest, which is the exact count but for the one id rolled back inside the span
    su.batch_execute(
        "INSERT INTO truxe.audit_logs (action) SELECT 'org.updated' FROM generate_series(1, 100000)",
    )
    .unwrap();
    let day = exact(&mut su);
    assert!(day > 100_000.0, "{day}");
    assert_eq!(metric(&db, "audit_rows_last_day"), day + 1.0);
    // what the span counts besides the day's rows (docs/operations.md): an id rolled back
    // and a row written since with an older date
    su.batch_execute(&format!("BEGIN; {one_row}; ROLLBACK"))
        .unwrap();
    su.batch_execute(
        "INSERT INTO truxe.audit_logs (action, created_at) VALUES ('org.updated', now() - interval '2 days')",
    )
    .unwrap();
    assert_eq!(exact(&mut su), day);
    assert_eq!(metric(&db, "audit_rows_last_day"), day + 3.0);
    // a row of the day written out of date order (older than every other row of the day),
    // then 100,000 more: the span from it would miss the rows before it, but of the 16 rows
    // before it in id order (the first of them the row dated 2 days ago) some are of the day,
    // so the day is counted exactly
    su.batch_execute(
        "INSERT INTO truxe.audit_logs (action, created_at) VALUES ('org.updated', now() - interval '23 hours');
         INSERT INTO truxe.audit_logs (action) SELECT 'org.updated' FROM generate_series(1, 100000)",
    )
    .unwrap();
    let day = exact(&mut su);
    assert!(day > 200_000.0, "{day}");
    assert_eq!(metric(&db, "audit_rows_last_day"), day);
}

#[test]
fn sessions_live_is_exact_below_10000_and_estimated_within_a_few_percent_above() {
    let db = server().fresh_db(true);
    let mut s = db.service();
    let u = active_user(&mut s, "many@example.com");
    let mut su = db.superuser();
    // sessions n in [from, to] of one user, bulk-written (no per-row triggers): jti hashes
    // are SHA-256 as truxe's (of a counter here, so that the test is deterministic)
    let add = |su: &mut Client, from: i64, to: i64, state: &str| {
        let (created, expires, revoked) = match state {
            "live" => ("now()", "now() + interval '1 day'", "NULL"),
            "expired" => (
                "now() - interval '2 days'",
                "now() - interval '1 day'",
                "NULL",
            ),
            _ => ("now()", "now() + interval '1 day'", "now()"),
        };
        su.batch_execute(&format!(
            "SET session_replication_role = replica;
             INSERT INTO truxe.sessions (jti_hash, user_id, family_id, created_at, expires_at,
                                         revoked_at, revoked_reason)
               SELECT sha256(int8send(g)), '{u}', gen_random_uuid(), {created}, {expires},
                      {revoked}, CASE WHEN {revoked} IS NULL THEN NULL ELSE 'logout' END
                 FROM generate_series({from}, {to}) g;
             RESET session_replication_role;"
        ))
        .unwrap();
    };
    add(&mut su, 1, 9_999, "live");
    add(&mut su, 100_001, 105_000, "expired");
    add(&mut su, 200_001, 205_000, "revoked");
    // 9,999 live sessions (the revoked and the expired do not count): exact
    assert_eq!(metric(&db, "sessions_live"), 9_999.0);
    // 20,000: estimated from the 10,000 with the smallest jti hashes, one standard error 1%
    // (4 of them here; the hashes are fixed, so is the estimate)
    add(&mut su, 10_000, 20_000, "live");
    let live: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.sessions WHERE revoked_at IS NULL AND expires_at > now()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(live, 20_000);
    let estimate = metric(&db, "sessions_live");
    assert!(
        (estimate - 20_000.0).abs() <= 0.04 * 20_000.0,
        "estimate {estimate} for 20,000 live sessions"
    );
    assert_ne!(estimate, 20_000.0, "an estimate, not a count");
    assert_eq!(estimate, estimate.round());
}
