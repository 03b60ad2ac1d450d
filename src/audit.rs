//! Audit trail (docs/reference.md, "Audit trail"): Rust triggers that write one
//! truxe.audit_logs row per event of users, organizations, memberships and sessions; the
//! append-only guard on audit_logs; purge_audit_logs, its one exit.
use crate::context::{parse_uuid, setting_text, REQUEST_ID, REQUEST_IP, REQUEST_USER_AGENT};
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::plans::{self, JSONB, TEXT, UUID};
use crate::trigger::{trigger_entry, TriggerResult};
use crate::types::EnumValue;
use pgrx::datum::{DatumWithOid, Interval, TimestampWithTimeZone};
use pgrx::htup::heap_getattr_raw;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, JsonB, PgOid, PgTupleDesc, Uuid};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};

/// One audit row, before the acting user and the request context are added.
pub(crate) struct Event {
    pub org_id: Option<Uuid>,
    pub action: Action,
    pub target_type: Option<Cow<'static, str>>,
    pub target_id: Option<String>,
    pub details: Value,
    /// Row values added to `details` as `old`/`new` (under `values_under` when set): jsonb
    /// datums that go from the row to SQL as they are, never through serde (which refuses
    /// documents nested deeper than 128 levels, and would panic). Alive until the trigger
    /// (or SPI connection) that read them returns.
    pub old: Option<pg_sys::Datum>,
    pub new: Option<pg_sys::Datum>,
    pub values_under: Option<&'static str>,
}

/// An audit action: one of truxe's own (a label of the enum truxe.audit_action, which the
/// INSERT checks), or an application table's `resource.verb` (src/apptables.rs).
pub(crate) enum Action {
    Truxe(&'static str),
    App(String),
}

impl Event {
    pub(crate) fn new(
        org_id: Option<Uuid>,
        action: Action,
        target_type: Option<Cow<'static, str>>,
        target_id: Option<String>,
        details: Value,
    ) -> Event {
        Event {
            org_id,
            action,
            target_type,
            target_id,
            details,
            old: None,
            new: None,
            values_under: None,
        }
    }
}

/// Client address and agent given explicitly by a function's arguments; when absent, the
/// settings app.ip and app.user_agent are used.
#[derive(Default, Clone)]
pub(crate) struct Client {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// `app.ip` when it is an IP address, else None (garbage is ignored, never an error).
fn request_ip() -> Option<String> {
    let ip = setting_text(REQUEST_IP)?;
    ip.trim()
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|a| a.to_string())
}

/// `truxe.request_ip()`: [`request_ip`] as SQL, the default of `audit_logs.ip`, so that a
/// row an application inserts records the address as truxe's own rows do. No exception
/// block, so no subtransaction per row: Citus refuses one inside a bulk insert into a
/// distributed table.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.request_ip() RETURNS inet
LANGUAGE c STABLE SET search_path = pg_catalog, pg_temp AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn request_ip_setting() -> Option<pgrx::Inet> {
    request_ip().map(pgrx::Inet)
}

/// `truxe.request_id()`: `app.request_id` when it is a uuid (also as `urn:uuid:…`), else
/// NULL, as [`Moment`] reads it; the default of `audit_logs.request_id` (no subtransaction,
/// as [`request_ip_setting`]).
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.request_id() RETURNS uuid
LANGUAGE c STABLE SET search_path = pg_catalog, pg_temp AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn request_id_setting() -> Option<Uuid> {
    request_id()
}

/// `app.request_id` when it is a uuid, else None.
fn request_id() -> Option<Uuid> {
    setting_text(REQUEST_ID).and_then(|r| parse_uuid(&r))
}

/// A user agent as stored in audit rows: at most 512 characters.
fn clip_user_agent(ua: String) -> String {
    ua.chars().take(512).collect()
}

/// `app.user_agent`, clipped; None when unset or empty.
fn request_user_agent() -> Option<String> {
    let ua = setting_text(REQUEST_USER_AGENT)?;
    (!ua.is_empty()).then(|| clip_user_agent(ua))
}

/// `INSERT INTO truxe.audit_logs` and the nine columns [`write`] gives each row.
macro_rules! insert_into {
    () => {
        "INSERT INTO truxe.audit_logs (org_id, actor_user_id, action, target_type,
                   target_id, details, ip, user_agent, request_id)"
    };
}

/// The INSERT of audit rows (truxe's triggers, its functions, application tables), with
/// `$action` the expression of the action: truxe's own go through the enum, which checks
/// the label (and is what a 0.1.0 table's column still is, before ALTER EXTENSION UPDATE).
macro_rules! insert {
    ($action:literal) => {
        concat!(
            insert_into!(),
            "
  SELECT $1, $2, ",
            $action,
            ", $4, $5,
         $6 || CASE WHEN $12 IS NULL THEN v.j ELSE jsonb_build_object($12, v.j) END,
         $7::inet, $8, $9
    FROM (SELECT CASE WHEN $10 IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('old', $10) END
              || CASE WHEN $11 IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('new', $11) END) v(j)"
        )
    };
}
const INSERT_TRUXE: &str = insert!("$3::truxe.audit_action");
const INSERT_APP: &str = insert!("$3");
const INSERT_TYPES: [PgOid; 12] = [
    UUID, UUID, TEXT, TEXT, TEXT, JSONB, TEXT, TEXT, UUID, JSONB, JSONB, TEXT,
];

