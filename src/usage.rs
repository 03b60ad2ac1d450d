//! Usage metering (docs/reference.md, "Usage metering"): one counter per org, metric and calendar month (UTC).
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::plans::{self, INT8, TEXT, TIMESTAMPTZ, UUID};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::Uuid;

/// Adds `amount` to the org's `metric_type` for the calendar month (UTC) of `at` and returns
/// the new total. One upsert: concurrent calls never lose an increment. 22023 for a NULL
/// org, an empty or over-long metric, a NULL or negative amount, or a NULL, infinite or
/// out-of-range `at` (years 1 to 294000); an unknown org is the foreign key's 23503 (on
/// Citus, where the key cannot be kept, the same check made here).
/// service_account only.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn record_usage(
    org_id: Option<Uuid>,
    metric_type: Option<&str>,
    amount: default!(Option<i64>, 1),
    at: default!(Option<TimestampWithTimeZone>, "now()"),
) -> i64 {
    add(org_id, metric_type, amount, at).unwrap_or_raise()
}

fn add(
    org_id: Option<Uuid>,
    metric_type: Option<&str>,
    amount: Option<i64>,
    at: Option<TimestampWithTimeZone>,
) -> Result<i64, TruxeError> {
    let Some(org_id) = org_id else {
        return fail(Sqlstate::InvalidParameter, "org_id must not be NULL");
    };
    let Some(metric) = metric_type.filter(|m| !m.trim().is_empty() && m.len() <= 100) else {
        return fail(
            Sqlstate::InvalidParameter,
            "metric_type must be 1 to 100 characters",
        );
    };
    let Some(amount) = amount.filter(|a| *a >= 0) else {
        return fail(Sqlstate::InvalidParameter, "amount must be zero or more");
    };
    let Some(at) = at else {
        return fail(Sqlstate::InvalidParameter, "at must not be NULL");
    };
    // the period is at's calendar month and the next one's start: both must exist
    if !at.is_finite() || !(1..=294_000).contains(&at.year()) {
        return fail(
            Sqlstate::InvalidParameter,
            "at must be a finite time between the years 1 and 294000",
        );
    }
    // on Citus the foreign key to organizations is gone (truxe.distribute(): none from a
    // distributed table to a coordinator one): the check it made, with its lock
    if crate::claim::audit_logs_distributed() {
        let known = plans::run_once(
            "SELECT 1 FROM truxe.organizations WHERE id = $1 FOR KEY SHARE",
            &[UUID],
            &[org_id.into()],
            |rows| Ok(!rows.is_empty()),
        )?;
        if !known {
            return fail(
                Sqlstate::ForeignKeyViolation,
                format!("unknown organization {org_id}"),
            );
        }
    }
    // VALUES, not INSERT … SELECT: on Citus a SELECT (even from a function) makes it an
    // INSERT … SELECT through the coordinator, a VALUES row goes straight to its shard
    let total = plans::run_once(
        "INSERT INTO truxe.usage_metrics AS u (org_id, metric_type, metric_value, period_start, period_end)
         VALUES ($1, $2, $3, date_trunc('month', $4, 'UTC'),
                 (date_trunc('month', $4, 'UTC') AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC')
         ON CONFLICT (org_id, metric_type, period_start)
         DO UPDATE SET metric_value = u.metric_value + EXCLUDED.metric_value
         RETURNING metric_value",
        &[UUID, TEXT, INT8, TIMESTAMPTZ],
        &[org_id.into(), metric.into(), amount.into(), at.into()],
        |rows| rows.first().get_one::<i64>(),
    )?;
    total.ok_or_else(|| TruxeError::new(Sqlstate::Internal, "usage upsert returned no total"))
}
