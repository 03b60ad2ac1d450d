//! Cleanup (docs/reference.md, "Cleanup"): deletes expired sessions, magic-link challenges and rate-limit windows
//! in batches — each batch its own short statement that skips rows other transactions hold.
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::plans::{self, INT4, INTERVAL};
use pgrx::datum::Interval;
use pgrx::prelude::*;

/// Deletes sessions whose expiry or revocation is older than `retention`; returns how many.
/// 22023 for a NULL or negative retention. service_account only.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn cleanup_expired_sessions(retention: default!(Option<Interval>, "'7 days'")) -> i32 {
    sessions(retention).unwrap_or_raise() as i32
}

fn check_retention(retention: Option<Interval>) -> Result<Interval, TruxeError> {
    match retention {
        Some(r) if r.as_micros() >= 0 => Ok(r),
        _ => fail(Sqlstate::InvalidParameter, "retention must be zero or more"),
    }
}

fn sessions(retention: Option<Interval>) -> Result<usize, TruxeError> {
    let retention = check_retention(retention)?;
    Ok(plans::run_once(
        "DELETE FROM truxe.sessions WHERE expires_at < now() - $1 OR revoked_at < now() - $1",
        &[INTERVAL],
        &[retention.into()],
        |t| Ok(t.len()),
    )?)
}

/// What cleanup_expired_data deletes, table by table; each statement deletes one batch.
const BATCHES: [(&str, &str); 3] = [
    (
        "sessions",
        "DELETE FROM truxe.sessions WHERE ctid = ANY (ARRAY(
           SELECT ctid FROM truxe.sessions
            WHERE expires_at < now() - interval '7 days' OR revoked_at < now() - interval '7 days'
            LIMIT $1 FOR UPDATE SKIP LOCKED))",
    ),
    (
        "magic_link_challenges",
        "DELETE FROM truxe.magic_link_challenges WHERE ctid = ANY (ARRAY(
           SELECT ctid FROM truxe.magic_link_challenges
            WHERE expires_at < now() - interval '1 day' OR used_at < now() - interval '1 day'
            LIMIT $1 FOR UPDATE SKIP LOCKED))",
    ),
    (
        "rate_limits",
        "DELETE FROM truxe.rate_limits WHERE ctid = ANY (ARRAY(
           SELECT ctid FROM truxe.rate_limits WHERE window_end < now() - interval '1 hour'
            LIMIT $1 FOR UPDATE SKIP LOCKED))",
    ),
];

/// Deletes sessions expired or revoked more than 7 days ago, magic-link challenges expired
/// or used more than 1 day ago, and rate-limit windows that ended more than 1 hour ago, in
/// batches of `batch_size` rows (1 to 1,000,000; else 22023). Returns one row per table.
/// service_account only.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn cleanup_expired_data(
    batch_size: default!(Option<i32>, 10000),
) -> TableIterator<'static, (name!(table_name, String), name!(deleted, i64))> {
    TableIterator::new(data(batch_size).unwrap_or_raise())
}

fn data(batch_size: Option<i32>) -> Result<Vec<(String, i64)>, TruxeError> {
    let batch = match batch_size {
        Some(b) if (1..=1_000_000).contains(&b) => b,
        _ => {
            return fail(
                Sqlstate::InvalidParameter,
                "batch_size must be between 1 and 1000000",
            )
        }
    };
    let mut out = Vec::with_capacity(BATCHES.len());
    for (table, sql) in BATCHES {
        let mut total = 0i64;
        loop {
            let n = plans::run_once(sql, &[INT4], &[batch.into()], |t| Ok(t.len()))?;
            total += n as i64;
            if n < batch as usize {
                break;
            }
        }
        out.push((table.to_string(), total));
    }
    Ok(out)
}