/// An audit row's values: [`insert!`]'s first nine parameters.
struct Row {
    org_id: Option<Uuid>,
    actor: Option<Uuid>,
    action: String,
    target_type: Option<String>,
    target_id: Option<String>,
    details: Value,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<Uuid>,
}

impl Row {
    fn args(self) -> Vec<DatumWithOid<'static>> {
        vec![
            self.org_id.into(),
            self.actor.into(),
            self.action.into(),
            self.target_type.into(),
            self.target_id.into(),
            JsonB(self.details).into(),
            self.ip.into(),
            self.user_agent.into(),
            self.request_id.into(),
        ]
    }
}

thread_local! {
    /// The rows the live [`Held`] holds back; None while there is none.
    static HELD: RefCell<Option<Vec<Row>>> = const { RefCell::new(None) };
}

/// Holds `rows` back for the live [`Held`]; gives them back when there is none. On Citus
/// none is ever alive (refresh_session there writes its rows itself, src/session/citus.rs).
fn hold(rows: Vec<Row>) -> Option<Vec<Row>> {
    HELD.with(|h| match h.borrow_mut().as_mut() {
        Some(held) => {
            held.extend(rows);
            None
        }
        None => Some(rows),
    })
}

/// At most this many rows without row values go into one INSERT.
const PLAIN_PER_INSERT: usize = 4;

/// While a `Held` is alive, [`write`] holds back truxe's own rows that carry no row values
/// (the row triggers', a function's [`record`]); [`Held::write`] then inserts them, in
/// the order they came, in one statement: refresh_session's three rows, or an invitation's
/// acceptance's three (invitation.accepted ahead of its statement's user.created and
/// membership.joined: [`Held::write_after`]), cost one executor start and one preparation
/// of the table's CHECK constraints instead of one each (bench/README.md, "Performance work
/// after the 0.2 run"). Dropped unwritten (an error unwinding), its rows go with the
/// failing transaction.
pub(crate) struct Held(());

impl Held {
    /// Starts holding rows back. One at a time: refresh_session and accept_invitation_token
    /// hold rows, around their own statements only.
    pub(crate) fn begin() -> Held {
        HELD.with(|h| h.replace(Some(Vec::new())));
        Held(())
    }

    /// Inserts what `first` writes, held back too, then the rows held back before it, in
    /// one statement (invitation.accepted ahead of its statement's trigger rows).
    pub(crate) fn write_after(
        self,
        first: impl FnOnce() -> Result<(), TruxeError>,
    ) -> Result<(), TruxeError> {
        let before = HELD.with(|h| h.borrow_mut().replace(Vec::new()));
        first()?;
        HELD.with(|h| {
            if let Some(held) = h.borrow_mut().as_mut() {
                held.extend(before.into_iter().flatten());
            }
        });
        self.write()
    }

    /// Inserts the rows held back.
    pub(crate) fn write(self) -> Result<(), TruxeError> {
        let rows = HELD.with(|h| h.borrow_mut().take()).unwrap_or_default();
        drop(self);
        Spi::connect_mut(|client| insert_plain(client, rows))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.with(|h| h.borrow_mut().take());
    }
}

/// The INSERT of `n` (1..=[`PLAIN_PER_INSERT`]) truxe rows without row values: [`insert!`]'s
/// nine values per row, with its casts, the details then `$6` as given.
fn insert_rows(n: usize) -> &'static str {
    const CASTS: [&str; 9] = ["", "", "::truxe.audit_action", "", "", "", "::inet", "", ""];
    static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let row = |r: usize| {
        let values: Vec<String> = (1..=9)
            .map(|i| format!("${}{}", r * 9 + i, CASTS[i - 1]))
            .collect();
        format!("({})", values.join(", "))
    };
    let texts = TEXTS.get_or_init(|| {
        (1..=PLAIN_PER_INSERT)
            .map(|n| {
                let rows: Vec<String> = (0..n).map(row).collect();
                format!(concat!(insert_into!(), " VALUES {}"), rows.join(", "))
            })
            .collect()
    });
    &texts[n.clamp(1, PLAIN_PER_INSERT) - 1]
}

/// What every audit row takes from the moment it is written: the acting user, the API key
/// acting (its id goes into the details), the client address and agent (given, else the
/// request settings) and the request id. [`write`] uses it for each row; a statement that
/// writes its audit row itself, as one of its own parts (invite_by_email), passes these
/// values as parameters so that its row is the same as write's.
pub(crate) struct Moment {
    pub actor: Option<Uuid>,
    api_key: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<Uuid>,
}

