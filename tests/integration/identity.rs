//! The verified identity (docs/security.md, "Verified identity"): under
//! `identity_mode = verified` a hostile `authenticated` login cannot become anyone by any
//! setting, option or placeholder; `authenticate` makes it exactly one session's user for
//! one transaction; the acting org narrows what every org-scoped table shows; parallel
//! workers and a transaction-pooling PgBouncer keep the identity where it belongs.
use crate::harness::{
    free_loopback_port, installed, server, skip, sqlstate, Killed, Tenants, TestDb, AUTH_LOGIN,
};
use postgres::{Client, NoTls};

const ACME: &str = "1a000000-0000-0000-0000-00000000000a";
const EU: &str = "1e000000-0000-0000-0000-00000000000e";
const BETA: &str = "1b000000-0000-0000-0000-00000000000b";
/// owner of ACME (so an admin of EU through it)
const ADA: &str = "10000000-0000-0000-0000-0000000000a1";
/// joined member of ACME and of EU, invited (pending) to BETA
const CARL: &str = "10000000-0000-0000-0000-0000000000c1";
/// owner of BETA
const BOB: &str = "10000000-0000-0000-0000-0000000000b1";

/// ACME with its child EU, and BETA; the users above.
fn populated() -> TestDb {
    let db = server().fresh_db(true);
    Tenants::new()
        .user(ADA, "ada@x.example")
        .user(CARL, "carl@x.example")
        .user(BOB, "bob@x.example")
        .org(ACME, "acme", "Acme", None)
        .org(BETA, "beta", "Beta", None)
        .org(EU, "acme-eu", "Acme EU", Some(ACME))
        .member(ACME, ADA, "owner")
        .member(ACME, CARL, "member")
        .member(EU, CARL, "member")
        .member(BETA, BOB, "owner")
        .pending(BETA, CARL, "member")
        .seed(&db);
    db
}

/// A session for `user` (optionally scoped to `org`), created as service_account: its jti.
fn session(db: &TestDb, user: &str, org: Option<&str>) -> String {
    db.service()
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid, $2::text::uuid, '1 hour')",
            &[&user, &org],
        )
        .unwrap()
        .get(0)
}

fn verified_mode(db: &TestDb) {
    db.superuser()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET truxe.identity_mode = verified",
            db.name
        ))
        .unwrap();
}

