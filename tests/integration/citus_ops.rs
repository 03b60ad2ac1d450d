//! Operating a distributed truxe (docs/scaling.md, "Adding a worker" and "Updating truxe on
//! a cluster"): what a team does to its Citus deployment besides running it, on the
//! cluster of tests/integration/citus.rs, each test in a database of its own, through the
//! coordinator as NOSUPERUSER LOGIN roles.
use crate::citus::{
    audit_shard, cluster, in_context, on_every_copy, org_rows_by_shard, own_citus_db,
    own_cluster_db, session_shard, unique, Cluster, Node,
};
use crate::upgrade::FIRST_RELEASE;
use postgres::Client;
use std::collections::BTreeSet;

/// Login roles of the database `db`, created through its coordinator as an application's
/// would be (Citus propagates them, and their membership of truxe's roles, to the workers,
/// also to a worker added later): (authenticated's login, service_account's login).
fn own_logins(c: &Cluster, db: &str) -> (String, String) {
    let (auth, svc) = (format!("{db}_auth"), format!("{db}_svc"));
    c.coordinator
        .client(db, "postgres")
        .batch_execute(&format!(
            "CREATE ROLE {auth} LOGIN NOSUPERUSER; CREATE ROLE {svc} LOGIN NOSUPERUSER;
             GRANT authenticated TO {auth}; GRANT service_account TO {svc};"
        ))
        .expect("create the database's logins");
    (auth, svc)
}

/// A worker added to `db` as docs/scaling.md ("Adding a worker") says: a new node with
/// Citus preloaded and the cluster's key file (as every node: [`Node::start`]), the
/// database created there with `CREATE EXTENSION citus`, then `citus_add_node` on the
/// coordinator, which installs truxe and the rest there.
fn add_worker(c: &Cluster, db: &str, tag: &str) -> Node {
    let w = Node::start(tag);
    w.client("postgres", "postgres")
        .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE template0"))
        .unwrap();
    w.client(db, "postgres")
        .batch_execute("CREATE EXTENSION citus")
        .unwrap();
    c.coordinator
        .client(db, "postgres")
        .execute(
            "SELECT citus_add_node('127.0.0.1', $1)",
            &[&i32::from(w.port)],
        )
        .expect("citus_add_node");
    w
}

/// A client of `db` on the coordinator as `login`, acting as `user` for its whole session.
fn acting(c: &Cluster, db: &str, login: &str, user: &str) -> Client {
    let mut a = c.coordinator.client(db, login);
    a.execute(
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&user],
    )
    .unwrap();
    a
}

/// An active user with a fresh e-mail, inserted by `svc` (service_account): its id.
fn new_user(svc: &mut Client) -> String {
    svc.query_one(
        "INSERT INTO truxe.users (email, status) VALUES ($1, 'active') RETURNING id::text",
        &[&format!("{}@ops.example", unique("u"))],
    )
    .unwrap()
    .get(0)
}

/// What one tenant wrote before the move: its admin, its org, an invitation's token, an API
/// key, and a session (jti, refresh jti).
struct Tenant {
    admin: String,
    org: String,
    invitation: String,
    key: String,
    session: (String, String),
}

