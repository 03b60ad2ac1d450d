//! Sealed audit log (docs/security.md, "Sealed audit log"): seal_audit_log and
//! verify_audit_log are PL/pgSQL (sql/seal.sql); what SQL cannot or must not do is here:
//! wait for the audit writers in flight without blocking new ones, and everything that
//! touches the audit sealing key (src/crypto.rs) — writing a seal and checking one. The key
//! never reaches SQL: no function takes a message and returns its MAC.
use crate::crypto;
use crate::error::{fail, quote_input, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::plans::{self, BYTEA, INT8, TEXT, TIMESTAMPTZ};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use sha2::{Digest, Sha256};

pgrx::extension_sql_file!(
    "../sql/seal.sql",
    name = "seal",
    requires = ["schema", wait_for_audit_writers]
);

/// Waits until every transaction that holds a write lock (ROW EXCLUSIVE or stronger) on
/// truxe.audit_logs right now has ended, and returns. It takes no lock on the table: writers
/// that start meanwhile neither wait for it nor are waited for (CREATE INDEX CONCURRENTLY's
/// wait). The calling transaction's own lock is not waited for. `lock_timeout` bounds the
/// wait (55P03). Used by seal_audit_log; service_account only.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn wait_for_audit_writers() {
    let relid = Spi::get_one::<pg_sys::Oid>(
        "SELECT 'truxe.audit_logs'::pg_catalog.regclass::pg_catalog.oid",
    )
    .ok()
    .flatten()
    .unwrap_or(pg_sys::InvalidOid);
    // SAFETY: a relation lock tag of this database (SET_LOCKTAG_RELATION); WaitForLockers
    // only waits on the virtual transaction ids of the conflicting lockers.
    unsafe {
        let tag = pg_sys::LOCKTAG {
            locktag_field1: pg_sys::MyDatabaseId.to_u32(),
            locktag_field2: relid.to_u32(),
            locktag_field3: 0,
            locktag_field4: 0,
            locktag_type: pg_sys::LockTagType::LOCKTAG_RELATION as u8,
            locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
        };
        pg_sys::WaitForLockers(tag, pg_sys::ShareLock as pg_sys::LOCKMODE, false);
    }
}

/// Bytes of every hash in a seal.
const HASH_LEN: usize = 32;

/// Appends the seal of the audit rows `after_id < id <= to_id` to truxe.audit_seals and
/// returns how many rows it covers. The seal follows the latest one (its `to_id` must be
/// `after_id`: 55000 otherwise), records `floor_at`, and is an HMAC-SHA-256 seal under the
/// audit sealing key of the key file's current key when `truxe.encryption_key_file` is set,
/// else a plain SHA-256 seal. It never writes a plain seal after an HMAC seal (55000: the
/// chain needs the key file from then on). The MAC covers only rows this function read and
/// the chain's real tip: it is not a MAC oracle. 22023 for a NULL argument or `to_id <
/// after_id`; 55000 for an unusable key file. Called by seal_audit_log (as the owner);
/// nobody else executes it.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.append_audit_seal(after_id bigint, to_id bigint, floor_at timestamptz)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn append_audit_seal(
    after_id: Option<i64>,
    to_id: Option<i64>,
    floor_at: Option<TimestampWithTimeZone>,
) -> i64 {
    append(after_id, to_id, floor_at).unwrap_or_raise()
}

