//! Invitations by e-mail (docs/reference.md, "Invitations"): invite_by_email,
//! inspect_invitation, accept_invitation_token; the table, its policies and
//! revoke_invitation are in sql/invitations.sql.
//!
//! A token has a magic link's format, storage and checks (src/magic_link.rs: the id is the
//! invitation's, only the SHA-256 of the secret is stored, a wrong secret counts an attempt
//! that commits with the caller's transaction, 5 lock the invitation, the comparison is
//! constant-time). Parsing never raises: anything malformed is `invalid`.
//! inspect_invitation and accept_invitation_token have truxe after pg_catalog in their
//! search_path because pgrx finds the enum membership_role by name when it reads or returns
//! one (as the audit triggers do, src/audit.rs); nobody can create objects in either schema.
//! Both are SECURITY DEFINER (executable by service_account only, as before): the lookup of
//! the invitation also answers whether its inviter plainly may still send it, which reads
//! the hierarchy's closure table that only the owner reads (as every rights check does).
//! Nothing else changes with the owner's rights: service_account's policies on the tables
//! they write let everything through, and audit rows name the acting user, not a role.
use crate::audit;
use crate::error::{fail, Limited, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::magic_link::{
    citext_sql, format_token, login_user, new_secret, parse_token, secret_matches, valid_email,
    Issued, MAX_ATTEMPTS,
};
use crate::plans::{self, INT4, INT8, INTERVAL, JSONB, TEXT, TIMESTAMPTZ, UUID};
use crate::security::sha256_hex;
use crate::types::membership_role;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, Uuid};
use serde_json::json;

pgrx::extension_sql_file!(
    "../sql/invitations.sql",
    name = "invitations",
    requires = ["schema", "context", "hierarchy", "orgs"]
);

/// More than this many invitations of one org within an hour: TX429.
const INVITATIONS_PER_HOUR: i64 = 100;
const MIN_TTL_MICROS: i128 = 3600 * 1_000_000;
const MAX_TTL_MICROS: i128 = 30 * 24 * 3600 * 1_000_000;

/// `who`'s effective role on `org` (SQL expressions): truxe.effective_role's query
/// (sql/orgs.sql), written out so that the hot paths below ask it inside one of their own
/// statements instead of through nested SECURITY DEFINER calls (each a PL/pgSQL call with a
/// settings save/restore and its own SPI round trip). The two must stay the same text;
/// the unit test `the_inline_rights_query_is_effective_roles` holds them together.
macro_rules! effective_role_sql {
    ($org:literal, $who:literal) => {
        concat!(
            "(SELECT min(m.role) FROM truxe.memberships m
               WHERE m.user_id = ",
            $who,
            " AND m.joined_at IS NOT NULL
                 AND (m.org_id = ",
            $org,
            "
                      OR (m.role IN ('owner', 'admin')
                          AND m.org_id IN (SELECT c.ancestor_id FROM truxe.org_closure c
                                            WHERE c.descendant_id = ",
            $org,
            "))))"
        )
    };
}

/// Whether truxe.require_grant_rights would let `$1` grant role `$3` (text) with
/// permissions `$4` in org `$2` without any question, and `$1` is an active user (what
/// truxe.require_user asks): no extra permissions, owner or admin there, and the owner
/// role granted by an owner only. Then, and only then, it takes the org's invitation lock
/// (LOCK_ORG's, after the rights: the CASE evaluates the lock last). One statement and no
/// nested call. Every other case, refusals included, goes to those two functions, which
/// decide it (and raise their own errors): this only takes the common "yes" early.
const MAY_GRANT_PLAINLY_THEN_LOCK: &str = concat!(
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = $1 AND u.status = 'active')
                      AND $3 IS NOT NULL AND $4 = '[]'::jsonb
                      AND CASE ",
    effective_role_sql!("$2", "$1"),
    " WHEN 'owner' THEN true WHEN 'admin' THEN $3 <> 'owner' ELSE false END
            THEN (SELECT true FROM pg_catalog.pg_advisory_xact_lock(
                                     pg_catalog.hashtextextended($2::text, 7331)) l)
            ELSE false END"
);

/// One inviter per org at a time, so that the hourly limit is exact under concurrency.
const LOCK_ORG: &str =
    "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended($1::text, 7331))";

/// The invitation made and logged, in one statement once the org is locked (its snapshot
/// then sees every invitation the org's earlier inviters committed): unless the org sent
/// INVITATIONS_PER_HOUR ($8) within the hour (then no row, and nothing written), the
/// e-mail's earlier pending invitation revoked, the new one inserted, and its
/// `invitation.sent` row written with what audit::write would give it ($9-$13, from
/// audit::Moment). The INSERT reads `revoked` (an InitPlan, run to its end before the
/// first row is inserted), so the revocation happens first and the new row does not meet
/// the old one in invitations_one_pending.
const CREATE: &str = "WITH recent AS (
       SELECT count(*) AS n FROM truxe.invitations
        WHERE org_id = $1 AND created_at > now() - interval '1 hour'),
     revoked AS (
       UPDATE truxe.invitations SET revoked_at = now()
        WHERE org_id = $1 AND email OPERATOR({citext}.=) $2::{citext}.citext
          AND accepted_at IS NULL AND revoked_at IS NULL
          AND (SELECT n FROM recent) < $8
       RETURNING 1),
     made AS (
       INSERT INTO truxe.invitations (org_id, email, role, permissions, token_hash, invited_by,
                                      expires_at)
       SELECT $1, $2, $3::truxe.membership_role, $4, $5, $6, now() + $7
        WHERE (SELECT n FROM recent) < $8 AND (SELECT count(*) FROM revoked) >= 0
       RETURNING id, org_id, expires_at),
     logged AS (
       INSERT INTO truxe.audit_logs (org_id, actor_user_id, action, target_type, target_id,
                                     details, ip, user_agent, request_id)
       SELECT made.org_id, $9, 'invitation.sent'::truxe.audit_action, 'invitation',
              made.id::text, $10, $11::inet, $12, $13
         FROM made)
     SELECT id, expires_at FROM made";

/// Invites `email` to `org_id` with `role` and extra `permissions`, for `ttl` (1 hour to 30
/// days). Returns the invitation id, the token to e-mail (never stored) and its expiry. The
/// acting user invites, with the rules of invite_member: owner or admin of the org (42501
/// before any lookup), only an owner invites an owner, permissions of the valid format
/// (22023) held by the inviter (42501). An earlier pending invitation of that e-mail to
/// the org is revoked. 22023 for an invalid e-mail or ttl; TX429 when the org sent more
/// than 100 invitations within the hour. Writes `invitation.sent`. authenticated and
/// service_account (acting for a user).
///
/// A hand-written C entry point (`limited_issuer`, src/magic_link.rs): pgrx cannot raise
/// truxe's own TX429 (src/error.rs). It was a PL/pgSQL wrapper raising over an internal
/// Rust function: one call, one statement and one `SET search_path` pass more per invite
/// (bench/README.md). SECURITY DEFINER as that wrapper was (rights are the acting user's,
/// checked in the body). (New in 0.2: no 0.1.0 entry point to keep.)
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn invite_by_email_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the executor's call of truxe.invite_by_email (declared below)
    unsafe { crate::magic_link::limited_issuer(fcinfo, invite_args) }
}
crate::trigger::v1_finfo!(pg_finfo_invite_by_email_wrapper);

