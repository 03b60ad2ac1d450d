//! The sealed audit log under the key file (docs/security.md, "Sealed audit log"): HMAC
//! seals, tampering and a recomputed SHA-256 chain detected under them, verification
//! without the key, the move from plain to HMAC seals, and key rotation; the plain chain's
//! own tests and the sealer beside concurrent writers.
use crate::harness::{server, sqlstate, TestDb, SERVICE_LOGIN};
use crate::mfa::{random_key, use_key_file, KeyFile};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// An end user (authenticated, acting as this id): not the trusted backend.
const ALICE: &str = "00000000-0000-0000-0000-00000000a11c";

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

// --- the plain SHA-256 chain, and the sealer beside concurrent writers ------------------

/// A database with `n` app audit rows (service_account), sealed in seals of 100 rows.
fn sealed(n: i64) -> TestDb {
    let db = server().fresh_db(true);
    write_rows(&db, n);
    assert_eq!(seal_now(&db), n);
    db
}

#[test]
fn an_untouched_log_verifies_and_seals_are_append_only() {
    let db = sealed(250);
    let (ok, seal, reason) = verify(&db);
    assert!(ok, "{reason}");
    assert_eq!(seal, None);
    let mut s = db.service();
    // another session's date and time settings change nothing
    s.batch_execute(
        "SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'; SET extra_float_digits = -10",
    )
    .unwrap();
    let ok: bool = s
        .query_one("SELECT ok FROM truxe.verify_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(ok, "verified under other session settings");
    let n: i64 = s
        .query_one("SELECT count(*) FROM truxe.audit_seals", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "seals of at most 100 rows");
    // a second call with nothing new appends an empty seal (the floor moves on)
    let again: i64 = s
        .query_one("SELECT truxe.seal_audit_log()", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, 0);
    assert!(verify(&db).0);
    // a period: only the seals covering it
    let r = s
        .query_one(
            "SELECT ok, seals_checked FROM truxe.verify_audit_log(now() - interval '1 hour', now() + interval '1 hour')",
            &[],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(
        sqlstate(s.execute("DELETE FROM truxe.audit_seals", &[])),
        "42501"
    );
    let mut su = db.superuser();
    for sql in [
        "UPDATE truxe.audit_seals SET row_count = 0",
        "DELETE FROM truxe.audit_seals",
        "TRUNCATE truxe.audit_seals",
    ] {
        assert_eq!(sqlstate(su.batch_execute(sql)), "55000", "{sql}");
    }
    assert_eq!(
        sqlstate(
            s.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT truxe.seal_audit_log()")
        ),
        "55000"
    );
    assert_eq!(
        sqlstate(
            db.acting_as(ALICE)
                .query("SELECT truxe.seal_audit_log()", &[])
        ),
        "42501"
    );
}

#[test]
fn a_superuser_update_with_the_guard_disabled_is_reported() {
    let db = sealed(250);
    tamper(
        &db,
        "UPDATE truxe.audit_logs SET details = '{\"n\": -1}' WHERE id = 150",
    );
    let (ok, seal, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal, Some(seal_of(&db, 150)));
    assert!(reason.starts_with("rows were changed"), "{reason}");
}

#[test]
fn a_deleted_row_is_reported() {
    let db = sealed(250);
    tamper(&db, "DELETE FROM truxe.audit_logs WHERE id = 42");
    let (ok, seal, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal, Some(seal_of(&db, 42)));
    assert!(reason.starts_with("rows were deleted"), "{reason}");
}

#[test]
fn an_inserted_backdated_row_is_reported() {
    // with a new id (after the seals), before and after the next seal
    let db = sealed(250);
    let mut su = db.superuser();
    su.batch_execute(
        "INSERT INTO truxe.audit_logs (action, created_at) VALUES ('report.exported', now() - interval '1 day')",
    )
    .unwrap();
    let (ok, _, reason) = verify(&db);
    assert!(!ok);
    assert!(
        reason.starts_with("a backdated row was written after seal"),
        "{reason}"
    );
    db.service()
        .batch_execute("SELECT truxe.seal_audit_log()")
        .unwrap();
    let (ok, _, reason) = verify(&db);
    assert!(!ok);
    assert!(reason.starts_with("a backdated row was sealed"), "{reason}");

    // with an id inside a sealed range (a gap left by a rolled-back insert)
    let db = server().fresh_db(true);
    let mut s = db.service();
    s.batch_execute(
        "INSERT INTO truxe.audit_logs (action) VALUES ('report.exported');
         BEGIN; INSERT INTO truxe.audit_logs (action) VALUES ('report.exported'); ROLLBACK;
         INSERT INTO truxe.audit_logs (action) VALUES ('report.exported');
         SELECT truxe.seal_audit_log();",
    )
    .unwrap();
    assert!(verify(&db).0);
    db.superuser()
        .batch_execute(
            "INSERT INTO truxe.audit_logs (id, action, created_at) VALUES (2, 'report.exported', now() - interval '1 minute')",
        )
        .unwrap();
    let (ok, seal, reason) = verify(&db);
    assert!(!ok);
    assert_eq!(seal, Some(seal_of(&db, 2)));
    assert!(reason.starts_with("rows were inserted"), "{reason}");
}

/// A transaction that drew an audit id before the seal read its horizon, and commits later:
/// the sealer waits for it (its row is sealed, not left out of a sealed range), while other
/// writers go on without waiting for the sealer.
#[test]
fn the_sealer_waits_for_writers_in_flight_and_blocks_none() {
    let db = server().fresh_db(true);
    let mut early = db.service();
    early
        .batch_execute("BEGIN; INSERT INTO truxe.audit_logs (action) VALUES ('report.early')")
        .unwrap();
    let name = db.name.clone();
    let sealer = thread::spawn(move || {
        let mut c = server().client(&name, SERVICE_LOGIN);
        c.query_one("SELECT truxe.seal_audit_log()", &[])
            .unwrap()
            .get::<_, i64>(0)
    });
    thread::sleep(Duration::from_millis(500));
    assert!(
        !sealer.is_finished(),
        "the sealer waits for the open writer"
    );
    // a new writer is not blocked by the waiting sealer
    let mut other = db.service();
    other
        .batch_execute("INSERT INTO truxe.audit_logs (action) VALUES ('report.late')")
        .unwrap();
    early.batch_execute("COMMIT").unwrap();
    let sealed = sealer.join().unwrap();
    assert_eq!(
        sealed, 1,
        "the early row; the late one drew its id after the horizon"
    );
    db.service()
        .batch_execute("SELECT truxe.seal_audit_log()")
        .unwrap();
    let (ok, _, reason) = verify(&db);
    assert!(ok, "{reason}");
}

/// Four writers (some holding their transaction open a while) and a sealer in a loop: every
/// row ends up in exactly one seal and the log verifies.
#[test]
fn concurrent_audit_writes_while_sealing_lose_nothing() {
    let db = server().fresh_db(true);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let name = db.name.clone();
            thread::spawn(move || {
                let mut c = server().client(&name, SERVICE_LOGIN);
                for i in 0..150 {
                    let mut tx = c.transaction().unwrap();
                    tx.execute(
                        "INSERT INTO truxe.audit_logs (action, details) VALUES ('report.exported', jsonb_build_object('w', $1::int, 'i', $2::int))",
                        &[&w, &i],
                    )
                    .unwrap();
                    if i % 10 == 0 {
                        thread::sleep(Duration::from_millis(20));
                    }
                    if i % 7 == 3 {
                        tx.rollback().unwrap();
                    } else {
                        tx.commit().unwrap();
                    }
                }
            })
        })
        .collect();
    let sealer = {
        let name = db.name.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let mut c = server().client(&name, SERVICE_LOGIN);
            let mut calls = 0;
            while !stop.load(Ordering::SeqCst) {
                c.batch_execute("SELECT truxe.seal_audit_log(50)").unwrap();
                calls += 1;
            }
            calls
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    assert!(sealer.join().unwrap() > 0);
    let mut s = db.service();
    s.batch_execute("SELECT truxe.seal_audit_log()").unwrap();
    let r = s
        .query_one(
            "SELECT (SELECT count(*) FROM truxe.audit_logs),
                    (SELECT sum(row_count)::bigint FROM truxe.audit_seals)",
            &[],
        )
        .unwrap();
    let (rows, sealed): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!(rows, 4 * (150 - 21), "committed rows");
    assert_eq!(sealed, rows, "every row sealed once");
    let (ok, _, reason) = verify(&db);
    assert!(ok, "{reason}");
}
