-- Runs first, in a fresh database (scripts/regress; `cargo pgrx regress` runs it when it
-- creates the database): what scripts/run does before the demo.
CREATE EXTENSION truxe CASCADE;
