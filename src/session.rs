//! Sessions (docs/reference.md, "Sessions"; docs/security.md, "Sessions"): create_session, validate_session, refresh_session with rotation
//! and reuse detection, revoke_session, revoke_user_sessions, revoke_session_by_id, and the
//! triggers that end sessions when a membership or an active status ends.
//!
//! A session row is one access token (`jti`) with its refresh token (`refresh_jti`);
//! rotation chains rows into a family. Both tokens are bearer credentials, so a row keeps
//! only their SHA-256 (`jti_hash`, `refresh_jti_hash`, computed by [`bearer_hash`] alone)
//! and is known everywhere else by its public, non-secret `id`: `family_id`, `replaced_by`
//! and audit rows hold ids, never a token. The tokens leave truxe exactly once, in the row
//! `create_session` / `refresh_session` return.
//!
//! Every revocation writes `revoked_at = greatest(now(), created_at)`: under READ COMMITTED
//! a statement also sees sessions committed after its transaction began, whose
//! `created_at` is later than its `now()` (and `revoked_after_created` would refuse them).
//!
//! Every function here pins `search_path = pg_catalog, pg_temp`: their statements name
//! truxe's objects with the schema, and nothing resolves through the caller's path.
use crate::context::org_access;
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::gucs::{
    MAX_SESSIONS_PER_USER, REFRESH_REUSE_GRACE, SESSION_IDLE_TIMEOUT, SESSION_MAX_LIFETIME,
};
use crate::jsonb::JsonbArg;
use crate::plans::{self, BYTEA, INET, INTERVAL, JSONB, TEXT, UUID};
use crate::trigger::trigger_entry;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{Inet, PgOid, Uuid};
use sha2::{Digest, Sha256};

type Issued = (
    name!(jti, Uuid),
    name!(refresh_jti, Uuid),
    name!(expires_at, TimestampWithTimeZone),
);

const MAX_TTL_MICROS: i128 = 366 * 86_400 * 1_000_000;

/// The stored form of a bearer value (a jti or refresh_jti): SHA-256 of the uuid's 16
/// bytes — the same 32 bytes as SQL's `sha256(uuid_send(x))`, which the 0.1.0 → 0.2.0
/// upgrade uses on existing rows. The only place truxe hashes a session token.
pub(crate) fn bearer_hash(value: &Uuid) -> Vec<u8> {
    Sha256::digest(value.as_bytes()).to_vec()
}

/// A new session's (or family's) public id: time-ordered ([`crate::crypto::new_time_ordered_uuid`]).
fn new_id() -> Result<Uuid, TruxeError> {
    crate::crypto::new_time_ordered_uuid()
}

/// A new (jti, refresh_jti) pair: random version-4 uuids from the OS source (crypto.rs).
fn new_pair() -> Result<(Uuid, Uuid), TruxeError> {
    Ok((crate::crypto::new_uuid()?, crate::crypto::new_uuid()?))
}

/// SQL condition on a session row `s`: its user is active and, for an org-scoped session,
/// may still use that org ([`org_access`]). What create_session checks, re-checked by
/// refresh_session on Citus; on a single node refresh_session and [`validate`] read the
/// user's status directly and run [`ORG_ACCESS_READ`] for an org-scoped session only.
macro_rules! still_allowed {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM truxe.users au WHERE au.id = s.user_id AND au.status = 'active')",
            " AND (s.org_id IS NULL OR ",
            org_access!("s.user_id", "s.org_id"),
            ")"
        )
    };
}

/// Whether user $1 may still use org $2 ([`org_access`]), read-only in the caller's
/// snapshot: validate_session's re-check of an org-scoped session.
const ORG_ACCESS_READ: &str = concat!("SELECT ", org_access!("$1", "$2"));

/// The session policies in force (src/gucs.rs), as the intervals the statements bind.
/// Each is computed here from whole seconds: no function call a caller's schema could
/// shadow, and no extra statement on validate_session's path.
struct Policy {
    /// `truxe.session_max_lifetime`: a family ends at `family_created_at` plus this.
    lifetime: Interval,
    /// `truxe.session_idle_timeout`: None when 0 (off).
    idle: Option<Interval>,
    /// How stale `last_used_at` may get before a use rewrites it: a minute, or a quarter
    /// of the idle timeout when that is shorter (the idle check's precision).
    touch: Interval,
}

/// An interval of `micros` microseconds.
fn micros(micros: i64) -> Result<Interval, TruxeError> {
    Ok(Interval::new(0, 0, micros)?)
}

fn policy() -> Result<Policy, TruxeError> {
    const MINUTE: i64 = 60 * 1_000_000;
    let lifetime = i64::from(SESSION_MAX_LIFETIME.get().max(1)) * 1_000_000;
    let idle = i64::from(SESSION_IDLE_TIMEOUT.get().max(0)) * 1_000_000;
    Ok(Policy {
        lifetime: micros(lifetime)?,
        idle: if idle > 0 { Some(micros(idle)?) } else { None },
        touch: micros(if idle > 0 {
            MINUTE.min(idle / 4)
        } else {
            MINUTE
        })?,
    })
}

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

/// The (id, expires_at) of the one row an INSERT … RETURNING id, expires_at wrote.
fn inserted(
    rows: pgrx::spi::SpiTupleTable<'_>,
) -> Result<Option<(Uuid, TimestampWithTimeZone)>, TruxeError> {
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    match (row.get::<Uuid>(1)?, row.get::<TimestampWithTimeZone>(2)?) {
        (Some(id), Some(e)) => Ok(Some((id, e))),
        _ => fail(Sqlstate::Internal, "session row without id or expiry"),
    }
}

