//! Magic links (docs/reference.md, "Magic links"): issue_magic_link, verify_magic_link, inspect_magic_link.
//!
//! A token is `<challenge id: 32 lowercase hex>.<secret: 32 CSPRNG bytes, unpadded
//! base64url>` (76 characters). Only the SHA-256 of the secret's bytes is stored; the token
//! itself is never stored, logged or put in an error message. Parsing never panics and
//! never raises: anything malformed is `invalid`. Only a caller holding the right secret
//! learns more than `invalid` (or `locked`): a wrong secret counts an attempt, and that
//! increment commits with the caller's transaction because the function returns normally.
use crate::audit;
use crate::error::{
    fail, quote_input, raise_too_many_requests, Limited, Sqlstate, TruxeError, UnwrapOrRaise,
};
use crate::plans::{self, INET, INT4, INTERVAL, TEXT, UUID};
use crate::security::{constant_time_eq, sha256_hex, to_hex};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{Inet, Uuid};
use rand::TryRngCore;
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

const SECRET_LEN: usize = 32;
const TOKEN_LEN: usize = 32 + 1 + 43;
/// Wrong secrets after which a link is `locked`: the bound of magic_link_challenges'
/// `max_attempts` CHECK (sql/schema.sql) and of metrics()' locked count (sql/metrics.sql);
/// tests/integration/auth.rs
/// (`five_failed_verifications_in_separate_transactions_lock_the_challenge`) proves the three
/// agree.
pub(crate) const MAX_ATTEMPTS: i32 = 5;
/// More than this many links for one e-mail within 15 minutes: TX429.
const LINKS_PER_WINDOW: i64 = 5;
const MIN_TTL_MICROS: i128 = 60 * 1_000_000;
const MAX_TTL_MICROS: i128 = 24 * 3600 * 1_000_000;

