//! Integration tests: a real server, real connections, real roles.
//! Run by scripts/test once per PostgreSQL major version (TRUXE_PG_CONFIG).
mod api_keys;
mod apptables;
mod audit;
mod auth;
mod citus;
mod constraints;
mod dump;
mod hardening;
mod harness;
mod hierarchy;
mod hostile;
mod identity;
mod install;
mod invitations;
mod metrics;
mod mfa;
mod ops;
mod orgs;
mod rls;
mod seal;
mod security;
mod session_policies;
mod sessions;
mod shadow;
mod standby;
mod upgrade;
