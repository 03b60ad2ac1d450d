//! The application's own tables (README, "Your own tables"): `permitted_org_ids`,
//! `protect_table`, `unprotect_table` and `audit_table` are SQL (sql/apptables.sql); the
//! row-level audit trigger that `audit_table` attaches is here.
//!
//! The trigger turns the row into jsonb **as the role that changed the row** (the row's
//! types are the application's: a cast to json on one of them is the application's code and
//! must not run with the extension owner's rights), and only then writes the audit row as
//! the extension owner, through truxe's one audit writer (`audit::write`) with the jsonb
//! values as they are (the audit log is not the caller's to write directly).
use crate::audit::{self, Action, Event};
use crate::error::{fail, Sqlstate, TruxeError};
use crate::plans::{self, TEXT, TEXT_ARRAY};
use crate::trigger::{trigger_entry, TriggerResult};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::PgOid;
use serde_json::json;
use std::cell::Cell;

pgrx::extension_sql_file!(
    "../sql/apptables.sql",
    name = "apptables",
    requires = [
        "schema",
        "context",
        "orgs",
        "rls",
        "audit_app_table",
        valid_audit_action
    ]
);

/// Whether `action` is a well-formed audit action: 'resource.verb', each part a lowercase
/// letter followed by lowercase letters, digits and _, at most 128 characters in all
/// (truxe's own actions have the same shape). NULL for NULL. The CHECK constraint
/// `action_format` of truxe.audit_logs calls it for every audit row, so it is Rust: as a SQL
/// function it was parsed (and, with a SET clause, planned) for every row written
/// (bench/README.md, "Audit rows"). It resolves no name, hence no SET clause
/// (docs/security.md, "Name resolution"). Executable by authenticated and service_account.
#[pg_extern(immutable, parallel_safe, strict)]
fn valid_audit_action(action: &str) -> bool {
    let part = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
    };
    action.chars().count() <= 128
        && matches!(action.split_once('.'), Some((r, v)) if part(r) && part(v))
}

/// 22023: the trigger is attached in a way truxe.audit_table() would not attach it.
fn misattached<T>(why: &str) -> Result<T, TruxeError> {
    fail(
        Sqlstate::InvalidParameter,
        format!("truxe.audit_app_table(): {why} (run truxe.audit_table() again to re-attach it)"),
    )
}

const RECORD: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::RECORDOID);