/// A worker added after `distribute()` (docs/scaling.md, "Adding a worker"), and shards
/// moved onto it by Citus' rebalancer. `citus_add_node` installs truxe there at the
/// coordinator's version, with truxe's roles, the database's logins and their membership,
/// and the functions `distribute()` created (the claim's); the rebalance copies both
/// reference tables there first, then moves a third of the shard groups. The online mover
/// (`auto`, logical replication) moves a shard of `sessions` and of `rate_limits`, which
/// have no primary key on Citus: refused (0A000) without the replica identity that
/// `distribute()` gives them; their rows stay usable. Then, through the coordinator as the
/// logins, for a tenant whose shard group moved to the new node and one whose did not: its
/// audit rows, usage, invitations and API keys are read under RLS through the claim (the
/// new node checks it with the same key file); a session created before the move (in a
/// shard that moved) validates, is read as the user's own, and refreshes after it; the
/// key authenticates; the invitation is accepted; has_permission answers from the
/// reference table; new writes (the acceptance's audit rows, usage) land in the org's
/// shard on its node; and verify_audit_log verifies the whole log, sealed before and after
/// the move.
#[test]
fn a_worker_added_after_distribute_takes_shards_and_the_contract_holds() {
    let Some(c) = cluster() else { return };
    let db = own_cluster_db(c, "grown", "");
    let (auth, svc_login) = own_logins(c, &db);
    let mut su = c.coordinator.client(&db, "postgres");
    let mut svc = c.coordinator.client(&db, &svc_login);
    // a first tenant and a seal before the node exists
    let early = new_user(&mut svc);
    acting(c, &db, &auth, &early)
        .query_one(
            "SELECT truxe.create_organization($1::text::public.citext, 'Early')",
            &[&unique("early-")],
        )
        .unwrap();
    let sealed: i64 = svc
        .query_one("SELECT truxe.seal_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(sealed > 0);

    let w3 = add_worker(c, &db, "w3");
    let w3_port = i32::from(w3.port);
    // citus_add_node does not copy the reference tables there yet: the rebalance does,
    // before it moves a shard (below)
    assert_eq!(
        on_every_copy(&mut su, "truxe.role_permissions", "SELECT count(*) FROM %s").len(),
        3
    );
    let mut w = w3.client(&db, "postgres");
    let r = w
        .query_one(
            "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'truxe'),
                    (SELECT count(*) FROM pg_auth_members a
                      WHERE (a.roleid, a.member) IN (('authenticated'::regrole, $1::text::regrole),
                                                     ('service_account'::regrole, $2::text::regrole))),
                    (SELECT count(*) FROM pg_proc WHERE pronamespace = 'truxe'::regnamespace
                        AND proname IN ('claim_user', 'claim_administers', 'claim_may_act_in'))",
            &[&auth, &svc_login],
        )
        .unwrap();
    let (version, memberships, claim_fns): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(
        version, "0.2.0",
        "truxe installed on the new node by citus_add_node"
    );
    assert_eq!(memberships, 2, "the logins and their roles on the new node");
    assert_eq!(claim_fns, 3, "the claim functions on the new node");

    // the shards the rebalancer will move onto the new node (every table of a shard group
    // is listed)
    let moving: BTreeSet<i64> = su
        .query(
            "SELECT shardid FROM get_rebalance_table_shards_plan(rebalance_strategy => 'by_shard_count')
              WHERE targetport = $1",
            &[&w3_port],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !moving.is_empty(),
        "the rebalancer plans moves onto the new node"
    );

    // tenants until one's shard group moves and one's stays
    let mut tenants: [Option<Tenant>; 2] = [None, None];
    for _ in 0..200 {
        if tenants.iter().all(Option::is_some) {
            break;
        }
        let admin = new_user(&mut svc);
        let org: String = acting(c, &db, &auth, &admin)
            .query_one(
                "SELECT truxe.create_organization($1::text::public.citext, 'Org')::text",
                &[&unique("grown-")],
            )
            .unwrap()
            .get(0);
        let (shard, _) = audit_shard(&mut su, &org);
        let slot = usize::from(!moving.contains(&shard));
        if tenants[slot].is_some() {
            continue;
        }
        svc.execute(
            "SELECT truxe.record_usage($1::text::uuid, 'api_requests', 5)",
            &[&org],
        )
        .unwrap();
        let invitation: String = acting(c, &db, &auth, &admin)
            .query_one(
                "SELECT token FROM truxe.invite_by_email($1::text::uuid, $2, 'member')",
                &[&org, &format!("{}@ops.example", unique("inv"))],
            )
            .unwrap()
            .get(0);
        let mut a = c.coordinator.client(&db, &auth);
        let mut t = in_context(&mut a, &admin);
        let key: String = t
            .query_one(
                "SELECT key FROM truxe.create_api_key($1::text::uuid, 'ci', ARRAY['users:read'])",
                &[&org],
            )
            .unwrap()
            .get(0);
        t.commit().unwrap();
        // a session in a shard that moves (sessions are distributed by their token's hash)
        let session = loop {
            let r = svc
                .query_one(
                    "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid, $2::text::uuid)",
                    &[&admin, &org],
                )
                .unwrap();
            let (jti, refresh): (String, String) = (r.get(0), r.get(1));
            if moving.contains(&session_shard(&mut su, &jti).0) {
                break (jti, refresh);
            }
        };
        tenants[slot] = Some(Tenant {
            admin,
            org,
            invitation,
            key,
            session,
        });
    }
    let [Some(moved), Some(stayed)] = tenants else {
        panic!("no tenant in a moving or in a staying shard group")
    };
    // a rate-limit window being counted, and one more session, for the online moves below
    let hit = |svc: &mut Client| -> i32 {
        svc.query_one(
            "SELECT remaining FROM truxe.rate_limit_hit('grown:login', 10, '1 hour')",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(hit(&mut svc), 9);
    let spare: String = svc
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
            &[&moved.admin],
        )
        .unwrap()
        .get(0);

    // the operator's step: move shards onto the new node. The test moves them in its own
    // session (rebalance_table_shards; citus_rebalance_start runs the same moves as a
    // background job, slower to start), with block_writes (each shard group's writes wait
    // while it is copied; the online mover took over a minute for the ~50 moves here), and
    // with the strategy that counts shards (the default weighs them by size, which the
    // writes above change: the plan read before them would not be the one run)
    su.batch_execute(
        "SELECT rebalance_table_shards(rebalance_strategy => 'by_shard_count',
                                       shard_transfer_mode => 'block_writes')",
    )
    .expect("rebalance_table_shards");

    // the online mover (logical replication, the default `auto` mode) on the two tables
    // without a primary key: distribute() gave them a replica identity, without which
    // Citus refuses to move them online (0A000). A shard of each, with live rows, moved to
    // another worker; the rows stay usable
    let workers: Vec<i32> = c
        .workers
        .iter()
        .map(|w| i32::from(w.port))
        .chain([w3_port])
        .collect();
    for (table, column, value) in [
        (
            "truxe.sessions",
            "jti_hash",
            format!("sha256(uuid_send('{spare}'::uuid))"),
        ),
        (
            "truxe.rate_limits",
            "key_hash",
            "(SELECT key_hash FROM truxe.rate_limits LIMIT 1)".to_string(),
        ),
    ] {
        let r = su
            .query_one(
                &format!(
                    "SELECT p.shardid, n.nodeport FROM pg_dist_placement p
                       JOIN pg_dist_node n USING (groupid)
                      WHERE p.shardid = get_shard_id_for_distribution_column('{table}', {value})"
                ),
                &[],
            )
            .unwrap();
        let (shard, from): (i64, i32) = (r.get(0), r.get(1));
        let to = *workers.iter().find(|p| **p != from).unwrap();
        su.execute(
            "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3)",
            &[&shard, &from, &to],
        )
        .unwrap_or_else(|e| panic!("online move of {table}'s shard ({column}): {e}"));
    }
    assert_eq!(
        hit(&mut svc),
        8,
        "the window's count kept by the online move"
    );
    let spare_user: Option<String> = svc
        .query_opt(
            "SELECT user_id::text FROM truxe.validate_session($1::text::uuid)",
            &[&spare],
        )
        .unwrap()
        .map(|r| r.get(0));
    assert_eq!(spare_user.as_ref(), Some(&moved.admin));

    let on_w3: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
              WHERE n.nodeport = $1",
            &[&w3_port],
        )
        .unwrap()
        .get(0);
    assert!(on_w3 > 0, "shards on the new node");
    let (moved_shard, port) = audit_shard(&mut su, &moved.org);
    assert_eq!(
        port, w3_port,
        "the moved tenant's shard group is on the new node"
    );
    assert_ne!(audit_shard(&mut su, &stayed.org).1, w3_port);
    assert_eq!(session_shard(&mut su, &moved.session.0).1, w3_port);
    // both reference tables have their copy there, the same rows as the coordinator's
    for table in ["truxe.role_permissions", "truxe.audit_seals"] {
        let copies = on_every_copy(&mut su, table, "SELECT count(*) FROM %s");
        assert_eq!(copies.len(), 4, "{table}: a copy on every node: {copies:?}");
        assert!(copies.iter().all(|(_, n)| *n == copies[0].1), "{copies:?}");
    }

    for t in [&moved, &stayed] {
        // the tenant's rows, read by its admin under RLS through the claim
        let mut a = c.coordinator.client(&db, &auth);
        let mut tx = in_context(&mut a, &t.admin);
        let r = tx
            .query_one(
                "SELECT (SELECT count(*) FROM truxe.audit_logs WHERE org_id = $1::text::uuid),
                        (SELECT sum(metric_value)::bigint FROM truxe.usage_metrics WHERE org_id = $1::text::uuid),
                        (SELECT count(*) FROM truxe.invitations WHERE org_id = $1::text::uuid),
                        (SELECT count(*) FROM truxe.api_keys WHERE org_id = $1::text::uuid),
                        (SELECT count(*) FROM truxe.audit_logs WHERE org_id <> $1::text::uuid)",
                &[&t.org],
            )
            .unwrap();
        let counts: (i64, Option<i64>, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        assert!(counts.0 >= 3, "the org's audit rows: {counts:?}");
        assert_eq!(
            (counts.1, counts.2, counts.3, counts.4),
            (Some(5), 1, 1, 0),
            "usage, invitations, keys of the org, no other org's audit rows"
        );
        tx.commit().unwrap();

        // the session made before the move validates, is the user's own, and refreshes
        let (jti, refresh) = &t.session;
        let who: Option<String> = svc
            .query_opt(
                "SELECT user_id::text FROM truxe.validate_session($1::text::uuid)",
                &[jti],
            )
            .unwrap()
            .map(|r| r.get(0));
        assert_eq!(who.as_ref(), Some(&t.admin));
        let mut tx = a.transaction().unwrap();
        tx.query_one("SELECT user_id FROM truxe.authenticate($1)", &[jti])
            .unwrap();
        let own: i64 = tx
            .query_one("SELECT count(*) FROM truxe.sessions", &[])
            .unwrap()
            .get(0);
        tx.commit().unwrap();
        let all: i64 = su
            .query_one(
                "SELECT count(*) FROM truxe.sessions WHERE user_id = $1::text::uuid",
                &[&t.admin],
            )
            .unwrap()
            .get(0);
        assert!(all > 0);
        assert_eq!(own, all, "the user's own sessions, read through the claim");
        let new_jti: String = svc
            .query_one(
                "SELECT jti::text FROM truxe.refresh_session($1::text::uuid)",
                &[refresh],
            )
            .unwrap()
            .get(0);
        let valid = |svc: &mut Client, jti: &str| -> bool {
            svc.query_opt(
                "SELECT 1 FROM truxe.validate_session($1::text::uuid)",
                &[&jti],
            )
            .unwrap()
            .is_some()
        };
        assert!(valid(&mut svc, &new_jti), "the refreshed session");
        assert!(!valid(&mut svc, jti), "the replaced session");

        // the key authenticates, in the org
        let mut tx = a.transaction().unwrap();
        let key_org: Option<String> = tx
            .query_opt(
                "SELECT org_id::text FROM truxe.authenticate_api_key($1)",
                &[&t.key],
            )
            .unwrap()
            .map(|r| r.get(0));
        assert_eq!(key_org.as_ref(), Some(&t.org));
        tx.commit().unwrap();

        // new writes: the invitation accepted (its row updated, the audit rows written in
        // the org's shard), usage recorded; rights from the reference table
        let audit_on = |shard: i64, port: i32| -> i64 {
            let node = if port == w3_port {
                &w3
            } else {
                c.workers
                    .iter()
                    .find(|w| i32::from(w.port) == port)
                    .unwrap()
            };
            node.client(&db, "postgres")
                .query_one(
                    &format!("SELECT count(*) FROM truxe.audit_logs_{shard} WHERE org_id = $1::text::uuid"),
                    &[&t.org],
                )
                .unwrap()
                .get(0)
        };
        let (shard, port) = audit_shard(&mut su, &t.org);
        let before = audit_on(shard, port);
        let r = svc
            .query_one(
                "SELECT status, user_id::text FROM truxe.accept_invitation_token($1)",
                &[&t.invitation],
            )
            .unwrap();
        let (status, member): (String, String) = (r.get(0), r.get(1));
        assert_eq!(status, "accepted");
        assert!(
            audit_on(shard, port) > before,
            "the new audit rows in the org's shard"
        );
        let total: i64 = svc
            .query_one(
                "SELECT truxe.record_usage($1::text::uuid, 'api_requests')",
                &[&t.org],
            )
            .unwrap()
            .get(0);
        assert_eq!(total, 6);
        let rights: Vec<bool> = ["users:read", "users:write"]
            .iter()
            .flat_map(|p| [(&member, *p), (&t.admin, *p)])
            .map(|(u, p)| {
                svc.query_one(
                    "SELECT truxe.has_permission($1::text::uuid, $2, $3::text::uuid)",
                    &[&t.org, &p, u],
                )
                .unwrap()
                .get(0)
            })
            .collect();
        assert_eq!(rights, [true, true, false, true], "member and owner rights");
    }
    assert_eq!(moved_shard, audit_shard(&mut su, &moved.org).0);

    // the whole log, sealed before and after the move, verifies
    let sealed: i64 = svc
        .query_one("SELECT truxe.seal_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(sealed > 0);
    let r = svc
        .query_one(
            "SELECT ok, seals_checked, reason FROM truxe.verify_audit_log()",
            &[],
        )
        .unwrap();
    let (ok, checked, reason): (bool, i64, Option<String>) = (r.get(0), r.get(1), r.get(2));
    assert!(ok, "verify_audit_log after the move: {reason:?}");
    assert_eq!(checked, 2);
}

/// The extension's version on every node of `db`, as docs/scaling.md ("Updating truxe on
/// a cluster") has the operator check it: (node id, extversion) of each node, coordinator
/// included.
fn versions(su: &mut Client) -> Vec<(i32, String)> {
    su.query(
        "SELECT nodeid, result FROM run_command_on_all_nodes(
           $$SELECT extversion FROM pg_extension WHERE extname = 'truxe'$$) WHERE success",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// A team on 0.1.0 on a Citus coordinator (every table a plain coordinator table) updates
/// through the coordinator, then distributes: `CREATE EXTENSION truxe VERSION '0.1.0'` is
/// propagated to the workers, and so is `ALTER EXTENSION truxe UPDATE` (every node at
/// 0.2.0 after it); `distribute()` then converts the updated database, and through the
/// coordinator as the logins a magic link gives a session that validates, and an org's
/// audit rows live in that org's shard.
#[test]
fn a_cluster_on_the_first_release_updates_then_distributes() {
    let Some(c) = cluster() else { return };
    let db = own_citus_db(c, "updated", "");
    let mut su = c.coordinator.client(&db, "postgres");
    su.batch_execute(&format!(
        "CREATE EXTENSION truxe VERSION '{FIRST_RELEASE}' CASCADE"
    ))
    .expect("install the first release through the coordinator");
    let before = versions(&mut su);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.iter().all(|(_, v)| v == FIRST_RELEASE), "{before:?}");
    su.batch_execute("ALTER EXTENSION truxe UPDATE")
        .expect("ALTER EXTENSION truxe UPDATE through the coordinator");
    let after = versions(&mut su);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|(_, v)| v == "0.2.0"), "{after:?}");

    let placement: Vec<(String, String)> = su
        .query("SELECT table_name, placement FROM truxe.distribute()", &[])
        .expect("distribute() after the update")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        placement.contains(&("audit_logs".into(), "distributed by org_id".into())),
        "{placement:?}"
    );
    let (auth, svc_login) = own_logins(c, &db);
    let mut svc = c.coordinator.client(&db, &svc_login);
    let email = format!("{}@ops.example", unique("upd"));
    let token: String = svc
        .query_one("SELECT token FROM truxe.issue_magic_link($1)", &[&email])
        .unwrap()
        .get(0);
    let r = svc
        .query_one(
            "SELECT status, user_id::text FROM truxe.verify_magic_link($1)",
            &[&token],
        )
        .unwrap();
    let (status, user): (String, String) = (r.get(0), r.get(1));
    assert_eq!(status, "verified");
    let jti: String = svc
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
            &[&user],
        )
        .unwrap()
        .get(0);
    let who: Option<String> = svc
        .query_opt(
            "SELECT user_id::text FROM truxe.validate_session($1::text::uuid)",
            &[&jti],
        )
        .unwrap()
        .map(|r| r.get(0));
    assert_eq!(who, Some(user.clone()));

    let org: String = acting(c, &db, &auth, &user)
        .query_one(
            "SELECT truxe.create_organization($1::text::public.citext, 'Updated')::text",
            &[&unique("updated-")],
        )
        .unwrap()
        .get(0);
    let held = org_rows_by_shard(&mut su, "truxe.audit_logs", std::slice::from_ref(&org));
    assert!(held[0].2 >= 1, "the org's audit rows in its shard");
    let mut a = c.coordinator.client(&db, &auth);
    let mut t = in_context(&mut a, &user);
    let read: i64 = t
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE org_id = $1::text::uuid",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(read, held[0].2, "the owner reads them through the claim");
    t.commit().unwrap();
}