pgrx::extension_sql!(
    r#"
CREATE FUNCTION truxe.invite_by_email(org_id uuid, email citext,
                                      role truxe.membership_role DEFAULT 'member',
                                      permissions jsonb DEFAULT '[]', ttl interval DEFAULT '7 days')
RETURNS TABLE(invitation_id uuid, token text, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1 AS 'MODULE_PATHNAME', 'invite_by_email_wrapper';
"#,
    name = "invite_by_email",
    requires = ["invitations"]
);

/// invite_by_email's arguments, then its work.
///
/// # Safety
/// `fcinfo` must be a call of truxe.invite_by_email (uuid, citext, truxe.membership_role,
/// jsonb, interval).
unsafe fn invite_args(fcinfo: pg_sys::FunctionCallInfo) -> Result<Limited<Issued>, TruxeError> {
    use pgrx::fcinfo::{pg_getarg, pg_getarg_datum};
    // SAFETY: per the contract above (each argument may be NULL)
    unsafe {
        invite(
            pg_getarg::<Uuid>(fcinfo, 0),
            pg_getarg::<String>(fcinfo, 1),
            pg_getarg::<membership_role>(fcinfo, 2),
            pg_getarg_datum(fcinfo, 3),
            pg_getarg::<Interval>(fcinfo, 4),
        )
    }
}

fn invite(
    org_id: Option<Uuid>,
    email: Option<String>,
    role: Option<membership_role>,
    permissions: Option<pg_sys::Datum>,
    ttl: Option<Interval>,
) -> Result<Limited<Issued>, TruxeError> {
    let Some(email) = email.filter(|e| valid_email(e)) else {
        return fail(Sqlstate::InvalidParameter, "invalid e-mail address");
    };
    let ttl = match ttl {
        Some(t) if (MIN_TTL_MICROS..=MAX_TTL_MICROS).contains(&t.as_micros()) => t,
        _ => {
            return fail(
                Sqlstate::InvalidParameter,
                "ttl must be between 1 hour and 30 days",
            )
        }
    };
    // jsonb kept as the argument's datum, never through serde (a deeply nested document
    // must be refused as 22023 by SQL, not make serde fail)
    // SAFETY: the argument's jsonb datum, alive for the whole call
    let jsonb = permissions;
    let permissions = || unsafe { pgrx::datum::DatumWithOid::new(jsonb, pg_sys::JSONBOID) };
    let mut secret = new_secret()?;
    let token_hash = sha256_hex(&secret);
    let issued = Spi::connect_mut(|c| -> Result<_, TruxeError> {
        // the acting user, active (42501), and their rights on the org, checked before
        // anything of the org is read or locked (sql/orgs.sql): the plain case in one
        // statement; anything else by require_user and require_grant_rights themselves,
        // in one statement in which require_user() (the FROM item) runs first
        let acting = crate::identity::acting_user();
        let plain = match acting {
            Some(me) => match may_grant_plainly_direct(me, org_id, role, jsonb) {
                Some(plain) => plain,
                None => {
                    plans::first_value::<bool>(plans::run(
                        c,
                        MAY_GRANT_PLAINLY_THEN_LOCK,
                        &[UUID, UUID, TEXT, JSONB],
                        &[
                            me.into(),
                            org_id.into(),
                            role.map(|r| r.label()).into(),
                            permissions(),
                        ],
                    )?)? == Some(true)
                }
            },
            None => false,
        };
        let me = if plain {
            acting
        } else {
            plans::run(
                c,
                "SELECT me, truxe.require_grant_rights($1, me, $2::truxe.membership_role, $3)::text
                   FROM truxe.require_user() me",
                &[UUID, TEXT, JSONB],
                &[org_id.into(), role.map(|r| r.label()).into(), permissions()],
            )?
            .first()
            .get_one::<Uuid>()?
        };
        let Some(org) = org_id else {
            return fail(Sqlstate::InvalidParameter, "org_id must not be NULL");
        };
        if !plain {
            plans::run(c, LOCK_ORG, &[UUID], &[org.into()])?;
        }
        let create = citext_sql(c, CREATE)?;
        let moment = audit::Moment::now(audit::Client::default());
        let details = moment.details(json!({ "email": email, "role": role.map(|r| r.label()) }));
        let rows = plans::run(
            c,
            create,
            &[
                UUID, TEXT, TEXT, JSONB, TEXT, UUID, INTERVAL, INT8, UUID, JSONB, TEXT, TEXT, UUID,
            ],
            &[
                org.into(),
                email.clone().into(),
                role.map(|r| r.label()).into(),
                permissions(),
                token_hash.into(),
                me.into(),
                ttl.into(),
                INVITATIONS_PER_HOUR.into(),
                moment.actor.into(),
                JsonB(details).into(),
                moment.ip.clone().into(),
                moment.user_agent.clone().into(),
                moment.request_id.into(),
            ],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first().get_two::<Uuid, TimestampWithTimeZone>()?;
        match row {
            (Some(id), Some(expires_at)) => Ok(Some((id, expires_at))),
            _ => fail(Sqlstate::Internal, "invitation insert returned no row"),
        }
    })?;
    let Some((id, expires_at)) = issued else {
        secret.fill(0);
        return Ok(Limited::TooManyRequests(
            c"too many invitations for this organization; try again within the hour",
        ));
    };
    let token = format_token(&id, &secret);
    secret.fill(0);
    Ok(Limited::Done((id, token, expires_at)))
}

/// [`MAY_GRANT_PLAINLY_THEN_LOCK`] without SPI or the executor: whether `me` plainly may
/// invite to `org` with `role` and `permissions` (an active user, no extra permissions,
/// a joined owner or admin of the org or of an ancestor, the owner role only from an
/// owner), and then, only then, the org's invitation lock (the same advisory lock key as
/// [`LOCK_ORG`]). The three reads go through the indexes that statement's plan uses
/// (src/index_read.rs: users_pkey, idx_org_closure_descendant, idx_memberships_user_org),
/// in a snapshot taken now, as the statement's own would be. That statement was a tenth of
/// the invite + accept pair's CPU (bench/README.md). None when a direct read does not
/// apply (SERIALIZABLE, a relation or index not where truxe's schema puts it): the caller
/// then runs the statement. Some(false) decides nothing: the caller's general path
/// (require_user, require_grant_rights) decides and raises.
fn may_grant_plainly_direct(
    me: Uuid,
    org: Option<Uuid>,
    role: Option<membership_role>,
    permissions: Option<pg_sys::Datum>,
) -> Option<bool> {
    use crate::index_read as ir;
    if !ir::usable() {
        return None;
    }
    let (Some(org), Some(role), Some(permissions)) = (org, role, permissions) else {
        return Some(false);
    };
    // SAFETY: the argument's jsonb datum, alive for the whole call
    if !unsafe { jsonb_is_empty_array(permissions) } {
        return Some(false);
    }
    // a snapshot of now, as the statement would have run in (a volatile function's SPI
    // statement sees the transaction's latest changes): pushed for the reads, then popped
    // SAFETY: backend-local state; pushed and popped in this frame (an error on the way
    // aborts the transaction, which resets the snapshot stack)
    let plain = unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let plain = grants_plainly_direct(me, org, role);
        pg_sys::PopActiveSnapshot();
        plain?
    };
    if plain {
        lock_org_direct(org);
    }
    Some(plain)
}

/// The reads of [`may_grant_plainly_direct`], in the active snapshot.
fn grants_plainly_direct(me: Uuid, org: Uuid, role: membership_role) -> Option<bool> {
    use crate::index_read::{self as ir, Indexed, Read};
    let nsp = ir::truxe_namespace()?;
    let joined = crate::context::JoinedMemberships::find(nsp)?;
    let closure = ir::relation(nsp, c"org_closure")?;
    let by_descendant = ir::relation(nsp, c"idx_org_closure_descendant")?;
    if !crate::context::user_is_active_direct(me)? {
        return Some(false);
    }
    // the org's ancestors: idx_org_closure_descendant (descendant_id, ancestor_id) INCLUDE
    // (depth)
    let table = Indexed::open(
        closure,
        by_descendant,
        &[c"descendant_id", c"ancestor_id", c"depth"],
    )?;
    let mut scan = table.scan_uuid(org, Read::IndexOnly);
    let mut ancestors = Vec::new();
    while scan.next() {
        ancestors.extend(scan.uuid(2));
    }
    scan.end();
    table.close();
    // me's joined memberships there (effective_role's rows: the org itself, or an
    // ancestor as owner or admin)
    let (mut is_owner, mut is_admin) = (false, false);
    for m in joined.of(me)? {
        if m.org == org || ancestors.contains(&m.org) {
            is_owner |= m.owner;
            is_admin |= m.admin;
        }
    }
    // effective_role's minimum: owner if any row is; admin invites anything but an owner
    Some(is_owner || (is_admin && role != membership_role::owner))
}

/// Whether a jsonb datum is the empty array (`$4 = '[]'::jsonb`).
///
/// # Safety
/// `datum` must be a jsonb datum (possibly toasted or with a short header).
unsafe fn jsonb_is_empty_array(datum: pg_sys::Datum) -> bool {
    // the root container's header (JB_CMASK, JB_FSCALAR, JB_FARRAY of jsonb.h) after the
    // varlena's 4-byte header of the detoasted value
    const JB_CMASK: u32 = 0x0FFF_FFFF;
    const JB_FSCALAR: u32 = 0x1000_0000;
    const JB_FARRAY: u32 = 0x4000_0000;
    // SAFETY: per the contract above; pg_detoast_datum returns a plain 4-byte-header
    // varlena (a copy in the current memory context when it had to expand it)
    unsafe {
        let jb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr());
        let len = (*jb.cast::<u32>() >> 2) as usize; // VARSIZE of a 4-byte header
        if len < 8 {
            return false;
        }
        let header = jb.cast::<u8>().add(4).cast::<u32>().read_unaligned();
        header & JB_CMASK == 0 && header & JB_FARRAY != 0 && header & JB_FSCALAR == 0
    }
}

