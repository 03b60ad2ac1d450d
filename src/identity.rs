//! Who is acting (docs/security.md, "Verified identity"). The acting user and organisation
//! come from the first of three sources that supplies one:
//!
//! 1. the **verified identity**: a session that `truxe.authenticate` checked, or an API key
//!    that `truxe.authenticate_api_key` checked, in the current transaction;
//! 2. the settings `app.current_user_id` / `app.current_org_id`;
//! 3. the `sub` / `org_id` claims of `request.jwt.claims` (what PostgREST sets).
//!
//! Under `truxe.identity_mode = verified`, sources 2 and 3 count only when the login role
//! (the session user) is a superuser or a member of service_account: any other login is
//! nobody until it authenticates.
//!
//! The verified identity is stored in `truxe.verified_identity`, a setting only superusers
//! may change and whose check hook refuses any value truxe did not write itself (so not
//! even a placeholder set before the library loads survives). truxe writes it with the
//! scope of `SET LOCAL`: it ends when the transaction (or the savepoint it was written in)
//! ends, committed or rolled back. Being a setting, it reaches parallel workers with the
//! rest of the leader's settings. It holds ids only, never a token.
use crate::context::{parse_uuid, setting_text};
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum, Uuid};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

/// The HINT of the errors that need a verified identity: it lasts until the transaction
/// ends, so in autocommit it is gone by the next statement.
pub(crate) const VERIFIED_IDENTITY_IS_TRANSACTION_LOCAL: &str =
    "truxe.authenticate's identity lasts until the transaction ends: in autocommit every \
     statement is its own transaction, so it is gone by the next statement. Run authenticate \
     and the calls that need it in one transaction (BEGIN ... COMMIT).";

/// `truxe.identity_mode`: whether any login may claim an identity through settings.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum IdentityMode {
    /// The settings and JWT claims are believed from any login (0.1's behaviour).
    #[name = c"trusted"]
    Trusted,
    /// Only a superuser or service_account login may use them; others must authenticate.
    #[name = c"verified"]
    Verified,
}

const IDENTITY_MODE_NAME: &CStr = c"truxe.identity_mode";
pub static IDENTITY_MODE: GucSetting<IdentityMode> =
    GucSetting::<IdentityMode>::new(IdentityMode::Trusted);

/// The storage of the verified identity (see the module comment); NULL or empty: none.
static VERIFIED_IDENTITY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
const VERIFIED_IDENTITY_NAME: &CStr = c"truxe.verified_identity";

/// True while truxe itself writes `truxe.verified_identity` (the check hook's permit).
static WRITING: AtomicBool = AtomicBool::new(false);

/// Registers `truxe.identity_mode` and `truxe.verified_identity` (called by `_PG_init`).
pub fn init() {
    // A value of a setting the library does not define yet is kept as a placeholder and
    // applied when the library loads; a non-superuser's value of a superuser-only setting is
    // then refused. But a startup option (PGOPTIONS) replaces the placeholder's database,
    // role and file values altogether, so refusing it would leave the built-in default,
    // `trusted`, in force where a superuser had configured `verified`. Fail closed instead:
    // when a placeholder existed and none of its values could be applied, this backend runs
    // `verified` (as an override, which also reaches its parallel workers).
    // SAFETY: a plain lookup; missing_ok.
    let placeholder =
        unsafe { !pg_sys::GetConfigOption(IDENTITY_MODE_NAME.as_ptr(), true, false).is_null() };
    GucRegistry::define_enum_guc(
        IDENTITY_MODE_NAME,
        c"Who may claim an identity through app.current_user_id or request.jwt.claims.",
        c"trusted: any login (the backend authenticated the request). verified: only superuser and service_account logins; any other login is nobody until truxe.authenticate or truxe.authenticate_api_key succeeds.",
        &IDENTITY_MODE,
        GucContext::Suset,
        GucFlags::default(),
    );
    if placeholder && nothing_applied(IDENTITY_MODE_NAME) {
        crate::context::set_option(
            IDENTITY_MODE_NAME,
            "verified",
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
            pg_sys::GucAction::GUC_ACTION_SET,
        );
    }
    // SAFETY: the variable is a static that lives as long as the library; the strings are
    // static; the check hook only reads its arguments and backend-local flags.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            VERIFIED_IDENTITY_NAME.as_ptr(),
            c"The identity truxe verified in this transaction (written by truxe only).".as_ptr(),
            std::ptr::null(),
            VERIFIED_IDENTITY.as_ptr(),
            std::ptr::null(),
            pg_sys::GucContext::PGC_SUSET,
            (GucFlags::NO_SHOW_ALL | GucFlags::DISALLOW_IN_FILE | GucFlags::DISALLOW_IN_AUTO_FILE)
                .bits(),
            Some(check_verified_identity),
            None,
            None,
        );
    }
}