/// A revoking UPDATE of sessions, written once: `.0` as a single node runs it (the audit
/// trigger writes `session.revoked`), `.1` returning what [`citus::revoke`] audits.
macro_rules! revoking {
    ($sql:literal) => {
        (
            $sql,
            concat!($sql, " RETURNING id, user_id, org_id, revoked_reason"),
        )
    };
}

/// The INSERT of a new session (create_session); on Citus also returning the family for
/// the audit row (`citus::create`).
macro_rules! insert_session {
    () => {
        "INSERT INTO truxe.sessions (jti_hash, user_id, org_id, refresh_jti_hash, family_id,
                                     device_info, ip, user_agent, expires_at, family_created_at, id)
         VALUES ($1, $2, $3, $4, $11, coalesce($5, '{}'), $6, $7,
                 least(now() + $8, now() + $9), now(), $10)
         RETURNING id, expires_at"
    };
}

/// refresh_session's INSERT of the session that follows session $1 in its family: new token
/// hashes $2 and $3, id $6, the family's device, aal and first login, expiring at now + $4
/// or the family's end ($5 after its first login), whichever is sooner; nothing once the
/// family has ended.
macro_rules! insert_child {
    () => {
        "INSERT INTO truxe.sessions (jti_hash, user_id, org_id, refresh_jti_hash,
                                     family_id, device_info, ip, user_agent, expires_at, aal,
                                     family_created_at, id)
         SELECT $2, s.user_id, s.org_id, $3, s.family_id, s.device_info, s.ip,
                s.user_agent, least(now() + $4, s.family_created_at + $5), s.aal,
                s.family_created_at, $6
           FROM truxe.sessions s WHERE s.id = $1 AND s.family_created_at > now() - $5
         RETURNING id, expires_at"
    };
}

mod citus;