impl Moment {
    pub(crate) fn now(request: Client) -> Moment {
        Moment {
            actor: crate::identity::acting_user(),
            // an API key has no user: its id goes into the details, so that the row names
            // who acted
            api_key: crate::identity::verified().and_then(|v| v.api_key),
            ip: request.ip.or_else(request_ip),
            user_agent: request
                .user_agent
                .map(clip_user_agent)
                .or_else(request_user_agent),
            request_id: request_id(),
        }
    }

    /// `details` as the row stores them.
    pub(crate) fn details(&self, mut details: Value) -> Value {
        if let (Some(key), Value::Object(d)) = (self.api_key, &mut details) {
            d.insert("api_key_id".into(), json!(key.to_string()));
        }
        details
    }
}

/// Writes `events` with the acting user and request context of this moment, as the
/// current role: the audit triggers' owner, or for application tables the extension owner
/// (src/apptables.rs). The one writer of truxe.audit_logs, but for the statements that
/// write their row themselves with [`Moment`]. While a [`Held`] is alive, truxe's own rows
/// without row values are held back for it instead.
pub(crate) fn write(events: Vec<Event>, request: Client) -> Result<(), TruxeError> {
    if events.is_empty() {
        return Ok(());
    }
    let moment = Moment::now(request);
    // on Citus (a distributed audit_logs, src/claim.rs) a row with no org is written under
    // the nil uuid (Citus refuses a NULL distribution key), and every row as the table's
    // owner: Citus refuses a transaction that writes a shard as one role and then as another
    // (a function's row as its caller, then a SECURITY DEFINER trigger's as the owner,
    // both in the shard of the rows without an org)
    let owner = crate::claim::distributed_audit_owner();
    let no_org = owner.map(|_| crate::claim::no_org());
    let _as_owner = owner.map(crate::apptables::ActingAs::switch_to);
    let jsonb = |d: Option<pg_sys::Datum>| match d {
        // SAFETY: a jsonb datum of the caller's row, alive until it returns (Event::old).
        Some(d) => unsafe { DatumWithOid::new(d, pg_sys::JSONBOID) },
        None => DatumWithOid::null_oid(pg_sys::JSONBOID),
    };
    Spi::connect_mut(|client| {
        // consecutive rows without row values go into one INSERT (insert_plain)
        let mut plain = Vec::new();
        for e in events {
            let (insert, action) = match e.action {
                Action::Truxe(a) => (INSERT_TRUXE, a.to_string()),
                Action::App(a) => (INSERT_APP, a),
            };
            let row = Row {
                org_id: e.org_id.or(no_org),
                actor: moment.actor,
                action,
                target_type: e.target_type.map(Cow::into_owned),
                target_id: e.target_id,
                details: moment.details(e.details),
                ip: moment.ip.clone(),
                user_agent: moment.user_agent.clone(),
                request_id: moment.request_id,
            };
            if insert == INSERT_TRUXE && e.old.is_none() && e.new.is_none() {
                plain.push(row);
                continue;
            }
            insert_plain(client, std::mem::take(&mut plain))?;
            let mut args = row.args();
            args.extend([jsonb(e.old), jsonb(e.new), e.values_under.into()]);
            plans::run(client, insert, &INSERT_TYPES, &args)?;
        }
        insert_plain(client, plain)
    })
}

/// Inserts truxe's own `rows` that carry no row values, [`PLAIN_PER_INSERT`] per statement;
/// or, while a [`Held`] is alive, holds them back for it.
fn insert_plain(client: &mut pgrx::spi::SpiClient<'_>, rows: Vec<Row>) -> Result<(), TruxeError> {
    let Some(rows) = hold(rows) else {
        return Ok(());
    };
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Row> = rows.by_ref().take(PLAIN_PER_INSERT).collect();
        let types = [&INSERT_TYPES[..9]].repeat(chunk.len()).concat();
        let sql = insert_rows(chunk.len());
        let args: Vec<_> = chunk.into_iter().flat_map(Row::args).collect();
        plans::run(client, sql, &types, &args)?;
    }
    Ok(())
}

/// Writes one audit row from a function (not a trigger): for the events the auth flows
/// log themselves (magic_link.*, user.login, session.refreshed, session.reuse_detected).
pub(crate) fn record(
    org_id: Option<Uuid>,
    action: &'static str,
    target_type: &'static str,
    target_id: &str,
    details: Value,
    client: &Client,
) -> Result<(), TruxeError> {
    let event = Event::new(
        org_id,
        Action::Truxe(action),
        Some(target_type.into()),
        Some(target_id.to_string()),
        details,
    );
    write(vec![event], client.clone())
}

/// A row trigger's events written: it returns no row (AFTER).
fn finish<'a>(events: Vec<Event>) -> TriggerResult<'a> {
    write(events, Client::default())?;
    Ok(None)
}

fn uuid_text(id: Option<Uuid>) -> String {
    id.map(|u| u.to_string()).unwrap_or_default()
}

type Tuple<'a> = PgHeapTuple<'a, AllocatedByPostgres>;

/// The row a row-level trigger fires for: NEW, or OLD for a DELETE.
fn fired_row<'t, 'a>(
    new: &'t Option<Tuple<'a>>,
    old: &'t Option<Tuple<'a>>,
) -> Option<&'t Tuple<'a>> {
    new.as_ref().or(old.as_ref())
}

