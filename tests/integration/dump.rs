//! pg_dump of a populated database, restored the documented way into a fresh one.
use crate::harness::{server, Server};
use postgres::Client;

const TABLES: &[&str] = &[
    "users",
    "organizations",
    "memberships",
    "sessions",
    "audit_logs",
    "magic_link_challenges",
    "usage_metrics",
    "rate_limits",
    "role_permissions",
    "org_closure",
];

/// Per table: row count and an order-independent digest of every row.
pub fn fingerprint(c: &mut Client) -> Vec<(String, i64, String)> {
    TABLES
        .iter()
        .map(|t| {
            let r = c
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '')
                           FROM truxe.{t} x"
                    ),
                    &[],
                )
                .unwrap();
            (t.to_string(), r.get(0), r.get(1))
        })
        .collect()
}

#[test]
fn populated_database_round_trips_through_pg_dump_and_pg_restore() {
    let s = server();
    let src = s.fresh_db(true);
    let mut c = src.superuser();
    c.batch_execute(
        "INSERT INTO truxe.users (email, status, metadata)
           SELECT 'user' || g || '@example.com', 'active', jsonb_build_object('n', g)
             FROM generate_series(1, 50) g;
         INSERT INTO truxe.organizations (slug, name) VALUES ('root', 'Root');
         INSERT INTO truxe.organizations (slug, name, parent_org_id)
           SELECT 'child-' || g, 'Child ' || g, (SELECT id FROM truxe.organizations WHERE slug = 'root')
             FROM generate_series(1, 5) g;
         INSERT INTO truxe.memberships (org_id, user_id, role, joined_at)
           SELECT o.id, u.id, 'member', now() FROM truxe.organizations o, truxe.users u
            WHERE u.email LIKE 'user1%';
         INSERT INTO truxe.sessions (user_id, family_id, expires_at)
           SELECT id, gen_random_uuid(), now() + interval '1 day' FROM truxe.users;
         INSERT INTO truxe.audit_logs (action, org_id, details)
           SELECT 'org.updated', id, '{\"k\": 1}' FROM truxe.organizations;
         INSERT INTO truxe.magic_link_challenges (email, token_hash, expires_at)
           VALUES ('user1@example.com', repeat('a', 64), now() + interval '10 minutes');
         INSERT INTO truxe.usage_metrics (org_id, metric_type, metric_value, period_start, period_end)
           SELECT id, 'api_requests', 3, '2026-11-01', '2026-12-01' FROM truxe.organizations;
         INSERT INTO truxe.rate_limits (key_hash, window_start, window_end, request_count)
           VALUES (repeat('b', 64), now(), now() + interval '1 minute', 3);
         INSERT INTO truxe.role_permissions VALUES ('viewer', 'reports:read');",
    )
    .unwrap();
    let before = fingerprint(&mut c);
    assert!(
        before.iter().all(|(_, n, _)| *n > 0),
        "every table populated: {before:?}"
    );

    let restored = restore_copy(s, &src.name);
    let after = fingerprint(&mut s.client(&restored, "postgres"));
    assert_eq!(
        after, before,
        "every row comes back exactly, seeded rows not doubled"
    );
}

/// Dumps database `db` of `s` with pg_dump (custom format) and restores it the documented
/// way (docs/operations.md, "Backup and restore") into a new database `<db>_restored`, whose name it
/// returns; pg_dump must find no dependency loop and pg_restore must report no error.
pub fn restore_copy(s: &Server, db: &str) -> String {
    let dump = std::env::temp_dir().join(format!("{db}-{}.dump", std::process::id()));
    let out = s
        .tool("pg_dump")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(db)
        .output()
        .unwrap();
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pg_dump: {warnings}");
    assert!(
        !warnings.contains("dependency loop"),
        "pg_dump could not order the objects: {warnings}"
    );

    let restored = format!("{db}_restored");
    s.client("postgres", "postgres")
        .batch_execute(&format!("CREATE DATABASE {restored} TEMPLATE template0"))
        .expect("create the restore target");
    let out = s
        .tool("pg_restore")
        .args(["-d", &restored])
        .arg(&dump)
        .env("PGOPTIONS", "-c session_replication_role=replica")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&dump);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pg_restore failed: {stderr}");
    assert!(!stderr.contains("error"), "pg_restore reported: {stderr}");
    restored
}

/// sql/schema.sql states the seeded role permissions twice: the INSERT and the dump filter
/// that leaves them out (the restore's CREATE EXTENSION seeds them again). The round trip
/// above proves the filter leaves out every seeded row and keeps an added one; this proves
/// the filter names no row that is not seeded (a user who added that row would lose it in
/// every dump).
#[test]
fn seeded_role_permissions_and_the_dump_filter_name_the_same_rows() {
    let db = server().fresh_db(true);
    let mut c = db.superuser();
    let (filtered, seeded, differ): (i64, i64, i64) = c
        .query_one(
            r"WITH f AS (
                SELECT m[1] AS role, m[2] AS permission
                  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(rel, cond),
                       regexp_matches(x.cond, '\(''([a-z]+)'', ''([^'']+)''\)', 'g') AS m
                 WHERE e.extname = 'truxe' AND x.rel = 'truxe.role_permissions'::regclass),
              s AS (SELECT role::text, permission FROM truxe.role_permissions)
              SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM s),
                     (SELECT count(*) FROM ((TABLE f EXCEPT TABLE s) UNION ALL (TABLE s EXCEPT TABLE f)) d)",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert!(seeded > 0);
    assert_eq!(
        (filtered, differ),
        (seeded, 0),
        "the dump filter and the seeded rows differ"
    );
}