// truxe.create_session: SQL here, C entry point below (doc comment there).
pgrx::extension_sql!(
    r#"
CREATE FUNCTION truxe.create_session(user_id uuid, org_id uuid DEFAULT NULL, ttl interval DEFAULT '7 days',
                                     device_info jsonb DEFAULT '{}', ip inet DEFAULT NULL,
                                     user_agent text DEFAULT NULL)
RETURNS TABLE(jti uuid, refresh_jti uuid, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'create_session_wrapper';
"#,
    name = "create_session",
    requires = ["schema"]
);

crate::srf::one_row_entry!(
    /// Creates a session for an active user (42501 otherwise; P0002 unknown user or org); with
    /// `org_id`, the user must be a joined member of it or a joined owner/admin of one of its
    /// ancestors (42501). Returns the access token (`jti`), the refresh token (`refresh_jti`)
    /// and the expiry — the only time the tokens are shown: the row keeps their SHA-256. A new
    /// family starts, with a random `family_id` of its own and `family_created_at` = now; the
    /// expiry is now + ttl, or now + `truxe.session_max_lifetime` when that is sooner. With
    /// `truxe.max_sessions_per_user` = n > 0, the user's live sessions beyond the n - 1 most
    /// recently used are revoked first (reason `session_limit`), under a lock on the user's
    /// row, so concurrent creates for one user queue there. ttl outside (0, 366 days] or a
    /// device_info that is not an object: 22023. service_account only (SECURITY DEFINER: it
    /// reads truxe.org_closure, which no role may read). One materialized row (src/srf.rs).
    create_session_wrapper,
    pg_finfo_create_session_wrapper,
    create_session
);

/// create_session's call: its six arguments (each may be NULL), its row materialized.
///
/// # Safety
/// `fcinfo` must be the executor's call of truxe.create_session.
unsafe fn create_session(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    use pgrx::fcinfo::{pg_getarg, pg_getarg_datum};
    // SAFETY: the six arguments of truxe.create_session, read as their SQL types
    unsafe {
        crate::srf::one_row(fcinfo, || {
            let issued = create(
                pg_getarg::<Uuid>(fcinfo, 0),
                pg_getarg::<Uuid>(fcinfo, 1),
                pg_getarg::<Interval>(fcinfo, 2),
                JsonbArg::of_datum(pg_getarg_datum(fcinfo, 3)),
                pg_getarg::<Inet>(fcinfo, 4),
                pg_getarg::<String>(fcinfo, 5),
            );
            issued.unwrap_or_raise().map(issued_row)
        })
    }
}

/// A (jti, refresh_jti, expires_at) row as datums.
fn issued_row((jti, refresh_jti, expires_at): Issued) -> [Option<pg_sys::Datum>; 3] {
    [
        jti.into_datum(),
        refresh_jti.into_datum(),
        expires_at.into_datum(),
    ]
}

fn create(
    user_id: Option<Uuid>,
    org_id: Option<Uuid>,
    ttl: Option<Interval>,
    device_info: JsonbArg,
    ip: Option<Inet>,
    user_agent: Option<String>,
) -> Result<Option<Issued>, TruxeError> {
    let Some(user_id) = user_id else {
        return fail(Sqlstate::InvalidParameter, "user_id must not be NULL");
    };
    let ttl = check_ttl(ttl)?;
    // device_info NULL means '{}' (the INSERT's coalesce)
    Spi::connect_mut(|c| {
        device_info.require_object("device_info")?;
        // an unscoped session of an active user, most calls: its row read through its index,
        // no statement (src/context.rs); anything else is asked of SQL, which names the error
        let plainly_active =
            org_id.is_none() && crate::context::user_is_active_direct(user_id) == Some(true);
        if !plainly_active {
            may_open(c, user_id, org_id)?;
        }
        let policy = policy()?;
        let limit = MAX_SESSIONS_PER_USER.get();
        if limit > 0 {
            make_room(c, user_id, limit, &policy)?;
        }
        let (jti, refresh_jti) = new_pair()?;
        let types = [
            BYTEA, UUID, UUID, BYTEA, JSONB, INET, TEXT, INTERVAL, INTERVAL, UUID, UUID,
        ];
        let args = [
            bearer_hash(&jti).into(),
            user_id.into(),
            org_id.into(),
            bearer_hash(&refresh_jti).into(),
            device_info.param(),
            ip.into(),
            user_agent.into(),
            ttl.into(),
            policy.lifetime.into(),
            new_id()?.into(),
            new_id()?.into(),
        ];
        let row = match citus::owner() {
            None => inserted(plans::run(c, insert_session!(), &types, &args)?)?,
            Some(owner) => citus::create(c, owner, &types, &args, user_id, org_id)?,
        };
        Ok(row.map(|(_, expires_at)| (jti, refresh_jti, expires_at)))
    })
}

/// Checks that `user` may open a session (in `org`, if given) as create_session's contract
/// says: P0002 for an unknown user or org, 42501 for a user that is not active or may not
/// use the org.
fn may_open(
    c: &mut pgrx::spi::SpiClient<'_>,
    user_id: Uuid,
    org_id: Option<Uuid>,
) -> Result<(), TruxeError> {
    // (status, org exists, may use the org): two texts, so that each keeps one generic
    // plan; with `$2 IS NULL OR …` the planner re-planned every unscoped call (a custom
    // plan without the org subplans always looked cheaper)
    let who = match org_id {
        None => plans::run(
            c,
            "SELECT u.status::text, NULL::boolean, true FROM truxe.users u WHERE u.id = $1",
            &[UUID],
            &[user_id.into()],
        )?,
        Some(org) => plans::run(
            c,
            concat!(
                "SELECT u.status::text,
                        (SELECT true FROM truxe.organizations o WHERE o.id = $2), ",
                org_access!("$1", "$2"),
                " FROM truxe.users u WHERE u.id = $1"
            ),
            &[UUID, UUID],
            &[user_id.into(), org.into()],
        )?,
    };
    if who.is_empty() {
        return fail(Sqlstate::NotFound, format!("unknown user {user_id}"));
    }
    let (status, org_exists, allowed) = who.first().get_three::<String, bool, bool>()?;
    crate::context::require_active(user_id, status)?;
    if let Some(org) = org_id {
        if org_exists != Some(true) {
            return fail(Sqlstate::NotFound, format!("unknown organization {org}"));
        }
        if allowed != Some(true) {
            return fail(
                Sqlstate::InsufficientPrivilege,
                format!("user {user_id} is not a joined member of organization {org}"),
            );
        }
    }
    Ok(())
}

/// `truxe.max_sessions_per_user` = `limit`: before a new session of `user`, revokes its live
/// sessions (as validate_session sees them, org access aside) beyond the `limit - 1` most
/// recently used (reason `session_limit`; the audit trigger writes `session.revoked`). The
/// user's row is locked first (FOR NO KEY UPDATE: a session's foreign-key check, FOR KEY
/// SHARE, does not wait for it), so a second create for the same user waits until this
/// transaction ends and then, in READ COMMITTED, counts the session it added.
fn make_room(
    c: &mut pgrx::spi::SpiClient<'_>,
    user: Uuid,
    limit: i32,
    policy: &Policy,
) -> Result<(), TruxeError> {
    plans::run(
        c,
        "SELECT 1 FROM truxe.users u WHERE u.id = $1 FOR NO KEY UPDATE OF u",
        &[UUID],
        &[user.into()],
    )?;
    let args = [
        user.into(),
        i64::from(limit - 1).into(),
        policy.lifetime.into(),
        policy.idle.into(),
    ];
    let types = [UUID, plans::INT8, INTERVAL, INTERVAL];
    // greatest(): a session a concurrent transaction created after ours began (and
    // committed before this statement) must not look revoked before it was created. On
    // Citus the subquery (it has an OFFSET) is planned first, then ids updated on every shard
    let (sql, on_citus) = revoking!(
        "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = 'session_limit'
          WHERE id IN (SELECT s.id FROM truxe.sessions s
                        WHERE s.user_id = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
                          AND s.family_created_at > now() - $3
                          AND ($4 IS NULL OR s.last_used_at >= now() - $4)
                        ORDER BY s.last_used_at DESC, s.created_at DESC, s.id DESC
                        OFFSET $2)
            AND revoked_at IS NULL"
    );
    match citus::owner() {
        None => {
            plans::run(c, sql, &types, &args)?;
        }
        Some(owner) => {
            citus::revoke(owner, on_citus, &types, &args)?;
        }
    }
    Ok(())
}

// truxe.validate_session: SQL here, C entry point below (doc comment there).
pgrx::extension_sql!(
    r#"
CREATE FUNCTION truxe.validate_session(jti uuid)
RETURNS TABLE(user_id uuid, org_id uuid, expires_at timestamptz)
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'validate_session_wrapper';
"#,
    name = "validate_session",
    requires = ["schema"]
);

crate::srf::one_row_entry!(
    /// The user, org and expiry of a live session; no row when the jti is unknown, expired or
    /// revoked, when its user is no longer active, or when an org-scoped session's user may no
    /// longer use that org (not a joined member, nor a joined owner/admin of an ancestor), when
    /// its family began longer ago than `truxe.session_max_lifetime` (the expiry returned is
    /// never later than that end), or when it went unused for longer than
    /// `truxe.session_idle_timeout` (if set). All in the one read of the session row.
    /// Writes `last_used_at` at most once a minute, or every quarter of the idle timeout when
    /// that is shorter (most calls write nothing), and never in a
    /// read-only transaction, so it also answers on a hot standby. Callable by
    /// authenticated and service_account (SECURITY DEFINER: RLS would hide the row). Never
    /// raises for an unknown jti.
    ///
    /// The C entry point (the symbol 0.1.0's install script names too) materializes the set,
    /// at most one row, in one call instead of a value-per-call set function's two: each call
    /// passes through the `SET search_path` clause, whose save and restore of the setting was
    /// a sixth of the read path's CPU.
    validate_session_wrapper,
    pg_finfo_validate_session_wrapper,
    validate_session
);

/// validate_session's call: its row (or none) materialized.
///
/// # Safety
/// `fcinfo` must be the executor's call of truxe.validate_session (one uuid argument).
unsafe fn validate_session(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the uuid argument of truxe.validate_session (STRICT: never NULL here)
    unsafe {
        crate::srf::one_row(fcinfo, || {
            let jti = pgrx::fcinfo::pg_getarg::<Uuid>(fcinfo, 0)?;
            let s = validate(jti).unwrap_or_raise()?;
            Some([
                s.user.into_datum(),
                s.org.into_datum(),
                s.expires_at.into_datum(),
            ])
        })
    }
}

/// A live session, as validate finds it.
pub(crate) struct Live {
    pub id: Uuid,
    pub user: Uuid,
    pub org: Option<Uuid>,
    pub expires_at: TimestampWithTimeZone,
    pub aal: i16,
}

/// The live session of `jti` (validate_session's checks and its `last_used_at` touch), or
/// None. The session and its user are read through their unique indexes in the calling
/// statement's snapshot (src/index_read.rs: no executor on the path every request takes);
/// on Citus the session is read by `jti_hash` through SQL instead (one shard,
/// [`citus::owner`]). The org re-check of an org-scoped session and the once-a-minute touch
/// are statements.
pub(crate) fn validate(jti: Uuid) -> Result<Option<Live>, TruxeError> {
    let policy = policy()?;
    // SAFETY: reads the transaction's start time (what now() returns); no preconditions.
    let now = i128::from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() });
    let lifetime = policy.lifetime.as_micros();
    let hash = bearer_hash(&jti);
    let owner = citus::owner();
    let row = match owner {
        None => session_row(&hash)?,
        Some(owner) => citus::session_row(owner, &hash)?,
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let (expires, family, used) = (
        i128::from(row.expires),
        i128::from(row.family),
        i128::from(row.used),
    );
    let live = !row.revoked
        && expires > now
        && family > now - lifetime
        && policy
            .idle
            .is_none_or(|idle| used >= now - idle.as_micros());
    if !live {
        return Ok(None);
    }
    if !user_active(row.user)? {
        return Ok(None);
    }
    // the family's end when it comes before the session's (infinity stays infinity)
    let ends = expires.min(family.saturating_add(lifetime));
    let live = Live {
        id: row.id,
        user: row.user,
        org: row.org,
        expires_at: TimestampWithTimeZone::try_from(i64::try_from(ends).unwrap_or(i64::MAX))?,
        aal: row.aal,
    };
    let stale = used < now - policy.touch.as_micros();
    // Nothing is written on a hot standby (or in any read-only transaction): there the
    // touch is skipped and last_used_at is refreshed by the next call on the primary.
    // SAFETY: both read backend-local state and have no preconditions.
    let touch = stale && unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly };
    if live.org.is_none() && !touch {
        return Ok(Some(live));
    }
    Spi::connect_mut(|c| {
        // an org-scoped session: the user may still use that org (same snapshot)
        if let Some(org) = live.org {
            if !org_access_read(c, live.user, org)? {
                return Ok(None);
            }
        }
        if touch {
            match owner {
                None => {
                    plans::run(
                        c,
                        "UPDATE truxe.sessions SET last_used_at = now()
                          WHERE id = $1 AND last_used_at < now() - $2",
                        &[UUID, INTERVAL],
                        &[live.id.into(), policy.touch.into()],
                    )?;
                }
                Some(owner) => citus::touch(c, owner, live.id, policy.touch, &hash)?,
            }
        }
        Ok(Some(live))
    })
}

