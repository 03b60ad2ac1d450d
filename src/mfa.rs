//! Second factors: TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps — what every
//! authenticator app supports) and a session's assurance level (`elevate_session`).
//! Recovery codes are in src/recovery_codes.rs; both tables are declared in sql/mfa.sql.
//!
//! A TOTP seed is 20 random bytes, shown once (base32 and an `otpauth://` URI) and stored
//! sealed by src/crypto.rs, bound to (truxe.mfa_factors, factor id, user id). A code is
//! accepted for the current step ±1, compared in constant time, and at most once per step
//! (`last_used_step`: a second use of an accepted step is `replayed`; the accepting UPDATE
//! is conditional on the step, so of concurrent submissions exactly one is `verified`).
//! Five consecutive wrong codes lock the factor for 15 minutes; the count is written by a
//! function that returns normally, so it persists when the caller commits.
//!
//! Every function here is SECURITY DEFINER (the tables are the extension owner's) with a
//! pinned search_path, and executable by service_account only (sql/grants.sql).
use crate::audit;
use crate::crypto::{self, Binding};
use crate::error::{fail, quote_input, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::plans::{self, BYTEA, INT4, INT8, TEXT, TIMESTAMPTZ, UUID};
use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use serde_json::json;
use sha1::Sha1;

pgrx::extension_sql_file!(
    "../sql/mfa.sql",
    name = "mfa",
    requires = ["schema", "context"]
);

const TABLE: &str = "mfa_factors";
/// Seconds per TOTP step.
const STEP_SECONDS: u64 = 30;
/// Bytes of a TOTP seed (160 bits, RFC 4226's recommendation for HMAC-SHA-1).
const SEED_LEN: usize = 20;
/// Wrong codes in a row that lock a factor (for 15 minutes).
const MAX_FAILURES: i32 = 5;

type HmacSha1 = Hmac<Sha1>;

/// The 6-digit TOTP code of `seed` for time step `step` (RFC 6238 with RFC 4226's dynamic
/// truncation), as the number it spells.
pub fn totp_code(seed: &[u8], step: u64) -> u32 {
    // HMAC takes a key of any length: new_from_slice cannot fail
    let Ok(mut mac) = <HmacSha1 as Mac>::new_from_slice(seed) else {
        return u32::MAX;
    };
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    bin % 1_000_000
}

/// The current TOTP step (Unix time / 30) by the server's clock.
fn current_step() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / STEP_SECONDS)
        .unwrap_or(0)
}

/// A submitted code as 6 ASCII digits (spaces ignored), or None.
fn normalise_code(code: &str) -> Option<[u8; 6]> {
    if code.len() > 64 {
        return None;
    }
    let mut out = [0u8; 6];
    let mut n = 0;
    for b in code.bytes().filter(|b| *b != b' ') {
        if !b.is_ascii_digit() || n == 6 {
            return None;
        }
        out[n] = b;
        n += 1;
    }
    (n == 6).then_some(out)
}

/// The step among `step - 1`, `step`, `step + 1` whose code equals `code`: every candidate
/// is computed and compared in constant time, whichever matches.
fn matching_step(seed: &[u8], code: &[u8; 6], step: u64) -> Option<u64> {
    let mut found = None;
    for s in [step.saturating_sub(1), step, step + 1] {
        let expected = format!("{:06}", totp_code(seed, s));
        if crate::security::constant_time_eq(expected.as_bytes(), &code[..]) {
            found = Some(s);
        }
    }
    found
}

fn binding(factor_id: Uuid, user_id: Uuid) -> Binding {
    Binding {
        table: TABLE,
        row_id: factor_id,
        owner_id: user_id,
    }
}

/// Percent-encodes `s` for an otpauth URI (everything but RFC 3986's unreserved bytes).
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A label for a person to read: 1-100 characters, no control characters; `what` names it.
fn check_label<'a>(
    value: Option<&'a str>,
    what: &str,
    forbid_colon: bool,
) -> Result<&'a str, TruxeError> {
    match value {
        Some(v)
            if (1..=100).contains(&v.chars().count())
                && !v.chars().any(char::is_control)
                && !(forbid_colon && v.contains(':')) =>
        {
            Ok(v)
        }
        Some(v) => fail(
            Sqlstate::InvalidParameter,
            format!(
                "invalid {what} {}: 1-100 characters, no control characters{}",
                quote_input(v),
                if forbid_colon { " and no ':'" } else { "" }
            ),
        ),
        None => fail(
            Sqlstate::InvalidParameter,
            format!("{what} must not be NULL"),
        ),
    }
}

