//! Request context: the request settings, `set_context`, and the org sets every RLS policy
//! is built on — which organisations the acting identity (src/identity.rs) may see. The org
//! sets run one cached plan each; the request-metadata getters are SQL (sql/context.sql).
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::plans;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

pgrx::extension_sql_file!(
    "../sql/context.sql",
    name = "context",
    requires = [
        "schema",
        identity::current_user_id,
        identity::current_org_id,
        accessible_org_ids,
        admin_org_ids,
        invited_org_ids
    ]
);

/// Whether `role` is trusted as the backend: a superuser, or a role with the privileges of
/// service_account. Callers choose which role to ask about: the current user
/// (`GetUserId`, which a SECURITY DEFINER function changes) or the role the statement runs
/// as (`GetOuterUserId`: the login or its SET ROLE).
pub(crate) fn is_trusted_role(role: pg_sys::Oid) -> bool {
    // SAFETY: plain role lookups; missing_ok for the role name.
    unsafe {
        if pg_sys::superuser_arg(role) {
            return true;
        }
        let service = pg_sys::get_role_oid(c"service_account".as_ptr(), true);
        service != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, service)
    }
}

/// The request settings (docs/reference.md, "Settings"), named here once for the Rust code.
/// sql/context.sql names them too (the request_* getters); tests hold both to the
/// documented names: `audit::every_event_writes_exactly_one_row` (truxe's rows, parsed
/// here) and `rls::app_audit_rows_take_the_request_context_from_the_settings` (an app's
/// rows, parsed by SQL).
pub(crate) const CURRENT_USER_ID: &CStr = c"app.current_user_id";
pub(crate) const CURRENT_ORG_ID: &CStr = c"app.current_org_id";
pub(crate) const REQUEST_IP: &CStr = c"app.ip";
pub(crate) const REQUEST_USER_AGENT: &CStr = c"app.user_agent";
pub(crate) const REQUEST_ID: &CStr = c"app.request_id";
/// What PostgREST sets: the verified JWT's claims, as JSON.
pub(crate) const JWT_CLAIMS: &CStr = c"request.jwt.claims";

/// True when the role the statement runs as — the login or its SET ROLE, which a SECURITY
/// DEFINER function does not change — is a superuser or has service_account's privileges.
pub(crate) fn service_caller() -> bool {
    // SAFETY: GetOuterUserId reads backend-local state and has no preconditions.
    is_trusted_role(unsafe { pg_sys::GetOuterUserId() })
}

/// The value of setting `name`, or None when it is unset or not UTF-8. Never raises.
pub(crate) fn setting_text(name: &CStr) -> Option<String> {
    // SAFETY: missing_ok = true returns NULL for an unknown setting instead of raising;
    // the returned string is owned by the GUC machinery and copied before we return.
    let raw = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if raw.is_null() {
        return None;
    }
    // SAFETY: a non-NULL GUC value is a NUL-terminated string.
    unsafe { CStr::from_ptr(raw) }
        .to_str()
        .ok()
        .map(str::to_owned)
}

/// The uuid in setting `name`, or None when it is unset, empty or not a uuid.
pub(crate) fn setting_uuid(name: &CStr) -> Option<pgrx::Uuid> {
    parse_uuid(&setting_text(name)?)
}

/// Parses the uuid forms Postgres accepts for a context setting; anything else is None.
pub(crate) fn parse_uuid(text: &str) -> Option<pgrx::Uuid> {
    let text = text.trim();
    if text.is_empty() || text.len() > 45 {
        return None;
    }
    uuid::Uuid::parse_str(text)
        .ok()
        .map(|u| pgrx::Uuid::from_bytes(*u.as_bytes()))
}

/// The memberships every org set starts from: those of the acting user (`$1`), and none at
/// all unless that user is `active` — a suspended, deleted or pending user's context opens
/// no org, whoever sets it (the EXISTS is uncorrelated: one probe per statement).
macro_rules! acting_members {
    () => {
        "SELECT m.org_id, m.role, m.joined_at FROM truxe.memberships m
          WHERE m.user_id = $1
            AND EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = $1 AND u.status = 'active')"
    };
}
pub(crate) use acting_members;