/// Whether `user` exists and is active, in the calling statement's snapshot: its row read
/// through `users_pkey` (src/context.rs), no statement. XX000 when the table is not as
/// truxe's schema makes it.
fn user_active(user: Uuid) -> Result<bool, TruxeError> {
    crate::context::user_is_active_direct(user).ok_or_else(|| {
        TruxeError::new(
            Sqlstate::Internal,
            "truxe.users is not as this library reads it",
        )
    })
}

/// Whether user $1 may still use org $2 ([`org_access`]) as [`ORG_ACCESS_READ`] reads it.
fn org_access_read(
    c: &pgrx::spi::SpiClient<'_>,
    user: Uuid,
    org: Uuid,
) -> Result<bool, TruxeError> {
    Ok(plans::read(
        c,
        ORG_ACCESS_READ,
        &[UUID, UUID],
        &[user.into(), org.into()],
    )?
    .first()
    .get_one::<bool>()?
        == Some(true))
}

/// A session row as [`validate`] reads it (timestamps in microseconds).
struct SessionRow {
    id: Uuid,
    user: Uuid,
    org: Option<Uuid>,
    expires: i64,
    family: i64,
    used: i64,
    revoked: bool,
    aal: i16,
}

/// The session whose `jti_hash` is `hash`, read through `sessions_jti_hash_key` in the
/// calling statement's snapshot (src/index_read.rs). XX000 outside a statement, or when the
/// table, the index or a column (by name and type) is not where truxe's schema puts it.
fn session_row(hash: &[u8]) -> Result<Option<SessionRow>, TruxeError> {
    use crate::index_read::{self as ir, Indexed, Read};
    let changed = || {
        TruxeError::new(
            Sqlstate::Internal,
            "truxe.sessions is not as this library reads it",
        )
    };
    // SAFETY: backend-local state, no preconditions
    if !unsafe { pg_sys::ActiveSnapshotSet() } {
        return fail(
            Sqlstate::Internal,
            "validate_session ran outside a statement",
        );
    }
    let nsp = ir::truxe_namespace().ok_or_else(changed)?;
    let table = ir::relation(nsp, c"sessions").ok_or_else(changed)?;
    let index = ir::relation(nsp, c"sessions_jti_hash_key").ok_or_else(changed)?;
    let col = |name, typ| {
        ir::typed_column(table, name, typ)
            .and_then(|att| usize::try_from(att).ok())
            .ok_or_else(changed)
    };
    let (uuid, ts) = (pg_sys::UUIDOID, pg_sys::TIMESTAMPTZOID);
    let cols = [
        col(c"id", uuid)?,
        col(c"user_id", uuid)?,
        col(c"org_id", uuid)?,
        col(c"expires_at", ts)?,
        col(c"family_created_at", ts)?,
        col(c"last_used_at", ts)?,
        col(c"revoked_at", ts)?,
        col(c"aal", pg_sys::INT2OID)?,
    ];
    let [id, user, org, expires, family, used, revoked, aal] = cols;
    let last = cols.into_iter().max().unwrap_or(0);
    let sessions = Indexed::open(table, index, &[c"jti_hash"]).ok_or_else(changed)?;
    let mut scan = sessions.scan_bytea(hash, Read::Heap(last));
    let row = if scan.next() {
        match (
            scan.uuid(id),
            scan.uuid(user),
            scan.int8(expires),
            scan.int8(family),
            scan.int8(used),
            scan.int2(aal),
        ) {
            (Some(id), Some(user), Some(expires), Some(family), Some(used), Some(aal)) => {
                Ok(Some(SessionRow {
                    id,
                    user,
                    org: scan.uuid(org),
                    expires,
                    family,
                    used,
                    revoked: !scan.is_null(revoked),
                    aal,
                }))
            }
            _ => fail(Sqlstate::Internal, "session row with a NULL key column"),
        }
    } else {
        Ok(None)
    };
    scan.end();
    sessions.close();
    row
}