/// Builds the events of one target: `event(action, details)`.
fn events_of(
    org_id: Option<Uuid>,
    target_type: &'static str,
    target_id: String,
) -> impl Fn(&'static str, Value) -> Event {
    move |action, details| {
        Event::new(
            org_id,
            Action::Truxe(action),
            Some(target_type.into()),
            Some(target_id.clone()),
            details,
        )
    }
}

/// AFTER INSERT OR UPDATE OR DELETE on truxe.memberships: membership.invited (a row that is
/// not yet joined) or membership.joined, membership.role_changed, membership.joined (on
/// acceptance), membership.removed.
fn audit_memberships<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let events = || -> Result<Vec<Event>, TruxeError> {
        let (new, old) = (trigger.new(), trigger.old());
        let Some(row) = fired_row(&new, &old) else {
            return Ok(Vec::new());
        };
        let event = events_of(
            row.get_by_name("org_id")?,
            "user",
            uuid_text(row.get_by_name("user_id")?),
        );
        let role = |t: &Tuple<'_>| -> Result<Option<String>, TruxeError> {
            Ok(t.get_by_name::<EnumValue>("role")?.map(EnumValue::label))
        };
        let joined = |t: &Tuple<'_>| -> Result<bool, TruxeError> {
            Ok(t.get_by_name::<TimestampWithTimeZone>("joined_at")?
                .is_some())
        };
        Ok(match (old.as_ref(), new.as_ref()) {
            (None, Some(n)) => {
                let r = role(n)?;
                let action = if joined(n)? {
                    "membership.joined"
                } else {
                    "membership.invited"
                };
                vec![event(action, json!({ "role": r }))]
            }
            (Some(o), Some(n)) => {
                let mut v = Vec::new();
                let (old_role, new_role) = (role(o)?, role(n)?);
                if old_role != new_role {
                    v.push(event(
                        "membership.role_changed",
                        json!({ "old_role": &old_role, "new_role": &new_role }),
                    ));
                }
                if !joined(o)? && joined(n)? {
                    v.push(event("membership.joined", json!({ "role": new_role })));
                }
                v
            }
            (Some(o), None) => vec![event("membership.removed", json!({ "role": role(o)? }))],
            (None, None) => Vec::new(),
        })
    };
    finish(events()?)
}

/// slug, name and parent of an organization row.
type OrgFields = (Option<String>, Option<String>, Option<Uuid>);

/// AFTER INSERT OR UPDATE OR DELETE on truxe.organizations: org.created, org.parent_changed,
/// org.updated (slug, name or settings changed; details hold old and new), org.deleted.
fn audit_organizations<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let events = || -> Result<Vec<Event>, TruxeError> {
        let (new, old) = (trigger.new(), trigger.old());
        let Some(row) = fired_row(&new, &old) else {
            return Ok(Vec::new());
        };
        let id: Option<Uuid> = row.get_by_name("id")?;
        let event = events_of(id, "organization", uuid_text(id));
        let fields = |t: &Tuple<'_>| -> Result<OrgFields, TruxeError> {
            Ok((
                t.get_by_name::<String>("slug")?,
                t.get_by_name::<String>("name")?,
                t.get_by_name::<Uuid>("parent_org_id")?,
            ))
        };
        Ok(match (old.as_ref(), new.as_ref()) {
            (None, Some(n)) => {
                let (slug, name, parent) = fields(n)?;
                vec![event(
                    "org.created",
                    json!({ "slug": slug, "name": name, "parent_org_id": parent.map(|p| p.to_string()) }),
                )]
            }
            (Some(o), Some(n)) => {
                let (os, on, op) = fields(o)?;
                let (ns, nn, np) = fields(n)?;
                let mut v = Vec::new();
                if op != np {
                    v.push(event(
                        "org.parent_changed",
                        json!({ "old_parent_org_id": op.map(|p| p.to_string()), "new_parent_org_id": np.map(|p| p.to_string()) }),
                    ));
                }
                let mut changed = serde_json::Map::new();
                if os != ns {
                    changed.insert("slug".into(), json!({ "old": os, "new": ns }));
                }
                if on != nn {
                    changed.insert("name".into(), json!({ "old": on, "new": nn }));
                }
                let settings = changed_settings(trigger)?;
                if !changed.is_empty() || settings.is_some() {
                    let mut e = event("org.updated", Value::Object(changed));
                    if let Some((old, new)) = settings {
                        (e.old, e.new, e.values_under) = (Some(old), Some(new), Some("settings"));
                    }
                    v.push(e);
                }
                v
            }
            (Some(o), None) => {
                let (slug, name, _) = fields(o)?;
                vec![event("org.deleted", json!({ "slug": slug, "name": name }))]
            }
            (None, None) => Vec::new(),
        })
    };
    finish(events()?)
}

