//! Settings registered by truxe (superuser-only: an application role cannot loosen them).
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `truxe.max_org_depth`: the deepest allowed organisation hierarchy (default 32).
pub static MAX_ORG_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(32);
/// `truxe.refresh_reuse_grace`: seconds after a rotation during which presenting the old
/// refresh token gives a new session of the same family instead of revoking the family
/// (default 10; 0 = no grace at all).
pub static REFRESH_REUSE_GRACE: GucSetting<i32> = GucSetting::<i32>::new(10);
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
    GucRegistry::define_string_guc(
        c"truxe.encryption_key_file",
        c"File of the keys that encrypt secrets and second-factor seeds.",
        c"One key a line, <key id>:<64 hex digits>; the last line encrypts, every line decrypts. Keep it outside the data directory, readable by the server's OS user only.",
        &ENCRYPTION_KEY_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
}
