//! The C entry points of truxe's Rust trigger functions.
//!
//! pgrx's `#[pg_trigger]` wrapper panics ("PgTrigger::from_fcinfo failed", SQLSTATE XX000)
//! when the function is called as a plain function (`SELECT truxe.audit_users()`). The
//! functions are not callable by anyone but a superuser (no EXECUTE grant), but no input may
//! reach a panic, so truxe declares their entry points itself with [`trigger_entry!`]: the
//! same C symbols as pgrx's (`<name>_wrapper`, which the frozen 0.1.0 install script names),
//! and a clean 0A000 when there is no trigger context. Their `CREATE FUNCTION` statements
//! are hand-written beside the triggers that use them (sql/hierarchy.sql, src/audit.rs).
//!
//! The entry point is also where a trigger's error is reported: a trigger body returns
//! `Err(TruxeError)` like any other function and [`fire`] raises it with its SQLSTATE.
//! (`#[pg_trigger]` would not do: it reports an `Err` as "Trigger function panic", XX000,
//! losing the 23514/42501/55000/40001 the callers map.)
use crate::error::{Sqlstate, TruxeError};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// What a trigger function returns: the row to use (a BEFORE row trigger), or None.
pub type TriggerResult<'a> = Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TruxeError>;

/// A Rust trigger function.
pub type TriggerFn = for<'a> fn(&'a PgTrigger<'a>) -> TriggerResult<'a>;

/// Runs trigger function `f` (SQL name `name`) for the call `fcinfo`: 0A000 when it is not
/// called as a trigger; an `Err` it returns is raised with its SQLSTATE.
pub fn fire(fcinfo: pg_sys::FunctionCallInfo, name: &str, f: TriggerFn) -> pg_sys::Datum {
    // SAFETY: Postgres passes a valid fcinfo (or we report the NULL below).
    let trigger = unsafe { fcinfo.as_ref() }.and_then(|fcinfo| {
        // SAFETY: from_fcinfo checks that fcinfo->context is a TriggerData node.
        unsafe { PgTrigger::from_fcinfo(fcinfo) }.ok()
    });
    let Some(trigger) = trigger else {
        TruxeError::new(
            Sqlstate::FeatureNotSupported,
            format!("truxe.{name}() is a trigger function: it can only be called as a trigger"),
        )
        .raise()
    };
    // bound before it is returned: the result borrows `trigger`, which must outlive it
    #[allow(clippy::let_and_return)]
    let datum = match f(&trigger) {
        Ok(Some(row)) => row.into_trigger_datum().unwrap_or(pg_sys::Datum::from(0)),
        // the trigger protocol: a NULL pointer (not the isnull flag) for "no row"
        Ok(None) => pg_sys::Datum::from(0),
        Err(e) => e.raise(),
    };
    datum
}

/// `trigger_entry!(f, "sql_name", f_wrapper, pg_finfo_f_wrapper)`: the C entry point of the
/// Rust trigger function `f` (a V1 function named `f_wrapper`, as pgrx would name it),
/// declared in SQL as `truxe.sql_name()`.
macro_rules! trigger_entry {
    ($name:ident, $sql:literal, $wrapper:ident, $finfo:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub unsafe extern "C-unwind" fn $wrapper(
            fcinfo: ::pgrx::pg_sys::FunctionCallInfo,
        ) -> ::pgrx::pg_sys::Datum {
            ::pgrx::pg_sys::submodules::panic::pgrx_extern_c_guard(move || {
                $crate::trigger::fire(fcinfo, $sql, $name)
            })
        }

        $crate::trigger::v1_finfo!($finfo);
    };
}
pub(crate) use trigger_entry;

/// The `pg_finfo_<symbol>` function that tells PostgreSQL a hand-written C entry point
/// (a trigger's, validate_session's) uses the version-1 calling convention.
macro_rules! v1_finfo {
    ($finfo:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
            const V1_API: ::pgrx::pg_sys::Pg_finfo_record =
                ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1_API
        }
    };
}
pub(crate) use v1_finfo;