/// The old and new `settings` of an UPDATE on truxe.organizations when they differ (jsonb
/// equality), as raw datums of the trigger's rows: they are never parsed in Rust.
fn changed_settings(
    trigger: &PgTrigger<'_>,
) -> Result<Option<(pg_sys::Datum, pg_sys::Datum)>, TruxeError> {
    let data = trigger.trigger_data();
    if data.tg_trigtuple.is_null() || data.tg_newtuple.is_null() {
        return Ok(None);
    }
    // SAFETY: an UPDATE row trigger's relation and both tuples are valid while it runs.
    let (old, new) = unsafe {
        let tupdesc = (*data.tg_relation).rd_att;
        let Some(attno) = PgTupleDesc::from_pg_unchecked(tupdesc)
            .iter()
            .position(|a| !a.is_dropped() && a.name() == "settings")
            .and_then(|i| std::num::NonZeroUsize::new(i + 1))
        else {
            return Ok(None);
        };
        (
            heap_getattr_raw(data.tg_trigtuple, attno, tupdesc),
            heap_getattr_raw(data.tg_newtuple, attno, tupdesc),
        )
    };
    // settings is NOT NULL
    let (Some(old), Some(new)) = (old, new) else {
        return Ok(None);
    };
    // SAFETY: both are jsonb datums of the trigger's rows, alive until it returns.
    let differ = unsafe {
        Spi::get_one_with_args::<bool>(
            "SELECT $1 IS DISTINCT FROM $2",
            &[
                DatumWithOid::new(old, pg_sys::JSONBOID),
                DatumWithOid::new(new, pg_sys::JSONBOID),
            ],
        )?
    };
    Ok((differ == Some(true)).then_some((old, new)))
}

/// AFTER INSERT OR UPDATE OR DELETE on truxe.users: user.created, user.status_changed,
/// user.deleted. (Other column changes are the app's to log as user.updated.)
fn audit_users<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let events = || -> Result<Vec<Event>, TruxeError> {
        let (new, old) = (trigger.new(), trigger.old());
        let Some(row) = fired_row(&new, &old) else {
            return Ok(Vec::new());
        };
        let event = events_of(None, "user", uuid_text(row.get_by_name("id")?));
        let status = |t: &Tuple<'_>| -> Result<Option<String>, TruxeError> {
            Ok(t.get_by_name::<EnumValue>("status")?.map(EnumValue::label))
        };
        Ok(match (old.as_ref(), new.as_ref()) {
            (None, Some(n)) => vec![event(
                "user.created",
                json!({ "email": n.get_by_name::<String>("email")?, "status": status(n)? }),
            )],
            (Some(o), Some(n)) => {
                let (os, ns) = (status(o)?, status(n)?);
                if os != ns {
                    vec![event(
                        "user.status_changed",
                        json!({ "old_status": os, "new_status": ns }),
                    )]
                } else {
                    Vec::new()
                }
            }
            (Some(o), None) => vec![event(
                "user.deleted",
                json!({ "email": o.get_by_name::<String>("email")? }),
            )],
            (None, None) => Vec::new(),
        })
    };
    finish(events()?)
}

/// AFTER INSERT OR UPDATE OF revoked_at on truxe.sessions: session.created, session.revoked
/// (with the reason). The target is the session's public `id` and the details name its
/// public `family_id`: never a token (the row holds only their hashes, which stay out of
/// the audit log too).
fn audit_sessions<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let events = || -> Result<Vec<Event>, TruxeError> {
        let (new, old) = (trigger.new(), trigger.old());
        let Some(n) = new.as_ref() else {
            return Ok(Vec::new());
        };
        let org_id: Option<Uuid> = n.get_by_name("org_id")?;
        let user: Option<Uuid> = n.get_by_name("user_id")?;
        let (id, family) = match n.get_by_name::<Uuid>("id") {
            Ok(id) => (uuid_text(id), uuid_text(n.get_by_name("family_id")?)),
            // a 0.1.0 table (this library loaded, ALTER EXTENSION truxe UPDATE not run yet):
            // no public id, and jti and family_id are tokens: name them by their hashes,
            // which are the 0.2 jti_hash values once the update has run
            Err(e) => {
                let hashed = |column: &str| -> Result<String, TruxeError> {
                    Ok(n.get_by_name::<Uuid>(column)?
                        .map(|t| crate::security::to_hex(&crate::session::bearer_hash(&t)))
                        .unwrap_or_default())
                };
                match hashed("jti") {
                    Ok(jti) => (jti, hashed("family_id")?),
                    Err(_) => return Err(e.into()),
                }
            }
        };
        let event = events_of(org_id, "session", id);
        let revoked = |t: &Tuple<'_>| -> Result<bool, TruxeError> {
            Ok(t.get_by_name::<TimestampWithTimeZone>("revoked_at")?
                .is_some())
        };
        Ok(match old.as_ref() {
            None => vec![event(
                "session.created",
                json!({ "user_id": uuid_text(user), "family_id": family }),
            )],
            Some(o) if !revoked(o)? && revoked(n)? => vec![event(
                "session.revoked",
                json!({ "user_id": uuid_text(user), "reason": n.get_by_name::<String>("revoked_reason")? }),
            )],
            Some(_) => Vec::new(),
        })
    };
    finish(events()?)
}