/// The e-mail of an active user; P0002 when unknown, 42501 when not active.
pub(crate) fn active_user_email(
    c: &mut SpiClient<'_>,
    user_id: Uuid,
) -> Result<String, TruxeError> {
    let rows = plans::run(
        c,
        "SELECT email::text, status::text FROM truxe.users WHERE id = $1",
        &[UUID],
        &[user_id.into()],
    )?;
    if rows.is_empty() {
        return fail(Sqlstate::NotFound, format!("unknown user {user_id}"));
    }
    let (email, status) = rows.first().get_two::<String, String>()?;
    crate::context::require_active(user_id, status)?;
    Ok(email.unwrap_or_default())
}

/// Enrolls a TOTP factor (status `unverified` until its first accepted code) for an active
/// user: 20 random bytes, returned once as base32 (`secret`) and as an `otpauth://` URI for
/// a QR code (label `issuer:e-mail`), stored encrypted. Writes `mfa.enrolled`. 22023 for a
/// NULL user, an issuer or friendly_name that is not 1-100 characters without control
/// characters (and, for the issuer, without ':'); P0002 unknown user; 42501 user not
/// active; 55000 no encryption key configured. service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.enroll_totp(user_id uuid, issuer text, friendly_name text DEFAULT 'authenticator')
RETURNS TABLE(factor_id uuid, secret text, otpauth_uri text)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn enroll_totp(
    user_id: Option<Uuid>,
    issuer: Option<String>,
    friendly_name: Option<String>,
) -> TableIterator<
    'static,
    (
        name!(factor_id, Uuid),
        name!(secret, String),
        name!(otpauth_uri, String),
    ),
> {
    TableIterator::once(enroll(user_id, issuer, friendly_name).unwrap_or_raise())
}

fn enroll(
    user_id: Option<Uuid>,
    issuer: Option<String>,
    friendly_name: Option<String>,
) -> Result<(Uuid, String, String), TruxeError> {
    let Some(user_id) = user_id else {
        return fail(Sqlstate::InvalidParameter, "user_id must not be NULL");
    };
    let issuer = check_label(issuer.as_deref(), "issuer", true)?.to_string();
    let friendly_name = check_label(friendly_name.as_deref(), "friendly_name", false)?.to_string();
    let keys = crypto::key_ring()?;
    let seed = zeroize::Zeroizing::new(crypto::random_bytes::<SEED_LEN>()?);
    let factor_id = crypto::new_uuid()?;
    let sealed = keys.seal(&binding(factor_id, user_id), &seed[..])?;
    let email = Spi::connect_mut(|c| -> Result<String, TruxeError> {
        let email = active_user_email(c, user_id)?;
        plans::run(
            c,
            "INSERT INTO truxe.mfa_factors (id, user_id, kind, friendly_name, key_id, nonce, ciphertext)
             VALUES ($1, $2, 'totp', $3, $4, $5, $6)",
            &[UUID, UUID, TEXT, TEXT, BYTEA, BYTEA],
            &[
                factor_id.into(),
                user_id.into(),
                friendly_name.clone().into(),
                sealed.key_id.into(),
                sealed.nonce.into(),
                sealed.ciphertext.into(),
            ],
        )?;
        if crate::claim::audit_logs_distributed() {
            // the factor's user by its id, for user_on_citus
            plans::run(
                c,
                "INSERT INTO truxe.mfa_factor_users (id, user_id) VALUES ($1, $2)",
                &[UUID, UUID],
                &[factor_id.into(), user_id.into()],
            )?;
        }
        Ok(email)
    })?;
    audit::record(
        None,
        "mfa.enrolled",
        "mfa_factor",
        &factor_id.to_string(),
        json!({ "user_id": user_id.to_string(), "kind": "totp", "friendly_name": friendly_name }),
        &audit::Client::default(),
    )?;
    let secret = BASE32_NOPAD.encode(&seed[..]);
    let uri = format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        uri_encode(&issuer),
        uri_encode(&email),
        uri_encode(&issuer)
    );
    Ok((factor_id, secret, uri))
}