/// Orgs with a pending (not yet accepted) invitation for the acting user.
const INVITED_ORGS: &str = concat!(
    "SELECT org_id FROM (",
    acting_members!(),
    " AND m.joined_at IS NULL) pending"
);

/// SQL condition: the acting user (`$1`) is a joined owner or admin of org `$2`, directly
/// or through an ancestor — over the rows of `mine` ([`acting_members`], joined only).
macro_rules! admin_of_org {
    () => {
        "(EXISTS (SELECT 1 FROM mine WHERE mine.org_id = $2 AND mine.role IN ('owner', 'admin'))
          OR EXISTS (SELECT 1 FROM mine JOIN truxe.org_closure c ON c.ancestor_id = mine.org_id
                      WHERE c.descendant_id = $2 AND mine.role IN ('owner', 'admin')))"
    };
}

/// With an acting org (`$2`): that org, when the user may act in it (a joined member, or an
/// owner/admin of it or of an ancestor), plus its descendants when the user is its owner or
/// admin (directly or through an ancestor).
const ACCESSIBLE_IN_ORG: &str = concat!(
    "WITH mine AS (",
    acting_members!(),
    " AND m.joined_at IS NOT NULL)
  SELECT $2 WHERE EXISTS (SELECT 1 FROM mine WHERE mine.org_id = $2) OR ",
    admin_of_org!(),
    "
  UNION ALL
  SELECT c.descendant_id FROM truxe.org_closure c WHERE c.ancestor_id = $2 AND ",
    admin_of_org!()
);

/// With an acting org (`$2`): that org and its descendants when the user is its owner or
/// admin (directly or through an ancestor); nothing otherwise.
const ADMIN_IN_ORG: &str = concat!(
    "WITH mine AS (",
    acting_members!(),
    " AND m.joined_at IS NOT NULL)
  SELECT $2 WHERE ",
    admin_of_org!(),
    "
  UNION ALL
  SELECT c.descendant_id FROM truxe.org_closure c WHERE c.ancestor_id = $2 AND ",
    admin_of_org!()
);

/// The org sets RLS policies are built on.
#[derive(Clone, Copy)]
pub(crate) enum OrgSet {
    Accessible,
    Admin,
    Invited,
}

/// The orgs of `set` for the acting identity (src/identity.rs). With an acting org,
/// Accessible and Admin narrow to that org (plus descendants for its owners/admins); an
/// API key is a joined member of its org and nothing else. Empty when nobody is acting.
/// Read-only, in the calling statement's snapshot.
pub(crate) fn acting_org_ids(set: OrgSet) -> Result<Vec<pgrx::Uuid>, TruxeError> {
    let Some(who) = crate::identity::acting() else {
        return Ok(Vec::new());
    };
    if who.id.api_key.is_some() {
        return Ok(match set {
            OrgSet::Accessible => who.id.org.into_iter().collect(),
            OrgSet::Admin | OrgSet::Invited => Vec::new(),
        });
    }
    let Some(user) = who.id.user else {
        return Ok(Vec::new());
    };
    match (set, who.id.org) {
        (OrgSet::Accessible, None) => orgs_and_descendants(user, false),
        (OrgSet::Admin, None) => orgs_and_descendants(user, true),
        (OrgSet::Accessible, Some(org)) => user_org_ids(ACCESSIBLE_IN_ORG, user, Some(org)),
        (OrgSet::Admin, Some(org)) => user_org_ids(ADMIN_IN_ORG, user, Some(org)),
        (OrgSet::Invited, _) => user_org_ids(INVITED_ORGS, user, None),
    }
}