/// Whether setting `name` still has its built-in default as its source (no value of any
/// source was applied to it).
fn nothing_applied(name: &CStr) -> bool {
    // SAFETY: the GUC table is backend-local; the entry pointers stay valid while we read.
    unsafe {
        #[cfg(feature = "pg15")]
        let found = {
            let vars = pg_sys::get_guc_variables();
            let n = pg_sys::GetNumConfigOptions().max(0) as usize;
            (0..n)
                .map(|i| *vars.add(i))
                .find(|g| !g.is_null() && CStr::from_ptr((**g).name) == name)
        };
        #[cfg(not(feature = "pg15"))]
        let found =
            Some(pg_sys::find_option(name.as_ptr(), false, true, 0)).filter(|g| !g.is_null());
        found.is_some_and(|g| (*g).source == pg_sys::GucSource::PGC_S_DEFAULT)
    }
}

/// Refuses every non-empty value of `truxe.verified_identity` except the ones truxe writes
/// ([`establish`]) and the copy a parallel worker receives from its leader.
#[pg_guard]
unsafe extern "C-unwind" fn check_verified_identity(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the candidate value (which may be NULL).
    let value = unsafe { *newval };
    // SAFETY: a non-NULL candidate is a NUL-terminated string.
    if value.is_null() || unsafe { *value } == 0 {
        return true;
    }
    // SAFETY: backend-local flag, read only.
    if WRITING.load(Ordering::Relaxed) || unsafe { pg_sys::InitializingParallelWorker } {
        return true;
    }
    // SAFETY: GUC_check_errdetail_string takes a palloc'd string, as GUC_check_errdetail does.
    unsafe {
        pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(
            c"Only truxe.authenticate and truxe.authenticate_api_key set it.".as_ptr(),
        );
    }
    false
}

/// What a verified identity holds: a session's user (with the session's org, which
/// switch_org may change) or an API key (its org). Ids only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Verified {
    pub user: Option<Uuid>,
    pub org: Option<Uuid>,
    pub session: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub aal: Option<i16>,
}

impl Verified {
    /// `v1;<user>;<org>;<session>;<api key>;<aal>`, empty fields for absent values.
    fn encode(&self) -> String {
        fn id(u: &Option<Uuid>) -> String {
            u.map(|u| u.to_string()).unwrap_or_default()
        }
        format!(
            "v1;{};{};{};{};{}",
            id(&self.user),
            id(&self.org),
            id(&self.session),
            id(&self.api_key),
            self.aal.map(|a| a.to_string()).unwrap_or_default()
        )
    }

    fn decode(text: &str) -> Option<Verified> {
        let mut f = text.split(';');
        if f.next()? != "v1" {
            return None;
        }
        let mut id = || -> Option<Option<Uuid>> {
            let field = f.next()?;
            if field.is_empty() {
                Some(None)
            } else {
                parse_uuid(field).map(Some)
            }
        };
        let (user, org, session, api_key) = (id()?, id()?, id()?, id()?);
        let aal = match f.next()? {
            "" => None,
            a => Some(a.parse().ok()?),
        };
        (user.is_some() || api_key.is_some()).then_some(Verified {
            user,
            org,
            session,
            api_key,
            aal,
        })
    }
}

/// Which source the acting identity came from (`truxe.identity_source()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Verified,
    Setting,
    Jwt,
}

/// The acting identity of the current statement: who, in which org, and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acting {
    pub id: Verified,
    pub source: Source,
}

/// The raw value of `truxe.verified_identity`, borrowed from the GUC machinery (no copy:
/// the getters run in every RLS policy); None when unset.
fn stored() -> Option<&'static CStr> {
    // SAFETY: the variable holds NULL or a NUL-terminated string that the GUC machinery
    // keeps until the setting changes, which nothing can do while the caller reads it.
    unsafe {
        let raw = *VERIFIED_IDENTITY.as_ptr();
        (!raw.is_null()).then(|| CStr::from_ptr(raw))
    }
}

