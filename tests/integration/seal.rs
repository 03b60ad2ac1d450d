//! The sealed audit log under the key file (docs/security.md, "Sealed audit log"): HMAC
//! seals, tampering and a recomputed SHA-256 chain detected under them, verification
//! without the key, the move from plain to HMAC seals, and key rotation. The plain chain's
//! own tests (and the sealer's concurrency) are in apptables.rs.
use crate::harness::{server, sqlstate, TestDb};
use crate::mfa::{random_key, use_key_file, KeyFile};

/// `n` app audit rows (service_account).
fn write_rows(db: &TestDb, n: i64) {
    db.service()
        .execute(
            "INSERT INTO truxe.audit_logs (action, details)
               SELECT 'report.exported', jsonb_build_object('n', g) FROM generate_series(1, $1::bigint) g",
            &[&n],
        )
        .unwrap();
}

fn seal_now(db: &TestDb) -> i64 {
    db.service()
        .query_one("SELECT truxe.seal_audit_log(100)", &[])
        .unwrap()
        .get(0)
}

/// A database whose key file holds one key (k1), with 250 audit rows sealed in three
/// HMAC seals; the key's hex digits.
fn keyed_and_sealed() -> (TestDb, KeyFile, String) {
    let db = server().fresh_db(true);
    let keys = KeyFile::new();
    let k1 = random_key();
    keys.write(&[("k1", &k1)]);
    use_key_file(&db.name, &keys);
    write_rows(&db, 250);
    assert_eq!(seal_now(&db), 250);
    (db, keys, k1)
}