/// The acting user's joined memberships (`admin_only`: those as owner or admin) and every
/// descendant of the orgs where the user is a joined owner or admin, deduplicated here;
/// none unless the user is active. One plan without a CTE or a hashed UNION: executor
/// start-up is most of what this costs (bench/README.md, "RLS list latency").
fn orgs_and_descendants(user: pgrx::Uuid, admin_only: bool) -> Result<Vec<pgrx::Uuid>, TruxeError> {
    let mut ids = match flat_org_ids_direct(user, admin_only) {
        Some(ids) => ids,
        None => user_org_ids(
            if admin_only {
                ADMIN_FLAT
            } else {
                ACCESSIBLE_FLAT
            },
            user,
            None,
        )?,
    };
    ids.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    ids.dedup();
    Ok(ids)
}

/// The acting user's (`$1`) joined memberships (those as owner or admin only, when
/// `$role_filter`), and the descendants of those as owner or admin; nothing unless the user
/// is active (an uncorrelated EXISTS: one probe, a one-time filter). May repeat an id.
macro_rules! flat_org_ids {
    ($role_filter:literal) => {
        concat!(
            "SELECT x.org_id FROM (
               SELECT m.org_id FROM truxe.memberships m
                WHERE m.user_id = $1 AND m.joined_at IS NOT NULL",
            $role_filter,
            "
               UNION ALL
               SELECT c.descendant_id FROM truxe.memberships m
                 JOIN truxe.org_closure c ON c.ancestor_id = m.org_id
                WHERE m.user_id = $1 AND m.joined_at IS NOT NULL AND m.role IN ('owner', 'admin')) x
             WHERE EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = $1 AND u.status = 'active')"
        )
    };
}
const ACCESSIBLE_FLAT: &str = flat_org_ids!("");
const ADMIN_FLAT: &str = flat_org_ids!(" AND m.role IN ('owner', 'admin')");

/// The rows of [`ACCESSIBLE_FLAT`] (or, `admin_only`, [`ADMIN_FLAT`]) for `user`, read
/// through the three indexes that statement's plan uses, without SPI or the executor
/// (src/index_read.rs): the policies call this once per statement, and through SPI it
/// spent more time starting the plan and evaluating its quals than reading its few index
/// pages (bench/README.md, "Performance work after the 0.2 run"). Same rows, same snapshot,
/// same locks; may repeat an id. None when the direct read does not apply (SERIALIZABLE, no
/// active snapshot) or a relation, index, column or enum label is not where truxe's schema
/// puts it: the caller then runs the SQL. users, memberships (on Citus, its coordinator's
/// copy) and org_closure are plain tables on this node (docs/scaling.md); a placement that
/// moves them off the coordinator must come back to the SQL.
fn flat_org_ids_direct(user: pgrx::Uuid, admin_only: bool) -> Option<Vec<pgrx::Uuid>> {
    use crate::index_read::{self as ir, Indexed, Read};
    if !ir::usable() {
        return None;
    }
    let nsp = ir::truxe_namespace()?;
    let joined = JoinedMemberships::find(nsp)?;
    let closure = ir::relation(nsp, c"org_closure")?;
    let by_ancestor = ir::relation(nsp, c"org_closure_pkey")?;

    // nothing unless the user is active
    if !user_is_active_direct(user)? {
        return Some(Vec::new());
    }
    let mut ids = Vec::new();
    let mut administered = Vec::new();
    for m in joined.of(user)? {
        let is_admin = m.owner || m.admin;
        if is_admin {
            administered.push(m.org);
        }
        if is_admin || !admin_only {
            ids.push(m.org);
        }
    }
    // their descendants: org_closure_pkey (ancestor_id, descendant_id) INCLUDE (depth)
    if !administered.is_empty() {
        let table = Indexed::open(
            closure,
            by_ancestor,
            &[c"ancestor_id", c"descendant_id", c"depth"],
        )?;
        for org in administered {
            let mut scan = table.scan_uuid(org, Read::IndexOnly);
            while scan.next() {
                ids.extend(scan.uuid(2));
            }
            scan.end();
        }
        table.close();
    }
    Some(ids)
}

