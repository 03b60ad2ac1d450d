//! Request context: set_context, clear_context, current_user_id, current_org_id, accessible_org_ids (SPEC §2).