// truxe.refresh_session: SQL here, C entry point below (doc comment there).
pgrx::extension_sql!(
    r#"
CREATE FUNCTION truxe.refresh_session(refresh_jti uuid, ttl interval DEFAULT '7 days')
RETURNS TABLE(jti uuid, refresh_jti uuid, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'refresh_session_wrapper';
"#,
    name = "refresh_session",
    requires = ["schema"]
);

crate::srf::one_row_entry!(
    /// Rotates a refresh token: a new session in the same family (new tokens, returned once;
    /// the old session's assurance level `aal` carried over, so a second factor verified once
    /// holds for the family), the old one revoked with reason `rotated`. Presenting an
    /// already-rotated refresh_jti within `truxe.refresh_reuse_grace` of its rotation, while the session that rotation
    /// created is live, gives a new session of the same family (two tabs refreshing at once
    /// both stay signed in; truxe cannot hand out the first rotation's tokens again, it does
    /// not keep them); a grace of 0 means none, even within the rotating transaction. Later,
    /// it revokes every live session of the family (reason `refresh_token_reuse`, audit
    /// `session.reuse_detected`) and returns no row. Unknown, expired or otherwise revoked, a
    /// user no longer active, or an org the user may no longer use: no row. The session
    /// policies hold as in validate_session: a family older than `truxe.session_max_lifetime`
    /// or a session unused for longer than `truxe.session_idle_timeout` is not refreshed (no
    /// row), and the new session inherits `family_created_at` and expires at now + ttl or at
    /// the family's end, whichever is sooner. ttl outside
    /// (0, 366 days]: 22023. service_account only (SECURITY DEFINER, as create_session). One materialized row (src/srf.rs).
    refresh_session_wrapper,
    pg_finfo_refresh_session_wrapper,
    refresh_session
);

/// refresh_session's call: its two arguments (each may be NULL), its row (or none)
/// materialized.
///
/// # Safety
/// `fcinfo` must be the executor's call of truxe.refresh_session.
unsafe fn refresh_session(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    use pgrx::fcinfo::pg_getarg;
    // SAFETY: the two arguments of truxe.refresh_session, read as their SQL types
    unsafe {
        crate::srf::one_row(fcinfo, || {
            refresh(
                pg_getarg::<Uuid>(fcinfo, 0),
                pg_getarg::<Interval>(fcinfo, 1),
            )
            .unwrap_or_raise()
            .into_iter()
            .next()
            .map(issued_row)
        })
    }
}

/// refresh_session's `session.refreshed` row for the session `child` that rotated `id`
/// (`within_grace`: a second use of an already-rotated token).
fn audit_refreshed(
    org: Option<Uuid>,
    child: Uuid,
    id: Uuid,
    family: Option<Uuid>,
    within_grace: bool,
) -> Result<(), TruxeError> {
    crate::audit::record(
        org,
        "session.refreshed",
        "session",
        &child.to_string(),
        serde_json::json!({
            "rotated_from": id.to_string(),
            "family_id": family.map(|f| f.to_string()),
            "within_grace": within_grace,
        }),
        &Default::default(),
    )
}

/// refresh_session's `session.reuse_detected` row: the reused session `id`, its family and
/// how many of the family's sessions were revoked.
fn audit_reuse(
    org: Option<Uuid>,
    id: Uuid,
    family: Option<Uuid>,
    revoked: usize,
) -> Result<(), TruxeError> {
    crate::audit::record(
        org,
        "session.reuse_detected",
        "session",
        &id.to_string(),
        serde_json::json!({ "family_id": family.map(|f| f.to_string()), "revoked": revoked }),
        &Default::default(),
    )
}

/// Whether the session a rotation created (`replaced_by`) is live as refresh_session
/// requires for a grace (not revoked, not expired, within the family's lifetime and the
/// idle timeout), read in a new snapshot (single node) or on every shard (Citus).
fn rotation_live(
    c: &mut pgrx::spi::SpiClient<'_>,
    replaced_by: Option<Uuid>,
    policy: &Policy,
) -> Result<bool, TruxeError> {
    Ok(!plans::run(
        c,
        "SELECT 1 FROM truxe.sessions
          WHERE id = $1 AND revoked_at IS NULL AND expires_at > now()
            AND family_created_at > now() - $2
            AND ($3 IS NULL OR last_used_at >= now() - $3)",
        &[UUID, INTERVAL, INTERVAL],
        &[
            replaced_by.into(),
            policy.lifetime.into(),
            policy.idle.into(),
        ],
    )?
    .is_empty())
}

fn refresh(refresh_jti: Option<Uuid>, ttl: Option<Interval>) -> Result<Vec<Issued>, TruxeError> {
    let ttl = check_ttl(ttl)?;
    let Some(refresh_jti) = refresh_jti else {
        return Ok(Vec::new());
    };
    let grace_secs = i64::from(REFRESH_REUSE_GRACE.get().max(0));
    // an interval computed here: no function call that a caller's schema could shadow
    let grace = micros(grace_secs * 1_000_000)?;
    let policy = policy()?;
    if let Some(owner) = citus::owner() {
        return citus::refresh(
            owner,
            bearer_hash(&refresh_jti),
            grace_secs,
            grace,
            &policy,
            ttl,
        );
    }
    Spi::connect_mut(|c| {
        let rows = plans::run(
            c,
            "SELECT s.id, s.family_id, s.org_id,
                        s.revoked_at IS NULL AND s.expires_at > now()
                          AND s.family_created_at > now() - $3
                          AND ($4 IS NULL OR s.last_used_at >= now() - $4),
                        s.revoked_reason, s.revoked_at >= now() - $2, s.replaced_by, s.user_id
                   FROM truxe.sessions s WHERE s.refresh_jti_hash = $1 FOR UPDATE OF s",
            &[BYTEA, INTERVAL, INTERVAL, INTERVAL],
            &[
                bearer_hash(&refresh_jti).into(),
                grace.into(),
                policy.lifetime.into(),
                policy.idle.into(),
            ],
        )?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let row = rows.first();
        let id = row.get::<Uuid>(1)?;
        let family = row.get::<Uuid>(2)?;
        let org = row.get::<Uuid>(3)?;
        let live = row.get::<bool>(4)? == Some(true);
        let reason = row.get::<String>(5)?;
        // grace 0: none at all (revoked_at >= now() - 0 holds within the rotating transaction)
        let within_grace = grace_secs > 0 && row.get::<bool>(6)? == Some(true);
        let replaced_by = row.get::<Uuid>(7)?;
        let (Some(id), Some(user)) = (id, row.get::<Uuid>(8)?) else {
            return fail(Sqlstate::Internal, "session row without id");
        };
        let rotate = live || (reason.as_deref() == Some("rotated") && within_grace);
        if rotate {
            // what still_allowed! says, the user read through its index (validate's reads)
            let allowed = user_active(user)?
                && match org {
                    Some(org) => org_access_read(c, user, org)?,
                    None => true,
                };
            if !allowed {
                return Ok(Vec::new());
            }
            // the grace holds while the first rotation's session is live; read in a new
            // snapshot: a rotation this call waited for (FOR UPDATE) committed after ours
            if !live && !rotation_live(c, replaced_by, &policy)? {
                return Ok(Vec::new());
            }
            let (jti, new_refresh) = new_pair()?;
            let args = [
                id.into(),
                bearer_hash(&jti).into(),
                bearer_hash(&new_refresh).into(),
                ttl.into(),
                policy.lifetime.into(),
                new_id()?.into(),
            ];
            let types = [UUID, BYTEA, BYTEA, INTERVAL, INTERVAL, UUID];
            // session.created and session.revoked (the trigger's) and session.refreshed in
            // one INSERT (src/audit.rs)
            let held = crate::audit::Held::begin();
            let child = if live {
                inserted(plans::run(
                    c,
                    concat!(
                        "WITH child AS (",
                        insert_child!(),
                        "), rotated AS (
                           UPDATE truxe.sessions s SET revoked_at = greatest(now(), s.created_at), revoked_reason = 'rotated',
                                  replaced_by = (SELECT child.id FROM child)
                            WHERE s.id = $1
                         )
                         SELECT id, expires_at FROM child"
                    ),
                    &types,
                    &args,
                )?)?
            } else {
                // the second tab, within the grace: a sibling of the first tab's session
                inserted(plans::run(c, insert_child!(), &types, &args)?)?
            };
            if let Some((child_id, _)) = child {
                audit_refreshed(org, child_id, id, family, !live)?;
            }
            held.write()?;
            return Ok(child.map_or_else(Vec::new, |(_, expires_at)| {
                vec![(jti, new_refresh, expires_at)]
            }));
        }
        if reason.as_deref() != Some("rotated") {
            return Ok(Vec::new());
        }
        let revoked = plans::run(
            c,
            "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = 'refresh_token_reuse'
              WHERE family_id = $1 AND revoked_at IS NULL",
            &[UUID],
            &[family.into()],
        )?
        .len();
        audit_reuse(org, id, family, revoked)?;
        Ok(Vec::new())
    })
}