/// The joined memberships of a user, read index-only through `idx_memberships_user_org`
/// (user_id, org_id) INCLUDE (role, joined_at) in the active snapshot (on Citus, through the
/// same index of the coordinator's copy: src/distribute.rs): the read that
/// [`flat_org_ids_direct`] and invitation's direct rights check (src/invitation.rs) share.
pub(crate) struct JoinedMemberships {
    memberships: pg_sys::Oid,
    by_user: pg_sys::Oid,
    owner: pg_sys::Oid,
    admin: pg_sys::Oid,
}

/// A joined membership: its org, and whether its role is owner or admin.
pub(crate) struct Joined {
    pub org: pgrx::Uuid,
    pub owner: bool,
    pub admin: bool,
}

impl JoinedMemberships {
    /// The table, its index and the two role labels; None when one is not where truxe's
    /// schema puts it.
    pub(crate) fn find(nsp: pg_sys::Oid) -> Option<Self> {
        use crate::index_read as ir;
        let (table, index) = crate::distribute::memberships_by_user();
        Some(Self {
            memberships: ir::relation(nsp, table)?,
            by_user: ir::relation(nsp, index)?,
            owner: ir::enum_label(nsp, c"membership_role", c"owner")?,
            admin: ir::enum_label(nsp, c"membership_role", c"admin")?,
        })
    }

    /// `user`'s joined memberships (a pending one, without `joined_at`, is not); None when
    /// the index's columns are not where truxe's schema puts them.
    pub(crate) fn of(&self, user: pgrx::Uuid) -> Option<Vec<Joined>> {
        use crate::index_read::{Indexed, Read};
        let table = Indexed::open(
            self.memberships,
            self.by_user,
            &[c"user_id", c"org_id", c"role", c"joined_at"],
        )?;
        let mut scan = table.scan_uuid(user, Read::IndexOnly);
        let mut rows = Vec::new();
        while scan.next() {
            let (Some(org), Some(role), false) = (scan.uuid(2), scan.oid(3), scan.is_null(4))
            else {
                continue;
            };
            rows.push(Joined {
                org,
                owner: role == self.owner,
                admin: role == self.admin,
            });
        }
        scan.end();
        table.close();
        Some(rows)
    }
}

/// Whether `user` exists and is active, read through `users_pkey` in the calling
/// statement's snapshot (src/index_read.rs: a heap read, which takes SERIALIZABLE's
/// predicate locks itself). None when there is no active snapshot, or a relation, column
/// or enum label is not where truxe's schema puts it.
pub(crate) fn user_is_active_direct(user: pgrx::Uuid) -> Option<bool> {
    use crate::index_read::{self as ir, Indexed, Read};
    // SAFETY: backend-local state, no preconditions
    if !unsafe { pgrx::pg_sys::ActiveSnapshotSet() } {
        return None;
    }
    let nsp = ir::truxe_namespace()?;
    let users = ir::relation(nsp, c"users")?;
    let status = ir::column(users, c"status")? as usize;
    let active = ir::enum_label(nsp, c"user_status", c"active")?;
    let table = Indexed::open(users, ir::relation(nsp, c"users_pkey")?, &[c"id"])?;
    let mut scan = table.scan_uuid(user, Read::Heap(status));
    let mut is_active = false;
    while scan.next() {
        is_active |= scan.oid(status) == Some(active);
    }
    scan.end();
    table.close();
    Some(is_active)
}

/// 42501 naming `user` and its `status` (as text) unless the status is `active`.
pub(crate) fn require_active(user: pgrx::Uuid, status: Option<String>) -> Result<(), TruxeError> {
    match status.as_deref() {
        Some("active") => Ok(()),
        _ => fail(
            Sqlstate::InsufficientPrivilege,
            format!("user {user} is {}, not active", status.unwrap_or_default()),
        ),
    }
}

