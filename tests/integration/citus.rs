//! Scale-out on Citus (docs/scaling.md, "Past one primary: Citus"), through a real cluster:
//! a coordinator and two workers on loopback, each with `shared_preload_libraries =
//! 'citus'`, one database with `CREATE EXTENSION citus` on every node and `CREATE
//! EXTENSION truxe CASCADE` on the coordinator (which Citus propagates), converted by
//! `truxe.distribute()` before any row exists. Every flow then runs through the coordinator
//! as the harness's NOSUPERUSER LOGIN roles.
//!
//! Citus 13.2 is built for PostgreSQL 16 by scripts/setup (scripts/citus-build). Elsewhere,
//! or where the build is absent, the cluster tests say SKIPPED; scripts/test sets
//! `TRUXE_CITUS=required` on PostgreSQL 16, where an absent build fails them instead. One
//! cluster serves every test of this file (started once, about 10 s); each test uses its
//! own users, orgs and keys.
use crate::harness::{
    as_owner, assert_one_verified, free_loopback_port, init_data_dir, run, server, skip, sqlstate,
    wrong_secret, Server, AUTH_LOGIN, SERVICE_LOGIN,
};
use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once, OnceLock};

pub(crate) const DB: &str = "truxe_citus";

/// One PostgreSQL of the cluster, listening on 127.0.0.1:`port` (and a private socket);
/// removed at exit ([`STARTED`]).
pub(crate) struct Node {
    pub(crate) port: u16,
}

/// Every node this process started (bindir, directory): the exit hook removes them all,
/// those of a cluster whose start-up panicked too.
static STARTED: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());

impl Node {
    pub(crate) fn start(tag: &str) -> Node {
        static HOOK: Once = Once::new();
        // SAFETY: registering a plain extern "C" fn; it runs once at process exit.
        HOOK.call_once(|| unsafe {
            libc::atexit(stop_cluster);
        });
        let bindir = PathBuf::from(Server::pg_config("bindir"));
        let dir = std::env::temp_dir().join(format!("truxe-citus-{tag}-{}", std::process::id()));
        STARTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((bindir.clone(), dir.clone()));
        // trust: local and loopback connections need no password, between nodes too
        init_data_dir(&bindir, &dir);
        let port = free_loopback_port();
        // wal_level=logical: Citus moves shards online by logical replication (a worker
        // added later, tests/integration/citus_ops.rs). max_worker_processes: every
        // database with Citus holds a background worker on every node (its maintenance
        // daemon; the suite makes about ten databases), and an online move needs one more
        // on the target node for its subscription: with the default 8 the suite ran out
        // and the move waited for ever. citus.logical_replication_timeout: a move whose
        // replication makes no progress for a minute fails instead (Citus waits 2 hours).
        // every node holds the same key file: the coordinator signs the audit claim with
        // it, the workers verify it (src/claim.rs)
        let opts = format!(
            "-c shared_preload_libraries=citus -c listen_addresses=127.0.0.1 -p {port} -k {} \
             -c fsync=off -c max_connections=100 -c log_min_messages=warning -c wal_level=logical \
             -c max_worker_processes=32 -c citus.logical_replication_timeout=60000 \
             -c truxe.encryption_key_file={}",
            dir.display(),
            key_file().display()
        );
        run(as_owner(&bindir.join("pg_ctl"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-o", &opts, "start"]));
        Node { port }
    }

    pub(crate) fn client(&self, dbname: &str, user: &str) -> Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname(dbname)
            .application_name("truxe-citus")
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect to {dbname} on :{} as {user}: {e}", self.port))
    }
}

/// Stops the node in `dir` (if it runs) and deletes its directory.
fn remove_node(bindir: &std::path::Path, dir: &std::path::Path) {
    let _ = as_owner(&bindir.join("pg_ctl"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-m", "immediate", "-w", "stop"])
        .output();
    let _ = std::fs::remove_dir_all(dir);
}

/// The cluster's key file (one key, `c1`), outside every data directory, readable by the
/// server: its path and the key's 64 hex digits.
fn cluster_key() -> &'static (PathBuf, String) {
    static KEYS: OnceLock<(PathBuf, String)> = OnceLock::new();
    KEYS.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("truxe-citus-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the key directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("truxe.keys");
        let key = crate::mfa::random_key();
        std::fs::write(&path, format!("c1:{key}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        (path, key)
    })
}

fn key_file() -> PathBuf {
    cluster_key().0.clone()
}

pub(crate) struct Cluster {
    pub(crate) coordinator: Node,
    pub(crate) workers: [Node; 2],
    /// What `truxe.distribute()` returned: (table_name, placement), by table name.
    placement: Vec<(String, String)>,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

extern "C" fn stop_cluster() {
    for (bindir, dir) in STARTED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        remove_node(bindir, dir);
    }
    if let Some(dir) = key_file().parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether Citus is installed into the PostgreSQL under test; when it is not, says why the
/// caller skips (or fails, where scripts/test requires it).
fn citus_available() -> bool {
    let required = std::env::var("TRUXE_CITUS").as_deref() == Ok("required");
    let built = std::path::Path::new(&Server::pg_config("pkglibdir"))
        .join("citus.so")
        .is_file();
    if built {
        return true;
    }
    assert!(
        !required,
        "TRUXE_CITUS=required but citus.so is not in {} (scripts/citus-build)",
        Server::pg_config("pkglibdir")
    );
    skip(&format!(
        "Citus cluster test: no Citus build for PostgreSQL {} (scripts/setup builds it for 16)",
        Server::major()
    ));
    false
}

/// The shared cluster, started and converted on first use; None (after a SKIPPED line)
/// where Citus is not built.
pub(crate) fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| {
            if !citus_available() {
                return None;
            }
            let coordinator = Node::start("coord");
            let workers = [Node::start("w1"), Node::start("w2")];
            // databases are not propagated: one on every node, each with Citus
            for n in std::iter::once(&coordinator).chain(&workers) {
                n.client("postgres", "postgres")
                    .batch_execute(&format!("CREATE DATABASE {DB} TEMPLATE template0"))
                    .expect("create the database");
                n.client(DB, "postgres")
                    .batch_execute("CREATE EXTENSION citus")
                    .expect("CREATE EXTENSION citus");
            }
            let mut c = coordinator.client(DB, "postgres");
            c.execute(
                "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
                &[&i32::from(coordinator.port)],
            )
            .expect("citus_set_coordinator_host");
            for w in &workers {
                c.execute(
                    "SELECT citus_add_node('127.0.0.1', $1)",
                    &[&i32::from(w.port)],
                )
                .expect("citus_add_node");
            }
            // roles are propagated to the workers; truxe's own two are NOLOGIN, which
            // the test logins never SET ROLE to (docs/scaling.md, "Roles")
            c.batch_execute(&format!(
                "CREATE ROLE {AUTH_LOGIN} LOGIN NOSUPERUSER;
                 CREATE ROLE {SERVICE_LOGIN} LOGIN NOSUPERUSER;
                 CREATE EXTENSION truxe CASCADE;
                 GRANT authenticated TO {AUTH_LOGIN};
                 GRANT service_account TO {SERVICE_LOGIN};"
            ))
            .expect("install truxe on the coordinator");
            let placement = c
                .query("SELECT table_name, placement FROM truxe.distribute()", &[])
                .expect("truxe.distribute()")
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            Some(Cluster {
                coordinator,
                workers,
                placement,
            })
        })
        .as_ref()
}

impl Cluster {
    pub(crate) fn service(&self) -> Client {
        self.coordinator.client(DB, SERVICE_LOGIN)
    }
    pub(crate) fn authenticated(&self) -> Client {
        self.coordinator.client(DB, AUTH_LOGIN)
    }
    pub(crate) fn superuser(&self) -> Client {
        self.coordinator.client(DB, "postgres")
    }
    /// An `authenticated` connection acting as `user` for its whole session.
    pub(crate) fn acting_as(&self, user: &str) -> Client {
        let mut c = self.authenticated();
        c.execute(
            "SELECT truxe.set_context($1::text::uuid, NULL, false)",
            &[&user],
        )
        .expect("set the acting user");
        c
    }
}

/// Runs `run` while a trigger on `table` fails (P0001) every `event` (`INSERT`, `UPDATE`)
/// of a row for which `condition` holds, after truxe's own row triggers (its name sorts
/// last), then removes the trigger: a statement that fails after truxe's triggers have
/// written the workers. Returns what `run` returned.
pub(crate) fn failing_last<T>(
    su: &mut Client,
    table: &str,
    event: &str,
    condition: &str,
    run: impl FnOnce() -> T,
) -> T {
    let name = unique("refuse_");
    su.batch_execute(&format!(
        "CREATE FUNCTION public.{name}() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
           IF {condition} THEN RAISE EXCEPTION 'refused after truxe''s triggers'; END IF;
           RETURN NULL;
         END $f$;
         CREATE TRIGGER zz_{name} AFTER {event} ON {table}
           FOR EACH ROW EXECUTE FUNCTION public.{name}();"
    ))
    .unwrap();
    let result = run();
    su.batch_execute(&format!(
        "DROP TRIGGER zz_{name} ON {table}; DROP FUNCTION public.{name}();"
    ))
    .unwrap();
    result
}

/// A unique suffix per call (tests share the cluster's database).
pub(crate) fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::SeqCst))
}

/// An active user with a fresh e-mail, inserted as service_account: (id, email).
pub(crate) fn user(c: &Cluster) -> (String, String) {
    let email = format!("{}@citus.example", unique("u"));
    let id = c
        .service()
        .query_one(
            "INSERT INTO truxe.users (email, status) VALUES ($1, 'active') RETURNING id::text",
            &[&email],
        )
        .expect("insert a user")
        .get(0);
    (id, email)
}

/// An org created by `owner` through authenticated: its id.
fn org(c: &Cluster, owner: &str) -> String {
    let slug = unique("org-");
    c.acting_as(owner)
        .query_one(
            "SELECT truxe.create_organization($1::text::public.citext, 'Org')::text",
            &[&slug],
        )
        .expect("create_organization")
        .get(0)
}