/// A session row as the audit trigger of sessions sees it: (id, user_id, org_id,
/// family_id or revoked_reason). For the functions that write sessions on Citus, where
/// the trigger cannot run (it would write audit_logs from a shard).
pub(crate) type SessionAudit = (Uuid, Option<Uuid>, Option<Uuid>, Option<String>);

/// On Citus: `session.created` for each inserted session (`family` in the last field), as
/// [`audit_sessions`] writes it on a single node.
pub(crate) fn sessions_created(rows: Vec<SessionAudit>) -> Result<(), TruxeError> {
    session_events(rows, "session.created", "family_id")
}

/// On Citus: `session.revoked` for each revoked session (the reason in the last field), as
/// [`audit_sessions`] writes it on a single node.
pub(crate) fn sessions_revoked(rows: Vec<SessionAudit>) -> Result<(), TruxeError> {
    session_events(rows, "session.revoked", "reason")
}

fn session_events(
    rows: Vec<SessionAudit>,
    action: &'static str,
    field: &'static str,
) -> Result<(), TruxeError> {
    let events = rows
        .into_iter()
        .map(|(id, user, org, extra)| {
            events_of(org, "session", id.to_string())(
                action,
                json!({ "user_id": uuid_text(user), field: extra }),
            )
        })
        .collect();
    write(events, Client::default())
}

// The trigger functions' C entry points (src/trigger.rs): called as a plain function, each
// raises 0A000 instead of panicking.
trigger_entry!(
    audit_memberships,
    "audit_memberships",
    audit_memberships_wrapper,
    pg_finfo_audit_memberships_wrapper
);
trigger_entry!(
    audit_organizations,
    "audit_organizations",
    audit_organizations_wrapper,
    pg_finfo_audit_organizations_wrapper
);
trigger_entry!(
    audit_users,
    "audit_users",
    audit_users_wrapper,
    pg_finfo_audit_users_wrapper
);
trigger_entry!(
    audit_sessions,
    "audit_sessions",
    audit_sessions_wrapper,
    pg_finfo_audit_sessions_wrapper
);
trigger_entry!(
    audit_logs_append_only,
    "audit_logs_append_only",
    audit_logs_append_only_wrapper,
    pg_finfo_audit_logs_append_only_wrapper
);

pgrx::extension_sql!(
    r#"
-- Audit triggers run as the extension owner: an audit row never depends on the caller's
-- privileges, and RLS on audit_logs does not apply to them. truxe follows pg_catalog in
-- their search_path (pgrx's enum types are found by name; the triggers now read enum
-- columns without them, src/types.rs); nobody can create objects in either schema. Nobody holds
-- EXECUTE on them (sql/grants.sql); their C entry points are truxe's own (src/trigger.rs).
CREATE FUNCTION truxe.audit_memberships() RETURNS trigger LANGUAGE c SECURITY DEFINER
  SET search_path = pg_catalog, truxe, pg_temp AS 'MODULE_PATHNAME', 'audit_memberships_wrapper';
CREATE FUNCTION truxe.audit_organizations() RETURNS trigger LANGUAGE c SECURITY DEFINER
  SET search_path = pg_catalog, truxe, pg_temp AS 'MODULE_PATHNAME', 'audit_organizations_wrapper';
CREATE FUNCTION truxe.audit_users() RETURNS trigger LANGUAGE c SECURITY DEFINER
  SET search_path = pg_catalog, truxe, pg_temp AS 'MODULE_PATHNAME', 'audit_users_wrapper';
CREATE FUNCTION truxe.audit_sessions() RETURNS trigger LANGUAGE c SECURITY DEFINER
  SET search_path = pg_catalog, truxe, pg_temp AS 'MODULE_PATHNAME', 'audit_sessions_wrapper';
CREATE TRIGGER audit_memberships AFTER INSERT OR UPDATE OR DELETE ON truxe.memberships
  FOR EACH ROW EXECUTE FUNCTION truxe.audit_memberships();
CREATE TRIGGER audit_organizations AFTER INSERT OR UPDATE OR DELETE ON truxe.organizations
  FOR EACH ROW EXECUTE FUNCTION truxe.audit_organizations();
CREATE TRIGGER audit_users AFTER INSERT OR UPDATE OR DELETE ON truxe.users
  FOR EACH ROW EXECUTE FUNCTION truxe.audit_users();
CREATE TRIGGER audit_sessions AFTER INSERT OR UPDATE OF revoked_at ON truxe.sessions
  FOR EACH ROW EXECUTE FUNCTION truxe.audit_sessions();
"#,
    name = "audit_triggers",
    requires = ["schema"]
);

thread_local! {
    /// True only while purge_audit_logs runs its own DELETE: the guard lets that one
    /// statement through. It is Rust state, so no SQL (no SET, no setting placeholder)
    /// can turn it on.
    static PURGING: Cell<bool> = const { Cell::new(false) };
}

/// Resets PURGING however the DELETE ends (an ERROR unwinds through this guard).
struct PurgeWindow;