/// The org's invitation lock, as [`LOCK_ORG`] takes it:
/// `pg_advisory_xact_lock(hashtextextended(org::text, 7331))`. hashtextextended under a
/// deterministic collation (`$1::text` has the database's default collation, which always
/// is) is `hash_any_extended` of the text's bytes; the text is uuid_out's form (lowercase,
/// hyphenated). tests/integration/invitations.rs
/// (`the_direct_rights_path_takes_the_same_org_lock`) holds the two keys together.
fn lock_org_direct(org: Uuid) {
    // SAFETY: PostgreSQL's own function, called with what SQL would pass it
    unsafe {
        pgrx::fcinfo::direct_function_call_as_datum(
            pg_sys::pg_advisory_xact_lock_int8,
            &[Some(pg_sys::Datum::from(org_lock_key(org) as usize))],
        );
    }
}

/// `hashtextextended(org::text, 7331)` (see [`lock_org_direct`]).
fn org_lock_key(org: Uuid) -> i64 {
    // hash_any_extended (common/hashfn.h) is this as a Datum; pgrx's bindings have neither
    unsafe extern "C" {
        fn hash_bytes_extended(k: *const u8, keylen: std::ffi::c_int, seed: u64) -> u64;
    }
    let text = org.to_string();
    // SAFETY: reads `text`'s bytes only
    unsafe { hash_bytes_extended(text.as_ptr(), text.len() as _, 7331) as i64 }
}

