//! Hand-written C entry points for the set-returning functions on a request's path
//! (create_session, validate_session, refresh_session, and the rate-limited issuers of
//! src/magic_link.rs, `limited_issuer`: at most one row each), in materialize mode. A pgrx `TableIterator` function is value-per-call: the executor calls
//! it twice for one row (the row, then "done"), each call passing through the function's
//! `SET search_path` clause (a save and a restore of the setting), and the first call
//! builds the result's tuple descriptor from the catalog. Here the one call fills the
//! caller's tuplestore, with the caller's descriptor where it gives one (a function scan
//! does). The C symbols are the ones pgrx named (`<fn>_wrapper`), which 0.1.0's install
//! script names too, so both versions' `CREATE FUNCTION` statements load them.
use pgrx::pg_sys;

/// Defines the exported C symbol `$wrapper` (with its `pg_finfo_` record `$finfo`) that
/// runs `$body(fcinfo)` inside pgrx's guard (a Rust panic or a raised error becomes a
/// PostgreSQL ERROR). `$body` must be an `unsafe fn(FunctionCallInfo) -> Datum` whose
/// contract is that `fcinfo` is the executor's call of the SQL function naming `$wrapper`.
macro_rules! one_row_entry {
    ($(#[$doc:meta])* $wrapper:ident, $finfo:ident, $body:path) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub unsafe extern "C-unwind" fn $wrapper(
            fcinfo: ::pgrx::pg_sys::FunctionCallInfo,
        ) -> ::pgrx::pg_sys::Datum {
            ::pgrx::pg_sys::submodules::panic::pgrx_extern_c_guard(move || {
                // SAFETY: fcinfo is the executor's call of the function naming this symbol
                unsafe { $body(fcinfo) }
            })
        }
        $crate::trigger::v1_finfo!($finfo);
    };
}
pub(crate) use one_row_entry;

/// Makes the call a materialized set (0A000 from PostgreSQL where the caller cannot take
/// one), then runs `row` and puts its row, if any, into the set: N columns, `None` for
/// NULL. Returns the function's (ignored) result datum.
///
/// # Safety
/// `fcinfo` must be the executor's call of a set-returning function whose result has the
/// N columns, in order and of the types, of the datums `row` gives.
pub(crate) unsafe fn one_row<const N: usize>(
    fcinfo: pg_sys::FunctionCallInfo,
    row: impl FnOnce() -> Option<[Option<pg_sys::Datum>; N]>,
) -> pg_sys::Datum {
    // SAFETY: per the contract above; the result info is read only once its node tag says
    // it is a ReturnSetInfo, and InitMaterializedSRF checks the modes the caller allows
    // (before `row` runs, so that a refused call has done nothing)
    unsafe {
        let info = (*fcinfo).resultinfo;
        let rsinfo = info.cast::<pg_sys::ReturnSetInfo>();
        let expected = !info.is_null()
            && pgrx::is_a(info, pg_sys::NodeTag::T_ReturnSetInfo)
            && !(*rsinfo).expectedDesc.is_null();
        pg_sys::InitMaterializedSRF(
            fcinfo,
            if expected {
                pg_sys::MAT_SRF_USE_EXPECTED_DESC
            } else {
                0
            },
        );
        if let Some(row) = row() {
            let mut values = row.map(|v| v.unwrap_or(pg_sys::Datum::from(0)));
            let mut nulls = row.map(|v| v.is_none());
            pg_sys::tuplestore_putvalues(
                (*rsinfo).setResult,
                (*rsinfo).setDesc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
        }
        pg_sys::Datum::from(0)
    }
}
