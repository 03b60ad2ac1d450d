//! Secrets vault: put_secret, get_secret, delete_secret, and rotate_encryption_key (which
//! re-encrypts the vault and the TOTP seeds of src/mfa.rs under the current key).
//!
//! Values are sealed by src/crypto.rs, bound to (truxe.secrets, id, org_id). Audit rows
//! (`secret.written`, `secret.read`, `secret.deleted`) carry the secret's name, never its
//! value. Every function here is SECURITY DEFINER (nobody else reads truxe.secrets) with a
//! pinned search_path, and executable by service_account only (sql/grants.sql).
use crate::audit;
use crate::crypto::{self, Binding, KeyRing};
use crate::error::{fail, quote_input, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::jsonb::JsonbArg;
use crate::plans::{self, BYTEA, INT4, JSONB, TEXT, UUID};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{AnyElement, Uuid};
use serde_json::json;

pgrx::extension_sql_file!("../sql/vault.sql", name = "vault", requires = ["schema"]);

const TABLE: &str = "secrets";
/// The largest value the vault keeps (credentials, not documents).
const MAX_VALUE_BYTES: usize = 64 * 1024;

fn binding(id: Uuid, org_id: Uuid) -> Binding {
    Binding {
        table: TABLE,
        row_id: id,
        owner_id: org_id,
    }
}

/// A secret's name: 1-200 characters, no control characters (22023).
fn check_name(name: Option<&str>) -> Result<&str, TruxeError> {
    match name {
        Some(n) if (1..=200).contains(&n.chars().count()) && !n.chars().any(char::is_control) => {
            Ok(n)
        }
        Some(n) => fail(
            Sqlstate::InvalidParameter,
            format!(
                "invalid secret name {}: 1-200 characters, no control characters",
                quote_input(n)
            ),
        ),
        None => fail(Sqlstate::InvalidParameter, "name must not be NULL"),
    }
}

fn check_org(org_id: Option<Uuid>) -> Result<Uuid, TruxeError> {
    org_id.ok_or_else(|| TruxeError::new(Sqlstate::InvalidParameter, "org_id must not be NULL"))
}

/// Stores `value` encrypted as the secret `name` of organization `org_id`, replacing the
/// value and metadata of an existing secret of that name (its id stays). Returns the
/// secret's id. Writes `secret.written` (the name, never the value). 22023 for a NULL
/// argument, a bad name (1-200 characters, no control characters), a value over 64 KiB or
/// metadata that is not a JSON object; P0002 for an unknown organization; 55000 when no
/// encryption key is configured. service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.put_secret(org_id uuid, name text, value text, metadata jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn put_secret(
    org_id: Option<Uuid>,
    name: Option<String>,
    value: Option<String>,
    metadata: Option<AnyElement>,
) -> Uuid {
    put(org_id, name, value, metadata).unwrap_or_raise()
}

fn put(
    org_id: Option<Uuid>,
    name: Option<String>,
    value: Option<String>,
    metadata: Option<AnyElement>,
) -> Result<Uuid, TruxeError> {
    let org_id = check_org(org_id)?;
    let name = check_name(name.as_deref())?.to_string();
    let value =
        zeroize::Zeroizing::new(value.ok_or_else(|| {
            TruxeError::new(Sqlstate::InvalidParameter, "value must not be NULL")
        })?);
    if value.len() > MAX_VALUE_BYTES {
        return fail(
            Sqlstate::InvalidParameter,
            "value is too long: the vault keeps at most 64 KiB per secret",
        );
    }
    let metadata = JsonbArg::new(metadata);
    let keys = crypto::key_ring()?;
    let id = Spi::connect_mut(|c| -> Result<Uuid, TruxeError> {
        metadata.require_object("metadata")?;
        if plans::run(
            c,
            "SELECT 1 FROM truxe.organizations WHERE id = $1",
            &[UUID],
            &[org_id.into()],
        )?
        .is_empty()
        {
            return fail(Sqlstate::NotFound, format!("unknown organization {org_id}"));
        }
        // the row id is part of the associated data, so it must be known before sealing:
        // replace under the existing row's lock, or insert a new id (a concurrent insert of
        // the same name wins the race: then replace that row)
        for _ in 0..3 {
            let existing = plans::run(
                c,
                "SELECT id FROM truxe.secrets WHERE org_id = $1 AND name = $2 FOR UPDATE",
                &[UUID, TEXT],
                &[org_id.into(), name.clone().into()],
            )?;
            if let Some(id) = plans::first_value::<Uuid>(existing)? {
                let sealed = keys.seal(&binding(id, org_id), value.as_bytes())?;
                plans::run(
                    c,
                    "UPDATE truxe.secrets SET key_id = $3, nonce = $4, ciphertext = $5,
                            metadata = coalesce($6, '{}'), updated_at = now()
                      WHERE org_id = $1 AND id = $2",
                    &[UUID, UUID, TEXT, BYTEA, BYTEA, JSONB],
                    &[
                        org_id.into(),
                        id.into(),
                        sealed.key_id.into(),
                        sealed.nonce.into(),
                        sealed.ciphertext.into(),
                        metadata.param(),
                    ],
                )?;
                return Ok(id);
            }
            let id = crypto::new_uuid()?;
            let sealed = keys.seal(&binding(id, org_id), value.as_bytes())?;
            let inserted = plans::run(
                c,
                "INSERT INTO truxe.secrets (id, org_id, name, key_id, nonce, ciphertext, metadata)
                 VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, '{}'))
                 ON CONFLICT ON CONSTRAINT secrets_org_id_name_key DO NOTHING RETURNING id",
                &[UUID, UUID, TEXT, TEXT, BYTEA, BYTEA, JSONB],
                &[
                    id.into(),
                    org_id.into(),
                    name.clone().into(),
                    sealed.key_id.into(),
                    sealed.nonce.into(),
                    sealed.ciphertext.into(),
                    metadata.param(),
                ],
            )?;
            if plans::first_value::<Uuid>(inserted)?.is_some() {
                return Ok(id);
            }
        }
        fail(
            Sqlstate::SerializationFailure,
            "the secret was changed concurrently; retry",
        )
    })?;
    audit::record(
        Some(org_id),
        "secret.written",
        "secret",
        &id.to_string(),
        json!({ "name": name }),
        &audit::Client::default(),
    )?;
    Ok(id)
}

