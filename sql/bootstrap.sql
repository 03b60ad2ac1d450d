-- truxe bootstrap: runs first in CREATE EXTENSION truxe.

-- Postgres creates the control file's schema (truxe) itself, before the extension exists,
-- so the schema is not an extension member: DROP EXTENSION truxe removes every object of
-- truxe but leaves the then-empty schema (README, "Create and drop"). Tying it to the extension
-- by hand would need a pg_depend entry that pg_dump cannot order (a dependency loop).
REVOKE ALL ON SCHEMA truxe FROM PUBLIC;

-- The two cluster-wide roles (docs/reference.md, "Roles and privileges"): created when absent, reused when present, never
-- dropped by DROP EXTENSION (other databases may use them).
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_account') THEN
    CREATE ROLE service_account NOLOGIN;
  END IF;
END
$$;
