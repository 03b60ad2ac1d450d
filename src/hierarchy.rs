//! Organisation hierarchy (docs/reference.md, "Hierarchy"): the cycle/depth check, the ancestor/descendant table
//! truxe.org_closure that keeps RLS's org sets to one index scan, and the move permission
//! check on truxe.organizations (Rust triggers); org_ancestors / org_descendants are SQL
//! (sql/hierarchy.sql).
//!
//! Concurrency: changes are serialised per tree, never globally. Every change to a tree (an
//! org inserted under a parent, moved, or deleted from under one) first locks the
//! truxe.org_tree row of each tree it touches — the root of the org's current tree and the
//! root of the new parent's tree — in one statement, in uuid order (no deadlock between two
//! changes that touch the same two trees), creating the row when it is the tree's first
//! change. An open transaction in one tenant's tree therefore never blocks a change in an
//! unrelated tree. After the lock the roots are read again: under READ COMMITTED each
//! statement of the trigger runs with a fresh snapshot (the plans execute as mutating SPI
//! statements), so a change that waited sees the tree its predecessor committed; if that
//! predecessor moved the org into a tree not yet locked, the missing root is locked too when
//! it sorts after every root held, otherwise the change fails with 40001 (retry). Of two
//! transactions that each add one edge of a cycle, the second fails with 23514 — no
//! deadlock, no double commit. Under REPEATABLE READ and SERIALIZABLE, a transaction whose
//! snapshot misses a change committed meanwhile in one of its trees cannot update (or
//! insert) that tree's row and fails with 40001, which the client retries; one that gets
//! past it sees every earlier change of those trees.
//!
//! An org_tree row stays when its root is moved under another org or deleted: deleting it
//! would let a REPEATABLE READ transaction that missed that change insert a fresh row
//! instead of failing. The rows are lock targets only (no data): not dumped, recreated on
//! demand after a restore.
use crate::error::{fail, Sqlstate, TruxeError};
use crate::gucs::MAX_ORG_DEPTH;
use crate::plans::{self, UUID};
use crate::trigger::{trigger_entry, TriggerResult};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

pgrx::extension_sql_file!(
    "../sql/hierarchy.sql",
    name = "hierarchy",
    requires = ["schema", "context", owner_org_ids]
);

/// 42501: the acting user may not move `org` (its parent set, changed or cleared).
fn move_denied(org: Uuid) -> TruxeError {
    TruxeError::new(
        Sqlstate::InsufficientPrivilege,
        format!("moving organization {org} requires owner on it and on its current parent, and owner or admin on the new parent"),
    )
}

/// An org's parent changing: `from` is None for an INSERT or a root, `to` is None for a
/// DELETE or a move to the top; `inserted` for a new row (it has no tree of its own yet).
struct Move {
    org: Uuid,
    from: Option<Uuid>,
    to: Option<Uuid>,
    inserted: bool,
}

/// The parent change this INSERT/UPDATE/DELETE makes, else None.
fn parent_move(trigger: &PgTrigger<'_>) -> Result<Option<Move>, TruxeError> {
    let parent = |row: Option<PgHeapTuple<'_, AllocatedByPostgres>>| match row {
        Some(row) => row.get_by_name::<Uuid>("parent_org_id"),
        None => Ok(None),
    };
    let inserted = trigger.old().is_none();
    let (from, to) = (parent(trigger.old())?, parent(trigger.new())?);
    if from == to {
        return Ok(None);
    }
    let Some(row) = trigger.new().or_else(|| trigger.old()) else {
        return Ok(None);
    };
    Ok(row.get_by_name::<Uuid>("id")?.map(|org| Move {
        org,
        from,
        to,
        inserted,
    }))
}

/// Pairs linking `$1`'s old ancestors to `$1` and its subtree: both sets first, then one
/// primary-key scan.
const DETACH: &str = "
  DELETE FROM truxe.org_closure
   WHERE ancestor_id = ANY (ARRAY(SELECT ancestor_id FROM truxe.org_closure WHERE descendant_id = $1))
     AND descendant_id = ANY (ARRAY(SELECT descendant_id FROM truxe.org_closure WHERE ancestor_id = $1) || $1)";

