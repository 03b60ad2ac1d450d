//! Organisations and memberships: create_organization, invite_member, accept_invitation, change_role, remove_member, has_permission (SPEC §5).