/// The challenge id and secret of a well-formed token, or None.
pub fn parse_token(token: &str) -> Option<(Uuid, [u8; SECRET_LEN])> {
    let bytes = token.as_bytes();
    if bytes.len() != TOKEN_LEN || bytes[32] != b'.' {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, pair) in bytes[..32].chunks_exact(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        id[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    let mut secret = [0u8; SECRET_LEN];
    match URL_SAFE_NO_PAD.decode_slice(&bytes[33..], &mut secret) {
        Ok(SECRET_LEN) => Some((Uuid::from_bytes(id), secret)),
        _ => None,
    }
}

/// A fresh secret of 32 CSPRNG bytes (for magic links and e-mail invitations).
pub(crate) fn new_secret() -> Result<[u8; SECRET_LEN], TruxeError> {
    let mut secret = [0u8; SECRET_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|_| TruxeError::new(Sqlstate::Internal, "the OS random source failed"))?;
    Ok(secret)
}

/// The token for the row `id` and its `secret`: what `parse_token` reads back. Magic links
/// and e-mail invitations (src/invitation.rs) share this format.
pub(crate) fn format_token(id: &Uuid, secret: &[u8; SECRET_LEN]) -> String {
    format!(
        "{}.{}",
        to_hex(id.as_bytes()),
        URL_SAFE_NO_PAD.encode(secret)
    )
}

/// Whether `secret` is the one whose SHA-256 hex is `stored_hash`, in constant time.
pub(crate) fn secret_matches(secret: &[u8; SECRET_LEN], stored_hash: &str) -> bool {
    constant_time_eq(sha256_hex(secret).as_bytes(), stored_hash.as_bytes())
}

/// The e-mail rule of the `valid_email` CHECK of truxe.users and truxe.magic_link_challenges
/// (sql/schema.sql, the source), `^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$`, plus at
/// most 254 characters (docs/reference.md, "Magic links"). Checked here first so that a bad
/// e-mail is 22023, not the CHECK's 23514; tests/integration/constraints.rs proves the two
/// agree.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b));
    let domain_ok = domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
        && matches!(domain.rsplit_once('.'), Some((head, tld))
            if !head.is_empty() && tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    email.len() <= 254 && local_ok && domain_ok
}

thread_local! {
    static CITEXT_SQL: RefCell<HashMap<&'static str, &'static str>> = RefCell::new(HashMap::new());
}

/// `sql` with `{citext}` replaced by citext's schema, looked up once per backend: e-mails
/// and slugs are compared with citext's own `=` (`OPERATOR({citext}.=)`), so they stay
/// case-insensitive — and use their citext indexes — whatever the caller's search_path.
pub(crate) fn citext_sql(
    client: &mut SpiClient<'_>,
    sql: &'static str,
) -> Result<&'static str, TruxeError> {
    if let Some(done) = CITEXT_SQL.with(|m| m.borrow().get(sql).copied()) {
        return Ok(done);
    }
    let schema = plans::run(
        client,
        "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e
           JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'citext'",
        &[],
        &[],
    )?
    .first()
    .get_one::<String>()?
    .ok_or_else(|| TruxeError::new(Sqlstate::Internal, "extension citext is not installed"))?;
    // leaked once per statement and backend: the cached plan keeps the text for good anyway
    let done: &'static str = Box::leak(sql.replace("{citext}", &schema).into_boxed_str());
    CITEXT_SQL.with(|m| m.borrow_mut().insert(sql, done));
    Ok(done)
}

/// An org slug as the organizations CHECKs allow it (sql/schema.sql, the source: 2-63
/// lowercase letters, digits and inner dashes), compared case-insensitively: `org_slug` is
/// citext, like the column. tests/integration/constraints.rs
/// (`slug_and_email_rules_agree_between_the_checks_sql_and_rust`) proves they agree.
pub fn valid_slug(slug: &str) -> bool {
    let b = slug.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || *c == b'-';
    (2..=63).contains(&b.len()) && b.iter().all(inner) && b[0] != b'-' && b[b.len() - 1] != b'-'
}

/// A token issued (magic link or e-mail invitation): its row id, the token, its expiry.
pub(crate) type Issued = (Uuid, String, TimestampWithTimeZone);

/// The C entry point of a rate-limited issuer (issue_magic_link, invite_by_email):
/// materializes the issued row into the caller's tuplestore, or raises the refusal as
/// `TX429` (src/error.rs). `body` reads the arguments and does the work inside pgrx's guard,
/// which turns its errors and panics into PostgreSQL errors as every `#[pg_extern]`'s does;
/// a refusal comes back out of the guard as its `&'static` message only, every Rust value
/// of the body already dropped, so that [`raise_too_many_requests`] may `longjmp` from this
/// frame. One C function where there were two (a PL/pgSQL wrapper raising over an internal
/// Rust function): one call, one pass through `SET search_path`, no statement of its own
/// (bench/README.md).
///
/// # Safety
/// `fcinfo` must be the executor's call of a function declared `RETURNS TABLE(uuid, text,
/// timestamptz)` whose arguments `body` reads as declared.
pub(crate) unsafe fn limited_issuer(
    fcinfo: pg_sys::FunctionCallInfo,
    body: unsafe fn(pg_sys::FunctionCallInfo) -> Result<Limited<Issued>, TruxeError>,
) -> pg_sys::Datum {
    // SAFETY: per the contract above, which is srf::one_row's (one_row makes the call a
    // materialized set before the body does any work); the body runs inside the guard as a
    // #[pg_extern]'s does
    let refused: Option<&'static CStr> = unsafe {
        pg_sys::submodules::panic::pgrx_extern_c_guard(move || {
            let mut refused = None;
            crate::srf::one_row(fcinfo, || match body(fcinfo).unwrap_or_raise() {
                Limited::Done((id, token, expires_at)) => {
                    Some([id.into_datum(), token.into_datum(), expires_at.into_datum()])
                }
                Limited::TooManyRequests(why) => {
                    refused = Some(why);
                    None
                }
            });
            refused
        })
    };
    match refused {
        None => pg_sys::Datum::from(0),
        // SAFETY: outside the guard, in the C entry point's frame, holding only `fcinfo`
        // and the static message (raise_too_many_requests' contract)
        Some(why) => unsafe { raise_too_many_requests(why) },
    }
}

pgrx::extension_sql!(
    r#"
CREATE FUNCTION truxe.issue_magic_link(email citext, org_slug citext DEFAULT NULL,
                                       ttl interval DEFAULT '15 minutes', ip inet DEFAULT NULL,
                                       user_agent text DEFAULT NULL)
RETURNS TABLE(challenge_id uuid, token text, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'issue_magic_link_limited_wrapper';
"#,
    name = "issue_magic_link_limited",
    requires = ["schema"]
);

/// Issues a magic link for `email` (optionally for the org `org_slug`, which must exist)
/// valid for `ttl` (1 minute to 24 hours). Returns the challenge id, the token to e-mail
/// (never stored) and its expiry. 22023 for an invalid e-mail, org slug or ttl; P0002 for
/// an unknown org slug; TX429 when more than 5 links were issued for the e-mail within 15
/// minutes. Writes `magic_link.sent`. service_account only; SECURITY DEFINER (since 0.2, when
/// it called an owner-only internal half; unchanged so that it keeps the owner's rights).
///
/// A hand-written C entry point ([`limited_issuer`]), because pgrx cannot raise truxe's
/// own TX429 (src/error.rs); the symbol is new in 0.2 (0.1.0's, `issue_magic_link_wrapper`,
/// stays below). Hand-written SQL: pgrx has no citext type; citext's own `=` is reached
/// through `citext_sql`, so the pinned search_path needs no citext schema.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn issue_magic_link_limited_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the executor's call of truxe.issue_magic_link (declared above)
    unsafe { limited_issuer(fcinfo, issue_args) }
}
crate::trigger::v1_finfo!(pg_finfo_issue_magic_link_limited_wrapper);