/// The org ids `sql` lists for `user` (`$1`) and, when the text takes it, `org` (`$2`).
/// Read-only, in the calling statement's snapshot.
pub(crate) fn user_org_ids(
    sql: &'static str,
    user: pgrx::Uuid,
    org: Option<pgrx::Uuid>,
) -> Result<Vec<pgrx::Uuid>, TruxeError> {
    let ids = Spi::connect(|client| {
        let rows = match org {
            None => plans::read(client, sql, &[plans::UUID], &[user.into()])?,
            Some(org) => plans::read(
                client,
                sql,
                &[plans::UUID, plans::UUID],
                &[user.into(), org.into()],
            )?,
        };
        rows.map(|row| row.get::<pgrx::Uuid>(1))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(ids.into_iter().flatten().collect())
}

/// Orgs the acting identity may see: with no acting org, the user's joined memberships plus
/// every descendant of an org where the user is owner or admin; with an acting org, that
/// org (plus its descendants for its owners/admins); an API key's org for a key. Empty
/// when nobody is acting. SECURITY DEFINER: RLS policies call it, so it reads memberships
/// past them (no recursion).
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn accessible_org_ids() -> Vec<pgrx::Uuid> {
    acting_org_ids(OrgSet::Accessible).unwrap_or_raise()
}

/// Orgs where the acting user holds an administrator's view (audit logs, usage, org
/// updates): joined owner/admin orgs and all their descendants, narrowed to the acting
/// org's subtree when one is set. Empty when nobody is acting or for an API key.
/// SECURITY DEFINER, as accessible_org_ids.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn admin_org_ids() -> Vec<pgrx::Uuid> {
    acting_org_ids(OrgSet::Admin).unwrap_or_raise()
}

/// Orgs that have a pending invitation for the acting user — whatever the acting org: the
/// invitee may read the org and the invitation, nothing else of it. Empty when nobody is
/// acting. SECURITY DEFINER, as accessible_org_ids.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn invited_org_ids() -> Vec<pgrx::Uuid> {
    acting_org_ids(OrgSet::Invited).unwrap_or_raise()
}

/// SQL condition: user `$user` is active and may act in org `$org` — a joined member of
/// it, or a joined owner/admin of one of its ancestors (truxe.org_closure). The lookups are
/// index scans: memberships (user_id, org_id) INCLUDE (role, joined_at) and org_closure
/// (descendant_id, ancestor_id). One text for sessions, set_context and switch_org.
macro_rules! org_access {
    ($user:literal, $org:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM truxe.memberships am WHERE am.user_id = ",
            $user,
            " AND am.org_id = ",
            $org,
            " AND am.joined_at IS NOT NULL)",
            " OR EXISTS (SELECT 1 FROM truxe.org_closure ac JOIN truxe.memberships am",
            " ON am.user_id = ",
            $user,
            " AND am.org_id = ac.ancestor_id",
            " WHERE ac.descendant_id = ",
            $org,
            " AND am.joined_at IS NOT NULL AND am.role IN ('owner', 'admin')))"
        )
    };
}
pub(crate) use org_access;

/// Whether active user `user` may act in `org` ([`org_access`]). Read-only.
pub(crate) fn may_act_in(user: pgrx::Uuid, org: pgrx::Uuid) -> Result<bool, TruxeError> {
    Spi::connect(|c| {
        let row = plans::read(
            c,
            concat!(
                "SELECT EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = $1 AND u.status = 'active') AND ",
                org_access!("$1", "$2")
            ),
            &[plans::UUID, plans::UUID],
            &[user.into(), org.into()],
        )?;
        Ok(row.first().get_one::<bool>()? == Some(true))
    })
}

/// The orgs `user` loses when their membership of `org` ends: `org` itself and each
/// descendant they may no longer act in ([`org_access`], read in the statement's snapshot,
/// where the membership is already gone). What the access-ending triggers revoke on Citus,
/// decided on the coordinator (a query on a shard cannot read memberships or org_closure).
pub(crate) fn orgs_lost_with(
    org: Option<pgrx::Uuid>,
    user: Option<pgrx::Uuid>,
) -> Result<Vec<pgrx::Uuid>, TruxeError> {
    Ok(plans::run_once(
        concat!(
            "SELECT $1::uuid
             UNION
             SELECT c.descendant_id FROM truxe.org_closure c
              WHERE c.ancestor_id = $1 AND NOT ",
            org_access!("$2", "c.descendant_id")
        ),
        &[plans::UUID, plans::UUID],
        &[org.into(), user.into()],
        |t| {
            t.into_iter()
                .filter_map(|r| r.get::<pgrx::Uuid>(1).transpose())
                .collect::<Result<Vec<_>, _>>()
        },
    )?)
}