/// Pairs linking `$2` (the new parent) and its ancestors to `$1` and its subtree.
const ATTACH: &str = "
  INSERT INTO truxe.org_closure (ancestor_id, descendant_id, depth)
  SELECT a.id, s.id, a.depth + s.depth + 1
    FROM (SELECT $2 AS id, 0 AS depth UNION ALL
          SELECT ancestor_id, depth FROM truxe.org_closure WHERE descendant_id = $2) a,
         (SELECT $1 AS id, 0 AS depth UNION ALL
          SELECT descendant_id, depth FROM truxe.org_closure WHERE ancestor_id = $1) s";

/// The roots of the trees of `$1` and `$2` (either may be NULL), distinct, in uuid order.
const ROOTS: &str = "
  SELECT DISTINCT coalesce((SELECT c.ancestor_id FROM truxe.org_closure c
                             WHERE c.descendant_id = v.id ORDER BY c.depth DESC LIMIT 1), v.id)
    FROM (VALUES ($1), ($2)) v(id) WHERE v.id IS NOT NULL ORDER BY 1";

/// Locks the org_tree rows of roots `$1` and `$2` (distinct, either may be NULL) in uuid
/// order, creating them when missing; the version bump makes a REPEATABLE READ snapshot that
/// missed a change of that tree fail with 40001.
const LOCK_TREES: &str = "
  INSERT INTO truxe.org_tree AS t (root_id)
  SELECT v.id FROM (VALUES ($1), ($2)) v(id) WHERE v.id IS NOT NULL ORDER BY v.id
  ON CONFLICT (root_id) DO UPDATE SET version = t.version + 1";

// The trigger functions' C entry points (src/trigger.rs; SQL in sql/hierarchy.sql). The
// `_v2` symbols are 0.2's; the 0.1.0 install script names the others, which keep 0.1's
// behaviour for a database still on schema 0.1.0 (its org_tree is one row, and it has no
// owner_org_ids()) until ALTER EXTENSION truxe UPDATE points the functions at `_v2`.
trigger_entry!(
    maintain_org_hierarchy,
    "maintain_org_hierarchy",
    maintain_org_hierarchy_v2_wrapper,
    pg_finfo_maintain_org_hierarchy_v2_wrapper
);
trigger_entry!(
    check_org_reparent,
    "check_org_reparent",
    check_org_reparent_v2_wrapper,
    pg_finfo_check_org_reparent_v2_wrapper
);
trigger_entry!(
    maintain_org_hierarchy_0_1,
    "maintain_org_hierarchy",
    maintain_org_hierarchy_wrapper,
    pg_finfo_maintain_org_hierarchy_wrapper
);
trigger_entry!(
    check_org_reparent_0_1,
    "check_org_reparent",
    check_org_reparent_wrapper,
    pg_finfo_check_org_reparent_wrapper
);

/// 0.1.0's maintain_org_hierarchy (schema 0.1.0: one org_tree row for all trees).
fn maintain_org_hierarchy_0_1<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if let Some(change) = parent_move(trigger)? {
        apply(change, false)?;
    }
    Ok(None)
}

/// 0.1.0's check_org_reparent (schema 0.1.0): owner/admin on the org and the new parent.
fn check_org_reparent_0_1<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if let Some(Move {
        org,
        to: Some(parent),
        ..
    }) = parent_move(trigger)?
    {
        let allowed = trusted_caller()
            || Spi::get_one_with_args::<bool>(
                "SELECT ARRAY[$1, $2]::pg_catalog.uuid[] OPERATOR(pg_catalog.<@) truxe.admin_org_ids()",
                &[org.into(), parent.into()],
            )? == Some(true);
        if !allowed {
            return Err(move_denied(org));
        }
    }
    Ok(trigger.new())
}

