//! Reads of a few rows through one btree index, without SPI or the executor: what the org
//! sets under every RLS policy run once per statement (src/context.rs), and the session and
//! user lookups of validate_session (src/session.rs), on every request (the session's on a
//! single node only: on Citus, where sessions are distributed, it is read through SQL). Through SPI, such a
//! read pays the plan cache's revalidation, executor start-up of every plan node, the
//! expression machinery for each qual and a result tuple per row; here it pays the index
//! descent and, for an index-only read, the visibility map (bench/README.md, "Performance
//! work after the 0.2 run").
//!
//! Each read runs in the calling statement's active snapshot, as a read-only SPI statement
//! would, takes the same AccessShareLock on the table and the index, and sees exactly the
//! rows an index (only) scan sees. Relations, types and enum labels are looked up by name in
//! schema `truxe` on every call (catalog cache hits): nothing here resolves a name through
//! the caller's `search_path`. The org sets fall back to SQL when [`usable`] says no (under
//! SERIALIZABLE, whose predicate locks on heap pages an index-only read skips only the
//! executor takes) or a lookup fails. A heap read (`Read::Heap`) takes SERIALIZABLE's
//! predicate locks itself: the btree and the heap fetch take them, as for any index scan.
use pgrx::pg_sys;
use pgrx::IntoDatum;
use std::ffi::CStr;

/// Most attributes an index read here deforms.
const MAX_ATTS: usize = 8;

/// Whether a direct read can stand in for a read-only SQL statement now: there is an active
/// (MVCC) snapshot and the transaction is not SERIALIZABLE (SSI's predicate locks on heap
/// pages read through the visibility map are taken by the executor, not here).
pub(crate) fn usable() -> bool {
    // SAFETY: backend-local state, no preconditions.
    unsafe {
        pg_sys::ActiveSnapshotSet() && pg_sys::XactIsoLevel != pg_sys::XACT_SERIALIZABLE as i32
    }
}

