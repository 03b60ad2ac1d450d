//! Scale-out on Citus (docs/scaling.md): `truxe.distribute()`, PL/pgSQL in
//! sql/distribute.sql, declared after every table it places; and the one thing truxe's own
//! statements do differently once it has run: they read and write memberships through the
//! coordinator's copy.
//!
//! On Citus `truxe.memberships` is distributed by `org_id` (an org's members in its shard),
//! and `distribute()` makes `truxe.memberships_by_user`, a plain table on the coordinator
//! with the same columns, keys and checks, keyed for the lookup every request makes: a
//! user's memberships, read by the org sets and the claim ([`crate::context`]) through its
//! index, as on a single node. The copy is what truxe writes; its triggers do what the
//! single-node table's do (audit rows, ending sessions, revoking API keys) and write the
//! same change into `truxe.memberships`. Every SQL function of truxe that names the table is
//! rewritten by `distribute()` to name the copy; the Rust statements are mapped here, when
//! their plan is made ([`crate::plans`]).
use pgrx::pg_sys;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

pgrx::extension_sql_file!(
    "../sql/distribute.sql",
    name = "distribute",
    requires = [
        "schema",
        "api_keys",
        "mfa",
        "invitations",
        "vault",
        "seal",
        "hierarchy"
    ]
);

/// The table every truxe statement names for memberships, and the copy's name.
const MEMBERSHIPS: &str = "truxe.memberships";
const COPY: &CStr = c"memberships_by_user";

/// Whether `truxe.distribute()` has made the coordinator's copy of memberships: Citus is
/// loaded (one settings lookup decides on a single node) and the copy exists (a catalog
/// cache lookup).
pub(crate) fn memberships_copied() -> bool {
    // SAFETY: a settings lookup and catalog cache lookups with NUL-terminated names, all
    // missing_ok.
    unsafe {
        if pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false).is_null()
        {
            return false;
        }
    }
    crate::index_read::truxe_namespace()
        .and_then(|nsp| crate::index_read::relation(nsp, COPY))
        .is_some()
}

/// The relation and the (user_id, org_id) INCLUDE (role, joined_at) index that a user's
/// memberships are read through: the coordinator's copy once distributed, else the table.
pub(crate) fn memberships_by_user() -> (&'static CStr, &'static CStr) {
    if memberships_copied() {
        (COPY, c"memberships_by_user_user_org")
    } else {
        (c"memberships", c"idx_memberships_user_org")
    }
}

thread_local! {
    /// Statement texts as mapped for the copy (or unchanged), by their address: a mapped
    /// text is leaked once per text and backend (its cached plan keeps it for good anyway).
    static MAPPED: RefCell<HashMap<(usize, usize), &'static str>> = RefCell::new(HashMap::new());
}

/// `sql` as truxe runs it here: on Citus, once the copy exists, with every `truxe.memberships`
/// naming `truxe.memberships_by_user`; unchanged otherwise. [`crate::plans`] calls it for
/// every statement it prepares.
pub(crate) fn statement(sql: &'static str) -> &'static str {
    if !memberships_copied() {
        return sql;
    }
    MAPPED.with(|m| {
        *m.borrow_mut()
            .entry((sql.as_ptr() as usize, sql.len()))
            .or_insert_with(|| match sql.contains(MEMBERSHIPS) {
                true => Box::leak(to_copy(sql).into_boxed_str()),
                false => sql,
            })
    })
}

/// `sql` with each `truxe.memberships` that is the whole name (not followed by a letter,
/// digit or `_`) replaced by the copy's name.
fn to_copy(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut rest = sql;
    while let Some(at) = rest.find(MEMBERSHIPS) {
        let end = at + MEMBERSHIPS.len();
        let whole = !rest[end..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        out.push_str(if whole {
            "truxe.memberships_by_user"
        } else {
            MEMBERSHIPS
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod unit {
    use super::to_copy;

    #[test]
    fn only_the_whole_name_is_mapped() {
        assert_eq!(
            to_copy("SELECT 1 FROM truxe.memberships m JOIN truxe.memberships\nx"),
            "SELECT 1 FROM truxe.memberships_by_user m JOIN truxe.memberships_by_user\nx"
        );
        assert_eq!(
            to_copy("INSERT INTO truxe.memberships (a) SELECT * FROM truxe.memberships_x"),
            "INSERT INTO truxe.memberships_by_user (a) SELECT * FROM truxe.memberships_x"
        );
        assert_eq!(to_copy("truxe.memberships"), "truxe.memberships_by_user");
        assert_eq!(to_copy("no table"), "no table");
    }
}
