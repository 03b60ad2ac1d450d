//! One row of a truxe table found by equality on a unique index, read without SPI or the
//! executor. validate_session (and authenticate, which builds on it) runs on every request:
//! as SPI statements its two lookups spent more time starting the executor and
//! revalidating the cached plan than reading the rows (bench/README.md, "validate_session
//! without the executor").
//!
//! Everything is found by name in the `truxe` schema on each call (no `search_path`), each
//! index is checked to be the given table's, keyed first on the given column, and each
//! column's type is checked before its value is read. Reads see the calling statement's
//! snapshot, as a read-only SPI statement does. Row Level Security is not applied: only
//! SECURITY DEFINER functions owned by the extension's owner read through here, whose
//! statements RLS would not restrict either. A table read here must stay a local table
//! (on Citus, one `truxe.distribute()` leaves on the coordinator).
use crate::error::{fail, Sqlstate, TruxeError};
use pgrx::datum::FromDatum;
use pgrx::pg_sys;
use pgrx::PgRelation;
use std::ffi::CStr;

/// A table and one of its unique indexes, opened with AccessShareLock (released when
/// dropped, as a catalog read releases it).
pub(crate) struct Probe {
    heap: PgRelation,
    index: PgRelation,
}

/// The columns of the row a [`Probe::fetch`] found, valid inside its reader only.
pub(crate) struct Row<'a> {
    slot: *mut pg_sys::TupleTableSlot,
    heap: &'a PgRelation,
}

impl Probe {
    /// Opens `truxe.<table>` and its index `truxe.<index>`, which must be keyed first on
    /// `key_column`. XX000 when any of them is missing or the index is not that table's.
    pub(crate) fn open(table: &CStr, index: &CStr, key_column: &CStr) -> Result<Self, TruxeError> {
        // SAFETY: catalog lookups by name; 0 (InvalidOid) when absent, checked below.
        let (heap_oid, index_oid) = unsafe {
            let schema = pg_sys::get_namespace_oid(c"truxe".as_ptr(), true);
            (
                pg_sys::get_relname_relid(table.as_ptr(), schema),
                pg_sys::get_relname_relid(index.as_ptr(), schema),
            )
        };
        if heap_oid == pg_sys::InvalidOid || index_oid == pg_sys::InvalidOid {
            return fail(Sqlstate::Internal, "a truxe table or index is missing");
        }
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        // SAFETY: both oids name existing relations (above); the lock is held until drop.
        let (heap, index) = unsafe {
            (
                PgRelation::with_lock(heap_oid, lock),
                PgRelation::with_lock(index_oid, lock),
            )
        };
        let key_column = column(&heap, key_column)?.0;
        // SAFETY: an open index relation has its pg_index row loaded (rd_index); for any
        // other relation kind rd_index is NULL, checked first.
        let index_fits = unsafe {
            let form = index.rd_index;
            !form.is_null()
                && (*form).indrelid == heap_oid
                && (*form).indisunique
                && (*form).indnkeyatts >= 1
                && *(*form).indkey.values.as_ptr() == key_column
        };
        if !index_fits {
            return fail(Sqlstate::Internal, "a truxe index does not fit its lookup");
        }
        Ok(Probe { heap, index })
    }

    /// Reads the row whose key column equals `key` (compared with the btree equality
    /// function `eq_proc` of the key's type) through `read`; None when no row is visible in
    /// the calling statement's snapshot. XX000 outside a statement (no active snapshot).
    pub(crate) fn fetch<R>(
        &self,
        eq_proc: u32,
        key: pg_sys::Datum,
        read: impl FnOnce(&Row) -> Result<R, TruxeError>,
    ) -> Result<Option<R>, TruxeError> {
        // SAFETY: both relations are open and locked (self); the scan key, scan and slot
        // live inside this block and are released before it ends, on every path that does
        // not raise (a raised error releases them with the transaction's resources).
        unsafe {
            if !pg_sys::ActiveSnapshotSet() {
                return fail(Sqlstate::Internal, "a truxe lookup ran outside a statement");
            }
            let mut scankey = pg_sys::ScanKeyData::default();
            pg_sys::ScanKeyInit(
                &mut scankey,
                1,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::Oid::from(eq_proc),
                key,
            );
            let heap = self.heap.as_ptr();
            let snapshot = pg_sys::GetActiveSnapshot();
            #[cfg(not(feature = "pg18"))]
            let scan = pg_sys::index_beginscan(heap, self.index.as_ptr(), snapshot, 1, 0);
            #[cfg(feature = "pg18")]
            let scan = pg_sys::index_beginscan(
                heap,
                self.index.as_ptr(),
                snapshot,
                std::ptr::null_mut(),
                1,
                0,
            );
            pg_sys::index_rescan(scan, &mut scankey, 1, std::ptr::null_mut(), 0);
            let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            let found =
                pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot);
            let result = if found {
                read(&Row {
                    slot,
                    heap: &self.heap,
                })
                .map(Some)
            } else {
                Ok(None)
            };
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::index_endscan(scan);
            result
        }
    }
}

