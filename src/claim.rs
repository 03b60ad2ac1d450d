//! The request identity on Citus workers (docs/scaling.md, "The request identity on the
//! workers"): a claim signed on the coordinator, checked on the shards.
//!
//! RLS on a distributed table runs on the worker that holds the shard, where neither the
//! coordinator's settings (`app.*`, `request.jwt.claims`) nor truxe's verified identity
//! exist, and where a policy may neither use a subquery nor read another table. So, once
//! `truxe.distribute()` has distributed `audit_logs`, the functions that establish the
//! request identity on the coordinator (`authenticate`, `authenticate_api_key`,
//! `switch_org`, `set_context`) also write `truxe.claim` with `SET LOCAL`:
//!
//! `v1:<key id>:<expiry>:<user>:<acting org>:<admin orgs>:<accessible orgs>:<invited orgs>:<HMAC-SHA-256, hex>`
//!
//! (the expiry in PostgreSQL microseconds, the org sets comma-separated, the MAC over
//! everything before it, under a key derived from the key file's current key: src/crypto.rs).
//! Citus sends a `SET LOCAL` made inside a transaction block to every worker connection of
//! that transaction when `citus.propagate_set_commands = 'local'` (set here, for the
//! transaction). The Citus forms of the policies, which `distribute()` installs, call
//! [`claim_user`], [`claim_org`], [`claim_administers`], [`claim_may_act_in`] and [`claim_invited_to`]: they verify the claim once
//! per backend per value (constant-time MAC comparison), then compare ids. No claim, a
//! malformed one, a bad MAC, an unknown key id or an expired claim: nobody (no rows).
//!
//! Any login may write `truxe.claim` (Citus sends it as the current role), but cannot make
//! a MAC without the key file; replaying its own claim gives what it already had, until the
//! expiry. On a single node (audit_logs not distributed) nothing here runs.
use crate::crypto::key_ring;
use crate::error::{TruxeError, UnwrapOrRaise};
use crate::security::to_hex;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, Uuid};
use std::cell::RefCell;
use std::ffi::{CStr, CString};

/// `truxe.claim`: the signed claim, written by truxe with `SET LOCAL` (any role may set it:
/// Citus sets it on the workers as the current role; only a valid MAC makes it count).
static CLAIM: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// How long a claim counts after it was signed. Short: a claim read by its holder and
/// replayed in a later transaction is worth what its holder had, for at most this long.
const LIFETIME_MICROS: i64 = 60 * 1_000_000;

/// Registers `truxe.claim` (called by `_PG_init`).
pub fn init() {
    GucRegistry::define_string_guc(
        c"truxe.claim",
        c"The request identity signed for Citus workers (written by truxe; docs/scaling.md).",
        c"Counts only with a valid signature under the key file's key, until its expiry.",
        &CLAIM,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
}

/// Whether `truxe.distribute()` has distributed `audit_logs`: it makes `org_id` part of the
/// primary key, so NOT NULL, which a single-node install never has. A settings lookup
/// (is Citus loaded?) and catalog cache lookups only, no SPI: the audit writer and every
/// change of the identity ask.
pub(crate) fn audit_logs_distributed() -> bool {
    distributed_audit_owner().is_some()
}

/// The owner of `truxe.audit_logs` when it is distributed ([`audit_logs_distributed`]).
pub(crate) fn distributed_audit_owner() -> Option<pg_sys::Oid> {
    // without Citus loaded (every single-node install) one settings lookup decides
    if !crate::distribute::citus_loaded() {
        return None;
    }
    // SAFETY: catalog cache lookups with NUL-terminated names, all missing_ok.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"truxe".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::get_relname_relid(c"audit_logs".as_ptr(), nsp);
        if rel == pg_sys::InvalidOid {
            return None;
        }
        // the relation cache's entry (a hash lookup), as the executor sees the table
        let rel = pgrx::PgRelation::open(rel);
        let notnull = rel
            .tuple_desc()
            .iter()
            .any(|a| a.name() == "org_id" && !a.attisdropped && a.attnotnull);
        notnull.then(|| (*rel.rd_rel).relowner)
    }
}

