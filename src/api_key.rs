//! API keys (docs/reference.md, "API keys"): machine principals acting in one organisation.
//!
//! A key is `trx_` + the key id (32 hex digits) + a secret of 32 CSPRNG bytes (64 hex
//! digits) + the CRC-32 of everything before it (8 hex digits): 108 characters that a
//! secret scanner recognises offline, and that authenticate_api_key refuses on a typo
//! before any table read. Only the SHA-256 of the secret is stored; the key leaves truxe
//! once, in create_api_key's result. authenticate_api_key makes the key the verified
//! identity (src/identity.rs): no user, the key's org, the key's id.
use crate::context::{org_access, service_caller, OrgSet};
use crate::error::{fail, Sqlstate, TruxeError, UnwrapOrRaise};
use crate::jsonb::JsonbArg;
use crate::plans::{self, BOOL, INTERVAL, JSONB, TEXT, TEXT_ARRAY, UUID, UUID_ARRAY};
use crate::security::{constant_time_eq, sha256_hex, to_hex};
use crate::trigger::trigger_entry;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{AnyElement, Uuid};

pgrx::extension_sql_file!(
    "../sql/api_keys.sql",
    name = "api_keys",
    requires = ["schema", "hierarchy"]
);

const PREFIX: &str = "trx_";
/// `trx_` + 32 + 64 + 8 hex digits.
const KEY_LEN: usize = 4 + 32 + 64 + 8;

/// The key string for `id` and `secret` (see the module comment).
fn encode(id: &Uuid, secret: &[u8; 32]) -> String {
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(PREFIX);
    key.push_str(&to_hex(id.as_bytes()));
    key.push_str(&to_hex(secret));
    let crc = crc32fast::hash(key.as_bytes());
    key.push_str(&format!("{crc:08x}"));
    key
}

/// The key id and secret of a well-formed key (length, prefix, lowercase hex, checksum);
/// None for anything else, without touching a table. Surrounding whitespace is ignored.
fn decode(key: &str) -> Option<(Uuid, [u8; 32])> {
    let key = key.trim();
    if key.len() != KEY_LEN || !key.starts_with(PREFIX) {
        return None;
    }
    let body = &key[..KEY_LEN - 8];
    if !key[PREFIX.len()..]
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let crc = u32::from_str_radix(&key[KEY_LEN - 8..], 16).ok()?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return None;
    }
    let id: [u8; 16] = unhex(&key[4..36])?.try_into().ok()?;
    let secret: [u8; 32] = unhex(&key[36..100])?.try_into().ok()?;
    Some((Uuid::from_bytes(id), secret))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Creates a key for org `org_id` as the acting user, who must be able to act in the org
/// and hold every scope there (truxe.user_holds_permission, wildcards included): a key
/// never has more than its creator. Returns the key id, the key (shown once: only the
/// SHA-256 of its secret is kept) and the expiry (NULL: none). Audits `api_key.created`
/// with the name and scopes, never the key. 42501 with no acting user (an API key cannot
/// create keys), for an org the user may not act in, or a scope the user does not hold;
/// 22023 for a NULL org, a blank or over-long name, an invalid scope
/// (truxe.valid_permission), a ttl that is not positive or a metadata that is not an
/// object. Callable by authenticated and service_account (SECURITY DEFINER).
// sql = …: `metadata` is jsonb kept as a datum (AnyElement), which pgrx would declare as
// anyelement.
#[pg_extern(sql = r#"
CREATE FUNCTION truxe.create_api_key(org_id uuid, name text, scopes text[] DEFAULT '{}',
                                     ttl interval DEFAULT NULL, metadata jsonb DEFAULT '{}')
