//! Operating a distributed truxe (docs/scaling.md, "Adding a worker" and "Updating truxe on
//! a cluster"): what a team does to its Citus deployment besides running it, on the
//! cluster of tests/integration/citus.rs, each test in a database of its own, through the
//! coordinator as NOSUPERUSER LOGIN roles.
use crate::citus::{
    audit_shard, cluster, in_context, on_every_copy, org_rows_by_shard, own_citus_db,
    own_cluster_db, session_shard, unique, Cluster, Node,
};
use crate::harness::strings;
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

/// What one tenant wrote before its shards moved: its admin, its org, an invitation's token,
/// an API key, and a session (jti, refresh jti).
struct Tenant {
    admin: String,
    org: String,
    invitation: String,
    key: String,
    session: (String, String),
}

/// A new user (inserted by `svc`) and the org it creates as `auth`'s login: (admin, org).
fn new_org(c: &Cluster, db: &str, auth: &str, svc: &mut Client) -> (String, String) {
    let admin = new_user(svc);
    let org: String = acting(c, db, auth, &admin)
        .query_one(
            "SELECT truxe.create_organization($1::text::public.citext, 'Org')::text",
            &[&unique("ops-")],
        )
        .unwrap()
        .get(0);
    (admin, org)
}

/// Two tenants of `db` written before an operation that moves shards: the first's shard
/// group (its audit rows, usage, invitations and API keys) is one that `moves` accepts
/// (shard id, worker port), the second's is not; each with 5 `api_requests` of usage, an
/// invitation, an API key and a session whose shard `moves` accepts (sessions are
/// distributed by their token's hash, orgs by their random id: drawn until they fit).
fn two_tenants(
    c: &Cluster,
    db: &str,
    auth: &str,
    svc: &mut Client,
    su: &mut Client,
    moves: impl Fn(i64, i32) -> bool,
) -> (Tenant, Tenant) {
    let mut tenants: [Option<Tenant>; 2] = [None, None];
    for _ in 0..200 {
        if tenants.iter().all(Option::is_some) {
            break;
        }
        let (admin, org) = new_org(c, db, auth, svc);
        let (shard, port) = audit_shard(su, &org);
        let slot = usize::from(!moves(shard, port));
        if tenants[slot].is_some() {
            continue;
        }
        svc.execute(
            "SELECT truxe.record_usage($1::text::uuid, 'api_requests', 5)",
            &[&org],
        )
        .unwrap();
        let invitation: String = acting(c, db, auth, &admin)
            .query_one(
                "SELECT token FROM truxe.invite_by_email($1::text::uuid, $2, 'member')",
                &[&org, &format!("{}@ops.example", unique("inv"))],
            )
            .unwrap()
            .get(0);
        let mut a = c.coordinator.client(db, auth);
        let mut t = in_context(&mut a, &admin);
        let key: String = t
            .query_one(
                "SELECT key FROM truxe.create_api_key($1::text::uuid, 'ci', ARRAY['users:read'])",
                &[&org],
            )
            .unwrap()
            .get(0);
        t.commit().unwrap();
        let session = loop {
            let r = svc
                .query_one(
                    "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid, $2::text::uuid)",
                    &[&admin, &org],
                )
                .unwrap();
            let (jti, refresh): (String, String) = (r.get(0), r.get(1));
            let (shard, port) = session_shard(su, &jti);
            if moves(shard, port) {
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
    (moved, stayed)
}

/// A rate-limit window of 10 calls an hour for `key`, counted once more: what remains.
fn remaining(svc: &mut Client, key: &str) -> i32 {
    svc.query_one(
        "SELECT remaining FROM truxe.rate_limit_hit($1, 10, '1 hour')",
        &[&key],
    )
    .unwrap()
    .get(0)
}

/// The contract for tenant `t` of `db` after its shards moved (or did not), through the
/// coordinator as the logins: its audit rows, usage (5), invitations and API keys read by
/// its admin under RLS through the claim, and no other org's audit rows; the session made
/// before validates, is read as the user's own, and refreshes; the key authenticates in
/// the org; the invitation is accepted, its audit rows written in the org's shard (on
/// whichever of `nodes` holds it now); `record_usage` counts on (6); `has_permission`
/// answers for the new member and the owner.
fn tenant_contract_holds(
    c: &Cluster,
    db: &str,
    auth: &str,
    svc: &mut Client,
    su: &mut Client,
    t: &Tenant,
    nodes: &[&Node],
) {
    // the tenant's rows, read by its admin under RLS through the claim
    let mut a = c.coordinator.client(db, auth);
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
    assert!(valid(svc, &new_jti), "the refreshed session");
    assert!(!valid(svc, jti), "the replaced session");

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

    // new writes: the invitation accepted (its row updated, the audit rows written in the
    // org's shard), usage recorded; rights from the reference table
    let audit_on = |shard: i64, port: i32| -> i64 {
        let node = nodes
            .iter()
            .find(|n| i32::from(n.port) == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        node.client(db, "postgres")
            .query_one(
                &format!(
                    "SELECT count(*) FROM truxe.audit_logs_{shard} WHERE org_id = $1::text::uuid"
                ),
                &[&t.org],
            )
            .unwrap()
            .get(0)
    };
    let (shard, port) = audit_shard(su, &t.org);
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

/// Seals the audit log once more and verifies the whole log: `seals` seals checked.
fn whole_log_verifies(svc: &mut Client, seals: i64) {
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
    assert_eq!(checked, seals);
}

/// A first tenant of `db` and a seal of its audit rows, before any shard moves: the seal
/// that [`whole_log_verifies`] checks with the one it makes.
fn seal_early(c: &Cluster, db: &str, auth: &str, svc: &mut Client) {
    new_org(c, db, auth, svc);
    let sealed: i64 = svc
        .query_one("SELECT truxe.seal_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(sealed > 0);
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
    seal_early(c, &db, &auth, &mut svc);

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
    let (moved, stayed) = two_tenants(c, &db, &auth, &mut svc, &mut su, |shard, _| {
        moving.contains(&shard)
    });
    // a rate-limit window being counted, and one more session, for the online moves below
    assert_eq!(remaining(&mut svc, "grown:login"), 9);
    // (in another shard than the moved tenant's session, which must stay on the new node:
    // the online move below moves the spare's shard; sharing it, about 1 run in 32, failed)
    let moved_session_shard = session_shard(&mut su, &moved.session.0).0;
    let spare: String = loop {
        let jti: String = svc
            .query_one(
                "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
                &[&moved.admin],
            )
            .unwrap()
            .get(0);
        if session_shard(&mut su, &jti).0 != moved_session_shard {
            break jti;
        }
    };

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
        remaining(&mut svc, "grown:login"),
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

    let nodes = [&c.workers[0], &c.workers[1], &w3];
    for t in [&moved, &stayed] {
        tenant_contract_holds(c, &db, &auth, &mut svc, &mut su, t, &nodes);
    }
    assert_eq!(moved_shard, audit_shard(&mut su, &moved.org).0);

    // the whole log, sealed before and after the move, verifies
    whole_log_verifies(&mut svc, 2);
}

/// The shard of `truxe.rate_limits` that holds `key`'s windows (distributed by the hex
/// SHA-256 of the key), and the port of the worker that holds it.
fn rate_limit_shard(su: &mut Client, key: &str) -> (i64, i32) {
    let r = su
        .query_one(
            "SELECT p.shardid, n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
              WHERE p.shardid = get_shard_id_for_distribution_column('truxe.rate_limits',
                                  encode(sha256(convert_to($1, 'UTF8')), 'hex'))",
            &[&key],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// The tables with a placement on the worker listening on `port`, by name, sorted (a
/// distributed table once per shard).
fn tables_placed_on(su: &mut Client, port: i32) -> Vec<String> {
    su.query(
        "SELECT s.logicalrelid::text FROM pg_dist_placement p JOIN pg_dist_shard s USING (shardid)
           JOIN pg_dist_node n USING (groupid)
          WHERE n.nodeport = $1 ORDER BY 1",
        &[&port],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A worker removed from a distributed truxe database (docs/scaling.md, "Removing a
/// worker"): a third worker is added (empty), then one of the first two, which holds
/// tenants' shard groups, sessions and a rate-limit window, is drained and removed.
/// `citus_remove_node` refuses (XX000) while the node holds a shard; `citus_drain_node`
/// moves every shard off it (onto the remaining workers, the new one included, which gets
/// its copy of the reference tables first) and leaves only the reference tables' copies;
/// `citus_cleanup_orphaned_resources` drops the old shard copies; `citus_remove_node` then
/// removes the node and the reference tables' placements there itself (their shard tables
/// stay in its database). Afterwards no node list (the coordinator's, the workers') names
/// the node and no placement is left in its group, and its database is dropped. Then,
/// through the coordinator as the logins, for a tenant whose shard group was on the
/// removed node and one whose was not (each with a session that was there): every row is
/// there and read by its admin through the claim (no other tenant's), the session made
/// before the drain validates and refreshes, the key authenticates, the invitation is
/// accepted, `record_usage` and `has_permission` answer, the rate-limit window counts on,
/// and the whole audit log, sealed before and after, verifies.
#[test]
fn a_drained_worker_is_removed_and_the_contract_holds() {
    let Some(c) = cluster() else { return };
    // 8 shards per table instead of Citus' 32: the drain moves every shard group of the
    // node one by one, and a test has no use for more of them
    let db = own_citus_db(c, "shrunk", "");
    c.coordinator
        .client(&db, "postgres")
        .batch_execute(
            "SET citus.shard_count = 8; CREATE EXTENSION truxe CASCADE;
             SELECT count(*) FROM truxe.distribute();",
        )
        .unwrap();
    let (auth, svc_login) = own_logins(c, &db);
    let mut su = c.coordinator.client(&db, "postgres");
    let mut svc = c.coordinator.client(&db, &svc_login);
    let shards: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'truxe.audit_logs'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(shards, 8);
    seal_early(c, &db, &auth, &mut svc);

    // the node that stays: a third worker, added empty; the node that goes: the first
    let w3 = add_worker(c, &db, "w4");
    let gone = &c.workers[0];
    let gone_port = i32::from(gone.port);
    let (moved, stayed) = two_tenants(c, &db, &auth, &mut svc, &mut su, |_, port| {
        port == gone_port
    });
    // a rate-limit window on the node that goes
    let key = loop {
        let key = unique("shrunk:login:");
        if rate_limit_shard(&mut su, &key).1 == gone_port {
            break key;
        }
    };
    assert_eq!(remaining(&mut svc, &key), 9);

    // removing a node that holds shards is refused, by Citus, without a SQLSTATE of its own
    let e = su
        .execute("SELECT citus_remove_node('127.0.0.1', $1)", &[&gone_port])
        .unwrap_err();
    let db_error = e.as_db_error().expect("a server error");
    assert_eq!(db_error.code().code(), "XX000", "{db_error:?}");
    assert!(
        db_error
            .message()
            .contains("because it contains the only shard placement"),
        "{db_error:?}"
    );

    // the operator's steps: drain (in the calling session; block_writes, as the rebalance
    // in "Adding a worker": each shard group's writes wait while it is copied), drop the
    // shards' old copies, remove
    let started = std::time::Instant::now();
    su.execute(
        "SELECT citus_drain_node('127.0.0.1', $1, shard_transfer_mode => 'block_writes')",
        &[&gone_port],
    )
    .expect("citus_drain_node");
    eprintln!("citus_drain_node: {:?}", started.elapsed());
    let should_have_shards: bool = su
        .query_one(
            "SELECT shouldhaveshards FROM pg_dist_node WHERE nodeport = $1",
            &[&gone_port],
        )
        .unwrap()
        .get(0);
    assert!(!should_have_shards, "the drained node takes no new shard");
    assert_eq!(
        tables_placed_on(&mut su, gone_port),
        ["truxe.audit_seals", "truxe.role_permissions"],
        "only the reference tables' copies are left on the drained node"
    );
    assert!(
        tables_placed_on(&mut su, i32::from(w3.port)).len() > 2,
        "the new node took shards"
    );
    su.batch_execute("CALL citus_cleanup_orphaned_resources()")
        .unwrap();
    let orphans: i64 = su
        .query_one("SELECT count(*) FROM pg_dist_cleanup", &[])
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "the old shard copies dropped");
    su.execute("SELECT citus_remove_node('127.0.0.1', $1)", &[&gone_port])
        .expect("citus_remove_node after the drain");

    // nothing names the node: no node row, no placement (the reference tables' copies
    // included), on the coordinator and on the workers that stay
    assert!(tables_placed_on(&mut su, gone_port).is_empty());
    let seen: Vec<String> = su
        .query(
            "SELECT result FROM run_command_on_all_nodes(format(
               $$SELECT count(*) FROM pg_dist_node WHERE nodeport = %s$$, $1::int)) ORDER BY nodeid",
            &[&gone_port],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seen,
        ["0", "0", "0"],
        "the coordinator and the two workers left"
    );
    let placements: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_dist_placement WHERE groupid NOT IN (SELECT groupid FROM pg_dist_node)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(placements, 0, "no placement in a removed group");
    // the removed node's database is no longer needed: the shards moved off it were
    // dropped there by the cleanup, the reference tables' were left (citus_remove_node
    // removes placements from the metadata only); Citus hides shards from pg_class unless
    // told not to
    let mut g = gone.client(&db, "postgres");
    g.batch_execute("SET citus.override_table_visibility = off")
        .unwrap();
    let left = strings(
        &mut g,
        "SELECT regexp_replace(relname, '_[0-9]+$', '') FROM pg_class
          WHERE relnamespace = 'truxe'::regnamespace AND relkind = 'r' AND relname ~ '_[0-9]+$'",
    );
    assert_eq!(
        left,
        ["audit_seals", "role_permissions"],
        "the shards left on the removed node"
    );
    drop(g);
    gone.client("postgres", "postgres")
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .expect("drop the database on the removed node");

    // the tenants' shard groups are on the nodes that stay; each reference table has a
    // copy on each of them, the same rows as the coordinator's
    let (moved_shard, port) = audit_shard(&mut su, &moved.org);
    assert_ne!(port, gone_port);
    assert_ne!(session_shard(&mut su, &moved.session.0).1, gone_port);
    for table in ["truxe.role_permissions", "truxe.audit_seals"] {
        let copies = on_every_copy(&mut su, table, "SELECT count(*) FROM %s");
        assert_eq!(copies.len(), 3, "{table}: a copy on every node: {copies:?}");
        assert!(copies.iter().all(|(_, n)| *n == copies[0].1), "{copies:?}");
    }

    assert_eq!(
        remaining(&mut svc, &key),
        8,
        "the window moved off the removed node counts on"
    );
    let nodes = [&c.workers[1], &w3];
    for t in [&moved, &stayed] {
        tenant_contract_holds(c, &db, &auth, &mut svc, &mut su, t, &nodes);
    }
    assert_eq!(moved_shard, audit_shard(&mut su, &moved.org).0);
    whole_log_verifies(&mut svc, 2);
}

/// What the clients of [`online_moves_under_load_count_every_call_once`] saw: every
/// rate-limit hit (key, window end, the count it returned), every usage call (org, amount,
/// the total it returned), the sessions validated, the longest round of the three calls,
/// and every failed call (operation, SQLSTATE, message).
#[derive(Default)]
struct Load {
    hits: Vec<(String, String, i32)>,
    usage: Vec<(String, i64, i64)>,
    validated: usize,
    slowest: std::time::Duration,
    failed: Vec<(&'static str, String, String)>,
}

/// Shard moves under load (docs/scaling.md, "Adding a worker", moves under load): while
/// four clients (separate connections, the service login) call `rate_limit_hit` on two
/// keys, `record_usage` for two orgs and `validate_session` for two sessions in a loop,
/// the shards that hold those keys, orgs and sessions are moved online to the other worker
/// (`citus_move_shard_placement`, mode `auto`: logical replication, then a short block of
/// writes at the cutover). No call fails; afterwards every count is exact: each org's
/// stored usage is the sum of the amounts recorded, and each key's window returned the
/// counts 1..N once each (no call lost or counted twice), N being the stored count.
#[test]
fn online_moves_under_load_count_every_call_once() {
    let Some(c) = cluster() else { return };
    let db = own_cluster_db(c, "loaded", "");
    let (auth, svc_login) = own_logins(c, &db);
    let mut su = c.coordinator.client(&db, "postgres");
    let mut svc = c.coordinator.client(&db, &svc_login);
    // two of each, drawn until both sit in one shard (one move per table)
    fn two_in_one_shard<T>(mut draw: impl FnMut() -> (T, i64)) -> Vec<T> {
        let mut seen: Vec<(T, i64)> = Vec::new();
        loop {
            let (v, shard) = draw();
            if let Some(i) = seen.iter().position(|(_, s)| *s == shard) {
                return vec![seen.swap_remove(i).0, v];
            }
            seen.push((v, shard));
        }
    }
    let keys = two_in_one_shard(|| {
        let key = unique("loaded:login:");
        let shard = rate_limit_shard(&mut su, &key).0;
        (key, shard)
    });
    let orgs = two_in_one_shard(|| {
        let org = new_org(c, &db, &auth, &mut svc).1;
        let shard = audit_shard(&mut su, &org).0;
        (org, shard)
    });
    let sessions = two_in_one_shard(|| {
        let user = new_user(&mut svc);
        let jti: String = svc
            .query_one(
                "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
                &[&user],
            )
            .unwrap()
            .get(0);
        let shard = session_shard(&mut su, &jti).0;
        ((jti, user), shard)
    });
    // (shard, from, to): each to the other worker
    let ports: Vec<i32> = c.workers.iter().map(|w| i32::from(w.port)).collect();
    let moves: Vec<(i64, i32, i32)> = [
        rate_limit_shard(&mut su, &keys[0]),
        audit_shard(&mut su, &orgs[0]),
        session_shard(&mut su, &sessions[0].0),
    ]
    .into_iter()
    .map(|(shard, from)| (shard, from, *ports.iter().find(|p| **p != from).unwrap()))
    .collect();

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (stop, calls) = (AtomicBool::new(false), AtomicUsize::new(0));
    let load: Vec<Load> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|n| {
                let (keys, orgs, sessions) = (&keys, &orgs, &sessions);
                let (stop, calls, db, svc_login) = (&stop, &calls, &db, &svc_login);
                s.spawn(move || {
                    let mut svc = c.coordinator.client(db, svc_login);
                    let mut seen = Load::default();
                    let failed = |seen: &mut Load, op, e: postgres::Error| {
                        let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                        seen.failed.push((op, code, e.to_string()));
                    };
                    let mut i = n;
                    while !stop.load(Ordering::SeqCst) {
                        let round = std::time::Instant::now();
                        i += 1;
                        let key = &keys[i % 2];
                        match svc.query_one(
                            "SELECT remaining, reset_at::text FROM truxe.rate_limit_hit($1, 1000000, '1 hour')",
                            &[key],
                        ) {
                            Ok(r) => seen.hits.push((
                                key.clone(),
                                r.get(1),
                                1_000_000 - r.get::<_, i32>(0),
                            )),
                            Err(e) => failed(&mut seen, "rate_limit_hit", e),
                        }
                        let (org, amount) = (&orgs[i % 2], 1 + (i % 3) as i64);
                        match svc.query_one(
                            "SELECT truxe.record_usage($1::text::uuid, 'api_requests', $2)",
                            &[org, &amount],
                        ) {
                            Ok(r) => seen.usage.push((org.clone(), amount, r.get(0))),
                            Err(e) => failed(&mut seen, "record_usage", e),
                        }
                        let (jti, user) = &sessions[i % 2];
                        match svc.query_opt(
                            "SELECT user_id::text FROM truxe.validate_session($1::text::uuid)",
                            &[jti],
                        ) {
                            Ok(r) => {
                                let who: Option<String> = r.map(|r| r.get(0));
                                assert_eq!(who.as_ref(), Some(user), "the session validates");
                                seen.validated += 1;
                            }
                            Err(e) => failed(&mut seen, "validate_session", e),
                        }
                        if svc.is_closed() {
                            svc = c.coordinator.client(db, svc_login);
                        }
                        seen.slowest = seen.slowest.max(round.elapsed());
                        calls.fetch_add(1, Ordering::SeqCst);
                    }
                    seen
                })
            })
            .collect();
        let wait_for = |n: usize| {
            let start = std::time::Instant::now();
            while calls.load(Ordering::SeqCst) < n {
                assert!(
                    start.elapsed().as_secs() < 30,
                    "the clients make no progress"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        // the clients under way, then the moves, then a little more load after them
        wait_for(40);
        for (shard, from, to) in &moves {
            let started = std::time::Instant::now();
            let moved = su.execute(
                "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3,
                                                   shard_transfer_mode => 'auto')",
                &[shard, from, to],
            );
            eprintln!(
                "online move of shard {shard} under load: {:?}, {} calls so far",
                started.elapsed(),
                calls.load(Ordering::SeqCst)
            );
            if let Err(e) = moved {
                stop.store(true, Ordering::SeqCst);
                panic!("online move of shard {shard}: {e}");
            }
        }
        wait_for(calls.load(Ordering::SeqCst) + 40);
        stop.store(true, Ordering::SeqCst);
        clients.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (shard, _, to) in &moves {
        let port: i32 = su
            .query_one(
                "SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
                  WHERE p.shardid = $1",
                &[shard],
            )
            .unwrap()
            .get(0);
        assert_eq!(port, *to, "shard {shard} moved");
    }
    let failed: Vec<_> = load.iter().flat_map(|l| &l.failed).collect();
    assert!(
        failed.is_empty(),
        "calls failed during the moves: {failed:?}"
    );
    let validated: usize = load.iter().map(|l| l.validated).sum();
    assert!(validated >= 80, "{validated} validations");
    eprintln!(
        "{validated} rounds; the longest: {:?}",
        load.iter().map(|l| l.slowest).max()
    );

    // usage: each org's stored total is the sum of the amounts recorded, and the largest
    // total a call returned
    for org in &orgs {
        let recorded: Vec<&(String, i64, i64)> = load
            .iter()
            .flat_map(|l| &l.usage)
            .filter(|(o, _, _)| o == org)
            .collect();
        let sum: i64 = recorded.iter().map(|(_, a, _)| a).sum();
        let stored: i64 = su
            .query_one(
                "SELECT sum(metric_value)::bigint FROM truxe.usage_metrics
                  WHERE org_id = $1::text::uuid AND metric_type = 'api_requests'",
                &[org],
            )
            .unwrap()
            .get(0);
        assert_eq!(stored, sum, "org {org}: {} calls", recorded.len());
        let mut totals: Vec<i64> = recorded.iter().map(|(_, _, t)| *t).collect();
        totals.sort_unstable();
        totals.dedup();
        assert_eq!(totals.len(), recorded.len(), "each call its own total");
        assert_eq!(totals.last(), Some(&stored));
    }
    // rate limits: per key and window, the counts returned are 1..N, once each, and N is
    // the stored count
    let mut windows: std::collections::BTreeMap<(String, String), Vec<i32>> = Default::default();
    for (key, window, count) in load.iter().flat_map(|l| &l.hits) {
        windows
            .entry((key.clone(), window.clone()))
            .or_default()
            .push(*count);
    }
    assert!(windows.len() >= 2, "{:?}", windows.keys());
    for ((key, window), mut counts) in windows {
        counts.sort_unstable();
        let n = counts.len() as i32;
        assert!(
            counts.iter().copied().eq(1..=n),
            "{key} in the window ending {window}: {} counts, not 1..{n}",
            counts.len()
        );
        let stored: i32 = su
            .query_one(
                "SELECT request_count FROM truxe.rate_limits
                  WHERE key_hash = encode(sha256(convert_to($1, 'UTF8')), 'hex')
                    AND window_end = $2::text::timestamptz",
                &[&key, &window],
            )
            .unwrap()
            .get(0);
        assert_eq!(stored, n, "{key}: the stored count");
    }
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
