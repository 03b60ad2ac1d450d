//! Rate limiting (docs/reference.md, "Rate limiting"), the Redis alternative: fixed windows aligned to the Unix epoch,
//! one row per hashed key and window, one statement per call.
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::plans::{self, INT4, TEXT, TIMESTAMPTZ};
use crate::security::sha256_hex;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

/// Microseconds from the Unix epoch to the Postgres epoch (2000-01-01).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;
const MAX_WINDOW_MICROS: i128 = 366 * 86_400 * 1_000_000;

/// Counts one call for `key` in the current window of `window_size` and says whether it is
/// within `max_requests`. Exactly `max_requests` calls per window are allowed whatever the
/// concurrency (the upsert locks the window's row). The key is stored only as its SHA-256.
/// The first refused call of a window sets its `exhausted_at` (counted by `truxe.metrics()`);
/// once a window is exhausted, further calls write nothing. 22023 for a NULL/empty key,
/// max_requests < 1, or a window not between 1 microsecond and 366 days.
/// service_account only.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rate_limit_hit(
    key: Option<&str>,
    max_requests: Option<i32>,
    window_size: default!(Option<Interval>, "'1 minute'"),
) -> TableIterator<
    'static,
    (
        name!(allowed, bool),
        name!(remaining, i32),
        name!(reset_at, TimestampWithTimeZone),
    ),
> {
    TableIterator::once(hit(key, max_requests, window_size).unwrap_or_raise())
}

fn hit(
    key: Option<&str>,
    max_requests: Option<i32>,
    window_size: Option<Interval>,
) -> Result<(bool, i32, TimestampWithTimeZone), TruxeError> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return fail(Sqlstate::InvalidParameter, "key must be a non-empty text");
    };
    let max = match max_requests {
        Some(m) if (1..i32::MAX).contains(&m) => m,
        _ => {
            return fail(
                Sqlstate::InvalidParameter,
                "max_requests must be at least 1",
            )
        }
    };
    let window = match window_size.map(|w| w.as_micros()) {
        Some(w) if w > 0 && w <= MAX_WINDOW_MICROS => w as i64,
        _ => {
            return fail(
                Sqlstate::InvalidParameter,
                "window_size must be positive and at most 366 days",
            )
        }
    };
    // SAFETY: reads the current transaction's start time (what now() returns).
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let start = (now + POSTGRES_EPOCH_MICROS).div_euclid(window) * window - POSTGRES_EPOCH_MICROS;
    let to_ts = |micros: i64| {
        TimestampWithTimeZone::try_from(micros)
            .map_err(|_| TruxeError::new(Sqlstate::InvalidParameter, "window out of range"))
    };
    let (window_start, reset_at) = (to_ts(start)?, to_ts(start + window)?);
    // the transaction's start (what now() returns) as a parameter, not now(): Citus refuses
    // a function that is not IMMUTABLE in DO UPDATE SET on a distributed table
    // (docs/scaling.md), and this is the same value
    let started = to_ts(now)?;
    let count = plans::run_once(
        "INSERT INTO truxe.rate_limits AS r (key_hash, window_start, window_end) VALUES ($1, $2, $3)
         ON CONFLICT (key_hash, window_start) DO UPDATE SET request_count = r.request_count + 1,
                exhausted_at = CASE WHEN r.request_count >= $4 THEN $5 END
          WHERE r.request_count <= $4
         RETURNING request_count",
        &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ, INT4, TIMESTAMPTZ],
        &[
            sha256_hex(key.as_bytes()).into(),
            window_start.into(),
            reset_at.into(),
            max.into(),
            started.into(),
        ],
        plans::first_value::<i32>,
    )?;
    // no row: the window was already past its limit, and this call changed nothing
    let count = count.unwrap_or(max.saturating_add(1));
    Ok((count <= max, (max - count.min(max)), reset_at))
}
