//! The one way truxe raises an error: a [`TruxeError`] (a SQLSTATE and a message) travels up as `Err` to the function's boundary — `unwrap_or_raise` in a
//! `#[pg_extern]` body, [`crate::trigger::fire`] for a trigger — and is reported there as a
//! pgrx [`ErrorReport`]: a Rust panic that pgrx turns into an `ereport`, so destructors run
//! and the SQLSTATE reaches the client unchanged. Failures inside truxe (SPI, reading a row)
//! convert into it as `XX000` here, once.
//!
//! truxe's own SQLSTATE `TX429` is not among them: pgrx's `PgSqlErrorCode` is a closed enum
//! of Postgres' codes, and pgrx reports any other code as `XX000` (also when it re-raises an
//! error that SQL inside a Rust function raised). A rate-limited function (issue_magic_link,
//! invite_by_email) therefore has a hand-written C entry point
//! (src/magic_link.rs, `limited_issuer`): its Rust body runs inside pgrx's guard and answers
//! a refusal as data ([`Limited`]); once the guard has returned (every Rust value of the
//! body dropped), the entry point raises the refusal as `TX429` through
//! [`raise_too_many_requests`], the one place TX429 is raised (README, "Developer notes").
use pgrx::heap_tuple::PgHeapTupleError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use std::ffi::CStr;

/// The SQLSTATEs truxe raises from Rust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sqlstate {
    /// 22023 invalid_parameter_value: bad input.
    InvalidParameter,
    /// 42501 insufficient_privilege: missing context or role.
    InsufficientPrivilege,
    /// P0002 no_data_found: unknown org, user or row.
    NotFound,
    /// 23514 check_violation: hierarchy cycle or depth.
    CheckViolation,
    /// 55000 object_not_in_prerequisite_state: e.g. writing to the append-only audit log.
    NotInPrerequisiteState,
    /// 0A000 feature_not_supported: e.g. a trigger function called as a plain function.
    FeatureNotSupported,
    /// 40001 serialization_failure: a concurrent change the caller should retry after.
    SerializationFailure,
    /// 25006 read_only_sql_transaction: a write function on a hot standby.
    ReadOnlyTransaction,
    /// 53400 configuration_limit_exceeded: only the 0.1.0 entry point of issue_magic_link
    /// (src/magic_link.rs), which cannot raise TX429.
    ConfigurationLimitExceeded,
    /// XX001 data_corrupted: an encrypted value that does not decrypt (altered, or copied
    /// from another row).
    DataCorrupted,
    /// 23503 foreign_key_violation: a row names an unknown row of another table, where a
    /// foreign key would have refused it (usage on Citus, where the key cannot be kept).
    ForeignKeyViolation,
    /// XX000 internal_error: a failure inside truxe (e.g. the OS random source).
    Internal,
}

impl Sqlstate {
    fn pgrx_code(self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            Sqlstate::InvalidParameter => ERRCODE_INVALID_PARAMETER_VALUE,
            Sqlstate::InsufficientPrivilege => ERRCODE_INSUFFICIENT_PRIVILEGE,
            Sqlstate::NotFound => ERRCODE_NO_DATA_FOUND,
            Sqlstate::CheckViolation => ERRCODE_CHECK_VIOLATION,
            Sqlstate::ForeignKeyViolation => ERRCODE_FOREIGN_KEY_VIOLATION,
            Sqlstate::NotInPrerequisiteState => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Sqlstate::FeatureNotSupported => ERRCODE_FEATURE_NOT_SUPPORTED,
            Sqlstate::SerializationFailure => ERRCODE_T_R_SERIALIZATION_FAILURE,
            Sqlstate::ReadOnlyTransaction => ERRCODE_READ_ONLY_SQL_TRANSACTION,
            Sqlstate::ConfigurationLimitExceeded => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            Sqlstate::DataCorrupted => ERRCODE_DATA_CORRUPTED,
            Sqlstate::Internal => ERRCODE_INTERNAL_ERROR,
        }
    }

    /// The five-character code, as clients see it.
    pub fn code(self) -> &'static str {
        match self {
            Sqlstate::InvalidParameter => "22023",
            Sqlstate::InsufficientPrivilege => "42501",
            Sqlstate::NotFound => "P0002",
            Sqlstate::CheckViolation => "23514",
            Sqlstate::ForeignKeyViolation => "23503",
            Sqlstate::NotInPrerequisiteState => "55000",
            Sqlstate::FeatureNotSupported => "0A000",
            Sqlstate::SerializationFailure => "40001",
            Sqlstate::ReadOnlyTransaction => "25006",
            Sqlstate::ConfigurationLimitExceeded => "53400",
            Sqlstate::DataCorrupted => "XX001",
            Sqlstate::Internal => "XX000",
        }
    }
}