/// issue_magic_link's arguments, then its work.
///
/// # Safety
/// `fcinfo` must be a call of truxe.issue_magic_link (citext, citext, interval, inet, text).
unsafe fn issue_args(fcinfo: pg_sys::FunctionCallInfo) -> Result<Limited<Issued>, TruxeError> {
    use pgrx::fcinfo::pg_getarg;
    // SAFETY: per the contract above (each argument may be NULL)
    unsafe {
        issue(
            pg_getarg::<String>(fcinfo, 0),
            pg_getarg::<String>(fcinfo, 1),
            pg_getarg::<Interval>(fcinfo, 2),
            pg_getarg::<Inet>(fcinfo, 3),
            pg_getarg::<String>(fcinfo, 4),
        )
    }
}

/// 0.1.0's issue_magic_link, kept as the C symbol `issue_magic_link_wrapper` that the frozen
/// 0.1.0 install script declares (org_slug text, the same result): a database still on
/// schema 0.1.0 with this library runs it until `ALTER EXTENSION truxe UPDATE` replaces the
/// function (0.2.0 declares no SQL for it: `sql = false`). The same work as 0.2's
/// `issue_magic_link_limited_wrapper`, but it cannot raise TX429 (src/error.rs): past the limit it
/// raises 53400 (configuration_limit_exceeded) with the same message.
#[pg_extern(sql = false)]
fn issue_magic_link(
    email: Option<String>,
    org_slug: Option<String>,
    ttl: Option<Interval>,
    ip: Option<Inet>,
    user_agent: Option<String>,
) -> TableIterator<
    'static,
    (
        name!(challenge_id, Uuid),
        name!(token, String),
        name!(expires_at, TimestampWithTimeZone),
    ),
> {
    match issue(email, org_slug, ttl, ip, user_agent).unwrap_or_raise() {
        Limited::Done(issued) => TableIterator::once(issued),
        Limited::TooManyRequests(why) => TruxeError::new(
            Sqlstate::ConfigurationLimitExceeded,
            why.to_string_lossy().into_owned(),
        )
        .raise(),
    }
}

fn issue(
    email: Option<String>,
    org_slug: Option<String>,
    ttl: Option<Interval>,
    ip: Option<Inet>,
    user_agent: Option<String>,
) -> Result<Limited<Issued>, TruxeError> {
    let Some(email) = email.filter(|e| valid_email(e)) else {
        return fail(Sqlstate::InvalidParameter, "invalid e-mail address");
    };
    if let Some(slug) = org_slug.as_deref().filter(|s| !valid_slug(s)) {
        return fail(
            Sqlstate::InvalidParameter,
            format!(
                "invalid org_slug {}: 2-63 letters, digits and inner dashes",
                quote_input(slug)
            ),
        );
    }
    let ttl = match ttl {
        Some(t) if (MIN_TTL_MICROS..=MAX_TTL_MICROS).contains(&t.as_micros()) => t,
        _ => {
            return fail(
                Sqlstate::InvalidParameter,
                "ttl must be between 1 minute and 24 hours",
            )
        }
    };
    let mut secret = new_secret()?;
    let token_hash = sha256_hex(&secret);
    let client = audit::Client {
        ip: ip.as_ref().map(|i| i.0.clone()),
        user_agent: user_agent.clone(),
    };
    let issued = Spi::connect_mut(|c| -> Result<_, TruxeError> {
        if let Some(slug) = org_slug.as_deref() {
            let sql = citext_sql(
                c,
                "SELECT 1 FROM truxe.organizations WHERE slug OPERATOR({citext}.=) $1::{citext}.citext",
            )?;
            if plans::run(c, sql, &[TEXT], &[slug.into()])?.is_empty() {
                return fail(
                    Sqlstate::NotFound,
                    format!("unknown organization {}", quote_input(slug)),
                );
            }
        }
        // one issuer per e-mail at a time, so the limit is exact under concurrency
        plans::run(
            c,
            "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(pg_catalog.lower($1), 7329))",
            &[TEXT],
            &[email.clone().into()],
        )?;
        let on_citus = crate::claim::audit_logs_distributed();
        let recent = if on_citus {
            links_issued_on_citus(c, &email)?
        } else {
            let recent_sql = citext_sql(
                c,
                "SELECT count(*) FROM truxe.magic_link_challenges
                  WHERE email OPERATOR({citext}.=) $1::{citext}.citext
                    AND created_at > now() - interval '15 minutes'",
            )?;
            plans::run(c, recent_sql, &[TEXT], &[email.clone().into()])?
                .first()
                .get_one::<i64>()?
                .unwrap_or(0)
        };
        if recent >= LINKS_PER_WINDOW {
            return Ok(None);
        }
        if on_citus {
            count_link_on_citus(c, &email)?;
        }
        let row = plans::run(
            c,
            "INSERT INTO truxe.magic_link_challenges (email, token_hash, org_slug, expires_at, ip, user_agent)
             VALUES ($1, $2, $3, now() + $4, $5, $6) RETURNING id, expires_at",
            &[TEXT, TEXT, TEXT, INTERVAL, INET, TEXT],
            &[email.clone().into(), token_hash.into(), org_slug.clone().into(), ttl.into(), ip.into(), user_agent.into()],
        )?
        .first()
        .get_two::<Uuid, TimestampWithTimeZone>()?;
        match row {
            (Some(id), Some(expires_at)) => Ok(Some((id, expires_at))),
            _ => fail(Sqlstate::Internal, "magic link insert returned no row"),
        }
    })?;
    let Some((id, expires_at)) = issued else {
        secret.fill(0);
        return Ok(Limited::TooManyRequests(
            c"too many magic links for this e-mail address; try again in 15 minutes",
        ));
    };
    audit::record(
        None,
        "magic_link.sent",
        "magic_link",
        &id.to_string(),
        json!({ "email": email, "org_slug": org_slug }),
        &client,
    )?;
    let token = format_token(&id, &secret);
    secret.fill(0);
    Ok(Limited::Done((id, token, expires_at)))
}