/// What checking an invitation token found.
#[derive(Default)]
struct Outcome {
    status: &'static str,
    org_id: Option<Uuid>,
    org_name: Option<String>,
    email: Option<String>,
    role: Option<membership_role>,
    expires_at: Option<TimestampWithTimeZone>,
    user_id: Option<Uuid>,
}

fn status(status: &'static str) -> Outcome {
    Outcome {
        status,
        ..Default::default()
    }
}

/// A pending invitation whose secret matched, locked for the rest of the transaction.
struct Pending {
    id: Uuid,
    org_id: Uuid,
    email: String,
    role: Option<membership_role>,
    expires_at: Option<TimestampWithTimeZone>,
    /// On Citus, the owner of the distributed tables (find()'s reason to act as them);
    /// None on a single node.
    citus_owner: Option<pg_sys::Oid>,
}

/// The invitation, locked, and (column 10) whether its inviter plainly may still send it:
/// what truxe.inviter_still_may_invite answers when the invitation grants no extra
/// permissions (an active inviter whom MAY_GRANT_PLAINLY's rule lets grant its role).
/// False means "ask inviter_still_may_invite", not "no". Reads the hierarchy (org_closure),
/// which only the owner reads: the token functions are SECURITY DEFINER.
const FIND: &str = concat!(
    "SELECT i.org_id, i.email::text, i.role::text, i.token_hash, i.expires_at,
            i.expires_at <= now(), i.accepted_at IS NOT NULL, i.revoked_at IS NOT NULL,
            i.attempts,
            i.invited_by IS NOT NULL AND i.permissions = '[]'::jsonb
            AND EXISTS (SELECT 1 FROM truxe.users u
                         WHERE u.id = i.invited_by AND u.status = 'active')
            AND CASE ",
    effective_role_sql!("i.org_id", "i.invited_by"),
    " WHEN 'owner' THEN true WHEN 'admin' THEN i.role <> 'owner' ELSE false END
       FROM truxe.invitations i WHERE i.id = $1 FOR UPDATE OF i"
);

