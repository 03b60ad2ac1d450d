//! A throwaway PostgreSQL server per test binary, with truxe installed, and a fresh
//! database per test.
//!
//! The server is the one named by `TRUXE_PG_CONFIG` (scripts/test sets it to the PG 15 or
//! PG 16 `pg_config` after `cargo pgrx install` into it). It runs as the `postgres` user
//! when the tests run as root (initdb refuses root), listens only on a private Unix socket
//! directory, and is stopped and removed when the test process exits.
use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Login roles the harness creates: one per truxe role, so tests connect as a real
/// non-superuser (RLS does not apply to superusers).
pub const AUTH_LOGIN: &str = "truxe_test_authenticated";
pub const SERVICE_LOGIN: &str = "truxe_test_service";
pub const PLAIN_LOGIN: &str = "truxe_test_nobody";
const PORT: u16 = 5432;

pub struct Server {
    dir: PathBuf,
    bindir: PathBuf,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);
/// `CREATE EXTENSION` creates cluster-wide roles when absent: serialise it so that two
/// tests installing truxe at once do not race on them.
pub static INSTALL_LOCK: Mutex<()> = Mutex::new(());

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the cluster owner: `postgres` when we are root, ourselves otherwise.
/// Rust's backtrace switches are not passed on: with RUST_BACKTRACE set in the server's
/// environment, every error raised from Rust would carry a backtrace (with build paths) in
/// its DETAIL — to clients and into the log.
/// `program` as a command run by the server's OS user (`postgres` when the tests run as
/// root: neither PostgreSQL nor PgBouncer runs as root).
pub fn as_owner(program: &Path) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    c.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    c
}

/// A fresh `dir` (emptied, owned by `postgres` when running as root) with a new cluster in
/// `dir/data`: superuser `postgres`, trust for local and loopback connections, UTF8, C.
pub fn init_data_dir(bindir: &Path, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create the server directory");
    if is_root() {
        run(Command::new("chown").arg("postgres:").arg(dir));
    }
    run(as_owner(&bindir.join("initdb"))
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]));
}

/// Concurrent verifications of one token: exactly one `verified`, every other `used`.
pub fn assert_one_verified(statuses: &[String]) {
    assert_eq!(
        statuses.iter().filter(|s| *s == "verified").count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| s == "verified" || s == "used"),
        "{statuses:?}"
    );
}

extern "C" fn stop_server() {
    if let Some(s) = SERVER.get() {
        s.remove();
    }
}