/// On Citus, issuance is counted per minute in `truxe.rate_limits` (one shard per e-mail, by
/// the key's hash) instead of by counting the e-mail's challenges, which are distributed by
/// id (what verification looks them up by), so that count would ask every shard
/// (docs/scaling.md). The key hashes the lowercased e-mail after a NUL byte, which no
/// `rate_limit_hit` key (text) can hold: these counters never mix with an application's.
fn citus_issuance_key(email: &str) -> String {
    let mut key = b"\0truxe.magic_link\0".to_vec();
    key.extend(email.to_lowercase().as_bytes());
    sha256_hex(&key)
}

const MINUTE_MICROS: i64 = 60_000_000;

fn timestamp(micros: i64) -> Result<TimestampWithTimeZone, TruxeError> {
    TimestampWithTimeZone::try_from(micros)
        .map_err(|_| TruxeError::new(Sqlstate::Internal, "clock out of range"))
}

/// On Citus: the links issued for `email` in the last 15 minutes, to the minute (a link
/// counts for 15 to 16 minutes).
fn links_issued_on_citus(c: &mut SpiClient<'_>, email: &str) -> Result<i64, TruxeError> {
    // SAFETY: reads the current transaction's start time (what now() returns).
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    Ok(plans::run(
        c,
        "SELECT coalesce(sum(request_count), 0)::bigint FROM truxe.rate_limits
          WHERE key_hash = $1 AND window_start > $2",
        &[TEXT, plans::TIMESTAMPTZ],
        &[
            citus_issuance_key(email).into(),
            timestamp(now - 16 * MINUTE_MICROS)?.into(),
        ],
    )?
    .first()
    .get_one::<i64>()?
    .unwrap_or(0))
}

/// On Citus: one more link for `email`, in the current minute's counter (kept until it no
/// longer counts, then cleanup's).
fn count_link_on_citus(c: &mut SpiClient<'_>, email: &str) -> Result<(), TruxeError> {
    // SAFETY: reads the current transaction's start time (what now() returns).
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let minute = now.div_euclid(MINUTE_MICROS) * MINUTE_MICROS;
    plans::run(
        c,
        "INSERT INTO truxe.rate_limits AS r (key_hash, window_start, window_end) VALUES ($1, $2, $3)
         ON CONFLICT (key_hash, window_start) DO UPDATE SET request_count = r.request_count + 1",
        &[TEXT, plans::TIMESTAMPTZ, plans::TIMESTAMPTZ],
        &[
            citus_issuance_key(email).into(),
            timestamp(minute)?.into(),
            timestamp(minute + 16 * MINUTE_MICROS)?.into(),
        ],
    )?;
    Ok(())
}

