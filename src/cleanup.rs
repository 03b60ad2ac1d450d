//! Cleanup (docs/reference.md, "Cleanup"): deletes expired sessions, magic-link challenges, rate-limit windows
//! and invitations
//! in batches — each batch its own short statement that skips rows other transactions hold.
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::plans::{self, INT4, INTERVAL};
use pgrx::datum::Interval;
use pgrx::prelude::*;

/// Deletes sessions whose expiry or revocation is older than `retention`; returns how many.
/// 22023 for a NULL or negative retention. service_account only. The default is the
/// sessions retention of `BATCHES` (a `default!` must be a literal).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn cleanup_expired_sessions(retention: default!(Option<Interval>, "'7 days'")) -> i32 {
    // integer in SQL since 0.1.0 (its result type is kept); a count past i32::MAX saturates
    i32::try_from(sessions(retention).unwrap_or_raise()).unwrap_or(i32::MAX)
}

fn check_retention(retention: Option<Interval>) -> Result<Interval, TruxeError> {
    match retention {
        Some(r) if r.as_micros() >= 0 => Ok(r),
        _ => fail(Sqlstate::InvalidParameter, "retention must be zero or more"),
    }
}

fn sessions(retention: Option<Interval>) -> Result<i64, TruxeError> {
    let retention = check_retention(retention)?;
    Ok(plans::run_once(
        "DELETE FROM truxe.sessions WHERE expires_at < now() - $1 OR revoked_at < now() - $1",
        &[INTERVAL],
        &[retention.into()],
        |t| Ok(t.len() as i64),
    )?)
}

/// What cleanup_expired_data deletes, table by table, and how long after a row became due
/// (expired, revoked, used, or its window ended) it is kept, as (months, days, microseconds).
/// The retentions are stated here once for Rust; `truxe.metrics()` adds the same intervals
/// to compute `cleanup_overdue_seconds` (sql/metrics.sql), and
/// tests/integration/metrics.rs (`metrics_count_every_event_of_a_scripted_hour`) checks
/// that they agree: rows a day past their retention show as a day overdue, and once
/// cleanup has run nothing is overdue. Each
/// statement deletes one batch ($1 rows) of rows older than the retention ($2): `local`
/// takes a batch of row locations, locked with SKIP LOCKED so concurrent cleanups share the
/// work; `by_key` is the same delete for a table that Citus distributes
/// (`truxe.distribute()`), where a row location means nothing across shards and `FOR
/// UPDATE` is refused, so a batch is chosen by key, without locking.
struct Batch {
    table: &'static str,
    /// the retention: (months, days, microseconds)
    kept: (i32, i32, i64),
    local: &'static str,
    by_key: &'static str,
}

const BATCHES: [Batch; 4] = [
    Batch {
        table: "sessions",
        kept: (0, 7, 0),
        local: "DELETE FROM truxe.sessions WHERE ctid = ANY (ARRAY(
           SELECT ctid FROM truxe.sessions
            WHERE expires_at < now() - $2 OR revoked_at < now() - $2
            LIMIT $1 FOR UPDATE SKIP LOCKED))",
        by_key: "DELETE FROM truxe.sessions WHERE id = ANY (ARRAY(
           SELECT id FROM truxe.sessions
            WHERE expires_at < now() - $2 OR revoked_at < now() - $2 LIMIT $1))",
    },
    Batch {
        table: "magic_link_challenges",
        kept: (0, 1, 0),
        local: "DELETE FROM truxe.magic_link_challenges WHERE ctid = ANY (ARRAY(
           SELECT ctid FROM truxe.magic_link_challenges
            WHERE expires_at < now() - $2 OR used_at < now() - $2
            LIMIT $1 FOR UPDATE SKIP LOCKED))",
        by_key: "DELETE FROM truxe.magic_link_challenges WHERE id = ANY (ARRAY(
           SELECT id FROM truxe.magic_link_challenges
            WHERE expires_at < now() - $2 OR used_at < now() - $2 LIMIT $1))",
    },
    Batch {
        table: "rate_limits",
        kept: (0, 0, 3_600_000_000),
        local: "DELETE FROM truxe.rate_limits WHERE ctid = ANY (ARRAY(
           SELECT ctid FROM truxe.rate_limits WHERE window_end < now() - $2
            LIMIT $1 FOR UPDATE SKIP LOCKED))",
        by_key: "DELETE FROM truxe.rate_limits WHERE (key_hash, window_start) IN (
           SELECT key_hash, window_start FROM truxe.rate_limits
            WHERE window_end < now() - $2 LIMIT $1)",
    },
    Batch {
        table: "invitations",
        kept: (0, 30, 0),
        local: "DELETE FROM truxe.invitations WHERE ctid = ANY (ARRAY(
           SELECT ctid FROM truxe.invitations
            WHERE expires_at < now() - $2 OR accepted_at < now() - $2 OR revoked_at < now() - $2
            LIMIT $1 FOR UPDATE SKIP LOCKED))",
        by_key: "DELETE FROM truxe.invitations WHERE (org_id, id) IN (
           SELECT org_id, id FROM truxe.invitations
            WHERE expires_at < now() - $2 OR accepted_at < now() - $2 OR revoked_at < now() - $2
            LIMIT $1)",
    },
];

/// The truxe tables Citus distributes in this database (none without Citus: its catalog
/// is read only where it exists).
fn distributed_tables() -> Result<Vec<String>, TruxeError> {
    let citus = plans::run_once(
        "SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL",
        &[],
        &[],
        |t| t.first().get_one::<bool>(),
    )?;
    if citus != Some(true) {
        return Ok(Vec::new());
    }
    let tables = plans::run_once(
        "SELECT coalesce(array_agg(c.relname::text), '{}') FROM pg_catalog.pg_dist_partition p
           JOIN pg_catalog.pg_class c ON c.oid = p.logicalrelid
          WHERE c.relnamespace = 'truxe'::regnamespace AND p.partmethod = 'h'",
        &[],
        &[],
        |t| t.first().get_one::<Vec<String>>(),
    )?;
    Ok(tables.unwrap_or_default())
}

/// Deletes sessions expired or revoked more than 7 days ago, magic-link challenges expired
/// or used more than 1 day ago, rate-limit windows that ended more than 1 hour ago, and
/// invitations expired, accepted or revoked more than 30 days ago, in
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
    let distributed = distributed_tables()?;
    let mut out = Vec::with_capacity(BATCHES.len());
    for Batch {
        table,
        kept: (months, days, micros),
        local,
        by_key,
    } in BATCHES
    {
        let sql = if distributed.iter().any(|t| t == table) {
            by_key
        } else {
            local
        };
        let kept = Interval::new(months, days, micros)?;
        let mut total = 0i64;
        loop {
            let n = plans::run_once(sql, &[INT4, INTERVAL], &[batch.into(), kept.into()], |t| {
                Ok(t.len() as i64)
            })?;
            total += n;
            if n < i64::from(batch) {
                break;
            }
        }
        out.push((table.to_string(), total));
    }
    Ok(out)
}
