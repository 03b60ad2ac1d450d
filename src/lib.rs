//! truxe: a multi-tenant authentication data layer inside PostgreSQL.
//!
//! `lib.rs` only wires things together: one module per concept, the SQL files that declare
//! the schema (in the order their `requires` give), the settings, and `_PG_init`.
use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod api_key;
mod apptables;
mod audit;
mod claim;
mod cleanup;
mod context;
mod crypto;
mod distribute;
mod error;
mod gucs;
mod hierarchy;
mod identity;
mod index_read;
mod invitation;
mod jsonb;
mod magic_link;
mod metrics;
mod mfa;
mod orgs;
mod plans;
mod rate_limit;
mod recovery_codes;
mod seal;
mod security;
mod session;
mod srf;
mod trigger;
mod types;
mod usage;
mod vault;

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = ["bootstrap", types::user_status, types::membership_role]
);
extension_sql_file!(
    "../sql/rls.sql",
    name = "rls",
    requires = [
        "schema",
        "context",
        audit::request_ip_setting,
        audit::request_id_setting
    ]
);
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    identity::init();
    claim::init();
    audit::init();
}

/// The version of the truxe library loaded in this backend (the crate version).
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_matches_the_crate() {
        let v = Spi::get_one::<String>("SELECT truxe.version()").unwrap();
        assert_eq!(v.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    }

    #[pg_test]
    fn settings_are_registered_with_their_defaults() {
        let depth = Spi::get_one::<String>("SELECT current_setting('truxe.max_org_depth')");
        assert_eq!(depth.unwrap().as_deref(), Some("32"));
        let grace = Spi::get_one::<String>("SELECT current_setting('truxe.refresh_reuse_grace')");
        assert_eq!(grace.unwrap().as_deref(), Some("10s"));
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
