//! Second factors and secrets at rest (docs/security.md, "Second factors" and "Encryption
//! keys"): TOTP checked against an independent implementation (Python's standard hmac),
//! replay and lockout under concurrency, the vault, key rotation, what a dump and a
//! superuser see, recovery codes, session assurance, and who may call what.
use crate::dump::restore_copy;
use crate::harness::{server, sqlstate, Tenants, TestDb};
use postgres::Client;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

const ORG_A: &str = "a0000000-0000-0000-0000-0000000000d1";
const ORG_B: &str = "b0000000-0000-0000-0000-0000000000d2";
const ALICE: &str = "00000000-0000-0000-0000-0000000000d1";
const BOB: &str = "00000000-0000-0000-0000-0000000000d2";

static KEY_FILES: AtomicUsize = AtomicUsize::new(0);

/// A key file in a directory of its own under the temp dir, readable by the server (also
/// used by seal.rs).
pub(crate) struct KeyFile {
    dir: PathBuf,
    path: PathBuf,
}

impl KeyFile {
    pub(crate) fn new() -> KeyFile {
        let dir = std::env::temp_dir().join(format!(
            "truxe-keys-{}-{}",
            std::process::id(),
            KEY_FILES.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("truxe.keys");
        KeyFile { dir, path }
    }

    /// Writes `keys` (id, 64 hex digits), one a line; the last one encrypts.
    pub(crate) fn write(&self, keys: &[(&str, &str)]) {
        let text: String = keys.iter().map(|(id, k)| format!("{id}:{k}\n")).collect();
        self.write_text(&text);
    }

    fn write_text(&self, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.dir.join("truxe.keys.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    pub(crate) fn path(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 32 random bytes as 64 hex digits (a key), from the OS.
pub(crate) fn random_key() -> String {
    let mut b = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Points database `db` at `keys` (as a superuser may: per database).
pub(crate) fn use_key_file(db: &str, keys: &KeyFile) {
    server()
        .client(db, "postgres")
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET truxe.encryption_key_file = '{}'",
            keys.path()
        ))
        .unwrap();
}

/// Two orgs and two active users (ALICE in A, BOB in B), with a key file of one key.
fn keyed() -> (TestDb, KeyFile, String) {
    let db = server().fresh_db(true);
    Tenants::new()
        .user(ALICE, "alice@a.example")
        .user(BOB, "bob@b.example")
        .org(ORG_A, "org-a", "A", None)
        .org(ORG_B, "org-b", "B", None)
        .member(ORG_A, ALICE, "owner")
        .member(ORG_B, BOB, "owner")
        .seed(&db);
    let keys = KeyFile::new();
    let k1 = random_key();
    keys.write(&[("k1", &k1)]);
    use_key_file(&db.name, &keys);
    (db, keys, k1)
}

/// enroll_totp as service_account: (factor id, base32 secret, otpauth URI).
fn enroll(c: &mut Client, user: &str) -> (String, String, String) {
    let r = c
        .query_one(
            "SELECT factor_id::text, secret, otpauth_uri FROM truxe.enroll_totp($1::text::uuid, 'Acme Inc')",
            &[&user],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn verify(c: &mut Client, factor: &str, code: &str) -> String {
    c.query_one(
        "SELECT truxe.verify_totp($1::text::uuid, $2)",
        &[&factor, &code],
    )
    .unwrap()
    .get(0)
}

/// The factor's failed_attempts, read through `c`.
fn failed_attempts(c: &mut Client, factor: &str) -> i32 {
    c.query_one(
        "SELECT failed_attempts FROM truxe.mfa_factors WHERE id = $1::text::uuid",
        &[&factor],
    )
    .unwrap()
    .get(0)
}

/// Waits, if needed, until at least `need` seconds remain in the current 30-second step,
/// so that codes computed now for the steps around it stay around it.
pub(crate) fn leave_step_margin(need: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = now.as_secs() % 30;
    if 30 - into < need {
        thread::sleep(std::time::Duration::from_secs(30 - into + 1));
    }
}

/// TOTP codes by an independent implementation (Python 3's standard hmac, hashlib and
/// base64 modules): for each (base32 secret, step offset), the 6-digit code of the current
/// step (Python's clock) plus the offset.
fn python_codes(pairs: &[(String, i64)]) -> Vec<String> {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, struct, sys, time
step = int(time.time()) // 30
args = sys.argv[1:]
for secret, offset in zip(args[0::2], args[1::2]):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", step + int(offset)), hashlib.sha1).digest()
    o = mac[19] & 15
    print("%06d" % ((struct.unpack(">I", mac[o:o + 4])[0] & 0x7fffffff) % 1000000))
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SCRIPT);
    for (s, o) in pairs {
        cmd.arg(s).arg(o.to_string());
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

pub(crate) fn python_code(secret: &str) -> String {
    python_codes(&[(secret.to_string(), 0)]).remove(0)
}

/// A code for the current step that is not `secret`'s code for any step within ±1.
pub(crate) fn wrong_code(secret: &str) -> String {
    let near = python_codes(&[
        (secret.to_string(), -1),
        (secret.to_string(), 0),
        (secret.to_string(), 1),
    ]);
    (0..)
        .map(|n| format!("{:06}", (123_457 + n * 7919) % 1_000_000))
        .find(|c| !near.contains(c))
        .unwrap()
}

#[test]
fn totp_agrees_with_an_independent_implementation_over_random_secrets() {
    let (db, _keys, _) = keyed();
    let mut s = db.service();
    let mut enrolled = Vec::new();
    for _ in 0..40 {
        let (id, secret, uri) = enroll(&mut s, ALICE);
        assert_eq!(secret.len(), 32, "20 bytes in unpadded base32: {secret}");
        assert!(secret
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(
            uri,
            format!(
                "otpauth://totp/Acme%20Inc:alice%40a.example?secret={secret}&issuer=Acme%20Inc&algorithm=SHA1&digits=6&period=30"
            )
        );
        enrolled.push((id, secret));
    }
    let distinct: std::collections::HashSet<_> = enrolled.iter().map(|(_, s)| s).collect();
    assert_eq!(distinct.len(), enrolled.len(), "every seed is random");
    // each factor gets one code, for a step offset of -2..=2: ±1 step is accepted, ±2 not
    leave_step_margin(10);
    let pairs: Vec<(String, i64)> = enrolled
        .iter()
        .enumerate()
        .map(|(i, (_, secret))| (secret.clone(), i as i64 % 5 - 2))
        .collect();
    let codes = python_codes(&pairs);
    for ((id, _), ((_, offset), code)) in enrolled.iter().zip(pairs.iter().zip(&codes)) {
        let expected = if offset.abs() <= 1 {
            "verified"
        } else {
            "invalid"
        };
        assert_eq!(verify(&mut s, id, code), expected, "offset {offset}");
    }
    // the first accepted code verifies the factor; a rejected one counts a failure
    let rows = s
        .query(
            "SELECT status, failed_attempts FROM truxe.mfa_factors ORDER BY created_at",
            &[],
        )
        .unwrap();
    let verified = rows
        .iter()
        .filter(|r| r.get::<_, String>(0) == "verified")
        .count();
    assert_eq!(verified, 24, "3 of every 5 offsets are within ±1 step");
    let failed: i32 = rows.iter().map(|r| r.get::<_, i32>(1)).sum();
    assert_eq!(failed, 16);
    // spaces inside a code are ignored; anything else malformed is invalid (and counts)
    let (id, secret, _) = enroll(&mut s, ALICE);
    let code = python_code(&secret);
    for garbage in ["", "12345", "1234567", "12-34-56"] {
        assert_eq!(verify(&mut s, &id, garbage), "invalid");
    }
    assert_eq!(
        verify(&mut s, &id, &format!("{} {}", &code[..3], &code[3..])),
        "verified"
    );
    let none: String = s
        .query_one("SELECT truxe.verify_totp(NULL, NULL)", &[])
        .unwrap()
        .get(0);
    assert_eq!(none, "invalid");
    let unknown = verify(&mut s, "00000000-0000-0000-0000-000000000000", &code);
    assert_eq!(unknown, "invalid");
}

#[test]
fn a_code_is_accepted_once_and_of_eight_concurrent_submissions_exactly_one_wins() {
    let (db, _keys, _) = keyed();
    let mut s = db.service();
    let (id, secret, _) = enroll(&mut s, ALICE);
    let code = python_code(&secret);
    assert_eq!(verify(&mut s, &id, &code), "verified");
    assert_eq!(verify(&mut s, &id, &code), "replayed");
    // a replay is not a failure
    assert_eq!(failed_attempts(&mut s, &id), 0);

    // a fresh factor, one valid code, 8 connections at once, each in its own transaction
    let (id, secret, _) = enroll(&mut s, ALICE);
    let code = python_code(&secret);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (barrier, id, code) = (barrier.clone(), id.clone(), code.clone());
            let mut c = db.service();
            thread::spawn(move || {
                let mut tx = c.transaction().unwrap();
                barrier.wait();
                let status: String = tx
                    .query_one(
                        "SELECT truxe.verify_totp($1::text::uuid, $2)",
                        &[&id, &code],
                    )
                    .unwrap()
                    .get(0);
                tx.commit().unwrap();
                status
            })
        })
        .collect();
    let mut statuses: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    statuses.sort();
    let mut expected = vec!["replayed".to_string(); 7];
    expected.push("verified".to_string());
    assert_eq!(statuses, expected);
}

#[test]
fn five_wrong_codes_in_separate_transactions_lock_the_factor_for_15_minutes() {
    let (db, _keys, _) = keyed();
    let mut s = db.service();
    let (id, secret, _) = enroll(&mut s, ALICE);
    let wrong = wrong_code(&secret);
    for n in 1..=5 {
        // each call commits on its own: the count persists because the function returns
        assert_eq!(verify(&mut db.service(), &id, &wrong), "invalid", "try {n}");
    }
    let r = s
        .query_one(
            "SELECT failed_attempts, locked_until > now() + interval '14 minutes',
                    locked_until <= now() + interval '15 minutes'
               FROM truxe.mfa_factors WHERE id = $1::text::uuid",
            &[&id],
        )
        .unwrap();
    assert_eq!((r.get::<_, i32>(0), r.get(1), r.get(2)), (5, true, true));
    // the right code is refused while locked, and so is another wrong one
    assert_eq!(verify(&mut s, &id, &python_code(&secret)), "locked");
    assert_eq!(verify(&mut s, &id, &wrong), "locked");
    let locked: i64 = db
        .superuser()
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE action = 'mfa.locked' AND target_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(locked, 1);
    // once the lock has expired, the right code verifies and the count starts again
    db.superuser()
        .execute(
            "UPDATE truxe.mfa_factors SET locked_until = now() - interval '1 second' WHERE id = $1::text::uuid",
            &[&id],
        )
        .unwrap();
    assert_eq!(verify(&mut s, &id, &python_code(&secret)), "verified");
    assert_eq!(failed_attempts(&mut s, &id), 0);
}

#[test]
fn without_a_usable_key_file_every_function_says_what_to_configure() {
    let db = server().fresh_db(true);
    Tenants::new()
        .user(ALICE, "alice@a.example")
        .org(ORG_A, "org-a", "A", None)
        .seed(&db);
    let check = |db: &TestDb, needle: &str| {
        let mut s = db.service();
        for sql in [
            format!("SELECT truxe.put_secret('{ORG_A}', 'stripe', 'sk_live')"),
            format!("SELECT truxe.get_secret('{ORG_A}', 'stripe')"),
            format!("SELECT truxe.enroll_totp('{ALICE}', 'Acme')"),
            "SELECT truxe.rotate_encryption_key()".to_string(),
        ] {
            let e = s.batch_execute(&sql).expect_err(&sql);
            let state = e.code().map(|c| c.code().to_string());
            assert_eq!(state.as_deref(), Some("55000"), "{sql}: {e}");
            let msg = e.as_db_error().unwrap().message().to_string();
            assert!(
                msg.contains("truxe.encryption_key_file") && msg.contains(needle),
                "{sql}: {msg}"
            );
        }
    };
    check(&db, "no encryption key is configured");

    let keys = KeyFile::new();
    use_key_file(&db.name, &keys);
    check(&db, "cannot read the key file");
    let key = random_key();
    for (text, needle) in [
        (
            format!("k1:{}\n", &key[..63]),
            "line 1 of the key file is malformed",
        ),
        (
            format!("# comment\nk1 {key}\n"),
            "line 2 of the key file is malformed",
        ),
        (format!("k1:{key}\nk1:{key}\n"), "repeats the key id"),
        ("\n# nothing\n".to_string(), "holds no key"),
    ] {
        keys.write_text(&text);
        check(&db, needle);
        // the message never quotes the file's content
        let e = db
            .service()
            .batch_execute("SELECT truxe.rotate_encryption_key()")
            .unwrap_err();
        let msg = e.as_db_error().unwrap().message().to_string();
        assert!(!msg.contains(&key[..16]), "{msg}");
    }

    // a value a non-superuser put into the setting before the library loaded is discarded
    // when it loads: the functions still use the database's key file
    keys.write(&[("k1", &key)]);
    let mut s = db.service();
    s.batch_execute("SET truxe.encryption_key_file = '/tmp/mine'")
        .unwrap();
    s.batch_execute(&format!(
        "SELECT truxe.put_secret('{ORG_A}', 'stripe', 'sk_live')"
    ))
    .unwrap();
    // once loaded, only a superuser sets the setting, or even reads it
    assert_eq!(
        sqlstate(s.batch_execute("SET truxe.encryption_key_file = '/tmp/mine'")),
        "42501"
    );
    assert_eq!(
        sqlstate(s.batch_execute("SHOW truxe.encryption_key_file")),
        "42501"
    );
    assert_eq!(
        sqlstate(
            s.batch_execute("SELECT set_config('truxe.encryption_key_file', '/tmp/mine', false)")
        ),
        "42501"
    );
}

#[test]
fn the_vault_keeps_values_encrypted_and_audits_names_only() {
    let (db, _keys, key) = keyed();
    let mut s = db.service();
    let id: String = s
        .query_one(
            "SELECT truxe.put_secret($1::text::uuid, 'stripe', 'sk_live_abc123', '{\"env\": \"prod\"}')::text",
            &[&ORG_A],
        )
        .unwrap()
        .get(0);
    let get = |c: &mut Client, org: &str, name: &str| -> Option<String> {
        c.query_one(
            "SELECT truxe.get_secret($1::text::uuid, $2)",
            &[&org, &name],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(
        get(&mut s, ORG_A, "stripe").as_deref(),
        Some("sk_live_abc123")
    );
    assert_eq!(
        get(&mut s, ORG_B, "stripe"),
        None,
        "another org's name space"
    );
    assert_eq!(get(&mut s, ORG_A, "nothing"), None);
    // replacing keeps the id and changes the value
    let again: String = s
        .query_one(
            "SELECT truxe.put_secret($1::text::uuid, 'stripe', 'sk_live_rotated')::text",
            &[&ORG_A],
        )
        .unwrap()
        .get(0);
    assert_eq!(again, id);
    assert_eq!(
        get(&mut s, ORG_A, "stripe").as_deref(),
        Some("sk_live_rotated")
    );
    let unicode = "päss\u{1F511}\n\ttab";
    s.execute(
        "SELECT truxe.put_secret($1::text::uuid, 'hook', $2)",
        &[&ORG_B, &unicode],
    )
    .unwrap();
    assert_eq!(get(&mut s, ORG_B, "hook").as_deref(), Some(unicode));

    // bad input
    for (sql, state) in [
        (
            format!("SELECT truxe.put_secret('{ORG_A}', '', 'x')"),
            "22023",
        ),
        (
            format!("SELECT truxe.put_secret('{ORG_A}', E'a\\nb', 'x')"),
            "22023",
        ),
        (
            format!("SELECT truxe.put_secret('{ORG_A}', repeat('n', 201), 'x')"),
            "22023",
        ),
        (
            format!("SELECT truxe.put_secret('{ORG_A}', 'n', NULL)"),
            "22023",
        ),
        (
            format!("SELECT truxe.put_secret('{ORG_A}', 'n', repeat('v', 70000))"),
            "22023",
        ),
        (
            format!("SELECT truxe.put_secret('{ORG_A}', 'n', 'x', '[1]')"),
            "22023",
        ),
        (
            "SELECT truxe.put_secret(NULL, 'n', 'x')".to_string(),
            "22023",
        ),
        (
            "SELECT truxe.put_secret('00000000-0000-0000-0000-000000000000', 'n', 'x')".to_string(),
            "P0002",
        ),
        (format!("SELECT truxe.get_secret('{ORG_A}', NULL)"), "22023"),
        ("SELECT truxe.rotate_encryption_key(0)".to_string(), "22023"),
    ] {
        assert_eq!(sqlstate(s.batch_execute(&sql)), state, "{sql}");
    }

    let deleted: bool = s
        .query_one(
            "SELECT truxe.delete_secret($1::text::uuid, 'stripe')",
            &[&ORG_A],
        )
        .unwrap()
        .get(0);
    assert!(deleted);
    let twice: bool = s
        .query_one(
            "SELECT truxe.delete_secret($1::text::uuid, 'stripe')",
            &[&ORG_A],
        )
        .unwrap()
        .get(0);
    assert!(!twice);
    assert_eq!(get(&mut s, ORG_A, "stripe"), None);

    let mut su = db.superuser();
    let events: Vec<(String, String, String)> = su
        .query(
            "SELECT action::text, coalesce(org_id::text, ''), details ->> 'name' FROM truxe.audit_logs
              WHERE action::text LIKE 'secret.%' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let a = |action: &str, org: &str, name: &str| {
        (action.to_string(), org.to_string(), name.to_string())
    };
    assert_eq!(
        events,
        vec![
            a("secret.written", ORG_A, "stripe"),
            a("secret.read", ORG_A, "stripe"),
            a("secret.written", ORG_A, "stripe"),
            a("secret.read", ORG_A, "stripe"),
            a("secret.written", ORG_B, "hook"),
            a("secret.read", ORG_B, "hook"),
            a("secret.deleted", ORG_A, "stripe"),
        ]
    );
    let everything = everything_as_superuser(&mut su);
    for needle in ["sk_live", "päss", &key] {
        assert!(!everything.contains(needle), "{needle} is stored somewhere");
    }
}

/// Every row of every truxe table (and the settings), as text, as a superuser sees them.
fn everything_as_superuser(c: &mut Client) -> String {
    let tables: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_class c
              WHERE c.relnamespace = 'truxe'::regnamespace AND c.relkind = 'r'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut all = String::new();
    for t in tables {
        let text: Option<String> = c
            .query_one(
                &format!("SELECT string_agg(x::text, E'\\n') FROM truxe.{t} x"),
                &[],
            )
            .unwrap()
            .get(0);
        all.push_str(&text.unwrap_or_default());
    }
    let settings: String = c
        .query_one(
            "SELECT string_agg(name || '=' || setting, E'\\n') FROM pg_settings",
            &[],
        )
        .unwrap()
        .get(0);
    all + &settings
}

/// The bytes of a base32 secret, as hex (how a bytea column would show them).
fn secret_hex(secret: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import base64, sys; s = sys.argv[1]; print(base64.b32decode(s + '=' * (-len(s) % 8)).hex())")
        .arg(secret)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_ciphertext_copied_onto_another_row_does_not_decrypt() {
    let (db, _keys, _) = keyed();
    let mut s = db.service();
    for (org, name, value) in [
        (ORG_A, "one", "first"),
        (ORG_A, "two", "second"),
        (ORG_B, "one", "other org"),
    ] {
        s.execute(
            "SELECT truxe.put_secret($1::text::uuid, $2, $3)",
            &[&org, &name, &value],
        )
        .unwrap();
    }
    let (alice_factor, alice_secret, _) = enroll(&mut s, ALICE);
    let (alice_second, _, _) = enroll(&mut s, ALICE);
    let (bob_factor, _, _) = enroll(&mut s, BOB);
    let mut su = db.superuser();
    // A's "one" copied onto A's "two" (same org, another row) and onto B's "one" (another org)
    su.batch_execute(&format!(
        "UPDATE truxe.secrets t SET key_id = f.key_id, nonce = f.nonce, ciphertext = f.ciphertext
           FROM truxe.secrets f WHERE f.org_id = '{ORG_A}' AND f.name = 'one'
            AND ((t.org_id = '{ORG_A}' AND t.name = 'two') OR (t.org_id = '{ORG_B}' AND t.name = 'one'));
         UPDATE truxe.mfa_factors t SET key_id = f.key_id, nonce = f.nonce, ciphertext = f.ciphertext
           FROM truxe.mfa_factors f WHERE f.id = '{alice_factor}' AND t.id IN ('{alice_second}', '{bob_factor}');"
    ))
    .unwrap();
    for (org, name) in [(ORG_A, "two"), (ORG_B, "one")] {
        let r = s.query_one(
            "SELECT truxe.get_secret($1::text::uuid, $2)",
            &[&org, &name],
        );
        assert_eq!(sqlstate(r), "XX001", "{org}/{name}");
    }
    let code = python_code(&alice_secret);
    for factor in [&alice_second, &bob_factor] {
        let r = s.query_one(
            "SELECT truxe.verify_totp($1::text::uuid, $2)",
            &[factor, &code],
        );
        assert_eq!(sqlstate(r), "XX001");
    }
    // a flipped bit does not decrypt either; the originals still do
    su.batch_execute(&format!(
        "UPDATE truxe.secrets SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1)
          WHERE org_id = '{ORG_B}' AND name = 'one'"
    ))
    .unwrap();
    let r = s.query_one("SELECT truxe.get_secret($1::text::uuid, 'one')", &[&ORG_B]);
    assert_eq!(sqlstate(r), "XX001");
    let one: String = s
        .query_one("SELECT truxe.get_secret($1::text::uuid, 'one')", &[&ORG_A])
        .unwrap()
        .get(0);
    assert_eq!(one, "first");
    assert_eq!(verify(&mut s, &alice_factor, &code), "verified");
}

#[test]
fn rotation_to_a_new_key_then_removing_the_old_key_keeps_everything_readable() {
    let (db, keys, k1) = keyed();
    let mut s = db.service();
    for i in 0..25 {
        let org = if i % 2 == 0 { ORG_A } else { ORG_B };
        s.execute(
            "SELECT truxe.put_secret($1::text::uuid, 'secret-' || $2::int, 'value-' || $2::int)",
            &[&org, &i],
        )
        .unwrap();
    }
    let factors: Vec<(String, String)> = (0..6)
        .map(|i| {
            let (id, secret, _) = enroll(&mut s, if i % 2 == 0 { ALICE } else { BOB });
            (id, secret)
        })
        .collect();
    // nothing to do while the last key is the only one
    let n: i64 = s
        .query_one("SELECT truxe.rotate_encryption_key()", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    let k2 = random_key();
    keys.write(&[("k1", &k1), ("k2", &k2)]);
    // new values are sealed under k2 at once; old ones still read with k1
    s.execute(
        "SELECT truxe.put_secret($1::text::uuid, 'fresh', 'new value')",
        &[&ORG_A],
    )
    .unwrap();
    let fresh_key: String = db
        .superuser()
        .query_one("SELECT key_id FROM truxe.secrets WHERE name = 'fresh'", &[])
        .unwrap()
        .get(0);
    assert_eq!(fresh_key, "k2");
    let mut total = 0;
    let mut calls = 0;
    loop {
        let n: i64 = s
            .query_one("SELECT truxe.rotate_encryption_key(7)", &[])
            .unwrap()
            .get(0);
        assert!(n <= 7);
        calls += 1;
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 25 + 6, "every old secret and seed once");
    assert_eq!(calls, 6, "five batches of at most 7, then 0");
    let stale: i64 = db
        .superuser()
        .query_one(
            "SELECT (SELECT count(*) FROM truxe.secrets WHERE key_id <> 'k2')
                  + (SELECT count(*) FROM truxe.mfa_factors WHERE key_id <> 'k2')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stale, 0);

    // the old line removed: every secret and every factor still works
    keys.write(&[("k2", &k2)]);
    let mut s = db.service();
    for i in 0..25 {
        let org = if i % 2 == 0 { ORG_A } else { ORG_B };
        let v: String = s
            .query_one(
                "SELECT truxe.get_secret($1::text::uuid, 'secret-' || $2::int)",
                &[&org, &i],
            )
            .unwrap()
            .get(0);
        assert_eq!(v, format!("value-{i}"));
    }
    for (id, secret) in &factors {
        assert_eq!(verify(&mut s, id, &python_code(secret)), "verified");
    }

    // a row still under a key the file lacks: 55000 naming the key id, not the key
    let k3 = random_key();
    keys.write(&[("k3", &k3)]);
    let e = s
        .query_one(
            "SELECT truxe.get_secret($1::text::uuid, 'secret-0')",
            &[&ORG_A],
        )
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("55000"));
    let msg = e.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("\"k2\"") && !msg.contains(&k2[..16]), "{msg}");
}

#[test]
fn a_dump_holds_no_secret_seed_code_or_key_and_restores_with_the_key_file() {
    let (db, keys, key) = keyed();
    let mut s = db.service();
    s.execute(
        "SELECT truxe.put_secret($1::text::uuid, 'github', 'ghp_topsecretvalue42')",
        &[&ORG_A],
    )
    .unwrap();
    let (factor, secret, _) = enroll(&mut s, ALICE);
    let codes: Vec<String> = s
        .query(
            "SELECT c FROM truxe.generate_recovery_codes($1::text::uuid) c",
            &[&ALICE],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut needles = vec![
        "ghp_topsecretvalue42".to_string(),
        secret.clone(),
        secret.to_lowercase(),
        secret_hex(&secret),
        key.clone(),
    ];
    for c in &codes {
        needles.push(c.clone());
        needles.push(c.replace('-', ""));
    }
    let out = server()
        .tool("pg_dump")
        .args(["--inserts", &db.name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dump.contains("truxe.secrets") && dump.contains("truxe.mfa_factors"));
    for n in &needles {
        assert!(
            !dump.to_lowercase().contains(&n.to_lowercase()),
            "the dump holds {n}"
        );
    }
    // the superuser's view of every table: ciphertext only
    let everything = everything_as_superuser(&mut db.superuser());
    for n in &needles {
        assert!(
            !everything.to_lowercase().contains(&n.to_lowercase()),
            "a table holds {n}"
        );
    }

    // restored elsewhere, the same key file opens everything again
    let restored = restore_copy(server(), &db.name);
    use_key_file(&restored, &keys);
    let mut r = server().client(&restored, crate::harness::SERVICE_LOGIN);
    let v: String = r
        .query_one(
            "SELECT truxe.get_secret($1::text::uuid, 'github')",
            &[&ORG_A],
        )
        .unwrap()
        .get(0);
    assert_eq!(v, "ghp_topsecretvalue42");
    assert_eq!(verify(&mut r, &factor, &python_code(&secret)), "verified");
    let used: bool = r
        .query_one(
            "SELECT truxe.use_recovery_code($1::text::uuid, $2)",
            &[&ALICE, &codes[0]],
        )
        .unwrap()
        .get(0);
    assert!(used);
}

#[test]
fn recovery_codes_are_single_use_normalised_and_replaced_by_a_new_set() {
    let (db, _keys, _) = keyed();
    let mut s = db.service();
    let generate = |c: &mut Client, n: Option<i32>| -> Vec<String> {
        let sql = match n {
            Some(n) => format!("SELECT c FROM truxe.generate_recovery_codes('{ALICE}', {n}) c"),
            None => format!("SELECT c FROM truxe.generate_recovery_codes('{ALICE}') c"),
        };
        c.query(&sql, &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let use_code = |c: &mut Client, user: &str, code: &str| -> bool {
        c.query_one(
            "SELECT truxe.use_recovery_code($1::text::uuid, $2)",
            &[&user, &code],
        )
        .unwrap()
        .get(0)
    };
    let first = generate(&mut s, None);
    assert_eq!(first.len(), 10);
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), 10);
    for c in &first {
        assert_eq!(c.len(), 19, "xxxx-xxxx-xxxx-xxxx: {c}");
        assert!(c.split('-').all(|g| g.len() == 4
            && g.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))));
    }
    // case, spaces and dashes do not matter; a code works once; another user's never
    let typed = first[0].to_uppercase().replace('-', " ");
    assert!(!use_code(&mut s, BOB, &first[0]));
    assert!(use_code(&mut s, ALICE, &typed));
    assert!(!use_code(&mut s, ALICE, &first[0]));
    assert!(use_code(&mut s, ALICE, &first[1].replace('-', "")));
    for garbage in ["", "x", &"a".repeat(100_000), "abcd-efgh-ijkl-mnop"] {
        assert!(!use_code(&mut s, ALICE, garbage));
    }
    let none: bool = s
        .query_one("SELECT truxe.use_recovery_code(NULL, NULL)", &[])
        .unwrap()
        .get(0);
    assert!(!none);
    // a new set replaces the old one, used or not
    let second = generate(&mut s, Some(3));
    assert_eq!(second.len(), 3);
    assert!(!use_code(&mut s, ALICE, &first[2]));
    assert!(use_code(&mut s, ALICE, &second[0]));
    let left: Option<String> = db
        .superuser()
        .query_one(
            "SELECT details ->> 'codes_left' FROM truxe.audit_logs
              WHERE action = 'mfa.recovery_code_used' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left.as_deref(), Some("2"));
    for bad in [
        format!("SELECT truxe.generate_recovery_codes('{ALICE}', 0)"),
        format!("SELECT truxe.generate_recovery_codes('{ALICE}', 21)"),
        "SELECT truxe.generate_recovery_codes(NULL)".to_string(),
    ] {
        assert_eq!(sqlstate(s.batch_execute(&bad)), "22023", "{bad}");
    }
    assert_eq!(
        sqlstate(s.batch_execute(
            "SELECT truxe.generate_recovery_codes('00000000-0000-0000-0000-000000000000')"
        )),
        "P0002"
    );
    // concurrent uses of one code: exactly one succeeds
    let code = second[1].clone();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (barrier, code) = (barrier.clone(), code.clone());
            let mut c = db.service();
            thread::spawn(move || {
                barrier.wait();
                c.query_one(
                    "SELECT truxe.use_recovery_code($1::text::uuid, $2)",
                    &[&ALICE, &code],
                )
                .unwrap()
                .get::<_, bool>(0)
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1);
}

fn create_session(c: &mut Client, user: &str) -> (String, String) {
    let r = c
        .query_one(
            "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid)",
            &[&user],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn aal_of(db: &TestDb, jti: &str) -> i16 {
    db.superuser()
        .query_one(
            "SELECT aal FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&jti],
        )
        .unwrap()
        .get(0)
}

fn elevate(c: &mut Client, jti: &str, factor: &str, code: &str) -> String {
    c.query_one(
        "SELECT truxe.elevate_session($1::text::uuid, $2::text::uuid, $3)",
        &[&jti, &factor, &code],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_second_factor_raises_the_session_to_aal_2_and_refresh_keeps_it() {
    let (db, _keys, _) = keyed();
    let mut s = db.service();
    let (factor, secret, _) = enroll(&mut s, ALICE);
    let (bob_factor, bob_secret, _) = enroll(&mut s, BOB);
    let (jti, refresh_jti) = create_session(&mut s, ALICE);
    assert_eq!(aal_of(&db, &jti), 1);
    // another user's factor: invalid, and that factor's count is untouched
    assert_eq!(
        elevate(&mut s, &jti, &bob_factor, &python_code(&bob_secret)),
        "invalid"
    );
    assert_eq!(elevate(&mut s, &jti, &bob_factor, "000000"), "invalid");
    assert_eq!(failed_attempts(&mut s, &bob_factor), 0);
    // unknown session: invalid
    assert_eq!(
        elevate(
            &mut s,
            "00000000-0000-4000-8000-000000000000",
            &factor,
            &python_code(&secret)
        ),
        "invalid"
    );
    assert_eq!(
        elevate(&mut s, &jti, &factor, &wrong_code(&secret)),
        "invalid"
    );
    assert_eq!(aal_of(&db, &jti), 1);
    let code = python_code(&secret);
    assert_eq!(elevate(&mut s, &jti, &factor, &code), "verified");
    assert_eq!(aal_of(&db, &jti), 2);
    assert_eq!(elevate(&mut s, &jti, &factor, &code), "replayed");
    // the audit row names the session's public id, never the jti
    let (target, details): (String, String) = {
        let r = db
            .superuser()
            .query_one(
                "SELECT target_id, details::text FROM truxe.audit_logs WHERE action = 'session.mfa_verified'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let id: String = db
        .superuser()
        .query_one(
            "SELECT id::text FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&jti],
        )
        .unwrap()
        .get(0);
    assert_eq!(target, id);
    assert!(
        details.contains(&factor) && !details.contains(&jti),
        "{details}"
    );
    // a refresh carries aal 2 over to the new session
    let (new_jti, _): (String, String) = {
        let r = s
            .query_one(
                "SELECT jti::text, refresh_jti::text FROM truxe.refresh_session($1::text::uuid)",
                &[&refresh_jti],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(aal_of(&db, &new_jti), 2);
    // a fresh session starts at 1; a revoked one cannot be elevated
    let (other, _) = create_session(&mut s, ALICE);
    assert_eq!(aal_of(&db, &other), 1);
    s.execute("SELECT truxe.revoke_session($1::text::uuid)", &[&other])
        .unwrap();
    leave_step_margin(5);
    let next = python_codes(&[(secret.clone(), 1)]).remove(0);
    assert_eq!(elevate(&mut s, &other, &factor, &next), "invalid");
    assert_eq!(aal_of(&db, &other), 1);
    // nor one that validate_session refuses without a revocation: here, a family past
    // truxe.session_max_lifetime (90 days by default)
    let (old, _) = create_session(&mut s, ALICE);
    db.superuser()
        .execute(
            "UPDATE truxe.sessions SET family_created_at = now() - interval '91 days'
              WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&old],
        )
        .unwrap();
    assert_eq!(elevate(&mut s, &old, &factor, &next), "invalid");
    assert_eq!(aal_of(&db, &old), 1);
    assert_eq!(failed_attempts(&mut s, &factor), 0);
}

#[test]
fn authenticated_calls_none_of_it_and_reads_only_its_own_factors_metadata() {
    let (db, _keys, _) = keyed();
    let mut s = db.service();
    let (alice_factor, _, _) = enroll(&mut s, ALICE);
    let (bob_factor, _, _) = enroll(&mut s, BOB);
    s.execute(
        "SELECT truxe.put_secret($1::text::uuid, 'k', 'v')",
        &[&ORG_A],
    )
    .unwrap();
    let calls = [
        format!("SELECT truxe.put_secret('{ORG_A}', 'k', 'v')"),
        format!("SELECT truxe.get_secret('{ORG_A}', 'k')"),
        format!("SELECT truxe.delete_secret('{ORG_A}', 'k')"),
        "SELECT truxe.rotate_encryption_key()".to_string(),
        format!("SELECT truxe.enroll_totp('{ALICE}', 'Acme')"),
        format!("SELECT truxe.verify_totp('{alice_factor}', '123456')"),
        format!("SELECT truxe.unenroll_factor('{alice_factor}')"),
        format!("SELECT truxe.generate_recovery_codes('{ALICE}')"),
        format!("SELECT truxe.use_recovery_code('{ALICE}', 'x')"),
        format!("SELECT truxe.elevate_session(gen_random_uuid(), '{alice_factor}', '123456')"),
    ];
    let mut alice = db.acting_as(ALICE);
    let mut nobody = db.nobody();
    for sql in &calls {
        assert_eq!(sqlstate(alice.batch_execute(sql)), "42501", "{sql}");
        assert_eq!(sqlstate(nobody.batch_execute(sql)), "42501", "{sql}");
    }
    // own factors' metadata only, never the sealed columns, never the vault or the codes
    let mine: Vec<String> = alice
        .query(
            "SELECT id::text FROM truxe.mfa_factors WHERE status IS NOT NULL AND failed_attempts >= 0",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(mine, vec![alice_factor.clone()]);
    for sql in [
        "SELECT ciphertext FROM truxe.mfa_factors",
        "SELECT nonce FROM truxe.mfa_factors",
        "SELECT key_id FROM truxe.mfa_factors",
        "SELECT * FROM truxe.mfa_factors",
        "SELECT * FROM truxe.secrets",
        "SELECT * FROM truxe.mfa_recovery_codes",
    ] {
        assert_eq!(sqlstate(alice.batch_execute(sql)), "42501", "{sql}");
        assert_eq!(sqlstate(nobody.batch_execute(sql)), "42501", "{sql}");
        assert_eq!(sqlstate(s.batch_execute(sql)), "42501", "service: {sql}");
    }
    assert_eq!(
        sqlstate(alice.batch_execute(&format!(
            "UPDATE truxe.mfa_factors SET failed_attempts = 0 WHERE id = '{alice_factor}'"
        ))),
        "42501"
    );
    let without_context: i64 = db
        .authenticated()
        .query_one("SELECT count(*) FROM truxe.mfa_factors", &[])
        .unwrap()
        .get(0);
    assert_eq!(without_context, 0);
    // the backend reads every factor's metadata
    let all: i64 = s
        .query_one(
            "SELECT count(*) FROM truxe.mfa_factors WHERE id IN ($1::text::uuid, $2::text::uuid)",
            &[&alice_factor, &bob_factor],
        )
        .unwrap()
        .get(0);
    assert_eq!(all, 2);
    // and unenrolls
    let gone: bool = s
        .query_one(
            "SELECT truxe.unenroll_factor($1::text::uuid)",
            &[&bob_factor],
        )
        .unwrap()
        .get(0);
    assert!(gone);
    assert_eq!(verify(&mut s, &bob_factor, "123456"), "invalid");
}

#[test]
fn hostile_input_with_a_key_configured_is_22023_or_a_status_never_xx000() {
    let (db, _keys, _) = keyed();
    let mut su = db.superuser();
    su.batch_execute(
        "INSERT INTO truxe.users (id, email, status)
           VALUES ('00000000-0000-0000-0000-0000000000d3', 'gone@x.example', 'suspended')",
    )
    .unwrap();
    let mut s = db.service();
    let (factor, _, _) = enroll(&mut s, ALICE);
    let huge = "x".repeat(10 << 20);
    let control = "a\u{1}\u{7f}\nb";
    for value in [huge.as_str(), control, "", "é:ü"] {
        for (sql, ok_states) in [
            (
                "SELECT truxe.put_secret($1::text::uuid, $2, 'v')",
                &["22023", ""][..],
            ),
            (
                "SELECT truxe.put_secret($1::text::uuid, 'n', $2)",
                &["22023", ""],
            ),
            (
                "SELECT truxe.get_secret($1::text::uuid, $2)",
                &["22023", ""],
            ),
            (
                "SELECT truxe.delete_secret($1::text::uuid, $2)",
                &["22023", ""],
            ),
            (
                "SELECT truxe.enroll_totp($1::text::uuid, $2)",
                &["22023", ""],
            ),
            (
                "SELECT truxe.enroll_totp($1::text::uuid, 'Acme', $2)",
                &["22023", ""],
            ),
            ("SELECT truxe.use_recovery_code($1::text::uuid, $2)", &[""]),
        ] {
            let target = if sql.contains("secret") { ORG_A } else { ALICE };
            let r = s.query(sql, &[&target, &value]);
            let state = match &r {
                Ok(_) => String::new(),
                Err(e) => {
                    let msg = e.as_db_error().map(|d| d.message().len()).unwrap_or(0);
                    assert!(msg < 1000, "{sql}: a message of {msg} bytes");
                    e.code().map(|c| c.code().to_string()).unwrap_or_default()
                }
            };
            assert!(
                ok_states.contains(&state.as_str()),
                "{sql} with {:.20}: {state}",
                value
            );
        }
        let status: String = s
            .query_one(
                "SELECT truxe.verify_totp($1::text::uuid, $2)",
                &[&factor, &value],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, "invalid");
    }
    // issuer with ':' (the otpauth label separator); an unknown or inactive user
    for (sql, state) in [
        (
            format!("SELECT truxe.enroll_totp('{ALICE}', 'Ac:me')"),
            "22023",
        ),
        (
            format!("SELECT truxe.enroll_totp('{ALICE}', NULL)"),
            "22023",
        ),
        (
            "SELECT truxe.enroll_totp(NULL, 'Acme')".to_string(),
            "22023",
        ),
        (
            "SELECT truxe.enroll_totp('00000000-0000-0000-0000-000000000000', 'Acme')".to_string(),
            "P0002",
        ),
        (
            "SELECT truxe.enroll_totp('00000000-0000-0000-0000-0000000000d3', 'Acme')".to_string(),
            "42501",
        ),
        (
            "SELECT truxe.rotate_encryption_key(-1)".to_string(),
            "22023",
        ),
        (
            "SELECT truxe.rotate_encryption_key(NULL)".to_string(),
            "22023",
        ),
        (
            "SELECT truxe.rotate_encryption_key(2147483647)".to_string(),
            "22023",
        ),
        (
            format!("SELECT truxe.generate_recovery_codes('{ALICE}', -2147483648)"),
            "22023",
        ),
    ] {
        assert_eq!(sqlstate(s.batch_execute(&sql)), state, "{sql}");
    }
    // a key file inside the data directory is refused
    let data_dir: String = su.query_one("SHOW data_directory", &[]).unwrap().get(0);
    let inside = format!("{data_dir}/truxe.keys");
    std::fs::write(&inside, format!("k1:{}\n", random_key())).unwrap();
    su.batch_execute(&format!(
        "ALTER DATABASE {} SET truxe.encryption_key_file = '{inside}'",
        db.name
    ))
    .unwrap();
    let e = db
        .service()
        .batch_execute(&format!("SELECT truxe.get_secret('{ORG_A}', 'n')"))
        .unwrap_err();
    let _ = std::fs::remove_file(&inside);
    assert_eq!(e.code().map(|c| c.code()), Some("55000"));
    let msg = e.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("inside the data directory"), "{msg}");
}
