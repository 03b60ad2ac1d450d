//! Audit trail: the append-only guard on truxe.audit_logs and purge_audit_logs, its one
//! exit (SPEC §3, §7).
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// True only while purge_audit_logs runs its own DELETE: the guard lets that one
    /// statement through. It is Rust state, so no SQL (no SET, no setting placeholder)
    /// can turn it on.
    static PURGING: Cell<bool> = const { Cell::new(false) };
}

/// Resets PURGING however the DELETE ends (an ERROR unwinds through this guard).
struct PurgeWindow;

impl PurgeWindow {
    fn open() -> PurgeWindow {
        PURGING.with(|p| p.set(true));
        PurgeWindow
    }
}

impl Drop for PurgeWindow {
    fn drop(&mut self) {
        PURGING.with(|p| p.set(false));
    }
}

/// Statement-level guard: UPDATE, DELETE and TRUNCATE on truxe.audit_logs raise 55000.
#[pg_trigger]
fn audit_logs_append_only<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    if !PURGING.with(|p| p.get()) {
        let op = trigger.op().map(|o| o.to_string()).unwrap_or_default();
        TruxeError::new(
            Sqlstate::NotInPrerequisiteState,
            format!(
                "truxe.audit_logs is append-only: {} is not allowed; rows leave only through truxe.purge_audit_logs",
                op.to_lowercase()
            ),
        )
        .raise();
    }
    Ok(None)
}

pgrx::extension_sql!(
    r#"
CREATE TRIGGER audit_logs_append_only
  BEFORE UPDATE OR DELETE OR TRUNCATE ON truxe.audit_logs
  FOR EACH STATEMENT EXECUTE FUNCTION truxe.audit_logs_append_only();
-- ALWAYS: session_replication_role = replica (which pg_restore uses) cannot skip it
ALTER TABLE truxe.audit_logs ENABLE ALWAYS TRIGGER audit_logs_append_only;
"#,
    name = "audit_logs_append_only",
    requires = ["schema", audit_logs_append_only]
);

/// Deletes audit rows older than `older_than` and returns how many; the only way rows leave
/// truxe.audit_logs. Refuses anything younger than 90 days (22023). service_account only.
#[pg_extern]
fn purge_audit_logs(older_than: Interval) -> i64 {
    purge(older_than).unwrap_or_raise()
}

fn purge(older_than: Interval) -> Result<i64, TruxeError> {
    let too_young =
        Spi::get_one_with_args::<bool>("SELECT $1 < interval '90 days'", &[older_than.into()])
            .map_err(|e| TruxeError::new(Sqlstate::InvalidParameter, e.to_string()))?
            .unwrap_or(true);
    if too_young {
        return fail(
            Sqlstate::InvalidParameter,
            "purge_audit_logs refuses to delete audit rows younger than 90 days",
        );
    }
    let _window = PurgeWindow::open();
    Spi::connect_mut(|client| {
        client
            .update(
                "DELETE FROM truxe.audit_logs WHERE created_at < pg_catalog.now() - $1",
                None,
                &[older_than.into()],
            )
            .map(|t| t.len() as i64)
    })
    .map_err(|e| TruxeError::new(Sqlstate::InvalidParameter, e.to_string()))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn add_rows() {
        Spi::run(
            "INSERT INTO truxe.audit_logs (action, created_at) VALUES
               ('user.login', now() - interval '200 days'),
               ('user.login', now() - interval '100 days'),
               ('user.login', now())",
        )
        .unwrap();
    }

    #[pg_test(
        error = "truxe.audit_logs is append-only: update is not allowed; rows leave only through truxe.purge_audit_logs"
    )]
    fn update_is_refused() {
        add_rows();
        Spi::run("UPDATE truxe.audit_logs SET details = '{\"x\": 1}'").unwrap();
    }

    #[pg_test(
        error = "truxe.audit_logs is append-only: delete is not allowed; rows leave only through truxe.purge_audit_logs"
    )]
    fn delete_is_refused_even_when_nothing_matches() {
        Spi::run("DELETE FROM truxe.audit_logs WHERE false").unwrap();
    }

    #[pg_test(error = "purge_audit_logs refuses to delete audit rows younger than 90 days")]
    fn purge_refuses_young_rows() {
        Spi::run("SELECT truxe.purge_audit_logs('89 days')").unwrap();
    }

    #[pg_test]
    fn purge_deletes_only_older_rows_and_closes_the_window() {
        add_rows();
        let n = Spi::get_one::<i64>("SELECT truxe.purge_audit_logs('150 days')").unwrap();
        assert_eq!(n, Some(1));
        let left = Spi::get_one::<i64>("SELECT count(*) FROM truxe.audit_logs").unwrap();
        assert_eq!(left, Some(2));
        let err = PgTryBuilder::new(|| {
            Spi::run("DELETE FROM truxe.audit_logs").unwrap();
            false
        })
        .catch_others(|_| true)
        .execute();
        assert!(err, "after purge the guard is armed again");
    }
}