/// What checking a token found.
#[derive(Default)]
struct Outcome {
    status: &'static str,
    user_id: Option<Uuid>,
    email: Option<String>,
    org_id: Option<Uuid>,
    expires_at: Option<TimestampWithTimeZone>,
}

impl Outcome {
    fn status(status: &'static str) -> Outcome {
        Outcome {
            status,
            ..Default::default()
        }
    }
}

/// The shared check of verify (consume = true) and inspect (consume = false); `client`
/// goes into the audit rows.
fn check(
    token: Option<&str>,
    consume: bool,
    client: &audit::Client,
) -> Result<Outcome, TruxeError> {
    let Some((id, secret)) = token.and_then(parse_token) else {
        return Ok(Outcome::status("invalid"));
    };
    Spi::connect_mut(|c| {
        let rows = plans::run(
            c,
            "SELECT email::text, token_hash, org_slug, expires_at, expires_at <= now(),
                    used_at IS NOT NULL, attempts
               FROM truxe.magic_link_challenges WHERE id = $1 FOR UPDATE",
            &[UUID],
            &[id.into()],
        )?;
        if rows.is_empty() {
            return Ok(Outcome::status("invalid"));
        }
        let row = rows.first();
        let email = row.get::<String>(1)?;
        let token_hash = row.get::<String>(2)?.unwrap_or_default();
        let org_slug = row.get::<String>(3)?;
        let expires_at = row.get::<TimestampWithTimeZone>(4)?;
        let expired = row.get::<bool>(5)? == Some(true);
        let used = row.get::<bool>(6)? == Some(true);
        let attempts = row.get::<i32>(7)?.unwrap_or(MAX_ATTEMPTS);
        let failed = |status: &'static str| -> Result<Outcome, TruxeError> {
            let reason = json!({ "reason": status });
            audit::record(
                None,
                "magic_link.failed",
                "magic_link",
                &id.to_string(),
                reason,
                client,
            )?;
            Ok(Outcome::status(status))
        };
        if attempts >= MAX_ATTEMPTS {
            return failed("locked");
        }
        if !secret_matches(&secret, &token_hash) {
            plans::run(
                c,
                "UPDATE truxe.magic_link_challenges SET attempts = attempts + 1 WHERE id = $1 AND attempts < $2",
                &[UUID, INT4],
                &[id.into(), MAX_ATTEMPTS.into()],
            )?;
            return failed("invalid");
        }
        if used {
            return failed("used");
        }
        if expired {
            return failed("expired");
        }
        if !consume {
            return Ok(Outcome {
                status: "valid",
                email,
                expires_at,
                ..Default::default()
            });
        }
        let email = email.unwrap_or_default();
        plans::run(
            c,
            "UPDATE truxe.magic_link_challenges SET used_at = now() WHERE id = $1",
            &[UUID],
            &[id.into()],
        )?;
        let (user_id, status, _) = login_user(c, &email)?;
        if status != "active" {
            return Ok(Outcome {
                email: Some(email),
                ..failed("rejected")?
            });
        }
        let org_id = match org_slug {
            Some(slug) => {
                let sql = citext_sql(
                    c,
                    "SELECT o.id FROM truxe.organizations o
                       JOIN truxe.memberships m ON m.org_id = o.id
                      WHERE o.slug OPERATOR({citext}.=) $1::{citext}.citext
                        AND m.user_id = $2 AND m.joined_at IS NOT NULL",
                )?;
                let member = plans::run(c, sql, &[TEXT, UUID], &[slug.into(), user_id.into()])?;
                plans::first_value::<Uuid>(member)?
            }
            None => None,
        };
        let (link, user) = (id.to_string(), user_id.to_string());
        audit::record(
            org_id,
            "magic_link.verified",
            "magic_link",
            &link,
            json!({ "email": email }),
            client,
        )?;
        audit::record(
            org_id,
            "user.login",
            "user",
            &user,
            json!({ "method": "magic_link" }),
            client,
        )?;
        Ok(Outcome {
            status: "verified",
            user_id: Some(user_id),
            email: Some(email),
            org_id,
            expires_at: None,
        })
    })
}

