//! Sealed audit log (docs/security.md, "Sealed audit log"): seal_audit_log and
//! verify_audit_log are PL/pgSQL (sql/seal.sql); the one thing SQL cannot do — wait for the
//! audit writers in flight without blocking new ones — is here.
use pgrx::prelude::*;

pgrx::extension_sql_file!(
    "../sql/seal.sql",
    name = "seal",
    requires = ["schema", wait_for_audit_writers]
);

/// Waits until every transaction that holds a write lock (ROW EXCLUSIVE or stronger) on
/// truxe.audit_logs right now has ended, and returns. It takes no lock on the table: writers
/// that start meanwhile neither wait for it nor are waited for (CREATE INDEX CONCURRENTLY's
/// wait). The calling transaction's own lock is not waited for. `lock_timeout` bounds the
/// wait (55P03). Used by seal_audit_log; service_account only.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn wait_for_audit_writers() {
    let relid = Spi::get_one::<pg_sys::Oid>(
        "SELECT 'truxe.audit_logs'::pg_catalog.regclass::pg_catalog.oid",
    )
    .ok()
    .flatten()
    .unwrap_or(pg_sys::InvalidOid);
    // SAFETY: a relation lock tag of this database (SET_LOCKTAG_RELATION); WaitForLockers
    // only waits on the virtual transaction ids of the conflicting lockers.
    unsafe {
        let tag = pg_sys::LOCKTAG {
            locktag_field1: pg_sys::MyDatabaseId.to_u32(),
            locktag_field2: relid.to_u32(),
            locktag_field3: 0,
            locktag_field4: 0,
            locktag_type: pg_sys::LockTagType::LOCKTAG_RELATION as u8,
            locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
        };
        pg_sys::WaitForLockers(tag, pg_sys::ShareLock as pg_sys::LOCKMODE, false);
    }
}
