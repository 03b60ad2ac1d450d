//! Sessions (SPEC §7): create_session, validate_session, refresh_session with rotation and
//! reuse detection, revoke_session, revoke_user_sessions. A session row is one access token
//! (`jti`) with its refresh token (`refresh_jti`); rotation chains rows into a family.
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::gucs::REFRESH_REUSE_GRACE;
use crate::plans::{self, INET, INT4, INTERVAL, JSONB, TEXT, UUID};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{Inet, JsonB, Uuid};
use serde_json::Value;

type Issued = (
    name!(jti, Uuid),
    name!(refresh_jti, Uuid),
    name!(expires_at, TimestampWithTimeZone),
);

const MAX_TTL_MICROS: i128 = 366 * 86_400 * 1_000_000;

/// A session lifetime: more than zero, at most 366 days (22023).
fn check_ttl(ttl: Option<Interval>) -> Result<Interval, TruxeError> {
    match ttl {
        Some(t) if t.as_micros() > 0 && t.as_micros() <= MAX_TTL_MICROS => Ok(t),
        _ => fail(
            Sqlstate::InvalidParameter,
            "ttl must be positive and at most 366 days",
        ),
    }
}

/// The single row of an INSERT … RETURNING jti, refresh_jti, expires_at.
fn issued(rows: pgrx::spi::SpiTupleTable<'_>) -> Result<Vec<Issued>, TruxeError> {
    let mut out = Vec::with_capacity(1);
    for row in rows {
        match (
            row.get::<Uuid>(1)?,
            row.get::<Uuid>(2)?,
            row.get::<TimestampWithTimeZone>(3)?,
        ) {
            (Some(j), Some(r), Some(e)) => out.push((j, r, e)),
            _ => {
                return fail(
                    Sqlstate::Internal,
                    "session row without jti, refresh_jti or expiry",
                )
            }
        }
    }
    Ok(out)
}

/// Creates a session for an active user (42501 otherwise; P0002 unknown user or org); with
/// `org_id`, the user must be a joined member of it (42501). Returns the access token id,
/// the refresh token id and the expiry. A new family starts (family_id = jti).
/// service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.create_session(user_id uuid, org_id uuid DEFAULT NULL, ttl interval DEFAULT '7 days',
                                     device_info jsonb DEFAULT '{}', ip inet DEFAULT NULL,
                                     user_agent text DEFAULT NULL)
RETURNS TABLE(jti uuid, refresh_jti uuid, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 1 AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn create_session(
    user_id: Option<Uuid>,
    org_id: Option<Uuid>,
    ttl: Option<Interval>,
    device_info: Option<JsonB>,
    ip: Option<Inet>,
    user_agent: Option<String>,
) -> TableIterator<
    'static,
    (
        name!(jti, Uuid),
        name!(refresh_jti, Uuid),
        name!(expires_at, TimestampWithTimeZone),
    ),
> {
    TableIterator::new(create(user_id, org_id, ttl, device_info, ip, user_agent).unwrap_or_raise())
}

fn create(
    user_id: Option<Uuid>,
    org_id: Option<Uuid>,
    ttl: Option<Interval>,
    device_info: Option<JsonB>,
    ip: Option<Inet>,
    user_agent: Option<String>,
) -> Result<Vec<Issued>, TruxeError> {
    let Some(user_id) = user_id else {
        return fail(Sqlstate::InvalidParameter, "user_id must not be NULL");
    };
    let ttl = check_ttl(ttl)?;
    let device_info = device_info.unwrap_or(JsonB(Value::Object(Default::default())));
    if !device_info.0.is_object() {
        return fail(
            Sqlstate::InvalidParameter,
            "device_info must be a JSON object",
        );
    }
    Spi::connect_mut(|c| {
        let who = plans::run(
            c,
            "SELECT u.status::text,
                    (SELECT true FROM truxe.organizations o WHERE o.id = $2),
                    (SELECT m.joined_at IS NOT NULL FROM truxe.memberships m
                      WHERE m.org_id = $2 AND m.user_id = $1)
               FROM truxe.users u WHERE u.id = $1",
            &[UUID, UUID],
            &[user_id.into(), org_id.into()],
        )?;
        if who.is_empty() {
            return fail(Sqlstate::NotFound, format!("unknown user {user_id}"));
        }
        let (status, org_exists, joined) = who.first().get_three::<String, bool, bool>()?;
        if status.as_deref() != Some("active") {
            return fail(
                Sqlstate::InsufficientPrivilege,
                format!(
                    "user {user_id} is {}, not active",
                    status.unwrap_or_default()
                ),
            );
        }
        if let Some(org) = org_id {
            if org_exists != Some(true) {
                return fail(Sqlstate::NotFound, format!("unknown organization {org}"));
            }
            if joined != Some(true) {
                return fail(
                    Sqlstate::InsufficientPrivilege,
                    format!("user {user_id} is not a joined member of organization {org}"),
                );
            }
        }
        issued(plans::run(
            c,
            "INSERT INTO truxe.sessions (jti, user_id, org_id, refresh_jti, family_id, device_info,
                                         ip, user_agent, expires_at)
             SELECT j, $1, $2, gen_random_uuid(), j, $3, $4, $5, now() + $6 FROM gen_random_uuid() j
             RETURNING jti, refresh_jti, expires_at",
            &[UUID, UUID, JSONB, INET, TEXT, INTERVAL],
            &[
                user_id.into(),
                org_id.into(),
                device_info.into(),
                ip.into(),
                user_agent.into(),
                ttl.into(),
            ],
        )?)
    })
}

