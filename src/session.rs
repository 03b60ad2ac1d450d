//! Sessions: create_session, validate_session, refresh_session, revoke_session, revoke_user_sessions (SPEC §7).
