//! Prepared SPI plans kept for the life of the backend, one per SQL text (and search_path,
//! [`path_key`]): the hot paths
//! (hierarchy walk, audit insert, auth flows) parse and plan each statement once. On Citus a
//! text that names `truxe.memberships` is planned as its coordinator's copy's
//! ([`crate::distribute::statement`]).
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{self, OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    /// Keyed by the text and the `search_path` in force ([`path_key`]).
    static PLANS: RefCell<HashMap<(&'static str, u64), Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The `search_path` in force, hashed. PostgreSQL re-plans a cached statement whenever it
/// runs under another `search_path` than the one it was planned under, and truxe's functions
/// pin one of two (`pg_catalog, pg_temp`; or with `truxe` where pgrx looks up enum types by
/// name: the audit triggers, the invitation functions): a statement both kinds run, such as
/// the audit INSERT, was planned anew at every switch (bench/README.md, "Performance work
/// after the 0.2 run"). One plan per path ends that. PostgreSQL still checks each plan's
/// path before using it, so this only decides which plan is tried first.
fn path_key() -> u64 {
    use std::hash::{Hash, Hasher};
    // SAFETY: the setting's current value, a NUL-terminated string owned by the GUC
    // machinery, or NULL; read and copied into the hash at once.
    let path = unsafe { pg_sys::namespace_search_path };
    if path.is_null() {
        return 0;
    }
    // SAFETY: non-NULL and NUL-terminated (above)
    let bytes = unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Runs `sql` (parameters of `types`) through its cached plan, as a mutating statement:
/// under READ COMMITTED each execution takes a fresh snapshot. On a hot standby: 25006.
pub fn run<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> spi::Result<SpiTupleTable<'conn>> {
    refuse_in_recovery();
    let sql = crate::distribute::statement(sql);
    let plan = cached(sql, || Ok(client.prepare_mut(sql, types)?.keep()))?;
    client.update(&*plan, None, args)
}

/// Runs the query `sql` through its cached plan read-only, in the calling statement's
/// snapshot (what a STABLE function must see). A given text is either `run` or `read`.
pub fn read<'conn>(
    client: &SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> spi::Result<SpiTupleTable<'conn>> {
    let sql = crate::distribute::statement(sql);
    let plan = cached(sql, || Ok(client.prepare(sql, types)?.keep()))?;
    client.select(&*plan, None, args)
}

/// The plan of `sql`, prepared by `prepare` on first use. The cache's borrow ends before
/// the statement runs: its triggers may run cached plans too.
fn cached(
    sql: &'static str,
    prepare: impl FnOnce() -> spi::Result<OwnedPreparedStatement>,
) -> spi::Result<Rc<OwnedPreparedStatement>> {
    let key = (sql, path_key());
    if let Some(plan) = PLANS.with(|cache| cache.borrow().get(&key).cloned()) {
        return Ok(plan);
    }
    let plan = Rc::new(prepare()?);
    PLANS.with(|cache| cache.borrow_mut().insert(key, plan.clone()));
    Ok(plan)
}

/// Raises Postgres' own 25006 (read_only_sql_transaction) on a hot standby, where nothing
/// can be written. Every mutating SPI call goes through here first: pgrx's `update`
/// assigns a transaction id before the statement runs, and in recovery that fails with an
/// internal error (XX000, "cannot assign TransactionIds during recovery") before Postgres
/// could refuse the write itself.
pub fn refuse_in_recovery() {
    // SAFETY: reads shared-memory state; no preconditions.
    if unsafe { pg_sys::RecoveryInProgress() } {
        crate::error::TruxeError::new(
            crate::error::Sqlstate::ReadOnlyTransaction,
            "cannot execute a truxe write function in a read-only transaction (hot standby): \
             call it on the primary",
        )
        .raise();
    }
}

/// `run` in its own SPI connection.
pub fn run_once<R>(
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
    consume: impl FnOnce(SpiTupleTable<'_>) -> spi::Result<R>,
) -> spi::Result<R> {
    Spi::connect_mut(|client| consume(run(client, sql, types, args)?))
}

/// The first column of the first row of `rows`: None when there is no row (or the value is
/// NULL). For a statement that answers at most one row, e.g. `DELETE … RETURNING id`.
pub fn first_value<T: FromDatum + IntoDatum>(rows: SpiTupleTable<'_>) -> spi::Result<Option<T>> {
    if rows.is_empty() {
        Ok(None)
    } else {
        rows.first().get_one::<T>()
    }
}

/// Parameter type shorthands.
pub const UUID: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::UUIDOID);
pub const TEXT: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TEXTOID);
pub const JSONB: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::JSONBOID);
pub const INT4: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT4OID);
pub const INT8: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT8OID);
pub const INTERVAL: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INTERVALOID);
pub const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TIMESTAMPTZOID);
pub const INET: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INETOID);
pub const BOOL: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::BOOLOID);
pub const TEXT_ARRAY: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TEXTARRAYOID);
pub const UUID_ARRAY: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::UUIDARRAYOID);
pub const BYTEA: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::BYTEAOID);