/// The invitation of `token`, locked, once its secret matched and it is still pending; or
/// the status that ends the call (`invalid`, `locked`, `used`, `revoked`, `expired`). A
/// wrong secret counts an attempt.
fn find(
    c: &mut SpiClient<'_>,
    token: Option<&str>,
) -> Result<Result<Pending, Outcome>, TruxeError> {
    let Some((id, secret)) = token.and_then(parse_token) else {
        return Ok(Err(status("invalid")));
    };
    // on Citus (invitations distributed by org_id, docs/scaling.md) a row lock across
    // shards is refused: the org first, without a lock, then the row by (org_id, id). And
    // the invitation is read and written as the owner, as truxe writes the org's audit
    // rows: Citus refuses a transaction that touches one org's shards as two roles
    let owner = crate::claim::distributed_audit_owner();
    let _as_owner = owner.map(crate::apptables::ActingAs::switch_to);
    // with the inviter's authority in the plain case (inviter_still_may_invite below); on
    // Citus that question (which reads the coordinator's users and org_closure) is left to
    // inviter_still_may_invite: column 10 is false there
    let rows = if owner.is_some() {
        let org = plans::first_value::<Uuid>(plans::run(
            c,
            "SELECT org_id FROM truxe.invitations WHERE id = $1",
            &[UUID],
            &[id.into()],
        )?)?;
        let Some(org) = org else {
            return Ok(Err(status("invalid")));
        };
        plans::run(
            c,
            "SELECT org_id, email::text, role::text, token_hash, expires_at, expires_at <= now(),
                    accepted_at IS NOT NULL, revoked_at IS NOT NULL, attempts, false
               FROM truxe.invitations WHERE org_id = $2 AND id = $1 FOR UPDATE",
            &[UUID, UUID],
            &[id.into(), org.into()],
        )?
    } else {
        plans::run(c, FIND, &[UUID], &[id.into()])?
    };
    if rows.is_empty() {
        return Ok(Err(status("invalid")));
    }
    let row = rows.first();
    let org_id = row.get::<Uuid>(1)?;
    let email = row.get::<String>(2)?.unwrap_or_default();
    let role = row
        .get::<String>(3)?
        .and_then(|r| membership_role::from_label(&r));
    let token_hash = row.get::<String>(4)?.unwrap_or_default();
    let expires_at = row.get::<TimestampWithTimeZone>(5)?;
    let expired = row.get::<bool>(6)? == Some(true);
    let used = row.get::<bool>(7)? == Some(true);
    let revoked = row.get::<bool>(8)? == Some(true);
    let inviter_plainly_may = row.get::<bool>(10)? == Some(true);
    let attempts = row.get::<i32>(9)?.unwrap_or(MAX_ATTEMPTS);
    if attempts >= MAX_ATTEMPTS {
        return Ok(Err(status("locked")));
    }
    if !secret_matches(&secret, &token_hash) {
        plans::run(
            c,
            "UPDATE truxe.invitations SET attempts = attempts + 1
              WHERE org_id = $3 AND id = $1 AND attempts < $2",
            &[UUID, INT4, UUID],
            &[id.into(), MAX_ATTEMPTS.into(), org_id.into()],
        )?;
        return Ok(Err(status("invalid")));
    }
    let Some(org_id) = org_id else {
        return Ok(Err(status("invalid")));
    };
    for (gone, why) in [(used, "used"), (revoked, "revoked"), (expired, "expired")] {
        if gone {
            return Ok(Err(Outcome {
                org_id: Some(org_id),
                ..status(why)
            }));
        }
    }
    // an invitation carries its inviter's authority: one its inviter could no longer send
    // (removed, suspended, deleted, demoted) is revoked now. The plain case was answered by
    // FIND; every other one by inviter_still_may_invite, the rule's one statement
    let still = inviter_plainly_may
        || plans::first_value::<bool>(plans::run(
            c,
            "SELECT truxe.inviter_still_may_invite($1)",
            &[UUID],
            &[id.into()],
        )?)? == Some(true);
    if !still {
        plans::run(
            c,
            "UPDATE truxe.invitations SET revoked_at = now() WHERE org_id = $1 AND id = $2",
            &[UUID, UUID],
            &[org_id.into(), id.into()],
        )?;
        return Ok(Err(Outcome {
            org_id: Some(org_id),
            ..status("revoked")
        }));
    }
    Ok(Ok(Pending {
        id,
        org_id,
        email,
        role,
        expires_at,
        citus_owner: owner,
    }))
}