/// The major version of the PostgreSQL that `pg_config` belongs to.
fn major_version(pg_config: &str) -> u32 {
    let version = run(Command::new(pg_config).arg("--version"));
    version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {version:?}"))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Server {
    fn start() -> Server {
        let server = Server::launch("it", &[]);
        // SAFETY: registering a plain extern "C" fn; it runs once at process exit.
        unsafe { libc::atexit(stop_server) };
        let mut c = server.client("postgres", "postgres");
        for role in [AUTH_LOGIN, SERVICE_LOGIN, PLAIN_LOGIN] {
            c.batch_execute(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER"))
                .expect("create test login role");
        }
        server
    }

    /// A new server of the PostgreSQL under test (`TRUXE_PG_CONFIG`) in a directory of its
    /// own (`truxe-<tag>-<major>-<pid>` under the temp dir), started with the settings
    /// `conf` on top of the harness's own. Tests that need a server to themselves (another
    /// library path, a restart) launch one; it is removed when dropped.
    pub fn launch(tag: &str, conf: &[(&str, &str)]) -> Server {
        let pg_config = std::env::var("TRUXE_PG_CONFIG").expect(
            "TRUXE_PG_CONFIG must name the pg_config of a PostgreSQL with truxe installed \
             (scripts/test sets it)",
        );
        let bindir = PathBuf::from(run(Command::new(&pg_config).arg("--bindir")));
        let dir = std::env::temp_dir().join(format!(
            "truxe-{tag}-{}-{}",
            major_version(&pg_config),
            std::process::id()
        ));
        init_data_dir(&bindir, &dir);
        let server = Server { dir, bindir };
        server.start_with(conf);
        server
    }

    /// Starts the (stopped) server with `conf` on top of the harness's settings.
    pub fn start_with(&self, conf: &[(&str, &str)]) {
        let mut opts = format!(
            "-c listen_addresses='' -k {} -p {PORT} -c fsync=off -c max_connections=200 \
             -c log_min_messages=warning",
            self.dir.display()
        );
        for (name, value) in conf {
            opts.push_str(&format!(" -c {name}='{value}'"));
        }
        run(as_owner(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-o", &opts, "start"]));
    }

    /// Stops the server (fast shutdown: sessions end, nothing is lost).
    pub fn stop(&self) {
        run(as_owner(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]));
    }

    /// A connection to `dbname` as `user` over the private socket.
    pub fn client(&self, dbname: &str, user: &str) -> Client {
        postgres::Config::new()
            .host_path(&self.dir)
            .port(PORT)
            .user(user)
            .dbname(dbname)
            .application_name("truxe-integration")
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect to {dbname} as {user}: {e}"))
    }

    /// Stops the server at once, if it runs, and removes its directory.
    fn remove(&self) {
        let _ = as_owner(&self.bindir.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A client program of the server under test (pg_dump, pg_restore, psql), set up to
    /// connect to it as the superuser.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(self.bindir.join(name));
        c.env("PGHOST", &self.dir)
            .env("PGPORT", PORT.to_string())
            .env("PGUSER", "postgres");
        c
    }

    /// A new empty database; `with_truxe` runs `CREATE EXTENSION truxe CASCADE` in it and
    /// makes the test logins members of `authenticated` and `service_account`.
    pub fn fresh_db(&self, with_truxe: bool) -> TestDb {
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        self.client("postgres", "postgres")
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .expect("create test database");
        let db = TestDb { name };
        if with_truxe {
            let mut c = db.superuser();
            create_extension(&mut c);
            c.batch_execute(&format!(
                "GRANT authenticated TO {AUTH_LOGIN}; GRANT service_account TO {SERVICE_LOGIN};"
            ))
            .expect("grant the truxe roles to the test logins");
        }
        db
    }
}

/// `CREATE EXTENSION truxe CASCADE` on `c`, serialised with every other test's.
pub fn create_extension(c: &mut Client) {
    let _guard = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    c.batch_execute("CREATE EXTENSION truxe CASCADE")
        .expect("CREATE EXTENSION truxe CASCADE");
}

/// The shared server of this test process, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(Server::start)
}

/// One test's database.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A superuser connection (bypasses RLS: for setup and catalog checks only).
    pub fn superuser(&self) -> Client {
        server().client(&self.name, "postgres")
    }

    /// A connection as a NOSUPERUSER login that is a member of `authenticated`.
    pub fn authenticated(&self) -> Client {
        server().client(&self.name, AUTH_LOGIN)
    }

    /// An `authenticated` connection acting as `user` for the whole session
    /// (`set_context(user, NULL, is_local => false)`).
    pub fn acting_as(&self, user: &str) -> Client {
        let mut c = self.authenticated();
        c.execute(
            "SELECT truxe.set_context($1::text::uuid, NULL, false)",
            &[&user],
        )
        .expect("set the acting user");
        c
    }

    /// A connection as a NOSUPERUSER login that is a member of `service_account`.
    pub fn service(&self) -> Client {
        server().client(&self.name, SERVICE_LOGIN)
    }

    /// A connection as a login that holds neither truxe role (what PUBLIC can do).
    pub fn nobody(&self) -> Client {
        server().client(&self.name, PLAIN_LOGIN)
    }
}

/// An `authenticated` connection acting as `user` for the whole session, or with no acting
/// user at all.
pub fn as_user(db: &TestDb, user: Option<&str>) -> Client {
    match user {
        Some(u) => db.acting_as(u),
        None => db.authenticated(),
    }
}

/// The first column (text) of every row `sql` returns through `c`, sorted.
pub fn strings(c: &mut Client, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// `v` as owned strings, sorted: what `strings` answers for these values.
pub fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Inserts an active user with `email` through `c` (a superuser or service connection) and
/// returns its id as text.
pub fn active_user(c: &mut Client, email: &str) -> String {
    c.query_one(
        "INSERT INTO truxe.users (email, status) VALUES ($1, 'active') RETURNING id::text",
        &[&email],
    )
    .expect("insert an active user")
    .get(0)
}

/// A test file's tenants written straight into truxe's tables as the superuser: active
/// users, orgs (a parent before its children) and memberships, stated as data in the order
/// they are inserted. `seed` writes one INSERT per table.
#[derive(Default)]
pub struct Tenants {
    users: Vec<String>,
    orgs: Vec<String>,
    members: Vec<Membership>,
}

struct Membership {
    org: String,
    user: String,
    role: String,
    joined: bool,
    permissions: Option<String>,
    invited_by: Option<String>,
}

/// `s` as an SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Tenants {
    pub fn new() -> Tenants {
        Tenants::default()
    }

    /// An active user.
    pub fn user(mut self, id: &str, email: &str) -> Tenants {
        self.users
            .push(format!("({}, {}, 'active')", literal(id), literal(email)));
        self
    }

    /// An org, under `parent` (added earlier) or a root.
    pub fn org(mut self, id: &str, slug: &str, name: &str, parent: Option<&str>) -> Tenants {
        let parent = parent.map_or("NULL".to_string(), literal);
        self.orgs.push(format!(
            "({}, {}, {}, {parent})",
            literal(id),
            literal(slug),
            literal(name)
        ));
        self
    }

    /// A membership joined now.
    pub fn member(self, org: &str, user: &str, role: &str) -> Tenants {
        self.membership(org, user, role, true)
    }

    /// A pending membership: invited, not joined (`joined_at` NULL).
    pub fn pending(self, org: &str, user: &str, role: &str) -> Tenants {
        self.membership(org, user, role, false)
    }

    fn membership(mut self, org: &str, user: &str, role: &str, joined: bool) -> Tenants {
        self.members.push(Membership {
            org: org.into(),
            user: user.into(),
            role: role.into(),
            joined,
            permissions: None,
            invited_by: None,
        });
        self
    }

    /// The extra permissions (a JSON array) of the membership added last.
    pub fn permissions(mut self, json: &str) -> Tenants {
        self.last_membership().permissions = Some(json.into());
        self
    }

    /// Who invited the membership added last.
    pub fn invited_by(mut self, user: &str) -> Tenants {
        self.last_membership().invited_by = Some(user.into());
        self
    }

    fn last_membership(&mut self) -> &mut Membership {
        self.members
            .last_mut()
            .expect("a membership before its permissions or inviter")
    }

    /// Writes them into `db` as its superuser.
    pub fn seed(&self, db: &TestDb) {
        let mut sql = String::new();
        if !self.users.is_empty() {
            sql += &format!(
                "INSERT INTO truxe.users (id, email, status) VALUES {};\n",
                self.users.join(", ")
            );
        }
        if !self.orgs.is_empty() {
            sql += &format!(
                "INSERT INTO truxe.organizations (id, slug, name, parent_org_id) VALUES {};\n",
                self.orgs.join(", ")
            );
        }
        if !self.members.is_empty() {
            let rows: Vec<String> = self
                .members
                .iter()
                .map(|m| {
                    format!(
                        "({}, {}, {}, {}, {}, {})",
                        literal(&m.org),
                        literal(&m.user),
                        literal(&m.role),
                        m.permissions.as_deref().map_or("DEFAULT".into(), literal),
                        if m.joined { "now()" } else { "NULL" },
                        m.invited_by.as_deref().map_or("NULL".into(), literal)
                    )
                })
                .collect();
            sql += &format!(
                "INSERT INTO truxe.memberships (org_id, user_id, role, permissions, joined_at, invited_by) VALUES {};",
                rows.join(", ")
            );
        }
        db.superuser()
            .batch_execute(&sql)
            .expect("seed the tenants");
    }
}

/// Says on the process's stderr that a test did not run its real check, and why: cargo test
/// hides what a passing test prints through eprintln!, and a skip must never be silent.
pub fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {why} ***\n");
}

