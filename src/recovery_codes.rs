//! Recovery codes, the second factor of last resort: generate_recovery_codes and
//! use_recovery_code. A code is 80 random bits in 16 lowercase base32 characters, shown once
//! as `xxxx-xxxx-xxxx-xxxx`; a row of truxe.mfa_recovery_codes (sql/mfa.sql) keeps SHA-256 of
//! the user's id and the normalised code, and its one use sets `used_at` in one conditional
//! UPDATE. SECURITY DEFINER with a pinned search_path; service_account only.
use crate::audit;
use crate::crypto;
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::mfa::active_user_email;
use crate::plans::{self, BYTEA, UUID};
use data_encoding::BASE32_NOPAD;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Random bytes of a recovery code: 80 bits, 16 base32 characters.
const RECOVERY_CODE_BYTES: usize = 10;

/// The stored form of a recovery code: SHA-256 of the user's 16 id bytes and the
/// normalised code (lowercase base32, no spaces or dashes).
fn recovery_hash(user_id: Uuid, normalised: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(user_id.as_bytes());
    h.update(normalised.as_bytes());
    h.finalize().to_vec()
}

/// A submitted recovery code normalised: case, spaces and dashes ignored; None unless it
/// is 16 base32 characters.
fn normalise_recovery_code(code: &str) -> Option<String> {
    if code.len() > 256 {
        return None;
    }
    let n: String = code
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '\t'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let ok = n.len() == 16
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    ok.then_some(n)
}

/// Replaces the user's recovery codes with `n` (1-20) new ones and returns them, once:
/// 16 base32 characters (80 random bits) shown as `xxxx-xxxx-xxxx-xxxx`; only their SHA-256
/// is stored. Every earlier code stops working. Writes `mfa.recovery_codes_generated`.
/// 22023 for a NULL user or n out of range; P0002 unknown user; 42501 user not active.
/// service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.generate_recovery_codes(user_id uuid, n integer DEFAULT 10)
RETURNS SETOF text
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 10 AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn generate_recovery_codes(
    user_id: Option<Uuid>,
    n: Option<i32>,
) -> SetOfIterator<'static, String> {
    SetOfIterator::new(generate(user_id, n).unwrap_or_raise())
}

fn generate(user_id: Option<Uuid>, n: Option<i32>) -> Result<Vec<String>, TruxeError> {
    let Some(user_id) = user_id else {
        return fail(Sqlstate::InvalidParameter, "user_id must not be NULL");
    };
    let n = match n {
        Some(n) if (1..=20).contains(&n) => n,
        _ => return fail(Sqlstate::InvalidParameter, "n must be 1-20"),
    };
    let mut codes = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let raw = crypto::random_bytes::<RECOVERY_CODE_BYTES>()?;
        codes.push(BASE32_NOPAD.encode(&raw).to_ascii_lowercase());
    }
    Spi::connect_mut(|c| -> Result<(), TruxeError> {
        active_user_email(c, user_id)?;
        plans::run(
            c,
            "DELETE FROM truxe.mfa_recovery_codes WHERE user_id = $1",
            &[UUID],
            &[user_id.into()],
        )?;
        for code in &codes {
            plans::run(
                c,
                "INSERT INTO truxe.mfa_recovery_codes (user_id, code_hash) VALUES ($1, $2)",
                &[UUID, BYTEA],
                &[user_id.into(), recovery_hash(user_id, code).into()],
            )?;
        }
        Ok(())
    })?;
    audit::record(
        None,
        "mfa.recovery_codes_generated",
        "user",
        &user_id.to_string(),
        json!({ "count": n }),
        &audit::Client::default(),
    )?;
    Ok(codes
        .into_iter()
        .map(|c| format!("{}-{}-{}-{}", &c[0..4], &c[4..8], &c[8..12], &c[12..16]))
        .collect())
}

/// Uses up one of the user's recovery codes: true when `code` (case, spaces and dashes
/// ignored) is one of the current set and was not used before — then never again; false
/// otherwise (also for NULL or malformed input). Writes `mfa.recovery_code_used` with the
/// number of codes left. service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.use_recovery_code(user_id uuid, code text)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn use_recovery_code(user_id: Option<Uuid>, code: Option<String>) -> bool {
    use_code(user_id, code).unwrap_or_raise()
}

fn use_code(user_id: Option<Uuid>, code: Option<String>) -> Result<bool, TruxeError> {
    let (Some(user_id), Some(code)) = (user_id, code.as_deref().and_then(normalise_recovery_code))
    else {
        return Ok(false);
    };
    let left = plans::run_once(
        "WITH used AS (
           UPDATE truxe.mfa_recovery_codes SET used_at = now()
            WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL
           RETURNING code_hash)
         SELECT (SELECT count(*) FROM truxe.mfa_recovery_codes r
                  WHERE r.user_id = $1 AND r.used_at IS NULL) - 1
           FROM used",
        &[UUID, BYTEA],
        &[user_id.into(), recovery_hash(user_id, &code).into()],
        plans::first_value::<i64>,
    )?;
    let Some(left) = left else {
        return Ok(false);
    };
    audit::record(
        None,
        "mfa.recovery_code_used",
        "user",
        &user_id.to_string(),
        json!({ "codes_left": left }),
        &audit::Client::default(),
    )?;
    Ok(true)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn codes_are_normalised_strictly() {
        assert_eq!(
            normalise_recovery_code("ABCD-efgh 2345-6722").as_deref(),
            Some("abcdefgh23456722")
        );
        assert_eq!(normalise_recovery_code("abcd-efgh-2345-672"), None);
        assert_eq!(normalise_recovery_code("abcd-efgh-2345-6781"), None);
        assert_eq!(normalise_recovery_code(&"a".repeat(300)), None);
    }
}