/// The invitation of `token` without using it: status `valid` (with the org, its name, the
/// e-mail, the role and the expiry), `invalid`, `expired`, `used`, `revoked` or `locked`;
/// a wrong secret counts as an attempt (5 lock it). For a confirm page on GET, so that mail
/// scanners that open every link do not accept it. service_account only.
#[pg_extern(
    sql = r#"
CREATE FUNCTION truxe.inspect_invitation(token text)
RETURNS TABLE(status text, org_id uuid, org_name text, email citext,
              role truxe.membership_role, expires_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, truxe, pg_temp
ROWS 1 AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#,
    requires = ["invitations"]
)]
#[allow(clippy::type_complexity)]
fn inspect_invitation(
    token: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(org_id, Option<Uuid>),
        name!(org_name, Option<String>),
        name!(email, Option<String>),
        name!(role, Option<membership_role>),
        name!(expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    let o = Spi::connect_mut(|c| -> Result<Outcome, TruxeError> {
        let p = match find(c, token)? {
            Ok(p) => p,
            Err(o) => return Ok(o),
        };
        let name = plans::run(
            c,
            "SELECT name FROM truxe.organizations WHERE id = $1",
            &[UUID],
            &[p.org_id.into()],
        )?
        .first()
        .get_one::<String>()?;
        Ok(Outcome {
            status: "valid",
            org_id: Some(p.org_id),
            org_name: name,
            email: Some(p.email),
            role: p.role,
            expires_at: p.expires_at,
            user_id: None,
        })
    })
    .unwrap_or_raise();
    TableIterator::once((
        o.status.to_string(),
        o.org_id,
        o.org_name,
        o.email,
        o.role,
        o.expires_at,
    ))
}

/// Accepts an invitation, once the person proved the e-mail (the link reached them). The
/// user is `user_id` when given (its e-mail must be the invitation's: otherwise
/// `email_mismatch`, and nothing is used up), else the user with the invitation's e-mail,
/// created active and verified when absent (a pending one is activated and verified). The
/// membership becomes joined with the invitation's role and permissions (a pending
/// membership from invite_member is joined and takes them). Exactly one row; status
/// `accepted`, `already_member` (a joined member: the invitation is used up, the
/// membership unchanged), `invalid`, `expired`, `used`, `revoked`, `locked`,
/// `email_mismatch`, or `rejected` (a suspended or deleted user: nothing is used up). Writes
/// `invitation.accepted` and (through the memberships trigger) `membership.joined`.
/// service_account only.
#[pg_extern(
    sql = r#"
CREATE FUNCTION truxe.accept_invitation_token(token text, user_id uuid DEFAULT NULL)
RETURNS TABLE(status text, org_id uuid, user_id uuid)
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, truxe, pg_temp
ROWS 1 AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#,
    requires = ["invitations"]
)]
fn accept_invitation_token(
    token: Option<&str>,
    user_id: Option<Uuid>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(org_id, Option<Uuid>),
        name!(user_id, Option<Uuid>),
    ),
> {
    let o = accept(token, user_id).unwrap_or_raise();
    TableIterator::once((o.status.to_string(), o.org_id, o.user_id))
}