fn append(
    after_id: Option<i64>,
    to_id: Option<i64>,
    floor_at: Option<TimestampWithTimeZone>,
) -> Result<i64, TruxeError> {
    let (Some(after_id), Some(to_id), Some(floor_at)) = (after_id, to_id, floor_at) else {
        return fail(
            Sqlstate::InvalidParameter,
            "append_audit_seal needs every argument",
        );
    };
    if after_id < 0 || to_id < after_id {
        return fail(
            Sqlstate::InvalidParameter,
            "append_audit_seal needs 0 <= after_id <= to_id",
        );
    }
    let ring = if crypto::key_file_configured() {
        Some(crypto::key_ring()?)
    } else {
        None
    };
    Spi::connect_mut(|c| {
        plans::run(
            c,
            "LOCK TABLE truxe.audit_seals IN SHARE ROW EXCLUSIVE MODE",
            &[],
            &[],
        )?;
        let last = plans::run(
            c,
            "SELECT id, to_id, seal_hash, key_id FROM truxe.audit_seals ORDER BY id DESC LIMIT 1",
            &[],
            &[],
        )?;
        let (last_id, last_to, prev_hash, last_key) = if last.is_empty() {
            (None, 0, vec![0u8; HASH_LEN], None)
        } else {
            let row = last.first();
            let (Some(id), Some(to), Some(hash)) = (
                row.get::<i64>(1)?,
                row.get::<i64>(2)?,
                row.get::<Vec<u8>>(3)?,
            ) else {
                return fail(Sqlstate::Internal, "a seal with NULL columns");
            };
            (Some(id), to, hash, row.get::<String>(4)?)
        };
        if last_to != after_id {
            return fail(
                Sqlstate::NotInPrerequisiteState,
                format!(
                    "a new seal must start where the latest one ends (audit id {last_to}), not at {after_id}"
                ),
            );
        }
        let key = match (&ring, last_key) {
            (Some(ring), _) => Some(ring.current_seal_key()),
            (None, None) => None,
            (None, Some(key_id)) => {
                return fail(
                    Sqlstate::NotInPrerequisiteState,
                    format!(
                        "the audit seals are HMAC seals (seal {} is under key {}): sealing goes on \
                         only with the key file, never as a plain SHA-256 chain — a superuser must \
                         set truxe.encryption_key_file again (docs/security.md, Sealed audit log)",
                        last_id.unwrap_or_default(),
                        quote_input(&key_id)
                    ),
                )
            }
        };
        let key_id = key.map(|k| k.id().to_string());
        let key_check = key.map(|k| k.check_value().to_vec());
        let d = plans::run(
            c,
            "SELECT d.row_count, d.rows_hash, d.min_created_at, d.max_created_at,
                    truxe.audit_seal_message(ROW(NULL, $1, $2, d.row_count, d.rows_hash,
                      d.min_created_at, d.max_created_at, $3, $4, NULL, $5, NULL, $6)::truxe.audit_seals)
               FROM truxe.audit_rows_digest($1, $2) d",
            &[INT8, INT8, TIMESTAMPTZ, BYTEA, TEXT, BYTEA],
            &[
                after_id.into(),
                to_id.into(),
                floor_at.into(),
                prev_hash.clone().into(),
                key_id.clone().into(),
                key_check.clone().into(),
            ],
        )?;
        let row = d.first();
        let (Some(row_count), Some(rows_hash), Some(message)) = (
            row.get::<i64>(1)?,
            row.get::<Vec<u8>>(2)?,
            row.get::<Vec<u8>>(5)?,
        ) else {
            return fail(Sqlstate::Internal, "the audit rows' digest is NULL");
        };
        let (min_at, max_at) = (
            row.get::<TimestampWithTimeZone>(3)?,
            row.get::<TimestampWithTimeZone>(4)?,
        );
        let seal_hash: Vec<u8> = match key {
            Some(k) => k.mac(&message).to_vec(),
            None => Sha256::digest(&message).to_vec(),
        };
        plans::run(
            c,
            "INSERT INTO truxe.audit_seals (after_id, to_id, row_count, rows_hash, min_created_at,
                                            max_created_at, floor_at, prev_hash, seal_hash, key_id,
                                            key_check)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                INT8,
                INT8,
                INT8,
                BYTEA,
                TIMESTAMPTZ,
                TIMESTAMPTZ,
                TIMESTAMPTZ,
                BYTEA,
                BYTEA,
                TEXT,
                BYTEA,
            ],
            &[
                after_id.into(),
                to_id.into(),
                row_count.into(),
                rows_hash.into(),
                min_at.into(),
                max_at.into(),
                floor_at.into(),
                prev_hash.into(),
                seal_hash.into(),
                key_id.into(),
                key_check.into(),
            ],
        )?;
        Ok(row_count)
    })
}

/// Whether a seal's stored hash matches `message` (truxe.audit_seal_message of the seal):
/// for a plain seal (`key_id` NULL), SHA-256 of the message; for an HMAC seal, its MAC
/// under the audit sealing key of line `key_id` of the key file (compared in constant
/// time). False for a malformed seal. Raises 55000 when an HMAC seal cannot be checked:
/// no key file is set or usable, the file does not hold `key_id`, or it holds another key
/// under that id (the seal's key check value differs) — never a key, only its id.
/// Called by verify_audit_log (as the owner); nobody else executes it.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.audit_seal_verifies(seal_id bigint, key_id text, key_check bytea,
                                          message bytea, seal_hash bytea)
RETURNS boolean
LANGUAGE c STABLE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn audit_seal_verifies(
    seal_id: Option<i64>,
    key_id: Option<String>,
    key_check: Option<Vec<u8>>,
    message: Option<Vec<u8>>,
    seal_hash: Option<Vec<u8>>,
) -> bool {
    verifies(
        seal_id.unwrap_or_default(),
        key_id,
        key_check,
        message,
        seal_hash,
    )
    .unwrap_or_raise()
}

fn verifies(
    seal_id: i64,
    key_id: Option<String>,
    key_check: Option<Vec<u8>>,
    message: Option<Vec<u8>>,
    seal_hash: Option<Vec<u8>>,
) -> Result<bool, TruxeError> {
    let (Some(message), Some(seal_hash)) = (message, seal_hash) else {
        return Ok(false);
    };
    let Some(key_id) = key_id else {
        return Ok(key_check.is_none() && Sha256::digest(&message)[..] == seal_hash[..]);
    };
    let cannot = |why: String| {
        TruxeError::new(
            Sqlstate::NotInPrerequisiteState,
            format!(
                "cannot verify seal {seal_id}, an HMAC seal under key {}: {why} (docs/security.md, \
                 Sealed audit log)",
                quote_input(&key_id)
            ),
        )
    };
    if !crypto::key_file_configured() {
        return Err(cannot(
            "no key file is configured — a superuser must set truxe.encryption_key_file to the \
             file that holds that key"
                .to_string(),
        ));
    }
    let ring = crypto::key_ring().map_err(|e| cannot(e.message))?;
    let Some(key) = ring.seal_key(&key_id) else {
        return Err(cannot(
            "the key file does not hold that key — put its line back".to_string(),
        ));
    };
    if key_check.as_deref() != Some(&key.check_value()[..]) {
        return Err(cannot(
            "the key file holds another key under that id (the key check value differs) — put \
             the original line back"
                .to_string(),
        ));
    }
    Ok(key.verifies(&message, &seal_hash))
}

/// The id of the key seal_audit_log seals under now: the key file's current key, or NULL
/// when no key file is set. 55000 for an unusable key file. Used by verify_audit_log (as
/// the owner); nobody else executes it.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.audit_seal_key_id()
RETURNS text
LANGUAGE c STABLE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn audit_seal_key_id() -> Option<String> {
    current_key_id().unwrap_or_raise()
}

fn current_key_id() -> Result<Option<String>, TruxeError> {
    if !crypto::key_file_configured() {
        return Ok(None);
    }
    Ok(Some(
        crypto::key_ring()?.current_seal_key().id().to_string(),
    ))
}