/// Checks a TOTP code for a factor: `verified`, `invalid` (also for an unknown factor or a
/// malformed code), `replayed` or `locked`, with the factor's user when it exists.
fn check(
    c: &mut SpiClient<'_>,
    factor_id: Uuid,
    code: Option<&str>,
) -> Result<(&'static str, Option<Uuid>), TruxeError> {
    macro_rules! factor {
        () => {
            "SELECT user_id, key_id, nonce, ciphertext, last_used_step,
                    coalesce(locked_until > now(), false)
               FROM truxe.mfa_factors"
        };
    }
    let rows = match user_on_citus(c, factor_id)? {
        None => plans::run(
            c,
            concat!(factor!(), " WHERE id = $1"),
            &[UUID],
            &[factor_id.into()],
        )?,
        Some(None) => return Ok(("invalid", None)),
        Some(Some(user)) => plans::run(
            c,
            concat!(factor!(), " WHERE user_id = $2 AND id = $1"),
            &[UUID, UUID],
            &[factor_id.into(), user.into()],
        )?,
    };
    if rows.is_empty() {
        return Ok(("invalid", None));
    }
    let row = rows.first();
    let (Some(user_id), Some(key_id), Some(nonce), Some(ct)) = (
        row.get::<Uuid>(1)?,
        row.get::<String>(2)?,
        row.get::<Vec<u8>>(3)?,
        row.get::<Vec<u8>>(4)?,
    ) else {
        return fail(Sqlstate::Internal, "factor row with NULL columns");
    };
    let last_used = row.get::<i64>(5)?;
    if row.get::<bool>(6)? == Some(true) {
        return Ok(("locked", Some(user_id)));
    }
    let keys = crypto::key_ring()?;
    let seed = keys.open(&binding(factor_id, user_id), &key_id, &nonce, &ct)?;
    let step = current_step();
    let matched = code
        .and_then(normalise_code)
        .and_then(|code| matching_step(&seed, &code, step));
    drop(seed);
    let Some(matched) = matched.map(|s| s as i64) else {
        return failed(c, factor_id, user_id);
    };
    if last_used.is_some_and(|l| l >= matched) {
        return Ok(("replayed", Some(user_id)));
    }
    // conditional on the step: of concurrent submissions of one code, one updates the row
    // and the others (re-checking the updated row) find the step used
    let accepted = plans::run(
        c,
        "UPDATE truxe.mfa_factors
            SET last_used_step = $2, failed_attempts = 0, locked_until = NULL,
                status = 'verified', verified_at = coalesce(verified_at, $4)
          WHERE user_id = $3 AND id = $1 AND (last_used_step IS NULL OR last_used_step < $2)
            AND (locked_until IS NULL OR locked_until <= now())
         RETURNING 1",
        &[UUID, INT8, UUID, TIMESTAMPTZ],
        &[
            factor_id.into(),
            matched.into(),
            user_id.into(),
            transaction_start()?.into(),
        ],
    )?;
    if !accepted.is_empty() {
        return Ok(("verified", Some(user_id)));
    }
    let locked = plans::run(
        c,
        "SELECT 1 FROM truxe.mfa_factors WHERE user_id = $2 AND id = $1 AND locked_until > now()",
        &[UUID, UUID],
        &[factor_id.into(), user_id.into()],
    )?;
    Ok((
        if locked.is_empty() {
            "replayed"
        } else {
            "locked"
        },
        Some(user_id),
    ))
}

/// On Citus, where `mfa_factors` is distributed by `user_id` and a factor id does not give
/// its shard: the user of factor `factor_id`, read in `truxe.mfa_factor_users` on the
/// coordinator, so that the factor is then read or written in its one shard
/// (docs/scaling.md, "mfa on Citus"); `Some(None)` for an unknown factor. `None` on a
/// single node.
fn user_on_citus(
    c: &mut SpiClient<'_>,
    factor_id: Uuid,
) -> Result<Option<Option<Uuid>>, TruxeError> {
    if !crate::claim::audit_logs_distributed() {
        return Ok(None);
    }
    Ok(Some(plans::first_value::<Uuid>(plans::run(
        c,
        "SELECT user_id FROM truxe.mfa_factor_users WHERE id = $1",
        &[UUID],
        &[factor_id.into()],
    )?)?))
}

/// The transaction's start, what now() returns, as a parameter for the factor's writes:
/// Citus refuses a function that is not IMMUTABLE inside CASE or COALESCE in an UPDATE of a
/// distributed table (docs/scaling.md, "mfa on Citus"); the value is the same.
fn transaction_start() -> Result<pgrx::datum::TimestampWithTimeZone, TruxeError> {
    // SAFETY: reads the current transaction's start time.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    pgrx::datum::TimestampWithTimeZone::try_from(now)
        .map_err(|_| TruxeError::new(Sqlstate::Internal, "transaction start out of range"))
}