/// The user with `email`, created (active, verified) when new, or activated and verified
/// when pending; with its status after that, and whether this call created it (then, its
/// row being uncommitted, nothing else refers to it yet: accept_invitation_token skips the
/// membership lookup).
pub(crate) fn login_user(
    c: &mut SpiClient<'_>,
    email: &str,
) -> Result<(Uuid, String, bool), TruxeError> {
    let find = citext_sql(
        c,
        "SELECT id, status::text FROM truxe.users WHERE email OPERATOR({citext}.=) $1::{citext}.citext FOR UPDATE",
    )?;
    for _ in 0..2 {
        let found = plans::run(c, find, &[TEXT], &[email.into()])?;
        if !found.is_empty() {
            let (id, status) = found.first().get_two::<Uuid, String>()?;
            let (Some(id), Some(status)) = (id, status) else {
                break;
            };
            if status == "pending" || status == "active" {
                plans::run(
                    c,
                    "UPDATE truxe.users SET status = 'active', email_verified = true
                      WHERE id = $1 AND (status <> 'active' OR NOT email_verified)",
                    &[UUID],
                    &[id.into()],
                )?;
                return Ok((id, "active".into(), false));
            }
            return Ok((id, status, false));
        }
        // a concurrent verification may create the same user: then look again
        let created = plans::run(
            c,
            "INSERT INTO truxe.users (email, status, email_verified) VALUES ($1, 'active', true)
             ON CONFLICT (email) DO NOTHING RETURNING id",
            &[TEXT],
            &[email.into()],
        )?;
        if let Some(id) = plans::first_value::<Uuid>(created)? {
            return Ok((id, "active".into(), true));
        }
    }
    fail(
        Sqlstate::Internal,
        "could not find or create the user of a verified magic link",
    )
}

/// Verifies a magic-link token: always exactly one row, never an error for a bad token.
/// status `verified` (user_id, email and, when the link named an org the user has joined,
/// org_id), `invalid`, `expired`, `used`, `locked` (5 wrong secrets) or `rejected`
/// (suspended or deleted user). On `verified` the link is used up and the user created or
/// activated. Writes magic_link.verified + user.login, or magic_link.failed (for a token
/// naming an existing challenge), with `ip`/`user_agent` (else app.ip/app.user_agent).
/// service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.verify_magic_link(token text, ip inet DEFAULT NULL, user_agent text DEFAULT NULL)
RETURNS TABLE(status text, user_id uuid, email citext, org_id uuid)
LANGUAGE c VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
ROWS 1 AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
#[allow(clippy::type_complexity)]
fn verify_magic_link(
    token: Option<&str>,
    ip: Option<Inet>,
    user_agent: Option<String>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(user_id, Option<Uuid>),
        name!(email, Option<String>),
        name!(org_id, Option<Uuid>),
    ),
> {
    let client = audit::Client {
        ip: ip.map(|i| i.0),
        user_agent,
    };
    let o = check(token, true, &client).unwrap_or_raise();
    TableIterator::once((o.status.to_string(), o.user_id, o.email, o.org_id))
}