/// AFTER INSERT OR UPDATE OF parent_org_id OR DELETE: locks the trees the change touches,
/// rejects cycles and hierarchies deeper than truxe.max_org_depth (23514), then records the
/// change in truxe.org_closure; 40001 under REPEATABLE READ when another change of one of
/// those trees committed meanwhile. Runs as the extension owner (RLS hides no org; the
/// closure table is the owner's alone). Not callable as a function (0A000).
fn maintain_org_hierarchy<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if let Some(change) = parent_move(trigger)? {
        apply(change, true)?;
    }
    Ok(None)
}

/// Applies `change`: `per_tree` locks the trees it touches (0.2); otherwise the single
/// org_tree row of schema 0.1.0.
fn apply(change: Move, per_tree: bool) -> Result<(), TruxeError> {
    let Move {
        org,
        from,
        to,
        inserted,
    } = change;
    Spi::connect_mut(|client| {
        if per_tree {
            // a new row has no tree of its own: only its new parent's tree changes
            lock_trees(client, org, (!inserted).then_some(org), to)?;
        } else {
            plans::run(
                client,
                "UPDATE truxe.org_tree SET version = version + 1",
                &[],
                &[],
            )?;
        }
        if let Some(parent) = to {
            check(client, org, parent)?;
        }
        if from.is_some() {
            plans::run(client, DETACH, &[UUID], &[org.into()])?;
        }
        if let Some(parent) = to {
            plans::run(client, ATTACH, &[UUID, UUID], &[org.into(), parent.into()])?;
        }
        Ok(())
    })
}

/// The roots of the trees of `a` and `b`, distinct, in uuid order.
fn roots(
    client: &mut SpiClient<'_>,
    a: Option<Uuid>,
    b: Option<Uuid>,
) -> Result<Vec<Uuid>, TruxeError> {
    let rows = plans::run(client, ROOTS, &[UUID, UUID], &[a.into(), b.into()])?;
    let mut out = Vec::with_capacity(2);
    for row in rows {
        if let Some(root) = row.get::<Uuid>(1)? {
            out.push(root);
        }
    }
    Ok(out)
}

/// Locks the org_tree rows of the trees of `a` and `b` (see the module comment): the roots
/// are read, locked, and read again until every root is held; a root that sorts before one
/// already held cannot be waited for without risking a deadlock: 40001 then.
fn lock_trees(
    client: &mut SpiClient<'_>,
    org: Uuid,
    a: Option<Uuid>,
    b: Option<Uuid>,
) -> Result<(), TruxeError> {
    let mut held: Vec<Uuid> = Vec::with_capacity(4);
    loop {
        let missing: Vec<Uuid> = roots(client, a, b)?
            .into_iter()
            .filter(|r| !held.contains(r))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let highest = held.iter().map(|h| *h.as_bytes()).max();
        if highest.is_some_and(|h| missing.iter().any(|m| *m.as_bytes() <= h)) || held.len() > 8 {
            return fail(
                Sqlstate::SerializationFailure,
                format!(
                    "the tree of organization {org} was changed by a concurrent transaction; retry"
                ),
            );
        }
        plans::run(
            client,
            LOCK_TREES,
            &[UUID, UUID],
            &[
                missing.first().copied().into(),
                missing.get(1).copied().into(),
            ],
        )?;
        held.extend(missing);
    }
}

