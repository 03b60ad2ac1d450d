//! Reads on a hot standby (docs/scaling.md): a primary launched by the test, a standby made
//! from it by `pg_basebackup -R -X stream`, and real logins on both. Every read path answers
//! on the standby without writing; every write function fails there with Postgres' own
//! 25006 (read_only_sql_transaction), never XX000.
use crate::harness::{active_user, create_extension, sqlstate, Server, AUTH_LOGIN, SERVICE_LOGIN};
use postgres::Client;

const MONITOR_LOGIN: &str = "truxe_test_monitor";

fn ids(
    c: &mut impl postgres::GenericClient,
    sql: &str,
    args: &[&(dyn postgres::types::ToSql + Sync)],
) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(sql, args)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// What `login` sees in one read-only transaction with `user` as context: its accessible
/// orgs, the ancestors of `leaf`, the descendants of `root`, whether it may write `leaf`'s
/// settings, the org slugs RLS lets it read, and the other context helpers' answers.
type Seen = (
    Vec<String>,
    Vec<String>,
    Vec<String>,
    bool,
    Vec<String>,
    Vec<String>,
);

fn reads(c: &mut Client, user: &str, root: &str, leaf: &str) -> Seen {
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT truxe.set_context($1::text::uuid)", &[&user])
        .unwrap();
    let mut q = |sql: &str, arg: Option<&str>| -> Vec<String> {
        let v = match arg {
            Some(a) => tx.query(sql, &[&a]),
            None => tx.query(sql, &[]),
        };
        let mut v: Vec<String> = v
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        v.sort();
        v
    };
    let accessible = q("SELECT unnest(truxe.accessible_org_ids())::text", None);
    // the other org-set helpers: compared with the primary's answer below
    let mut others = q("SELECT unnest(truxe.admin_org_ids())::text", None);
    others.extend(q(
        "SELECT 'invited ' || unnest(truxe.invited_org_ids())::text",
        None,
    ));
    others.extend(q(
        "SELECT truxe.current_user_id()::text || ' ' || coalesce(truxe.current_org_id()::text, '-')",
        None,
    ));
    let ancestors = q(
        "SELECT org_id::text FROM truxe.org_ancestors($1::text::uuid)",
        Some(leaf),
    );
    let descendants = q(
        "SELECT org_id::text FROM truxe.org_descendants($1::text::uuid)",
        Some(root),
    );
    let slugs = q("SELECT slug::text FROM truxe.organizations", None);
    let allowed: bool = tx
        .query_one(
            "SELECT truxe.has_permission($1::text::uuid, 'settings:write')",
            &[&leaf],
        )
        .unwrap()
        .get(0);
    tx.rollback().unwrap();
    (accessible, ancestors, descendants, allowed, slugs, others)
}

