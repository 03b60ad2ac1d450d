//! The two enums Rust code reads and passes (membership rules, invitations). Declared here
//! so that pgrx creates them (`truxe.user_status`, `truxe.membership_role`); sql/schema.sql
//! requires them. `truxe.audit_action` is only ever written, and stays in SQL. Row
//! triggers read enum columns as [`EnumValue`].
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

/// The value of any enum column, read from a row without naming its type: pgrx's derived
/// enums look their type up by name (`regtypein`, through the search_path) twice on every
/// read of a column, which was 1.3% of an invitation's acceptance in its audit triggers
/// (bench/README.md). The value is the label's pg_enum oid, as PostgreSQL stores it.
pub struct EnumValue(pg_sys::Oid);

impl EnumValue {
    /// The value's label (a syscache lookup by oid).
    pub fn label(self) -> String {
        pgrx::enum_helper::lookup_enum_by_oid(self.0).0
    }
}

impl FromDatum for EnumValue {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<EnumValue> {
        (!is_null).then(|| EnumValue(pg_sys::Oid::from(datum.value() as u32)))
    }
}

impl IntoDatum for EnumValue {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::ANYENUMOID
    }

    /// Any enum type (a syscache lookup by oid, not by name).
    fn is_compatible_with(other: pg_sys::Oid) -> bool {
        // SAFETY: a catalog lookup of a type oid
        unsafe { pg_sys::type_is_enum(other) }
    }
}

// SAFETY: an enum datum is its oid, passed by value
unsafe impl pgrx::datum::UnboxDatum for EnumValue {
    type As<'dat> = EnumValue;

    unsafe fn unbox<'dat>(datum: pgrx::datum::Datum<'dat>) -> EnumValue
    where
        Self: 'dat,
    {
        EnumValue(pg_sys::Oid::from(datum.sans_lifetime().value() as u32))
    }
}