/// The checks of verify_magic_link without using the link up: status `valid` (with the
/// e-mail and expiry), `invalid`, `expired`, `used` or `locked`; a wrong secret still
/// counts as an attempt. For a confirm page on GET, so that mail scanners that open every
/// link do not burn it. service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.inspect_magic_link(token text)
RETURNS TABLE(status text, email citext, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
ROWS 1 AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn inspect_magic_link(
    token: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(email, Option<String>),
        name!(expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    let o = check(token, false, &audit::Client::default()).unwrap_or_raise();
    TableIterator::once((o.status.to_string(), o.email, o.expires_at))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parse_token_accepts_only_the_exact_format() {
        let good = format!(
            "{}.{}",
            "0123456789abcdef0123456789abcdef",
            URL_SAFE_NO_PAD.encode([7u8; 32])
        );
        assert_eq!(good.len(), 76);
        let (id, secret) = parse_token(&good).expect("well-formed");
        assert_eq!(id.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(secret, [7u8; 32]);
        for bad in [
            String::new(),
            good[..75].to_string(),
            format!("{good}A"),
            good.replacen('.', "-", 1),
            good.to_uppercase(),
            good.replacen('0', "g", 1),
            format!("{}é", &good[..74]),
            "x".repeat(1 << 20),
        ] {
            assert!(parse_token(&bad).is_none(), "{bad:.80}");
        }
        // a non-canonical last base64 character (non-zero trailing bits) is refused
        let mut tweaked = good.clone().into_bytes();
        let last = tweaked.len() - 1;
        tweaked[last] = if tweaked[last] == b'c' { b'd' } else { b'c' };
        assert!(parse_token(std::str::from_utf8(&tweaked).unwrap()).is_none());
    }

    #[test]
    fn valid_slug_follows_the_organizations_check() {
        for ok in ["ab", "acme", "ACME", "a-b-9", &"a".repeat(63)] {
            assert!(valid_slug(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "-ab",
            "ab-",
            "a b",
            "a_b",
            "é1",
            "a\n",
            &"a".repeat(64),
        ] {
            assert!(!valid_slug(bad), "{bad}");
        }
    }

    #[test]
    fn valid_email_follows_the_design_pattern() {
        for ok in ["a@b.co", "first.last+tag@mail.example.com", "x_%-@d-1.io"] {
            assert!(valid_email(ok), "{ok}");
        }
        for bad in [
            "", "a@b", "@b.co", "a@.co", "a@b.c", "a b@c.de", "a@b.c0", "a@@b.co", "ü@b.co",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
        assert!(!valid_email(&format!("{}@b.co", "a".repeat(250))));
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::error::error_of;
    use pgrx::prelude::*;

    fn issue(email: &str) -> (String, String) {
        let (id, token) = Spi::get_two::<String, String>(&format!(
            "SELECT challenge_id::text, token FROM truxe.issue_magic_link('{email}')"
        ))
        .unwrap();
        (id.unwrap(), token.unwrap())
    }

    fn verify(token: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        Spi::connect(|c| {
            let row = c
                .select(
                    "SELECT status, user_id::text, email::text, org_id::text FROM truxe.verify_magic_link($1)",
                    None,
                    &[token.into()],
                )
                .unwrap()
                .first();
            (
                row.get::<String>(1).unwrap().unwrap(),
                row.get::<String>(2).unwrap(),
                row.get::<String>(3).unwrap(),
                row.get::<String>(4).unwrap(),
            )
        })
    }

    fn inspect(token: &str) -> String {
        Spi::get_one_with_args::<String>(
            "SELECT status FROM truxe.inspect_magic_link($1)",
            &[token.into()],
        )
        .unwrap()
        .unwrap()
    }

    /// `token` with one character of its secret changed (to another base64url character,
    /// so that it stays a well-formed token whose secret is wrong).
    fn wrong_secret(token: &str) -> String {
        let mut t = token.to_string();
        let flip = if &t[40..41] == "A" { "Q" } else { "A" };
        t.replace_range(40..41, flip);
        t
    }

    #[pg_test]
    fn round_trip_stores_only_the_hash_and_creates_the_user() {
        let (id, token) = issue("New.User@Example.com");
        assert_eq!(token.len(), 76);
        assert!(
            token.starts_with(&id.replace('-', "")),
            "the token carries the challenge id"
        );
        let secret = &token[33..];
        let hash_ok = Spi::get_one_with_args::<bool>(
            "SELECT token_hash = encode(sha256(decode(translate($1, '-_', '+/') || '=', 'base64')), 'hex')
               FROM truxe.magic_link_challenges",
            &[secret.into()],
        );
        assert_eq!(
            hash_ok.unwrap(),
            Some(true),
            "token_hash is the SHA-256 of the secret bytes"
        );
        let leaked = Spi::get_one_with_args::<i64>(
            "SELECT (SELECT count(*) FROM truxe.magic_link_challenges c WHERE c::text LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM truxe.audit_logs a WHERE a::text LIKE '%' || $1 || '%')",
            &[secret.into()],
        );
        assert_eq!(leaked.unwrap(), Some(0), "the secret is stored nowhere");
        assert_eq!(inspect(&token), "valid");
        let (status, user, email, org) = verify(&token);
        assert_eq!(
            (status.as_str(), email.as_deref(), org),
            ("verified", Some("New.User@Example.com"), None)
        );
        let user_row = Spi::get_two_with_args::<String, bool>(
            "SELECT status::text, email_verified FROM truxe.users WHERE id = $1::uuid",
            &[user.unwrap().into()],
        )
        .unwrap();
        assert_eq!(user_row, (Some("active".into()), Some(true)));
        assert_eq!(verify(&token).0, "used");
        assert_eq!(inspect(&token), "used");
    }

    #[pg_test]
    fn wrong_secrets_count_and_lock_even_the_right_token() {
        let (_, token) = issue("lock@example.com");
        for n in 1..=5 {
            assert_eq!(verify(&wrong_secret(&token)).0, "invalid");
            let attempts = Spi::get_one::<i32>("SELECT attempts FROM truxe.magic_link_challenges");
            assert_eq!(attempts.unwrap(), Some(n));
        }
        assert_eq!(verify(&token).0, "locked");
        assert_eq!(inspect(&token), "locked");
    }

    #[pg_test]
    fn inspect_counts_wrong_secrets_but_never_consumes() {
        let (_, token) = issue("look@example.com");
        assert_eq!(inspect(&wrong_secret(&token)), "invalid");
        assert_eq!(inspect(&token), "valid");
        assert_eq!(inspect(&token), "valid");
        let row = Spi::get_two::<i32, bool>(
            "SELECT attempts, used_at IS NULL FROM truxe.magic_link_challenges",
        );
        assert_eq!(row.unwrap(), (Some(1), Some(true)));
    }

    #[pg_test]
    fn expired_rejected_and_garbage_statuses() {
        let (id, token) = issue("late@example.com");
        Spi::run(&format!(
            "UPDATE truxe.magic_link_challenges SET created_at = now() - interval '2 hours',
                    expires_at = now() - interval '1 hour' WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(inspect(&token), "expired");
        assert_eq!(verify(&token).0, "expired");
        Spi::run(
            "INSERT INTO truxe.users (email, status) VALUES ('banned@example.com', 'suspended')",
        )
        .unwrap();
        let (_, token) = issue("BANNED@example.com");
        let (status, user, _, _) = verify(&token);
        assert_eq!((status.as_str(), user), ("rejected", None));
        for garbage in ["", "x", "not.a.token", &"a".repeat(76)] {
            assert_eq!(verify(garbage).0, "invalid");
            assert_eq!(inspect(garbage), "invalid");
        }
        let null_status =
            Spi::get_one::<String>("SELECT status FROM truxe.verify_magic_link(NULL)");
        assert_eq!(null_status.unwrap().as_deref(), Some("invalid"));
    }

    #[pg_test]
    fn pending_user_is_activated_and_org_is_resolved_for_members() {
        Spi::run(
            "INSERT INTO truxe.users (email) VALUES ('pend@example.com');
             INSERT INTO truxe.organizations (slug, name) VALUES ('acme', 'Acme');
             INSERT INTO truxe.memberships (org_id, user_id, role, joined_at)
               SELECT o.id, u.id, 'member', now() FROM truxe.organizations o, truxe.users u;",
        )
        .unwrap();
        let token = Spi::get_one::<String>(
            "SELECT token FROM truxe.issue_magic_link('pend@example.com', 'ACME')",
        )
        .unwrap()
        .unwrap();
        let (status, _, _, org) = verify(&token);
        assert_eq!(status, "verified");
        let acme = Spi::get_one::<String>("SELECT id::text FROM truxe.organizations").unwrap();
        assert_eq!(
            org, acme,
            "org_slug resolves, case-insensitively, for a joined member"
        );
        let st = Spi::get_one::<String>(
            "SELECT status::text FROM truxe.users WHERE email = 'pend@example.com'",
        );
        assert_eq!(st.unwrap().as_deref(), Some("active"));
        let events = Spi::get_one::<String>(
            "SELECT string_agg(action::text, ',' ORDER BY id) FROM truxe.audit_logs WHERE action::text LIKE 'magic%' OR action = 'user.login'",
        );
        assert_eq!(
            events.unwrap().as_deref(),
            Some("magic_link.sent,magic_link.verified,user.login")
        );
        // a user who is not a member of the link's org: no org
        let token = Spi::get_one::<String>(
            "SELECT token FROM truxe.issue_magic_link('stranger@example.com', 'acme')",
        )
        .unwrap()
        .unwrap();
        let (status, _, _, org) = verify(&token);
        assert_eq!((status.as_str(), org), ("verified", None));
        // an unknown slug is refused when the link is issued (P0002), a malformed one is 22023
        assert_eq!(
            error_of("SELECT truxe.issue_magic_link('stranger@example.com', 'no-such-org')")
                .map(|e| e.0),
            Some(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND)
        );
        assert_eq!(
            error_of("SELECT truxe.issue_magic_link('stranger@example.com', 'Bad Slug!')")
                .map(|e| e.0),
            Some(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE)
        );
    }

    #[pg_test]
    fn bad_input_and_issuance_limit() {
        let code = |sql: &str| error_of(sql).map(|(c, _)| c);
        assert_eq!(
            code("SELECT truxe.issue_magic_link('not-an-email')"),
            Some(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE)
        );
        assert_eq!(
            code("SELECT truxe.issue_magic_link('a@example.com', NULL, '59 seconds')"),
            Some(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE)
        );
        assert_eq!(
            code("SELECT truxe.issue_magic_link('a@example.com', NULL, '25 hours')"),
            Some(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE)
        );
        for _ in 0..5 {
            assert_eq!(
                code("SELECT truxe.issue_magic_link('Limit@example.com')"),
                None
            );
        }
        // the sixth within 15 minutes, in any letter case (the SQLSTATE, TX429, is checked by
        // the integration tests: it is truxe's own code)
        let sixth = error_of("SELECT truxe.issue_magic_link('limit@EXAMPLE.com')").expect("TX429");
        assert!(sixth.1.contains("too many magic links"), "{}", sixth.1);
    }
}