/// Revokes one live session by its access token (`reason` is kept in revoked_reason);
/// true when it was live. service_account only. NULL or blank reason: 22023.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn revoke_session(jti: Option<Uuid>, reason: default!(Option<String>, "'logout'")) -> bool {
    revoke(
        revoking!(
            "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = $2
              WHERE jti_hash = $1 AND revoked_at IS NULL"
        ),
        BYTEA,
        jti.map(|j| bearer_hash(&j)).into(),
        reason,
    )
    .unwrap_or_raise()
        > 0
}

/// Revokes every live session of a user; returns how many. service_account only. NULL or
/// blank reason: 22023.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn revoke_user_sessions(
    user_id: Option<Uuid>,
    reason: default!(Option<String>, "'logout'"),
) -> i32 {
    revoke(
        revoking!(
            "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = $2
              WHERE user_id = $1 AND revoked_at IS NULL"
        ),
        UUID,
        user_id.into(),
        reason,
    )
    .unwrap_or_raise() as i32
}

/// Runs one [`revoking`] UPDATE (`$1` the key, `$2` the reason); returns how many rows it
/// revoked.
fn revoke(
    sql: (&'static str, &'static str),
    key_type: PgOid,
    key: pgrx::datum::DatumWithOid<'_>,
    reason: Option<String>,
) -> Result<usize, TruxeError> {
    let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
        return fail(
            Sqlstate::InvalidParameter,
            "reason must be a non-empty text",
        );
    };
    run_revoking(sql, &[key_type, TEXT], &[key, reason.into()])
}