/// An error on its way to the client: a SQLSTATE, a message and an optional hint (never a
/// secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruxeError {
    pub state: Sqlstate,
    pub message: String,
    pub hint: Option<&'static str>,
}

impl TruxeError {
    pub fn new(state: Sqlstate, message: impl Into<String>) -> Self {
        TruxeError {
            state,
            message: message.into(),
            hint: None,
        }
    }

    /// The same error with a HINT for the client.
    pub fn with_hint(self, hint: &'static str) -> Self {
        TruxeError {
            hint: Some(hint),
            ..self
        }
    }

    /// Raise this error (ERROR level: the statement and transaction abort). A panic that
    /// pgrx reports at the function boundary, so it may be called from any frame.
    pub fn raise(self) -> ! {
        ErrorReport::from(self).report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

impl From<TruxeError> for ErrorReport {
    fn from(e: TruxeError) -> Self {
        let report = ErrorReport::new(e.state.pgrx_code(), clip_message(e.message), "truxe");
        match e.hint {
            Some(hint) => report.set_hint(hint),
            None => report,
        }
    }
}

impl std::fmt::Display for TruxeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.state.code())
    }
}

/// Failures inside truxe, never caused by input: XX000.
macro_rules! internal_from {
    ($($source:ty => $what:literal),* $(,)?) => {$(
        impl From<$source> for TruxeError {
            fn from(e: $source) -> Self {
                TruxeError::new(Sqlstate::Internal, format!(concat!($what, ": {}"), e))
            }
        }
    )*};
}

internal_from!(
    pgrx::spi::Error => "SPI",
    pgrx::datum::TryFromDatumError => "reading a row",
    PgHeapTupleError => "reading a row",
    PgTriggerError => "reading the trigger's data",
    pgrx::datum::IntervalConversionError => "an interval out of range",
    pgrx::datetime::FromTimeError => "a timestamp out of range",
);