/// distribute() outside a Citus coordinator: 55000 without Citus (the single-node server
/// of the other tests), 42501 for a caller that is not a superuser. Runs on every version.
#[test]
fn distribute_refuses_without_citus_and_for_a_non_superuser() {
    let db = server().fresh_db(true);
    assert_eq!(
        sqlstate(
            db.superuser()
                .query("SELECT * FROM truxe.distribute()", &[])
        ),
        "55000"
    );
    // service_account has no EXECUTE; a superuser check backs it up
    assert_eq!(
        sqlstate(db.service().query("SELECT * FROM truxe.distribute()", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(
            db.authenticated()
                .query("SELECT * FROM truxe.distribute()", &[])
        ),
        "42501"
    );
}

/// The placement distribute() reports, the shards it made on both workers, and its
/// refusals: a second call, a worker, and a database whose tables hold rows.
#[test]
fn distribute_places_every_table_and_refuses_what_it_cannot_convert() {
    let Some(c) = cluster() else { return };
    let placement: Vec<String> = c
        .placement
        .iter()
        .map(|(t, p)| format!("{t}: {p}"))
        .collect();
    assert!(placement.contains(&"magic_link_challenges: distributed by id".to_string()));
    assert!(placement.contains(&"rate_limits: distributed by key_hash".to_string()));
    assert!(placement.contains(&"role_permissions: reference".to_string()));
    assert!(placement.contains(&"audit_seals: reference".to_string()));
    assert!(placement.contains(&"sessions: distributed by jti_hash".to_string()));
    for t in [
        "audit_logs",
        "usage_metrics",
        "secrets",
        "invitations",
        "api_keys",
        "memberships",
    ] {
        assert!(
            placement.contains(&format!("{t}: distributed by org_id")),
            "{t}: {placement:?}"
        );
    }
    for t in ["mfa_factors", "mfa_recovery_codes"] {
        assert!(
            placement.contains(&format!("{t}: distributed by user_id")),
            "{t}: {placement:?}"
        );
    }
    assert!(placement.contains(&"organizations: distributed by id".to_string()));
    // the coordinator's copies of memberships and organizations, which truxe reads and writes
    assert!(placement.contains(&"memberships_by_user: coordinator".to_string()));
    assert!(placement.contains(&"organizations_by_slug: coordinator".to_string()));
    // each API key's org by the key's id, what authenticate_api_key reads first
    assert!(placement.contains(&"api_key_orgs: coordinator".to_string()));
    // each TOTP factor's user by the factor's id, what verify_totp reads first
    assert!(placement.contains(&"mfa_factor_users: coordinator".to_string()));
    assert_eq!(placement.len(), 21, "every truxe table: {placement:?}");

    let mut su = c.superuser();
    // shards of both distributed tables on both workers
    let ports: Vec<i32> = su
        .query(
            "SELECT DISTINCT n.nodeport FROM pg_dist_shard s
               JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid)
              WHERE s.logicalrelid IN ('truxe.rate_limits'::regclass,
                                       'truxe.magic_link_challenges'::regclass)
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut workers: Vec<i32> = c.workers.iter().map(|w| i32::from(w.port)).collect();
    workers.sort_unstable();
    assert_eq!(ports, workers);
    // the org-scoped tables are colocated: one colocation group, so an org's rows of each
    // sit in the same shard group on the same worker
    let groups: i64 = su
        .query_one(
            "SELECT count(DISTINCT colocationid) FROM pg_dist_partition
              WHERE logicalrelid IN ('truxe.audit_logs'::regclass, 'truxe.usage_metrics'::regclass,
                                     'truxe.secrets'::regclass, 'truxe.invitations'::regclass,
                                     'truxe.api_keys'::regclass, 'truxe.memberships'::regclass,
                                     'truxe.organizations'::regclass)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        groups, 1,
        "audit_logs, usage_metrics, secrets, invitations, api_keys, memberships and organizations colocated"
    );
    // the claim checks distribute() created carry no SET clause (they resolve no name): the
    // security report knows them
    let pinned: bool = su
        .query_one(
            "SELECT ok FROM truxe.security_report() WHERE check_name = 'search_path_pinned'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(pinned, "security_report flags distribute()'s functions");

    assert_eq!(
        sqlstate(su.query("SELECT * FROM truxe.distribute()", &[])),
        "55000"
    );
    assert_eq!(
        sqlstate(
            c.workers[0]
                .client(DB, "postgres")
                .query("SELECT * FROM truxe.distribute()", &[])
        ),
        "55000"
    );

    // a database that already holds data: refused before anything changes
    let db = unique("withrows");
    c.coordinator
        .client("postgres", "postgres")
        .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE template0"))
        .unwrap();
    let mut other = c.coordinator.client(&db, "postgres");
    other
        .batch_execute(
            "CREATE EXTENSION citus; CREATE EXTENSION truxe CASCADE;
             INSERT INTO truxe.users (email, status) VALUES ('early@citus.example', 'active');",
        )
        .unwrap();
    let e = other
        .query("SELECT * FROM truxe.distribute()", &[])
        .unwrap_err();
    assert_eq!(crate::harness::code_of(&e), "55000");
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert!(
        message.as_deref().is_some_and(|m| m.contains("holds rows")),
        "{message:?}"
    );
    let distributed: i64 = other
        .query_one("SELECT count(*) FROM pg_dist_partition", &[])
        .unwrap()
        .get(0);
    assert_eq!(distributed, 0, "nothing converted");

    // a coordinator outside Citus' metadata (no citus_set_coordinator_host) would hold no
    // copy of the reference tables: refused before anything changes
    let db = unique("nocoord");
    c.coordinator
        .client("postgres", "postgres")
        .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE template0"))
        .unwrap();
    let mut other = c.coordinator.client(&db, "postgres");
    other
        .batch_execute("CREATE EXTENSION citus; CREATE EXTENSION truxe CASCADE;")
        .unwrap();
    let e = other
        .query("SELECT * FROM truxe.distribute()", &[])
        .unwrap_err();
    assert_eq!(crate::harness::code_of(&e), "55000");
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("citus_set_coordinator_host")),
        "{message:?}"
    );
    let distributed: i64 = other
        .query_one("SELECT count(*) FROM pg_dist_partition", &[])
        .unwrap()
        .get(0);
    assert_eq!(distributed, 0, "nothing converted");
}

/// The rows of each copy (placement) of a reference table, by node port: `query` is run on
/// every copy with `%s` standing for the copy's table.
pub(crate) fn on_every_copy(su: &mut Client, table: &str, query: &str) -> Vec<(i32, String)> {
    su.query(
        "SELECT nodeport, coalesce(result, '') FROM run_command_on_placements($1::text::regclass, $2)
          WHERE success ORDER BY nodeport",
        &[&table, &query],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Citus' partition method of `table` ('n' for a reference table) and its (first) shard id.
fn partition_and_shard(su: &mut Client, table: &str) -> (String, i64) {
    let r = su
        .query_one(
            "SELECT p.partmethod::text, s.shardid FROM pg_dist_partition p
               JOIN pg_dist_shard s USING (logicalrelid)
              WHERE p.logicalrelid = $1::text::regclass ORDER BY s.shardid LIMIT 1",
            &[&table],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// role_permissions as distribute() leaves it: a reference table with a copy on the
/// coordinator and on both workers, whose default role rights were copied in; has_permission
/// and permitted_org_ids read the coordinator's copy (its shard) by name, which every change
/// of the table writes: through the coordinator, as real logins, a right that
/// service_account adds to a role is held by that role's members at once (in the adding
/// transaction too, and on every copy), and gone again when it is deleted or rolled back.
#[test]
fn role_permissions_is_a_reference_table_that_has_permission_reads_on_the_coordinator() {
    let Some(c) = cluster() else { return };
    let mut su = c.superuser();
    let (kind, shard) = partition_and_shard(&mut su, "truxe.role_permissions");
    assert_eq!(kind, "n", "a reference table");
    let mut ports: Vec<i32> = std::iter::once(&c.coordinator)
        .chain(&c.workers)
        .map(|n| i32::from(n.port))
        .collect();
    ports.sort_unstable();
    let defaults = on_every_copy(
        &mut su,
        "truxe.role_permissions",
        "SELECT count(*) FROM %s WHERE (role, permission) IN (('owner', '*'), ('member', 'users:read'))",
    );
    assert_eq!(
        defaults,
        ports
            .iter()
            .map(|p| (*p, "2".to_string()))
            .collect::<Vec<_>>(),
        "the default rights on every node"
    );
    // the Citus form of the two readers names the coordinator's copy
    let readers: Vec<String> = su
        .query(
            "SELECT p.proname::text FROM pg_proc p
              WHERE p.pronamespace = 'truxe'::regnamespace
                AND p.prosrc LIKE '%FROM truxe.role_permissions_' || $1::bigint::text || ' rp%'
              ORDER BY 1",
            &[&shard],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(readers, ["permitted_org_ids", "user_holds_permission"]);

    let (ada, _) = user(c);
    let acme = org(c, &ada);
    let (mia, _) = user(c);
    c.service()
        .execute(
            "INSERT INTO truxe.memberships_by_user (org_id, user_id, role, invited_at, joined_at)
             VALUES ($1::text::uuid, $2::text::uuid, 'member', now(), now())",
            &[&acme, &mia],
        )
        .unwrap();
    let holds = |who: &str, p: &str| -> bool {
        c.acting_as(who)
            .query_one(
                "SELECT truxe.has_permission($1::text::uuid, $2)",
                &[&acme, &p],
            )
            .unwrap()
            .get(0)
    };
    let permitted = |who: &str, p: &str| -> Vec<String> {
        c.acting_as(who)
            .query_one(
                "SELECT coalesce(array_agg(x::text), '{}') FROM unnest(truxe.permitted_org_ids($1)) x",
                &[&p],
            )
            .unwrap()
            .get(0)
    };
    assert!(holds(&ada, "refprobe:read"), "the owner's '*'");
    assert!(holds(&mia, "users:read"), "a member's default right");
    assert!(!holds(&mia, "users:write"));
    assert!(!holds(&mia, "refprobe:read"));
    assert!(permitted(&mia, "refprobe:read").is_empty());

    // a right added to the member role: held at once, in the adding transaction too
    let mut svc = c.service();
    let mut t = svc.transaction().unwrap();
    t.execute(
        "INSERT INTO truxe.role_permissions (role, permission) VALUES ('member', 'refprobe:read')",
        &[],
    )
    .unwrap();
    let inside: bool = t
        .query_one(
            "SELECT truxe.has_permission($1::text::uuid, 'refprobe:read', $2::text::uuid)",
            &[&acme, &mia],
        )
        .unwrap()
        .get(0);
    assert!(inside, "the adding transaction sees its change");
    t.rollback().unwrap();
    assert!(
        !holds(&mia, "refprobe:read"),
        "rolled back on the coordinator's copy"
    );
    assert_eq!(
        on_every_copy(
            &mut su,
            "truxe.role_permissions",
            "SELECT count(*) FROM %s WHERE permission = 'refprobe:read'"
        ),
        ports
            .iter()
            .map(|p| (*p, "0".to_string()))
            .collect::<Vec<_>>(),
        "and on every copy"
    );
    svc.execute(
        "INSERT INTO truxe.role_permissions (role, permission) VALUES ('member', 'refprobe:read')",
        &[],
    )
    .unwrap();
    assert_eq!(
        on_every_copy(
            &mut su,
            "truxe.role_permissions",
            "SELECT count(*) FROM %s WHERE permission = 'refprobe:read'"
        ),
        ports
            .iter()
            .map(|p| (*p, "1".to_string()))
            .collect::<Vec<_>>(),
        "written on every copy"
    );
    assert!(holds(&mia, "refprobe:read"), "held once committed");
    assert_eq!(permitted(&mia, "refprobe:read"), [acme.as_str()]);
    assert!(!holds(&mia, "refprobe:write"));
    svc.execute(
        "DELETE FROM truxe.role_permissions WHERE role = 'member' AND permission = 'refprobe:read'",
        &[],
    )
    .unwrap();
    assert!(!holds(&mia, "refprobe:read"), "gone once deleted");
    assert!(permitted(&mia, "refprobe:read").is_empty());
    // the members of authenticated read the role rights, and write none
    let n: i64 = c
        .authenticated()
        .query_one(
            "SELECT count(*) FROM truxe.role_permissions WHERE role = 'owner'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(
        sqlstate(c.authenticated().execute(
            "INSERT INTO truxe.role_permissions (role, permission) VALUES ('viewer', 'refprobe:read')",
            &[]
        )),
        "42501"
    );
}

/// has_permission's single-node form over a `role_permissions` that is a Citus reference
/// table, made by hand without distribute() (which gives the readers a form of their own):
/// Citus fails on a CTE column list over a reference table, which the rights computation no
/// longer uses. In a database of its own on the coordinator.
#[test]
fn has_permission_works_over_a_reference_role_permissions() {
    let Some(c) = cluster() else { return };
    let db = unique("reference");
    c.coordinator
        .client("postgres", "postgres")
        .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE template0"))
        .unwrap();
    let mut su = c.coordinator.client(&db, "postgres");
    // each in its own transaction, as a deployment runs them
    for sql in [
        "CREATE EXTENSION citus".to_string(),
        "CREATE EXTENSION truxe CASCADE".to_string(),
        format!(
            "SELECT citus_set_coordinator_host('127.0.0.1', {})",
            c.coordinator.port
        ),
        "SELECT create_reference_table('truxe.role_permissions')".to_string(),
    ] {
        su.batch_execute(&sql).unwrap();
    }
    let user: String = su
        .query_one(
            "INSERT INTO truxe.users (email, status) VALUES ('ref@citus.example', 'active')
             RETURNING id::text",
            &[],
        )
        .unwrap()
        .get(0);
    su.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&user],
    )
    .unwrap();
    let org: String = su
        .query_one(
            "SELECT truxe.create_organization('ref-org', 'Ref')::text",
            &[],
        )
        .unwrap()
        .get(0);
    let stranger: String = su
        .query_one(
            "INSERT INTO truxe.users (email, status) VALUES ('ref2@citus.example', 'active')
             RETURNING id::text",
            &[],
        )
        .unwrap()
        .get(0);
    let mut holds = |who: &str, p: &str| -> bool {
        su.query_one(
            "SELECT truxe.has_permission($1::text::uuid, $2, $3::text::uuid)",
            &[&org, &p, &who],
        )
        .unwrap()
        .get(0)
    };
    assert!(holds(&user, "users:write"), "the owner's role rights");
    assert!(!holds(&stranger, "users:read"), "no membership, no rights");
}

/// At most five links per e-mail in 15 minutes on Citus too (TX429 for the sixth, whatever
/// the e-mail's case), counted per minute in one shard of rate_limits, not by counting the
/// challenges on every shard; another e-mail, and an application's own rate-limit key of
/// the same text, are not affected.
#[test]
fn magic_link_issuance_is_limited_per_email_in_one_shard() {
    let Some(c) = cluster() else { return };
    let mut s = c.service();
    let email = format!("{}@citus.example", unique("limit"));
    for i in 0..5 {
        let asked = if i % 2 == 0 {
            email.clone()
        } else {
            email.to_uppercase()
        };
        s.query_one("SELECT token FROM truxe.issue_magic_link($1)", &[&asked])
            .unwrap();
    }
    let sixth = s.query_one("SELECT token FROM truxe.issue_magic_link($1)", &[&email]);
    assert_eq!(sqlstate(sixth), "TX429");
    let other = format!("{}@citus.example", unique("limit"));
    s.query_one("SELECT token FROM truxe.issue_magic_link($1)", &[&other])
        .unwrap();
    // an application's window for the e-mail's own text is its own
    let allowed: bool = s
        .query_one("SELECT allowed FROM truxe.rate_limit_hit($1, 1)", &[&email])
        .unwrap()
        .get(0);
    assert!(allowed);
    // the e-mail's counters: one key (the hash of NUL, "truxe.magic_link", NUL and the
    // lowercased e-mail), all in one shard
    let mut su = c.superuser();
    let key: String = su
        .query_one(
            "SELECT encode(sha256('\\x00'::bytea || convert_to('truxe.magic_link', 'UTF8')
                                  || '\\x00'::bytea || convert_to(lower($1), 'UTF8')), 'hex')",
            &[&email],
        )
        .unwrap()
        .get(0);
    let per_shard: Vec<i64> = su
        .query(
            &format!(
                "SELECT r.result::bigint FROM run_command_on_shards('truxe.rate_limits',
                   $$SELECT coalesce(sum(request_count), 0) FROM %s WHERE key_hash = '{key}'$$) r
                  WHERE r.result::bigint > 0"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let counted = per_shard.iter().sum::<i64>();
    assert_eq!(per_shard.len(), 1, "one shard: {per_shard:?}");
    assert_eq!(counted, 5, "five links counted under the e-mail's key");
}

/// magic link → session → refresh → validate, as service_account through the coordinator.
#[test]
fn magic_link_session_refresh_validate() {
    let Some(c) = cluster() else { return };
    let mut s = c.service();
    let email = format!("{}@citus.example", unique("login"));
    let token: String = s
        .query_one("SELECT token FROM truxe.issue_magic_link($1)", &[&email])
        .unwrap()
        .get(0);
    let r = s
        .query_one(
            "SELECT status, user_id::text FROM truxe.verify_magic_link($1)",
            &[&token],
        )
        .unwrap();
    let (status, user): (String, String) = (r.get(0), r.get(1));
    assert_eq!(status, "verified");
    // a token works once
    let again: String = s
        .query_one("SELECT status FROM truxe.verify_magic_link($1)", &[&token])
        .unwrap()
        .get(0);
    assert_ne!(again, "verified");
    // five wrong secrets lock a link (its attempts counted on its shard), and metrics()
    // joins the failures in the audit trail with the distributed challenges
    let other: String = s
        .query_one(
            "SELECT token FROM truxe.issue_magic_link($1)",
            &[&format!("{}@citus.example", unique("locked"))],
        )
        .unwrap()
        .get(0);
    for _ in 0..5 {
        let st: String = s
            .query_one(
                "SELECT status FROM truxe.verify_magic_link($1)",
                &[&wrong_secret(&other)],
            )
            .unwrap()
            .get(0);
        assert_eq!(st, "invalid");
    }
    let st: String = s
        .query_one("SELECT status FROM truxe.verify_magic_link($1)", &[&other])
        .unwrap()
        .get(0);
    assert_eq!(st, "locked");
    let locked: f64 = s
        .query_one(
            "SELECT value FROM truxe.metrics() WHERE metric = 'magic_links_locked_last_hour'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(locked, 1.0);

    let r = s
        .query_one(
            "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid)",
            &[&user],
        )
        .unwrap();
    let (jti, refresh): (String, String) = (r.get(0), r.get(1));
    let r = s
        .query_one(
            "SELECT jti::text, refresh_jti::text FROM truxe.refresh_session($1::text::uuid)",
            &[&refresh],
        )
        .unwrap();
    let new_jti: String = r.get(0);
    let valid = |s: &mut Client, jti: &str| -> Option<String> {
        s.query_opt(
            "SELECT user_id::text FROM truxe.validate_session($1::text::uuid)",
            &[&jti],
        )
        .unwrap()
        .map(|r| r.get(0))
    };
    assert_eq!(valid(&mut s, &new_jti), Some(user.clone()));
    assert_eq!(
        valid(&mut s, &jti),
        None,
        "the refreshed session is replaced"
    );

    // the identity of the request: authenticate as the authenticated login
    let mut a = c.authenticated();
    let mut t = a.transaction().unwrap();
    let who: String = t
        .query_one(
            "SELECT user_id::text FROM truxe.authenticate($1)",
            &[&new_jti],
        )
        .unwrap()
        .get(0);
    assert_eq!(who, user);
    let own: i64 = t
        .query_one("SELECT count(*) FROM truxe.sessions", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        own, 2,
        "the user's own sessions (the refreshed one and its successor)"
    );
    t.commit().unwrap();
}

/// One magic link verified by 6 clients at once through the coordinator: its row lock is
/// taken on the worker that holds its shard, so exactly one gets `verified`.
#[test]
fn concurrent_verifications_of_one_link_give_one_verified() {
    let Some(c) = cluster() else { return };
    let email = format!("{}@citus.example", unique("race"));
    let token: String = c
        .service()
        .query_one("SELECT token FROM truxe.issue_magic_link($1)", &[&email])
        .unwrap()
        .get(0);
    let barrier = std::sync::Barrier::new(6);
    let statuses: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (token, barrier) = (&token, &barrier);
                s.spawn(move || {
                    let mut svc = c.service();
                    barrier.wait();
                    svc.query_one("SELECT status FROM truxe.verify_magic_link($1)", &[token])
                        .unwrap()
                        .get::<_, String>(0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_one_verified(&statuses);
}

/// Two tenants under RLS, has_permission, and an invitation accepted, through the
/// coordinator as real logins.
#[test]
fn tenants_are_isolated_and_permissions_and_invitations_work() {
    let Some(c) = cluster() else { return };
    let (ada, _) = user(c);
    let (bob, _) = user(c);
    let acme = org(c, &ada);
    let beta = org(c, &bob);

    // (organizations is distributed: its policy reads the claim, which a transaction that
    // established the identity carries)
    let seen = |who: &str| -> Vec<String> {
        let mut a = c.authenticated();
        let mut t = in_context(&mut a, who);
        let ids = t
            .query("SELECT id::text FROM truxe.organizations ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        t.commit().unwrap();
        ids
    };
    assert_eq!(seen(&ada), [acme.as_str()]);
    assert_eq!(seen(&bob), [beta.as_str()]);
    let mut a = c.acting_as(&ada);
    // audit_logs is distributed: its policies run on the workers, which know the identity
    // from the claim that set_context signs for its transaction (docs/scaling.md)
    let mut t = in_context(&mut a, &ada);
    let audit_of_beta: i64 = t
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[&beta],
        )
        .unwrap()
        .get(0);
    assert_eq!(audit_of_beta, 0, "another tenant's audit rows");
    let own_audit: i64 = t
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[&acme],
        )
        .unwrap()
        .get(0);
    assert!(own_audit >= 1, "the owner reads their org's audit rows");
    t.commit().unwrap();

    // has_permission: role_permissions is a reference table, read on the coordinator
    let holds = |c: &mut Client, org: &str, p: &str| -> bool {
        c.query_one(
            "SELECT truxe.has_permission($1::text::uuid, $2)",
            &[&org, &p],
        )
        .unwrap()
        .get(0)
    };
    assert!(holds(&mut a, &acme, "users:write"));
    assert!(!holds(&mut a, &beta, "users:write"));

    // invitation by e-mail → accepted by a new user, who then holds the member's rights
    let invitee = format!("{}@citus.example", unique("inv"));
    let token: String = a
        .query_one(
            "SELECT token FROM truxe.invite_by_email($1::text::uuid, $2, 'member')",
            &[&acme, &invitee],
        )
        .unwrap()
        .get(0);
    let r = c
        .service()
        .query_one(
            "SELECT status, org_id::text, user_id::text FROM truxe.accept_invitation_token($1)",
            &[&token],
        )
        .unwrap();
    let (status, org_id, carl): (String, String, String) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(
        (status.as_str(), org_id.as_str()),
        ("accepted", acme.as_str())
    );
    let mut k = c.acting_as(&carl);
    assert_eq!(seen(&carl), [acme.as_str()]);
    assert!(
        !holds(&mut k, &acme, "users:write"),
        "a member is not an admin"
    );
    assert!(!holds(&mut k, &beta, "users:read"));
}

/// rate_limit_hit (distributed by key_hash) and record_usage stay exact with 4 clients at
/// once through the coordinator.
#[test]
fn rate_limits_and_usage_are_exact_under_four_clients() {
    let Some(c) = cluster() else { return };
    let (ada, _) = user(c);
    let acme = org(c, &ada);
    let key = unique("login:");
    let allowed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (key, acme) = (key.clone(), acme.clone());
                s.spawn(move || {
                    let mut svc = c.service();
                    let mut allowed = 0;
                    for _ in 0..25 {
                        let ok: bool = svc
                            .query_one(
                                "SELECT allowed FROM truxe.rate_limit_hit($1, 30, '1 hour')",
                                &[&key],
                            )
                            .unwrap()
                            .get(0);
                        allowed += usize::from(ok);
                        svc.execute(
                            "SELECT truxe.record_usage($1::text::uuid, 'api_requests')",
                            &[&acme],
                        )
                        .unwrap();
                    }
                    allowed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(allowed, 30, "exactly the limit, of 100 hits");
    let used: i64 = c
        .service()
        .query_one(
            "SELECT metric_value FROM truxe.usage_metrics
              WHERE org_id = $1::text::uuid AND metric_type = 'api_requests'",
            &[&acme],
        )
        .unwrap()
        .get(0);
    assert_eq!(used, 100);
}

/// A transaction of `client` in which `user` acts (set_context, transaction-local): the
/// claim reaches the workers only inside a transaction block.
pub(crate) fn in_context<'a>(client: &'a mut Client, user: &str) -> postgres::Transaction<'a> {
    let mut t = client.transaction().unwrap();
    t.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, true)",
        &[&user],
    )
    .unwrap();
    t
}

/// For each org of `orgs`: the shard that holds its rows of `table` (every shard's rows
/// counted per org with run_command_on_shards), the worker port of that shard, and the
/// count there; asserting that the org's rows are in exactly one shard, the one Citus
/// computes for its id, and that they are all of the org's rows.
pub(crate) fn org_rows_by_shard(
    su: &mut Client,
    table: &str,
    orgs: &[String],
) -> Vec<(i64, i32, i64)> {
    let per_shard: Vec<(i64, i32, String)> = su
        .query(
            &format!(
                "SELECT r.shardid, n.nodeport, r.result
                   FROM run_command_on_shards('{table}',
                          $$SELECT coalesce(string_agg(org_id::text || '=' || n, ','), '')
                              FROM (SELECT org_id, count(*) n FROM %s GROUP BY 1) x$$) r
                   JOIN pg_dist_placement p ON p.shardid = r.shardid
                   JOIN pg_dist_node n USING (groupid)"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(per_shard.len(), 32, "{table}: one row per shard");
    orgs.iter()
        .map(|org| {
            let holding: Vec<(i64, i32, i64)> = per_shard
                .iter()
                .filter_map(|(shard, port, counts)| {
                    counts
                        .split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(o, _)| o == org)
                        .map(|(_, n)| (*shard, *port, n.parse().unwrap()))
                })
                .collect();
            assert_eq!(holding.len(), 1, "{table}: org {org}'s rows in one shard: {holding:?}");
            let expected: i64 = su
                .query_one(
                    "SELECT get_shard_id_for_distribution_column($1::text::regclass, $2::text::uuid)",
                    &[&table, org],
                )
                .unwrap()
                .get(0);
            assert_eq!(holding[0].0, expected, "{table}: the shard of org {org}'s id");
            let all: i64 = su
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE org_id = $1::text::uuid"),
                    &[org],
                )
                .unwrap()
                .get(0);
            assert_eq!(holding[0].2, all, "{table}: all of org {org}'s rows");
            holding[0]
        })
        .collect()
}

/// The shard of `truxe.audit_logs` that holds `org`'s rows (and of every table colocated
/// with it), and the port of the worker that holds that shard.
pub(crate) fn audit_shard(su: &mut Client, org: &str) -> (i64, i32) {
    let r = su
        .query_one(
            "SELECT p.shardid, n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
              WHERE p.shardid = get_shard_id_for_distribution_column('truxe.audit_logs',
                                                                      $1::text::uuid)",
            &[&org],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// `n` (at least 2) tenants, each an admin and their org, with orgs on both workers: org
/// ids are random, so the last one is drawn again while all the others landed on one worker
/// (the draws left over are other tenants).
pub(crate) fn orgs_on_both_workers(c: &Cluster, n: usize) -> Vec<(String, String)> {
    let mut su = c.superuser();
    let mut tenants: Vec<(String, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    while tenants.len() < n {
        let (admin, _) = user(c);
        let org = org(c, &admin);
        let (_, port) = audit_shard(&mut su, &org);
        if tenants.len() == n - 1 && seen.len() < 2 && seen.contains(&port) {
            continue;
        }
        seen.insert(port);
        tenants.push((admin, org));
    }
    tenants
}

/// usage_metrics distributed by org_id: record_usage through the coordinator writes each
/// org's counter in the shard of its org (the shard group of its audit rows), on both
/// workers; an org admin reads their own org's usage through the claim and no other
/// tenant's, and nothing without a claim (autocommit) or with a forged one; an unknown org
/// is still 23503 (the foreign key's code on a single node).
#[test]
fn usage_rows_live_in_their_orgs_shard_and_admins_read_them_through_the_claim() {
    let Some(c) = cluster() else { return };
    let tenants = orgs_on_both_workers(c, 4);
    let orgs: Vec<String> = tenants.iter().map(|(_, o)| o.clone()).collect();
    let mut svc = c.service();
    for (i, org) in orgs.iter().enumerate() {
        let amount = i64::try_from(i).unwrap() + 1;
        let total: i64 = svc
            .query_one(
                "SELECT truxe.record_usage($1::text::uuid, 'api_requests', $2)",
                &[org, &amount],
            )
            .unwrap()
            .get(0);
        assert_eq!(total, amount);
        svc.execute(
            "SELECT truxe.record_usage($1::text::uuid, 'emails', 1,
                                       now() - interval '40 days')",
            &[org],
        )
        .unwrap();
    }
    let mut su = c.superuser();
    let usage = org_rows_by_shard(&mut su, "truxe.usage_metrics", &orgs);
    let audit = org_rows_by_shard(&mut su, "truxe.audit_logs", &orgs);
    // a shard's hash range: colocated shards of one org cover the same range
    let range = |su: &mut Client, shard: i64| -> (String, String) {
        let r = su
            .query_one(
                "SELECT shardminvalue, shardmaxvalue FROM pg_dist_shard WHERE shardid = $1",
                &[&shard],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let mut ports = std::collections::BTreeSet::new();
    for ((u, a), org) in usage.iter().zip(&audit).zip(&orgs) {
        assert_eq!(u.2, 2, "two counters of org {org}");
        assert_eq!(
            u.1, a.1,
            "org {org}'s usage on the worker of its audit rows"
        );
        assert_eq!(
            range(&mut su, u.0),
            range(&mut su, a.0),
            "org {org}'s usage in the shard group of its audit rows (colocated)"
        );
        ports.insert(u.1);
    }
    assert_eq!(ports.len(), 2, "the orgs' usage on both workers");

    let read = |client: &mut Client, setup: &str| -> Vec<(String, i64)> {
        let mut t = client.transaction().unwrap();
        t.batch_execute(setup).unwrap();
        let rows = t
            .query(
                "SELECT org_id::text, sum(metric_value)::bigint FROM truxe.usage_metrics
                  WHERE org_id::text = ANY ($1) GROUP BY 1 ORDER BY 1",
                &[&orgs],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        t.commit().unwrap();
        rows
    };
    let mut a = c.authenticated();
    for (i, (admin, org)) in tenants.iter().enumerate() {
        let amount = i64::try_from(i).unwrap() + 1;
        assert_eq!(
            read(
                &mut a,
                &format!("SELECT truxe.set_context('{admin}', NULL, true)")
            ),
            vec![(org.clone(), amount + 1)],
            "admin of org {org} reads its usage and no other tenant's"
        );
    }
    // authenticate's claim, for a session of the second admin
    let (bob, beta) = &tenants[1];
    let jti: String = c
        .service()
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
            &[bob],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        read(&mut a, &format!("SELECT FROM truxe.authenticate('{jti}')")),
        vec![(beta.clone(), 3)]
    );
    // a member who administers nothing reads nothing
    let (carol, _) = user(c);
    c.service()
        .execute(
            "INSERT INTO truxe.memberships_by_user (org_id, user_id, role)
             VALUES ($1::text::uuid, $2::text::uuid, 'member')",
            &[beta, &carol],
        )
        .unwrap();
    assert_eq!(
        read(
            &mut a,
            &format!("SELECT truxe.set_context('{carol}', NULL, true)")
        ),
        vec![]
    );
    // no claim (autocommit: Citus sends SET LOCAL only inside a transaction block), a
    // forged one: nothing
    let (ada, acme) = &tenants[0];
    let none: i64 = c
        .acting_as(ada)
        .query_one(
            "SELECT count(*) FROM truxe.usage_metrics WHERE org_id = $1::text::uuid",
            &[acme],
        )
        .unwrap()
        .get(0);
    assert_eq!(none, 0);
    let forged = format!(
        "v1:c1:9223372036854775807:{ada}::{beta}:{beta}::{}",
        "0".repeat(64)
    );
    assert_eq!(read(&mut a, &set_claim(&forged)), vec![]);
    // authenticated still writes nothing there
    let mut t = in_context(&mut a, ada);
    assert_eq!(
        sqlstate(t.execute(
            "INSERT INTO truxe.usage_metrics (org_id, metric_type, period_start, period_end)
             VALUES ($1::text::uuid, 'x', now(), now() + interval '1 day')",
            &[acme],
        )),
        "42501"
    );
    drop(t);
    // an unknown org: 23503, as the foreign key says on a single node
    assert_eq!(
        sqlstate(svc.query(
            "SELECT truxe.record_usage(gen_random_uuid(), 'api_requests')",
            &[]
        )),
        "23503"
    );
}

/// secrets (the vault) distributed by org_id: put_secret, get_secret and delete_secret
/// through the coordinator, each org's secrets in the shard of its org on both workers, the
/// values bound to their row; rotate_encryption_key runs over the shards (no row lock
/// across shards); end users still read nothing of the table.
#[test]
fn secrets_live_in_their_orgs_shard_and_the_vault_works_through_the_coordinator() {
    let Some(c) = cluster() else { return };
    let tenants = orgs_on_both_workers(c, 4);
    let orgs: Vec<String> = tenants.iter().map(|(_, o)| o.clone()).collect();
    let mut svc = c.service();
    for org in &orgs {
        for name in ["stripe", "webhook"] {
            svc.execute(
                "SELECT truxe.put_secret($1::text::uuid, $2, $3)",
                &[org, &name, &format!("{name} of {org}")],
            )
            .unwrap();
        }
        // replacing keeps the id and the row
        svc.execute(
            "SELECT truxe.put_secret($1::text::uuid, 'stripe', $2, '{\"v\": 2}')",
            &[org, &format!("new stripe of {org}")],
        )
        .unwrap();
    }
    let mut su = c.superuser();
    let ports: std::collections::BTreeSet<i32> = org_rows_by_shard(&mut su, "truxe.secrets", &orgs)
        .iter()
        .map(|(_, port, n)| {
            assert_eq!(*n, 2);
            *port
        })
        .collect();
    assert_eq!(ports.len(), 2, "the orgs' secrets on both workers");
    for org in &orgs {
        let v: Option<String> = svc
            .query_one("SELECT truxe.get_secret($1::text::uuid, 'stripe')", &[org])
            .unwrap()
            .get(0);
        assert_eq!(v.as_deref(), Some(format!("new stripe of {org}").as_str()));
    }
    // a value copied onto another org's row does not decrypt (bound to its row)
    su.execute(
        "UPDATE truxe.secrets s SET key_id = o.key_id, nonce = o.nonce, ciphertext = o.ciphertext
           FROM (SELECT key_id, nonce, ciphertext FROM truxe.secrets
                  WHERE org_id = $1::text::uuid AND name = 'webhook') o
          WHERE s.org_id = $2::text::uuid AND s.name = 'webhook'",
        &[&orgs[0], &orgs[1]],
    )
    .unwrap_or_else(|_| {
        // Citus may refuse a join of two shards in an UPDATE: copy through the client
        let r = su
            .query_one(
                "SELECT key_id, nonce, ciphertext FROM truxe.secrets
                  WHERE org_id = $1::text::uuid AND name = 'webhook'",
                &[&orgs[0]],
            )
            .unwrap();
        let (k, n, ct): (String, Vec<u8>, Vec<u8>) = (r.get(0), r.get(1), r.get(2));
        su.execute(
            "UPDATE truxe.secrets SET key_id = $2, nonce = $3, ciphertext = $4
              WHERE org_id = $1::text::uuid AND name = 'webhook'",
            &[&orgs[1], &k, &n, &ct],
        )
        .unwrap()
    });
    assert_eq!(
        sqlstate(svc.query(
            "SELECT truxe.get_secret($1::text::uuid, 'webhook')",
            &[&orgs[1]]
        )),
        "XX001"
    );
    // the vault's audit rows, in the org's shard like the rest of its rows
    let written: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE org_id = $1::text::uuid AND action = 'secret.written'",
            &[&orgs[2]],
        )
        .unwrap()
        .get(0);
    assert_eq!(written, 3);
    let deleted: bool = svc
        .query_one(
            "SELECT truxe.delete_secret($1::text::uuid, 'webhook')",
            &[&orgs[2]],
        )
        .unwrap()
        .get(0);
    assert!(deleted);
    let gone: Option<String> = svc
        .query_one(
            "SELECT truxe.get_secret($1::text::uuid, 'webhook')",
            &[&orgs[2]],
        )
        .unwrap()
        .get(0);
    assert_eq!(gone, None);
    // every value is under the current key: the rotation reads every shard, re-seals none
    let rotated: i64 = svc
        .query_one("SELECT truxe.rotate_encryption_key(100)", &[])
        .unwrap()
        .get(0);
    assert_eq!(rotated, 0);
    // an unknown org is P0002, as on a single node
    assert_eq!(
        sqlstate(svc.query("SELECT truxe.put_secret(gen_random_uuid(), 'x', 'y')", &[])),
        "P0002"
    );
    // end users read nothing of the table, even an org admin with a valid claim
    let (ada, _) = &tenants[0];
    let mut a = c.authenticated();
    let mut t = in_context(&mut a, ada);
    assert_eq!(
        sqlstate(t.query("SELECT count(*) FROM truxe.secrets", &[])),
        "42501"
    );
}

/// invitations distributed by org_id: each org's invitations in the shard of its org on
/// both workers; invite_by_email, inspect_invitation, accept_invitation_token (a new user,
/// a pending member, a joined member), a wrong secret counted, revoke_invitation (refused
/// without rights) all through the coordinator; an org admin reads their org's invitations
/// through the claim and no other tenant's, a member none, autocommit none.
#[test]
fn invitations_live_in_their_orgs_shard_and_work_through_the_coordinator() {
    let Some(c) = cluster() else { return };
    let tenants = orgs_on_both_workers(c, 4);
    let orgs: Vec<String> = tenants.iter().map(|(_, o)| o.clone()).collect();
    let invite = |admin: &str, org: &str, email: &str| -> String {
        c.acting_as(admin)
            .query_one(
                "SELECT token FROM truxe.invite_by_email($1::text::uuid, $2, 'member')",
                &[&org, &email],
            )
            .unwrap()
            .get(0)
    };
    let mut tokens = Vec::new();
    for (admin, org) in &tenants {
        for _ in 0..2 {
            let email = format!("{}@citus.example", unique("inv"));
            tokens.push((org.clone(), email.clone(), invite(admin, org, &email)));
        }
    }
    let mut su = c.superuser();
    let ports: std::collections::BTreeSet<i32> =
        org_rows_by_shard(&mut su, "truxe.invitations", &orgs)
            .iter()
            .map(|(_, port, n)| {
                assert_eq!(*n, 2);
                *port
            })
            .collect();
    assert_eq!(ports.len(), 2, "the orgs' invitations on both workers");

    let mut svc = c.service();
    let status_of = |svc: &mut Client, sql: &str, token: &str| -> String {
        svc.query_one(sql, &[&token]).unwrap().get(0)
    };
    let inspect = "SELECT status FROM truxe.inspect_invitation($1)";
    let accept = "SELECT status FROM truxe.accept_invitation_token($1)";
    // inspect, then a wrong secret (counted, on the shard), then accept by a new user
    let (acme, _, token) = &tokens[0];
    assert_eq!(status_of(&mut svc, inspect, token), "valid");
    // (its first character changed: a changed last one may be a non-canonical base64 end,
    // refused before the row is read, and then counts nothing)
    let wrong = wrong_secret(token);
    assert_eq!(status_of(&mut svc, inspect, &wrong), "invalid");
    let attempts: i32 = su
        .query_one(
            "SELECT attempts FROM truxe.invitations WHERE org_id = $1::text::uuid
              AND token_hash IS NOT NULL ORDER BY created_at LIMIT 1",
            &[acme],
        )
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1, "the wrong secret counted");
    let r = svc
        .query_one(
            "SELECT status, org_id::text, user_id::text FROM truxe.accept_invitation_token($1)",
            &[token],
        )
        .unwrap();
    let (status, org_id, new_user): (String, String, String) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(
        (status.as_str(), org_id.as_str()),
        ("accepted", acme.as_str())
    );
    let role: String = su
        .query_one(
            "SELECT role::text FROM truxe.memberships
              WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid AND joined_at IS NOT NULL",
            &[acme, &new_user],
        )
        .unwrap()
        .get(0);
    assert_eq!(role, "member");
    assert_eq!(status_of(&mut svc, accept, token), "used");
    // an existing user with a pending membership joins; a joined member is told so
    let (ada, _) = &tenants[0];
    let (dora, dora_email) = user(c);
    svc.execute(
        "INSERT INTO truxe.memberships_by_user (org_id, user_id, role) VALUES ($1::text::uuid, $2::text::uuid, 'member')",
        &[acme, &dora],
    )
    .unwrap();
    let t = invite(ada, acme, &dora_email);
    assert_eq!(status_of(&mut svc, accept, &t), "accepted");
    let joined: bool = su
        .query_one(
            "SELECT joined_at IS NOT NULL FROM truxe.memberships
              WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid",
            &[acme, &dora],
        )
        .unwrap()
        .get(0);
    assert!(joined);
    let t = invite(ada, acme, &dora_email);
    assert_eq!(status_of(&mut svc, accept, &t), "already_member");
    // metrics() counts the pending invitations over the shards (and its cleanup lag reads
    // their oldest dates there)
    let metrics: Vec<(String, f64)> = svc
        .query("SELECT metric, value FROM truxe.metrics()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let pending = metrics
        .iter()
        .find(|(m, _)| m == "invitations_pending")
        .map(|(_, v)| *v);
    assert!(pending >= Some(7.0), "{metrics:?}");
    // one token accepted by 6 clients at once: accepted once (the lock by (org_id, id))
    let racer = format!("{}@citus.example", unique("race"));
    let t = invite(ada, acme, &racer);
    let statuses: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let t = t.clone();
                s.spawn(move || -> String {
                    c.service()
                        .query_one(
                            "SELECT status FROM truxe.accept_invitation_token($1)",
                            &[&t],
                        )
                        .unwrap()
                        .get(0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted = statuses.iter().filter(|s| *s == "accepted").count();
    assert_eq!(accepted, 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| s == "accepted" || s == "used"),
        "{statuses:?}"
    );
    // revoke_invitation: the org's admin may, another tenant's admin may not
    let (bob, beta) = &tenants[1];
    let (_, _, beta_token) = tokens.iter().find(|(o, _, _)| o == beta).unwrap();
    let beta_id = beta_token.split_once('.').unwrap().0.to_string();
    let beta_uuid = format!(
        "{}-{}-{}-{}-{}",
        &beta_id[0..8],
        &beta_id[8..12],
        &beta_id[12..16],
        &beta_id[16..20],
        &beta_id[20..32]
    );
    let revoke = |who: &str| -> bool {
        c.acting_as(who)
            .query_one(
                "SELECT truxe.revoke_invitation($1::text::uuid)",
                &[&beta_uuid],
            )
            .unwrap()
            .get(0)
    };
    assert!(!revoke(ada), "another tenant's admin");
    assert_eq!(status_of(&mut svc, inspect, beta_token), "valid");
    assert!(revoke(bob));
    assert_eq!(status_of(&mut svc, inspect, beta_token), "revoked");

    // reads through the claim: each admin their own org's invitations
    let read = |client: &mut Client, setup: &str| -> Vec<(String, i64)> {
        let mut t = client.transaction().unwrap();
        t.batch_execute(setup).unwrap();
        let rows = t
            .query(
                "SELECT org_id::text, count(*) FROM truxe.invitations
                  WHERE org_id::text = ANY ($1) GROUP BY 1 ORDER BY 1",
                &[&orgs],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        t.commit().unwrap();
        rows
    };
    let mut a = c.authenticated();
    for (admin, org) in &tenants {
        let all: i64 = su
            .query_one(
                "SELECT count(*) FROM truxe.invitations WHERE org_id = $1::text::uuid",
                &[org],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            read(
                &mut a,
                &format!("SELECT truxe.set_context('{admin}', NULL, true)")
            ),
            vec![(org.clone(), all)],
            "admin of org {org}"
        );
    }
    assert_eq!(
        read(
            &mut a,
            &format!("SELECT truxe.set_context('{new_user}', NULL, true)")
        ),
        vec![],
        "a member reads none"
    );
    let none: i64 = c
        .acting_as(ada)
        .query_one(
            "SELECT count(*) FROM truxe.invitations WHERE org_id = $1::text::uuid",
            &[acme],
        )
        .unwrap()
        .get(0);
    assert_eq!(none, 0, "autocommit: no claim on the workers");
    // the token hash stays unreadable
    let mut t = in_context(&mut a, ada);
    assert_eq!(
        sqlstate(t.query("SELECT token_hash FROM truxe.invitations", &[])),
        "42501"
    );
}

/// rotate_encryption_key over a distributed vault re-seals every value under the new key
/// (no row lock across shards: it replaces a value only if it is still the one it read).
/// In a database of its own (single-node Citus: the coordinator holds the shards), whose
/// key file, set for that database only, gains a second key: the shared database's claims
/// keep their key.
#[test]
fn rotate_encryption_key_reseals_a_distributed_vault() {
    let Some(c) = cluster() else { return };
    use std::os::unix::fs::PermissionsExt;
    let db = unique("rotation");
    let keys = cluster_key().0.with_file_name(format!("{db}.keys"));
    std::fs::write(&keys, format!("r1:{}\n", crate::mfa::random_key())).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut postgres = c.coordinator.client("postgres", "postgres");
    postgres
        .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE template0"))
        .unwrap();
    postgres
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET truxe.encryption_key_file = '{}'",
            keys.display()
        ))
        .unwrap();
    let mut su = c.coordinator.client(&db, "postgres");
    for sql in [
        "CREATE EXTENSION citus".to_string(),
        "CREATE EXTENSION truxe CASCADE".to_string(),
        format!(
            "SELECT citus_set_coordinator_host('127.0.0.1', {})",
            c.coordinator.port
        ),
        format!(
            "SELECT citus_set_node_property('127.0.0.1', {}, 'shouldhaveshards', true)",
            c.coordinator.port
        ),
        "SELECT count(*) FROM truxe.distribute()".to_string(),
    ] {
        su.batch_execute(&sql).unwrap();
    }
    let shards: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'truxe.secrets'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(shards, 32, "the vault is distributed");
    let orgs: Vec<String> = (0..6)
        .map(|i| {
            su.query_one(
                "INSERT INTO truxe.organizations_by_slug (slug, name) VALUES ($1, 'Rot') RETURNING id::text",
                &[&format!("rot-{i}")],
            )
            .unwrap()
            .get(0)
        })
        .collect();
    let mut svc = c.coordinator.client(&db, SERVICE_LOGIN);
    for org in &orgs {
        svc.execute(
            "SELECT truxe.put_secret($1::text::uuid, 'token', $2)",
            &[org, &format!("token of {org}")],
        )
        .unwrap();
    }
    // a second factor, in the distributed mfa_factors
    let u: String = su
        .query_one(
            "INSERT INTO truxe.users (email, status) VALUES ('rot@citus.example', 'active')
             RETURNING id::text",
            &[],
        )
        .unwrap()
        .get(0);
    let r = svc
        .query_one(
            "SELECT factor_id::text, secret FROM truxe.enroll_totp($1::text::uuid, 'Rot')",
            &[&u],
        )
        .unwrap();
    let (factor, seed): (String, String) = (r.get(0), r.get(1));
    // a new last line: the current key
    let old = std::fs::read_to_string(&keys).unwrap();
    std::fs::write(&keys, format!("{old}r2:{}\n", crate::mfa::random_key())).unwrap();
    let mut total = 0;
    loop {
        let n: i64 = svc
            .query_one("SELECT truxe.rotate_encryption_key(4)", &[])
            .unwrap()
            .get(0);
        assert!(n <= 4, "one batch at most");
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 7, "every value (6 secrets, 1 factor) re-sealed once");
    let under: Vec<String> = su
        .query("SELECT DISTINCT key_id FROM truxe.secrets", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(under, vec!["r2".to_string()]);
    let under: String = su
        .query_one("SELECT key_id FROM truxe.mfa_factors", &[])
        .unwrap()
        .get(0);
    assert_eq!(under, "r2", "the factor re-sealed in its shard");
    crate::mfa::leave_step_margin(5);
    let status: String = svc
        .query_one(
            "SELECT truxe.verify_totp($1::text::uuid, $2)",
            &[&factor, &crate::mfa::python_code(&seed)],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "verified", "the re-sealed seed opens");
    for org in &orgs {
        let v: Option<String> = svc
            .query_one("SELECT truxe.get_secret($1::text::uuid, 'token')", &[org])
            .unwrap()
            .get(0);
        assert_eq!(v.as_deref(), Some(format!("token of {org}").as_str()));
    }
    drop((su, svc));
    let _ = std::fs::remove_file(&keys);
}

/// cleanup_expired_data removes old rows from the distributed tables (no cross-shard
/// FOR UPDATE) and keeps the live ones.
#[test]
fn cleanup_expired_data_deletes_across_shards() {
    let Some(c) = cluster() else { return };
    let mut su = c.superuser();
    let tag = unique("cleanup");
    su.execute(
        "INSERT INTO truxe.rate_limits (key_hash, window_start, window_end)
         SELECT md5($1 || i), now() - interval '3 hours', now() - interval '2 hours'
           FROM generate_series(1, 40) i",
        &[&tag],
    )
    .unwrap();
    su.execute(
        "INSERT INTO truxe.magic_link_challenges (email, token_hash, expires_at, created_at)
         SELECT 'old' || i || '@citus.example', repeat('a', 64),
                now() - interval '2 days', now() - interval '3 days'
           FROM generate_series(1, 30) i",
        &[],
    )
    .unwrap();
    // invitations expired 35 days ago, in orgs all over the shards (no foreign key on Citus)
    su.execute(
        "INSERT INTO truxe.invitations (org_id, email, token_hash, created_at, expires_at)
         SELECT gen_random_uuid(), 'old' || i || '@citus.example', repeat('b', 64),
                now() - interval '40 days', now() - interval '35 days'
           FROM generate_series(1, 20) i",
        &[],
    )
    .unwrap();
    // sessions expired 20 days ago, of users all over the shards (no foreign key on Citus)
    su.execute(
        "INSERT INTO truxe.sessions (user_id, family_id, created_at, expires_at, last_used_at,
                                     family_created_at)
         SELECT gen_random_uuid(), gen_random_uuid(), now() - interval '30 days',
                now() - interval '20 days', now() - interval '30 days', now() - interval '30 days'
           FROM generate_series(1, 20) i",
        &[],
    )
    .unwrap();
    let live = format!("{}@citus.example", unique("live"));
    c.service()
        .query("SELECT * FROM truxe.issue_magic_link($1)", &[&live])
        .unwrap();
    // a small batch: several rounds over both workers
    let deleted: Vec<(String, i64)> = c
        .service()
        .query(
            "SELECT table_name, deleted FROM truxe.cleanup_expired_data(7)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let of = |t: &str| deleted.iter().find(|(n, _)| n == t).map(|(_, d)| *d);
    assert!(of("rate_limits") >= Some(40), "{deleted:?}");
    assert!(of("magic_link_challenges") >= Some(30), "{deleted:?}");
    assert!(of("invitations") >= Some(20), "{deleted:?}");
    assert!(of("sessions") >= Some(20), "{deleted:?}");
    let left: i64 = su
        .query_one(
            "SELECT (SELECT count(*) FROM truxe.rate_limits WHERE window_end < now() - interval '1 hour')
                  + (SELECT count(*) FROM truxe.magic_link_challenges WHERE expires_at < now() - interval '1 day')
                  + (SELECT count(*) FROM truxe.invitations WHERE expires_at < now() - interval '30 days')
                  + (SELECT count(*) FROM truxe.sessions WHERE expires_at < now() - interval '7 days')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let kept: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.magic_link_challenges WHERE email = $1::text::public.citext",
            &[&live],
        )
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "a live challenge stays");
    // the sessions-only cleanup: one DELETE over every shard
    su.execute(
        "INSERT INTO truxe.sessions (user_id, family_id, created_at, expires_at, last_used_at,
                                     family_created_at)
         SELECT gen_random_uuid(), gen_random_uuid(), now() - interval '30 days',
                now() - interval '20 days', now() - interval '30 days', now() - interval '30 days'
           FROM generate_series(1, 10) i",
        &[],
    )
    .unwrap();
    let n: i32 = c
        .service()
        .query_one("SELECT truxe.cleanup_expired_sessions()", &[])
        .unwrap()
        .get(0);
    assert!(n >= 10, "{n}");
}

/// Signs `message` as the coordinator signs a claim (src/claim.rs): HMAC-SHA-256 under the
/// key derived from the key file's key with the claim label (src/crypto.rs). The test holds
/// the key file, so it can make a claim with any expiry; a login cannot.
fn sign_claim(message: &str) -> String {
    use hmac::{Hmac, Mac};
    type HmacSha256 = Hmac<sha2::Sha256>;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&cluster_key().1[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut m = HmacSha256::new_from_slice(&raw).unwrap();
    m.update(b"truxe/v1/citus-claim-key");
    let derived = m.finalize().into_bytes();
    let mut m = HmacSha256::new_from_slice(&derived).unwrap();
    m.update(message.as_bytes());
    format!("{message}:{}", hex(&m.finalize().into_bytes()))
}

/// Audit rows of `orgs` that `client` reads in a transaction that first runs `setup`.
fn audit_rows_read(client: &mut Client, setup: &str, orgs: &[String]) -> Vec<(String, i64)> {
    let mut t = client.transaction().unwrap();
    t.batch_execute(setup).unwrap();
    let rows = t
        .query(
            "SELECT org_id::text, count(*) FROM truxe.audit_logs
              WHERE org_id::text = ANY ($1) GROUP BY 1 ORDER BY 1",
            &[&orgs],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    t.commit().unwrap();
    rows
}

/// A `SET LOCAL` of the claim as any login may write it (Citus passes it to the workers).
fn set_claim(value: &str) -> String {
    format!(
        "SET LOCAL citus.propagate_set_commands = 'local';
         SET LOCAL truxe.claim = '{}';",
        value.replace('\'', "''")
    )
}

const NIL: &str = "00000000-0000-0000-0000-000000000000";

/// Issue 22's check: 12 orgs with audit rows, each org's rows in exactly one shard (the one
/// Citus computes for its id), the orgs over both workers; an org admin reads their org's
/// rows and no other tenant's through the signed claim (set_context and authenticate);
/// claims a login writes itself — garbage, altered, with a bad MAC, expired — give nothing,
/// and replaying one's own gives nothing new; rows without an org are still written (under
/// the nil uuid) and read by service_account; the append-only guard holds on the shards.
#[test]
fn each_orgs_audit_rows_live_in_its_shard_and_admins_read_them_through_the_claim() {
    let Some(c) = cluster() else { return };
    assert!(c.placement.contains(&(
        "audit_logs".to_string(),
        "distributed by org_id".to_string()
    )));
    let tenants = orgs_on_both_workers(c, 12);
    let orgs: Vec<String> = tenants.iter().map(|(_, o)| o.clone()).collect();
    let mut su = c.superuser();
    let total = |su: &mut Client, org: &str| -> i64 {
        su.query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[&org],
        )
        .unwrap()
        .get(0)
    };

    // where the rows are: each org's in the one shard of its id, all of them there
    let mut ports = std::collections::BTreeSet::new();
    for (_, port, n) in org_rows_by_shard(&mut su, "truxe.audit_logs", &orgs) {
        assert!(n >= 1, "create_organization's audit rows");
        ports.insert(port);
    }
    let workers: std::collections::BTreeSet<i32> =
        c.workers.iter().map(|w| i32::from(w.port)).collect();
    assert_eq!(ports, workers, "the 12 orgs spread over both workers");

    // an org admin reads their org's rows and no other tenant's: set_context's claim
    let (ada, acme) = &tenants[0];
    let (bob, beta) = &tenants[1];
    let mut a = c.authenticated();
    let own = vec![(acme.clone(), total(&mut su, acme))];
    assert_eq!(
        audit_rows_read(
            &mut a,
            &format!("SELECT truxe.set_context('{ada}', NULL, true)"),
            &orgs
        ),
        own
    );
    // … and authenticate's, for a session of another admin
    let jti: String = c
        .service()
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
            &[bob],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        audit_rows_read(
            &mut a,
            &format!("SELECT FROM truxe.authenticate('{jti}')"),
            &orgs
        ),
        vec![(beta.clone(), total(&mut su, beta))]
    );
    // in autocommit the claim reaches no worker (Citus sends SET LOCAL only inside a
    // transaction block): a session-level context reads nothing there, fail closed
    let none: i64 = c
        .acting_as(ada)
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[acme],
        )
        .unwrap()
        .get(0);
    assert_eq!(none, 0);
    assert_eq!(
        sqlstate(c.acting_as(ada).execute(
            "INSERT INTO truxe.audit_logs (org_id, actor_user_id, action)
             VALUES ($1::text::uuid, $2::text::uuid, 'app.note')",
            &[acme, ada],
        )),
        "42501",
        "an autocommit append has no claim either"
    );

    // the claim ada's transaction carried, as a login could read it
    let claim: String = {
        let mut t = in_context(&mut a, ada);
        let v = t
            .query_one("SELECT current_setting('truxe.claim')", &[])
            .unwrap()
            .get(0);
        t.commit().unwrap();
        v
    };
    assert!(claim.starts_with("v1:c1:"), "{claim}");
    let (message, mac) = claim.rsplit_once(':').unwrap();
    let flipped = format!(
        "{message}:{}{}",
        &mac[..mac.len() - 1],
        if mac.ends_with('0') { '1' } else { '0' }
    );
    let widened = claim.replacen(acme.as_str(), beta.as_str(), 2);
    assert_ne!(widened, claim);
    let now_micros: i64 = su
        .query_one(
            "SELECT ((extract(epoch FROM clock_timestamp()) - 946684800) * 1000000)::bigint",
            &[],
        )
        .unwrap()
        .get(0);
    let signed = |expiry: i64| sign_claim(&format!("v1:c1:{expiry}:{ada}::{acme}:{acme}:"));
    let expired = signed(now_micros - 1_000_000);
    let stranger = c.authenticated();
    let mut hostile = stranger;
    for (what, forged) in [
        ("garbage", "v1:c1:not-a-claim".to_string()),
        ("another tenant's org under the same MAC", widened),
        ("a changed MAC", flipped),
        ("an expired claim with a valid MAC", expired),
        ("an unknown key id", claim.replacen("v1:c1:", "v1:c2:", 1)),
    ] {
        assert_eq!(
            audit_rows_read(&mut hostile, &set_claim(&forged), &orgs),
            vec![],
            "{what}"
        );
    }
    // the same claim with a live expiry reads: the expiry alone refused it above
    assert_eq!(
        audit_rows_read(
            &mut hostile,
            &set_claim(&signed(now_micros + 30_000_000)),
            &orgs
        ),
        own
    );
    // replaying ada's own claim (within its minute) gives what ada had, nothing more
    assert_eq!(
        audit_rows_read(&mut hostile, &set_claim(&claim), &orgs),
        own
    );

    // an app appends rows in the acting user's name, for an org it may act in or for none
    // (the nil uuid on Citus: NULL is no distribution key), inside the claim's transaction
    let insert = |c: &mut Client, org: &str, actor: &str| {
        let mut t = in_context(c, ada);
        let r = t.execute(
            "INSERT INTO truxe.audit_logs (org_id, actor_user_id, action)
             VALUES ($1::text::uuid, $2::text::uuid, 'app.note')",
            &[&org, &actor],
        );
        // after a refusal the transaction is aborted: its end is a rollback either way
        let _ = t.commit();
        r
    };
    assert_eq!(insert(&mut a, acme, ada).unwrap(), 1);
    assert_eq!(insert(&mut a, NIL, ada).unwrap(), 1);
    assert_eq!(sqlstate(insert(&mut a, beta, ada)), "42501");
    assert_eq!(sqlstate(insert(&mut a, acme, bob)), "42501");
    // the request columns stay truxe's to fill in (checked on the coordinator)
    let mut t = in_context(&mut a, ada);
    assert_eq!(
        sqlstate(t.execute(
            "INSERT INTO truxe.audit_logs (org_id, actor_user_id, action, ip)
             VALUES ($1::text::uuid, $2::text::uuid, 'app.note', '10.0.0.1')",
            &[acme, ada],
        )),
        "42501"
    );
    drop(t);

    // rows without an org: written under the nil uuid, read by service_account as before,
    // not by an org admin
    let email = format!("{}@citus.example", unique("orgless"));
    let mut s = c.service();
    let token: String = s
        .query_one("SELECT token FROM truxe.issue_magic_link($1)", &[&email])
        .unwrap()
        .get(0);
    let login: String = s
        .query_one(
            "SELECT user_id::text FROM truxe.verify_magic_link($1)",
            &[&token],
        )
        .unwrap()
        .get(0);
    let orgless: i64 = s
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE org_id = $2::text::uuid AND target_id = $1 AND action = 'user.login'",
            &[&login, &NIL],
        )
        .unwrap()
        .get(0);
    assert_eq!(orgless, 1, "the login's audit row, under the nil uuid");
    let mut t = in_context(&mut a, ada);
    let seen: i64 = t
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[&NIL],
        )
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "an org admin does not read org-less rows");
    t.commit().unwrap();

    // append-only on the shards too
    for sql in [
        "UPDATE truxe.audit_logs SET details = '{}' WHERE org_id = $1::text::uuid",
        "DELETE FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
    ] {
        assert_eq!(sqlstate(s.execute(sql, &[acme])), "55000", "{sql}");
    }
}

/// A bulk INSERT … SELECT into the distributed audit_logs (as bench/data.sql loads it) takes
/// the request settings from the columns' defaults, request_ip() and request_id(), for
/// every row: they have no exception block, whose subtransaction per row Citus refused
/// ("another command is already in progress") while streaming the rows to the workers.
/// clear_context() withdraws the signed claim for the rest of the transaction, on the
/// workers too: an org admin's reads of the org's distributed audit rows end with the
/// context (before, the claim set_context made held until the transaction's end).
#[test]
fn clear_context_withdraws_the_claim_on_the_workers() {
    let Some(c) = cluster() else { return };
    let (ada, _) = user(c);
    let acme = org(c, &ada);
    let mut a = c.authenticated();
    let mut t = in_context(&mut a, &ada);
    let rows = |t: &mut postgres::Transaction<'_>| -> i64 {
        t.query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[&acme],
        )
        .unwrap()
        .get(0)
    };
    assert!(rows(&mut t) >= 1, "org.created, read through the claim");
    t.execute("SELECT truxe.clear_context()", &[]).unwrap();
    let claim: String = t
        .query_one("SELECT current_setting('truxe.claim')", &[])
        .unwrap()
        .get(0);
    assert_eq!(claim, "", "no one acts: no claim");
    assert_eq!(rows(&mut t), 0, "the workers no longer hold ada's claim");
    // a new context in the same transaction signs a new claim
    t.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, true)",
        &[&ada],
    )
    .unwrap();
    assert!(rows(&mut t) >= 1);
    t.commit().unwrap();
}

