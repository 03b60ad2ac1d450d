//! Request context (SPEC §2): who is acting, in which organisation, and which organisations
//! that user may see. All of it is on every RLS policy's path: the getters read the settings
//! directly and never raise; the org sets run one cached plan each. set_context and
//! clear_context are SQL (sql/context.sql).
use crate::error::{TruxeError, UnwrapOrRaise};
use crate::plans;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

pgrx::extension_sql_file!(
    "../sql/context.sql",
    name = "context",
    requires = [
        "schema",
        current_user_id,
        current_org_id,
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

// current_user_id() and current_org_id() are the two truxe functions without a pinned
// search_path, on purpose: they are on every RLS policy's path, a SET clause costs a GUC
// save/restore per call, and they resolve no name at all — they read a setting through
// GetConfigOption and parse it in Rust, with no SPI, no operator and no type lookup — so a
// caller's search_path has nothing to hijack (tests/integration/shadow.rs calls them under a
// hostile path; security_report() lists them as the documented exceptions).

/// The acting user: `app.current_user_id` as a uuid; NULL when unset, empty or malformed.
/// Never raises. Callable by authenticated and service_account.
#[pg_extern(stable, parallel_safe)]
fn current_user_id() -> Option<pgrx::Uuid> {
    setting_uuid(c"app.current_user_id")
}

/// The acting organisation: `app.current_org_id` as a uuid; NULL when unset, empty or
/// malformed. Never raises. Callable by authenticated and service_account.
#[pg_extern(stable, parallel_safe)]
fn current_org_id() -> Option<pgrx::Uuid> {
    setting_uuid(c"app.current_org_id")
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

/// Orgs where the acting user is a joined owner or admin, and every descendant of those
/// (truxe.org_closure: one index scan per org, no recursive walk).
const ADMIN_ORGS: &str = concat!(
    "WITH admin AS (",
    acting_members!(),
    " AND m.joined_at IS NOT NULL AND m.role IN ('owner', 'admin'))
  SELECT org_id FROM admin
  UNION
  SELECT c.descendant_id FROM admin JOIN truxe.org_closure c ON c.ancestor_id = admin.org_id"
);

/// The acting user's joined memberships, plus ADMIN_ORGS, in one statement.
const ACCESSIBLE_ORGS: &str = concat!(
    "WITH mine AS (",
    acting_members!(),
    " AND m.joined_at IS NOT NULL)
  SELECT org_id FROM mine
  UNION
  SELECT c.descendant_id FROM mine JOIN truxe.org_closure c ON c.ancestor_id = mine.org_id
   WHERE mine.role IN ('owner', 'admin')"
);

/// Orgs with a pending (not yet accepted) invitation for the acting user.
const INVITED_ORGS: &str = concat!(
    "SELECT org_id FROM (",
    acting_members!(),
    " AND m.joined_at IS NULL) pending"
);

/// The org ids `sql` lists for the acting user ($1); empty with no context. Read-only, in
/// the calling statement's snapshot.
pub(crate) fn org_ids(sql: &'static str) -> Result<Vec<pgrx::Uuid>, TruxeError> {
    let Some(user) = setting_uuid(c"app.current_user_id") else {
        return Ok(Vec::new());
    };
    let ids = Spi::connect(|client| {
        plans::read(client, sql, &[plans::UUID], &[user.into()])?
            .map(|row| row.get::<pgrx::Uuid>(1))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(ids.into_iter().flatten().collect())
}

/// Orgs the acting user may see (SPEC §2): joined memberships, plus every descendant of an
/// org where the user is owner or admin. Empty with no context. SECURITY DEFINER: RLS
/// policies call it, so it reads memberships and organizations past them (no recursion).
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.accessible_org_ids() RETURNS uuid[]
LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn accessible_org_ids() -> Vec<pgrx::Uuid> {
    org_ids(ACCESSIBLE_ORGS).unwrap_or_raise()
}

/// Orgs where the acting user is a joined owner or admin, and every descendant of those:
/// where the user holds an administrator's view (audit logs, usage, org updates). Empty
/// with no context. SECURITY DEFINER, as accessible_org_ids.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.admin_org_ids() RETURNS uuid[]
LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn admin_org_ids() -> Vec<pgrx::Uuid> {
    org_ids(ADMIN_ORGS).unwrap_or_raise()
}

/// Orgs that have a pending invitation for the acting user: the invitee may read the org
/// and the invitation, nothing else of it. Empty with no context. SECURITY DEFINER, as
/// accessible_org_ids.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.invited_org_ids() RETURNS uuid[]
LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn invited_org_ids() -> Vec<pgrx::Uuid> {
    org_ids(INVITED_ORGS).unwrap_or_raise()
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
        Spi::run("SELECT truxe.set_context('11111111-1111-1111-1111-111111111111', '22222222-2222-2222-2222-222222222222')").unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT truxe.current_org_id()::text")
                .unwrap()
                .as_deref(),
            Some("22222222-2222-2222-2222-222222222222")
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