/// The org id that stands for "no org" in a distributed `audit_logs` (Citus refuses a NULL
/// distribution key): the nil uuid, never an organisation's id.
pub(crate) fn no_org() -> Uuid {
    Uuid::from_bytes([0; 16])
}

/// Writes this transaction's claim for the acting identity of this moment (empty when
/// nobody acts, or when no key file is usable: fail closed), when `audit_logs` is
/// distributed; otherwise nothing. Called after every change of the identity.
pub(crate) fn refresh() -> Result<(), TruxeError> {
    if !audit_logs_distributed() {
        return Ok(());
    }
    let value = match crate::identity::acting() {
        None => String::new(),
        Some(who) => {
            let admin = crate::context::acting_org_ids(crate::context::OrgSet::Admin)?;
            let access = crate::context::acting_org_ids(crate::context::OrgSet::Accessible)?;
            let invited = crate::context::acting_org_ids(crate::context::OrgSet::Invited)?;
            sign(who.id.user, who.id.org, [&admin, &access, &invited]).unwrap_or_default()
        }
    };
    Spi::connect_mut(|c| {
        // propagated to the workers only while this is 'local' (Citus checks it per SET)
        c.update(
            "SET LOCAL citus.propagate_set_commands = 'local'",
            None,
            &[],
        )?;
        // the value is ids, digits, hex and the key id's [A-Za-z0-9._-]: no quote
        c.update(&format!("SET LOCAL truxe.claim = '{value}'"), None, &[])?;
        Ok::<(), pgrx::spi::SpiError>(())
    })?;
    Ok(())
}

fn join(ids: &[Uuid]) -> String {
    let mut ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.join(",")
}

/// The signed claim, or None without a usable key file.
/// The org sets are admin, accessible and invited, in that order.
fn sign(user: Option<Uuid>, org: Option<Uuid>, sets: [&[Uuid]; 3]) -> Option<String> {
    let ring = key_ring().ok()?;
    let key = ring.current_claim_key();
    // SAFETY: reads the backend's clock.
    let expiry = unsafe { pg_sys::GetCurrentTimestamp() } + LIFETIME_MICROS;
    let id = |u: Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_default();
    let message = format!(
        "v1:{}:{expiry}:{}:{}:{}:{}:{}",
        key.id(),
        id(user),
        id(org),
        join(sets[0]),
        join(sets[1]),
        join(sets[2])
    );
    let mac = to_hex(&key.mac(message.as_bytes()));
    Some(format!("{message}:{mac}"))
}

/// A claim whose MAC verified.
#[derive(Debug, PartialEq)]
struct Claim {
    user: Option<Uuid>,
    org: Option<Uuid>,
    expiry: i64,
    admin: Vec<Uuid>,
    access: Vec<Uuid>,
    invited: Vec<Uuid>,
}

fn parse_ids(text: &str) -> Option<Vec<Uuid>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    let mut ids = text
        .split(',')
        .map(crate::context::parse_uuid)
        .collect::<Option<Vec<_>>>()?;
    ids.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Some(ids)
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16);
            Some((d(p[0])? << 4 | d(p[1])?) as u8)
        })
        .collect()
}

/// The claim `value` says, if its MAC verifies under the key file's key of its key id.
fn verify(value: &str) -> Option<Claim> {
    let (message, mac) = value.rsplit_once(':')?;
    let mac = from_hex(mac)?;
    let mut fields = message.split(':');
    if fields.next()? != "v1" {
        return None;
    }
    let key_id = fields.next()?;
    let ring = key_ring().ok()?;
    if !ring.claim_key(key_id)?.verifies(message.as_bytes(), &mac) {
        return None;
    }
    let expiry = fields.next()?.parse::<i64>().ok()?;
    let mut id = || match fields.next()? {
        "" => Some(None),
        u => Some(Some(crate::context::parse_uuid(u)?)),
    };
    let (user, org) = (id()?, id()?);
    let admin = parse_ids(fields.next()?)?;
    let access = parse_ids(fields.next()?)?;
    let invited = parse_ids(fields.next()?)?;
    if fields.next().is_some() {
        return None;
    }
    Some(Claim {
        user,
        org,
        expiry,
        admin,
        access,
        invited,
    })
}