/// What `c` sees of every org-scoped table, one sorted line per table.
fn view(c: &mut impl postgres::GenericClient) -> Vec<String> {
    [
        ("organizations", "SELECT slug::text FROM truxe.organizations"),
        (
            "memberships",
            "SELECT o.slug || ':' || u.email FROM truxe.memberships m
               JOIN truxe.organizations o ON o.id = m.org_id JOIN truxe.users u ON u.id = m.user_id",
        ),
        ("users", "SELECT email::text FROM truxe.users"),
        ("sessions", "SELECT user_id::text FROM truxe.sessions"),
        (
            "audit_logs",
            "SELECT DISTINCT o.slug::text FROM truxe.audit_logs a JOIN truxe.organizations o ON o.id = a.org_id",
        ),
    ]
    .iter()
    .map(|(table, sql)| {
        let mut rows: Vec<String> = c
            .query(*sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        rows.sort();
        format!("{table}: {}", rows.join(" "))
    })
    .collect()
}

/// Asserts that `c` is nobody: no identity, no row of any table, and no write lands.
fn assert_nobody(c: &mut Client, how: &str) {
    let who: Option<String> = c
        .query_one("SELECT truxe.current_user_id()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, None, "{how}: current_user_id()");
    let seen = view(c);
    assert!(
        seen.iter().all(|l| l.ends_with(": ")),
        "{how}: saw {seen:?}"
    );
    let updated = c
        .execute("UPDATE truxe.users SET metadata = '{\"owned\": true}'", &[])
        .unwrap();
    assert_eq!(updated, 0, "{how}: updated users");
    assert_eq!(
        sqlstate(c.query_one("SELECT truxe.create_organization('evil', 'Evil')", &[])),
        "42501",
        "{how}: create_organization"
    );
}

/// A hostile login under `verified` mode tries every way to claim ADA's identity.
#[test]
fn verified_mode_refuses_every_forged_identity() {
    let db = populated();
    verified_mode(&db);
    let forged_identity = format!("v1;{ADA};{ACME};;;1");
    let claims = format!("{{\"sub\": \"{ADA}\", \"org_id\": \"{ACME}\"}}");

    // settings, in every form a session can write them
    let mut c = db.authenticated();
    c.execute(
        "SELECT set_config('app.current_user_id', $1, false)",
        &[&ADA],
    )
    .unwrap();
    c.execute(
        "SELECT set_config('app.current_org_id', $1, false)",
        &[&ACME],
    )
    .unwrap();
    assert_nobody(&mut c, "set_config app.*");
    c.batch_execute(&format!("SET app.current_user_id = '{ADA}'"))
        .unwrap();
    assert_nobody(&mut c, "SET app.current_user_id");
    c.batch_execute(&format!("BEGIN; SET LOCAL app.current_user_id = '{ADA}'"))
        .unwrap();
    assert_nobody(&mut c, "SET LOCAL app.current_user_id");
    c.batch_execute("COMMIT").unwrap();
    c.execute(
        "SELECT set_config('request.jwt.claims', $1, false)",
        &[&claims],
    )
    .unwrap();
    assert_nobody(&mut c, "request.jwt.claims");
    // truxe's own settings are superuser-only, and the identity store takes no value at all
    for sql in [
        format!("SET truxe.verified_identity = '{forged_identity}'"),
        format!("SET LOCAL truxe.verified_identity = '{forged_identity}'"),
        format!("SELECT set_config('truxe.verified_identity', '{forged_identity}', true)"),
        "SET truxe.identity_mode = trusted".to_string(),
        "SELECT set_config('truxe.identity_mode', 'trusted', false)".to_string(),
    ] {
        assert_eq!(sqlstate(c.batch_execute(&sql)), "42501", "{sql}");
    }
    assert_nobody(&mut c, "SET truxe.*");
    assert_eq!(
        sqlstate(c.execute(
            "SELECT truxe.set_context($1::text::uuid, $2::text::uuid)",
            &[&ADA, &ACME]
        )),
        "42501",
        "set_context"
    );
    assert_nobody(&mut c, "set_context");
    drop(c);

    // per-role settings (only in this database: the login is shared by every test)
    let mut c = db.authenticated();
    let own_default = c.batch_execute(&format!(
        "ALTER ROLE {AUTH_LOGIN} IN DATABASE {} SET app.current_user_id = '{ADA}'",
        db.name
    ));
    let mut c2 = db.authenticated();
    assert_nobody(&mut c2, "ALTER ROLE … SET app.current_user_id");
    if own_default.is_ok() {
        c.batch_execute(&format!(
            "ALTER ROLE {AUTH_LOGIN} IN DATABASE {} RESET ALL",
            db.name
        ))
        .unwrap();
    }
    assert_eq!(
        sqlstate(c.batch_execute(&format!(
            "ALTER ROLE {AUTH_LOGIN} IN DATABASE {} SET truxe.verified_identity = '{forged_identity}'",
            db.name
        ))),
        "42501",
        "ALTER ROLE … SET truxe.verified_identity"
    );
    drop((c, c2));

    // startup options (PGOPTIONS) and placeholders set before the library loads: truxe's
    // library is not preloaded, so the first statements below meet mere placeholders
    let startup = format!(
        "-c app.current_user_id={ADA} -c truxe.identity_mode=trusted -c truxe.verified_identity={forged_identity}"
    );
    let mut c = connect_with_options(&db, &startup);
    assert_nobody(&mut c, "startup options");
    let mut c = db.authenticated();
    c.batch_execute(&format!(
        "SET truxe.verified_identity = '{forged_identity}'; SET truxe.identity_mode = trusted;
         SET app.current_user_id = '{ADA}'"
    ))
    .expect("placeholders are settable before truxe's library loads");
    assert_nobody(&mut c, "placeholders set before the library loaded");
    let shown: String = c
        .query_one("SELECT current_setting('truxe.identity_mode')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        shown, "verified",
        "the placeholder did not survive the load"
    );
}

fn connect_with_options(db: &TestDb, options: &str) -> Client {
    postgres::Config::new()
        .host_path(server().socket_dir())
        .port(server().port())
        .user(AUTH_LOGIN)
        .dbname(&db.name)
        .options(options)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect with options {options}: {e}"))
}

/// authenticate makes the login exactly that session's user, for one transaction.
#[test]
fn authenticate_is_one_sessions_user_for_one_transaction() {
    let db = populated();
    verified_mode(&db);
    let jti = session(&db, CARL, None);
    let mut c = db.authenticated();

    let mut t = c.transaction().unwrap();
    let row = t
        .query_one(
            "SELECT user_id::text, org_id::text, aal FROM truxe.authenticate($1)",
            &[&jti],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), CARL);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, i16>(2), 1);
    let (who, source, sid): (String, String, Option<String>) = {
        let r = t
            .query_one(
                "SELECT truxe.current_user_id()::text, truxe.identity_source(),
                        truxe.current_session_id()::text",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((who.as_str(), source.as_str()), (CARL, "verified"));
    assert!(sid.is_some(), "current_session_id()");
    assert_eq!(
        view(&mut t),
        [
            "organizations: acme acme-eu beta",
            "memberships: acme-eu:carl@x.example acme:ada@x.example acme:carl@x.example beta:carl@x.example",
            "users: ada@x.example carl@x.example",
            &format!("sessions: {CARL}"),
            "audit_logs: ",
        ]
    );
    // settings cannot move a verified identity
    t.batch_execute(&format!("SET LOCAL app.current_user_id = '{ADA}'"))
        .unwrap();
    let who: String = t
        .query_one("SELECT truxe.current_user_id()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, CARL);
    t.commit().unwrap();
    assert_nobody(&mut c, "after COMMIT");

    let mut t = c.transaction().unwrap();
    assert_eq!(
        t.query("SELECT 1 FROM truxe.authenticate($1)", &[&jti])
            .unwrap()
            .len(),
        1
    );
    t.rollback().unwrap();
    assert_nobody(&mut c, "after ROLLBACK");

    // a savepoint rolled back takes the identity with it
    c.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    c.query("SELECT 1 FROM truxe.authenticate($1)", &[&jti])
        .unwrap();
    c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    assert_nobody(&mut c, "after ROLLBACK TO SAVEPOINT");
    c.batch_execute("ROLLBACK").unwrap();

    // garbage is no row, never an error, and ends the identity already established
    let mega = "x".repeat(1 << 20);
    for token in [
        Some("not-a-uuid"),
        Some(""),
        Some(mega.as_str()),
        None,
        Some("00000000-0000-0000-0000-000000000000"),
    ] {
        c.batch_execute("BEGIN").unwrap();
        c.query("SELECT 1 FROM truxe.authenticate($1)", &[&jti])
            .unwrap();
        let rows = c
            .query("SELECT * FROM truxe.authenticate($1)", &[&token])
            .unwrap();
        assert!(
            rows.is_empty(),
            "token {:?}",
            token.map(|t| &t[..t.len().min(20)])
        );
        assert_nobody(&mut c, "after a garbage token");
        c.batch_execute("ROLLBACK").unwrap();
    }

    // revoked and expired sessions authenticate nobody
    let revoked = session(&db, CARL, None);
    db.service()
        .execute("SELECT truxe.revoke_session($1::text::uuid)", &[&revoked])
        .unwrap();
    let expired = session(&db, CARL, None);
    db.superuser()
        .execute(
            "UPDATE truxe.sessions SET created_at = now() - interval '2 hours',
                    expires_at = now() - interval '1 hour'
              WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&expired],
        )
        .unwrap();
    for dead in [&revoked, &expired] {
        c.batch_execute("BEGIN").unwrap();
        assert!(c
            .query("SELECT 1 FROM truxe.authenticate($1)", &[dead])
            .unwrap()
            .is_empty());
        assert_nobody(&mut c, "a dead session");
        c.batch_execute("ROLLBACK").unwrap();
    }
}

/// With an acting org every org-scoped table shows that org only (plus its descendants for
/// its owners/admins); a foreign org is refused; with no org, every org the user may see.
#[test]
fn the_acting_org_narrows_every_org_scoped_table() {
    let db = populated();
    let mut c = db.authenticated();
    let under = |c: &mut Client, user: &str, org: Option<&str>| {
        let mut t = c.transaction().unwrap();
        t.execute(
            "SELECT truxe.set_context($1::text::uuid, $2::text::uuid)",
            &[&user, &org],
        )
        .unwrap();
        let v = view(&mut t);
        t.rollback().unwrap();
        v
    };
    // the reported case: the owner acting in acme-eu saw acme's rows too
    assert_eq!(
        under(&mut c, ADA, Some(EU)),
        [
            "organizations: acme-eu",
            "memberships: acme-eu:carl@x.example",
            "users: ada@x.example carl@x.example",
            "sessions: ",
            "audit_logs: acme-eu",
        ]
    );
    assert_eq!(
        under(&mut c, ADA, Some(ACME)),
        [
            "organizations: acme acme-eu",
            "memberships: acme-eu:carl@x.example acme:ada@x.example acme:carl@x.example",
            "users: ada@x.example carl@x.example",
            "sessions: ",
            "audit_logs: acme acme-eu",
        ]
    );
    // a plain member of acme acting in acme: acme only, though also a member of acme-eu;
    // the pending invitation to beta stays visible
    assert_eq!(
        under(&mut c, CARL, Some(ACME)),
        [
            "organizations: acme beta",
            "memberships: acme:ada@x.example acme:carl@x.example beta:carl@x.example",
            "users: ada@x.example carl@x.example",
            "sessions: ",
            "audit_logs: ",
        ]
    );
    // no org: 0.1's rule, every org the user may see
    assert_eq!(
        under(&mut c, CARL, None),
        [
            "organizations: acme acme-eu beta",
            "memberships: acme-eu:carl@x.example acme:ada@x.example acme:carl@x.example beta:carl@x.example",
            "users: ada@x.example carl@x.example",
            "sessions: ",
            "audit_logs: ",
        ]
    );
    for (user, org) in [(ADA, BETA), (BOB, ACME), (CARL, BETA)] {
        let mut t = c.transaction().unwrap();
        assert_eq!(
            sqlstate(t.execute(
                "SELECT truxe.set_context($1::text::uuid, $2::text::uuid)",
                &[&user, &org]
            )),
            "42501",
            "set_context({user}, {org})"
        );
    }
}

/// switch_org moves a verified identity between orgs its user may act in, and no further.
#[test]
fn switch_org_stays_within_the_users_orgs() {
    let db = populated();
    verified_mode(&db);
    let jti = session(&db, ADA, Some(ACME));
    let mut c = db.authenticated();
    assert_eq!(
        sqlstate(c.execute("SELECT truxe.switch_org($1::text::uuid)", &[&EU])),
        "42501",
        "no verified identity"
    );
    let mut t = c.transaction().unwrap();
    let org: Option<String> = t
        .query_one("SELECT org_id::text FROM truxe.authenticate($1)", &[&jti])
        .unwrap()
        .get(0);
    assert_eq!(org.as_deref(), Some(ACME));
    t.execute("SELECT truxe.switch_org($1::text::uuid)", &[&EU])
        .unwrap();
    let (org, orgs): (String, String) = {
        let r = t
            .query_one(
                "SELECT truxe.current_org_id()::text,
                        (SELECT string_agg(slug::text, ' ' ORDER BY slug) FROM truxe.organizations)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((org.as_str(), orgs.as_str()), (EU, "acme-eu"));
    t.execute("SAVEPOINT s", &[]).unwrap();
    assert_eq!(
        sqlstate(t.execute("SELECT truxe.switch_org($1::text::uuid)", &[&BETA])),
        "42501"
    );
    t.execute("ROLLBACK TO SAVEPOINT s", &[]).unwrap();
    let org: String = t
        .query_one("SELECT truxe.current_org_id()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(org, EU, "a refused switch changes nothing");
}

/// PostgREST deployments: the `sub` and `org_id` claims when nothing else names a user,
/// honoured from any login in `trusted` mode and from trusted logins only in `verified`.
#[test]
fn jwt_claims_are_the_last_source() {
    let db = populated();
    let claims =
        format!("{{\"sub\": \"{CARL}\", \"org_id\": \"{ACME}\", \"role\": \"authenticated\"}}");
    let identity = |c: &mut Client| -> (Option<String>, Option<String>, Option<String>) {
        let r = c
            .query_one(
                "SELECT truxe.current_user_id()::text, truxe.current_org_id()::text,
                        truxe.identity_source()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let mut c = db.authenticated();
    c.execute(
        "SELECT set_config('request.jwt.claims', $1, false)",
        &[&claims],
    )
    .unwrap();
    assert_eq!(
        identity(&mut c),
        (Some(CARL.into()), Some(ACME.into()), Some("jwt".into()))
    );
    // a setting wins over the claims
    c.execute(
        "SELECT set_config('app.current_user_id', $1, false)",
        &[&ADA],
    )
    .unwrap();
    assert_eq!(
        identity(&mut c),
        (Some(ADA.into()), None, Some("setting".into()))
    );
    c.execute("SELECT set_config('app.current_user_id', '', false)", &[])
        .unwrap();
    // claims that are not JSON, not uuids, or huge are nobody, never an error
    for bad in [
        "not json".to_string(),
        "{\"sub\": 42}".to_string(),
        "{\"sub\": \"ada\"}".to_string(),
        format!(
            "{{\"sub\": \"{CARL}\", \"pad\": \"{}\"}}",
            "x".repeat(1 << 20)
        ),
        "[".repeat(10_000),
    ] {
        c.execute(
            "SELECT set_config('request.jwt.claims', $1, false)",
            &[&bad],
        )
        .unwrap();
        let got = identity(&mut c);
        if bad.contains("pad") {
            assert_eq!(got.0.as_deref(), Some(CARL), "a large but valid claims set");
        } else {
            assert_eq!(got, (None, None, None), "claims {:.30}", bad);
        }
    }
    // verified mode: honoured for a service_account login, ignored for an end user's
    verified_mode(&db);
    let mut service = db.service();
    service
        .execute(
            "SELECT set_config('request.jwt.claims', $1, false)",
            &[&claims],
        )
        .unwrap();
    assert_eq!(identity(&mut service).0.as_deref(), Some(CARL));
    let mut c = db.authenticated();
    c.execute(
        "SELECT set_config('request.jwt.claims', $1, false)",
        &[&claims],
    )
    .unwrap();
    assert_eq!(identity(&mut c), (None, None, None));
}

/// Parallel workers evaluate the identity functions with the leader's verified identity
/// (it travels with the leader's settings).
#[test]
fn parallel_workers_see_the_leaders_identity() {
    let db = populated();
    verified_mode(&db);
    db.superuser()
        .batch_execute(&format!(
            "CREATE TABLE public.probe (n int, owner uuid);
             INSERT INTO public.probe SELECT g, '{CARL}' FROM generate_series(1, 200000) g;
             ANALYZE public.probe;
             GRANT SELECT ON public.probe TO authenticated;"
        ))
        .unwrap();
    let jti = session(&db, CARL, None);
    let mut c = db.authenticated();
    let forced = if crate::harness::Server::major() >= 16 {
        "debug_parallel_query"
    } else {
        "force_parallel_mode"
    };
    let count = "SELECT count(*) FROM public.probe WHERE owner = truxe.current_user_id()";
    let mut t = c.transaction().unwrap();
    t.query("SELECT 1 FROM truxe.authenticate($1)", &[&jti])
        .unwrap();
    let serial: i64 = t.query_one(count, &[]).unwrap().get(0);
    assert_eq!(serial, 200_000);
    t.batch_execute(&format!(
        "SET LOCAL {forced} = on; SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0;
         SET LOCAL min_parallel_table_scan_size = 0; SET LOCAL max_parallel_workers_per_gather = 2"
    ))
    .unwrap();
    let plan: Vec<String> = t
        .query(&format!("EXPLAIN (ANALYZE, COSTS OFF) {count}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let launched = plan
        .iter()
        .find_map(|l| l.trim().strip_prefix("Workers Launched: "))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(launched >= 1, "no parallel worker ran: {plan:#?}");
    let parallel: i64 = t.query_one(count, &[]).unwrap().get(0);
    assert_eq!(parallel, serial, "workers saw another identity");
    t.rollback().unwrap();
}

/// Behind Debian's PgBouncer in transaction pooling, with one server connection shared by
/// several clients, one client's verified identity never reaches another: each sees its
/// own user inside its transaction, and nobody in the next statement.
#[test]
fn pgbouncer_transaction_pooling_never_leaks_an_identity() {
    let Some(pgbouncer) = installed("pgbouncer") else {
        return skip(
            "pgbouncer is not installed (scripts/setup installs Debian's pgbouncer): \
             the verified identity behind a pooler was NOT tested",
        );
    };
    let db = populated();
    verified_mode(&db);
    let dir = std::env::temp_dir().join(format!("truxe-pgbouncer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_loopback_port();
    std::fs::write(dir.join("users.txt"), format!("\"{AUTH_LOGIN}\" \"\"\n")).unwrap();
    std::fs::write(
        dir.join("pgbouncer.ini"),
        format!(
            "[databases]\n{db} = host={socket} port={pgport} dbname={db}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
             default_pool_size = 1\nmin_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 20\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            db = db.name,
            socket = server().socket_dir().display(),
            pgport = server().port(),
            users = dir.join("users.txt").display(),
        ),
    )
    .unwrap();
    // the pooler runs as the server's OS user: it refuses to run as root
    std::process::Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&dir)
        .status()
        .unwrap();
    let _pooler = Killed(
        crate::harness::as_owner(&pgbouncer)
            .arg(dir.join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgbouncer"),
    );
    let connect = || -> Client {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user(AUTH_LOGIN)
                .dbname(&db.name)
                .connect(NoTls)
            {
                Ok(c) => return c,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("pgbouncer on 127.0.0.1:{port}: {e}")
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    };
    let users = [ADA, CARL, BOB];
    let jtis: Vec<String> = users.iter().map(|u| session(&db, u, None)).collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(users.len()));
    let threads: Vec<_> = users
        .iter()
        .zip(jtis)
        .map(|(user, jti)| {
            let (user, barrier, mut c) = (user.to_string(), barrier.clone(), connect());
            std::thread::spawn(move || {
                barrier.wait();
                let mut pids = std::collections::BTreeSet::new();
                for round in 0..40 {
                    let mut t = c.transaction().unwrap();
                    t.query("SELECT 1 FROM truxe.authenticate($1)", &[&jti])
                        .unwrap();
                    let r = t
                        .query_one(
                            "SELECT truxe.current_user_id()::text, pg_backend_pid(),
                                    (SELECT count(*) FROM truxe.sessions WHERE user_id <> truxe.current_user_id())",
                            &[],
                        )
                        .unwrap();
                    assert_eq!(r.get::<_, String>(0), user, "round {round}");
                    assert_eq!(r.get::<_, i64>(2), 0, "another user's sessions, round {round}");
                    pids.insert(r.get::<_, i32>(1));
                    t.commit().unwrap();
                    // the next statement is another transaction, maybe for another client
                    let r = c
                        .query_one(
                            "SELECT truxe.current_user_id()::text, (SELECT count(*) FROM truxe.sessions)",
                            &[],
                        )
                        .unwrap();
                    assert_eq!(r.get::<_, Option<String>>(0), None, "round {round}");
                    assert_eq!(r.get::<_, i64>(1), 0, "round {round}");
                }
                pids
            })
        })
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    for t in threads {
        pids.extend(t.join().expect("a client failed"));
    }
    assert_eq!(
        pids.len(),
        1,
        "the clients shared one server connection: {pids:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// In autocommit, `authenticate` and the next call are two transactions: switch_org and
/// revoke_other_sessions then find no verified identity, and their 42501 says so with a
/// HINT that the identity is transaction-local (before, the message told a caller who had
/// just called authenticate to call it); in one transaction both work.
#[test]
fn without_a_verified_identity_in_autocommit_the_error_hints_that_it_is_transaction_local() {
    let db = populated();
    let jti = session(&db, ADA, None);
    let mut c = db.authenticated();
    c.execute("SELECT 1 FROM truxe.authenticate($1)", &[&jti])
        .unwrap();
    for sql in [
        format!("SELECT truxe.switch_org('{ACME}')"),
        format!("SELECT truxe.revoke_other_sessions('{jti}')"),
    ] {
        let e = c.execute(sql.as_str(), &[]).unwrap_err();
        let e = e.as_db_error().unwrap();
        assert_eq!(e.code().code(), "42501", "{sql}");
        let hint = e.hint().unwrap_or_default();
        assert!(
            hint.contains("autocommit") && hint.contains("one transaction"),
            "{sql}: {hint:?}"
        );
    }
    let mut t = c.transaction().unwrap();
    t.execute("SELECT 1 FROM truxe.authenticate($1)", &[&jti])
        .unwrap();
    t.execute(&format!("SELECT truxe.switch_org('{ACME}')"), &[])
        .unwrap();
    let n: i32 = t
        .query_one(
            "SELECT truxe.revoke_other_sessions($1::text::uuid)",
            &[&jti],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    t.commit().unwrap();
}
