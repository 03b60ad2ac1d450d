//! jsonb arguments kept as datums: never parsed into Rust (serde refuses documents nested
//! deeper than its recursion limit, which would turn a caller's value into XX000), checked
//! by their header and handed to SPI as they came.
use crate::error::{fail, Sqlstate, TruxeError};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::AnyElement;

/// A jsonb argument of the current call (NULL: `None`).
pub struct JsonbArg(Option<pg_sys::Datum>);

impl JsonbArg {
    /// `arg` must be an argument the SQL signature declares `jsonb`.
    pub fn new(arg: Option<AnyElement>) -> Self {
        JsonbArg(arg.map(|a| a.datum()))
    }

    /// `datum` must be an argument the SQL signature declares `jsonb` (None: NULL), as a
    /// hand-written entry point reads it (src/srf.rs).
    pub fn of_datum(datum: Option<pg_sys::Datum>) -> Self {
        JsonbArg(datum)
    }

    /// 22023 `<what> must be a JSON object` unless NULL or an object at its top level,
    /// read from the value's root header: no statement, no parsing.
    pub fn require_object(&self, what: &str) -> Result<(), TruxeError> {
        let Some(datum) = self.0 else {
            return Ok(());
        };
        // SAFETY: a jsonb datum of this call; pg_detoast_datum returns it, or a palloc'd
        // copy with a 4-byte header, whose root container header follows that header
        let header = unsafe {
            let value = pg_sys::pg_detoast_datum(datum.cast_mut_ptr());
            (*(value as *const pg_sys::Jsonb)).root.header
        };
        if header & pg_sys::JB_FOBJECT == 0 {
            return fail(
                Sqlstate::InvalidParameter,
                format!("{what} must be a JSON object"),
            );
        }
        Ok(())
    }

    /// The value as an SPI parameter of type jsonb (NULL for NULL).
    pub fn param(&self) -> DatumWithOid<'static> {
        // SAFETY: the datum is the caller's jsonb argument, alive for this call
        unsafe { DatumWithOid::new(self.0, pg_sys::JSONBOID) }
    }
}