/// The oid of schema `truxe`, when it exists.
pub(crate) fn truxe_namespace() -> Option<pg_sys::Oid> {
    // SAFETY: a catalog cache lookup by name; missing_ok.
    let oid = unsafe { pg_sys::get_namespace_oid(c"truxe".as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The oid of relation `name` in schema `nsp`, when it exists.
pub(crate) fn relation(nsp: pg_sys::Oid, name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: a catalog cache lookup by name; InvalidOid when missing.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), nsp) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The oid of label `label` of enum type `name` in schema `nsp`, when both exist.
pub(crate) fn enum_label(nsp: pg_sys::Oid, name: &CStr, label: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: catalog cache lookups by key; InvalidOid when missing. Name keys are passed as
    // C strings, as PostgreSQL's own enum_in does.
    let oid = unsafe {
        let typ = pg_sys::GetSysCacheOid(
            pg_sys::SysCacheIdentifier::TYPENAMENSP as _,
            pg_sys::Anum_pg_type_oid as _,
            pg_sys::Datum::from(name.as_ptr()),
            pg_sys::Datum::from(nsp),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        );
        if typ == pg_sys::InvalidOid {
            return None;
        }
        pg_sys::GetSysCacheOid(
            pg_sys::SysCacheIdentifier::ENUMTYPOIDNAME as _,
            pg_sys::Anum_pg_enum_oid as _,
            pg_sys::Datum::from(typ),
            pg_sys::Datum::from(label.as_ptr()),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The number of column `name` of table `rel`, when it has one.
pub(crate) fn column(rel: pg_sys::Oid, name: &CStr) -> Option<i16> {
    // SAFETY: a catalog cache lookup; InvalidAttrNumber (0) when missing.
    let attnum = unsafe { pg_sys::get_attnum(rel, name.as_ptr()) };
    (attnum > 0).then_some(attnum)
}

/// The number of column `name` of table `rel`, when it has one of type `typ`: a caller
/// that reads the value as that type never misreads a changed column.
pub(crate) fn typed_column(rel: pg_sys::Oid, name: &CStr, typ: pg_sys::Oid) -> Option<i16> {
    let attnum = column(rel, name)?;
    // SAFETY: a catalog cache lookup of an existing column
    (unsafe { pg_sys::get_atttype(rel, attnum) } == typ).then_some(attnum)
}

/// A table and one of its btree indexes, opened with AccessShareLock (held to the end of
/// the transaction, as the executor holds it).
pub(crate) struct Indexed {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
}

impl Indexed {
    /// Opens table `table` and index `index`, which must be an index of that table on
    /// exactly the columns `columns` (key and INCLUDE columns, in order); None otherwise
    /// (nothing stays open), so that a changed index can never be read as the old one.
    pub(crate) fn open(
        table: pg_sys::Oid,
        index: pg_sys::Oid,
        columns: &[&CStr],
    ) -> Option<Indexed> {
        let mut expected = [0i16; MAX_ATTS];
        if columns.len() > MAX_ATTS {
            return None;
        }
        for (slot, name) in expected.iter_mut().zip(columns) {
            *slot = column(table, name)?;
        }
        // SAFETY: both oids were just looked up; opening takes the lock first, as the
        // executor does; on a mismatch both are closed again (the locks stay, harmlessly).
        // indkey holds indnatts attribute numbers.
        unsafe {
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let heap = pg_sys::table_open(table, lock);
            let idx = pg_sys::index_open(index, lock);
            let form = (*idx).rd_index;
            let fits = !form.is_null()
                && (*form).indrelid == table
                && (*form).indnatts as usize == columns.len()
                && (*form).indkey.values.as_slice(columns.len()) == &expected[..columns.len()];
            if !fits {
                pg_sys::index_close(idx, pg_sys::NoLock as _);
                pg_sys::table_close(heap, pg_sys::NoLock as _);
                return None;
            }
            Some(Indexed { heap, index: idx })
        }
    }

    /// Closes both relations (the locks stay until the transaction ends).
    pub(crate) fn close(self) {
        // SAFETY: opened by `open`, closed once (self is consumed)
        unsafe {
            pg_sys::index_close(self.index, pg_sys::NoLock as _);
            pg_sys::table_close(self.heap, pg_sys::NoLock as _);
        }
    }

    /// The rows whose first index column equals `key` (a uuid), in the active snapshot:
    /// with `Read::IndexOnly`, the index tuples' values (the heap is read only for pages the
    /// visibility map does not mark all-visible, as an index-only scan does); with
    /// `Read::Heap(n)`, the heap rows' first `n` columns. Call [`usable`] first.
    pub(crate) fn scan_uuid(&self, key: pgrx::Uuid, read: Read) -> Scan {
        self.scan(pg_sys::F_UUID_EQ, key.into_datum(), read)
    }

    /// As [`Indexed::scan_uuid`], for an index whose first column is a bytea.
    pub(crate) fn scan_bytea(&self, key: &[u8], read: Read) -> Scan {
        self.scan(pg_sys::F_BYTEAEQ, key.into_datum(), read)
    }

    /// The rows whose first index column equals `key` under the btree equality function
    /// `eq` of its type.
    fn scan(&self, eq: u32, key: Option<pg_sys::Datum>, read: Read) -> Scan {
        // SAFETY: the relations are open; the key datum (palloc'd in the current memory
        // context) outlives the scan, which ends in `Scan::end` within this call.
        unsafe {
            let snapshot = pg_sys::GetActiveSnapshot();
            #[cfg(not(feature = "pg18"))]
            let scan = pg_sys::index_beginscan(self.heap, self.index, snapshot, 1, 0);
            #[cfg(feature = "pg18")]
            let scan = pg_sys::index_beginscan(
                self.heap,
                self.index,
                snapshot,
                std::ptr::null_mut(),
                1,
                0,
            );
            (*scan).xs_want_itup = read == Read::IndexOnly;
            let mut skey: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyInit(
                &mut skey,
                1,
                pg_sys::BTEqualStrategyNumber as _,
                pg_sys::Oid::from(eq),
                key.unwrap_or(pg_sys::Datum::from(0)),
            );
            pg_sys::index_rescan(scan, &mut skey, 1, std::ptr::null_mut(), 0);
            Scan {
                scan,
                heap: self.heap,
                slot: pg_sys::table_slot_create(self.heap, std::ptr::null_mut()),
                vmbuf: pg_sys::InvalidBuffer as pg_sys::Buffer,
                read,
                values: [pg_sys::Datum::from(0); MAX_ATTS],
                nulls: [true; MAX_ATTS],
            }
        }
    }
}

/// What an index read returns: the index tuples, or the first `n` columns of the heap rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    IndexOnly,
    Heap(usize),
}

/// An index read in progress ([`Indexed::scan_uuid`]); [`Scan::end`] it.
pub(crate) struct Scan {
    scan: pg_sys::IndexScanDesc,
    heap: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    vmbuf: pg_sys::Buffer,
    read: Read,
    values: [pg_sys::Datum; MAX_ATTS],
    nulls: [bool; MAX_ATTS],
}

impl Scan {
    /// Moves to the next visible row; false when there is none. Its values are then read
    /// with [`Scan::uuid`], [`Scan::oid`] and [`Scan::is_null`] (attribute numbers of the
    /// index for an index-only read, of the table otherwise), until the next call.
    pub(crate) fn next(&mut self) -> bool {
        // SAFETY: the scan is open (see scan_uuid); each call reads the tuple the index AM
        // or the heap fetch just produced, before moving on.
        unsafe {
            loop {
                let tid = pg_sys::index_getnext_tid(
                    self.scan,
                    pg_sys::ScanDirection::ForwardScanDirection,
                );
                if tid.is_null() {
                    return false;
                }
                if self.read == Read::IndexOnly {
                    let block = ((*tid).ip_blkid.bi_hi as u32) << 16 | (*tid).ip_blkid.bi_lo as u32;
                    let all_visible =
                        pg_sys::visibilitymap_get_status(self.heap, block, &mut self.vmbuf) as u32
                            & pg_sys::VISIBILITYMAP_ALL_VISIBLE
                            != 0;
                    if !all_visible && !pg_sys::index_fetch_heap(self.scan, self.slot) {
                        continue;
                    }
                    pg_sys::index_deform_tuple(
                        (*self.scan).xs_itup,
                        (*self.scan).xs_itupdesc,
                        self.values.as_mut_ptr(),
                        self.nulls.as_mut_ptr(),
                    );
                } else {
                    if !pg_sys::index_fetch_heap(self.scan, self.slot) {
                        continue;
                    }
                    if let Read::Heap(n) = self.read {
                        let n = n.min((*(*self.slot).tts_tupleDescriptor).natts as usize);
                        if n > 0 {
                            pg_sys::slot_getsomeattrs_int(self.slot, n as _);
                        }
                    }
                }
                return true;
            }
        }
    }

    /// Attribute `att` (1-based) of the current row; None when NULL or not read.
    fn datum(&self, att: usize) -> Option<pg_sys::Datum> {
        match self.read {
            Read::IndexOnly => ((1..=MAX_ATTS).contains(&att) && !self.nulls[att - 1])
                .then(|| self.values[att - 1]),
            // SAFETY: the slot holds the row `next` fetched, deformed up to n columns
            Read::Heap(n) => unsafe {
                let n = n.min((*self.slot).tts_nvalid as usize);
                (att >= 1 && att <= n && !*(*self.slot).tts_isnull.add(att - 1))
                    .then(|| *(*self.slot).tts_values.add(att - 1))
            },
        }
    }

    /// Whether attribute `att` (1-based) of the current row is NULL.
    pub(crate) fn is_null(&self, att: usize) -> bool {
        self.datum(att).is_none()
    }

    /// Attribute `att` of the current row, a uuid (None when NULL).
    pub(crate) fn uuid(&self, att: usize) -> Option<pgrx::Uuid> {
        let datum = self.datum(att)?;
        // SAFETY: a non-NULL uuid datum points to its 16 bytes, in the tuple just read
        let bytes = unsafe { *datum.cast_mut_ptr::<[u8; 16]>() };
        Some(pgrx::Uuid::from_bytes(bytes))
    }

    /// Attribute `att` of the current row, an 8-byte value such as a timestamptz (None when
    /// NULL).
    pub(crate) fn int8(&self, att: usize) -> Option<i64> {
        Some(self.datum(att)?.value() as i64)
    }

    /// Attribute `att` of the current row, a smallint (None when NULL).
    pub(crate) fn int2(&self, att: usize) -> Option<i16> {
        Some(self.datum(att)?.value() as i16)
    }

    /// Attribute `att` of the current row, an oid-valued datum such as an enum (None when
    /// NULL).
    pub(crate) fn oid(&self, att: usize) -> Option<pg_sys::Oid> {
        Some(pg_sys::Oid::from(self.datum(att)?.value() as u32))
    }

    /// Ends the read: releases the visibility map page, the slot and the scan.
    pub(crate) fn end(self) {
        // SAFETY: each resource was acquired in scan_uuid / next and is released once
        unsafe {
            if self.vmbuf != pg_sys::InvalidBuffer as pg_sys::Buffer {
                pg_sys::ReleaseBuffer(self.vmbuf);
            }
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::index_endscan(self.scan);
        }
    }
}