/// The acting user, who must be active: truxe.require_user() (sql/orgs.sql), the one place
/// that states the 42501 "no current user" error and its hint.
pub(crate) fn require_user() -> Result<pgrx::Uuid, TruxeError> {
    Spi::connect(|c| {
        let row = plans::read(c, "SELECT truxe.require_user()", &[], &[])?;
        row.first().get_one::<pgrx::Uuid>()?.ok_or_else(|| {
            TruxeError::new(Sqlstate::Internal, "truxe.require_user() returned NULL")
        })
    })
}

/// Sets setting `name` to `value` (empty: cleared) with the privileges of `context`, from
/// `source`, for the session (`GUC_ACTION_SET`) or until the transaction or savepoint ends
/// (`GUC_ACTION_LOCAL`): what `set_config()` and `SET LOCAL` do. Raises what PostgreSQL
/// raises (an ERROR unwinds through the caller's frames).
pub(crate) fn set_option(
    name: &CStr,
    value: &str,
    context: pg_sys::GucContext::Type,
    source: pg_sys::GucSource::Type,
    action: pg_sys::GucAction::Type,
) {
    // the values truxe writes are ids, digits and words: never a NUL
    let value = CString::new(value).unwrap_or_default();
    // SAFETY: both strings are NUL-terminated and outlive the call.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            source,
            action,
            true,
            0,
            false,
        );
    }
}

/// Sets one request setting (`app.*`), for the transaction (`local`) or the session.
fn set_setting(name: &CStr, value: Option<pgrx::Uuid>, local: bool) {
    let action = if local {
        pg_sys::GucAction::GUC_ACTION_LOCAL
    } else {
        pg_sys::GucAction::GUC_ACTION_SET
    };
    set_option(
        name,
        &value.map(|v| v.to_string()).unwrap_or_default(),
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GucSource::PGC_S_SESSION,
        action,
    );
}

/// Sets the acting user and organisation (`app.current_user_id`, `app.current_org_id`);
/// transaction-local by default (safe behind a transaction-pooling connection pooler). NULL
/// clears a value. 42501 when `truxe.identity_mode = verified` and the login is neither a
/// superuser nor a member of service_account (checked before anything is read), and when
/// `org_id` is an org `user_id` may not act in (not an active joined member of it, nor a
/// joined owner/admin of an ancestor); 22023 for a NULL `is_local`. Callable by
/// authenticated and service_account (SECURITY DEFINER: it reads memberships past RLS).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_context(
    user_id: Option<pgrx::Uuid>,
    org_id: default!(Option<pgrx::Uuid>, "NULL"),
    is_local: default!(Option<bool>, true),
) {
    check_set_context(user_id, org_id, is_local).unwrap_or_raise();
    let local = is_local.unwrap_or(true);
    set_setting(CURRENT_USER_ID, user_id, local);
    set_setting(CURRENT_ORG_ID, org_id, local);
    // on Citus, the workers' copy of the identity, for this transaction (src/claim.rs)
    crate::claim::refresh_or_raise();
}

/// Clears both settings (`app.current_user_id`, `app.current_org_id`), for the session and
/// the transaction, as `set_config(…, false)` does. On Citus it also makes this transaction's
/// signed claim (src/claim.rs) that of whoever still acts (none, unless a verified identity
/// or JWT claims do), on the workers too, so that reads there end with the context. Never
/// raises for the caller's input. Callable by authenticated and service_account (SECURITY
/// DEFINER, as set_context: the claim's org sets are read past RLS).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn clear_context() {
    set_setting(CURRENT_USER_ID, None, false);
    set_setting(CURRENT_ORG_ID, None, false);
    crate::claim::refresh_or_raise();
}