fn accept(token: Option<&str>, user_id: Option<Uuid>) -> Result<Outcome, TruxeError> {
    Spi::connect_mut(|c| {
        let p = match find(c, token)? {
            Ok(p) => p,
            Err(o) => return Ok(o),
        };
        let org_id = Some(p.org_id);
        if let Some(given) = user_id {
            let same = citext_sql(
                c,
                "SELECT 1 FROM truxe.users u
                  WHERE u.id = $1 AND u.email OPERATOR({citext}.=) $2::{citext}.citext",
            )?;
            if plans::run(
                c,
                same,
                &[UUID, TEXT],
                &[given.into(), p.email.clone().into()],
            )?
            .is_empty()
            {
                return Ok(Outcome {
                    org_id,
                    user_id: Some(given),
                    ..status("email_mismatch")
                });
            }
        }
        // the usual case, a new e-mail: the user created, the invitation used up and the
        // membership written in one statement (no row when the e-mail has a user)
        // (not on Citus: the invitation is on a worker, users and memberships on the
        // coordinator, which one data-modifying statement cannot span)
        if user_id.is_none() && p.citus_owner.is_none() {
            let held = audit::Held::begin();
            let joined = plans::first_value::<Uuid>(plans::run(
                c,
                NEW_USER_JOINS,
                &[UUID, TEXT, UUID],
                &[p.org_id.into(), p.email.clone().into(), p.id.into()],
            )?)?;
            if let Some(user) = joined {
                return accepted(Some(held), org_id, &p.id, user, "accepted");
            }
        }
        // the user of the e-mail (the one given, when it matched), created or activated
        let (user, user_status, created) = login_user(c, &p.email)?;
        if user_status != "active" {
            return Ok(Outcome {
                org_id,
                user_id: Some(user),
                ..status("rejected")
            });
        }
        // a user this call created has no membership (its row is not yet visible to anyone
        // else, so nothing can refer to it): no lookup
        let joined = if created {
            None
        } else {
            plans::first_value::<bool>(plans::run(
                c,
                "SELECT joined_at IS NOT NULL FROM truxe.memberships
                  WHERE org_id = $1 AND user_id = $2 FOR UPDATE",
                &[UUID, UUID],
                &[p.org_id.into(), user.into()],
            )?)?
        };
        // the invitation used up and the membership written in one statement: the
        // membership takes its role and permissions from the updated invitation row
        let (sql, outcome) = match joined {
            Some(true) => (
                "UPDATE truxe.invitations SET accepted_at = now(), accepted_by = $2
                  WHERE org_id = $1 AND id = $3",
                "already_member",
            ),
            Some(false) => (
                "WITH i AS (UPDATE truxe.invitations SET accepted_at = now(), accepted_by = $2
                             WHERE org_id = $1 AND id = $3 RETURNING role, permissions)
                 UPDATE truxe.memberships m
                    SET joined_at = now(), role = i.role, permissions = i.permissions
                   FROM i WHERE m.org_id = $1 AND m.user_id = $2",
                "accepted",
            ),
            None => (
                "WITH i AS (UPDATE truxe.invitations SET accepted_at = now(), accepted_by = $2
                             WHERE org_id = $1 AND id = $3
                             RETURNING org_id, role, permissions, invited_by, created_at)
                 INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by,
                                                invited_at, joined_at)
                 SELECT i.org_id, $2, i.role, i.permissions,
                        CASE WHEN i.invited_by = $2 THEN NULL ELSE i.invited_by END,
                        i.created_at, now()
                   FROM i",
                "accepted",
            ),
        };
        if let Some(owner) = p.citus_owner {
            // on Citus the invitation is on a worker and memberships on the coordinator,
            // which one data-modifying statement cannot span (nor may its RETURNING cast):
            // the invitation's values read under find()'s lock and the invitation used up,
            // as the owner (find()'s reason), then the membership from those values
            let (role, permissions, invited_by, invited_at) = {
                let _as_owner = crate::apptables::ActingAs::switch_to(owner);
                let values = plans::run(
                    c,
                    "SELECT role::text, permissions::text, invited_by, created_at
                       FROM truxe.invitations WHERE org_id = $1 AND id = $2",
                    &[UUID, UUID],
                    &[p.org_id.into(), p.id.into()],
                )?;
                let row = values.first();
                let values = (
                    row.get::<String>(1)?,
                    row.get::<String>(2)?,
                    row.get::<Uuid>(3)?,
                    row.get::<TimestampWithTimeZone>(4)?,
                );
                plans::run(
                    c,
                    "UPDATE truxe.invitations SET accepted_at = now(), accepted_by = $2
                      WHERE org_id = $1 AND id = $3",
                    &[UUID, UUID, UUID],
                    &[p.org_id.into(), user.into(), p.id.into()],
                )?;
                values
            };
            match joined {
                Some(true) => {}
                Some(false) => {
                    plans::run(
                        c,
                        "UPDATE truxe.memberships
                            SET joined_at = now(), role = $3::truxe.membership_role,
                                permissions = $4::jsonb
                          WHERE org_id = $1 AND user_id = $2",
                        &[UUID, UUID, TEXT, TEXT],
                        &[
                            p.org_id.into(),
                            user.into(),
                            role.into(),
                            permissions.into(),
                        ],
                    )?;
                }
                None => {
                    plans::run(
                        c,
                        "INSERT INTO truxe.memberships (org_id, user_id, role, permissions,
                                                        invited_by, invited_at, joined_at)
                         VALUES ($1, $2, $3::truxe.membership_role, $4::jsonb,
                                 CASE WHEN $5 = $2 THEN NULL ELSE $5 END, $6, now())",
                        &[UUID, UUID, TEXT, TEXT, UUID, TIMESTAMPTZ],
                        &[
                            p.org_id.into(),
                            user.into(),
                            role.into(),
                            permissions.into(),
                            invited_by.into(),
                            invited_at.into(),
                        ],
                    )?;
                }
            }
            accepted(None, org_id, &p.id, user, outcome)
        } else {
            let held = audit::Held::begin();
            plans::run(
                c,
                sql,
                &[UUID, UUID, UUID],
                &[p.org_id.into(), user.into(), p.id.into()],
            )?;
            accepted(Some(held), org_id, &p.id, user, outcome)
        }
    })
}

