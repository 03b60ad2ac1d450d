-- truxe 0.1.0 -> 0.2.0, run by ALTER EXTENSION truxe UPDATE (TO '0.2.0').
--
-- 0.1.0 is released and its install script (sql/truxe--0.1.0.sql) is frozen: every change
-- that 0.2.0 makes to the catalog is made twice, once in the fresh-install sources (sql/*.sql
-- and the Rust #[pg_extern]s) and once here, and tests/integration/upgrade.rs proves that
-- both give the same catalog. Sections follow the order of the changes; each says why.
\echo Use "ALTER EXTENSION truxe UPDATE TO '0.2.0'" to load this file. \quit