impl PurgeWindow {
    fn open() -> PurgeWindow {
        PURGING.with(|p| p.set(true));
        PurgeWindow
    }
}

impl Drop for PurgeWindow {
    fn drop(&mut self) {
        PURGING.with(|p| p.set(false));
    }
}

/// `truxe.audit_purge`: on only while purge_audit_logs runs its DELETE of a distributed
/// truxe.audit_logs. Set with `SET LOCAL` and passed by Citus to the workers, where the guard
/// runs on the shards; it counts there only for a DELETE that runs as the table's owner
/// (see [`shard_purge`]), so a login that sets it itself gains nothing.
static AUDIT_PURGE: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Registers `truxe.audit_purge` (called by `_PG_init`). Any role may set it: Citus sets it
/// on the workers as the current role.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"truxe.audit_purge",
        c"Set by truxe.purge_audit_logs on a Citus cluster while it deletes (docs/scaling.md).",
        c"Lets a DELETE of an audit_logs shard that runs as the table's owner pass the append-only guard; nothing else.",
        &AUDIT_PURGE,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
}

/// Whether the guard lets this statement through as purge_audit_logs' DELETE on a Citus
/// shard: a DELETE, with Citus loaded, of a shard of audit_logs (`audit_logs_<shard id>` in
/// schema truxe), run as the owner of that shard (the table's owner: purge_audit_logs
/// deletes as the owner, a tenant's login never is it), with `truxe.audit_purge` on. The
/// setting alone is nothing: any login may set it (Citus sets it on the workers as the
/// current role), but none runs a statement as the owner.
fn shard_purge(trigger: &PgTrigger<'_>) -> bool {
    if !AUDIT_PURGE.get() || !matches!(trigger.op(), Ok(PgTriggerOperation::Delete)) {
        return false;
    }
    if !crate::distribute::citus_loaded() {
        return false;
    }
    let Ok(rel) = trigger.relation() else {
        return false;
    };
    let shard_name = rel
        .name()
        .strip_prefix("audit_logs_")
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    // SAFETY: the trigger's open relation; GetUserId reads the backend's current user
    unsafe {
        shard_name && rel.namespace() == "truxe" && (*rel.rd_rel).relowner == pg_sys::GetUserId()
    }
}

/// Statement-level guard: UPDATE, DELETE and TRUNCATE on truxe.audit_logs raise 55000,
/// except purge_audit_logs' own DELETE (on a single node: [`PURGING`]; on the shards of a
/// distributed audit_logs: [`shard_purge`]).
fn audit_logs_append_only<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if PURGING.with(|p| p.get()) || shard_purge(trigger) {
        return Ok(None);
    }
    let op = trigger.op().map(|o| o.to_string()).unwrap_or_default();
    fail(
        Sqlstate::NotInPrerequisiteState,
        format!(
            "truxe.audit_logs is append-only: {} is not allowed; rows leave only through truxe.purge_audit_logs",
            op.to_lowercase()
        ),
    )
}

pgrx::extension_sql!(
    r#"
-- the guard reads nothing by name; its path is pinned all the same
CREATE FUNCTION truxe.audit_logs_append_only() RETURNS trigger LANGUAGE c
  SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'audit_logs_append_only_wrapper';
CREATE TRIGGER audit_logs_append_only
  BEFORE UPDATE OR DELETE OR TRUNCATE ON truxe.audit_logs
  FOR EACH STATEMENT EXECUTE FUNCTION truxe.audit_logs_append_only();
-- ALWAYS: session_replication_role = replica (which pg_restore uses) cannot skip it
ALTER TABLE truxe.audit_logs ENABLE ALWAYS TRIGGER audit_logs_append_only;
"#,
    name = "audit_logs_append_only",
    requires = ["schema"]
);

/// Deletes audit rows older than `older_than` and returns how many; the only way rows leave
/// truxe.audit_logs. Refuses anything younger than 90 days (22023). service_account only.
/// On Citus (audit_logs distributed) it deletes as the table's owner with
/// `truxe.audit_purge` on, which the guard on the shards asks for (docs/scaling.md, "The
/// sealed audit log on Citus"); purge in a transaction of its own there (Citus then refuses
/// the caller's own audit reads in that transaction, 25001).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn purge_audit_logs(older_than: Interval) -> i64 {
    purge(older_than).unwrap_or_raise()
}