#[test]
fn a_bulk_insert_into_the_distributed_audit_log_takes_the_request_settings() {
    let Some(c) = cluster() else { return };
    let tenants = orgs_on_both_workers(c, 2);
    let orgs: Vec<String> = tenants.iter().map(|(_, o)| o.clone()).collect();
    let mut su = c.superuser();
    let request = "7d444840-9dc0-11d1-b245-5ffdce74fad2";
    let mut t = su.transaction().unwrap();
    t.batch_execute(&format!(
        "SET LOCAL app.ip = '203.0.113.9'; SET LOCAL app.request_id = 'urn:uuid:{request}';"
    ))
    .unwrap();
    let n = t
        .execute(
            "INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id)
             SELECT o::uuid, 'app.bulk', 'thing', g::text
               FROM unnest($1::text[]) o, generate_series(1, 50) g",
            &[&orgs],
        )
        .unwrap();
    t.commit().unwrap();
    assert_eq!(n, 100);
    let rows: Vec<(String, i64)> = su
        .query(
            "SELECT host(ip) || ' ' || request_id::text, count(*) FROM truxe.audit_logs
              WHERE action = 'app.bulk' AND org_id::text = ANY ($1) GROUP BY 1",
            &[&orgs],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(format!("203.0.113.9 {request}"), 100)]);
    // garbage in the settings is NULL, never an error, in bulk too
    let mut t = su.transaction().unwrap();
    t.batch_execute("SET LOCAL app.ip = '1.2.3.4.5'; SET LOCAL app.request_id = 'nope';")
        .unwrap();
    let n = t
        .execute(
            "INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id)
             SELECT o::uuid, 'app.bulk_garbage', 'thing', g::text
               FROM unnest($1::text[]) o, generate_series(1, 5) g",
            &[&orgs],
        )
        .unwrap();
    t.commit().unwrap();
    assert_eq!(n, 10);
    let nulls: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE action = 'app.bulk_garbage' AND ip IS NULL AND request_id IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(nulls, 10);
}

