//! Settings registered by truxe (superuser-only: an application role cannot loosen them).
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `truxe.max_org_depth`: the deepest allowed organisation hierarchy (default 32).
pub static MAX_ORG_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(32);
/// `truxe.refresh_reuse_grace`: seconds after a rotation during which presenting the old
/// refresh token gives a new session of the same family instead of revoking the family
/// (default 10; 0 = no grace at all).
pub static REFRESH_REUSE_GRACE: GucSetting<i32> = GucSetting::<i32>::new(10);

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
}