/// The path of `program` if it is on PATH or in /usr/sbin (where Debian puts daemons).
pub fn installed(program: &str) -> Option<std::path::PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// An outside program started by a test (an exporter, a pooler), stopped when the test
/// ends, pass or fail: SIGTERM first, which `runuser` (see [`as_owner`]) passes on to the
/// program it runs — SIGKILL would stop runuser alone and leave the program running —
/// then SIGKILL after 5 s.
pub struct Killed(pub std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: a plain signal to our own child process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// The SQLSTATE of a failed statement, or a panic naming what succeeded unexpectedly.
pub fn sqlstate<T: std::fmt::Debug>(r: Result<T, postgres::Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("error without SQLSTATE: {e}"))
            .code()
            .to_string(),
    }
}

/// Standbys and outside programs (tests/integration/standby.rs, ops.rs).
impl Server {
    /// The Unix socket directory the server listens in.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The port of the server's socket (the same for every server: each has its own dir).
    pub fn port(&self) -> u16 {
        PORT
    }

    /// The `pg_config` value `--<what>` of the PostgreSQL under test (e.g. `pkglibdir`).
    pub fn pg_config(what: &str) -> String {
        let pg_config = std::env::var("TRUXE_PG_CONFIG").expect("TRUXE_PG_CONFIG");
        run(Command::new(pg_config).arg(format!("--{what}")))
    }