/// (ok, seal_id, reason) of verify_audit_log over everything.
fn verify(db: &TestDb) -> (bool, Option<i64>, String) {
    let r = db
        .service()
        .query_one(
            "SELECT ok, seal_id, reason FROM truxe.verify_audit_log()",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// verify_audit_log's error: (SQLSTATE, message).
fn verify_error(db: &TestDb) -> (String, String) {
    let e = db
        .service()
        .query_one("SELECT ok FROM truxe.verify_audit_log()", &[])
        .expect_err("verify_audit_log raises");
    let db_error = e.as_db_error().expect("a server error");
    (
        db_error.code().code().to_string(),
        db_error.message().to_string(),
    )
}

fn seal_of(db: &TestDb, audit_id: i64) -> i64 {
    db.superuser()
        .query_one(
            "SELECT id FROM truxe.audit_seals WHERE $1::bigint > after_id AND $1::bigint <= to_id",
            &[&audit_id],
        )
        .unwrap()
        .get(0)
}

/// As a superuser: the guard of audit_logs off, `sql`, the guard back on.
fn tamper(db: &TestDb, sql: &str) {
    db.superuser()
        .batch_execute(&format!(
            "ALTER TABLE truxe.audit_logs DISABLE TRIGGER audit_logs_append_only;
             {sql};
             ALTER TABLE truxe.audit_logs ENABLE ALWAYS TRIGGER audit_logs_append_only;"
        ))
        .unwrap();
}

/// What an attacker with superuser rights but without the key does after changing rows:
/// recomputes every seal from `from_seal` on as the plain chain computes it (their rows'
/// count and hash, the link, SHA-256 of the message) up to `to_seal` (None: the latest),
/// keeping each seal's key id and check value, or removing them (`downgrade`: the seals
/// become plain seals).
fn recompute_chain(db: &TestDb, from_seal: i64, to_seal: Option<i64>, downgrade: bool) {
    let to_seal = to_seal.unwrap_or(i64::MAX);
    let downgrade = if downgrade {
        "s.key_id := NULL; s.key_check := NULL;"
    } else {
        ""
    };
    db.superuser()
        .batch_execute(&format!(
            "ALTER TABLE truxe.audit_seals DISABLE TRIGGER audit_seals_append_only;
             DO $$
             DECLARE s truxe.audit_seals; prev bytea; d record;
             BEGIN
               SELECT x.seal_hash INTO prev FROM truxe.audit_seals x WHERE x.id < {from_seal}
                ORDER BY x.id DESC LIMIT 1;
               prev := coalesce(prev, decode(repeat('00', 32), 'hex'));
               FOR s IN SELECT * FROM truxe.audit_seals x WHERE x.id BETWEEN {from_seal} AND {to_seal} ORDER BY x.id LOOP
                 d := truxe.audit_rows_digest(s.after_id, s.to_id);
                 s.row_count := d.row_count; s.rows_hash := d.rows_hash; s.prev_hash := prev;
                 {downgrade}
                 s.seal_hash := truxe.audit_seal_hash(s);
                 UPDATE truxe.audit_seals SET row_count = s.row_count, rows_hash = s.rows_hash,
                        prev_hash = s.prev_hash, key_id = s.key_id, key_check = s.key_check,
                        seal_hash = s.seal_hash
                  WHERE id = s.id;
                 prev := s.seal_hash;
               END LOOP;
             END $$;
             ALTER TABLE truxe.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only;"
        ))
        .unwrap();
}

#[test]
fn with_the_key_file_seals_are_hmac_seals_and_the_key_is_nowhere() {
    let (db, _keys, k1) = keyed_and_sealed();
    let mut su = db.superuser();
    let r = su
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE key_id = 'k1' AND length(key_check) = 8),
                    count(DISTINCT key_check),
                    count(*) FILTER (WHERE seal_hash = truxe.audit_seal_hash(s)),
                    string_agg(s::text, ' ')
               FROM truxe.audit_seals s",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 3, "seals of at most 100 rows");
    assert_eq!(
        r.get::<_, i64>(1),
        3,
        "every seal names key k1 and its check value"
    );
    assert_eq!(r.get::<_, i64>(2), 1, "one key, one check value");
    assert_eq!(
        r.get::<_, i64>(3),
        0,
        "no seal hash is the plain SHA-256 of its message"
    );
    let text: String = r.get(4);
    assert!(!text.contains(&k1[..16]), "the key is not in a seal");
    let (ok, seal, reason) = verify(&db);
    assert!(ok, "{reason}");
    assert_eq!(seal, None);
    assert_eq!(reason, "3 seals verified (3 HMAC, 0 plain SHA-256)");
    // the functions that touch the sealing key are not API: only the sealer and the verifier
    // (as the owner) call them
    let mut s = db.service();
    for sql in [
        "SELECT truxe.append_audit_seal(250, 250, now())",
        "SELECT truxe.audit_seal_verifies(1, 'k1', NULL, '\\x00', '\\x00')",
        "SELECT truxe.audit_seal_key_id()",
    ] {
        assert_eq!(sqlstate(s.query(sql, &[])), "42501", "{sql}");
    }
}

#[test]
fn tampering_is_reported_under_hmac_seals() {
    // a row changed by a superuser with the guard disabled
    let (db, _keys, _) = keyed_and_sealed();
    tamper(
        &db,
        "UPDATE truxe.audit_logs SET details = '{\"n\": -1}' WHERE id = 150",
    );
    let (ok, seal, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal, Some(seal_of(&db, 150)));
    assert!(reason.starts_with("rows were changed"), "{reason}");

    // a deleted row
    let (db, _keys, _) = keyed_and_sealed();
    tamper(&db, "DELETE FROM truxe.audit_logs WHERE id = 42");
    let (ok, seal, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal, Some(seal_of(&db, 42)));
    assert!(reason.starts_with("rows were deleted"), "{reason}");

    // an inserted backdated row, before and after the next seal
    let (db, _keys, _) = keyed_and_sealed();
    db.superuser()
        .batch_execute(
            "INSERT INTO truxe.audit_logs (action, created_at) VALUES ('report.exported', now() - interval '1 day')",
        )
        .unwrap();
    let (ok, _, reason) = verify(&db);
    assert!(!ok);
    assert!(
        reason.starts_with("a backdated row was written after seal"),
        "{reason}"
    );
    seal_now(&db);
    let (ok, _, reason) = verify(&db);
    assert!(!ok);
    assert!(reason.starts_with("a backdated row was sealed"), "{reason}");

    // a seal's field changed in place
    let (db, _keys, _) = keyed_and_sealed();
    db.superuser()
        .batch_execute(
            "ALTER TABLE truxe.audit_seals DISABLE TRIGGER audit_seals_append_only;
             UPDATE truxe.audit_seals SET floor_at = floor_at - interval '1 day' WHERE id = 3;
             ALTER TABLE truxe.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only;",
        )
        .unwrap();
    let (ok, seal, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal, Some(3));
    assert_eq!(
        reason,
        "seal 3 was altered: its HMAC under key k1 does not match its fields"
    );
}

/// The point of the HMAC: a superuser without the key who changes a row and recomputes the
/// chain as the plain chain computes it is caught, however the seals are rewritten. Without
/// the key file the same forgery verifies.
#[test]
fn a_recomputed_sha256_chain_is_reported_when_the_key_file_is_set() {
    // keeping the key ids: the HMAC does not match
    let (db, _keys, _) = keyed_and_sealed();
    tamper(
        &db,
        "UPDATE truxe.audit_logs SET details = '{\"n\": -1}' WHERE id = 150",
    );
    recompute_chain(&db, seal_of(&db, 150), None, false);
    let (ok, seal, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal, Some(seal_of(&db, 150)));
    assert!(
        reason.starts_with(&format!(
            "seal {} was altered: its HMAC under key k1",
            seal_of(&db, 150)
        )),
        "{reason}"
    );

    // turning the seals from the changed one on into plain seals: a downgrade
    let (db, _keys, _) = keyed_and_sealed();
    tamper(
        &db,
        "UPDATE truxe.audit_logs SET details = '{\"n\": -1}' WHERE id = 150",
    );
    let changed = seal_of(&db, 150);
    recompute_chain(&db, changed, None, true);
    let (ok, seal, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal, Some(changed));
    assert!(
        reason.starts_with(&format!(
            "the chain was downgraded: seal {changed} is a plain SHA-256 seal after seal {}",
            changed - 1
        )),
        "{reason}"
    );

    // turning the whole chain into plain seals: consistent in itself, but the key file is
    // set and the latest seal is not an HMAC seal
    let (db, keys, _) = keyed_and_sealed();
    tamper(
        &db,
        "UPDATE truxe.audit_logs SET details = '{\"n\": -1}' WHERE id = 150",
    );
    recompute_chain(&db, 1, None, true);
    let (ok, seal, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal, Some(3));
    assert!(
        reason.starts_with(
            "the latest seal 3 is a plain SHA-256 seal although the key file is set (key k1)"
        ),
        "{reason}"
    );
    // … the same forgery with no key file set verifies: a plain chain proves nothing
    // against a superuser (hence the HMAC, and the anchor outside the database)
    server()
        .client(&db.name, "postgres")
        .batch_execute(&format!(
            "ALTER DATABASE {} RESET truxe.encryption_key_file",
            db.name
        ))
        .unwrap();
    let (ok, _, reason) = verify(&db);
    assert!(ok, "{reason}");
    drop(keys);
}

#[test]
fn verification_without_the_key_says_so_and_names_only_the_key_id() {
    let (db, keys, k1) = keyed_and_sealed();
    let reset = |db: &TestDb| {
        server()
            .client(&db.name, "postgres")
            .batch_execute(&format!(
                "ALTER DATABASE {} RESET truxe.encryption_key_file",
                db.name
            ))
            .unwrap()
    };
    // no key file set
    reset(&db);
    let (code, msg) = verify_error(&db);
    assert_eq!(code, "55000");
    assert!(
        msg.starts_with(
            "cannot verify seal 1, an HMAC seal under key \"k1\": no key file is configured"
        ),
        "{msg}"
    );
    // … and no plain seal follows an HMAC seal: the sealer refuses
    write_rows(&db, 5);
    let e = db
        .service()
        .query_one("SELECT truxe.seal_audit_log()", &[])
        .expect_err("no plain seal after an HMAC seal");
    assert_eq!(e.code().unwrap().code(), "55000");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .starts_with("the audit seals are HMAC seals (seal 3 is under key \"k1\")"),
        "{e}"
    );
    // the key file without k1
    use_key_file(&db.name, &keys);
    keys.write(&[("k2", &random_key())]);
    let (code, msg) = verify_error(&db);
    assert_eq!(code, "55000");
    assert!(msg.contains("the key file does not hold that key"), "{msg}");
    // another key under the id k1
    let other = random_key();
    keys.write(&[("k1", &other)]);
    let (code, msg) = verify_error(&db);
    assert_eq!(code, "55000");
    assert!(
        msg.contains("the key file holds another key under that id"),
        "{msg}"
    );
    assert!(!msg.contains(&k1[..16]) && !msg.contains(&other[..16]));
    // the right key again
    keys.write(&[("k1", &k1)]);
    let (ok, _, reason) = verify(&db);
    assert!(ok, "{reason}");
}