thread_local! {
    /// The last claim value this backend checked, and what it verified to.
    static CHECKED: RefCell<Option<(Vec<u8>, Option<Claim>)>> = const { RefCell::new(None) };
}

/// Applies `f` to the current claim when it verifies and has not expired (at the start of
/// the current statement); `None` otherwise.
fn with_claim<T>(f: impl FnOnce(&Claim) -> T) -> Option<T> {
    // SAFETY: the setting's storage is a NUL-terminated string or NULL, owned by the GUC
    // machinery and unchanged while this function runs.
    let raw = unsafe {
        let p = *CLAIM.as_ptr();
        if p.is_null() {
            return None;
        }
        CStr::from_ptr(p).to_bytes()
    };
    if raw.is_empty() {
        return None;
    }
    CHECKED.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(v, _)| v.as_slice() != raw) {
            let claim = std::str::from_utf8(raw).ok().and_then(verify);
            *c = Some((raw.to_vec(), claim));
        }
        let claim = c.as_ref()?.1.as_ref()?;
        // SAFETY: reads the statement's start time.
        let now = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
        (now <= claim.expiry).then(|| f(claim))
    })
}

fn contains(ids: &[Uuid], org: Uuid) -> bool {
    ids.binary_search_by(|id| id.as_bytes().cmp(org.as_bytes()))
        .is_ok()
}

/// The user of the verified claim (NULL: no valid claim, or an API key's). Used by the
/// Citus form of audit_logs' policies, which `truxe.distribute()` creates (this function
/// is not part of a single-node install: `sql = false`). No name resolution, no SPI, so no
/// `SET search_path` (which would cost a GUC save and restore per row).
#[pg_extern(sql = false, stable, parallel_safe)]
fn claim_user() -> Option<Uuid> {
    with_claim(|c| c.user).flatten()
}

/// The acting org of the verified claim (NULL: none, or no valid claim): the single-node
/// `current_org_id()`, for the Citus form of memberships' read policy. As [`claim_user`].
#[pg_extern(sql = false, stable, parallel_safe)]
fn claim_org() -> Option<Uuid> {
    with_claim(|c| c.org).flatten()
}

/// Whether the verified claim's identity holds an administrator's view of `org_id` (the
/// single-node `admin_org_ids()`). False for NULL, without a valid claim. As [`claim_user`].
#[pg_extern(sql = false, stable, parallel_safe)]
fn claim_administers(org_id: Option<Uuid>) -> bool {
    let Some(org) = org_id else { return false };
    with_claim(|c| contains(&c.admin, org)).unwrap_or(false)
}

/// Whether the verified claim's identity may act in `org_id` (the single-node
/// `accessible_org_ids()`). False for NULL, without a valid claim. As [`claim_user`].
#[pg_extern(sql = false, stable, parallel_safe)]
fn claim_may_act_in(org_id: Option<Uuid>) -> bool {
    let Some(org) = org_id else { return false };
    with_claim(|c| contains(&c.access, org)).unwrap_or(false)
}

/// Whether the verified claim's user has a pending invitation to `org_id` (the single-node
/// `invited_org_ids()`), for the Citus form of organizations' read policy. False for NULL,
/// without a valid claim. As [`claim_user`].
#[pg_extern(sql = false, stable, parallel_safe)]
fn claim_invited_to(org_id: Option<Uuid>) -> bool {
    let Some(org) = org_id else { return false };
    with_claim(|c| contains(&c.invited, org)).unwrap_or(false)
}

/// [`refresh`], raising what it raises (for the identity functions' tails).
pub(crate) fn refresh_or_raise() {
    refresh().unwrap_or_raise()
}

#[cfg(test)]
mod unit {
    use super::{from_hex, parse_ids};

    #[test]
    fn parses_only_what_it_signs() {
        assert_eq!(from_hex("0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(from_hex("0af"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(parse_ids(""), Some(vec![]));
        assert!(parse_ids("12345678-1234-1234-1234-1234567890ab").is_some());
        assert!(parse_ids("12345678-1234-1234-1234-1234567890ab,").is_none());
        assert!(parse_ids("x").is_none());
    }
}