/// The end of an acceptance: `invitation.accepted` written (audit::record); on a single
/// node ahead of the rows `held` holds back (the triggers' user.created and
/// membership.joined of the statement that used the invitation up), all in one INSERT (on
/// Citus nothing is held: audit rows are written there as the table's owner, by
/// audit::write itself); the outcome returned.
fn accepted(
    held: Option<audit::Held>,
    org_id: Option<Uuid>,
    invitation: &Uuid,
    user: Uuid,
    outcome: &'static str,
) -> Result<Outcome, TruxeError> {
    let record = || {
        audit::record(
            org_id,
            "invitation.accepted",
            "invitation",
            &invitation.to_string(),
            json!({ "user_id": user.to_string(), "status": outcome }),
            &audit::Client::default(),
        )
    };
    match held {
        Some(held) => held.write_after(record)?,
        None => record()?,
    }
    Ok(Outcome {
        org_id,
        user_id: Some(user),
        ..status(outcome)
    })
}

/// For an invitation ($1 org, $3 id) found pending and locked, whose e-mail ($2) has no user:
/// the user created (active, verified), the invitation used up by them and their
/// membership written with its role and permissions, in one statement; the user's id. No
/// row when the e-mail has a user (ON CONFLICT does nothing, so neither does the rest):
/// then login_user finds it. The user is inserted first (the UPDATE reads `u`, the INSERT
/// reads `i`); the foreign keys to it are checked at the end of the statement, where its
/// row is visible.
const NEW_USER_JOINS: &str = "WITH u AS (
       INSERT INTO truxe.users (email, status, email_verified) VALUES ($2, 'active', true)
       ON CONFLICT (email) DO NOTHING RETURNING id),
     i AS (
       UPDATE truxe.invitations v SET accepted_at = now(), accepted_by = u.id FROM u
        WHERE v.org_id = $1 AND v.id = $3
       RETURNING v.org_id, v.role, v.permissions, v.invited_by, v.created_at, u.id AS user_id)
     INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by, invited_at,
                                    joined_at)
     SELECT i.org_id, i.user_id, i.role, i.permissions,
            CASE WHEN i.invited_by = i.user_id THEN NULL ELSE i.invited_by END,
            i.created_at, now()
       FROM i
     RETURNING user_id";

#[cfg(test)]
mod unit {
    /// The inline rights query is truxe.effective_role's, word for word (whitespace aside):
    /// the invitation paths may not grow a rule of their own.
    #[test]
    fn the_inline_rights_query_is_effective_roles() {
        let squash = |s: &str| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace("( ", "(")
                .replace(" )", ")")
        };
        let orgs = include_str!("../sql/orgs.sql");
        let start = orgs
            .find("CREATE FUNCTION truxe.effective_role(")
            .expect("effective_role in sql/orgs.sql");
        let body = &orgs[start..];
        let body = &body[body.find("RETURN ").unwrap() + "RETURN ".len()..];
        let body = &body[..body.find(';').unwrap()];
        assert_eq!(squash(body), squash(effective_role_sql!("org", "who")));
    }

    #[test]
    fn ttl_bounds_are_one_hour_and_thirty_days() {
        assert_eq!(super::MIN_TTL_MICROS, 3_600_000_000);
        assert_eq!(super::MAX_TTL_MICROS, 2_592_000_000_000);
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The direct lock key is the SQL path's (LOCK_ORG), for a few orgs.
    #[pg_test]
    fn the_direct_org_lock_key_is_lock_orgs() {
        for _ in 0..20 {
            let org = crate::crypto::new_uuid().unwrap();
            let sql = Spi::get_one_with_args::<i64>(
                "SELECT pg_catalog.hashtextextended($1::text, 7331)",
                &[org.into()],
            )
            .unwrap();
            assert_eq!(sql, Some(super::org_lock_key(org)));
        }
    }

    /// `$4 = '[]'::jsonb`, as the direct rights check reads it.
    #[pg_test]
    fn only_the_empty_array_is_the_empty_array() {
        for (json, empty) in [
            ("[]", true),
            ("[ ]", true),
            ("[1]", false),
            ("[[]]", false),
            ("{}", false),
            ("5", false),
            ("\"[]\"", false),
            ("null", false),
        ] {
            let datum = Spi::get_one_with_args::<pgrx::JsonB>("SELECT $1::jsonb", &[json.into()])
                .unwrap()
                .unwrap()
                .into_datum()
                .unwrap();
            // SAFETY: a jsonb datum, alive for this iteration
            assert_eq!(
                unsafe { super::jsonb_is_empty_array(datum) },
                empty,
                "{json}"
            );
        }
    }
}