#[test]
fn the_chain_moves_from_plain_to_hmac_seals_and_across_a_key_rotation() {
    let db = server().fresh_db(true);
    write_rows(&db, 150);
    assert_eq!(seal_now(&db), 150);
    let (ok, _, reason) = verify(&db);
    assert!(ok, "{reason}");
    assert_eq!(reason, "2 seals verified (0 HMAC, 2 plain SHA-256)");
    // the key file is set: until the next seal the latest seal is plain, and verification says so
    let keys = KeyFile::new();
    let k1 = random_key();
    keys.write(&[("k1", &k1)]);
    use_key_file(&db.name, &keys);
    let (ok, seal_id, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal_id, Some(2));
    assert!(
        reason.contains("run truxe.seal_audit_log() and verify again"),
        "{reason}"
    );
    write_rows(&db, 50);
    assert_eq!(seal_now(&db), 50);
    let (ok, _, reason) = verify(&db);
    assert!(ok, "{reason}");
    assert_eq!(reason, "3 seals verified (1 HMAC, 2 plain SHA-256)");
    // rotation: k2 becomes the current key; new seals are under k2, old ones verify with k1
    keys.write(&[("k1", &k1), ("k2", &random_key())]);
    write_rows(&db, 10);
    assert_eq!(seal_now(&db), 10);
    let key_ids: Vec<Option<String>> = db
        .superuser()
        .query("SELECT key_id FROM truxe.audit_seals ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        key_ids,
        [None, None, Some("k1".into()), Some("k2".into())],
        "plain, then k1, then k2"
    );
    let (ok, _, reason) = verify(&db);
    assert!(ok, "{reason}");
    assert_eq!(reason, "4 seals verified (2 HMAC, 2 plain SHA-256)");
    // the plain seals before the first HMAC seal are covered by it: recomputing them breaks
    // its link, and relinking it breaks its HMAC
    tamper(
        &db,
        "UPDATE truxe.audit_logs SET details = '{\"n\": -1}' WHERE id = 10",
    );
    recompute_chain(&db, 1, Some(2), false);
    let (ok, seal_id, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal_id, Some(3));
    assert!(
        reason.starts_with("the chain is broken: seal 3"),
        "{reason}"
    );
    recompute_chain(&db, 1, Some(3), false);
    let (ok, seal_id, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal_id, Some(3));
    assert!(
        reason.starts_with("seal 3 was altered: its HMAC under key k1"),
        "{reason}"
    );
}
