//! Operations with real outside programs (docs/operations.md): Debian's
//! prometheus-postgres-exporter serving truxe.metrics() through the shipped queries file,
//! and pg_cron running the cleanup recipe of docs/operations.md. Where a program is not installed the
//! test says so on stderr (SKIPPED: …) and passes; scripts/setup installs both.
use crate::harness::{
    create_extension, free_loopback_port, installed, server, skip, Killed, Server, SERVICE_LOGIN,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MONITOR_LOGIN: &str = "truxe_test_monitor";
const EXPORTER: &str = "prometheus-postgres-exporter";

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0: the server closes after the body).
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[test]
fn prometheus_exporter_serves_truxe_metrics() {
    let Some(exporter) = installed(EXPORTER) else {
        return skip(&format!(
            "{EXPORTER} is not installed (scripts/setup installs Debian's \
             prometheus-postgres-exporter): the Prometheus example was NOT tested"
        ));
    };
    let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/prometheus/truxe-queries.yaml");
    let db = server().fresh_db(true);
    db.superuser()
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {MONITOR_LOGIN} LOGIN IN ROLE pg_monitor;
             EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ))
        .unwrap();
    let mut s = db.service();
    s.execute(
        "INSERT INTO truxe.users (email, status) VALUES ('p@example.com', 'active')",
        &[],
    )
    .unwrap();
    for _ in 0..3 {
        s.query(
            "SELECT * FROM truxe.create_session((SELECT id FROM truxe.users))",
            &[],
        )
        .unwrap();
    }
    // a free loopback port for the exporter
    let port = free_loopback_port();
    let dsn = format!(
        "postgresql://{MONITOR_LOGIN}@:{}/{}?host={}&sslmode=disable",
        server().port(),
        db.name,
        server().socket_dir().display()
    );
    let _child = Killed(
        Command::new(&exporter)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--extend.query-path={}", queries.display()))
            .args(["--disable-default-metrics", "--disable-settings-metrics"])
            .env("DATA_SOURCE_NAME", &dsn)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exporter.display())),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        if let Ok(page) = http_get(port, "/metrics") {
            if page.contains("truxe_metric{") {
                break page;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the exporter on 127.0.0.1:{port} served no truxe_metric within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let series: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("truxe_metric{"))
        .collect();
    let live = series
        .iter()
        .find(|l| l.contains("name=\"sessions_live\""))
        .unwrap_or_else(|| panic!("no sessions_live in {series:#?}"));
    assert!(live.ends_with(" 3"), "{live}");
    for name in [
        "sessions_created_last_hour",
        "sessions_revoked_last_hour",
        "sessions_reuse_detected_last_hour",
        "magic_links_sent_last_hour",
        "magic_links_verified_last_hour",
        "magic_links_failed_last_hour",
        "magic_links_locked_last_hour",
        "rate_limit_windows_exhausted",
        "audit_rows_last_day",
    ] {
        assert!(
            series
                .iter()
                .any(|l| l.contains(&format!("name=\"{name}\""))),
            "{name} missing from {series:#?}"
        );
    }
    for table in ["sessions", "magic_link_challenges", "rate_limits"] {
        assert!(
            series
                .iter()
                .any(|l| l.contains("name=\"cleanup_overdue_seconds\"")
                    && l.contains(&format!("table=\"{table}\""))),
            "cleanup_overdue_seconds of {table} missing from {series:#?}"
        );
    }
}