/// Runs a [`revoking`] UPDATE in a connection of its own; on Citus through
/// [`citus::revoke`], which writes the audit rows the trigger writes on a single node.
/// Returns how many sessions it revoked.
fn run_revoking(
    sql: (&'static str, &'static str),
    types: &[PgOid],
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Result<usize, TruxeError> {
    match citus::owner() {
        None => Ok(plans::run_once(sql.0, types, args, |t| Ok(t.len()))?),
        Some(owner) => citus::revoke(owner, sql.1, types, args),
    }
}

/// "Sign out that device": revokes the live session with public id `session_id` (reason
/// `logout`); true when it revoked one. As service_account (or a superuser): any session.
/// As anyone else (authenticated): only a session of the acting user
/// (`truxe.current_user_id()`); another user's session, an unknown id, no context or NULL
/// all give false, alike — the answer does not tell whether the id exists. The caller is
/// the role the statement runs as (the login, or the role it SET ROLE to), not the owner
/// of a function in between. Writes `session.revoked` with the id. Never raises.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.revoke_session_by_id(session_id uuid) RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn revoke_session_by_id(session_id: Option<Uuid>) -> bool {
    revoke_by_id(session_id).unwrap_or_raise()
}

fn revoke_by_id(session_id: Option<Uuid>) -> Result<bool, TruxeError> {
    let Some(session_id) = session_id else {
        return Ok(false);
    };
    let revoked = if crate::context::service_caller() {
        run_revoking(
            revoking!(
                "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = 'logout'
                  WHERE id = $1 AND revoked_at IS NULL"
            ),
            &[UUID],
            &[session_id.into()],
        )?
    } else {
        let Some(me) = crate::identity::acting_user() else {
            return Ok(false);
        };
        run_revoking(
            revoking!(
                "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = 'logout'
                  WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL"
            ),
            &[UUID, UUID],
            &[session_id.into(), me.into()],
        )?
    };
    Ok(revoked > 0)
}

/// "Sign out every other device" (after a password-equivalent change): revokes every
/// unrevoked, unexpired session of the user of the live session `jti` except that one
/// (reason `logout_others`; the audit trigger writes `session.revoked` for each) and
/// returns how many. `jti` must name a live session as validate_session sees it (and,
/// like it, counts as a use); otherwise 0 for service_account (or a superuser).
/// authenticated may call it only for the session it is acting through: `jti` must be the
/// token of the session that `truxe.authenticate` verified in this transaction
/// (`truxe.current_session_id()`); anything else — no verified session, another session,
/// an unknown, expired or revoked jti — is 42501, alike, and changes nothing. NULL: 0.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.revoke_other_sessions(jti uuid) RETURNS integer
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn revoke_other_sessions(jti: Option<Uuid>) -> i32 {
    revoke_others(jti).unwrap_or_raise()
}

fn revoke_others(jti: Option<Uuid>) -> Result<i32, TruxeError> {
    let Some(jti) = jti else {
        return Ok(0);
    };
    let acting_session = if crate::context::service_caller() {
        None
    } else {
        let Some(session) = crate::identity::verified().and_then(|v| v.session) else {
            return Err(TruxeError::new(
                Sqlstate::InsufficientPrivilege,
                "revoke_other_sessions needs the token of the session truxe.authenticate verified",
            )
            .with_hint(crate::identity::VERIFIED_IDENTITY_IS_TRANSACTION_LOCAL));
        };
        Some(session)
    };
    let live = validate(jti)?;
    let Some(live) = live.filter(|l| acting_session.is_none_or(|s| s == l.id)) else {
        return match acting_session {
            None => Ok(0),
            Some(_) => fail(
                Sqlstate::InsufficientPrivilege,
                "revoke_other_sessions needs the token of the session truxe.authenticate verified",
            ),
        };
    };
    // greatest(): as in make_room (a session created by a later, committed transaction)
    let revoked = run_revoking(
        revoking!(
            "UPDATE truxe.sessions SET revoked_at = greatest(now(), created_at), revoked_reason = 'logout_others'
              WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL AND expires_at > now()"
        ),
        &[UUID, UUID],
        &[live.user.into(), live.id.into()],
    )?;
    Ok(i32::try_from(revoked).unwrap_or(i32::MAX))
}