/// now() + 15 minutes, the end of a lock, as a parameter (timestamptz + interval is not
/// IMMUTABLE either: [`transaction_start`]).
fn lock_end() -> Result<pgrx::datum::TimestampWithTimeZone, TruxeError> {
    // SAFETY: reads the current transaction's start time.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    pgrx::datum::TimestampWithTimeZone::try_from(now + LOCK_MICROS)
        .map_err(|_| TruxeError::new(Sqlstate::Internal, "lock end out of range"))
}

/// How long 5 wrong codes in a row lock a factor: 15 minutes.
const LOCK_MICROS: i64 = 15 * 60 * 1_000_000;

/// Counts a wrong code: the fifth in a row locks the factor for 15 minutes (`mfa.locked`).
/// After a lock has expired the count starts again at 1.
fn failed(
    c: &mut SpiClient<'_>,
    factor_id: Uuid,
    user_id: Uuid,
) -> Result<(&'static str, Option<Uuid>), TruxeError> {
    let rows = plans::run(
        c,
        "UPDATE truxe.mfa_factors
            SET failed_attempts = CASE WHEN failed_attempts >= $2 THEN 1 ELSE failed_attempts + 1 END,
                locked_until = CASE WHEN failed_attempts = $2 - 1 THEN $4
                                    ELSE locked_until END
          WHERE user_id = $3 AND id = $1 AND (locked_until IS NULL OR locked_until <= now())
         RETURNING failed_attempts",
        &[UUID, INT4, UUID, TIMESTAMPTZ],
        &[
            factor_id.into(),
            MAX_FAILURES.into(),
            user_id.into(),
            lock_end()?.into(),
        ],
    )?;
    if rows.is_empty() {
        // locked by a concurrent failure meanwhile
        return Ok(("locked", Some(user_id)));
    }
    if rows.first().get_one::<i32>()? == Some(MAX_FAILURES) {
        audit::record(
            None,
            "mfa.locked",
            "mfa_factor",
            &factor_id.to_string(),
            json!({ "user_id": user_id.to_string(), "failed_attempts": MAX_FAILURES }),
            &audit::Client::default(),
        )?;
    }
    Ok(("invalid", Some(user_id)))
}

/// Checks a TOTP code: `verified` (the current step ±1, not accepted before; the first
/// success verifies an unverified factor), `invalid` (wrong or malformed code, unknown
/// factor), `replayed` (a step already accepted) or `locked` (5 wrong codes in a row lock
/// the factor for 15 minutes). A wrong code is counted even though the function returns
/// normally: the count persists when the caller commits. 55000 when no encryption key is
/// configured or the key file lacks the factor's key; XX001 when the stored seed does not
/// decrypt. service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.verify_totp(factor_id uuid, code text)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn verify_totp(factor_id: Option<Uuid>, code: Option<String>) -> String {
    verify(factor_id, code).unwrap_or_raise()
}

fn verify(factor_id: Option<Uuid>, code: Option<String>) -> Result<String, TruxeError> {
    let Some(factor_id) = factor_id else {
        return Ok("invalid".into());
    };
    let status = Spi::connect_mut(|c| check(c, factor_id, code.as_deref()))?.0;
    Ok(status.to_string())
}

/// Removes a factor; true when it existed. Writes `mfa.unenrolled`. service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.unenroll_factor(factor_id uuid)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn unenroll_factor(factor_id: Option<Uuid>) -> bool {
    unenroll(factor_id).unwrap_or_raise()
}

fn unenroll(factor_id: Option<Uuid>) -> Result<bool, TruxeError> {
    let Some(factor_id) = factor_id else {
        return Ok(false);
    };
    let user = Spi::connect_mut(|c| -> Result<Option<Uuid>, TruxeError> {
        let deleted = match user_on_citus(c, factor_id)? {
            None => plans::run(
                c,
                "DELETE FROM truxe.mfa_factors WHERE id = $1 RETURNING user_id",
                &[UUID],
                &[factor_id.into()],
            )?,
            Some(None) => return Ok(None),
            Some(Some(user)) => {
                plans::run(
                    c,
                    "DELETE FROM truxe.mfa_factor_users WHERE id = $1",
                    &[UUID],
                    &[factor_id.into()],
                )?;
                plans::run(
                    c,
                    "DELETE FROM truxe.mfa_factors WHERE user_id = $2 AND id = $1 RETURNING user_id",
                    &[UUID, UUID],
                    &[factor_id.into(), user.into()],
                )?
            }
        };
        Ok(plans::first_value::<Uuid>(deleted)?)
    })?;
    let Some(user) = user else {
        return Ok(false);
    };
    audit::record(
        None,
        "mfa.unenrolled",
        "mfa_factor",
        &factor_id.to_string(),
        json!({ "user_id": user.to_string() }),
        &audit::Client::default(),
    )?;
    Ok(true)
}