RETURNS TABLE(key_id uuid, key text, expires_at timestamptz)
LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS '@MODULE_PATHNAME@', '@FUNCTION_NAME@';
"#)]
fn create_api_key(
    org_id: Option<Uuid>,
    name: Option<String>,
    scopes: Option<Vec<Option<String>>>,
    ttl: Option<Interval>,
    metadata: Option<AnyElement>,
) -> TableIterator<
    'static,
    (
        name!(key_id, Uuid),
        name!(key, String),
        name!(expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    TableIterator::once(create(org_id, name, scopes, ttl, metadata).unwrap_or_raise())
}

fn create(
    org: Option<Uuid>,
    name: Option<String>,
    scopes: Option<Vec<Option<String>>>,
    ttl: Option<Interval>,
    metadata: Option<AnyElement>,
) -> Result<(Uuid, String, Option<TimestampWithTimeZone>), TruxeError> {
    // the acting user, active (an API key has none: it cannot create keys)
    let me = crate::context::require_user()?;
    let Some(org) = org else {
        return fail(Sqlstate::InvalidParameter, "org_id must not be NULL");
    };
    let name = name.unwrap_or_default();
    if name.trim().is_empty() || name.trim().chars().count() > 255 {
        return fail(
            Sqlstate::InvalidParameter,
            "name must be 1-255 characters, not blank",
        );
    }
    let Some(scopes) = scopes
        .unwrap_or_default()
        .into_iter()
        .collect::<Option<Vec<String>>>()
    else {
        return fail(Sqlstate::InvalidParameter, "a scope must not be NULL");
    };
    if ttl.is_some_and(|t| t.as_micros() <= 0) {
        return fail(Sqlstate::InvalidParameter, "ttl must be positive");
    }
    // NULL means '{}'
    let metadata = JsonbArg::new(metadata);
    if !crate::context::may_act_in(me, org)? {
        return fail(
            Sqlstate::InsufficientPrivilege,
            format!("user {me} may not act in organization {org}"),
        );
    }
    Spi::connect_mut(|c| {
        for scope in &scopes {
            let row = plans::read(
                c,
                "SELECT truxe.valid_permission($1), truxe.user_holds_permission($2, $1, $3)",
                &[TEXT, UUID, UUID],
                &[scope.clone().into(), org.into(), me.into()],
            )?;
            let (valid, held) = row.first().get_two::<bool, bool>()?;
            if valid != Some(true) {
                return fail(
                    Sqlstate::InvalidParameter,
                    format!(
                        "invalid scope {}: resource:action",
                        crate::error::quote_input(scope)
                    ),
                );
            }
            if held != Some(true) {
                return fail(
                    Sqlstate::InsufficientPrivilege,
                    format!(
                        "user {me} does not hold {} in organization {org}: a key cannot have more",
                        crate::error::quote_input(scope)
                    ),
                );
            }
        }
        let secret: [u8; 32] = crate::crypto::random_bytes()?;
        metadata.require_object("metadata")?;
        let row = plans::run(
            c,
            "INSERT INTO truxe.api_keys (org_id, name, key_hash, scopes, created_by, expires_at, metadata)
             VALUES ($1, btrim($2), $3, $4, $5, now() + $6, coalesce($7, '{}'))
             RETURNING id, expires_at",
            &[UUID, TEXT, TEXT, TEXT_ARRAY, UUID, INTERVAL, JSONB],
            &[
                org.into(),
                name.clone().into(),
                sha256_hex(&secret).into(),
                scopes.clone().into(),
                me.into(),
                ttl.into(),
                metadata.param(),
            ],
        )?;
        let row = row.first();
        let (Some(id), expires_at) = (row.get::<Uuid>(1)?, row.get::<TimestampWithTimeZone>(2)?)
        else {
            return fail(Sqlstate::Internal, "api key row without id");
        };
        if crate::claim::audit_logs_distributed() {
            // the key's org by its id, for authenticate_on_citus
            plans::run(
                c,
                "INSERT INTO truxe.api_key_orgs (id, org_id) VALUES ($1, $2)",
                &[UUID, UUID],
                &[id.into(), org.into()],
            )?;
        }
        crate::audit::record(
            Some(org),
            "api_key.created",
            "api_key",
            &id.to_string(),
            serde_json::json!({ "name": name.trim(), "scopes": scopes }),
            &crate::audit::Client::default(),
        )?;
        Ok((id, encode(&id, &secret), expires_at))
    })
}

/// Checks an API key and, when it is live, makes it the verified identity of the current
/// transaction (no user; its org; its id): returns its id, org and scopes. No row — never an
/// error — for a malformed key (refused by its checksum without a table read), an unknown,
/// revoked or expired one, or one whose creator is no longer active or may no longer act in
/// its org; any verified identity is then cleared. Touches `last_used_at` at most once a
/// minute, never in a read-only transaction (so it answers on a hot standby). Callable by
/// authenticated and service_account (SECURITY DEFINER).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn authenticate_api_key(
    key: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(key_id, Uuid),
        name!(org_id, Uuid),
        name!(scopes, Vec<String>),
    ),