/// The target id of a row `r.j`: its primary key column's value ($4 names the key's
/// columns), a JSON array of the values for a composite key, NULL without a key.
macro_rules! target_id {
    ($j:literal) => {
        concat!(
            "CASE WHEN cardinality($4) = 1 THEN ",
            $j,
            " ->> $4[1]
                  WHEN cardinality($4) > 1 THEN (SELECT jsonb_agg(",
            $j,
            " -> u.k ORDER BY u.i) FROM unnest($4) WITH ORDINALITY u(k, i))::text END"
        )
    };
}

// Step 1, as the role that changed the row: $1 OLD and $2 NEW as records (NULL when the
// operation has none), $3 the org column, $4 the primary key's columns. Returns the row's
// org, its target id, and the old and new values to record — for an UPDATE only the
// columns whose value changed, and NULL for both when none did (a no-op update).
const DESCRIBE_INSERT: &str = concat!(
    "SELECT (r.n ->> $3)::uuid, ",
    target_id!("r.n"),
    ", NULL::jsonb, r.n FROM (SELECT to_jsonb($1) AS o, to_jsonb($2) AS n) r"
);
const DESCRIBE_DELETE: &str = concat!(
    "SELECT (r.o ->> $3)::uuid, ",
    target_id!("r.o"),
    ", r.o, NULL::jsonb FROM (SELECT to_jsonb($1) AS o, to_jsonb($2) AS n) r"
);
const DESCRIBE_UPDATE: &str = concat!(
    "SELECT (r.n ->> $3)::uuid, ",
    target_id!("r.n"),
    ", d.old, d.new
       FROM (SELECT to_jsonb($1) AS o, to_jsonb($2) AS n) r,
            LATERAL (SELECT jsonb_object_agg(k, r.o -> k) AS old, jsonb_object_agg(k, r.n -> k) AS new
                       FROM jsonb_object_keys(r.n) k
                      WHERE (r.o -> k) IS DISTINCT FROM (r.n -> k)) d"
);
const DESCRIBE_TYPES: [PgOid; 4] = [RECORD, RECORD, TEXT, TEXT_ARRAY];

thread_local! {
    /// The owner of truxe.audit_app_table() (the extension owner), looked up once.
    static OWNER: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// The owner of the trigger function `fn_oid`: the role audit rows are written as.
fn owner_of(fn_oid: pg_sys::Oid) -> Result<pg_sys::Oid, TruxeError> {
    if let Some(o) = OWNER.with(|c| c.get()) {
        return Ok(o);
    }
    let owner = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT p.proowner FROM pg_catalog.pg_proc p WHERE p.oid = $1",
        &[fn_oid.into()],
    )?
    .ok_or_else(|| TruxeError::new(Sqlstate::Internal, "truxe.audit_app_table() has no owner"))?;
    OWNER.with(|c| c.set(Some(owner)));
    Ok(owner)
}

/// Runs as `role` until dropped (also when an error unwinds through it; an ERROR that
/// aborts the (sub)transaction restores the user as well).
pub(crate) struct ActingAs {
    user: pg_sys::Oid,
    context: i32,
}

impl ActingAs {
    pub(crate) fn switch_to(role: pg_sys::Oid) -> ActingAs {
        let (mut user, mut context) = (pg_sys::InvalidOid, 0);
        // SAFETY: plain reads and writes of the backend's current user, as fmgr does for a
        // SECURITY DEFINER function; the previous values are restored on drop.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
            pg_sys::SetUserIdAndSecContext(
                role,
                context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
        }
        ActingAs { user, context }
    }
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        // SAFETY: restores what switch_to saved.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW on an application table (attached by
/// truxe.audit_table, arguments: the action's resource, the org column, the primary key's
/// columns): one audit row `<resource>.created|updated|deleted` with the acting user, the
/// row's org, the request context, and the values (the new row, the old row, or an
/// update's changed columns, old and new). An update that changes no value writes none.
fn audit_app_table<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let args = trigger.extra_args()?;
    let (Some(resource), Some(org_column)) = (args.first(), args.get(1)) else {
        return misattached("trigger arguments are missing");
    };
    let pk: Vec<String> = args[2..].to_vec();
    let data = trigger.trigger_data();
    let (describe, verb) = match trigger.op()? {
        PgTriggerOperation::Insert => (DESCRIBE_INSERT, "created"),
        PgTriggerOperation::Update => (DESCRIBE_UPDATE, "updated"),
        PgTriggerOperation::Delete => (DESCRIBE_DELETE, "deleted"),
        PgTriggerOperation::Truncate => return misattached("TRUNCATE is not a row event"),
    };
    if !matches!(trigger.level(), PgTriggerLevel::Row)
        || !matches!(trigger.when()?, PgTriggerWhen::After)
    {
        return misattached("it must fire AFTER, FOR EACH ROW");
    }
    // SAFETY: a row trigger's relation and tuples are valid while it runs; the copies are
    // palloc'd composite datums of the relation's row type, which to_jsonb reads from
    // their header.
    let (old, new) = unsafe {
        let tupdesc = (*data.tg_relation).rd_att;
        let copy = |t: *mut pg_sys::HeapTupleData| -> Option<pg_sys::Datum> {
            (!t.is_null()).then(|| pg_sys::heap_copy_tuple_as_datum(t, tupdesc))
        };
        match verb {
            "created" => (None, copy(data.tg_trigtuple)),
            "updated" => (copy(data.tg_trigtuple), copy(data.tg_newtuple)),
            _ => (copy(data.tg_trigtuple), None),
        }
    };
    let record = |d: Option<pg_sys::Datum>| -> DatumWithOid<'static> {
        match d {
            // SAFETY: a composite datum alive until the trigger returns.
            Some(d) => unsafe { DatumWithOid::new(d, pg_sys::RECORDOID) },
            None => DatumWithOid::null_oid(pg_sys::RECORDOID),
        }
    };
    let table = format!("{}.{}", trigger.table_schema()?, trigger.table_name()?);
    // SAFETY: tg_trigger is valid while the trigger runs.
    let owner = owner_of(unsafe { (*data.tg_trigger).tgfoid })?;
    Spi::connect(|client| {
        let row = plans::read(
            client,
            describe,
            &DESCRIBE_TYPES,
            &[
                record(old),
                record(new),
                org_column.as_str().into(),
                pk.clone().into(),
            ],
        )?
        .first();
        // the values stay jsonb datums of this connection's result until the write
        let (old_values, new_values) = (row.get_datum_by_ordinal(3)?, row.get_datum_by_ordinal(4)?);
        if old_values.is_none() && new_values.is_none() {
            return Ok(());
        }
        let target_id = row.get::<String>(2)?;
        let mut event = Event::new(
            row.get::<pgrx::Uuid>(1)?,
            Action::App(format!("{resource}.{verb}")),
            target_id.is_some().then(|| table.clone().into()),
            target_id,
            json!({ "table": table }),
        );
        (event.old, event.new) = (old_values, new_values);
        let _as_owner = ActingAs::switch_to(owner);
        audit::write(vec![event], audit::Client::default())
    })?;
    Ok(None)
}

trigger_entry!(
    audit_app_table,
    "audit_app_table",
    audit_app_table_wrapper,
    pg_finfo_audit_app_table_wrapper
);

pgrx::extension_sql!(
    r#"
-- The audit trigger of application tables (truxe.audit_table attaches it). Not SECURITY
-- DEFINER: it reads the row as the role that changed it and switches to the extension owner
-- only for its INSERT into truxe.audit_logs (src/apptables.rs). Nobody holds EXECUTE on it
-- (sql/grants.sql).
CREATE FUNCTION truxe.audit_app_table() RETURNS trigger LANGUAGE c
  SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'audit_app_table_wrapper';
"#,
    name = "audit_app_table",
    requires = ["schema"]
);