/// A database of its own on all three nodes (Citus, the workers added, truxe installed and
/// distributed), for a test that must own every audit row of its database (sealing covers
/// every org's rows; purging deletes by age). `worker_setup` runs on each worker's database
/// first (e.g. `ALTER DATABASE … SET`). Returns its name.
pub(crate) fn own_cluster_db(c: &Cluster, prefix: &str, worker_setup: &str) -> String {
    let db = own_citus_db(c, prefix, worker_setup);
    c.coordinator
        .client(&db, "postgres")
        .batch_execute("CREATE EXTENSION truxe CASCADE; SELECT count(*) FROM truxe.distribute();")
        .unwrap();
    db
}

/// A database of its own on all three nodes with Citus and the workers added, but without
/// truxe (see [`own_cluster_db`]). Returns its name.
pub(crate) fn own_citus_db(c: &Cluster, prefix: &str, worker_setup: &str) -> String {
    // one at a time: concurrent CREATE EXTENSION citus on one node collide
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let db = unique(prefix);
    for n in std::iter::once(&c.coordinator).chain(&c.workers) {
        n.client("postgres", "postgres")
            .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE template0"))
            .unwrap();
        n.client(&db, "postgres")
            .batch_execute("CREATE EXTENSION citus")
            .unwrap();
    }
    for w in &c.workers {
        if !worker_setup.is_empty() {
            w.client(&db, "postgres")
                .batch_execute(&worker_setup.replace("{db}", &db))
                .unwrap();
        }
    }
    let mut su = c.coordinator.client(&db, "postgres");
    su.execute(
        "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
        &[&i32::from(c.coordinator.port)],
    )
    .unwrap();
    for w in &c.workers {
        su.execute(
            "SELECT citus_add_node('127.0.0.1', $1)",
            &[&i32::from(w.port)],
        )
        .unwrap();
    }
    db
}

/// Orgs created by the superuser in `db` (each writes its organization.created audit row in
/// its shard) until there are at least `n` and their shards are on both workers: their ids.
fn orgs_in(c: &Cluster, db: &str, n: usize) -> Vec<String> {
    let mut su = c.coordinator.client(db, "postgres");
    let mut orgs = Vec::new();
    let mut ports = std::collections::BTreeSet::new();
    while orgs.len() < n || ports.len() < 2 {
        let org: String = su
            .query_one(
                "INSERT INTO truxe.organizations_by_slug (slug, name) VALUES ($1, 'Sealed') RETURNING id::text",
                &[&unique("sealed-")],
            )
            .unwrap()
            .get(0);
        let (_, port) = audit_shard(&mut su, &org);
        ports.insert(port);
        orgs.push(org);
    }
    orgs
}