fn purge(older_than: Interval) -> Result<i64, TruxeError> {
    // Spi::get_one_with_args below runs through pgrx's mutating path too
    crate::plans::refuse_in_recovery();
    let too_young =
        Spi::get_one_with_args::<bool>("SELECT $1 < interval '90 days'", &[older_than.into()])?
            .unwrap_or(true);
    if too_young {
        return fail(
            Sqlstate::InvalidParameter,
            "purge_audit_logs refuses to delete audit rows younger than 90 days",
        );
    }
    let _window = PurgeWindow::open();
    // On Citus the guard runs on the shards, in the workers' backends, where PURGING is not
    // seen: the DELETE runs as the table's owner (Citus connects to the workers as it) with
    // truxe.audit_purge on, which Citus passes to the workers of this transaction. Citus
    // propagates a SET LOCAL only in a transaction block or a DO block (not from a C
    // function in autocommit), hence the DO blocks. The setting goes off again after the
    // DELETE (an error aborts the transaction, and the setting with it). All of it as the
    // owner: the DO blocks need no right of the caller's (USAGE on plpgsql).
    let owner = crate::claim::distributed_audit_owner();
    let _as_owner = owner.map(crate::apptables::ActingAs::switch_to);
    Spi::connect_mut(|client| {
        if owner.is_some() {
            client.update(
                "DO $purge$BEGIN SET LOCAL citus.propagate_set_commands = 'local'; \
                 SET LOCAL truxe.audit_purge = on; END$purge$",
                None,
                &[],
            )?;
        }
        let deleted = client
            .update(
                "DELETE FROM truxe.audit_logs WHERE created_at < pg_catalog.now() - $1",
                None,
                &[older_than.into()],
            )
            .map(|t| t.len() as i64)?;
        if owner.is_some() {
            client.update(
                "DO $purge$BEGIN SET LOCAL truxe.audit_purge = off; END$purge$",
                None,
                &[],
            )?;
        }
        Ok::<i64, pgrx::spi::SpiError>(deleted)
    })
    .map_err(Into::into)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn add_rows() {
        Spi::run(
            "INSERT INTO truxe.audit_logs (action, created_at) VALUES
               ('user.login', now() - interval '200 days'),
               ('user.login', now() - interval '100 days'),
               ('user.login', now())",
        )
        .unwrap();
    }

    #[pg_test(
        error = "truxe.audit_logs is append-only: update is not allowed; rows leave only through truxe.purge_audit_logs"
    )]
    fn update_is_refused() {
        add_rows();
        Spi::run("UPDATE truxe.audit_logs SET details = '{\"x\": 1}'").unwrap();
    }

    #[pg_test(
        error = "truxe.audit_logs is append-only: delete is not allowed; rows leave only through truxe.purge_audit_logs"
    )]
    fn delete_is_refused_even_when_nothing_matches() {
        Spi::run("DELETE FROM truxe.audit_logs WHERE false").unwrap();
    }

    #[pg_test(error = "purge_audit_logs refuses to delete audit rows younger than 90 days")]
    fn purge_refuses_young_rows() {
        Spi::run("SELECT truxe.purge_audit_logs('89 days')").unwrap();
    }

    #[pg_test]
    fn purge_deletes_only_older_rows_and_closes_the_window() {
        add_rows();
        let n = Spi::get_one::<i64>("SELECT truxe.purge_audit_logs('150 days')").unwrap();
        assert_eq!(n, Some(1));
        let left = Spi::get_one::<i64>("SELECT count(*) FROM truxe.audit_logs").unwrap();
        assert_eq!(left, Some(2));
        let err = PgTryBuilder::new(|| {
            Spi::run("DELETE FROM truxe.audit_logs").unwrap();
            false
        })
        .catch_others(|_| true)
        .execute();
        assert!(err, "after purge the guard is armed again");
    }

    fn login(org: &str) -> super::Event {
        super::Event::new(
            None,
            super::Action::Truxe("user.login"),
            Some("user".into()),
            Some(org.to_string()),
            serde_json::json!({}),
        )
    }

    fn targets() -> Vec<String> {
        Spi::connect(|c| {
            c.select(
                "SELECT target_id FROM truxe.audit_logs ORDER BY id",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
        })
    }

    #[pg_test]
    fn held_rows_are_written_in_their_order_and_only_by_write() {
        let write = |ids: &[&str]| {
            super::write(ids.iter().map(|i| login(i)).collect(), Default::default()).unwrap()
        };
        write(&["a", "b", "c", "d", "e"]); // two INSERTs: 4 rows, then 1
        let held = super::Held::begin();
        write(&["f"]);
        write(&["g", "h"]);
        assert_eq!(targets().len(), 5, "held rows are not written yet");
        held.write().unwrap();
        write(&["i"]); // no Held: written at once
        assert_eq!(targets(), ["a", "b", "c", "d", "e", "f", "g", "h", "i"]);
    }

    #[pg_test]
    fn write_after_puts_what_it_records_ahead_of_the_held_rows() {
        let write = |ids: &[&str]| {
            super::write(ids.iter().map(|i| login(i)).collect(), Default::default()).unwrap()
        };
        let held = super::Held::begin();
        write(&["b", "c"]);
        held.write_after(|| {
            assert!(
                targets().is_empty(),
                "nothing written before write_after's INSERT"
            );
            super::write(vec![login("a")], Default::default())
        })
        .unwrap();
        write(&["d"]); // no Held: written at once
        assert_eq!(targets(), ["a", "b", "c", "d"]);
    }

    #[pg_test]
    fn held_rows_dropped_unwritten_are_gone_and_hold_nothing_after() {
        {
            let _held = super::Held::begin();
            super::write(vec![login("lost")], Default::default()).unwrap();
        }
        super::write(vec![login("kept")], Default::default()).unwrap();
        assert_eq!(targets(), ["kept"]);
    }
}