fn check_set_context(
    user: Option<pgrx::Uuid>,
    org: Option<pgrx::Uuid>,
    is_local: Option<bool>,
) -> Result<(), TruxeError> {
    if !crate::identity::settings_honoured() {
        return fail(
            Sqlstate::InsufficientPrivilege,
            "truxe.identity_mode is verified: this login cannot set a context; call truxe.authenticate",
        );
    }
    if is_local.is_none() {
        return fail(Sqlstate::InvalidParameter, "is_local must not be NULL");
    }
    if let Some(org) = org {
        let allowed = match user {
            Some(user) => may_act_in(user, org)?,
            None => false,
        };
        if !allowed {
            return fail(
                Sqlstate::InsufficientPrivilege,
                format!(
                    "user {} may not act in organization {org}",
                    user.map(|u| u.to_string()).unwrap_or_else(|| "NULL".into())
                ),
            );
        }
    }
    Ok(())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn user_id_after(value: &str) -> Option<String> {
        Spi::run_with_args(
            "SELECT set_config('app.current_user_id', $1, false)",
            &[value.into()],
        )
        .unwrap();
        Spi::get_one::<String>("SELECT truxe.current_user_id()::text").unwrap()
    }

    #[pg_test]
    fn current_user_id_is_null_when_unset_empty_or_malformed() {
        assert_eq!(
            Spi::get_one::<String>("SELECT truxe.current_user_id()::text").unwrap(),
            None
        );
        assert_eq!(user_id_after(""), None);
        assert_eq!(user_id_after("not-a-uuid"), None);
        assert_eq!(
            user_id_after("12345678-1234-1234-1234-1234567890ab' OR 1=1"),
            None
        );
        assert_eq!(user_id_after(&"a".repeat(5000)), None);
        assert_eq!(
            user_id_after("12345678-1234-1234-1234-1234567890AB").as_deref(),
            Some("12345678-1234-1234-1234-1234567890ab")
        );
    }

    #[pg_test]
    fn set_context_then_clear_context() {
        Spi::run(
            "INSERT INTO truxe.users (id, email, status)
               VALUES ('11111111-1111-1111-1111-111111111111', 'a@example.com', 'active');
             INSERT INTO truxe.organizations (id, slug, name)
               VALUES ('22222222-2222-2222-2222-222222222222', 'acme', 'Acme');
             INSERT INTO truxe.memberships (org_id, user_id, role, joined_at)
               VALUES ('22222222-2222-2222-2222-222222222222', '11111111-1111-1111-1111-111111111111', 'owner', now())",
        )
        .unwrap();
        Spi::run("SELECT truxe.set_context('11111111-1111-1111-1111-111111111111', '22222222-2222-2222-2222-222222222222')").unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT truxe.current_org_id()::text")
                .unwrap()
                .as_deref(),
            Some("22222222-2222-2222-2222-222222222222")
        );
        // an org the user does not belong to (here: none at all) is refused
        let refused = crate::error::error_of(
            "SELECT truxe.set_context('11111111-1111-1111-1111-111111111111', '33333333-3333-3333-3333-333333333333')",
        );
        assert_eq!(
            refused.map(|(code, _)| code),
            Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE)
        );
        Spi::run("SELECT truxe.clear_context()").unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT truxe.current_user_id()::text").unwrap(),
            None
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT truxe.current_org_id()::text").unwrap(),
            None
        );
    }
}

#[cfg(test)]
mod unit {
    use super::parse_uuid;

    #[test]
    fn parse_uuid_accepts_only_uuids() {
        assert!(parse_uuid("12345678-1234-1234-1234-1234567890ab").is_some());
        assert!(parse_uuid(" 12345678123412341234123456789abc ").is_some());
        assert!(parse_uuid("").is_none());
        assert!(parse_uuid("12345678-1234-1234-1234-1234567890a").is_none());
        assert!(parse_uuid("zz345678-1234-1234-1234-1234567890ab").is_none());
        assert!(parse_uuid("ü2345678-1234-1234-1234-1234567890ab").is_none());
    }
}