/// The pg_cron recipe of docs/operations.md ("Scheduled cleanup with pg_cron"), scheduled every minute (pg_cron 1.4 has no seconds syntax),
/// in a server of its own that preloads pg_cron. PG 15 only: Debian packages pg_cron for
/// its own PostgreSQL 15, and there is none for the PG 16/18 builds truxe also supports.
#[test]
fn pg_cron_runs_the_documented_cleanup_recipe() {
    let major = Server::major();
    let pkglibdir = Server::pg_config("pkglibdir");
    if major != 15 {
        return skip(&format!(
            "pg_cron is packaged (postgresql-15-cron) for PostgreSQL 15 only; this is \
             PostgreSQL {major}: the pg_cron recipe was NOT tested here"
        ));
    }
    if !Path::new(&pkglibdir).join("pg_cron.so").is_file() {
        return skip(&format!(
            "pg_cron.so is not in {pkglibdir} (scripts/setup installs postgresql-15-cron): \
             the pg_cron recipe was NOT tested"
        ));
    }
    let cron = Server::launch(
        "cron",
        &[
            ("shared_preload_libraries", "pg_cron"),
            ("cron.database_name", "postgres"),
            // jobs run in background workers: no libpq connection, no password to set up
            ("cron.use_background_workers", "on"),
        ],
    );
    let mut pg = cron.client("postgres", "postgres");
    for sql in [
        &format!("CREATE ROLE {SERVICE_LOGIN} LOGIN"),
        "CREATE DATABASE app",
        "CREATE EXTENSION pg_cron",
    ] {
        pg.batch_execute(sql).unwrap();
    }
    let mut app = cron.client("app", "postgres");
    create_extension(&mut app);
    app.batch_execute(&format!("GRANT service_account TO {SERVICE_LOGIN};"))
        .unwrap();
    // what cleanup must delete: a session expired 8 days ago, a magic link expired 2 days
    // ago, a rate-limit window ended 2 hours ago; and what it must keep
    let mut s = cron.client("app", SERVICE_LOGIN);
    s.batch_execute(
        "INSERT INTO truxe.users (email, status) VALUES
           ('old@example.com', 'active'), ('new@example.com', 'active');
         SELECT * FROM truxe.create_session((SELECT id FROM truxe.users WHERE email = 'old@example.com'));
         SELECT * FROM truxe.create_session((SELECT id FROM truxe.users WHERE email = 'new@example.com'));
         SELECT * FROM truxe.issue_magic_link('old@example.com');
         SELECT * FROM truxe.issue_magic_link('new@example.com');
         SELECT * FROM truxe.rate_limit_hit('kept', 5, '30 days');",
    )
    .unwrap();
    app.batch_execute(
        "UPDATE truxe.sessions SET created_at = now() - interval '10 days',
                last_used_at = now() - interval '9 days', expires_at = now() - interval '8 days'
          WHERE user_id = (SELECT id FROM truxe.users WHERE email = 'old@example.com');
         UPDATE truxe.magic_link_challenges SET created_at = now() - interval '3 days',
                expires_at = now() - interval '2 days' WHERE email = 'old@example.com';
         INSERT INTO truxe.rate_limits (key_hash, window_start, window_end)
         VALUES (repeat('a', 64), now() - interval '3 hours', now() - interval '2 hours');",
    )
    .unwrap();
    let counts = |c: &mut postgres::Client| -> (i64, i64, i64) {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM truxe.sessions), \
                        (SELECT count(*) FROM truxe.magic_link_challenges), \
                        (SELECT count(*) FROM truxe.rate_limits)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(counts(&mut app), (2, 2, 2));

    // the documented recipe (docs/operations.md), every minute instead of every five, run
    // as the service_account login
    pg.execute(
        "SELECT cron.schedule_in_database('truxe-cleanup', '* * * * *',
                  $$SELECT * FROM truxe.cleanup_expired_data()$$, 'app', $1)",
        &[&SERVICE_LOGIN],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(150);
    while counts(&mut app) != (1, 1, 1) {
        let failed: Vec<String> = pg
            .query(
                "SELECT return_message FROM cron.job_run_details WHERE status = 'failed'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(failed.is_empty(), "the cron job failed: {failed:?}");
        assert!(
            Instant::now() < deadline,
            "pg_cron did not clean up within 150 s: {:?}",
            counts(&mut app)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let ran: String = pg
        .query_one(
            "SELECT status FROM cron.job_run_details ORDER BY start_time DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ran, "succeeded");
}
