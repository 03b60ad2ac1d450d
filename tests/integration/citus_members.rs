//! Organizations and memberships on Citus (docs/scaling.md, "organizations and memberships
//! on Citus"): the tables distributed by org, colocated with the org's other rows, and the
//! coordinator's copies (truxe.organizations_by_slug, truxe.memberships_by_user) that truxe
//! reads and writes; through the coordinator as the NOSUPERUSER logins of
//! tests/integration/citus.rs.
use crate::citus::{
    audit_shard, cluster, failing_last, org_rows_by_shard, orgs_on_both_workers, unique, user,
    Cluster,
};
use crate::harness::sqlstate;
use postgres::Client;

/// The rows of `table` for `orgs` (its org column: `org_id`, or `id` for organizations), as
/// text, in key order.
fn rows(su: &mut Client, table: &str, orgs: &[String]) -> Vec<String> {
    let (org, order) = match table.contains("organizations") {
        true => ("id", "m.id"),
        false => ("org_id", "m.org_id, m.user_id"),
    };
    su.query(
        &format!("SELECT m::text FROM {table} m WHERE m.{org}::text = ANY ($1) ORDER BY {order}"),
        &[&orgs],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The two text columns of `sql` (over `$1`, the org ids) as `who` reads them, acting in
/// `acting_org`: in a transaction that established the identity, whose claim the workers'
/// policies read.
fn seen_as(
    c: &Cluster,
    who: &str,
    acting_org: Option<&str>,
    sql: &str,
    orgs: &[String],
) -> Vec<(String, String)> {
    let mut a = c.authenticated();
    let mut t = a.transaction().unwrap();
    t.execute(
        "SELECT truxe.set_context($1::text::uuid, $2::text::uuid, true)",
        &[&who, &acting_org],
    )
    .unwrap();
    let seen = t
        .query(sql, &[&orgs])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    t.commit().unwrap();
    seen
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
    let org_copy = rows(&mut su, "truxe.organizations_by_slug", &orgs);
    assert_eq!(org_copy.len(), 4);
    assert_eq!(rows(&mut su, "truxe.organizations", &orgs), org_copy);
    for org in &orgs {
        // the org's row in the shard of its id, on the worker of its audit rows
        let (shard, port): (i64, i32) = {
            let r = su
                .query_one(
                    "SELECT p.shardid, n.nodeport FROM pg_dist_placement p
                       JOIN pg_dist_node n USING (groupid)
                      WHERE p.shardid = get_shard_id_for_distribution_column('truxe.organizations',
                                                                              $1::text::uuid)",
                    &[org],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!(
            port,
            audit_shard(&mut su, org).1,
            "org {org}'s row beside its audit rows"
        );
        let here: String = su
            .query_one(
                &format!(
                    "SELECT result FROM run_command_on_shards('truxe.organizations',
                       $$SELECT count(*) FROM %s WHERE id = '{org}'$$) WHERE shardid = $1"
                ),
                &[&shard],
            )
            .unwrap()
            .get(0);
        assert_eq!(here, "1", "org {org}'s row in its shard");
    }
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
        seen_as(
            c,
            who,
            acting_org,
            "SELECT org_id::text, user_id::text FROM truxe.memberships
              WHERE org_id::text = ANY ($1) ORDER BY 1, 2",
            &orgs,
        )
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
    // the org rows through the claim: the orgs one may act in, and those one is invited to
    let orgs_seen = |who: &str| -> Vec<String> {
        seen_as(
            c,
            who,
            None,
            "SELECT id::text, '' FROM truxe.organizations WHERE id::text = ANY ($1) ORDER BY 1",
            &orgs,
        )
        .into_iter()
        .map(|(id, _)| id)
        .collect()
    };
    assert_eq!(orgs_seen(ada), vec![acme.clone()]);
    let mut carols = vec![acme.clone(), beta.clone()];
    carols.sort();
    assert_eq!(
        orgs_seen(&carol),
        carols,
        "her org, and the one she is invited to"
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
        "DELETE FROM truxe.organizations_by_slug WHERE id = $1::text::uuid",
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
    for sql in [
        "UPDATE truxe.organizations SET name = 'Taken' WHERE id = $1::text::uuid AND id <> $2::text::uuid",
        "DELETE FROM truxe.organizations WHERE id = $1::text::uuid AND id <> $2::text::uuid",
    ] {
        assert_eq!(sqlstate(svc.execute(sql, &[acme, &eve])), "42501", "service_account: {sql}");
        assert_eq!(sqlstate(su.execute(sql, &[acme, &eve])), "55000", "superuser: {sql}");
    }
    let before = rows(&mut su, "truxe.memberships", &orgs);
    assert_eq!(before.len(), 1, "the owner's row only");

    // a top-level INSERT into the copy whose own later trigger fails, after the copy
    // trigger has written the shard
    let failed = failing_last(
        &mut su,
        "truxe.memberships_by_user",
        "INSERT",
        &format!("NEW.user_id = '{eve}'"),
        || {
            svc.execute(
                "INSERT INTO truxe.memberships_by_user (org_id, user_id, role, joined_at)
                 VALUES ($1::text::uuid, $2::text::uuid, 'member', now())",
                &[acme, &eve],
            )
        },
    );
    assert_eq!(sqlstate(failed), "P0001");
    assert_eq!(rows(&mut su, "truxe.memberships", &orgs), before);
    assert_eq!(rows(&mut su, "truxe.memberships_by_user", &orgs), before);
    // nor the audit row its trigger wrote in the org's shard
    let audited = |su: &mut Client| -> i64 {
        su.query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE org_id = $1::text::uuid AND target_id = $2",
            &[acme, &eve],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(audited(&mut su), 0, "no audit row of the failed statement");

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
    assert_eq!(audited(&mut su), 0);
}

/// Slugs stay unique across the cluster (the copy's key: 23505, as on a single node), and an
/// org is renamed and moved by an `UPDATE` of the copy as authenticated, with the
/// single-node rules and effects: the distributed row follows, the hierarchy's closure
/// moves, the change is audited in the org's shard; an `UPDATE` of the distributed table
/// itself is not granted (42501).
#[test]
fn slugs_stay_unique_and_orgs_move_through_the_copy() {
    let Some(c) = cluster() else { return };
    let tenants = orgs_on_both_workers(c, 2);
    let ((ada, acme), (bob, beta)) = (&tenants[0], &tenants[1]);
    let mut su = c.superuser();
    let slug_of = |su: &mut Client, org: &str| -> String {
        su.query_one(
            "SELECT slug::text FROM truxe.organizations WHERE id = $1::text::uuid",
            &[&org],
        )
        .unwrap()
        .get(0)
    };
    let taken = slug_of(&mut su, acme);
    assert_eq!(
        sqlstate(c.acting_as(bob).query_one(
            "SELECT truxe.create_organization($1::text::public.citext, 'Again')",
            &[&taken],
        )),
        "23505",
        "acme's slug, taken on the other worker too"
    );

    // ada: a child of acme, and a second org to move it under
    let (child, gamma): (String, String) = {
        let mut a = c.acting_as(ada);
        let child = a
            .query_one(
                "SELECT truxe.create_organization($1::text::public.citext, 'Child', $2::text::uuid)::text",
                &[&unique("child-"), acme],
            )
            .unwrap()
            .get(0);
        let gamma = a
            .query_one(
                "SELECT truxe.create_organization($1::text::public.citext, 'Gamma')::text",
                &[&unique("gamma-")],
            )
            .unwrap()
            .get(0);
        (child, gamma)
    };
    let mut a = c.acting_as(ada);
    assert_eq!(
        sqlstate(a.execute(
            "UPDATE truxe.organizations SET name = 'Renamed' WHERE id = $1::text::uuid",
            &[&child],
        )),
        "42501"
    );
    let moved = a
        .execute(
            "UPDATE truxe.organizations_by_slug SET parent_org_id = $2::text::uuid, name = 'Moved'
              WHERE id = $1::text::uuid",
            &[&child, &gamma],
        )
        .unwrap();
    assert_eq!(moved, 1);
    // bob may not graft his org under ada's (the single-node rule, 42501)
    assert_eq!(
        sqlstate(c.acting_as(bob).execute(
            "UPDATE truxe.organizations_by_slug SET parent_org_id = $2::text::uuid
              WHERE id = $1::text::uuid",
            &[beta, &gamma],
        )),
        "42501"
    );
    let (parent, name): (String, String) = {
        let r = su
            .query_one(
                "SELECT parent_org_id::text, name FROM truxe.organizations WHERE id = $1::text::uuid",
                &[&child],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((parent.as_str(), name.as_str()), (gamma.as_str(), "Moved"));
    let ancestors: Vec<String> = su
        .query(
            "SELECT org_id::text FROM truxe.org_ancestors($1::text::uuid)",
            &[&child],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ancestors, vec![gamma.clone()]);
    let audited: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE org_id = $1::text::uuid AND action::text = 'org.parent_changed'",
            &[&child],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    let orgs = vec![acme.clone(), beta.clone(), child.clone(), gamma.clone()];
    assert_eq!(
        rows(&mut su, "truxe.organizations", &orgs),
        rows(&mut su, "truxe.organizations_by_slug", &orgs)
    );
}
