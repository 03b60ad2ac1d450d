//! Organisation hierarchy (SPEC §5): the cycle/depth check, the ancestor/descendant table
//! truxe.org_closure that keeps RLS's org sets to one index scan, and the re-parenting
//! permission check on truxe.organizations (Rust triggers); org_ancestors /
//! org_descendants are SQL (sql/hierarchy.sql).
//!
//! Concurrency. Every change to the tree (an org inserted under a parent, re-parented, or
//! deleted from under one) first updates the single row of truxe.org_tree, so tree changes
//! are serialised. Under READ COMMITTED each later statement of the trigger runs with a
//! fresh snapshot (the plans execute as mutating SPI statements), so a transaction that
//! waited sees the tree its predecessor committed: of two transactions that each add one
//! edge of a cycle, the second fails with 23514 — no deadlock, no double commit. Under
//! REPEATABLE READ and SERIALIZABLE, a transaction whose snapshot misses a tree change
//! committed meanwhile cannot update that row and fails with 40001 (serialization failure),
//! which the client retries; one that gets past it sees every earlier change.
use crate::error::{Sqlstate, TruxeError};
use crate::gucs::MAX_ORG_DEPTH;
use crate::plans::{self, UUID};
use pgrx::datum::TryFromDatumError;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

pgrx::extension_sql_file!(
    "../sql/hierarchy.sql",
    name = "hierarchy",
    requires = ["schema", maintain_org_hierarchy, check_org_reparent]
);

/// Why a hierarchy change is refused.
#[derive(Debug, thiserror::Error)]
pub enum HierarchyError {
    #[error("organization {org} cannot have parent {parent}: {parent} is {org} or one of its descendants")]
    Cycle { org: Uuid, parent: Uuid },
    #[error("organization {org} under parent {parent} would make the hierarchy {levels} levels deep; truxe.max_org_depth is {max}")]
    TooDeep {
        org: Uuid,
        parent: Uuid,
        levels: i64,
        max: i64,
    },
    #[error("re-parenting organization {org} requires owner or admin on it and on the new parent")]
    ReparentDenied { org: Uuid },
    #[error("cannot read the organization row: {0}")]
    Row(#[from] TryFromDatumError),
    #[error("hierarchy maintenance failed: {0}")]
    Spi(#[from] pgrx::spi::Error),
}

impl HierarchyError {
    fn sqlstate(&self) -> Sqlstate {
        match self {
            HierarchyError::Cycle { .. } | HierarchyError::TooDeep { .. } => {
                Sqlstate::CheckViolation
            }
            HierarchyError::ReparentDenied { .. } => Sqlstate::InsufficientPrivilege,
            HierarchyError::Row(_) | HierarchyError::Spi(_) => Sqlstate::InvalidParameter,
        }
    }

    fn raise(self) -> ! {
        TruxeError::new(self.sqlstate(), self.to_string()).raise()
    }
}

type TriggerResult<'a> = Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, HierarchyError>;

/// An org's parent changing: `from` is None for an INSERT or a root, `to` is None for a
/// DELETE or a move to the top.
struct Move {
    org: Uuid,
    from: Option<Uuid>,
    to: Option<Uuid>,
}

/// The parent change this INSERT/UPDATE/DELETE makes, else None.
fn parent_move(trigger: &PgTrigger<'_>) -> Result<Option<Move>, HierarchyError> {
    let parent = |row: Option<PgHeapTuple<'_, AllocatedByPostgres>>| match row {
        Some(row) => row.get_by_name::<Uuid>("parent_org_id"),
        None => Ok(None),
    };
    let (from, to) = (parent(trigger.old())?, parent(trigger.new())?);
    if from == to {
        return Ok(None);
    }
    let Some(row) = trigger.new().or_else(|| trigger.old()) else {
        return Ok(None);
    };
    Ok(row
        .get_by_name::<Uuid>("id")?
        .map(|org| Move { org, from, to }))
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

/// AFTER INSERT OR UPDATE OF parent_org_id OR DELETE: rejects cycles and hierarchies deeper
/// than truxe.max_org_depth (23514), then records the change in truxe.org_closure; 40001
/// under REPEATABLE READ when another tree change committed meanwhile. Runs as the
/// extension owner (RLS hides no org; the closure table is the owner's alone).
#[pg_trigger]
fn maintain_org_hierarchy<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    match parent_move(trigger).and_then(|change| change.map_or(Ok(()), apply)) {
        Ok(()) => Ok(None),
        Err(e) => e.raise(),
    }
}

fn apply(change: Move) -> Result<(), HierarchyError> {
    let Move { org, from, to } = change;
    Spi::connect_mut(|client| {
        plans::run(
            client,
            "UPDATE truxe.org_tree SET version = version + 1",
            &[],
            &[],
        )?;
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

/// `parent` must not be `org` or below it, and the levels above `parent`, `parent`, `org`
/// and `org`'s deepest descendant must fit in truxe.max_org_depth.
fn check(client: &mut SpiClient<'_>, org: Uuid, parent: Uuid) -> Result<(), HierarchyError> {
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
        return Err(HierarchyError::Cycle { org, parent });
    }
    let levels = row.get::<i32>(2)?.map_or(0, i64::from);
    if levels > max {
        return Err(HierarchyError::TooDeep {
            org,
            parent,
            levels,
            max,
        });
    }
    Ok(())
}

/// BEFORE UPDATE OF parent_org_id, as the caller: anyone but a superuser or a member of
/// service_account needs owner/admin on the org and on the new parent (42501).
#[pg_trigger]
fn check_org_reparent<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let check = || -> Result<(), HierarchyError> {
        let Some(Move {
            org,
            to: Some(parent),
            ..
        }) = parent_move(trigger)?
        else {
            return Ok(());
        };
        if trusted_caller() {
            return Ok(());
        }
        let allowed = Spi::get_one_with_args::<bool>(
            "SELECT ARRAY[$1, $2] <@ truxe.admin_org_ids()",
            &[org.into(), parent.into()],
        )?;
        if allowed == Some(true) {
            Ok(())
        } else {
            Err(HierarchyError::ReparentDenied { org })
        }
    };
    match check() {
        Ok(()) => Ok(trigger.new()),
        Err(e) => e.raise(),
    }
}

/// A superuser, or a role with the privileges of service_account: re-parents anything.
fn trusted_caller() -> bool {
    // SAFETY: plain catalog/role lookups for the current user; missing_ok for the role.
    unsafe {
        let me = pg_sys::GetUserId();
        if pg_sys::superuser_arg(me) {
            return true;
        }
        let service = pg_sys::get_role_oid(c"service_account".as_ptr(), true);
        service != pg_sys::InvalidOid && pg_sys::has_privs_of_role(me, service)
    }
}

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