> {
    crate::identity::clear();
    let Some((id, secret)) = key.and_then(decode) else {
        return TableIterator::new(Vec::new());
    };
    TableIterator::new(authenticate(id, &secret).unwrap_or_raise())
}

fn authenticate(
    id: Uuid,
    secret: &[u8; 32],
) -> Result<Option<(Uuid, Uuid, Vec<String>)>, TruxeError> {
    if crate::claim::audit_logs_distributed() {
        return authenticate_on_citus(id, secret);
    }
    Spi::connect_mut(|c| {
        let rows = plans::read(
            c,
            concat!(
                "SELECT k.org_id, k.key_hash, k.scopes,
                        k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute'
                   FROM truxe.api_keys k
                  WHERE k.id = $1 AND k.revoked_at IS NULL
                    AND (k.expires_at IS NULL OR k.expires_at > now())
                    AND EXISTS (SELECT 1 FROM truxe.users au WHERE au.id = k.created_by AND au.status = 'active')
                    AND ",
                org_access!("k.created_by", "k.org_id")
            ),
            &[UUID],
            &[id.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first();
        let (Some(org), Some(stored), scopes, stale) = (
            row.get::<Uuid>(1)?,
            row.get::<String>(2)?,
            row.get::<Vec<String>>(3)?,
            row.get::<bool>(4)?,
        ) else {
            return fail(Sqlstate::Internal, "api key row without org or hash");
        };
        if !constant_time_eq(sha256_hex(secret).as_bytes(), stored.as_bytes()) {
            return Ok(None);
        }
        accepted(c, id, org, stale == Some(true), scopes)
    })
}

/// A key whose secret matched and whose creator may still act: its `last_used_at`
/// touched when `stale` (at most once a minute, never in a read-only transaction or on a
/// standby) and its identity established for the transaction; the key's id, org and
/// scopes.
fn accepted(
    c: &mut pgrx::spi::SpiClient<'_>,
    id: Uuid,
    org: Uuid,
    stale: bool,
    scopes: Option<Vec<String>>,
) -> Result<Option<(Uuid, Uuid, Vec<String>)>, TruxeError> {
    // SAFETY: both read backend-local state and have no preconditions.
    let writable = unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly };
    if writable && stale {
        plans::run(
            c,
            "UPDATE truxe.api_keys SET last_used_at = now()
              WHERE org_id = $1 AND id = $2
                AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            &[UUID, UUID],
            &[org.into(), id.into()],
        )?;
    }
    crate::identity::establish(&crate::identity::Verified {
        org: Some(org),
        api_key: Some(id),
        ..Default::default()
    });
    Ok(Some((id, org, scopes.unwrap_or_default())))
}

/// [`authenticate`] on Citus, where `api_keys` is distributed by `org_id`
/// (docs/scaling.md, "api_keys on Citus") and the key does not carry its org: the key's org
/// is read by its id in `truxe.api_key_orgs` on the coordinator, the key in that org's
/// shard, its secret compared, then its creator's status and org access read on the
/// coordinator (a query on a shard cannot read them); the touch updates the key in its
/// shard. Runs as the owner (SECURITY DEFINER), like every statement truxe makes on the
/// tables.
fn authenticate_on_citus(
    id: Uuid,
    secret: &[u8; 32],
) -> Result<Option<(Uuid, Uuid, Vec<String>)>, TruxeError> {
    Spi::connect_mut(|c| {
        let Some(org) = org_on_citus(c, id)? else {
            return Ok(None);
        };
        let rows = plans::read(
            c,
            "SELECT k.org_id, k.key_hash, k.scopes, k.created_by,
                    k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute'
               FROM truxe.api_keys k
              WHERE k.org_id = $2 AND k.id = $1 AND k.revoked_at IS NULL
                AND (k.expires_at IS NULL OR k.expires_at > now())",
            &[UUID, UUID],
            &[id.into(), org.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first();
        let (Some(org), Some(stored), scopes, creator, stale) = (
            row.get::<Uuid>(1)?,
            row.get::<String>(2)?,
            row.get::<Vec<String>>(3)?,
            row.get::<Uuid>(4)?,
            row.get::<bool>(5)?,
        ) else {
            return fail(Sqlstate::Internal, "api key row without org or hash");
        };
        if !constant_time_eq(sha256_hex(secret).as_bytes(), stored.as_bytes()) {
            return Ok(None);
        }
        let Some(creator) = creator else {
            return Ok(None);
        };
        if !crate::context::may_act_in(creator, org)? {
            return Ok(None);
        }
        accepted(c, id, org, stale == Some(true), scopes)
    })
}

/// On Citus, where `api_keys` is distributed by `org_id` and a key id does not give its
/// shard: the org of key `id`, read in `truxe.api_key_orgs` on the coordinator (None for
/// an unknown key), so that the key is then read or written in its one shard.
fn org_on_citus(c: &pgrx::spi::SpiClient<'_>, id: Uuid) -> Result<Option<Uuid>, TruxeError> {
    Ok(plans::first_value::<Uuid>(plans::read(
        c,
        "SELECT o.org_id FROM truxe.api_key_orgs o WHERE o.id = $1",
        &[UUID],
        &[id.into()],
    )?)?)
}

/// Revokes key `key_id`: true when this call revoked it. Allowed to its creator, to the
/// owners/admins of its org (directly or through an ancestor) and to service_account (the
/// role the statement runs as); for anyone else, an unknown or already revoked key, or
/// NULL: false, alike (the answer does not tell whether the key exists). Audits
/// `api_key.revoked`. Callable by authenticated and service_account (SECURITY DEFINER).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn revoke_api_key(key_id: Option<Uuid>) -> bool {
    revoke(key_id).unwrap_or_raise()
}

fn revoke(key_id: Option<Uuid>) -> Result<bool, TruxeError> {
    let Some(key_id) = key_id else {
        return Ok(false);
    };
    let service = service_caller();
    let me = crate::identity::acting_user();
    if !service && me.is_none() {
        return Ok(false);
    }
    let admin = if service {
        Vec::new()
    } else {
        crate::context::acting_org_ids(OrgSet::Admin)?
    };
    macro_rules! revoke_key {
        () => {
            "UPDATE truxe.api_keys k SET revoked_at = now()
              WHERE k.id = $1 AND k.revoked_at IS NULL
                AND ($2 OR k.created_by = $3 OR k.org_id = ANY ($4))"
        };
    }
    let revoked = Spi::connect_mut(|c| -> Result<Option<Uuid>, TruxeError> {
        let rows = if crate::claim::audit_logs_distributed() {
            let Some(org) = org_on_citus(c, key_id)? else {
                return Ok(None);
            };
            plans::run(
                c,
                concat!(revoke_key!(), " AND k.org_id = $5 RETURNING k.org_id"),
                &[UUID, BOOL, UUID, UUID_ARRAY, UUID],
                &[
                    key_id.into(),
                    service.into(),
                    me.into(),
                    admin.into(),
                    org.into(),
                ],
            )?
        } else {
            plans::run(
                c,
                concat!(revoke_key!(), " RETURNING k.org_id"),
                &[UUID, BOOL, UUID, UUID_ARRAY],
                &[key_id.into(), service.into(), me.into(), admin.into()],
            )?
        };
        Ok(plans::first_value::<Uuid>(rows)?)
    })?;
    let Some(org) = revoked else {
        return Ok(false);
    };
    crate::audit::record(
        Some(org),
        "api_key.revoked",
        "api_key",
        &key_id.to_string(),
        serde_json::json!({ "reason": "revoked" }),
        &crate::audit::Client::default(),
    )?;
    Ok(true)
}

/// AFTER DELETE on truxe.memberships: a key never outlives its creator's access. The keys
/// the removed member created in that org, or in a descendant they may no longer act in,
/// are revoked, each audited `api_key.revoked` (reason `creator_removed`). Runs as the
/// extension owner; not callable as a function (no EXECUTE grant; entry point below).
fn revoke_api_keys_on_membership_delete<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TruxeError> {
    let Some(old) = trigger.old() else {
        return Ok(None);
    };
    let column = |name: &str| -> Result<Option<Uuid>, TruxeError> { Ok(old.get_by_name(name)?) };
    let (org, user) = (column("org_id")?, column("user_id")?);
    let revoked = if crate::claim::audit_logs_distributed() {
        revoke_creators_keys_on_citus(org, user)?
    } else {
        revoke_creators_keys(org, user)?
    };
    for (id, org) in revoked {
        crate::audit::record(
            org,
            "api_key.revoked",
            "api_key",
            &id.map(|i| i.to_string()).unwrap_or_default(),
            serde_json::json!({ "reason": "creator_removed" }),
            &crate::audit::Client::default(),
        )?;
    }
    Ok(None)
}

/// A revoked key: (id, org).
type RevokedKey = (Option<Uuid>, Option<Uuid>);

/// The keys of creator `user` in `org`, or in a descendant they may no longer act in,
/// revoked: (id, org) of each. One statement on a single node.
fn revoke_creators_keys(
    org: Option<Uuid>,
    user: Option<Uuid>,
) -> Result<Vec<RevokedKey>, TruxeError> {
    Ok(plans::run_once(
        concat!(
            "UPDATE truxe.api_keys k SET revoked_at = now()
              WHERE k.created_by = $2 AND k.revoked_at IS NULL
                AND (k.org_id = $1
                     OR (k.org_id IN (SELECT c.descendant_id FROM truxe.org_closure c
                                       WHERE c.ancestor_id = $1)
                         AND NOT ",
            org_access!("k.created_by", "k.org_id"),
            "))
              RETURNING k.id, k.org_id"
        ),
        &[UUID, UUID],
        &[org.into(), user.into()],
        |t| {
            t.into_iter()
                .map(|r| Ok((r.get::<Uuid>(1)?, r.get::<Uuid>(2)?)))
                .collect()
        },
    )?)
}

/// [`revoke_creators_keys`] on Citus (`api_keys` distributed by `org_id`): the orgs whose
/// keys go are decided on the coordinator (the org itself, and its descendants the user
/// may no longer act in, from `org_closure` and `memberships`), then one UPDATE revokes
/// the user's keys there, on those orgs' shards only (a query on a shard cannot read the
/// coordinator's tables). Runs as the owner (the trigger is SECURITY DEFINER).
fn revoke_creators_keys_on_citus(
    org: Option<Uuid>,
    user: Option<Uuid>,
) -> Result<Vec<RevokedKey>, TruxeError> {
    let orgs = crate::context::orgs_lost_with(org, user)?;
    Ok(plans::run_once(
        "UPDATE truxe.api_keys k SET revoked_at = now()
          WHERE k.created_by = $2 AND k.revoked_at IS NULL AND k.org_id = ANY ($1)
          RETURNING k.id, k.org_id",
        &[UUID_ARRAY, UUID],
        &[orgs.into(), user.into()],
        |t| {
            t.into_iter()
                .map(|r| Ok((r.get::<Uuid>(1)?, r.get::<Uuid>(2)?)))
                .collect()
        },
    )?)
}

trigger_entry!(
    revoke_api_keys_on_membership_delete,
    "revoke_api_keys_on_membership_delete",
    revoke_api_keys_on_membership_delete_wrapper,
    pg_finfo_revoke_api_keys_on_membership_delete_wrapper
);

#[cfg(test)]
mod unit {
    use super::{decode, encode, KEY_LEN};
    use pgrx::Uuid;

    #[test]
    fn a_key_round_trips_and_every_one_character_typo_is_refused() {
        let id = Uuid::from_bytes([0x5a; 16]);
        let key = encode(&id, &[7; 32]);
        assert_eq!(key.len(), KEY_LEN);
        assert!(key.starts_with("trx_"));
        assert_eq!(decode(&key), Some((id, [7; 32])));
        assert_eq!(decode(&format!("  {key}\n")), Some((id, [7; 32])));
        for i in 4..key.len() {
            for c in ['0', '9', 'a', 'f', 'x', 'A'] {
                let mut typo = key.clone().into_bytes();
                if typo[i] == c as u8 {
                    continue;
                }
                typo[i] = c as u8;
                let typo = String::from_utf8(typo).unwrap();
                assert_eq!(decode(&typo), None, "typo at {i}: {typo}");
            }
        }
        assert_eq!(decode(""), None);
        assert_eq!(decode(&key[..KEY_LEN - 1]), None);
        assert_eq!(decode(&key.replacen("trx_", "trk_", 1)), None);
        assert_eq!(decode(&"é".repeat(54)), None);
    }
}