/// The outcome of a rate-limited call: what it made, or its refusal's message, which the
/// function's C entry point raises as `TX429` through [`raise_too_many_requests`] (see the
/// module doc).
pub enum Limited<T> {
    Done(T),
    TooManyRequests(&'static CStr),
}

/// truxe's own SQLSTATE `TX429` as PostgreSQL encodes one (`MAKE_SQLSTATE`: six bits per
/// character, the first in the lowest bits).
const TX429: std::ffi::c_int = {
    let code = *b"TX429";
    let mut value = 0;
    let mut i = 0;
    while i < 5 {
        value |= ((code[i] as std::ffi::c_int - b'0' as std::ffi::c_int) & 0x3F) << (6 * i);
        i += 1;
    }
    value
};

/// Raises `message` as `ERROR` with SQLSTATE `TX429`: the one place truxe raises TX429.
///
/// PostgreSQL's own `ereport` sequence (`errstart`, `errcode`, `errmsg("%s", …)`,
/// `errfinish`), which pgrx's `do_ereport` declares the same way for its closed set of
/// codes; `errmsg` copies the message into the error's own memory, and `errfinish` leaves
/// by `longjmp` to the nearest `PG_TRY` (the caller's executor, a PL/pgSQL exception block,
/// a savepoint's rollback), never returning.
///
/// # Safety
/// The `longjmp` skips every frame between here and that `PG_TRY` without running
/// destructors, so the caller must be a C entry point's own frame, **outside**
/// `pgrx_extern_c_guard`, that holds nothing needing a drop (no `String`, `Vec`, `Box`,
/// SPI connection or pgrx guard: only pointers, integers and `&'static` data), on the
/// backend's main thread. `limited_issuer` (src/magic_link.rs) is that caller: its guard
/// has returned, so every Rust value of the function's body is already dropped, and what it
/// holds is the `&'static CStr` of the refusal and `fcinfo`.
pub unsafe fn raise_too_many_requests(message: &'static CStr) -> ! {
    // declared here as pgrx declares them (its bindings leave them out): PostgreSQL's
    // error functions, called from the backend's main thread
    unsafe extern "C-unwind" {
        fn errstart(elevel: std::ffi::c_int, domain: *const std::ffi::c_char) -> bool;
        fn errcode(sqlerrcode: std::ffi::c_int) -> std::ffi::c_int;
        fn errmsg(fmt: *const std::ffi::c_char, ...) -> std::ffi::c_int;
        fn errfinish(
            filename: *const std::ffi::c_char,
            lineno: std::ffi::c_int,
            funcname: *const std::ffi::c_char,
        );
    }
    // SAFETY: per the contract above; the message is NUL-terminated and static, and is
    // passed as the argument of a "%s" format, never as a format itself
    unsafe {
        if errstart(PgLogLevel::ERROR as std::ffi::c_int, std::ptr::null()) {
            errcode(TX429);
            errmsg(c"%s".as_ptr(), message.as_ptr());
            errfinish(
                c"src/error.rs".as_ptr(),
                line!() as std::ffi::c_int,
                c"raise_too_many_requests".as_ptr(),
            );
        }
    }
    // errstart() at ERROR always returns true and errfinish() at ERROR never returns
    std::process::abort()
}

/// How many characters of an input value an error message quotes.
pub const QUOTED_CHARS: usize = 64;
/// The longest message truxe raises, in bytes: a safety net behind [`quote_input`] (a
/// message is never a place for bulk data, and a 10 MB message is a 10 MB log line).
const MAX_MESSAGE_BYTES: usize = 900;

/// An input value as an error message may show it: double-quoted, at most
/// [`QUOTED_CHARS`] characters (then `…`), control characters, quotes and backslashes
/// escaped. Every Rust error that names an input value goes through this.
pub fn quote_input(value: &str) -> String {
    let mut out = String::with_capacity(QUOTED_CHARS + 8);
    out.push('"');
    let mut chars = value.chars();
    for c in chars.by_ref().take(QUOTED_CHARS) {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out.push('"');
    out
}

/// `message` cut to [`MAX_MESSAGE_BYTES`] on a character boundary, NULs replaced.
fn clip_message(message: String) -> String {
    let message = if message.contains('\0') {
        message.replace('\0', " ")
    } else {
        message
    };
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Shorthand: `Err(TruxeError)`.
pub fn fail<T>(state: Sqlstate, message: impl Into<String>) -> Result<T, TruxeError> {
    Err(TruxeError::new(state, message))
}

/// `result.unwrap_or_raise()` at a `#[pg_extern]` function's boundary: the value, or the
/// error raised.
pub trait UnwrapOrRaise<T> {
    fn unwrap_or_raise(self) -> T;
}

impl<T> UnwrapOrRaise<T> for Result<T, TruxeError> {
    fn unwrap_or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}

/// For #[pg_test]s: runs `sql` and returns the SQLSTATE and message of the error it raised,
/// or None when it succeeded.
#[cfg(any(test, feature = "pg_test"))]
pub fn error_of(sql: &str) -> Option<(PgSqlErrorCode, String)> {
    use pgrx::pg_sys::panic::CaughtError;
    PgTryBuilder::new(|| {
        Spi::run(sql).expect("SPI reports errors by raising");
        None
    })
    .catch_others(|e| match e {
        CaughtError::PostgresError(r)
        | CaughtError::ErrorReport(r)
        | CaughtError::RustPanic { ereport: r, .. } => {
            Some((r.sql_error_code(), r.message().to_string()))
        }
    })
    .execute()
}

#[cfg(test)]
mod unit {
    #[test]
    fn quote_input_clips_and_escapes() {
        use super::{clip_message, quote_input};
        assert_eq!(quote_input("acme"), "\"acme\"");
        assert_eq!(quote_input("a\nb\u{1}\"c\\"), "\"a\\nb\\u{0001}\\\"c\\\\\"");
        let long = quote_input(&"é".repeat(10_000_000));
        assert_eq!(long.chars().count(), 64 + 3, "{long}");
        assert!(long.ends_with("…\""));
        let clipped = clip_message("x".repeat(5000));
        assert!(clipped.len() < 1000);
        assert_eq!(clip_message("a\0b".into()), "a b");
    }
}
