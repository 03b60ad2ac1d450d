//! Cleanup: cleanup_expired_sessions, cleanup_expired_data (SPEC §7).
