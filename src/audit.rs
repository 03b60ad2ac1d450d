//! Audit trail: the Rust audit triggers (SPEC §6), the append-only guard and purge_audit_logs.
