//! Operations (docs/operations.md): `truxe.metrics()`, a declarative SQL function in
//! sql/metrics.sql, granted to service_account (by sql/grants.sql) and pg_monitor.
pgrx::extension_sql_file!(
    "../sql/metrics.sql",
    name = "metrics",
    requires = ["schema", "api_keys", "mfa", "invitations"]
);