/// The user, org and expiry of a live session; no row when the jti is unknown, expired or
/// revoked. Writes `last_used_at` at most once a minute (most calls write nothing), and
/// never in a read-only transaction, so it also answers on a hot standby.
/// Callable by authenticated and service_account (SECURITY DEFINER: RLS would hide the row).
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.validate_session(jti uuid)
RETURNS TABLE(user_id uuid, org_id uuid, expires_at timestamptz)
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn validate_session(
    jti: Uuid,
) -> TableIterator<
    'static,
    (
        name!(user_id, Option<Uuid>),
        name!(org_id, Option<Uuid>),
        name!(expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    TableIterator::new(validate(jti).unwrap_or_raise())
}

type Validated = (Option<Uuid>, Option<Uuid>, Option<TimestampWithTimeZone>);

fn validate(jti: Uuid) -> Result<Option<Validated>, TruxeError> {
    Spi::connect_mut(|c| {
        // read-only in the caller's snapshot: most calls end here, without a write
        let rows = plans::read(
            c,
            "SELECT user_id, org_id, expires_at, last_used_at < now() - interval '1 minute'
               FROM truxe.sessions WHERE jti = $1 AND revoked_at IS NULL AND expires_at > now()",
            &[UUID],
            &[jti.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first();
        let found = (
            row.get::<Uuid>(1)?,
            row.get::<Uuid>(2)?,
            row.get::<TimestampWithTimeZone>(3)?,
        );
        // Nothing is written on a hot standby (or in any read-only transaction): there the
        // touch is skipped and last_used_at is refreshed by the next call on the primary.
        // SAFETY: both read backend-local state and have no preconditions.
        let writable = unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly };
        if writable && row.get::<bool>(4)? == Some(true) {
            plans::run(
                c,
                "UPDATE truxe.sessions SET last_used_at = now()
                  WHERE jti = $1 AND last_used_at < now() - interval '1 minute'",
                &[UUID],
                &[jti.into()],
            )?;
        }
        Ok(Some(found))
    })
}

/// Rotates a refresh token: a new session in the same family, the old one revoked with
/// reason `rotated`. Presenting an already-rotated refresh_jti within
/// `truxe.refresh_reuse_grace` returns the session its rotation created (two tabs
/// refreshing at once); later, it revokes every live session of the family (reason
/// `refresh_token_reuse`, audit `session.reuse_detected`) and returns no row. Unknown,
/// expired or otherwise revoked: no row. service_account only.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.refresh_session(refresh_jti uuid, ttl interval DEFAULT '7 days')
RETURNS TABLE(jti uuid, refresh_jti uuid, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 1 AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn refresh_session(
    refresh_jti: Option<Uuid>,
    ttl: Option<Interval>,
) -> TableIterator<
    'static,
    (
        name!(jti, Uuid),
        name!(refresh_jti, Uuid),
        name!(expires_at, TimestampWithTimeZone),
    ),
> {
    TableIterator::new(refresh(refresh_jti, ttl).unwrap_or_raise())
}

fn refresh(refresh_jti: Option<Uuid>, ttl: Option<Interval>) -> Result<Vec<Issued>, TruxeError> {
    let ttl = check_ttl(ttl)?;
    let Some(refresh_jti) = refresh_jti else {
        return Ok(Vec::new());
    };
    Spi::connect_mut(|c| {
        let rows = plans::run(
            c,
            "SELECT jti, family_id, org_id, revoked_at IS NULL AND expires_at > now(),
                    revoked_reason, replaced_by,
                    revoked_at >= now() - make_interval(secs => $2)
               FROM truxe.sessions WHERE refresh_jti = $1 FOR UPDATE",
            &[UUID, INT4],
            &[refresh_jti.into(), REFRESH_REUSE_GRACE.get().into()],
        )?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let row = rows.first();
        let jti = row.get::<Uuid>(1)?;
        let family = row.get::<Uuid>(2)?;
        let org = row.get::<Uuid>(3)?;
        let live = row.get::<bool>(4)? == Some(true);
        let reason = row.get::<String>(5)?;
        let replaced_by = row.get::<Uuid>(6)?;
        let within_grace = row.get::<bool>(7)? == Some(true);
        if live {
            let new = issued(plans::run(
                c,
                "WITH child AS (
                   INSERT INTO truxe.sessions (jti, user_id, org_id, refresh_jti, family_id,
                                               device_info, ip, user_agent, expires_at)
                   SELECT gen_random_uuid(), s.user_id, s.org_id, gen_random_uuid(), s.family_id,
                          s.device_info, s.ip, s.user_agent, now() + $2
                     FROM truxe.sessions s WHERE s.jti = $1
                   RETURNING jti, refresh_jti, expires_at
                 ), rotated AS (
                   UPDATE truxe.sessions s SET revoked_at = now(), revoked_reason = 'rotated',
                          replaced_by = (SELECT child.jti FROM child)
                    WHERE s.jti = $1
                 )
                 SELECT jti, refresh_jti, expires_at FROM child",
                &[UUID, INTERVAL],
                &[jti.into(), ttl.into()],
            )?)?;
            if let Some((new_jti, _, _)) = new.first() {
                crate::audit::record(
                    org,
                    "session.refreshed",
                    "session",
                    &new_jti.to_string(),
                    serde_json::json!({ "rotated_from": jti.map(|j| j.to_string()) }),
                    &Default::default(),
                )?;
            }
            return Ok(new);
        }
        if reason.as_deref() != Some("rotated") {
            return Ok(Vec::new());
        }
        if within_grace {
            // the second tab: hand it the session the first tab's rotation created
            return issued(plans::run(
                c,
                "SELECT jti, refresh_jti, expires_at FROM truxe.sessions
                  WHERE jti = $1 AND revoked_at IS NULL AND expires_at > now()",
                &[UUID],
                &[replaced_by.into()],
            )?);
        }
        let revoked = plans::run(
            c,
            "UPDATE truxe.sessions SET revoked_at = now(), revoked_reason = 'refresh_token_reuse'
              WHERE family_id = $1 AND revoked_at IS NULL",
            &[UUID],
            &[family.into()],
        )?
        .len();
        crate::audit::record(
            org,
            "session.reuse_detected",
            "session",
            &jti.map(|j| j.to_string()).unwrap_or_default(),
            serde_json::json!({ "family_id": family.map(|f| f.to_string()), "revoked": revoked }),
            &Default::default(),
        )?;
        Ok(Vec::new())
    })
}

/// Revokes one live session (`reason` is kept in revoked_reason); true when it was live.
/// service_account only. NULL reason: 22023.
#[pg_extern]
fn revoke_session(jti: Option<Uuid>, reason: default!(Option<String>, "'logout'")) -> bool {
    revoke(
        "UPDATE truxe.sessions SET revoked_at = now(), revoked_reason = $2
          WHERE jti = $1 AND revoked_at IS NULL",
        jti,
        reason,
    )
    .unwrap_or_raise()
        > 0
}

/// Revokes every live session of a user; returns how many. service_account only.
#[pg_extern]
fn revoke_user_sessions(
    user_id: Option<Uuid>,
    reason: default!(Option<String>, "'logout'"),
) -> i32 {
    revoke(
        "UPDATE truxe.sessions SET revoked_at = now(), revoked_reason = $2
          WHERE user_id = $1 AND revoked_at IS NULL",
        user_id,
        reason,
    )
    .unwrap_or_raise() as i32
}

/// Runs one revoking UPDATE (`$1` the id, `$2` the reason); returns how many rows it revoked.
fn revoke(
    sql: &'static str,
    id: Option<Uuid>,
    reason: Option<String>,
) -> Result<usize, TruxeError> {
    let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
        return fail(
            Sqlstate::InvalidParameter,
            "reason must be a non-empty text",
        );
    };
    Ok(plans::run_once(
        sql,
        &[UUID, TEXT],
        &[id.into(), reason.into()],
        |t| Ok(t.len()),
    )?)
}