/// The single-node row digest (sql/seal.sql's SQL function) over a copy of the audit rows
/// gathered on the coordinator, under its pinned settings: (row count, hash).
fn single_node_digest(su: &mut Client, after_id: i64, to_id: i64) -> (i64, Vec<u8>) {
    su.batch_execute(
        "DROP TABLE IF EXISTS pg_temp.audit_copy;
         CREATE TEMP TABLE audit_copy AS SELECT * FROM truxe.audit_logs;
         SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC';",
    )
    .unwrap();
    let r = su
        .query_one(
            "SELECT count(*),
                    sha256(coalesce(string_agg(sha256(textsend(ROW(
                      a.id, a.org_id, a.actor_user_id, a.action, a.target_type, a.target_id, a.details,
                      a.ip, a.user_agent, a.request_id, a.created_at)::text)), ''::bytea ORDER BY a.id),
                    ''::bytea))
               FROM pg_temp.audit_copy a WHERE a.id > $1 AND a.id <= $2",
            &[&after_id, &to_id],
        )
        .unwrap();
    su.batch_execute("RESET DateStyle; RESET TimeZone").unwrap();
    (r.get(0), r.get(1))
}

/// seal_audit_log and verify_audit_log on a distributed audit_logs, through the coordinator
/// as service_account, in a database of its own whose audit rows are in shards on both
/// workers, and whose workers' DateStyle and TimeZone differ from the coordinator's: the
/// row digest (distribute()'s form, hashed on the shards, folded in id order on the
/// coordinator) equals the single-node digest of the same rows, also for created_at values
/// with and without fractions, before year 1 and at infinity; HMAC seals (the cluster has
/// a key file), several of them with a small max_rows, verified; a backdated row found
/// before and after it is sealed; then a sealed row changed by a superuser directly on its
/// worker's shard (the guard disabled there) is found, and its seal named. audit_seals is
/// a reference table: 4 sealers at once through the coordinator (while audit rows are
/// written) make one chain whose ids follow it without a gap, the same seals on every
/// node, still dumped with the extension; its guard refuses UPDATE, DELETE and TRUNCATE to
/// the owner through the coordinator and to a superuser on a worker's copy (as a replica
/// too), service_account may only read it, authenticated not even that, and sealing on a
/// worker is refused (55000).
#[test]
fn sealing_and_verifying_a_distributed_audit_log() {
    let Some(c) = cluster() else { return };
    let db = own_cluster_db(
        c,
        "sealed",
        "ALTER DATABASE {db} SET DateStyle = 'SQL, DMY';
         ALTER DATABASE {db} SET TimeZone = 'Asia/Kathmandu';",
    );
    let orgs = orgs_in(c, &db, 8);
    let mut su = c.coordinator.client(&db, "postgres");
    let mut svc = c.coordinator.client(&db, SERVICE_LOGIN);
    let styles: Vec<String> = su
        .query(
            "SELECT result FROM run_command_on_workers('SELECT current_setting(''DateStyle'') || '' '' || current_setting(''TimeZone'')')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        styles,
        vec!["SQL, DMY Asia/Kathmandu"; 2],
        "the workers' connections print timestamps otherwise"
    );
    // rows of the trusted backend's own, with created_at values whose text the settings
    // would change, in orgs on both workers and under the nil uuid (no org)
    for (i, at) in [
        "2026-01-02 03:04:05+00",
        "2026-01-02 03:04:05.5+00",
        "2026-01-02 03:04:05.123456+05:45",
        "2026-01-02 03:04:05.000001+00",
        "0044-03-15 12:00:00+00 BC",
        "12026-01-02 00:00:00+00",
        "-infinity",
        "infinity",
    ]
    .iter()
    .enumerate()
    {
        let org = if i == 0 {
            "00000000-0000-0000-0000-000000000000".to_string()
        } else {
            orgs[i % orgs.len()].clone()
        };
        svc.execute(
            "INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id, details, created_at)
             VALUES ($1::text::uuid, 'app.sealed', 'thing', $2, jsonb_build_object('n', $3::int, 's', 'a \"q\" (x), y'),
                     $4::text::timestamptz)",
            &[&org, &format!("t{i}"), &(i as i32), at],
        )
        .unwrap();
    }
    let max_id: i64 = su
        .query_one("SELECT max(id) FROM truxe.audit_logs", &[])
        .unwrap()
        .get(0);
    // the digest as the seal computes it, from a session with other settings too
    su.batch_execute("SET DateStyle = 'Postgres, DMY'; SET TimeZone = 'America/New_York'")
        .unwrap();
    let r = su
        .query_one(
            "SELECT row_count, rows_hash FROM truxe.audit_rows_digest(0, $1)",
            &[&max_id],
        )
        .unwrap();
    let (n, hash): (i64, Vec<u8>) = (r.get(0), r.get(1));
    su.batch_execute("RESET DateStyle; RESET TimeZone").unwrap();
    assert!(n >= 16, "the orgs' rows and the backend's: {n}");
    assert_eq!(
        (n, hash),
        single_node_digest(&mut su, 0, max_id),
        "the distributed digest is the single-node one"
    );
    // a part of the range: the fold starts and ends where the ids say
    assert_eq!(
        {
            let r = su
                .query_one(
                    "SELECT row_count, rows_hash FROM truxe.audit_rows_digest(3, $1)",
                    &[&(max_id - 2)],
                )
                .unwrap();
            (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1))
        },
        single_node_digest(&mut su, 3, max_id - 2)
    );

    // sealing through the coordinator as service_account: every row, HMAC seals
    let sealed: i64 = svc
        .query_one("SELECT truxe.seal_audit_log()", &[])
        .unwrap()
        .get(0);
    assert_eq!(sealed, n, "the first seal covers every row");
    let more = orgs_in(c, &db, 4);
    assert!(more.len() >= 4);
    let sealed: i64 = svc
        .query_one("SELECT truxe.seal_audit_log(3)", &[])
        .unwrap()
        .get(0);
    assert!(sealed >= 4, "the new orgs' rows: {sealed}");
    let (seals, hmac): (i64, i64) = {
        let r = svc
            .query_one("SELECT count(*), count(key_id) FROM truxe.audit_seals", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(seals >= 3, "several seals of at most 3 rows: {seals}");
    assert_eq!(
        hmac, seals,
        "every seal is an HMAC seal under the cluster's key"
    );
    let r = svc
        .query_one(
            "SELECT ok, seals_checked, seal_id, reason FROM truxe.verify_audit_log()",
            &[],
        )
        .unwrap();
    let (ok, checked, reason): (bool, i64, String) = (r.get(0), r.get(1), r.get(3));
    assert!(ok, "{reason}");
    assert_eq!(checked, seals, "{reason}");

    // audit_seals is a reference table: a copy on the coordinator and on both workers
    let (kind, seal_shard) = partition_and_shard(&mut su, "truxe.audit_seals");
    assert_eq!(kind, "n", "a reference table");
    // sealers at once through the coordinator, while tenants write audit rows: the lock on
    // audit_seals still takes them one at a time, each seal following the last
    std::thread::scope(|scope| {
        for i in 0..4 {
            let (db, more) = (&db, &more);
            scope.spawn(move || {
                let mut svc = c.coordinator.client(db, SERVICE_LOGIN);
                for k in 0..3 {
                    svc.execute(
                        "INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id)
                         VALUES ($1::text::uuid, 'app.sealed', 'thing', $2)",
                        &[&more[(i + k) % more.len()], &format!("c{i}.{k}")],
                    )
                    .unwrap();
                    svc.query_one("SELECT truxe.seal_audit_log(2)", &[])
                        .unwrap();
                }
            });
        }
    });
    let r = svc
        .query_one(
            "SELECT ok, seals_checked, reason FROM truxe.verify_audit_log()",
            &[],
        )
        .unwrap();
    let (ok, checked, reason): (bool, i64, String) = (r.get(0), r.get(1), r.get(2));
    assert!(ok, "after concurrent sealers: {reason}");
    // the ids (the coordinator's sequence) number the seals in the order of the chain, with
    // no gap, and the chain covers every audit row
    let (ids, ordered, covered): (Vec<i64>, bool, i64) = {
        let r = svc
            .query_one(
                "SELECT array_agg(id ORDER BY id),
                        coalesce(bool_and(after_id = prev_to), true),
                        max(to_id)
                   FROM (SELECT id, after_id, to_id,
                                lag(to_id, 1, 0::bigint) OVER (ORDER BY id) AS prev_to
                           FROM truxe.audit_seals) x",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(ids, (1..=checked).collect::<Vec<i64>>(), "{reason}");
    assert!(
        ordered,
        "each seal starts where the one before it in id order ends"
    );
    let top: i64 = su
        .query_one("SELECT max(id) FROM truxe.audit_logs", &[])
        .unwrap()
        .get(0);
    assert_eq!(covered, top, "every audit row sealed");
    // every node holds the same seals
    let mut ports: Vec<i32> = std::iter::once(&c.coordinator)
        .chain(&c.workers)
        .map(|n| i32::from(n.port))
        .collect();
    ports.sort_unstable();
    let copies = on_every_copy(
        &mut su,
        "truxe.audit_seals",
        "SELECT count(*) || ' ' || md5(string_agg(id || ':' || encode(seal_hash, 'hex'), ',' ORDER BY id)) FROM %s",
    );
    assert_eq!(
        copies.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        ports,
        "a copy on every node"
    );
    assert!(
        copies.iter().all(|(_, v)| *v == copies[0].1)
            && copies[0].1.starts_with(&format!("{checked} ")),
        "the same seals on every node: {copies:?}"
    );
    // still one of the extension's tables, dumped with its sequence
    let dumped: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_extension e, unnest(e.extconfig) t
              WHERE e.extname = 'truxe'
                AND t IN ('truxe.audit_seals'::regclass, 'truxe.audit_seals_id_seq'::regclass)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dumped, 2, "pg_extension_config_dump");

    // append-only through the coordinator: service_account may only read (42501), the
    // owner (a superuser) is refused by the guard on the copies (55000); a tenant reads none
    for sql in [
        "UPDATE truxe.audit_seals SET row_count = 0",
        "DELETE FROM truxe.audit_seals",
        "TRUNCATE truxe.audit_seals",
    ] {
        assert_eq!(sqlstate(svc.execute(sql, &[])), "42501", "{sql}");
        assert_eq!(sqlstate(su.execute(sql, &[])), "55000", "the owner: {sql}");
    }
    assert_eq!(
        sqlstate(
            c.coordinator
                .client(&db, AUTH_LOGIN)
                .query("SELECT id FROM truxe.audit_seals", &[])
        ),
        "42501",
        "authenticated has no grant"
    );
    // on a worker: the copy's own guard refuses a superuser there too, also as a replica
    // and with Citus' manual shard changes allowed; the table's name there is routed to
    // every copy (refused); sealing there is refused (55000: the horizon, the lock and the
    // ids are the coordinator's)
    let mut w = c.workers[0].client(&db, "postgres");
    let copy = format!("truxe.audit_seals_{seal_shard}");
    for setup in [
        "RESET session_replication_role; RESET citus.enable_manual_changes_to_shards",
        "SET session_replication_role = replica",
        "RESET session_replication_role; SET citus.enable_manual_changes_to_shards = on",
    ] {
        w.batch_execute(setup).unwrap();
        for sql in [
            format!("UPDATE {copy} SET row_count = 0"),
            format!("DELETE FROM {copy}"),
        ] {
            assert_eq!(sqlstate(w.execute(&sql, &[])), "55000", "{setup}: {sql}");
        }
    }
    assert_eq!(
        sqlstate(w.execute(&format!("TRUNCATE {copy}"), &[])),
        "55000",
        "TRUNCATE of the copy, manual changes allowed"
    );
    w.batch_execute("RESET citus.enable_manual_changes_to_shards")
        .unwrap();
    assert_eq!(
        sqlstate(w.execute(&format!("TRUNCATE {copy}"), &[])),
        "XX000",
        "Citus refuses a TRUNCATE of a shard"
    );
    for sql in [
        "UPDATE truxe.audit_seals SET row_count = 0",
        "DELETE FROM truxe.audit_seals",
        "TRUNCATE truxe.audit_seals",
    ] {
        assert_eq!(sqlstate(w.execute(sql, &[])), "55000", "on a worker: {sql}");
    }
    assert_eq!(
        sqlstate(
            c.workers[0]
                .client(&db, SERVICE_LOGIN)
                .query("SELECT truxe.seal_audit_log()", &[])
        ),
        "55000",
        "sealing on a worker"
    );
    assert_eq!(
        on_every_copy(&mut su, "truxe.audit_seals", "SELECT count(*) FROM %s"),
        ports
            .iter()
            .map(|p| (*p, checked.to_string()))
            .collect::<Vec<_>>(),
        "no seal changed or added anywhere"
    );
    let r = svc
        .query_one("SELECT ok, reason FROM truxe.verify_audit_log()", &[])
        .unwrap();
    let (ok, reason): (bool, String) = (r.get(0), r.get(1));
    assert!(ok, "{reason}");

    // a backdated row: found after the latest seal, and once sealed (the floor checks
    // read the distributed rows too)
    svc.execute(
        "INSERT INTO truxe.audit_logs (org_id, action, created_at)
         VALUES ($1::text::uuid, 'app.backdated', now() - interval '1 day')",
        &[&orgs[2]],
    )
    .unwrap();
    let backdated = |svc: &mut Client| -> (bool, String) {
        let r = svc
            .query_one("SELECT ok, reason FROM truxe.verify_audit_log()", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (ok, reason) = backdated(&mut svc);
    assert!(
        !ok && reason.starts_with("a backdated row was written after seal"),
        "{reason}"
    );
    svc.query_one("SELECT truxe.seal_audit_log()", &[]).unwrap();
    let (ok, reason) = backdated(&mut svc);
    assert!(
        !ok && reason.starts_with("a backdated row was sealed"),
        "{reason}"
    );

    // a sealed row changed on its worker's shard, bypassing the guard: found
    let target = &orgs[1];
    let (shard, port) = audit_shard(&mut su, target);
    let row_id: i64 = su
        .query_one(
            "SELECT min(id) FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[target],
        )
        .unwrap()
        .get(0);
    let covering: i64 = su
        .query_one(
            "SELECT id FROM truxe.audit_seals WHERE $1 > after_id AND $1 <= to_id",
            &[&row_id],
        )
        .unwrap()
        .get(0);
    let worker = c
        .workers
        .iter()
        .find(|w| i32::from(w.port) == port)
        .unwrap();
    let mut w = worker.client(&db, "postgres");
    let table = format!("truxe.audit_logs_{shard}");
    assert_eq!(
        sqlstate(w.execute(
            &format!("UPDATE {table} SET target_id = 'x' WHERE id = $1"),
            &[&row_id]
        )),
        "55000",
        "the guard holds on the shard, for a superuser too"
    );
    // the shard's copy of the guard carries the shard id in its name
    let guard: String = w
        .query_one(
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1::text::regclass
                AND tgname::text LIKE 'audit_logs_append_only%'",
            &[&table],
        )
        .unwrap()
        .get(0);
    w.batch_execute(&format!(
        "BEGIN;
         ALTER TABLE {table} DISABLE TRIGGER {guard};
         UPDATE {table} SET target_id = 'rewritten' WHERE id = {row_id};
         ALTER TABLE {table} ENABLE ALWAYS TRIGGER {guard};
         COMMIT;"
    ))
    .unwrap();
    let r = svc
        .query_one(
            "SELECT ok, seal_id, reason FROM truxe.verify_audit_log()",
            &[],
        )
        .unwrap();
    let (ok, seal_id, reason): (bool, Option<i64>, String) = (r.get(0), r.get(1), r.get(2));
    assert!(!ok, "the changed row is found");
    assert_eq!(seal_id, Some(covering), "{reason}");
    assert!(reason.starts_with("rows were changed"), "{reason}");
}

/// purge_audit_logs on a distributed audit_logs, through the coordinator as
/// service_account, in a database of its own with old rows in shards on both workers: it
/// deletes the rows older than its argument on every shard (in autocommit and in a
/// transaction block), keeps the 90-day floor (22023), and leaves the guard armed: after
/// it, and by anyone who sets truxe.audit_purge themselves (service_account, in a
/// transaction block and in a DO block, the superuser without it), UPDATE and DELETE through
/// the coordinator still raise 55000; an org admin has no DELETE at all (42501).
#[test]
fn purging_a_distributed_audit_log() {
    let Some(c) = cluster() else { return };
    let db = own_cluster_db(c, "purged", "");
    let orgs = orgs_in(c, &db, 6);
    let mut svc = c.coordinator.client(&db, SERVICE_LOGIN);
    for org in &orgs {
        for age in ["200 days", "120 days", "1 day"] {
            svc.execute(
                "INSERT INTO truxe.audit_logs (org_id, action, created_at)
                 VALUES ($1::text::uuid, 'app.old', now() - $2::text::interval)",
                &[org, &age],
            )
            .unwrap();
        }
    }
    let older = |client: &mut Client, age: &str| -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM truxe.audit_logs WHERE created_at < now() - $1::text::interval",
                &[&age],
            )
            .unwrap()
            .get(0)
    };
    let n = orgs.len() as i64;
    assert_eq!(older(&mut svc, "150 days"), n);
    assert_eq!(
        sqlstate(svc.query_one("SELECT truxe.purge_audit_logs('89 days')", &[])),
        "22023",
        "the 90-day floor"
    );

    // forged permits: the setting alone lets nothing through (one statement per message:
    // Citus passes a SET LOCAL on as the text of the message that held it)
    let forged: [&[&str]; 3] = [
        &[
            "SET LOCAL citus.propagate_set_commands = 'local'",
            "SET LOCAL truxe.audit_purge = on",
            "DELETE FROM truxe.audit_logs WHERE created_at < now() - interval '150 days'",
        ],
        &[
            "SET LOCAL citus.propagate_set_commands = 'local'",
            "SET LOCAL truxe.audit_purge = on",
            "UPDATE truxe.audit_logs SET target_id = 'x'",
        ],
        &[
            "DO $$BEGIN SET LOCAL citus.propagate_set_commands = 'local';
                        SET LOCAL truxe.audit_purge = on; END$$",
            "DELETE FROM truxe.audit_logs",
        ],
    ];
    for statements in forged {
        let mut t = svc.transaction().unwrap();
        let (last, setup) = statements.split_last().unwrap();
        for sql in setup {
            t.batch_execute(sql).unwrap();
        }
        let on: String = t
            .query_one("SELECT current_setting('truxe.audit_purge')", &[])
            .unwrap()
            .get(0);
        assert_eq!(on, "on");
        assert_eq!(
            sqlstate(t.execute(*last, &[])),
            "55000",
            "forged permit: {last}"
        );
    }
    for sql in [
        "DELETE FROM truxe.audit_logs WHERE created_at < now() - interval '150 days'",
        "UPDATE truxe.audit_logs SET target_id = 'x'",
    ] {
        assert_eq!(sqlstate(svc.execute(sql, &[])), "55000", "{sql}");
        // the table's owner too, without the purge's setting
        assert_eq!(
            sqlstate(c.coordinator.client(&db, "postgres").execute(sql, &[])),
            "55000",
            "superuser: {sql}"
        );
    }
    // an org admin through the claim: no DELETE privilege at all
    let (admin, _) = {
        let email = format!("{}@citus.example", unique("purge"));
        let id: String = svc
            .query_one(
                "INSERT INTO truxe.users (email, status) VALUES ($1, 'active') RETURNING id::text",
                &[&email],
            )
            .unwrap()
            .get(0);
        (id, email)
    };
    svc.execute(
        "INSERT INTO truxe.memberships_by_user (org_id, user_id, role) VALUES ($1::text::uuid, $2::text::uuid, 'owner')",
        &[&orgs[0], &admin],
    )
    .unwrap();
    let mut a = c.coordinator.client(&db, AUTH_LOGIN);
    {
        let mut t = in_context(&mut a, &admin);
        assert_eq!(
            sqlstate(t.execute(
                "DELETE FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
                &[&orgs[0]]
            )),
            "42501"
        );
    }
    assert_eq!(older(&mut svc, "150 days"), n, "nothing was deleted");

    // the purge, in autocommit: the 200-day rows on both workers go, the others stay
    let purged: i64 = svc
        .query_one("SELECT truxe.purge_audit_logs('150 days')", &[])
        .unwrap()
        .get(0);
    assert_eq!(purged, n);
    assert_eq!(older(&mut svc, "150 days"), 0);
    assert_eq!(older(&mut svc, "90 days"), n);
    assert_eq!(
        sqlstate(svc.execute("DELETE FROM truxe.audit_logs", &[])),
        "55000",
        "the guard is armed again"
    );
    // in a transaction block: the setting is off again when it returns
    {
        let mut t = svc.transaction().unwrap();
        let purged: i64 = t
            .query_one("SELECT truxe.purge_audit_logs('90 days')", &[])
            .unwrap()
            .get(0);
        assert_eq!(purged, n);
        let setting: String = t
            .query_one("SELECT current_setting('truxe.audit_purge')", &[])
            .unwrap()
            .get(0);
        assert_eq!(setting, "off");
        t.commit().unwrap();
    }
    assert_eq!(older(&mut svc, "90 days"), 0);
    let left: i64 = svc
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE action = 'app.old'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, n, "the young rows stay");
    // the purge wrote the shards as the owner: Citus refuses the caller's own read of them
    // later in that transaction (docs/scaling.md, "Mixed roles")
    {
        let mut t = svc.transaction().unwrap();
        t.query_one("SELECT truxe.purge_audit_logs('90 days')", &[])
            .unwrap();
        assert_eq!(
            sqlstate(t.query_one("SELECT count(*) FROM truxe.audit_logs", &[])),
            "25001"
        );
    }
    assert_eq!(
        sqlstate(svc.execute("DELETE FROM truxe.audit_logs", &[])),
        "55000"
    );
}

/// On a single node (no Citus) nothing of the Citus audit placement shows: set_context
/// signs no claim, and a row without an org keeps a NULL org_id. Runs on every version.
#[test]
fn a_single_node_makes_no_claim_and_keeps_null_orgs() {
    let db = server().fresh_db(true);
    let mut s = db.service();
    let email = format!("{}@single.example", unique("nocitus"));
    let token: String = s
        .query_one("SELECT token FROM truxe.issue_magic_link($1)", &[&email])
        .unwrap()
        .get(0);
    let user: String = s
        .query_one(
            "SELECT user_id::text FROM truxe.verify_magic_link($1)",
            &[&token],
        )
        .unwrap()
        .get(0);
    let null_org: i64 = s
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE org_id IS NULL AND action = 'user.login' AND target_id = $1",
            &[&user],
        )
        .unwrap()
        .get(0);
    assert_eq!(null_org, 1);
    let mut a = db.authenticated();
    let mut t = in_context(&mut a, &user);
    let claim: Option<String> = t
        .query_one("SELECT current_setting('truxe.claim', true)", &[])
        .unwrap()
        .get(0);
    assert_eq!(claim.unwrap_or_default(), "");
    t.commit().unwrap();
}