/// Raises a session to assurance level 2 with a TOTP code: returns verify_totp's status
/// for the factor; on `verified` the session's `aal` becomes 2 and `session.mfa_verified`
/// is written (with the session's public id and the factor id, never the jti). The session
/// must be one validate_session accepts (live, its user active, still allowed in its org,
/// within the session policies; the call is a use of it) and the factor its user's;
/// otherwise `invalid`, and the factor's failure count is not touched. 55000/XX001 as
/// verify_totp. service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.elevate_session(jti uuid, factor_id uuid, code text)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn elevate_session(jti: Option<Uuid>, factor_id: Option<Uuid>, code: Option<String>) -> String {
    elevate(jti, factor_id, code).unwrap_or_raise()
}

fn elevate(
    jti: Option<Uuid>,
    factor_id: Option<Uuid>,
    code: Option<String>,
) -> Result<String, TruxeError> {
    let (Some(jti), Some(factor_id)) = (jti, factor_id) else {
        return Ok("invalid".into());
    };
    let Some(live) = crate::session::validate(jti)? else {
        return Ok("invalid".into());
    };
    // on Citus (sessions distributed by jti_hash, docs/scaling.md) the factor is checked on
    // the coordinator and the session locked and raised in its shard, as the owner
    let citus = crate::claim::distributed_audit_owner();
    let hash = crate::session::bearer_hash(&jti);
    let outcome = Spi::connect_mut(|c| -> Result<_, TruxeError> {
        // locked, and not revoked since validate read it (a revocation that commits while
        // this waits for the lock is seen here)
        let session = match citus {
            None => plans::run(
                c,
                "SELECT s.id, s.org_id FROM truxe.sessions s
                   JOIN truxe.mfa_factors f ON f.user_id = s.user_id AND f.id = $2
                  WHERE s.id = $1 AND s.revoked_at IS NULL
                  FOR NO KEY UPDATE OF s",
                &[UUID, UUID],
                &[live.id.into(), factor_id.into()],
            )?,
            Some(owner) => {
                let factor = plans::run(
                    c,
                    "SELECT 1 FROM truxe.mfa_factors f WHERE f.user_id = $1 AND f.id = $2",
                    &[UUID, UUID],
                    &[live.user.into(), factor_id.into()],
                )?;
                if factor.is_empty() {
                    return Ok(("invalid", None));
                }
                let _as_owner = crate::apptables::ActingAs::switch_to(owner);
                plans::run(
                    c,
                    "SELECT s.id, s.org_id FROM truxe.sessions s
                      WHERE s.jti_hash = $2 AND s.id = $1 AND s.revoked_at IS NULL
                      FOR NO KEY UPDATE",
                    &[UUID, plans::BYTEA],
                    &[live.id.into(), hash.clone().into()],
                )?
            }
        };
        if session.is_empty() {
            return Ok(("invalid", None));
        }
        let (Some(session_id), org_id) = session.first().get_two::<Uuid, Uuid>()? else {
            return fail(Sqlstate::Internal, "session row without id");
        };
        let (status, _) = check(c, factor_id, code.as_deref())?;
        if status == "verified" {
            if let Some(owner) = citus {
                let _as_owner = crate::apptables::ActingAs::switch_to(owner);
                plans::run(
                    c,
                    "UPDATE truxe.sessions SET aal = 2 WHERE jti_hash = $2 AND id = $1",
                    &[UUID, plans::BYTEA],
                    &[session_id.into(), hash.clone().into()],
                )?;
            } else {
                plans::run(
                    c,
                    "UPDATE truxe.sessions SET aal = 2 WHERE id = $1",
                    &[UUID],
                    &[session_id.into()],
                )?;
            }
            return Ok((status, Some((session_id, org_id))));
        }
        Ok((status, None))
    })?;
    if let (status, Some((session_id, org_id))) = outcome {
        audit::record(
            org_id,
            "session.mfa_verified",
            "session",
            &session_id.to_string(),
            json!({ "factor_id": factor_id.to_string(), "aal": 2 }),
            &audit::Client::default(),
        )?;
        return Ok(status.into());
    }
    Ok(outcome.0.into())
}

