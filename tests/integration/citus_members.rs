//! Memberships on Citus (docs/scaling.md, "memberships on Citus"): the table distributed by
//! org_id, colocated with the org's other rows, and the coordinator's copy keyed by user
//! (truxe.memberships_by_user) that truxe reads and writes; through the coordinator as the
//! NOSUPERUSER logins of tests/integration/citus.rs.
use crate::citus::{audit_shard, cluster, org_rows_by_shard, orgs_on_both_workers, unique, user};
use crate::harness::sqlstate;
use postgres::Client;

/// The rows of `table` for `orgs`, as text, in key order.
fn rows(su: &mut Client, table: &str, orgs: &[String]) -> Vec<String> {
    su.query(
        &format!(
            "SELECT m::text FROM {table} m WHERE m.org_id::text = ANY ($1)
              ORDER BY m.org_id, m.user_id"
        ),
        &[&orgs],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// How many audit rows of `action` org `org` has.
fn audited(su: &mut Client, org: &str, action: &str) -> i64 {
    su.query_one(
        "SELECT count(*) FROM truxe.audit_logs
          WHERE org_id = $1::text::uuid AND action::text = $2",
        &[&org, &action],
    )
    .unwrap()
    .get(0)
}

/// The membership functions through the coordinator: each org's rows live in the shard of
/// its id, on the worker of its audit rows (colocated), on both workers; the distributed
/// table holds exactly the rows of the coordinator's copy, after invitations, acceptances,
/// role changes, removals and service_account's direct writes to the copy; each change is
/// audited once, in its org's shard; an org admin reads the org's members through the claim
/// and no other tenant's, and a user their own pending invitation, with or without an
/// acting org (the single-node policy's rule); a deleted org takes its members along.
#[test]
fn memberships_live_in_their_orgs_shard_and_the_copy_matches_them() {
    let Some(c) = cluster() else { return };
    let tenants = orgs_on_both_workers(c, 4);
    let orgs: Vec<String> = tenants.iter().map(|(_, o)| o.clone()).collect();
    let ((ada, acme), (bob, beta)) = (&tenants[0], &tenants[1]);
    let (carol, _) = user(c);
    let (dan, _) = user(c);
    // carol: invited to acme as a member, accepts, becomes an admin; invited to beta and
    // still pending. dan: written into acme by service_account, then removed by ada
    c.acting_as(ada)
        .execute(
            "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid)",
            &[acme, &carol],
        )
        .unwrap();
    c.acting_as(&carol)
        .execute("SELECT truxe.accept_invitation($1::text::uuid)", &[acme])
        .unwrap();
    c.acting_as(ada)
        .execute(
            "SELECT truxe.change_role($1::text::uuid, $2::text::uuid, 'admin')",
            &[acme, &carol],
        )
        .unwrap();
    c.acting_as(bob)
        .execute(
            "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid)",
            &[beta, &carol],
        )
        .unwrap();
    let mut svc = c.service();
    svc.execute(
        "INSERT INTO truxe.memberships_by_user (org_id, user_id, role, joined_at)
         VALUES ($1::text::uuid, $2::text::uuid, 'viewer', now())",
        &[acme, &dan],
    )
    .unwrap();
    svc.execute(
        "UPDATE truxe.memberships_by_user SET permissions = '[\"reports:read\"]'
          WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid",
        &[acme, &dan],
    )
    .unwrap();
    c.acting_as(ada)
        .execute(
            "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
            &[acme, &dan],
        )
        .unwrap();

    let mut su = c.superuser();
    let copy = rows(&mut su, "truxe.memberships_by_user", &orgs);
    assert_eq!(copy.len(), 4 + 2, "four owners, carol in acme and in beta");
    assert_eq!(rows(&mut su, "truxe.memberships", &orgs), copy);
    let mut ports = std::collections::BTreeSet::new();
    for (shard, org) in org_rows_by_shard(&mut su, "truxe.memberships", &orgs)
        .into_iter()
        .zip(&orgs)
    {
        assert_eq!(
            shard.1,
            audit_shard(&mut su, org).1,
            "org {org}'s members beside its audit rows"
        );
        ports.insert(shard.1);
    }
    assert_eq!(ports.len(), 2, "the orgs' members on both workers");
    for (action, n) in [
        ("membership.invited", 1),
        ("membership.joined", 3),
        ("membership.role_changed", 1),
        ("membership.removed", 1),
    ] {
        assert_eq!(audited(&mut su, acme, action), n, "acme: {action}");
    }
    assert_eq!(audited(&mut su, beta, "membership.invited"), 1);

    // reads through the claim
    let members = |who: &str, acting_org: Option<&str>| -> Vec<(String, String)> {
        let mut a = c.authenticated();
        let mut t = a.transaction().unwrap();
        t.execute(
            "SELECT truxe.set_context($1::text::uuid, $2::text::uuid, true)",
            &[&who, &acting_org],
        )
        .unwrap();
        let seen = t
            .query(
                "SELECT org_id::text, user_id::text FROM truxe.memberships
                  WHERE org_id::text = ANY ($1) ORDER BY 1, 2",
                &[&orgs],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        t.commit().unwrap();
        seen
    };
    let pair = |o: &str, u: &str| (o.to_string(), u.to_string());
    let mut acme_members = vec![pair(acme, ada), pair(acme, &carol)];
    acme_members.sort();
    assert_eq!(
        members(ada, None),
        acme_members,
        "ada reads acme's members only"
    );
    let mut carol_sees = acme_members.clone();
    carol_sees.push(pair(beta, &carol));
    carol_sees.sort();
    assert_eq!(
        members(&carol, None),
        carol_sees,
        "acme's members and her own invitation"
    );
    assert_eq!(
        members(&carol, Some(acme)),
        carol_sees,
        "acting in acme: its members and her pending invitation"
    );
    let mut beta_members = vec![pair(beta, bob), pair(beta, &carol)];
    beta_members.sort();
    assert_eq!(
        members(bob, None),
        beta_members,
        "bob reads beta's members only"
    );
    // without a claim (autocommit) nothing
    let none: i64 = c
        .acting_as(ada)
        .query_one(
            "SELECT count(*) FROM truxe.memberships WHERE org_id = $1::text::uuid",
            &[acme],
        )
        .unwrap()
        .get(0);
    assert_eq!(none, 0);

    // truxe writes the shard's row as the owner: reading the members after a membership
    // function in one transaction is Citus' 25001; in a transaction of its own it works
    let (fay, _) = user(c);
    let mut a = c.authenticated();
    let mut t = a.transaction().unwrap();
    t.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, true)",
        &[ada],
    )
    .unwrap();
    t.execute(
        "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid)",
        &[acme, &fay],
    )
    .unwrap();
    assert_eq!(
        sqlstate(t.query("SELECT count(*) FROM truxe.memberships", &[])),
        "25001"
    );
    t.rollback().unwrap();
    assert_eq!(
        members(ada, None),
        acme_members,
        "the invitation rolled back"
    );

    // a deleted org takes its members (copy and shard) along, audited
    svc.execute(
        "DELETE FROM truxe.organizations WHERE id = $1::text::uuid",
        &[beta],
    )
    .unwrap();
    let gone = [beta.clone()];
    assert!(rows(&mut su, "truxe.memberships", &gone).is_empty());
    assert!(rows(&mut su, "truxe.memberships_by_user", &gone).is_empty());
    assert_eq!(audited(&mut su, beta, "membership.removed"), 2);
}

/// The distributed table is written through the copy only: service_account has no write
/// on it (42501), and a superuser's direct write is refused by the guard on the shards
/// (55000). A write of the copy is one with the shard's: a top-level statement that fails
/// after its row was copied, and a rolled-back transaction, leave neither.
#[test]
fn memberships_are_written_through_the_copy_only_and_with_it() {
    let Some(c) = cluster() else { return };
    let tenants = orgs_on_both_workers(c, 2);
    let (_, acme) = &tenants[0];
    let orgs = vec![acme.clone()];
    let (eve, _) = user(c);
    let mut svc = c.service();
    let mut su = c.superuser();
    for sql in [
        "INSERT INTO truxe.memberships (org_id, user_id, role) VALUES ($1::text::uuid, $2::text::uuid, 'member')",
        "UPDATE truxe.memberships SET role = 'admin' WHERE org_id = $1::text::uuid AND user_id <> $2::text::uuid",
        "DELETE FROM truxe.memberships WHERE org_id = $1::text::uuid AND user_id <> $2::text::uuid",
    ] {
        assert_eq!(sqlstate(svc.execute(sql, &[acme, &eve])), "42501", "service_account: {sql}");
        assert_eq!(sqlstate(su.execute(sql, &[acme, &eve])), "55000", "superuser: {sql}");
    }
    let before = rows(&mut su, "truxe.memberships", &orgs);
    assert_eq!(before.len(), 1, "the owner's row only");

    // a top-level INSERT into the copy whose own later trigger fails, after the copy
    // trigger has written the shard
    let refuse = unique("refuse_");
    su.batch_execute(&format!(
        "CREATE FUNCTION public.{refuse}() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
           IF NEW.user_id = '{eve}' THEN RAISE EXCEPTION 'refused after the copy'; END IF;
           RETURN NULL;
         END $f$;
         CREATE TRIGGER zz_{refuse} AFTER INSERT ON truxe.memberships_by_user
           FOR EACH ROW EXECUTE FUNCTION public.{refuse}();"
    ))
    .unwrap();
    let failed = svc.execute(
        "INSERT INTO truxe.memberships_by_user (org_id, user_id, role, joined_at)
         VALUES ($1::text::uuid, $2::text::uuid, 'member', now())",
        &[acme, &eve],
    );
    su.batch_execute(&format!(
        "DROP TRIGGER zz_{refuse} ON truxe.memberships_by_user; DROP FUNCTION public.{refuse}();"
    ))
    .unwrap();
    assert_eq!(sqlstate(failed), "P0001");
    assert_eq!(rows(&mut su, "truxe.memberships", &orgs), before);
    assert_eq!(rows(&mut su, "truxe.memberships_by_user", &orgs), before);

    let mut t = svc.transaction().unwrap();
    t.execute(
        "INSERT INTO truxe.memberships_by_user (org_id, user_id, role, joined_at)
         VALUES ($1::text::uuid, $2::text::uuid, 'member', now())",
        &[acme, &eve],
    )
    .unwrap();
    t.rollback().unwrap();
    assert_eq!(rows(&mut su, "truxe.memberships", &orgs), before);
    assert_eq!(rows(&mut su, "truxe.memberships_by_user", &orgs), before);
}