/// The value of the secret `name` of organization `org_id`, decrypted; NULL when there is
/// no such secret. Writes `secret.read` (the name) when it returns a value. 22023 for a
/// NULL org or a bad name; 55000 when no key is configured or the key file lacks the
/// secret's key; XX001 when the stored value does not decrypt (altered or copied from
/// another row). service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.get_secret(org_id uuid, name text)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn get_secret(org_id: Option<Uuid>, name: Option<String>) -> Option<String> {
    get(org_id, name).unwrap_or_raise()
}

fn get(org_id: Option<Uuid>, name: Option<String>) -> Result<Option<String>, TruxeError> {
    let org_id = check_org(org_id)?;
    let name = check_name(name.as_deref())?;
    let keys = crypto::key_ring()?;
    let found = Spi::connect_mut(|c| -> Result<_, TruxeError> {
        let rows = plans::run(
            c,
            "SELECT id, key_id, nonce, ciphertext FROM truxe.secrets WHERE org_id = $1 AND name = $2",
            &[UUID, TEXT],
            &[org_id.into(), name.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first();
        let (Some(id), Some(key_id), Some(nonce), Some(ct)) = (
            row.get::<Uuid>(1)?,
            row.get::<String>(2)?,
            row.get::<Vec<u8>>(3)?,
            row.get::<Vec<u8>>(4)?,
        ) else {
            return fail(Sqlstate::Internal, "secret row with NULL columns");
        };
        let plain = keys.open(&binding(id, org_id), &key_id, &nonce, &ct)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| {
            TruxeError::new(Sqlstate::DataCorrupted, "a decrypted secret is not UTF-8")
        })?;
        Ok(Some((id, text)))
    })?;
    let Some((id, value)) = found else {
        return Ok(None);
    };
    audit::record(
        Some(org_id),
        "secret.read",
        "secret",
        &id.to_string(),
        json!({ "name": name }),
        &audit::Client::default(),
    )?;
    Ok(Some(value))
}

/// Deletes the secret `name` of organization `org_id`; true when there was one. Writes
/// `secret.deleted` (the name). 22023 for a NULL org or a bad name. Needs no key.
/// service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.delete_secret(org_id uuid, name text)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn delete_secret(org_id: Option<Uuid>, name: Option<String>) -> bool {
    delete(org_id, name).unwrap_or_raise()
}

fn delete(org_id: Option<Uuid>, name: Option<String>) -> Result<bool, TruxeError> {
    let org_id = check_org(org_id)?;
    let name = check_name(name.as_deref())?;
    let deleted = plans::run_once(
        "DELETE FROM truxe.secrets WHERE org_id = $1 AND name = $2 RETURNING id",
        &[UUID, TEXT],
        &[org_id.into(), name.into()],
        plans::first_value::<Uuid>,
    )?;
    let Some(id) = deleted else {
        return Ok(false);
    };
    audit::record(
        Some(org_id),
        "secret.deleted",
        "secret",
        &id.to_string(),
        json!({ "name": name }),
        &audit::Client::default(),
    )?;
    Ok(true)
}

/// Re-encrypts up to `batch_size` (1-100000) values still sealed under an older key —
/// vault secrets first, then TOTP seeds — under the current key (the key file's last
/// line); returns how many it re-encrypted. Call it until it returns 0; then no row needs
/// the older keys and their lines can be removed from the key file. Each call is one
/// transaction's worth of row locks. 22023 for a batch size out of range; 55000 when no key
/// is configured or a row's key is missing from the file; XX001 for a value that does not
/// decrypt. service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.rotate_encryption_key(batch_size integer DEFAULT 1000)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn rotate_encryption_key(batch_size: Option<i32>) -> i64 {
    rotate(batch_size).unwrap_or_raise()
}