impl Row<'_> {
    /// Column `name` as `T`, whose SQL type must be `typ`; None when NULL. XX000 for a
    /// missing column or another type.
    pub(crate) fn get<T: FromDatum>(
        &self,
        name: &CStr,
        typ: pg_sys::Oid,
    ) -> Result<Option<T>, TruxeError> {
        let (attnum, actual) = column(self.heap, name)?;
        if actual != typ {
            return fail(Sqlstate::Internal, "a truxe column has an unexpected type");
        }
        Ok(self.datum(attnum).and_then(|d| {
            // SAFETY: the datum is of type `typ` (checked above), which T reads.
            unsafe { T::from_polymorphic_datum(d, false, typ) }
        }))
    }

    /// Whether enum column `name` holds `label`. XX000 for a missing column or a type
    /// without that label.
    pub(crate) fn enum_is(&self, name: &CStr, label: &CStr) -> Result<bool, TruxeError> {
        let (attnum, typ) = column(self.heap, name)?;
        // SAFETY: a catalog lookup of (enum type, label); InvalidOid when absent.
        let wanted = unsafe {
            pg_sys::GetSysCacheOid(
                pg_sys::SysCacheIdentifier::ENUMTYPOIDNAME as i32,
                pg_sys::Anum_pg_enum_oid as pg_sys::AttrNumber,
                pg_sys::Datum::from(typ),
                pg_sys::Datum::from(label.as_ptr()),
                pg_sys::Datum::from(0),
                pg_sys::Datum::from(0),
            )
        };
        if wanted == pg_sys::InvalidOid {
            return fail(Sqlstate::Internal, "a truxe enum lacks a label");
        }
        Ok(self
            .datum(attnum)
            .is_some_and(|d| d.value() == pg_sys::Datum::from(wanted).value()))
    }

    /// The slot's value of column `attnum` (1-based), None when NULL.
    fn datum(&self, attnum: pg_sys::AttrNumber) -> Option<pg_sys::Datum> {
        let i = usize::try_from(attnum - 1).ok()?;
        // SAFETY: the slot holds a row of the heap relation and attnum is one of its
        // columns (column() found it in the relation's descriptor): deform up to it, then
        // read its value and null flag.
        unsafe {
            if i32::from((*self.slot).tts_nvalid) < i32::from(attnum) {
                pg_sys::slot_getsomeattrs_int(self.slot, i32::from(attnum));
            }
            if *(*self.slot).tts_isnull.add(i) {
                None
            } else {
                Some(*(*self.slot).tts_values.add(i))
            }
        }
    }
}

/// The number and type of `name` in `rel`'s descriptor; XX000 when it has no such live
/// column.
fn column(rel: &PgRelation, name: &CStr) -> Result<(pg_sys::AttrNumber, pg_sys::Oid), TruxeError> {
    let desc = rel.tuple_desc();
    for attr in desc.iter() {
        // SAFETY: attname is a NUL-terminated NameData.
        let attname = unsafe { CStr::from_ptr(attr.attname.data.as_ptr()) };
        if !attr.attisdropped && attname == name {
            return Ok((attr.attnum, attr.atttypid));
        }
    }
    fail(Sqlstate::Internal, "a truxe column is missing")
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::Probe;
    use pgrx::prelude::*;
    use pgrx::{pg_sys, IntoDatum, Uuid};

    #[pg_test]
    fn reads_a_visible_row_and_checks_what_it_reads() {
        let id = Spi::get_one::<Uuid>(
            "INSERT INTO truxe.users (email, status) VALUES ('probe@example.com', 'active') RETURNING id",
        )
        .unwrap()
        .unwrap();
        // a later statement's snapshot, which sees the row (the test's own statement began
        // before it was inserted)
        // SAFETY: a transaction is open; the snapshot is popped at the end of the test.
        unsafe {
            pg_sys::CommandCounterIncrement();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let users = Probe::open(c"users", c"users_pkey", c"id").unwrap();
        let key = id.into_datum().unwrap();
        let read = users.fetch(pg_sys::F_UUID_EQ, key, |row| {
            Ok((
                row.get::<Uuid>(c"id", pg_sys::UUIDOID)?,
                row.enum_is(c"status", c"active")?,
                row.enum_is(c"status", c"suspended")?,
                // the wrong type, a missing column, an unknown label: XX000, never a read
                row.get::<i64>(c"id", pg_sys::TIMESTAMPTZOID).is_err(),
                row.get::<Uuid>(c"no_such_column", pg_sys::UUIDOID).is_err(),
                row.enum_is(c"status", c"no_such_label").is_err(),
            ))
        });
        assert_eq!(
            read.unwrap(),
            Some((Some(id), true, false, true, true, true))
        );
        let other = Uuid::from_bytes([7; 16]).into_datum().unwrap();
        assert_eq!(
            users.fetch(pg_sys::F_UUID_EQ, other, |_| Ok(())).unwrap(),
            None
        );
    }

    #[pg_test]
    fn refuses_an_index_that_is_not_the_tables_or_not_on_the_column() {
        assert!(Probe::open(c"sessions", c"users_pkey", c"id").is_err());
        assert!(Probe::open(c"sessions", c"sessions_jti_hash_key", c"user_id").is_err());
        assert!(Probe::open(c"sessions", c"idx_sessions_user_id", c"user_id").is_err());
        assert!(Probe::open(c"no_such_table", c"users_pkey", c"id").is_err());
        assert!(Probe::open(c"sessions", c"sessions_jti_hash_key", c"jti_hash").is_ok());
    }
}