/// The verified identity of this transaction, if any. No table read.
pub(crate) fn verified() -> Option<Verified> {
    Verified::decode(stored()?.to_str().ok()?)
}

/// Makes `id` the verified identity until the current transaction (or savepoint) ends.
pub(crate) fn establish(id: &Verified) {
    write(&id.encode());
    // on Citus, the workers' copy of the identity (src/claim.rs)
    crate::claim::refresh_or_raise();
}

/// Ends any verified identity now (a no-op, with no setting written, when there is none).
pub(crate) fn clear() {
    if stored().is_some_and(|v| !v.is_empty()) {
        write("");
        crate::claim::refresh_or_raise();
    }
}

fn write(value: &str) {
    struct Permit;
    impl Drop for Permit {
        fn drop(&mut self) {
            WRITING.store(false, Ordering::Relaxed);
        }
    }
    WRITING.store(true, Ordering::Relaxed);
    // an ERROR unwinds through `_permit`, which withdraws the permit
    let _permit = Permit;
    crate::context::set_option(
        VERIFIED_IDENTITY_NAME,
        value,
        pg_sys::GucContext::PGC_SUSET,
        pg_sys::GucSource::PGC_S_SESSION,
        pg_sys::GucAction::GUC_ACTION_LOCAL,
    );
}

/// Whether the settings and JWT claims may supply the identity: always in `trusted` mode;
/// in `verified` mode only for a superuser login or a member of service_account (membership,
/// not inherited privileges: a NOINHERIT authenticator role granted service_account counts).
pub(crate) fn settings_honoured() -> bool {
    if IDENTITY_MODE.get() == IdentityMode::Trusted {
        return true;
    }
    // SAFETY: plain role lookups on backend-local state; missing_ok for the role name.
    unsafe {
        let login = pg_sys::GetSessionUserId();
        if pg_sys::superuser_arg(login) {
            return true;
        }
        let service = pg_sys::get_role_oid(c"service_account".as_ptr(), true);
        service != pg_sys::InvalidOid && pg_sys::is_member_of_role(login, service)
    }
}

/// The `sub` and `org_id` claims of `request.jwt.claims`, each when it is a uuid.
fn jwt_claims() -> Option<(Option<Uuid>, Option<Uuid>)> {
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: Option<serde_json::Value>,
        org_id: Option<serde_json::Value>,
    }
    let text = setting_text(crate::context::JWT_CLAIMS)?;
    let claims: Claims = serde_json::from_str(&text).ok()?;
    let uuid = |v: Option<serde_json::Value>| v.as_ref()?.as_str().and_then(parse_uuid);
    Some((uuid(claims.sub), uuid(claims.org_id)))
}

/// The acting identity, from the first source that supplies a user or an org; None when
/// nobody is acting. Never raises; reads settings only (no table, no SPI).
pub(crate) fn acting() -> Option<Acting> {
    if let Some(id) = verified() {
        return Some(Acting {
            id,
            source: Source::Verified,
        });
    }
    if !settings_honoured() {
        return None;
    }
    let from = |user: Option<Uuid>, org: Option<Uuid>, source| {
        (user.is_some() || org.is_some()).then_some(Acting {
            id: Verified {
                user,
                org,
                ..Verified::default()
            },
            source,
        })
    };
    from(
        crate::context::setting_uuid(crate::context::CURRENT_USER_ID),
        crate::context::setting_uuid(crate::context::CURRENT_ORG_ID),
        Source::Setting,
    )
    .or_else(|| {
        let (user, org) = jwt_claims()?;
        from(user, org, Source::Jwt)
    })
}

// current_user_id() and current_org_id() are the two truxe functions without a pinned
// search_path, on purpose: they are on every RLS policy's path, a SET clause costs a GUC
// save/restore per call, and they resolve no name at all — they read settings through
// the GUC machinery and parse them in Rust, with no SPI, no operator and no type lookup — so
// a caller's search_path has nothing to hijack (tests/integration/shadow.rs calls them under
// a hostile path; security_report() lists them as the documented exceptions).

/// The acting user (see the module comment for the sources); NULL when nobody is acting or
/// an API key is. Never raises. Callable by authenticated and service_account.
#[pg_extern(stable, parallel_safe)]
fn current_user_id() -> Option<Uuid> {
    acting_user()
}

/// The acting user, as current_user_id() returns it (the audit trail's actor).
pub(crate) fn acting_user() -> Option<Uuid> {
    acting()?.id.user
}