/// `parent` must not be `org` or below it, and the levels above `parent`, `parent`, `org`
/// and `org`'s deepest descendant must fit in truxe.max_org_depth.
fn check(client: &mut SpiClient<'_>, org: Uuid, parent: Uuid) -> Result<(), TruxeError> {
    let max = i64::from(MAX_ORG_DEPTH.get());
    let rows = plans::run(
        client,
        "SELECT $1 = $2 OR EXISTS (SELECT 1 FROM truxe.org_closure
                                    WHERE ancestor_id = $1 AND descendant_id = $2),
                2 + coalesce((SELECT max(depth) FROM truxe.org_closure WHERE descendant_id = $2), 0)
                  + coalesce((SELECT max(depth) FROM truxe.org_closure WHERE ancestor_id = $1), 0)",
        &[UUID, UUID],
        &[org.into(), parent.into()],
    )?;
    let row = rows.first();
    if row.get::<bool>(1)? == Some(true) {
        return fail(
            Sqlstate::CheckViolation,
            format!("organization {org} cannot have parent {parent}: {parent} is {org} or one of its descendants"),
        );
    }
    let levels = row.get::<i32>(2)?.map_or(0, i64::from);
    if levels > max {
        return fail(
            Sqlstate::CheckViolation,
            format!("organization {org} under parent {parent} would make the hierarchy {levels} levels deep; truxe.max_org_depth is {max}"),
        );
    }
    Ok(())
}

/// BEFORE UPDATE OF parent_org_id, as the caller: anyone but a superuser or a member of
/// service_account moving an org (setting, changing or clearing its parent) needs owner
/// rights on the org (directly or through an ancestor), owner rights on its current parent
/// when it has one, and owner or admin rights on the new parent when it gets one (42501).
/// Owner, not admin, on the org: a move hands the new parent's owners power over it, so an
/// admin could otherwise graft it under an org of their own and become its owner. Not
/// callable as a function (0A000).
fn check_org_reparent<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if let Some(Move { org, from, to, .. }) = parent_move(trigger)? {
        let allowed = trusted_caller()
            || Spi::get_one_with_args::<bool>(
                "SELECT $1 = ANY (t.owned) AND ($2 IS NULL OR $2 = ANY (t.owned))
                        AND ($3 IS NULL OR $3 = ANY (truxe.admin_org_ids()))
                   FROM (SELECT truxe.owner_org_ids()) t(owned)",
                &[org.into(), from.into(), to.into()],
            )? == Some(true);
        if !allowed {
            return Err(move_denied(org));
        }
    }
    Ok(trigger.new())
}

/// A superuser, or a role with the privileges of service_account: moves anything.
fn trusted_caller() -> bool {
    // SAFETY: GetUserId reads backend-local state and has no preconditions.
    crate::context::is_trusted_role(unsafe { pg_sys::GetUserId() })
}

/// Orgs where the acting user is a joined owner, and every descendant of those: where the
/// user holds an owner's rights (the move rule above), whatever the acting org. Empty with
/// no acting user (an API key owns nothing). SECURITY
/// DEFINER, as accessible_org_ids. Callable by authenticated and service_account.
#[pg_extern(stable, security_definer, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn owner_org_ids() -> Vec<Uuid> {
    use crate::error::UnwrapOrRaise;
    match crate::identity::acting_user() {
        Some(user) => crate::context::user_org_ids(OWNER_ORGS, user, None).unwrap_or_raise(),
        None => Vec::new(),
    }
}

