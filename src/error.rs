//! One way to raise errors with a SQLSTATE, used by every module.
//!
//! Standard codes go through pgrx's `ErrorReport` (a Rust panic that pgrx turns into an
//! `ereport` at the function boundary, so destructors run). pgrx's `PgSqlErrorCode` is a
//! closed enum of Postgres' own codes: a code of truxe's own (`TX429`) would come out as
//! XX000 that way, so those are raised with the raw error API instead — see [`Sqlstate`].
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use std::ffi::{c_char, c_int, CString};

/// The SQLSTATEs truxe raises.
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
    /// XX001 data_corrupted: an encrypted value that does not decrypt (altered, or copied
    /// from another row).
    DataCorrupted,
    /// TX429 (truxe's own): too many requests, e.g. magic links for one e-mail.
    TooManyRequests,
    /// XX000 internal_error: a failure inside truxe (e.g. the OS random source).
    Internal,
}

impl Sqlstate {
    fn pgrx_code(self) -> Option<PgSqlErrorCode> {
        use PgSqlErrorCode::*;
        Some(match self {
            Sqlstate::InvalidParameter => ERRCODE_INVALID_PARAMETER_VALUE,
            Sqlstate::InsufficientPrivilege => ERRCODE_INSUFFICIENT_PRIVILEGE,
            Sqlstate::NotFound => ERRCODE_NO_DATA_FOUND,
            Sqlstate::CheckViolation => ERRCODE_CHECK_VIOLATION,
            Sqlstate::NotInPrerequisiteState => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Sqlstate::FeatureNotSupported => ERRCODE_FEATURE_NOT_SUPPORTED,
            Sqlstate::SerializationFailure => ERRCODE_T_R_SERIALIZATION_FAILURE,
            Sqlstate::Internal => ERRCODE_INTERNAL_ERROR,
            Sqlstate::DataCorrupted => ERRCODE_DATA_CORRUPTED,
            Sqlstate::TooManyRequests => return None,
        })
    }

    /// The five-character code, as clients see it.
    pub fn code(self) -> &'static str {
        match self {
            Sqlstate::InvalidParameter => "22023",
            Sqlstate::InsufficientPrivilege => "42501",
            Sqlstate::NotFound => "P0002",
            Sqlstate::CheckViolation => "23514",
            Sqlstate::NotInPrerequisiteState => "55000",
            Sqlstate::FeatureNotSupported => "0A000",
            Sqlstate::SerializationFailure => "40001",
            Sqlstate::DataCorrupted => "XX001",
            Sqlstate::TooManyRequests => "TX429",
            Sqlstate::Internal => "XX000",
        }
    }
}

/// An error on its way to the client: a SQLSTATE and a message (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruxeError {
    pub state: Sqlstate,
    pub message: String,
}

impl TruxeError {
    pub fn new(state: Sqlstate, message: impl Into<String>) -> Self {
        TruxeError {
            state,
            message: message.into(),
        }
    }

    /// Raise this error (ERROR level: the statement and transaction abort).
    ///
    /// For truxe's own codes this longjmps straight out through the raw error API, which
    /// skips the destructors of every Rust frame between here and the `#[pg_extern]`
    /// boundary: call it only from that top-level frame, after its locals are dropped
    /// (as `Result::unwrap_or_raise` in a `#[pg_extern]` body does).
    pub fn raise(self) -> ! {
        let message = clip_message(self.message);
        match self.state.pgrx_code() {
            Some(code) => {
                ErrorReport::new(code, message, "truxe").report(PgLogLevel::ERROR);
                unreachable!("ERROR does not return")
            }
            None => raise_custom(self.state.code(), message),
        }
    }
}

impl std::fmt::Display for TruxeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.state.code())
    }
}

impl From<pgrx::spi::Error> for TruxeError {
    fn from(e: pgrx::spi::Error) -> Self {
        TruxeError::new(Sqlstate::Internal, format!("SPI: {e}"))
    }
}

impl From<pgrx::datum::TryFromDatumError> for TruxeError {
    fn from(e: pgrx::datum::TryFromDatumError) -> Self {
        TruxeError::new(Sqlstate::Internal, format!("reading a row: {e}"))
    }
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

/// `result.unwrap_or_raise()` in a `#[pg_extern]` body: the value, or the error raised.
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

/// Postgres' MAKE_SQLSTATE: five characters of [0-9A-Z], six bits each.
fn make_sqlstate(code: &str) -> c_int {
    code.bytes().take(5).enumerate().fold(0, |acc, (i, b)| {
        acc | ((((b.wrapping_sub(b'0')) & 0x3F) as c_int) << (6 * i))
    })
}

fn raise_custom(code: &str, message: String) -> ! {
    // not wrapped by #[pg_guard]: an ERROR raised here must reach Postgres unchanged
    unsafe extern "C-unwind" {
        fn errstart(elevel: c_int, domain: *const c_char) -> bool;
        fn errcode(sqlerrcode: c_int) -> c_int;
        fn errmsg_internal(fmt: *const c_char, ...) -> c_int;
        fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
    }
    let sqlstate = make_sqlstate(code);
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: Postgres copies the message into its error context before errfinish jumps;
    // the Rust strings are moved into palloc'd memory and dropped before the jump.
    unsafe {
        let msg = pg_sys::pstrdup(text.as_ptr());
        drop(text);
        drop(message);
        if errstart(PgLogLevel::ERROR as c_int, std::ptr::null()) {
            errcode(sqlstate);
            errmsg_internal(c"%s".as_ptr(), msg);
            errfinish(c"truxe".as_ptr(), 0, c"truxe".as_ptr());
        }
    }
    unreachable!("ERROR does not return")
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
    use super::make_sqlstate;

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

    #[test]
    fn make_sqlstate_matches_postgres() {
        // ERRCODE_INVALID_PARAMETER_VALUE = MAKE_SQLSTATE('2','2','0','2','3')
        assert_eq!(
            make_sqlstate("22023"),
            pgrx::prelude::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32
        );
        assert_eq!(
            make_sqlstate("P0002"),
            pgrx::prelude::PgSqlErrorCode::ERRCODE_NO_DATA_FOUND as i32
        );
    }
}