/// The shard and worker port Citus computes for the session of access token `jti`
/// (sessions distributed by jti_hash, the SHA-256 of the token's 16 bytes).
pub(crate) fn session_shard(su: &mut Client, jti: &str) -> (i64, i32) {
    let r = su
        .query_one(
            "SELECT p.shardid, n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
              WHERE p.shardid = get_shard_id_for_distribution_column('truxe.sessions',
                                  sha256(uuid_send($1::text::uuid)))",
            &[&jti],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// sessions distributed by jti_hash: sessions of many users spread over both workers, each
/// in the shard of its jti_hash (every shard's rows listed with run_command_on_shards);
/// validate_session and authenticate through the coordinator; refresh with rotation (the
/// token found on every shard, locked in its own), reuse detection revoking the family;
/// the audit rows the functions write in place of the trigger; a user listing their own
/// sessions (and no other user's) through the claim, nothing in autocommit;
/// revoke_session_by_id (own: true; another user's: false), revoke_other_sessions,
/// revoke_session, revoke_user_sessions; max_sessions_per_user; a suspended user's and a
/// removed member's sessions ended by the coordinator's triggers; metrics().
#[test]
fn sessions_live_in_their_jti_shards_and_work_through_the_coordinator() {
    let Some(c) = cluster() else { return };
    let mut s = c.service();
    let mut su = c.superuser();
    let create = |s: &mut Client, user: &str| -> (String, String) {
        let r = s
            .query_one(
                "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid)",
                &[&user],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let valid = |s: &mut Client, jti: &str| -> Option<String> {
        s.query_opt(
            "SELECT user_id::text FROM truxe.validate_session($1::text::uuid)",
            &[&jti],
        )
        .unwrap()
        .map(|r| r.get(0))
    };
    let reason = |su: &mut Client, jti: &str| -> Option<String> {
        su.query_one(
            "SELECT revoked_reason FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&jti],
        )
        .unwrap()
        .get(0)
    };

    // 16 users with a session each: spread over both workers, each in its jti's shard
    let mut sessions: Vec<(String, String, String)> = Vec::new();
    for _ in 0..16 {
        let (u, _) = user(c);
        let (jti, refresh) = create(&mut s, &u);
        sessions.push((u, jti, refresh));
    }
    let per_shard: Vec<(i64, String)> = su
        .query(
            "SELECT shardid, result FROM run_command_on_shards('truxe.sessions',
               $$SELECT coalesce(string_agg(encode(jti_hash, 'hex'), ','), '') FROM %s$$)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per_shard.len(), 32, "one row per shard");
    let mut ports = std::collections::BTreeSet::new();
    for (_, jti, _) in &sessions {
        let hash: String = su
            .query_one(
                "SELECT encode(sha256(uuid_send($1::text::uuid)), 'hex')",
                &[jti],
            )
            .unwrap()
            .get(0);
        let holding: Vec<i64> = per_shard
            .iter()
            .filter(|(_, hashes)| hashes.split(',').any(|h| h == hash))
            .map(|(shard, _)| *shard)
            .collect();
        let (shard, port) = session_shard(&mut su, jti);
        assert_eq!(
            holding,
            vec![shard],
            "the session in the shard of its jti_hash"
        );
        ports.insert(port);
    }
    let mut workers: Vec<i32> = c.workers.iter().map(|w| i32::from(w.port)).collect();
    workers.sort_unstable();
    assert_eq!(
        ports.into_iter().collect::<Vec<_>>(),
        workers,
        "sessions on both workers"
    );
    let (alice, a_jti, a_refresh) = sessions[0].clone();
    let (bob, b_jti, _) = sessions[1].clone();
    assert_eq!(valid(&mut s, &a_jti), Some(alice.clone()));
    assert_eq!(valid(&mut s, &b_jti), Some(bob.clone()));
    let unknown = "6b0f1c2e-0000-4000-8000-000000000000";
    assert_eq!(valid(&mut s, unknown), None);

    // refresh: a new session of the family, the old one rotated
    let r = s
        .query_one(
            "SELECT jti::text, refresh_jti::text FROM truxe.refresh_session($1::text::uuid)",
            &[&a_refresh],
        )
        .unwrap();
    let (a2_jti, a2_refresh): (String, String) = (r.get(0), r.get(1));
    assert_eq!(valid(&mut s, &a2_jti), Some(alice.clone()));
    assert_eq!(
        valid(&mut s, &a_jti),
        None,
        "the refreshed session is replaced"
    );
    assert_eq!(reason(&mut su, &a_jti).as_deref(), Some("rotated"));
    // the rotated token again, with no grace: reuse, the whole family revoked
    let mut grace0 = c.superuser();
    grace0
        .batch_execute("SET truxe.refresh_reuse_grace = 0")
        .unwrap();
    let reused = grace0
        .query(
            "SELECT * FROM truxe.refresh_session($1::text::uuid)",
            &[&a_refresh],
        )
        .unwrap();
    assert!(reused.is_empty(), "a reused refresh token gives nothing");
    assert_eq!(valid(&mut s, &a2_jti), None, "the family is revoked");
    assert_eq!(
        reason(&mut su, &a2_jti).as_deref(),
        Some("refresh_token_reuse")
    );
    let none = s
        .query(
            "SELECT * FROM truxe.refresh_session($1::text::uuid)",
            &[&a2_refresh],
        )
        .unwrap();
    assert!(
        none.is_empty(),
        "a revoked family's token refreshes nothing"
    );
    // the audit rows the functions wrote in place of the trigger, under the nil org
    let family: String = su
        .query_one(
            "SELECT family_id::text FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&a_jti],
        )
        .unwrap()
        .get(0);
    let actions: Vec<String> = su
        .query(
            "SELECT action::text FROM truxe.audit_logs
              WHERE details->>'user_id' = $1 OR details->>'family_id' = $2 ORDER BY id",
            &[&alice, &family],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for a in [
        "session.created",
        "session.refreshed",
        "session.revoked",
        "session.reuse_detected",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
    let revoked_rows: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE action = 'session.revoked' AND details->>'user_id' = $1
                AND org_id = '00000000-0000-0000-0000-000000000000'",
            &[&alice],
        )
        .unwrap()
        .get(0);
    assert_eq!(revoked_rows, 2, "rotated, then the successor by reuse");

    // a user lists their own sessions under RLS, through the claim of authenticate
    let (b2_jti, _) = create(&mut s, &bob);
    let mut a = c.authenticated();
    let mut t = a.transaction().unwrap();
    let who: String = t
        .query_one(
            "SELECT user_id::text FROM truxe.authenticate($1)",
            &[&b_jti],
        )
        .unwrap()
        .get(0);
    assert_eq!(who, bob);
    let own: Vec<String> = t
        .query("SELECT user_id::text FROM truxe.sessions", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(own.len(), 2, "bob's two sessions: {own:?}");
    assert!(own.iter().all(|u| *u == bob), "only bob's: {own:?}");
    // the token hashes stay out of reach
    assert_eq!(
        sqlstate(t.query("SELECT jti_hash FROM truxe.sessions", &[])),
        "42501"
    );
    t.rollback().unwrap();
    let seen: i64 = a
        .query_one("SELECT count(*) FROM truxe.sessions", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "no claim in autocommit: nothing");

    // sign out a device: one's own session yes, another user's no
    let mut t = a.transaction().unwrap();
    t.query_one("SELECT user_id FROM truxe.authenticate($1)", &[&b_jti])
        .unwrap();
    let other_id: String = su
        .query_one(
            "SELECT id::text FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&sessions[2].1],
        )
        .unwrap()
        .get(0);
    let b2_id: String = su
        .query_one(
            "SELECT id::text FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&b2_jti],
        )
        .unwrap()
        .get(0);
    let other: bool = t
        .query_one(
            "SELECT truxe.revoke_session_by_id($1::text::uuid)",
            &[&other_id],
        )
        .unwrap()
        .get(0);
    assert!(!other, "another user's session");
    let mine: bool = t
        .query_one(
            "SELECT truxe.revoke_session_by_id($1::text::uuid)",
            &[&b2_id],
        )
        .unwrap()
        .get(0);
    assert!(mine, "one's own session");
    t.commit().unwrap();
    assert_eq!(valid(&mut s, &b2_jti), None);
    assert_eq!(valid(&mut s, &sessions[2].1), Some(sessions[2].0.clone()));

    // sign out every other device
    let (b3_jti, _) = create(&mut s, &bob);
    let (b4_jti, _) = create(&mut s, &bob);
    let ended: i32 = s
        .query_one(
            "SELECT truxe.revoke_other_sessions($1::text::uuid)",
            &[&b_jti],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended, 2);
    assert_eq!(valid(&mut s, &b_jti), Some(bob.clone()));
    assert_eq!(valid(&mut s, &b3_jti), None);
    assert_eq!(reason(&mut su, &b4_jti).as_deref(), Some("logout_others"));
    // revoke one by its token, then all of a user's
    let (c_user, c_jti, _) = sessions[3].clone();
    let (c2_jti, _) = create(&mut s, &c_user);
    let (c3_jti, _) = create(&mut s, &c_user);
    let one: bool = s
        .query_one("SELECT truxe.revoke_session($1::text::uuid)", &[&c_jti])
        .unwrap()
        .get(0);
    assert!(one);
    let all: i32 = s
        .query_one(
            "SELECT truxe.revoke_user_sessions($1::text::uuid, 'password_changed')",
            &[&c_user],
        )
        .unwrap()
        .get(0);
    assert_eq!(all, 2);
    assert_eq!(valid(&mut s, &c2_jti), None);
    assert_eq!(
        reason(&mut su, &c3_jti).as_deref(),
        Some("password_changed")
    );

    // max_sessions_per_user = 2: a third session ends the least recently used
    let (d_user, d1, _) = sessions[4].clone();
    let mut limited = c.superuser();
    limited
        .batch_execute("SET truxe.max_sessions_per_user = 2")
        .unwrap();
    let (d2, _) = create(&mut limited, &d_user);
    let (d3, _) = create(&mut limited, &d_user);
    assert_eq!(reason(&mut su, &d1).as_deref(), Some("session_limit"));
    assert_eq!(valid(&mut s, &d2), Some(d_user.clone()));
    assert_eq!(valid(&mut s, &d3), Some(d_user.clone()));

    // a suspended user's sessions end (the users trigger on the coordinator)
    let (e_user, e_jti, _) = sessions[5].clone();
    s.execute(
        "UPDATE truxe.users SET status = 'suspended' WHERE id = $1::text::uuid",
        &[&e_user],
    )
    .unwrap();
    assert_eq!(reason(&mut su, &e_jti).as_deref(), Some("user_suspended"));
    assert_eq!(valid(&mut s, &e_jti), None);

    // a removed member's org-scoped session ends (the memberships trigger)
    let (owner, _) = user(c);
    let o = org(c, &owner);
    let (member, _) = user(c);
    su.execute(
        "INSERT INTO truxe.memberships_by_user (org_id, user_id, role, joined_at)
         VALUES ($1::text::uuid, $2::text::uuid, 'member', now())",
        &[&o, &member],
    )
    .unwrap();
    let m_jti: String = s
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid, $2::text::uuid)",
            &[&member, &o],
        )
        .unwrap()
        .get(0);
    let r = s
        .query_one(
            "SELECT user_id::text, org_id::text FROM truxe.validate_session($1::text::uuid)",
            &[&m_jti],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, String>(1)),
        (member.clone(), o.clone())
    );
    su.execute(
        "DELETE FROM truxe.memberships_by_user WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid",
        &[&o, &member],
    )
    .unwrap();
    assert_eq!(
        reason(&mut su, &m_jti).as_deref(),
        Some("membership_removed")
    );
    assert_eq!(valid(&mut s, &m_jti), None);

    // metrics() counts live sessions over the shards
    let live: f64 = s
        .query_one(
            "SELECT value FROM truxe.metrics() WHERE metric = 'sessions_live'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(live >= 10.0, "{live}");
}

/// A limit of Citus, pinned down: authenticate's once-a-minute touch of `last_used_at`
/// writes the session's shard as the table owner, and Citus then refuses the caller's own
/// read of that shard in the same transaction (25001); a new transaction, whose
/// authenticate does not write again within the minute, lists the sessions
/// (docs/scaling.md, "sessions on Citus").
#[test]
fn listing_sessions_after_a_touch_needs_a_transaction_of_its_own() {
    let Some(c) = cluster() else { return };
    let (u, _) = user(c);
    let jti: String = c
        .service()
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
            &[&u],
        )
        .unwrap()
        .get(0);
    c.superuser()
        .execute(
            "UPDATE truxe.sessions SET last_used_at = now() - interval '5 minutes'
              WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&jti],
        )
        .unwrap();
    let mut a = c.authenticated();
    let mut t = a.transaction().unwrap();
    t.query_one("SELECT user_id FROM truxe.authenticate($1)", &[&jti])
        .unwrap();
    assert_eq!(
        sqlstate(t.query("SELECT count(*) FROM truxe.sessions", &[])),
        "25001"
    );
    t.rollback().unwrap();
    // the rollback undid the touch: the next authenticate writes it again, and commits
    let mut t = a.transaction().unwrap();
    t.query_one("SELECT user_id FROM truxe.authenticate($1)", &[&jti])
        .unwrap();
    t.commit().unwrap();
    let mut t = a.transaction().unwrap();
    t.query_one("SELECT user_id FROM truxe.authenticate($1)", &[&jti])
        .unwrap();
    let own: i64 = t
        .query_one("SELECT count(*) FROM truxe.sessions", &[])
        .unwrap()
        .get(0);
    assert_eq!(own, 1);
    t.commit().unwrap();
}

/// elevate_session on Citus: the factor checked on the coordinator, the session locked and
/// raised to aal 2 in its shard; another user's factor `invalid`; a refresh keeps aal 2
/// (the child inserted with the values read); authenticate reports it.
#[test]
fn elevate_session_raises_a_distributed_session() {
    let Some(c) = cluster() else { return };
    let (alice, _) = user(c);
    let (bob, _) = user(c);
    let mut s = c.service();
    let enroll = |s: &mut Client, u: &str| -> (String, String) {
        let r = s
            .query_one(
                "SELECT factor_id::text, secret FROM truxe.enroll_totp($1::text::uuid, 'Acme')",
                &[&u],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (factor, secret) = enroll(&mut s, &alice);
    let (bob_factor, bob_secret) = enroll(&mut s, &bob);
    let r = s
        .query_one(
            "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid)",
            &[&alice],
        )
        .unwrap();
    let (jti, refresh): (String, String) = (r.get(0), r.get(1));
    let elevate = |s: &mut Client, factor: &str, code: &str| -> String {
        s.query_one(
            "SELECT truxe.elevate_session($1::text::uuid, $2::text::uuid, $3)",
            &[&jti, &factor, &code],
        )
        .unwrap()
        .get(0)
    };
    crate::mfa::leave_step_margin(5);
    assert_eq!(
        elevate(&mut s, &bob_factor, &crate::mfa::python_code(&bob_secret)),
        "invalid"
    );
    assert_eq!(
        elevate(&mut s, &factor, &crate::mfa::python_code(&secret)),
        "verified"
    );
    let aal: i16 = c
        .superuser()
        .query_one(
            "SELECT aal FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&jti],
        )
        .unwrap()
        .get(0);
    assert_eq!(aal, 2);
    let new_jti: String = s
        .query_one(
            "SELECT jti::text FROM truxe.refresh_session($1::text::uuid)",
            &[&refresh],
        )
        .unwrap()
        .get(0);
    let mut a = c.authenticated();
    let mut t = a.transaction().unwrap();
    let aal: i16 = t
        .query_one("SELECT aal FROM truxe.authenticate($1)", &[&new_jti])
        .unwrap()
        .get(0);
    assert_eq!(aal, 2, "the family keeps its level");
    t.commit().unwrap();
}

/// One refresh token presented by 4 clients at once through the coordinator (two tabs
/// refreshing together, within the default grace): the row lock is taken in the session's
/// shard (found first on every shard without a lock), so exactly one rotates it and the
/// others, waiting on that lock, get sessions of the same family (within the grace); the
/// family then holds 5 sessions, 4 of them live, and the parent is `rotated` once.
#[test]
fn concurrent_refreshes_of_one_token_rotate_it_once() {
    let Some(c) = cluster() else { return };
    let (u, _) = user(c);
    let r = c
        .service()
        .query_one(
            "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid)",
            &[&u],
        )
        .unwrap();
    let (jti, refresh): (String, String) = (r.get(0), r.get(1));
    let barrier = std::sync::Barrier::new(4);
    let got: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (refresh, barrier) = (&refresh, &barrier);
                s.spawn(move || {
                    let mut svc = c.service();
                    barrier.wait();
                    svc.query(
                        "SELECT jti FROM truxe.refresh_session($1::text::uuid)",
                        &[refresh],
                    )
                    .unwrap()
                    .len()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, vec![1, 1, 1, 1], "every tab gets a session");
    let mut su = c.superuser();
    let r = su
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE revoked_at IS NULL),
                    count(*) FILTER (WHERE revoked_reason = 'rotated')
               FROM truxe.sessions
              WHERE family_id = (SELECT family_id FROM truxe.sessions
                                  WHERE jti_hash = sha256(uuid_send($1::text::uuid)))",
            &[&jti],
        )
        .unwrap();
    let counts: (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(counts, (5, 4, 1), "(sessions, live, rotated)");
}

/// A connection as `login` that has Citus tell it every command it sends the workers
/// (`citus.log_remote_commands`), and the messages it has received so far.
fn logging_remote_commands(c: &Cluster, login: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = sent.clone();
    let mut client = postgres::Config::new()
        .host("127.0.0.1")
        .port(c.coordinator.port)
        .user(login)
        .dbname(DB)
        .notice_callback(move |n| {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(n.message().to_string())
        })
        .connect(NoTls)
        .unwrap();
    client
        .batch_execute("SET citus.log_remote_commands = on")
        .unwrap();
    (client, sent)
}

/// The shards of `table` (`<table>_<shard id>`) that the messages `sent` name.
fn shards_named(sent: &Mutex<Vec<String>>, table: &str) -> std::collections::BTreeSet<String> {
    let prefix = format!("{table}_");
    sent.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .flat_map(|m| m.match_indices(&prefix).map(move |(at, _)| &m[at..]))
        .map(|rest| {
            let digits: String = rest[prefix.len()..]
                .chars()
                .take_while(|ch| ch.is_ascii_digit())
                .collect();
            format!("{prefix}{digits}")
        })
        .collect()
}

/// `create_api_key` as `user` (in a transaction acting as them): (key id, key).
fn create_key(c: &Cluster, user: &str, org: &str, scopes: &[&str]) -> (String, String) {
    let mut a = c.authenticated();
    let mut t = in_context(&mut a, user);
    let r = t
        .query_one(
            "SELECT key_id::text, key FROM truxe.create_api_key($1::text::uuid, 'ci', $2)",
            &[&org, &scopes],
        )
        .unwrap();
    t.commit().unwrap();
    (r.get(0), r.get(1))
}

/// `revoke_api_key` as `user` (in a transaction acting as them).
fn revoke_key_as(c: &Cluster, user: &str, key_id: &str) -> bool {
    let mut a = c.authenticated();
    let mut t = in_context(&mut a, user);
    let revoked: bool = t
        .query_one("SELECT truxe.revoke_api_key($1::text::uuid)", &[&key_id])
        .unwrap()
        .get(0);
    t.commit().unwrap();
    revoked
}

/// authenticate_api_key through the coordinator, in a transaction of its own: the org of
/// the identity it established, or None for no row.
fn key_org(c: &Cluster, key: &str) -> Option<String> {
    let mut a = c.authenticated();
    let mut t = a.transaction().unwrap();
    let org = t
        .query_opt(
            "SELECT org_id::text FROM truxe.authenticate_api_key($1)",
            &[&key],
        )
        .unwrap()
        .map(|r| r.get(0));
    t.commit().unwrap();
    org
}

/// api_keys distributed by org_id, colocated with audit_logs: keys of orgs on both workers,
/// each org's keys in its shard; an org admin lists their org's keys (never the hash) and
/// no other tenant's through the claim, none in autocommit; authenticate_api_key finds a
/// key through the coordinator (its org by its id in truxe.api_key_orgs, then one shard,
/// the creator checked on the coordinator) and refuses a mistyped, unknown or wrong-secret
/// key; service_account inserts no key past create_api_key; the key identity's
/// has_permission (its scopes, its org only); revocation by an outsider (false), by an
/// admin (in the key's shard only), by the creator; the creator's removal revoking their keys in the org and in a
/// descendant they lose (the memberships trigger on the coordinator), audited; a suspended
/// creator's key refused; metrics() counting live keys over the shards; an org's entries in
/// truxe.api_key_orgs deleted with it.
#[test]
fn api_keys_live_in_their_orgs_shard_and_work_through_the_coordinator() {
    let Some(c) = cluster() else { return };
    let tenants = orgs_on_both_workers(c, 4);
    let orgs: Vec<String> = tenants.iter().map(|(_, o)| o.clone()).collect();
    let mut su = c.superuser();
    let mut keys: Vec<(String, String)> = Vec::new();
    for (admin, org) in &tenants {
        keys.push(create_key(c, admin, org, &["users:read"]));
        create_key(c, admin, org, &[]);
    }
    let placed = org_rows_by_shard(&mut su, "truxe.api_keys", &orgs);
    let ports: std::collections::BTreeSet<i32> = placed.iter().map(|p| p.1).collect();
    assert_eq!(ports.len(), 2, "keys on both workers: {placed:?}");
    assert!(
        placed.iter().all(|p| p.2 == 2),
        "two keys per org: {placed:?}"
    );
    // in the shard group of the org's audit rows
    for (org, p) in orgs.iter().zip(&placed) {
        let audit_port: i32 =
            org_rows_by_shard(&mut su, "truxe.audit_logs", std::slice::from_ref(org))[0].1;
        assert_eq!(audit_port, p.1, "colocated with the org's audit rows");
    }

    // an admin lists their org's keys through the claim, and no other tenant's
    let (admin, org) = tenants[0].clone();
    let mut a = c.authenticated();
    let mut t = in_context(&mut a, &admin);
    let listed: Vec<String> = t
        .query("SELECT org_id::text FROM truxe.api_keys", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(listed, vec![org.clone(), org.clone()], "own org's two keys");
    assert_eq!(
        sqlstate(t.query("SELECT key_hash FROM truxe.api_keys", &[])),
        "42501"
    );
    t.rollback().unwrap();
    let seen: i64 = a
        .query_one("SELECT count(*) FROM truxe.api_keys", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "no claim in autocommit: nothing");

    // authenticate_api_key through the coordinator, and the key identity's rights
    let (key_id, key) = keys[0].clone();
    let mut t = a.transaction().unwrap();
    let r = t
        .query_one(
            "SELECT key_id::text, org_id::text, scopes FROM truxe.authenticate_api_key($1)",
            &[&key],
        )
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, Vec<String>>(2)
        ),
        (key_id.clone(), org.clone(), vec!["users:read".to_string()])
    );
    let r = t
        .query_one(
            "SELECT truxe.current_org_id()::text, truxe.current_api_key_id()::text,
                    truxe.has_permission($1::text::uuid, 'users:read'),
                    truxe.has_permission($1::text::uuid, 'users:write'),
                    truxe.has_permission($2::text::uuid, 'users:read')",
            &[&org, &orgs[1]],
        )
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, bool>(2),
            r.get::<_, bool>(3),
            r.get::<_, bool>(4)
        ),
        (org.clone(), key_id.clone(), true, false, false),
        "(org, key, its scope, another permission, another org)"
    );
    t.commit().unwrap();
    let touched: bool = su
        .query_one(
            "SELECT last_used_at IS NOT NULL FROM truxe.api_keys WHERE id = $1::text::uuid",
            &[&key_id],
        )
        .unwrap()
        .get(0);
    assert!(touched, "last_used_at touched in the key's shard");
    // each key's org by its id on the coordinator, written by create_api_key …
    let entries: Vec<(String, String)> = su
        .query(
            "SELECT id::text, org_id::text FROM truxe.api_key_orgs
              WHERE org_id = ANY ($1::text[]::uuid[])",
            &[&orgs],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(entries.len(), 8, "two keys per org: {entries:?}");
    for ((id, _), (_, o)) in keys.iter().zip(&tenants) {
        assert!(entries.contains(&(id.clone(), o.clone())), "{id}");
    }
    // … so authenticate_api_key reads one shard, the key's org's
    let (mut logged, sent) = logging_remote_commands(c, AUTH_LOGIN);
    let mut t = logged.transaction().unwrap();
    let found: String = t
        .query_one(
            "SELECT org_id::text FROM truxe.authenticate_api_key($1)",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(found, org);
    t.commit().unwrap();
    assert_eq!(
        shards_named(&sent, "api_keys"),
        std::collections::BTreeSet::from([format!("api_keys_{}", placed[0].0)]),
        "the key's org's shard only"
    );
    // a key made past create_api_key would have no entry: service_account makes none
    assert_eq!(
        sqlstate(c.service().execute(
            "INSERT INTO truxe.api_keys (org_id, name, key_hash, created_by)
             VALUES ($1::text::uuid, 'direct', repeat('0', 64), $2::text::uuid)",
            &[&org, &admin],
        )),
        "42501"
    );
    let mut typo = key.clone().into_bytes();
    typo[50] = if typo[50] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        key_org(c, &String::from_utf8(typo).unwrap()),
        None,
        "a typo"
    );
    // a well-formed key of an unknown id, and a known id with another secret
    let forged = |id: &str, secret_byte: &str| -> String {
        let body = format!("trx_{}{}", id.replace('-', ""), secret_byte.repeat(64));
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body}{crc:08x}")
    };
    assert_eq!(
        key_org(c, &forged("6b0f1c2e-0000-4000-8000-000000000000", "a")),
        None
    );
    assert_eq!(key_org(c, &forged(&key_id, "b")), None, "a wrong secret");
    for (k, (_, o)) in keys.iter().zip(&tenants) {
        assert_eq!(key_org(c, &k.1).as_deref(), Some(o.as_str()));
    }

    // revocation: an outsider's is false; an admin's and the creator's revoke
    let (other_admin, _) = tenants[1].clone();
    assert!(
        !revoke_key_as(c, &other_admin, &key_id),
        "another tenant's admin"
    );
    let (co_admin, _) = user(c);
    su.execute(
        "INSERT INTO truxe.memberships_by_user (org_id, user_id, role, joined_at)
         VALUES ($1::text::uuid, $2::text::uuid, 'admin', now())",
        &[&org, &co_admin],
    )
    .unwrap();
    // (in the key's org's shard only)
    let (mut logged, sent) = logging_remote_commands(c, AUTH_LOGIN);
    let mut t = in_context(&mut logged, &co_admin);
    let revoked: bool = t
        .query_one("SELECT truxe.revoke_api_key($1::text::uuid)", &[&key_id])
        .unwrap()
        .get(0);
    t.commit().unwrap();
    assert!(revoked, "an admin of the org");
    assert_eq!(
        shards_named(&sent, "api_keys"),
        std::collections::BTreeSet::from([format!("api_keys_{}", placed[0].0)]),
        "the key's org's shard only"
    );
    assert!(!revoke_key_as(c, &co_admin, &key_id), "already revoked");
    assert_eq!(key_org(c, &key), None, "a revoked key");
    let (own_id, own_key) = create_key(c, &co_admin, &org, &[]);
    assert!(revoke_key_as(c, &co_admin, &own_id), "its creator");
    assert_eq!(key_org(c, &own_key), None);
    let audited: Vec<String> = su
        .query(
            "SELECT target_id FROM truxe.audit_logs
              WHERE org_id = $1::text::uuid AND action = 'api_key.revoked' ORDER BY id",
            &[&org],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        audited,
        vec![key_id.clone(), own_id.clone()],
        "in the org's shard"
    );

    // the creator's removal revokes their keys there and in a descendant they lose
    let child: String = c
        .acting_as(&admin)
        .query_one(
            "SELECT truxe.create_organization($1::text::public.citext, 'Child', $2::text::uuid)::text",
            &[&unique("child-"), &org],
        )
        .unwrap()
        .get(0);
    let (in_org, in_org_key) = create_key(c, &co_admin, &org, &[]);
    let (in_child, in_child_key) = create_key(c, &co_admin, &child, &[]);
    assert_eq!(key_org(c, &in_child_key).as_deref(), Some(child.as_str()));
    su.execute(
        "DELETE FROM truxe.memberships_by_user WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid",
        &[&org, &co_admin],
    )
    .unwrap();
    assert_eq!(key_org(c, &in_org_key), None, "a removed creator's key");
    assert_eq!(
        key_org(c, &in_child_key),
        None,
        "and in the descendant they lost"
    );
    let mut removed: Vec<String> = su
        .query(
            "SELECT target_id FROM truxe.audit_logs
              WHERE action = 'api_key.revoked' AND details ->> 'reason' = 'creator_removed'
                AND org_id IN ($1::text::uuid, $2::text::uuid)",
            &[&org, &child],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    removed.sort();
    let mut expected = vec![in_org, in_child];
    expected.sort();
    assert_eq!(removed, expected);

    // a suspended creator's key stops at once (the creator is read on the coordinator)
    let (admin2, org2) = tenants[2].clone();
    let (_, key2) = keys[2].clone();
    assert_eq!(key_org(c, &key2).as_deref(), Some(org2.as_str()));
    su.execute(
        "UPDATE truxe.users SET status = 'suspended' WHERE id = $1::text::uuid",
        &[&admin2],
    )
    .unwrap();
    assert_eq!(key_org(c, &key2), None, "a suspended creator's key");

    // metrics() counts live keys over the shards
    let live: f64 = c
        .service()
        .query_one(
            "SELECT value FROM truxe.metrics() WHERE metric = 'api_keys_live'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(live >= 6.0, "{live}");

    // an org's key entries go with the org
    let entries = |su: &mut Client| -> i64 {
        su.query_one(
            "SELECT count(*) FROM truxe.api_key_orgs WHERE org_id = $1::text::uuid",
            &[&child],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(entries(&mut su), 1, "the child's key");
    su.execute(
        "DELETE FROM truxe.organizations_by_slug WHERE id = $1::text::uuid",
        &[&child],
    )
    .unwrap();
    assert_eq!(entries(&mut su), 0, "the deleted org's");
}

/// For each of `users`: the shard of `table` that holds their rows (every shard's rows
/// counted per user with run_command_on_shards) and its worker port, asserting that the
/// user's rows are in exactly one shard, the one Citus computes for their id.
fn user_rows_by_shard(su: &mut Client, table: &str, users: &[String]) -> Vec<(i64, i32)> {
    let per_shard: Vec<(i64, i32, String)> = su
        .query(
            &format!(
                "SELECT r.shardid, n.nodeport, r.result
                   FROM run_command_on_shards('{table}',
                          $$SELECT coalesce(string_agg(DISTINCT user_id::text, ','), '') FROM %s$$) r
                   JOIN pg_dist_placement p ON p.shardid = r.shardid
                   JOIN pg_dist_node n USING (groupid)"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(per_shard.len(), 32, "{table}: one row per shard");
    users
        .iter()
        .map(|u| {
            let holding: Vec<(i64, i32)> = per_shard
                .iter()
                .filter(|(_, _, ids)| ids.split(',').any(|i| i == u))
                .map(|(s, p, _)| (*s, *p))
                .collect();
            assert_eq!(holding.len(), 1, "{table}: user {u}'s rows in one shard");
            let expected: i64 = su
                .query_one(
                    "SELECT get_shard_id_for_distribution_column($1::text::regclass, $2::text::uuid)",
                    &[&table, u],
                )
                .unwrap()
                .get(0);
            assert_eq!(holding[0].0, expected, "{table}: the shard of user {u}'s id");
            holding[0]
        })
        .collect()
}

/// mfa_factors and mfa_recovery_codes distributed by user_id, colocated with each other:
/// factors and codes of 8 or more users on both workers, each user's in the shard of their id;
/// each factor's entry in truxe.mfa_factor_users; verify_totp through the coordinator in the
/// user's shard only (wrong code counted, right code verified once, then replayed; five
/// wrong codes lock), a user listing their own factors' metadata and no
/// other user's through the claim, none in autocommit, the sealed seed refused (42501);
/// recovery codes single use; unenroll, its entry gone; metrics(). elevate_session over a distributed
/// factor is `citus::elevate_session_raises_a_distributed_session`.
#[test]
fn mfa_factors_live_in_their_users_shard_and_work_through_the_coordinator() {
    let Some(c) = cluster() else { return };
    let mut s = c.service();
    let mut su = c.superuser();
    let mut users: Vec<(String, String, String)> = Vec::new();
    // at least 8 users, and more until their factors' shards are on both workers (ids are
    // random: 8 users all on one worker is 1 draw in 128)
    let mut workers = std::collections::BTreeSet::new();
    while users.len() < 8 || workers.len() < 2 {
        let (u, _) = user(c);
        let port: i32 = su
            .query_one(
                "SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
                  WHERE p.shardid = get_shard_id_for_distribution_column('truxe.mfa_factors',
                                                                          $1::text::uuid)",
                &[&u],
            )
            .unwrap()
            .get(0);
        workers.insert(port);
        let r = s
            .query_one(
                "SELECT factor_id::text, secret FROM truxe.enroll_totp($1::text::uuid, 'Acme')",
                &[&u],
            )
            .unwrap();
        let codes = s
            .query(
                "SELECT truxe.generate_recovery_codes($1::text::uuid, 3)",
                &[&u],
            )
            .unwrap();
        assert_eq!(codes.len(), 3);
        users.push((u, r.get(0), r.get(1)));
    }
    let ids: Vec<String> = users.iter().map(|u| u.0.clone()).collect();
    let factors = user_rows_by_shard(&mut su, "truxe.mfa_factors", &ids);
    let codes = user_rows_by_shard(&mut su, "truxe.mfa_recovery_codes", &ids);
    let ports: std::collections::BTreeSet<i32> = factors.iter().map(|f| f.1).collect();
    assert_eq!(ports.len(), 2, "factors on both workers: {factors:?}");
    let colocated: i64 = su
        .query_one(
            "SELECT count(DISTINCT colocationid) FROM pg_dist_partition
              WHERE logicalrelid IN ('truxe.mfa_factors'::regclass,
                                     'truxe.mfa_recovery_codes'::regclass)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(colocated, 1, "factors and codes colocated");
    for (f, r) in factors.iter().zip(&codes) {
        assert_eq!(f.1, r.1, "a user's factors and codes on one worker");
    }

    // verify_totp: a wrong code is counted, the right one verifies once
    let verify = |s: &mut Client, factor: &str, code: &str| -> String {
        s.query_one(
            "SELECT truxe.verify_totp($1::text::uuid, $2)",
            &[&factor, &code],
        )
        .unwrap()
        .get(0)
    };
    let (alice, factor, secret) = users[0].clone();
    crate::mfa::leave_step_margin(8);
    assert_eq!(
        verify(&mut s, &factor, &crate::mfa::wrong_code(&secret)),
        "invalid"
    );
    let failed: i32 = su
        .query_one(
            "SELECT failed_attempts FROM truxe.mfa_factors WHERE id = $1::text::uuid",
            &[&factor],
        )
        .unwrap()
        .get(0);
    assert_eq!(failed, 1, "the failure persisted in the factor's shard");
    // each factor's user by its id on the coordinator, written by enroll_totp …
    let entries: Vec<(String, String)> = su
        .query(
            "SELECT id::text, user_id::text FROM truxe.mfa_factor_users
              WHERE user_id = ANY ($1::text[]::uuid[])",
            &[&ids],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(entries.len(), users.len(), "{entries:?}");
    for (u, f, _) in &users {
        assert!(entries.contains(&(f.clone(), u.clone())), "{f}");
    }
    // … so verify_totp reads and writes one shard, the user's
    let code = crate::mfa::python_code(&secret);
    let (mut logged, sent) = logging_remote_commands(c, SERVICE_LOGIN);
    assert_eq!(verify(&mut logged, &factor, &code), "verified");
    assert_eq!(
        shards_named(&sent, "mfa_factors"),
        std::collections::BTreeSet::from([format!("mfa_factors_{}", factors[0].0)]),
        "the user's shard only"
    );
    assert_eq!(verify(&mut s, &factor, &code), "replayed");
    let status: String = su
        .query_one(
            "SELECT status FROM truxe.mfa_factors WHERE id = $1::text::uuid",
            &[&factor],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "verified");
    assert_eq!(
        verify(&mut s, "6b0f1c2e-0000-4000-8000-000000000000", &code),
        "invalid",
        "an unknown factor"
    );
    // five wrong codes lock another user's factor
    let (_, b_factor, b_secret) = users[1].clone();
    let wrong = crate::mfa::wrong_code(&b_secret);
    for _ in 0..5 {
        assert_eq!(verify(&mut s, &b_factor, &wrong), "invalid");
    }
    assert_eq!(
        verify(&mut s, &b_factor, &crate::mfa::python_code(&b_secret)),
        "locked"
    );

    // a user lists their own factors' metadata through the claim, and no other user's
    let mut a = c.authenticated();
    let mut t = in_context(&mut a, &alice);
    let own: Vec<String> = t
        .query("SELECT id::text FROM truxe.mfa_factors", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(own, vec![factor.clone()]);
    assert_eq!(
        sqlstate(t.query("SELECT ciphertext FROM truxe.mfa_factors", &[])),
        "42501"
    );
    t.rollback().unwrap();
    let seen: i64 = a
        .query_one("SELECT count(*) FROM truxe.mfa_factors", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "no claim in autocommit: nothing");

    // recovery codes: single use, in the user's shard
    let (carol, _, _) = users[2].clone();
    let codes: Vec<String> = s
        .query(
            "SELECT truxe.generate_recovery_codes($1::text::uuid, 2)",
            &[&carol],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let use_code = |s: &mut Client, u: &str, code: &str| -> bool {
        s.query_one(
            "SELECT truxe.use_recovery_code($1::text::uuid, $2)",
            &[&u, &code],
        )
        .unwrap()
        .get(0)
    };
    assert!(!use_code(&mut s, &alice, &codes[0]), "another user's code");
    assert!(use_code(&mut s, &carol, &codes[0].to_uppercase()));
    assert!(!use_code(&mut s, &carol, &codes[0]), "used once");
    let left: String = su
        .query_one(
            "SELECT details->>'codes_left' FROM truxe.audit_logs
              WHERE action = 'mfa.recovery_code_used' AND target_id = $1",
            &[&carol],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, "1");
    let live: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.mfa_recovery_codes
              WHERE user_id = $1::text::uuid AND used_at IS NULL",
            &[&carol],
        )
        .unwrap()
        .get(0);
    assert_eq!(live, 1, "the new set replaced the old one");

    // unenroll, once
    let (_, d_factor, _) = users[3].clone();
    let unenroll = |s: &mut Client, f: &str| -> bool {
        s.query_one("SELECT truxe.unenroll_factor($1::text::uuid)", &[&f])
            .unwrap()
            .get(0)
    };
    assert!(unenroll(&mut s, &d_factor));
    assert!(!unenroll(&mut s, &d_factor));
    let entry: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.mfa_factor_users WHERE id = $1::text::uuid",
            &[&d_factor],
        )
        .unwrap()
        .get(0);
    assert_eq!(entry, 0, "the unenrolled factor's entry");

    // metrics() counts verified factors over the shards
    let verified: f64 = s
        .query_one(
            "SELECT value FROM truxe.metrics() WHERE metric = 'mfa_factors_verified'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(verified >= 1.0, "{verified}");
}

/// A limit of Citus, pinned down (docs/scaling.md, "api_keys" and "mfa_factors" on Citus):
/// truxe writes a key or a factor as the table's owner, and Citus then refuses the
/// caller's own read of that shard in the same transaction (25001); a transaction of its
/// own reads it. An org admin listing keys after creating one; service_account listing a
/// user's factors after enrolling one.
#[test]
fn reading_a_key_or_factor_truxe_wrote_needs_a_transaction_of_its_own() {
    let Some(c) = cluster() else { return };
    let (admin, _) = user(c);
    let org = org(c, &admin);
    let mut a = c.authenticated();
    let mut t = in_context(&mut a, &admin);
    t.query_one(
        "SELECT key_id FROM truxe.create_api_key($1::text::uuid, 'ci')",
        &[&org],
    )
    .unwrap();
    assert_eq!(
        sqlstate(t.query("SELECT id FROM truxe.api_keys", &[])),
        "25001"
    );
    t.rollback().unwrap();
    create_key(c, &admin, &org, &[]);
    let mut t = in_context(&mut a, &admin);
    let listed = t.query("SELECT id FROM truxe.api_keys", &[]).unwrap();
    assert_eq!(listed.len(), 1);
    t.commit().unwrap();

    let (u, _) = user(c);
    let mut s = c.service();
    let mut t = s.transaction().unwrap();
    t.query_one(
        "SELECT factor_id FROM truxe.enroll_totp($1::text::uuid, 'Acme')",
        &[&u],
    )
    .unwrap();
    assert_eq!(
        sqlstate(t.query(
            "SELECT id FROM truxe.mfa_factors WHERE user_id = $1::text::uuid",
            &[&u]
        )),
        "25001"
    );
    t.rollback().unwrap();
    s.query_one(
        "SELECT factor_id FROM truxe.enroll_totp($1::text::uuid, 'Acme')",
        &[&u],
    )
    .unwrap();
    let listed = s
        .query(
            "SELECT id FROM truxe.mfa_factors WHERE user_id = $1::text::uuid",
            &[&u],
        )
        .unwrap();
    assert_eq!(listed.len(), 1);
}

/// How many rows of the distributed `table` have `column` = `id`, counted on the workers'
/// shards themselves (run_command_on_shards), every shard answering.
fn rows_on_shards(su: &mut Client, table: &str, column: &str, id: &str) -> i64 {
    let r = su
        .query_one(
            &format!(
                "SELECT bool_and(r.success),
                        coalesce(sum(r.result::bigint) FILTER (WHERE r.success), 0)::bigint
                   FROM run_command_on_shards('{table}',
                          $$SELECT count(*) FROM %s WHERE {column} = '{id}'$$) r"
            ),
            &[],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0), "{table}: every shard answered");
    r.get(1)
}

/// An org's distributed rows go with the org, as its foreign keys' ON DELETE CASCADE does on
/// a single node: service_account deletes an org (as it may on a single node) that has a
/// session, a usage counter, a secret, an invitation and an API key, on one worker, while
/// another org on the other worker has the same. Afterwards none of the deleted org's rows
/// is left on any shard, the other org's are all there, get_secret finds nothing for the
/// deleted org's id and its key authenticates nothing; its audit rows stay (the audit log
/// has no foreign key, on a single node either). 0.1 and the first Citus version left
/// every one of those rows on the workers.
#[test]
fn deleting_an_org_deletes_its_distributed_rows() {
    let Some(c) = cluster() else { return };
    let tenants = orgs_on_both_workers(c, 2);
    let mut svc = c.service();
    let mut keys = Vec::new();
    for (admin, org) in &tenants {
        svc.execute(
            "SELECT truxe.put_secret($1::text::uuid, 'stripe', 'sk_live')",
            &[org],
        )
        .unwrap();
        svc.execute(
            "SELECT truxe.record_usage($1::text::uuid, 'api_requests')",
            &[org],
        )
        .unwrap();
        let email = format!("{}@citus.example", unique("gone"));
        c.acting_as(admin)
            .query_one(
                "SELECT token FROM truxe.invite_by_email($1::text::uuid, $2, 'member')",
                &[org, &email],
            )
            .unwrap();
        svc.query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid, $2::text::uuid)",
            &[admin, org],
        )
        .unwrap();
        keys.push(create_key(c, admin, org, &[]).1);
    }
    let (_, gone) = &tenants[0];
    let (_, kept) = &tenants[1];
    let tables = [
        "truxe.sessions",
        "truxe.usage_metrics",
        "truxe.secrets",
        "truxe.invitations",
        "truxe.api_keys",
    ];
    let mut su = c.superuser();
    for t in tables {
        for org in [gone, kept] {
            assert_eq!(rows_on_shards(&mut su, t, "org_id", org), 1, "{t} of {org}");
        }
    }
    let audit_before: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[gone],
        )
        .unwrap()
        .get(0);
    assert!(audit_before > 0);

    let deleted = svc
        .execute(
            "DELETE FROM truxe.organizations_by_slug WHERE id = $1::text::uuid",
            &[gone],
        )
        .unwrap();
    assert_eq!(deleted, 1);
    for t in tables {
        assert_eq!(
            rows_on_shards(&mut su, t, "org_id", gone),
            0,
            "{t} of the deleted org"
        );
        assert_eq!(
            rows_on_shards(&mut su, t, "org_id", kept),
            1,
            "{t} of the other org"
        );
    }
    let secret = |svc: &mut Client, org: &str| -> Option<String> {
        svc.query_one("SELECT truxe.get_secret($1::text::uuid, 'stripe')", &[&org])
            .unwrap()
            .get(0)
    };
    assert_eq!(secret(&mut svc, gone), None);
    assert_eq!(secret(&mut svc, kept).as_deref(), Some("sk_live"));
    assert_eq!(key_org(c, &keys[0]), None);
    assert_eq!(key_org(c, &keys[1]).as_deref(), Some(kept.as_str()));
    // the audit log is append-only: the org's rows stay, with the org's deletion
    let r = su
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE action = 'org.deleted')
               FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[gone],
        )
        .unwrap();
    let (audit_after, org_deleted): (i64, i64) = (r.get(0), r.get(1));
    assert!(
        audit_after > audit_before,
        "{audit_after} audit rows after, {audit_before} before"
    );
    assert_eq!(org_deleted, 1);
    // a DELETE that removes no org changes nothing
    assert_eq!(
        svc.execute(
            "DELETE FROM truxe.organizations_by_slug WHERE id = $1::text::uuid",
            &[gone]
        )
        .unwrap(),
        0
    );
    for t in tables {
        assert_eq!(
            rows_on_shards(&mut su, t, "org_id", kept),
            1,
            "{t} of the other org"
        );
    }
}

/// A top-level write of users (autocommit, no truxe function) is one transaction with the
/// single-shard writes of its triggers on the workers: a status change that fails after its
/// audit trigger wrote `user.status_changed` (in the org-less shard) leaves no such row,
/// and the user's session unrevoked. Without the statement trigger that makes the
/// transaction a coordinated one first, Citus wrote that row in an autocommit of its own.
#[test]
fn a_top_level_write_of_users_fails_with_its_audit_row() {
    let Some(c) = cluster() else { return };
    let (u, _) = user(c);
    let mut svc = c.service();
    let jti: String = svc
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
            &[&u],
        )
        .unwrap()
        .get(0);
    let mut su = c.superuser();
    let changed = |su: &mut Client| -> i64 {
        su.query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE org_id = '00000000-0000-0000-0000-000000000000' AND target_id = $1
                AND action::text = 'user.status_changed'",
            &[&u],
        )
        .unwrap()
        .get(0)
    };
    let failed = failing_last(
        &mut su,
        "truxe.users",
        "UPDATE",
        &format!("NEW.id = '{u}'"),
        || {
            svc.execute(
                "UPDATE truxe.users SET status = 'suspended' WHERE id = $1::text::uuid",
                &[&u],
            )
        },
    );
    assert_eq!(sqlstate(failed), "P0001");
    assert_eq!(changed(&mut su), 0, "no audit row of the failed statement");
    let valid: bool = svc
        .query_one(
            "SELECT count(*) = 1 FROM truxe.validate_session($1::text::uuid)",
            &[&jti],
        )
        .unwrap()
        .get(0);
    assert!(valid, "the session was not revoked");
    // the same statement, not refused: its row and its effects
    svc.execute(
        "UPDATE truxe.users SET status = 'suspended' WHERE id = $1::text::uuid",
        &[&u],
    )
    .unwrap();
    assert_eq!(changed(&mut su), 1);
}

/// A user's distributed rows follow the user's foreign keys on a single node: deleting
/// users (two in one DELETE, by service_account) deletes their sessions (on whatever shard
/// each token hashed to), second factors and recovery codes (ON DELETE CASCADE), and clears
/// their ids from invitations.invited_by, invitations.accepted_by and api_keys.created_by
/// (ON DELETE SET NULL), leaving the other column of a row that names a kept user and every
/// row of the kept user as they were. 0.1 and the first Citus version left them all.
#[test]
fn deleting_a_user_deletes_their_sessions_and_factors_and_clears_their_ids() {
    let Some(c) = cluster() else { return };
    let mut svc = c.service();
    let mut su = c.superuser();
    let (alice, _) = user(c);
    let (bob, _) = user(c);
    let alpha = org(c, &alice);
    let beta = org(c, &bob);
    for u in [&alice, &bob] {
        svc.query_one(
            "SELECT factor_id FROM truxe.enroll_totp($1::text::uuid, 'Acme')",
            &[u],
        )
        .unwrap();
        svc.query(
            "SELECT truxe.generate_recovery_codes($1::text::uuid, 3)",
            &[u],
        )
        .unwrap();
        for _ in 0..3 {
            svc.query_one("SELECT jti FROM truxe.create_session($1::text::uuid)", &[u])
                .unwrap();
        }
    }
    let invite = |admin: &str, org: &str| -> (String, String) {
        let email = format!("{}@citus.example", unique("inv"));
        let r = c
            .acting_as(admin)
            .query_one(
                "SELECT invitation_id::text, token
                   FROM truxe.invite_by_email($1::text::uuid, $2, 'member')",
                &[&org, &email],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    // alice's pending invitation; bob's, accepted by nina (a new user), who goes with alice
    let (pending, _) = invite(&alice, &alpha);
    let (accepted, token) = invite(&bob, &beta);
    let nina: String = svc
        .query_one(
            "SELECT user_id::text FROM truxe.accept_invitation_token($1)",
            &[&token],
        )
        .unwrap()
        .get(0);
    let (alice_key, _) = create_key(c, &alice, &alpha, &[]);
    let (bob_key, _) = create_key(c, &bob, &beta, &[]);
    let per_user = [
        ("truxe.sessions", 3),
        ("truxe.mfa_factors", 1),
        ("truxe.mfa_recovery_codes", 3),
    ];
    for (t, n) in per_user {
        for u in [&alice, &bob] {
            assert_eq!(rows_on_shards(&mut su, t, "user_id", u), n, "{t} of {u}");
        }
    }

    let deleted = svc
        .execute(
            "DELETE FROM truxe.users WHERE id = ANY ($1::text[]::uuid[])",
            &[&vec![alice.clone(), nina.clone()]],
        )
        .unwrap();
    assert_eq!(deleted, 2);
    for (t, n) in per_user {
        assert_eq!(
            rows_on_shards(&mut su, t, "user_id", &alice),
            0,
            "{t} of alice"
        );
        assert_eq!(rows_on_shards(&mut su, t, "user_id", &bob), n, "{t} of bob");
    }
    for (t, col, u) in [
        ("truxe.invitations", "invited_by", &alice),
        ("truxe.invitations", "accepted_by", &nina),
        ("truxe.api_keys", "created_by", &alice),
    ] {
        assert_eq!(
            rows_on_shards(&mut su, t, col, u),
            0,
            "{t}.{col} of a deleted user"
        );
    }
    let invitation = |su: &mut Client, org: &str, id: &str| -> (Option<String>, Option<String>) {
        let r = su
            .query_one(
                "SELECT invited_by::text, accepted_by::text FROM truxe.invitations
                  WHERE org_id = $1::text::uuid AND id = $2::text::uuid",
                &[&org, &id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(invitation(&mut su, &alpha, &pending), (None, None));
    assert_eq!(
        invitation(&mut su, &beta, &accepted),
        (Some(bob.clone()), None)
    );
    let creator = |su: &mut Client, org: &str, id: &str| -> Option<String> {
        su.query_one(
            "SELECT created_by::text FROM truxe.api_keys
              WHERE org_id = $1::text::uuid AND id = $2::text::uuid",
            &[&org, &id],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(creator(&mut su, &alpha, &alice_key), None);
    assert_eq!(creator(&mut su, &beta, &bob_key), Some(bob.clone()));
    // the org alice owned stays (its key to users is on memberships, on the coordinator)
    let alpha_left: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.organizations WHERE id = $1::text::uuid",
            &[&alpha],
        )
        .unwrap()
        .get(0);
    assert_eq!(alpha_left, 1);
}

/// The dropped foreign keys' other half: an UPDATE that changes the id of an org or a user
/// whom distributed rows still name is refused with 23503 and the key's name, as on a
/// single node (there the keys are NO ACTION on update), instead of leaving those rows
/// naming an id that no longer exists; an id that nothing names still changes. (The
/// coordinator's own keys, from memberships, refuse first when the org or user has one:
/// these cases have none.)
#[test]
fn changing_an_id_that_distributed_rows_name_is_refused() {
    let Some(c) = cluster() else { return };
    let mut svc = c.service();
    let mut su = c.superuser();
    let (alice, _) = user(c);
    let alpha = org(c, &alice);
    svc.execute(
        "SELECT truxe.put_secret($1::text::uuid, 'stripe', 'sk_live')",
        &[&alpha],
    )
    .unwrap();
    svc.execute(
        "DELETE FROM truxe.memberships_by_user WHERE org_id = $1::text::uuid",
        &[&alpha],
    )
    .unwrap();
    let change_org =
        "UPDATE truxe.organizations_by_slug SET id = gen_random_uuid() WHERE id = $1::text::uuid";
    let e = svc.execute(change_org, &[&alpha]).unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "23503", "{db:?}");
    assert!(
        db.message().contains("secrets_org_id_fkey"),
        "{}",
        db.message()
    );
    assert_eq!(
        rows_on_shards(&mut su, "truxe.secrets", "org_id", &alpha),
        1
    );

    // a user with no membership and one session (on the shard of its token), then a
    // factor only
    let (bob, _) = user(c);
    svc.query_one(
        "SELECT jti FROM truxe.create_session($1::text::uuid)",
        &[&bob],
    )
    .unwrap();
    let change_user = "UPDATE truxe.users SET id = gen_random_uuid() WHERE id = $1::text::uuid";
    let e = svc.execute(change_user, &[&bob]).unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "23503", "{db:?}");
    assert!(
        db.message().contains("sessions_user_id_fkey"),
        "{}",
        db.message()
    );
    let (carol, _) = user(c);
    svc.query_one(
        "SELECT factor_id FROM truxe.enroll_totp($1::text::uuid, 'Acme')",
        &[&carol],
    )
    .unwrap();
    assert_eq!(sqlstate(svc.execute(change_user, &[&carol])), "23503");

    // nothing names them: the ids change
    let (dave, _) = user(c);
    assert_eq!(svc.execute(change_user, &[&dave]).unwrap(), 1);
    let (eve, _) = user(c);
    let beta = org(c, &eve);
    svc.execute(
        "DELETE FROM truxe.memberships_by_user WHERE org_id = $1::text::uuid",
        &[&beta],
    )
    .unwrap();
    assert_eq!(svc.execute(change_org, &[&beta]).unwrap(), 1);
}