/// AFTER DELETE on truxe.memberships: the removed member's live sessions scoped to that org
/// are revoked (reason `membership_removed`), and so are those scoped to a descendant org
/// that the user may no longer use (the removed membership was their owner/admin route).
/// Same transaction as the removal. Runs as the extension owner; not callable as a
/// function (no EXECUTE grant; its C entry point is declared below, src/trigger.rs).
fn end_sessions_on_membership_delete<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TruxeError> {
    let run = || -> Result<(), TruxeError> {
        let Some(old) = trigger.old() else {
            return Ok(());
        };
        let org: Option<Uuid> = old.get_by_name("org_id")?;
        let user: Option<Uuid> = old.get_by_name("user_id")?;
        if let Some(owner) = citus::owner() {
            return citus::end_membership_sessions(owner, org, user);
        }
        plans::run_once(
            concat!(
                "UPDATE truxe.sessions s SET revoked_at = greatest(now(), s.created_at), revoked_reason = 'membership_removed'
                  WHERE s.user_id = $2 AND s.revoked_at IS NULL
                    AND (s.org_id = $1
                         OR (s.org_id IN (SELECT c.descendant_id FROM truxe.org_closure c
                                           WHERE c.ancestor_id = $1)
                             AND NOT ",
                org_access!("s.user_id", "s.org_id"),
                "))"
            ),
            &[UUID, UUID],
            &[org.into(), user.into()],
            |_| Ok(()),
        )?;
        Ok(())
    };
    run().unwrap_or_raise();
    Ok(None)
}

/// AFTER UPDATE OF status on truxe.users, when the status leaves `active` (the trigger's
/// WHEN): every live session of the user is revoked with reason `user_<status>`
/// (`user_suspended`, `user_deleted`, `user_pending`), in the same transaction. Runs as the
/// extension owner; not callable as a function (no EXECUTE grant; entry point below).
fn end_sessions_on_status_change<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TruxeError> {
    let run = || -> Result<(), TruxeError> {
        let Some(new) = trigger.new() else {
            return Ok(());
        };
        let user: Option<Uuid> = new.get_by_name("id")?;
        if let Some(owner) = citus::owner() {
            return citus::end_user_sessions(owner, user);
        }
        // the status is read back as text: no enum type to resolve by name
        plans::run_once(
            "UPDATE truxe.sessions s SET revoked_at = greatest(now(), s.created_at), revoked_reason = 'user_' || u.status::text
               FROM truxe.users u
              WHERE u.id = $1 AND u.status <> 'active' AND s.user_id = u.id AND s.revoked_at IS NULL",
            &[UUID],
            &[user.into()],
            |_| Ok(()),
        )?;
        Ok(())
    };
    run().unwrap_or_raise();
    Ok(None)
}

trigger_entry!(
    end_sessions_on_membership_delete,
    "end_sessions_on_membership_delete",
    end_sessions_on_membership_delete_wrapper,
    pg_finfo_end_sessions_on_membership_delete_wrapper
);
trigger_entry!(
    end_sessions_on_status_change,
    "end_sessions_on_status_change",
    end_sessions_on_status_change_wrapper,
    pg_finfo_end_sessions_on_status_change_wrapper
);

pgrx::extension_sql!(
    r#"
-- Access ends with membership and status (src/session.rs): in the same transaction as the
-- DELETE or the status change. The trigger functions run as the extension owner (whoever
-- may delete a membership or change a status ends those sessions, whatever their own
-- privileges on sessions) with a pinned search_path; sql/grants.sql gives them to nobody.
CREATE FUNCTION truxe.end_sessions_on_membership_delete() RETURNS trigger LANGUAGE c SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'end_sessions_on_membership_delete_wrapper';
CREATE FUNCTION truxe.end_sessions_on_status_change() RETURNS trigger LANGUAGE c SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'end_sessions_on_status_change_wrapper';
CREATE TRIGGER memberships_end_sessions AFTER DELETE ON truxe.memberships
  FOR EACH ROW EXECUTE FUNCTION truxe.end_sessions_on_membership_delete();
CREATE TRIGGER users_end_sessions AFTER UPDATE OF status ON truxe.users
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status <> 'active')
  EXECUTE FUNCTION truxe.end_sessions_on_status_change();
"#,
    name = "session_access_ends",
    requires = ["schema", "hierarchy"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn bearer_hash_is_sql_sha256_of_uuid_send() {
        let token = crate::crypto::new_uuid().unwrap();
        let same = Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.sha256(pg_catalog.uuid_send($1)) = $2",
            &[token.into(), super::bearer_hash(&token).into()],
        )
        .unwrap();
        assert_eq!(same, Some(true));
    }

    #[pg_test]
    fn new_bearers_are_random_version_4_uuids() {
        let (a, b) = super::new_pair().unwrap();
        assert_ne!(a, b);
        let text = Spi::get_one_with_args::<String>("SELECT $1::text", &[a.into()])
            .unwrap()
            .unwrap();
        assert_eq!(&text[14..15], "4");
        assert!("89ab".contains(&text[19..20]), "{text}");
    }
}