#[test]
fn reads_answer_on_a_hot_standby_and_writes_fail_with_25006() {
    let primary = Server::launch("primary", &[]);
    {
        let mut su = primary.client("postgres", "postgres");
        su.batch_execute(&format!(
            "CREATE ROLE {AUTH_LOGIN} LOGIN; CREATE ROLE {SERVICE_LOGIN} LOGIN;
             CREATE ROLE {MONITOR_LOGIN} LOGIN IN ROLE pg_monitor;"
        ))
        .unwrap();
        su.batch_execute("CREATE DATABASE app").unwrap();
    }
    let mut su = primary.client("app", "postgres");
    create_extension(&mut su);
    su.batch_execute(&format!(
        "GRANT authenticated TO {AUTH_LOGIN}; GRANT service_account TO {SERVICE_LOGIN};"
    ))
    .unwrap();
    let (alice, bob) = (
        active_user(&mut su, "alice@example.com"),
        active_user(&mut su, "bob@example.com"),
    );
    let org = |c: &mut Client, slug: &str, parent: Option<&str>| -> String {
        c.query_one(
            "INSERT INTO truxe.organizations (slug, name, parent_org_id)
             VALUES ($1::text, $1::text, $2::text::uuid) RETURNING id::text",
            &[&slug, &parent],
        )
        .unwrap()
        .get(0)
    };
    let root = org(&mut su, "acme", None);
    let eu = org(&mut su, "acme-eu", Some(&root));
    let de = org(&mut su, "acme-eu-de", Some(&eu));
    let other = org(&mut su, "globex", None);
    su.execute(
        "INSERT INTO truxe.memberships (org_id, user_id, role, joined_at) VALUES
           ($1::text::uuid, $3::text::uuid, 'owner', now()),
           ($2::text::uuid, $4::text::uuid, 'member', now()),
           ($5::text::uuid, $4::text::uuid, 'owner', now())",
        &[&root, &eu, &alice, &bob, &other],
    )
    .unwrap();

    let mut svc = primary.client("app", SERVICE_LOGIN);
    let session = |c: &mut Client, user: &str| -> String {
        c.query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
            &[&user],
        )
        .unwrap()
        .get(0)
    };
    let (alice_jti, bob_jti) = (session(&mut svc, &alice), session(&mut svc, &bob));
    // bob's session was last used long ago: validate_session would write on a primary
    su.execute(
        "UPDATE truxe.sessions SET last_used_at = now() - interval '5 minutes'
          WHERE user_id = $1::text::uuid",
        &[&bob],
    )
    .unwrap();
    let primary_seen = reads(&mut primary.client("app", AUTH_LOGIN), &alice, &root, &de);
    // an API key of acme, created by alice (never used: authenticate_api_key would touch it)
    let key: String = {
        let mut t = svc.transaction().unwrap();
        t.execute("SELECT truxe.set_context($1::text::uuid)", &[&alice])
            .unwrap();
        let key = t
            .query_one(
                "SELECT key FROM truxe.create_api_key($1::text::uuid, 'ci')",
                &[&root],
            )
            .unwrap()
            .get(0);
        t.commit().unwrap();
        key
    };

    let standby = primary.standby("standby");
    primary.wait_for_replay(&standby);
    let mut ssu = standby.client("app", "postgres");
    let in_recovery: bool = ssu
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery, "the standby is a hot standby");

    // validate_session, as both roles that may call it, for a fresh and a stale session
    let mut ssvc = standby.client("app", SERVICE_LOGIN);
    let mut sauth = standby.client("app", AUTH_LOGIN);
    for c in [&mut ssvc, &mut sauth] {
        for (jti, owner) in [(&alice_jti, &alice), (&bob_jti, &bob)] {
            let found = ids(
                c,
                "SELECT user_id::text FROM truxe.validate_session($1::text::uuid)",
                &[jti],
            );
            assert_eq!(
                found,
                [owner.to_string()],
                "validate_session on the standby"
            );
        }
        let unknown = ids(
            c,
            "SELECT user_id::text FROM truxe.validate_session(gen_random_uuid())",
            &[],
        );
        assert!(unknown.is_empty());
    }
    // the verified identity: authenticate and authenticate_api_key answer on the standby
    // (the identity is a setting, not a write), and touch nothing
    let mut t = sauth.transaction().unwrap();
    let who = ids(
        &mut t,
        "SELECT user_id::text FROM truxe.authenticate($1)",
        &[&bob_jti],
    );
    assert_eq!(who, [bob.to_string()], "authenticate on the standby");
    let acting = ids(&mut t, "SELECT truxe.current_user_id()::text", &[]);
    assert_eq!(acting, [bob.to_string()]);
    let key_org = ids(
        &mut t,
        "SELECT org_id::text FROM truxe.authenticate_api_key($1)",
        &[&key],
    );
    assert_eq!(
        key_org,
        std::slice::from_ref(&root),
        "authenticate_api_key on the standby"
    );
    t.commit().unwrap();
    let untouched: bool = ssu
        .query_one(
            "SELECT last_used_at IS NULL FROM truxe.api_keys WHERE org_id = $1::text::uuid",
            &[&root],
        )
        .unwrap()
        .get(0);
    assert!(untouched, "authenticate_api_key wrote on the standby");
    // nothing was written: bob's last_used_at is as stale as before
    let stale: bool = ssu
        .query_one(
            "SELECT last_used_at < now() - interval '4 minutes' FROM truxe.sessions
              WHERE user_id = $1::text::uuid",
            &[&bob],
        )
        .unwrap()
        .get(0);
    assert!(stale, "validate_session wrote on the standby");

    // has_permission, accessible_org_ids, ancestors/descendants and RLS-scoped reads answer
    // on the standby as on the primary
    let standby_seen = reads(&mut sauth, &alice, &root, &de);
    assert_eq!(
        standby_seen, primary_seen,
        "the standby answers as the primary"
    );
    let (accessible, ancestors, descendants, allowed, slugs, others) = standby_seen;
    assert!(others.contains(&format!("{alice} -")) && others.contains(&root));
    let mut tree = vec![root.clone(), eu.clone(), de.clone()];
    tree.sort();
    assert_eq!(accessible, tree);
    let mut up = vec![root.clone(), eu.clone()];
    up.sort();
    assert_eq!(ancestors, up);
    let mut down = vec![eu.clone(), de.clone()];
    down.sort();
    assert_eq!(descendants, down);
    assert!(allowed, "alice owns an ancestor of acme-eu-de");
    assert_eq!(slugs, ["acme", "acme-eu", "acme-eu-de"], "RLS hides globex");
    let (_, _, _, bob_allowed, bob_slugs, _) = reads(&mut sauth, &bob, &root, &de);
    assert!(
        !bob_allowed,
        "a member of acme-eu may not write acme-eu-de's settings"
    );
    assert!(!bob_slugs.contains(&"acme".to_string()));
    assert!(bob_slugs.contains(&"globex".to_string()));

    let report: i64 = ssu
        .query_one("SELECT count(*) FROM truxe.security_report()", &[])
        .unwrap()
        .get(0);
    assert!(report > 0, "security_report answers on the standby");

    // metrics() reads only: it answers on the standby for a pg_monitor login
    let live: f64 = standby
        .client("app", MONITOR_LOGIN)
        .query_one(
            "SELECT value FROM truxe.metrics() WHERE metric = 'sessions_live'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(live, 2.0);

    // every write function fails with Postgres' own 25006
    for sql in [
        "SELECT * FROM truxe.create_session((SELECT id FROM truxe.users WHERE email = 'alice@example.com'))",
        "SELECT truxe.revoke_user_sessions((SELECT id FROM truxe.users WHERE email = 'bob@example.com'))",
        "SELECT * FROM truxe.rate_limit_hit('login:alice', 5)",
        "SELECT * FROM truxe.issue_magic_link('carol@example.com')",
        "SELECT * FROM truxe.cleanup_expired_data()",
        "SELECT truxe.cleanup_expired_sessions()",
        "SELECT truxe.record_usage((SELECT id FROM truxe.organizations WHERE slug = 'acme'), 'api_calls')",
        "SELECT truxe.purge_audit_logs('100 days')",
        "SELECT * FROM truxe.refresh_session(gen_random_uuid())",
        "SELECT truxe.revoke_session(gen_random_uuid())",
    ] {
        assert_eq!(sqlstate(ssvc.query(sql, &[])), "25006", "{sql}");
    }
    let mut tx = sauth.transaction().unwrap();
    tx.execute("SELECT truxe.set_context($1::text::uuid)", &[&alice])
        .unwrap();
    assert_eq!(
        sqlstate(tx.query("SELECT truxe.create_organization('new-org', 'New')", &[])),
        "25006"
    );
    drop(tx);

    // the primary still touches last_used_at, and the standby sees it once replayed
    svc.query(
        "SELECT * FROM truxe.validate_session($1::text::uuid)",
        &[&bob_jti],
    )
    .unwrap();
    primary.wait_for_replay(&standby);
    let fresh: bool = ssu
        .query_one(
            "SELECT last_used_at > now() - interval '1 minute' FROM truxe.sessions
              WHERE user_id = $1::text::uuid",
            &[&bob],
        )
        .unwrap()
        .get(0);
    assert!(fresh, "the primary's touch reached the standby");
}