/// The acting organisation; NULL when none is set. Never raises. Callable by authenticated
/// and service_account.
#[pg_extern(stable, parallel_safe)]
fn current_org_id() -> Option<Uuid> {
    acting()?.id.org
}

/// The session the verified identity came from (its public id, not its token); NULL
/// without a session-verified identity. Callable by authenticated and service_account.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn current_session_id() -> Option<Uuid> {
    verified()?.session
}

/// The API key the verified identity came from; NULL without a key-verified identity.
/// Callable by authenticated and service_account.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn current_api_key_id() -> Option<Uuid> {
    verified()?.api_key
}

/// The assurance level of the verified session (1, or 2 after a second factor); NULL
/// without a session-verified identity. Callable by authenticated and service_account.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn current_aal() -> Option<i16> {
    verified()?.aal
}

/// Where the acting identity came from: `verified`, `setting`, `jwt`, or NULL when nobody
/// is acting. Callable by authenticated and service_account.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn identity_source() -> Option<&'static str> {
    Some(match acting()?.source {
        Source::Verified => "verified",
        Source::Setting => "setting",
        Source::Jwt => "jwt",
    })
}

/// Checks a session token (its jti as text) as validate_session does and, when it names a
/// live session, makes that session the verified identity of the current transaction: its
/// user, its org and its id; returns the user, org, expiry and assurance level. Otherwise
/// (unknown, expired, revoked, a user no longer active or no longer allowed in the org,
/// NULL, or not a uuid at all) no row, never an error, and any verified identity is
/// cleared. Callable by authenticated and service_account (SECURITY DEFINER: it reads the
/// session past RLS).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn authenticate(
    token: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(user_id, Uuid),
        name!(org_id, Option<Uuid>),
        name!(expires_at, TimestampWithTimeZone),
        name!(aal, i16),
    ),
> {
    clear();
    let Some(jti) = token.and_then(parse_uuid) else {
        return TableIterator::new(Vec::new());
    };
    let live = crate::session::validate(jti).unwrap_or_raise();
    TableIterator::new(live.map(|s| {
        establish(&Verified {
            user: Some(s.user),
            org: s.org,
            session: Some(s.id),
            api_key: None,
            aal: Some(s.aal),
        });
        (s.user, s.org, s.expires_at, s.aal)
    }))
}

/// Changes the org of the verified identity to `org_id`, one its user may act in (an active
/// joined member of it, or a joined owner/admin of an ancestor); NULL acts in no particular
/// org (every org the user may see). 42501 without a verified identity, for an org the user
/// may not act in, and for an API key (bound to its own org). Callable by authenticated and
/// service_account (SECURITY DEFINER: it reads memberships past RLS).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn switch_org(org_id: Option<Uuid>) {
    switch(org_id).unwrap_or_raise()
}

fn switch(org: Option<Uuid>) -> Result<(), TruxeError> {
    let Some(mut id) = verified() else {
        return Err(TruxeError::new(
            Sqlstate::InsufficientPrivilege,
            "switch_org needs a verified identity: call truxe.authenticate first, in the same transaction",
        )
        .with_hint(VERIFIED_IDENTITY_IS_TRANSACTION_LOCAL));
    };
    if id.api_key.is_some() {
        if org == id.org {
            return Ok(());
        }
        return fail(
            Sqlstate::InsufficientPrivilege,
            "an API key acts in its own organization only",
        );
    }
    if let (Some(user), Some(org)) = (id.user, org) {
        if !crate::context::may_act_in(user, org)? {
            return fail(
                Sqlstate::InsufficientPrivilege,
                format!("user {user} may not act in organization {org}"),
            );
        }
    }
    id.org = org;
    establish(&id);
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::Verified;
    use pgrx::Uuid;

    #[test]
    fn an_identity_survives_encoding_and_nothing_else_decodes() {
        let u = Uuid::from_bytes([7; 16]);
        let id = Verified {
            user: Some(u),
            org: None,
            session: Some(Uuid::from_bytes([9; 16])),
            api_key: None,
            aal: Some(2),
        };
        assert_eq!(Verified::decode(&id.encode()), Some(id));
        assert_eq!(Verified::decode(""), None);
        assert_eq!(Verified::decode("v1;;;;;"), None, "nobody");
        assert_eq!(Verified::decode("v2;;;;;"), None);
        assert_eq!(Verified::decode("v1;zz;;;;"), None);
        assert_eq!(Verified::decode(&format!("v1;{u};;;;x")), None);
    }
}