/// RFC 6238 appendix B: the SHA-1 seed and its (time, 8-digit code) test vectors.
#[cfg(any(test, feature = "pg_test"))]
const RFC_6238_SEED: &[u8] = b"12345678901234567890";
#[cfg(any(test, feature = "pg_test"))]
const RFC_6238_SHA1: [(u64, u32); 6] = [
    (59, 94287082),
    (1111111109, 7081804),
    (1111111111, 14050471),
    (1234567890, 89005924),
    (2000000000, 69279037),
    (20000000000, 65353130),
];

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn rfc_6238_test_vectors_outside_the_backend() {
        for (time, code8) in RFC_6238_SHA1 {
            assert_eq!(
                totp_code(RFC_6238_SEED, time / 30),
                code8 % 1_000_000,
                "t={time}"
            );
        }
    }

    #[test]
    fn codes_are_normalised_strictly() {
        assert_eq!(normalise_code("123456"), Some(*b"123456"));
        assert_eq!(normalise_code("123 456"), Some(*b"123456"));
        for bad in ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", &"1".repeat(100)] {
            assert_eq!(normalise_code(bad), None, "{bad}");
        }
    }

    /// TOTP against an independent implementation (Python 3's standard hmac module) for
    /// random seeds at random times.
    #[test]
    fn totp_agrees_with_python_at_random_times() {
        let mut args = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..200 {
            let seed = crate::crypto::random_bytes::<SEED_LEN>().unwrap();
            let step = u64::from_be_bytes(crate::crypto::random_bytes::<8>().unwrap()) % (1 << 36);
            args.push(seed.iter().map(|b| format!("{b:02x}")).collect::<String>());
            args.push(step.to_string());
            expected.push(format!("{:06}", totp_code(&seed, step)));
        }
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import hashlib, hmac, struct, sys\n\
                 a = sys.argv[1:]\n\
                 for k, t in zip(a[0::2], a[1::2]):\n\
                 \x20   m = hmac.new(bytes.fromhex(k), struct.pack('>Q', int(t)), hashlib.sha1).digest()\n\
                 \x20   o = m[19] & 15\n\
                 \x20   print('%06d' % ((struct.unpack('>I', m[o:o + 4])[0] & 0x7fffffff) % 1000000))",
            )
            .args(&args)
            .output()
            .expect("python3");
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(got, expected, "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn uri_encoding() {
        assert_eq!(uri_encode("Acme Inc."), "Acme%20Inc.");
        assert_eq!(uri_encode("a+b@x.io"), "a%2Bb%40x.io");
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// RFC 6238 appendix B, SHA-1 (seed "12345678901234567890"): the published 8-digit
    /// codes, truncated to their last 6 digits (the same HOTP value mod 10^6).
    #[pg_test]
    fn totp_matches_the_rfc_6238_test_vectors() {
        let seed = super::RFC_6238_SEED;
        for (time, code8) in super::RFC_6238_SHA1 {
            assert_eq!(
                super::totp_code(seed, time / 30),
                code8 % 1_000_000,
                "t={time}"
            );
        }
        // and each is accepted one step early or late, not two
        let code = format!("{:06}", super::totp_code(seed, 1000));
        let code: [u8; 6] = code.as_bytes().try_into().unwrap();
        assert_eq!(super::matching_step(seed, &code, 999), Some(1000));
        assert_eq!(super::matching_step(seed, &code, 1001), Some(1000));
        assert_eq!(super::matching_step(seed, &code, 998), None);
        assert_eq!(super::matching_step(seed, &code, 1002), None);
    }

    #[pg_test]
    fn no_key_file_is_55000() {
        Spi::run("INSERT INTO truxe.users (email, status) VALUES ('k@example.com', 'active')")
            .unwrap();
        let e = crate::error::error_of(
            "SELECT truxe.enroll_totp((SELECT id FROM truxe.users), 'Acme')",
        )
        .expect("no key file");
        assert_eq!(
            e.0,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        );
        assert!(e.1.contains("truxe.encryption_key_file"), "{}", e.1);
    }
}
