//! Request context (SPEC §2): who is acting, in which organisation, and which organisations
//! that user may see. The getters are on every RLS policy's path: they read the settings
//! directly and never raise. The SQL half (set_context, accessible_org_ids, …) is in
//! sql/context.sql.
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

pgrx::extension_sql_file!(
    "../sql/context.sql",
    name = "context",
    requires = ["schema", current_user_id, current_org_id]
);

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
