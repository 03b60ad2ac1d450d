//! The Citus forms of the session statements (docs/scaling.md, "sessions on Citus").
//!
//! After `truxe.distribute()`, `sessions` is distributed by `jti_hash` (validate_session
//! and authenticate are single-shard) and `audit_logs` by org. Then every statement on
//! `sessions` runs as the owner of the distributed tables (Citus refuses a transaction that
//! touches a shard as two roles); the session is read through SQL (the coordinator's own
//! `sessions` is an empty shell: no index read) and its user on the coordinator; no
//! statement locks rows across shards; and these functions write the `session.created` /
//! `session.revoked` audit rows that the trigger writes on a single node (a trigger on a
//! shard cannot write `audit_logs`, another distributed table). On a single node nothing
//! here runs: [`owner`] is None.
use super::{
    audit_refreshed, audit_reuse, bearer_hash, inserted, new_pair, rotation_live, Issued, Policy,
    SessionRow,
};
use crate::apptables::ActingAs;
use crate::context::org_access;
use crate::error::{fail, Sqlstate, TruxeError};
use crate::plans::{self, BYTEA, INTERVAL, TEXT, UUID};
use pgrx::datum::{DatumWithOid, Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{PgOid, Uuid};

/// The owner of the distributed tables on Citus; None on a single node.
pub(super) fn owner() -> Option<pg_sys::Oid> {
    crate::claim::distributed_audit_owner()
}

/// Runs a revoking UPDATE (the `.1` of a [`revoking`] form) as `owner`, writes a
/// `session.revoked` row per session it revoked, and returns how many.
pub(super) fn revoke(
    owner: pg_sys::Oid,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> Result<usize, TruxeError> {
    let rows = {
        let _as_owner = ActingAs::switch_to(owner);
        plans::run_once(sql, types, args, |t| {
            let mut rows = Vec::with_capacity(t.len());
            for row in t {
                if let Some(id) = row.get::<Uuid>(1)? {
                    rows.push((
                        id,
                        row.get::<Uuid>(2)?,
                        row.get::<Uuid>(3)?,
                        row.get::<String>(4)?,
                    ));
                }
            }
            Ok(rows)
        })?
    };
    let n = rows.len();
    crate::audit::sessions_revoked(rows)?;
    Ok(n)
}

/// create_session's INSERT (`types`/`args` as [`insert_session`] binds them) in the new
/// `jti_hash`'s shard, as `owner`, and its `session.created` row: the new id and expiry.
pub(super) fn create(
    c: &mut pgrx::spi::SpiClient<'_>,
    owner: pg_sys::Oid,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
    user: Uuid,
    org: Option<Uuid>,
) -> Result<Option<(Uuid, TimestampWithTimeZone)>, TruxeError> {
    let (row, family) = {
        let _as_owner = ActingAs::switch_to(owner);
        let rows = plans::run(
            c,
            concat!(insert_session!(), ", family_id::text"),
            types,
            args,
        )?;
        match rows.into_iter().next() {
            Some(r) => (
                r.get::<Uuid>(1)?.zip(r.get::<TimestampWithTimeZone>(2)?),
                r.get::<String>(3)?,
            ),
            None => (None, None),
        }
    };
    if let Some((id, _)) = row {
        crate::audit::sessions_created(vec![(id, Some(user), org, family)])?;
    }
    Ok(row)
}

/// validate_session's once-a-minute touch in the session's shard (by `jti_hash`), as
/// `owner`.
pub(super) fn touch(
    c: &mut pgrx::spi::SpiClient<'_>,
    owner: pg_sys::Oid,
    id: Uuid,
    every: Interval,
    hash: &[u8],
) -> Result<(), TruxeError> {
    let _as_owner = ActingAs::switch_to(owner);
    plans::run(
        c,
        "UPDATE truxe.sessions SET last_used_at = now()
          WHERE jti_hash = $3 AND id = $1 AND last_used_at < now() - $2",
        &[UUID, INTERVAL, BYTEA],
        &[id.into(), every.into(), hash.to_vec().into()],
    )?;
    Ok(())
}

/// The session whose `jti_hash` is `hash`, read through SQL as `owner` (one shard), in
/// the calling statement's snapshot.
pub(super) fn session_row(
    owner: pg_sys::Oid,
    hash: &[u8],
) -> Result<Option<SessionRow>, TruxeError> {
    let _as_owner = ActingAs::switch_to(owner);
    Spi::connect(|c| {
        let rows = plans::read(
            c,
            "SELECT id, user_id, org_id, expires_at, family_created_at, last_used_at,
                    revoked_at IS NOT NULL, aal
               FROM truxe.sessions WHERE jti_hash = $1",
            &[BYTEA],
            &[hash.to_vec().into()],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let ts = |i: usize| -> Result<Option<i64>, TruxeError> {
            Ok(row
                .get::<TimestampWithTimeZone>(i)?
                .map(TimestampWithTimeZone::into_inner))
        };
        match (
            row.get::<Uuid>(1)?,
            row.get::<Uuid>(2)?,
            ts(4)?,
            ts(5)?,
            ts(6)?,
            row.get::<i16>(8)?,
        ) {
            (Some(id), Some(user), Some(expires), Some(family), Some(used), Some(aal)) => {
                Ok(Some(SessionRow {
                    id,
                    user,
                    org: row.get::<Uuid>(3)?,
                    expires,
                    family,
                    used,
                    revoked: row.get::<bool>(7)? == Some(true),
                    aal,
                }))
            }
            _ => fail(Sqlstate::Internal, "session row with a NULL key column"),
        }
    })
}

/// refresh_session's Citus form: the same answers as on a single node, in statements Citus accepts. The refresh token's row is found on every
/// shard without a lock (Citus refuses `FOR UPDATE` across shards), then locked in its
/// shard by `jti_hash`; the user's right to go on is read on the coordinator; the new
/// session is inserted with the values read (one shard), the old one revoked by its
/// `jti_hash` (one shard); reuse revokes the family on every shard. As the owner; the
/// audit rows written here.
pub(super) fn refresh(
    owner: pg_sys::Oid,
    refresh_hash: Vec<u8>,
    grace_secs: i64,
    grace: Interval,
    policy: &Policy,
    ttl: Interval,
) -> Result<Vec<Issued>, TruxeError> {
    let _as_owner = ActingAs::switch_to(owner);
    Spi::connect_mut(|c| {
        let key = plans::first_value::<Vec<u8>>(plans::run(
            c,
            "SELECT jti_hash FROM truxe.sessions WHERE refresh_jti_hash = $1",
            &[BYTEA],
            &[refresh_hash.clone().into()],
        )?)?;
        let Some(key) = key else {
            return Ok(Vec::new());
        };
        let rows = plans::run(
            c,
            "SELECT s.id, s.family_id, s.org_id,
                    s.revoked_at IS NULL AND s.expires_at > now()
                      AND s.family_created_at > now() - $3
                      AND ($4 IS NULL OR s.last_used_at >= now() - $4),
                    s.revoked_reason, s.revoked_at >= now() - $2, s.replaced_by,
                    s.user_id, s.family_created_at > now() - $3, s.device_info::text, s.ip::text,
                    s.user_agent, s.aal::int4, s.family_created_at
               FROM truxe.sessions s WHERE s.jti_hash = $5 AND s.refresh_jti_hash = $1 FOR UPDATE",
            &[BYTEA, INTERVAL, INTERVAL, INTERVAL, BYTEA],
            &[
                refresh_hash.clone().into(),
                grace.into(),
                policy.lifetime.into(),
                policy.idle.into(),
                key.clone().into(),
            ],
        )?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let row = rows.first();
        let (Some(id), family, org) = (
            row.get::<Uuid>(1)?,
            row.get::<Uuid>(2)?,
            row.get::<Uuid>(3)?,
        ) else {
            return fail(Sqlstate::Internal, "session row without id");
        };
        let live = row.get::<bool>(4)? == Some(true);
        let reason = row.get::<String>(5)?;
        let within_grace = grace_secs > 0 && row.get::<bool>(6)? == Some(true);
        let replaced_by = row.get::<Uuid>(7)?;
        let user = row.get::<Uuid>(8)?;
        let family_ok = row.get::<bool>(9)? == Some(true);
        let device_info = row.get::<String>(10)?;
        let ip = row.get::<String>(11)?;
        let user_agent = row.get::<String>(12)?;
        let aal = row.get::<i32>(13)?;
        let family_created_at = row.get::<TimestampWithTimeZone>(14)?;
        let rotate = live || (reason.as_deref() == Some("rotated") && within_grace);
        if rotate {
            let allowed = plans::first_value::<bool>(plans::run(
                c,
                concat!(
                    "SELECT ",
                    still_allowed!(),
                    " FROM (SELECT $1::uuid AS user_id, $2::uuid AS org_id) s"
                ),
                &[UUID, UUID],
                &[user.into(), org.into()],
            )?)? == Some(true);
            if !allowed || !family_ok {
                return Ok(Vec::new());
            }
            // the grace holds while the first rotation's session is live (every shard)
            if !live && !rotation_live(c, replaced_by, policy)? {
                return Ok(Vec::new());
            }
            let (jti, new_refresh) = new_pair()?;
            let child = plans::run(
                c,
                "INSERT INTO truxe.sessions (jti_hash, user_id, org_id, refresh_jti_hash,
                                             family_id, device_info, ip, user_agent, expires_at, aal,
                                             family_created_at, id)
                 VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::inet, $8,
                         least(now() + $9, $10 + $11), $12, $10, $13)
                 RETURNING id, expires_at",
                &[
                    BYTEA,
                    UUID,
                    UUID,
                    BYTEA,
                    UUID,
                    TEXT,
                    TEXT,
                    TEXT,
                    INTERVAL,
                    plans::TIMESTAMPTZ,
                    INTERVAL,
                    plans::INT4,
                    UUID,
                ],
                &[
                    bearer_hash(&jti).into(),
                    user.into(),
                    org.into(),
                    bearer_hash(&new_refresh).into(),
                    family.into(),
                    device_info.into(),
                    ip.into(),
                    user_agent.into(),
                    ttl.into(),
                    family_created_at.into(),
                    policy.lifetime.into(),
                    aal.into(),
                    super::new_id()?.into(),
                ],
            )?;
            let Some((child_id, expires_at)) = inserted(child)? else {
                return Ok(Vec::new());
            };
            crate::audit::sessions_created(vec![(
                child_id,
                user,
                org,
                family.map(|f| f.to_string()),
            )])?;
            if live {
                revoke(
                    owner,
                    revoking!(
                        "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = 'rotated',
                                replaced_by = $2
                          WHERE jti_hash = $1"
                    ).1,
                    &[BYTEA, UUID],
                    &[key.into(), child_id.into()],
                )?;
            }
            audit_refreshed(org, child_id, id, family, !live)?;
            return Ok(vec![(jti, new_refresh, expires_at)]);
        }
        if reason.as_deref() != Some("rotated") {
            return Ok(Vec::new());
        }
        let revoked = revoke(
            owner,
            revoking!(
                "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = 'refresh_token_reuse'
                  WHERE family_id = $1 AND revoked_at IS NULL"
            ).1,
            &[UUID],
            &[family.into()],
        )?;
        audit_reuse(org, id, family, revoked)?;
        Ok(Vec::new())
    })
}

/// The membership trigger's Citus form: the orgs whose sessions end are decided on the
/// coordinator ([`crate::context::orgs_lost_with`]), then the sessions revoked on every
/// shard.
pub(super) fn end_membership_sessions(
    owner: pg_sys::Oid,
    org: Option<Uuid>,
    user: Option<Uuid>,
) -> Result<(), TruxeError> {
    let orgs = crate::context::orgs_lost_with(org, user)?;
    revoke(
        owner,
        revoking!(
            "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = 'membership_removed'
              WHERE user_id = $2 AND revoked_at IS NULL AND org_id = ANY ($1)"
        )
        .1,
        &[plans::UUID_ARRAY, UUID],
        &[orgs.into(), user.into()],
    )?;
    Ok(())
}

/// The status trigger's Citus form: the status read on the coordinator, the sessions
/// revoked on every shard.
pub(super) fn end_user_sessions(owner: pg_sys::Oid, user: Option<Uuid>) -> Result<(), TruxeError> {
    let status = plans::run_once(
        "SELECT u.status::text FROM truxe.users u WHERE u.id = $1 AND u.status <> 'active'",
        &[UUID],
        &[user.into()],
        plans::first_value::<String>,
    )?;
    if let Some(status) = status {
        revoke(
            owner,
            revoking!(
                "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = 'user_' || $2
                  WHERE user_id = $1 AND revoked_at IS NULL"
            )
            .1,
            &[UUID, TEXT],
            &[user.into(), status.into()],
        )?;
    }
    Ok(())
}