/// One table the rotation walks: its name, the owner column, and its two statements; and
/// for a table that Citus distributes (secrets, after truxe.distribute()), the select
/// without FOR UPDATE (Citus refuses row locks across shards) and an update that replaces
/// the value only if it is still the one read (a put_secret in between wins).
struct Sealable {
    table: &'static str,
    select: &'static str,
    update: &'static str,
    distributed: Option<(&'static str, &'static str)>,
}

const SEALABLE: [Sealable; 2] = [
    Sealable {
        table: "secrets",
        select: "SELECT id, org_id, key_id, nonce, ciphertext FROM truxe.secrets
                  WHERE key_id <> $1 LIMIT $2 FOR UPDATE",
        update: "UPDATE truxe.secrets SET key_id = $3, nonce = $4, ciphertext = $5
                  WHERE id = $1 AND org_id = $2",
        distributed: Some((
            "SELECT id, org_id, key_id, nonce, ciphertext FROM truxe.secrets
              WHERE key_id <> $1 LIMIT $2",
            "UPDATE truxe.secrets SET key_id = $3, nonce = $4, ciphertext = $5
              WHERE org_id = $2 AND id = $1 AND key_id = $6 AND nonce = $7 RETURNING id",
        )),
    },
    Sealable {
        table: "mfa_factors",
        select: "SELECT id, user_id, key_id, nonce, ciphertext FROM truxe.mfa_factors
                  WHERE key_id <> $1 LIMIT $2 FOR UPDATE",
        update: "UPDATE truxe.mfa_factors SET key_id = $3, nonce = $4, ciphertext = $5
                  WHERE id = $1 AND user_id = $2",
        // on Citus (distributed by user_id, docs/scaling.md) as the secrets' form
        distributed: Some((
            "SELECT id, user_id, key_id, nonce, ciphertext FROM truxe.mfa_factors
              WHERE key_id <> $1 LIMIT $2",
            "UPDATE truxe.mfa_factors SET key_id = $3, nonce = $4, ciphertext = $5
              WHERE user_id = $2 AND id = $1 AND key_id = $6 AND nonce = $7 RETURNING id",
        )),
    },
];

fn rotate(batch_size: Option<i32>) -> Result<i64, TruxeError> {
    let batch = match batch_size {
        Some(n) if (1..=100_000).contains(&n) => n,
        _ => return fail(Sqlstate::InvalidParameter, "batch_size must be 1-100000"),
    };
    let keys = crypto::key_ring()?;
    Spi::connect_mut(|c| {
        let mut done: i64 = 0;
        for t in &SEALABLE {
            let left = batch as i64 - done;
            if left <= 0 {
                break;
            }
            done += reseal(c, &keys, t, left as i32)?;
        }
        Ok(done)
    })
}

/// Re-seals up to `limit` rows of one table under the current key; returns how many.
fn reseal(
    c: &mut SpiClient<'_>,
    keys: &KeyRing,
    t: &Sealable,
    limit: i32,
) -> Result<i64, TruxeError> {
    let current = keys.current().0.to_string();
    let distributed = t
        .distributed
        .filter(|_| crate::claim::audit_logs_distributed());
    let select = distributed.map_or(t.select, |(s, _)| s);
    let rows = plans::run(c, select, &[TEXT, INT4], &[current.into(), limit.into()])?;
    let mut stale = Vec::with_capacity(rows.len());
    for row in rows {
        match (
            row.get::<Uuid>(1)?,
            row.get::<Uuid>(2)?,
            row.get::<String>(3)?,
            row.get::<Vec<u8>>(4)?,
            row.get::<Vec<u8>>(5)?,
        ) {
            (Some(id), Some(owner), Some(key_id), Some(nonce), Some(ct)) => {
                stale.push((id, owner, key_id, nonce, ct))
            }
            _ => return fail(Sqlstate::Internal, "encrypted row with NULL columns"),
        }
    }
    let mut n = 0;
    for (id, owner, key_id, nonce, ct) in stale {
        let b = Binding {
            table: t.table,
            row_id: id,
            owner_id: owner,
        };
        let plain = keys.open(&b, &key_id, &nonce, &ct)?;
        let sealed = keys.seal(&b, &plain)?;
        if let Some((_, update)) = distributed {
            let replaced = plans::run(
                c,
                update,
                &[UUID, UUID, TEXT, BYTEA, BYTEA, TEXT, BYTEA],
                &[
                    id.into(),
                    owner.into(),
                    sealed.key_id.into(),
                    sealed.nonce.into(),
                    sealed.ciphertext.into(),
                    key_id.into(),
                    nonce.into(),
                ],
            )?;
            n += i64::from(!replaced.is_empty());
            continue;
        }
        plans::run(
            c,
            t.update,
            &[UUID, UUID, TEXT, BYTEA, BYTEA],
            &[
                id.into(),
                owner.into(),
                sealed.key_id.into(),
                sealed.nonce.into(),
                sealed.ciphertext.into(),
            ],
        )?;
        n += 1;
    }
    Ok(n)
}
