//! Prepared SPI plans kept for the life of the backend, one per SQL text: the hot paths
//! (hierarchy walk, audit insert, auth flows) parse and plan each statement once.
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{self, OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Runs `sql` (parameters of `types`) through its cached plan, as a mutating statement:
/// under READ COMMITTED each execution takes a fresh snapshot.
pub fn run<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> spi::Result<SpiTupleTable<'conn>> {
    PLANS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(sql) {
            let plan = client.prepare_mut(sql, types)?.keep();
            cache.insert(sql, plan);
        }
        let plan = cache.get(sql).expect("inserted above");
        client.update(plan, None, args)
    })
}

/// `run` in its own SPI connection.
pub fn run_once<R>(
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(SpiTupleTable<'_>) -> spi::Result<R>,
) -> spi::Result<R> {
    Spi::connect_mut(|client| read(run(client, sql, types, args)?))
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
