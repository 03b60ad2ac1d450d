//! Scale-out on Citus (docs/scaling.md): `truxe.distribute()`, PL/pgSQL in
//! sql/distribute.sql, declared after every table it places; and the one thing truxe's own
//! statements do differently once it has run: they read and write memberships and
//! organizations through the coordinator's copies.
//!
//! On Citus `truxe.memberships` and `truxe.organizations` are distributed by org (an org's
//! row and members in its shard), and `distribute()` makes a copy of each on the
//! coordinator, a plain table with the same columns, checks and foreign keys:
//! `truxe.memberships_by_user`, keyed for the lookup every request makes (a user's
//! memberships, read by the org sets and the claim, [`crate::context`], through its index
//! as on a single node), and `truxe.organizations_by_slug`, which keeps slugs unique across
//! the cluster and the org hierarchy's triggers. The copies are what truxe writes; their
//! triggers do what the single-node tables' do (audit rows, the hierarchy, ending sessions,
//! revoking API keys) and write the same change into the distributed table. Every SQL
//! function of truxe that names one of the tables is rewritten by `distribute()` to name the
//! copy; the Rust statements are mapped here, when their plan is made ([`crate::plans`]).
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

/// The tables truxe's statements name that have a coordinator copy on Citus, and the copies.
const COPIES: [(&str, &str); 2] = [
    ("truxe.memberships", "truxe.memberships_by_user"),
    ("truxe.organizations", "truxe.organizations_by_slug"),
];
const MEMBERSHIPS_COPY: &CStr = c"memberships_by_user";

/// Whether Citus is loaded in this backend: one settings lookup (of a setting Citus defines),
/// which decides every Citus question on a single node, where it never is.
pub(crate) fn citus_loaded() -> bool {
    // SAFETY: a settings lookup by a NUL-terminated name, missing_ok.
    unsafe {
        !pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false).is_null()
    }
}

/// Whether `truxe.distribute()` has made the coordinator's copies: Citus is loaded
/// ([`citus_loaded`]) and the copy of memberships exists (a catalog cache lookup;
/// distribute() makes both in one transaction).
pub(crate) fn copies_made() -> bool {
    if !citus_loaded() {
        return false;
    }
    crate::index_read::truxe_namespace()
        .and_then(|nsp| crate::index_read::relation(nsp, MEMBERSHIPS_COPY))
        .is_some()
}

/// The relation and the (user_id, org_id) INCLUDE (role, joined_at) index that a user's
/// memberships are read through: the coordinator's copy once distributed, else the table.
pub(crate) fn memberships_by_user() -> (&'static CStr, &'static CStr) {
    if copies_made() {
        (MEMBERSHIPS_COPY, c"memberships_by_user_user_org")
    } else {
        (c"memberships", c"idx_memberships_user_org")
    }
}

thread_local! {
    /// Statement texts as mapped for the copy (or unchanged), by their address: a mapped
    /// text is leaked once per text and backend (its cached plan keeps it for good anyway).
    static MAPPED: RefCell<HashMap<(usize, usize), &'static str>> = RefCell::new(HashMap::new());
}

/// `sql` as truxe runs it here: on Citus, once the copies exist, with every table of
/// [`COPIES`] naming its copy; unchanged otherwise. [`crate::plans`] calls it for every
/// statement it prepares.
pub(crate) fn statement(sql: &'static str) -> &'static str {
    if !copies_made() {
        return sql;
    }
    MAPPED.with(|m| {
        *m.borrow_mut()
            .entry((sql.as_ptr() as usize, sql.len()))
            .or_insert_with(|| match COPIES.iter().any(|(t, _)| sql.contains(t)) {
                true => Box::leak(to_copies(sql).into_boxed_str()),
                false => sql,
            })
    })
}

/// `sql` with each table of [`COPIES`] that is the whole name (not followed by a letter,
/// digit or `_`) replaced by its copy's name.
fn to_copies(sql: &str) -> String {
    COPIES.iter().fold(sql.to_string(), |sql, (table, copy)| {
        to_copy(&sql, table, copy)
    })
}

fn to_copy(sql: &str, table: &str, copy: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut rest = sql;
    while let Some(at) = rest.find(table) {
        let end = at + table.len();
        let whole = !rest[end..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        out.push_str(if whole { copy } else { table });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod unit {
    use super::to_copies;

    #[test]
    fn only_the_whole_name_is_mapped() {
        assert_eq!(
            to_copies("SELECT 1 FROM truxe.memberships m JOIN truxe.organizations\nx"),
            "SELECT 1 FROM truxe.memberships_by_user m JOIN truxe.organizations_by_slug\nx"
        );
        assert_eq!(
            to_copies("INSERT INTO truxe.memberships (a) SELECT * FROM truxe.memberships_x"),
            "INSERT INTO truxe.memberships_by_user (a) SELECT * FROM truxe.memberships_x"
        );
        assert_eq!(
            to_copies("truxe.organizations"),
            "truxe.organizations_by_slug"
        );
        assert_eq!(to_copies("no table"), "no table");
    }
}