/// Orgs where the acting user ($1, if active) is a joined owner, and every descendant of
/// those.
const OWNER_ORGS: &str = concat!(
    "WITH own AS (",
    crate::context::acting_members!(),
    " AND m.joined_at IS NOT NULL AND m.role = 'owner')
  SELECT org_id FROM own
  UNION
  SELECT c.descendant_id FROM own JOIN truxe.org_closure c ON c.ancestor_id = own.org_id"
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::error::error_of;
    use pgrx::prelude::*;

    /// A chain root <- c1 <- … <- cN of orgs with slugs c0..cN; returns nothing.
    fn chain(n: i32) {
        Spi::run(&format!(
            "DO $$ DECLARE prev uuid; cur uuid; BEGIN
               FOR i IN 0..{n} LOOP
                 INSERT INTO truxe.organizations (slug, name, parent_org_id)
                   VALUES ('c' || i, 'C' || i, prev) RETURNING id INTO cur;
                 prev := cur;
               END LOOP; END $$"
        ))
        .unwrap();
    }

    #[pg_test]
    fn ancestors_and_descendants_walk_the_chain() {
        chain(4);
        let depths = Spi::get_one::<String>(
            "SELECT string_agg(o.slug || ':' || a.depth, ',' ORDER BY a.depth)
               FROM truxe.org_ancestors((SELECT id FROM truxe.organizations WHERE slug = 'c4')) a
               JOIN truxe.organizations o ON o.id = a.org_id",
        );
        assert_eq!(depths.unwrap().as_deref(), Some("c3:1,c2:2,c1:3,c0:4"));
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM truxe.org_descendants((SELECT id FROM truxe.organizations WHERE slug = 'c1'))",
        );
        assert_eq!(n.unwrap(), Some(3));
    }

    #[pg_test]
    fn a_cycle_is_rejected_with_23514_naming_both_orgs() {
        chain(3);
        let (code, msg) = error_of(
            "UPDATE truxe.organizations SET parent_org_id = (SELECT id FROM truxe.organizations WHERE slug = 'c3')
              WHERE slug = 'c1'",
        )
        .expect("a cycle must be rejected");
        assert_eq!(code, PgSqlErrorCode::ERRCODE_CHECK_VIOLATION);
        let ids = Spi::get_two::<String, String>(
            "SELECT (SELECT id::text FROM truxe.organizations WHERE slug = 'c1'),
                    (SELECT id::text FROM truxe.organizations WHERE slug = 'c3')",
        )
        .unwrap();
        assert!(
            msg.contains(&ids.0.unwrap()) && msg.contains(&ids.1.unwrap()),
            "{msg}"
        );
        // the direct two-org cycle too
        let (code, _) = error_of(
            "UPDATE truxe.organizations SET parent_org_id = (SELECT id FROM truxe.organizations WHERE slug = 'c1')
              WHERE slug = 'c0'",
        )
        .expect("a two-org cycle must be rejected");
        assert_eq!(code, PgSqlErrorCode::ERRCODE_CHECK_VIOLATION);
    }

    #[pg_test]
    fn depth_limit_counts_ancestors_self_and_subtree() {
        Spi::run("SET truxe.max_org_depth = 4").unwrap();
        chain(3); // 4 levels: allowed
        Spi::run(
            "INSERT INTO truxe.organizations (slug, name) VALUES ('x0', 'X0');
             INSERT INTO truxe.organizations (slug, name, parent_org_id)
               SELECT 'x1', 'X1', id FROM truxe.organizations WHERE slug = 'x0';",
        )
        .unwrap();
        // x0 (with child x1) under c2 would make c0 c1 c2 x0 x1 = 5 levels
        let (code, msg) = error_of(
            "UPDATE truxe.organizations SET parent_org_id = (SELECT id FROM truxe.organizations WHERE slug = 'c2')
              WHERE slug = 'x0'",
        )
        .expect("a subtree moved past the depth limit must be rejected");
        assert_eq!(code, PgSqlErrorCode::ERRCODE_CHECK_VIOLATION);
        assert!(
            msg.contains("5 levels") && msg.contains("max_org_depth is 4"),
            "{msg}"
        );
        // under c1 it fits exactly: c0 c1 x0 x1 = 4 levels
        assert!(error_of(
            "UPDATE truxe.organizations SET parent_org_id = (SELECT id FROM truxe.organizations WHERE slug = 'c1')
              WHERE slug = 'x0'"
        )
        .is_none());
    }

    #[pg_test]
    fn inserting_below_the_depth_limit_is_rejected() {
        Spi::run("SET truxe.max_org_depth = 3").unwrap();
        chain(2);
        let (code, _) = error_of(
            "INSERT INTO truxe.organizations (slug, name, parent_org_id)
               SELECT 'c3', 'C3', id FROM truxe.organizations WHERE slug = 'c2'",
        )
        .expect("a fourth level must be rejected");
        assert_eq!(code, PgSqlErrorCode::ERRCODE_CHECK_VIOLATION);
    }
}
