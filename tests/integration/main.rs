//! Integration tests: a real server, real connections, real roles.
//! Run by scripts/test once per PostgreSQL major version (TRUXE_PG_CONFIG).
mod constraints;
mod dump;
mod harness;
mod install;
mod rls;
mod security;
