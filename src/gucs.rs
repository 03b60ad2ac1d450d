//! Settings registered by truxe (superuser-only: an application role cannot loosen them).
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `truxe.max_org_depth`: the deepest allowed organisation hierarchy (default 32).
pub static MAX_ORG_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(32);
/// `truxe.refresh_reuse_grace`: seconds after a rotation during which presenting the old
/// refresh token gives a new session of the same family instead of revoking the family
/// (default 10; 0 = no grace at all).
pub static REFRESH_REUSE_GRACE: GucSetting<i32> = GucSetting::<i32>::new(10);
/// `truxe.session_max_lifetime`: seconds from a family's first login (`create_session`)
/// after which no session of that family is valid, however often it was refreshed
/// (default 90 days; src/session.rs).
pub static SESSION_MAX_LIFETIME: GucSetting<i32> = GucSetting::<i32>::new(90 * 86_400);
/// `truxe.session_idle_timeout`: seconds a session may go unused (no validate_session,
/// authenticate or refresh) before it is invalid (default 0 = off; src/session.rs).
pub static SESSION_IDLE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(0);
/// `truxe.max_sessions_per_user`: live sessions a user may hold; create_session revokes
/// the least recently used beyond it (default 0 = unlimited; src/session.rs).
pub static MAX_SESSIONS_PER_USER: GucSetting<i32> = GucSetting::<i32>::new(0);
/// `truxe.encryption_key_file`: the file of encryption keys for secrets and TOTP seeds
/// (src/crypto.rs reads it; unset = no key, and those functions raise 55000). A path, never
/// a key; shown to superusers only.
pub static ENCRYPTION_KEY_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

pub fn init() {
    GucRegistry::define_int_guc(
        c"truxe.max_org_depth",
        c"Deepest allowed organization hierarchy.",
        c"A parent change or insert that would make a chain of parent_org_id longer than this is rejected with SQLSTATE 23514.",
        &MAX_ORG_DEPTH,
        1,
        // the hard maximum: also the walk bound of org_ancestors/org_descendants
        // (sql/hierarchy.sql); hierarchy::the_tree_walkers_stop_at_the_deepest_allowed_tree
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"truxe.refresh_reuse_grace",
        c"Grace period for presenting an already-rotated refresh token.",
        c"Within this time after a rotation, refresh_session with the old refresh_jti gives a new session of the same family (while the rotated-to session is live); later it revokes the whole family. 0 means no grace.",
        &REFRESH_REUSE_GRACE,
        0,
        3600,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"truxe.session_max_lifetime",
        c"Longest life of a session family, from its first login.",
        c"No session expires later than its family's first login (create_session) plus this, however often it is refreshed; refresh_session and validate_session refuse it after that.",
        &SESSION_MAX_LIFETIME,
        1,
        // ten years: the longest a family may be kept alive
        3650 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"truxe.session_idle_timeout",
        c"Longest time a session may go unused.",
        c"A session not validated, authenticated or refreshed for longer than this is invalid (precision: a quarter of the timeout, at most a minute). 0 turns it off.",
        &SESSION_IDLE_TIMEOUT,
        0,
        366 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"truxe.max_sessions_per_user",
        c"Most live sessions one user may hold.",
        c"create_session beyond it revokes the user's least recently used live sessions (reason session_limit). 0 means unlimited.",
        &MAX_SESSIONS_PER_USER,
        0,
        100_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"truxe.encryption_key_file",
        c"File of the keys that encrypt secrets and second-factor seeds.",
        c"One key a line, <key id>:<64 hex digits>; the last line encrypts, every line decrypts. Keep it outside the data directory, readable by the server's OS user only.",
        &ENCRYPTION_KEY_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
}
