//! The two enums Rust code reads from rows (audit triggers, membership rules). Declared
//! here so that pgrx creates them (`truxe.user_status`, `truxe.membership_role`) and the
//! triggers can read those columns; sql/schema.sql requires them. `truxe.audit_action`
//! is only ever written, and stays in SQL.
#![allow(non_camel_case_types)]
use pgrx::prelude::*;

/// truxe.user_status
#[derive(PostgresEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum user_status {
    pending,
    active,
    suspended,
    deleted,
}

/// truxe.membership_role
#[derive(PostgresEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum membership_role {
    owner,
    admin,
    member,
    viewer,
}

impl user_status {
    pub fn label(self) -> &'static str {
        match self {
            user_status::pending => "pending",
            user_status::active => "active",
            user_status::suspended => "suspended",
            user_status::deleted => "deleted",
        }
    }
}

impl membership_role {
    /// The role of a label (a column read as text: no lookup of the enum type by name).
    pub fn from_label(label: &str) -> Option<membership_role> {
        [
            membership_role::owner,
            membership_role::admin,
            membership_role::member,
            membership_role::viewer,
        ]
        .into_iter()
        .find(|r| r.label() == label)
    }

    pub fn label(self) -> &'static str {
        match self {
            membership_role::owner => "owner",
            membership_role::admin => "admin",
            membership_role::member => "member",
            membership_role::viewer => "viewer",
        }
    }
}