    /// The major version of the PostgreSQL under test.
    pub fn major() -> u32 {
        major_version(&std::env::var("TRUXE_PG_CONFIG").expect("TRUXE_PG_CONFIG"))
    }

    /// A hot standby of this running server: `pg_basebackup -R -X stream` into a directory
    /// of its own (`<this server's dir>-<tag>`), started with `hot_standby = on` and its own
    /// socket directory; it streams from this server and is removed when dropped.
    pub fn standby(&self, tag: &str) -> Server {
        let mut name = self
            .dir
            .file_name()
            .expect("server dir name")
            .to_os_string();
        name.push(format!("-{tag}"));
        let dir = self.dir.with_file_name(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the standby directory");
        if is_root() {
            run(Command::new("chown").arg("postgres:").arg(&dir));
        }
        run(as_owner(&self.bindir.join("pg_basebackup"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &PORT.to_string(), "-U", "postgres"])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]));
        let standby = Server {
            dir,
            bindir: self.bindir.clone(),
        };
        standby.start_with(&[("hot_standby", "on")]);
        standby
    }

    /// Waits (at most 60 s) until `standby` has replayed everything this primary has
    /// written so far (compared by WAL position).
    pub fn wait_for_replay(&self, standby: &Server) {
        let lsn: String = self
            .client("postgres", "postgres")
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .expect("primary WAL position")
            .get(0);
        let mut c = standby.client("postgres", "postgres");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let done: bool = c
                .query_one(
                    "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&lsn],
                )
                .expect("standby replay position")
                .get(0);
            if done {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the standby did not replay up to {lsn} within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Issues a magic link for `email` through `c` (a service_account connection) and returns
/// its token.
pub fn issue_link(c: &mut Client, email: &str) -> String {
    c.query_one("SELECT token FROM truxe.issue_magic_link($1)", &[&email])
        .expect("issue a magic link")
        .get(0)
}

/// The status verify_magic_link gives `token`.
pub fn verify_link(c: &mut Client, token: &str) -> String {
    c.query_one("SELECT status FROM truxe.verify_magic_link($1)", &[&token])
        .expect("verify a magic link")
        .get(0)
}

/// `token` with the first character of its secret changed: the same challenge, a
/// well-formed but wrong secret (the last character, which must keep its unused low bits
/// zero, stays as it is).
pub fn wrong_secret(token: &str) -> String {
    let (id, secret) = token.split_once('.').expect("a token is id.secret");
    let first = if secret.starts_with('A') { 'B' } else { 'A' };
    format!("{id}.{first}{}", &secret[1..])
}

/// The SQLSTATE of `e` ("" for an error without one, such as a lost connection).
pub fn code_of(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}
