//! Organisation hierarchy (SPEC §5): the cycle/depth check and the re-parenting permission
//! check on truxe.organizations (Rust triggers), and org_ancestors / org_descendants
//! (sql/hierarchy.sql).
//!
//! Concurrency. Every parent change first takes one transaction-level advisory lock, so
//! parent changes are serialised. Under READ COMMITTED each walk query runs with a fresh
//! snapshot (the plan is executed as a mutating SPI statement), so a transaction that waited
//! for the lock sees the edge its predecessor committed: of two transactions that each add
//! one edge of a cycle, the second fails with 23514 — no deadlock, no double commit. Under
//! REPEATABLE READ and SERIALIZABLE the snapshot is fixed at the transaction's first
//! statement and could miss that edge, so there the walk also locks each ancestor
//! `FOR SHARE`: an ancestor changed by a transaction the snapshot cannot see makes the walk
//! fail with 40001 (serialization failure), which the client retries.
use crate::error::{Sqlstate, TruxeError};
use crate::gucs::MAX_ORG_DEPTH;
use crate::plans;
use pgrx::datum::TryFromDatumError;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

pgrx::extension_sql_file!(
    "../sql/hierarchy.sql",
    name = "hierarchy",
    requires = ["schema", check_org_hierarchy, check_org_reparent]
);

/// The advisory lock key that serialises parent changes (any constant; this one spells
/// "truxe org" in ASCII).
const PARENT_CHANGE_LOCK: i64 = 0x7472_7578_656f_7267;

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
    #[error("hierarchy walk failed: {0}")]
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

/// The row's id and new parent when this INSERT/UPDATE changes the parent, else None.
fn parent_change<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<(Uuid, Uuid)>, HierarchyError> {
    let Some(new) = trigger.new() else {
        return Ok(None);
    };
    let parent: Option<Uuid> = new.get_by_name("parent_org_id")?;
    if let Some(old) = trigger.old() {
        if old.get_by_name::<Uuid>("parent_org_id")? == parent {
            return Ok(None);
        }
    }
    let id: Option<Uuid> = new.get_by_name("id")?;
    Ok(id.zip(parent))
}

/// BEFORE INSERT OR UPDATE OF parent_org_id: rejects cycles and hierarchies deeper than
/// truxe.max_org_depth (23514). Runs as the extension owner so that RLS hides no ancestor.
#[pg_trigger]
fn check_org_hierarchy<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    match parent_change(trigger).and_then(|change| match change {
        Some((org, parent)) => check_walk(org, parent, trigger.old().is_some()),
        None => Ok(()),
    }) {
        Ok(()) => Ok(trigger.new()),
        Err(e) => e.raise(),
    }
}

/// BEFORE UPDATE OF parent_org_id, as the caller: anyone but a superuser or a member of
/// service_account needs owner/admin on the org and on the new parent (42501).
#[pg_trigger]
fn check_org_reparent<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let check = || -> Result<(), HierarchyError> {
        let Some((org, parent)) = parent_change(trigger)? else {
            return Ok(());
        };
        if trusted_caller() {
            return Ok(());
        }
        let allowed = Spi::get_one_with_args::<bool>(
            "SELECT $1 = ANY (truxe.admin_org_ids()) AND $2 = ANY (truxe.admin_org_ids())",
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

fn snapshot_isolation() -> bool {
    // SAFETY: reading a backend-local global; REPEATABLE READ = 2, SERIALIZABLE = 3.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// The parent of `org`: None when `org` has no row, Some(None) at a root.
fn parent_of(
    client: &mut SpiClient<'_>,
    org: Uuid,
    locking: bool,
) -> Result<Option<Option<Uuid>>, HierarchyError> {
    let sql = if locking {
        "SELECT parent_org_id FROM truxe.organizations WHERE id = $1 FOR SHARE"
    } else {
        "SELECT parent_org_id FROM truxe.organizations WHERE id = $1"
    };
    let rows = plans::run(client, sql, &[plans::UUID], &[org.into()])?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(rows.first().get_one::<Uuid>()?))
}

/// Walks from `parent` to the root: `org` on the way is a cycle; the chain above plus the
/// org and its own subtree must fit in truxe.max_org_depth levels.
fn check_walk(org: Uuid, parent: Uuid, has_subtree: bool) -> Result<(), HierarchyError> {
    let max = i64::from(MAX_ORG_DEPTH.get());
    Spi::connect_mut(|client| {
        client.update(
            "SELECT pg_catalog.pg_advisory_xact_lock($1)",
            None,
            &[PARENT_CHANGE_LOCK.into()],
        )?;
        let locking = snapshot_isolation();
        let subtree: i64 = if has_subtree {
            client
                .update(
                    "WITH RECURSIVE down(id, h) AS (
                       SELECT id, 1 FROM truxe.organizations WHERE parent_org_id = $1
                       UNION ALL
                       SELECT o.id, d.h + 1 FROM truxe.organizations o JOIN down d ON o.parent_org_id = d.id
                        WHERE d.h <= $2)
                     SELECT coalesce(max(h), 0)::bigint FROM down",
                    None,
                    &[org.into(), max.into()],
                )?
                .first()
                .get_one::<i64>()?
                .unwrap_or(0)
        } else {
            0
        };
        // levels = ancestors of org after the change + org itself + its deepest descendant
        let mut levels = 1 + subtree;
        let mut current = Some(parent);
        while let Some(step) = current {
            if step == org {
                return Err(HierarchyError::Cycle { org, parent });
            }
            levels += 1;
            if levels > max {
                return Err(HierarchyError::TooDeep {
                    org,
                    parent,
                    levels,
                    max,
                });
            }
            current = parent_of(client, step, locking)?.flatten();
        }
        Ok(())
    })
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
