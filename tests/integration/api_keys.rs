//! API keys (docs/reference.md, "API keys"): a key is a member of its own org and nothing
//! more, never holds more than its creator, stops at once when revoked, expired or its
//! creator is removed, and a mistyped key is refused before any table read.
use crate::harness::{server, sqlstate, Tenants, TestDb};
use postgres::{Client, GenericClient};

const ACME: &str = "2a000000-0000-0000-0000-00000000000a";
const EU: &str = "2e000000-0000-0000-0000-00000000000e";
const BETA: &str = "2b000000-0000-0000-0000-00000000000b";
/// owner of ACME
const ADA: &str = "20000000-0000-0000-0000-0000000000a1";
/// admin of ACME
const ALI: &str = "20000000-0000-0000-0000-0000000000a2";
/// member of ACME
const CARL: &str = "20000000-0000-0000-0000-0000000000c1";
/// owner of BETA
const BOB: &str = "20000000-0000-0000-0000-0000000000b1";

/// ACME with its child EU, and BETA, under identity_mode = verified.
fn populated() -> TestDb {
    let db = server().fresh_db(true);
    Tenants::new()
        .user(ADA, "ada@x.example")
        .user(ALI, "ali@x.example")
        .user(CARL, "carl@x.example")
        .user(BOB, "bob@x.example")
        .org(ACME, "acme", "Acme", None)
        .org(BETA, "beta", "Beta", None)
        .org(EU, "acme-eu", "Acme EU", Some(ACME))
        .member(ACME, ADA, "owner")
        .member(ACME, ALI, "admin")
        .member(ACME, CARL, "member")
        .member(BETA, BOB, "owner")
        .member(EU, CARL, "member")
        .seed(&db);
    db.superuser()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET truxe.identity_mode = verified",
            db.name
        ))
        .expect("verified mode");
    db
}

/// Creates a key as `user` (through service_account acting for it): (key id, key).
fn create(db: &TestDb, user: &str, org: &str, scopes: &[&str]) -> (String, String) {
    let mut c = db.service();
    let mut t = c.transaction().unwrap();
    t.execute("SELECT truxe.set_context($1::text::uuid)", &[&user])
        .unwrap();
    let r = t
        .query_one(
            "SELECT key_id::text, key FROM truxe.create_api_key($1::text::uuid, 'ci', $2)",
            &[&org, &scopes],
        )
        .unwrap();
    t.commit().unwrap();
    (r.get(0), r.get(1))
}

/// authenticate_api_key: the org id of the identity it established, or None for no row.
fn authenticate(c: &mut impl GenericClient, key: &str) -> Option<String> {
    c.query(
        "SELECT org_id::text FROM truxe.authenticate_api_key($1)",
        &[&key],
    )
    .unwrap()
    .first()
    .map(|r| r.get(0))
}

/// Under a key: what every org-scoped table shows, one sorted line per table.
fn view(c: &mut impl GenericClient) -> Vec<String> {
    [
        ("organizations", "SELECT slug::text FROM truxe.organizations"),
        (
            "memberships",
            "SELECT DISTINCT o.slug::text FROM truxe.memberships m JOIN truxe.organizations o ON o.id = m.org_id",
        ),
        ("users", "SELECT email::text FROM truxe.users"),
        ("sessions", "SELECT id::text FROM truxe.sessions"),
        ("audit_logs", "SELECT DISTINCT action::text FROM truxe.audit_logs"),
        ("api_keys", "SELECT name FROM truxe.api_keys"),
    ]
    .iter()
    .map(|(table, sql)| {
        let mut rows: Vec<String> = c
            .query(*sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        rows.sort();
        format!("{table}: {}", rows.join(" "))
    })
    .collect()
}

#[test]
fn a_key_is_a_member_of_its_own_org_and_nothing_more() {
    let db = populated();
    let (id, key) = create(&db, ADA, ACME, &["users:read", "projects:*"]);
    assert!(
        key.len() == 108
            && key.starts_with("trx_")
            && key[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "the documented format trx_[0-9a-f]{{104}}: {key}"
    );
    let mut c = db.authenticated();
    let mut t = c.transaction().unwrap();
    let r = t
        .query_one(
            "SELECT key_id::text, org_id::text, scopes FROM truxe.authenticate_api_key($1)",
            &[&key],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), id);
    assert_eq!(r.get::<_, String>(1), ACME);
    assert_eq!(r.get::<_, Vec<String>>(2), ["users:read", "projects:*"]);
    let r = t
        .query_one(
            "SELECT truxe.current_user_id()::text, truxe.current_org_id()::text,
                    truxe.current_api_key_id()::text, truxe.identity_source()",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, Option<String>>(0), None);
    assert_eq!(r.get::<_, String>(1), ACME);
    assert_eq!(r.get::<_, String>(2), id);
    assert_eq!(r.get::<_, String>(3), "verified");
    // a joined member of acme: not of its child, not an admin anywhere
    assert_eq!(
        view(&mut t),
        [
            "organizations: acme",
            "memberships: acme",
            "users: ada@x.example ali@x.example carl@x.example",
            "sessions: ",
            "audit_logs: ",
            "api_keys: ",
        ]
    );
    for (org, permission, expected) in [
        (ACME, "users:read", true),
        (ACME, "projects:write", true),
        (ACME, "users:write", false),
        (ACME, "settings:read", false),
        (EU, "users:read", false),
        (BETA, "users:read", false),
    ] {
        let held: bool = t
            .query_one(
                "SELECT truxe.has_permission($1::text::uuid, $2)",
                &[&org, &permission],
            )
            .unwrap()
            .get(0);
        assert_eq!(held, expected, "has_permission({org}, {permission})");
    }
    assert_eq!(
        sqlstate(t.query(
            "SELECT * FROM truxe.create_api_key($1::text::uuid, 'x')",
            &[&ACME]
        )),
        "42501",
        "a key creates no key"
    );
    drop(t);

    // a key of beta sees nothing of acme
    let (_, beta_key) = create(&db, BOB, BETA, &[]);
    let mut t = c.transaction().unwrap();
    assert_eq!(authenticate(&mut t, &beta_key).as_deref(), Some(BETA));
    assert_eq!(
        view(&mut t),
        [
            "organizations: beta",
            "memberships: beta",
            "users: bob@x.example",
            "sessions: ",
            "audit_logs: ",
            "api_keys: ",
        ]
    );
    let acme_rows: i64 = t
        .query_one(
            "SELECT (SELECT count(*) FROM truxe.organizations WHERE id = $1::text::uuid)
                  + (SELECT count(*) FROM truxe.memberships WHERE org_id = $1::text::uuid)",
            &[&ACME],
        )
        .unwrap()
        .get(0);
    assert_eq!(acme_rows, 0);
}

#[test]
fn a_key_never_holds_more_than_its_creator() {
    let db = populated();
    let mut c = db.service();
    let attempt = |c: &mut Client, user: &str, org: &str, scopes: &[&str]| {
        let mut t = c.transaction().unwrap();
        t.execute("SELECT truxe.set_context($1::text::uuid)", &[&user])
            .unwrap();
        let r = t.query(
            "SELECT * FROM truxe.create_api_key($1::text::uuid, 'k', $2)",
            &[&org, &scopes],
        );
        r.map(|_| ())
    };
    // carl is a member: users:read and settings:read, nothing else
    attempt(&mut c, CARL, ACME, &["users:read"]).expect("a scope the creator holds");
    for scopes in [
        &["users:write"][..],
        &["*"],
        &["users:*"],
        &["users:read", "audit_logs:read"],
    ] {
        assert_eq!(
            sqlstate(attempt(&mut c, CARL, ACME, scopes)),
            "42501",
            "{scopes:?}"
        );
    }
    assert_eq!(
        sqlstate(attempt(&mut c, ALI, ACME, &["billing:write"])),
        "42501"
    );
    attempt(&mut c, ALI, ACME, &["users:*", "sessions:revoke"]).expect("admin wildcards");
    assert_eq!(
        sqlstate(attempt(&mut c, BOB, ACME, &[])),
        "42501",
        "not in the org"
    );
    assert_eq!(
        sqlstate(attempt(&mut c, CARL, ACME, &["nope"])),
        "22023",
        "invalid scope"
    );
    assert_eq!(
        sqlstate(c.query(
            "SELECT * FROM truxe.create_api_key($1::text::uuid, 'k')",
            &[&ACME]
        )),
        "42501",
        "no acting user"
    );
    // the creator's rights are read again when the key is used: a demoted creator's key
    // loses what the creator lost
    let (_, key) = create(&db, ALI, ACME, &["users:write"]);
    let holds = |db: &TestDb| -> bool {
        let mut c = db.authenticated();
        let mut t = c.transaction().unwrap();
        assert!(authenticate(&mut t, &key).is_some());
        t.query_one(
            "SELECT truxe.has_permission($1::text::uuid, 'users:write')",
            &[&ACME],
        )
        .unwrap()
        .get(0)
    };
    assert!(holds(&db));
    db.superuser()
        .execute(
            "UPDATE truxe.memberships SET role = 'member' WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid",
            &[&ACME, &ALI],
        )
        .unwrap();
    assert!(!holds(&db), "the key outranked its demoted creator");
}

/// `revoke_api_key` as `user`, through an authenticated login with a verified session.
fn revoke_as(db: &TestDb, user: &str, key_id: &str) -> bool {
    let jti: String = db
        .service()
        .query_one(
            "SELECT jti::text FROM truxe.create_session($1::text::uuid)",
            &[&user],
        )
        .unwrap()
        .get(0);
    let mut c = db.authenticated();
    let mut t = c.transaction().unwrap();
    assert_eq!(
        t.query("SELECT 1 FROM truxe.authenticate($1)", &[&jti])
            .unwrap()
            .len(),
        1
    );
    let revoked = t
        .query_one("SELECT truxe.revoke_api_key($1::text::uuid)", &[&key_id])
        .unwrap()
        .get(0);
    t.commit().unwrap();
    revoked
}

#[test]
fn revoked_expired_or_orphaned_keys_stop_at_once() {
    let db = populated();
    let mut c = db.authenticated();

    // revocation: not by an outsider or a fellow member (false, alike an unknown id), by an
    // admin of the org once, and the key stops at once
    let (id, key) = create(&db, CARL, ACME, &[]);
    assert_eq!(authenticate(&mut c, &key).as_deref(), Some(ACME));
    assert!(!revoke_as(&db, BOB, &id), "an outsider revoked it");
    assert!(!revoke_as(&db, ADA, "00000000-0000-0000-0000-000000000000"));
    let (other_id, _) = create(&db, ADA, ACME, &[]);
    assert!(
        !revoke_as(&db, CARL, &other_id),
        "a member revoked the owner's key"
    );
    assert!(revoke_as(&db, ALI, &id), "an admin of the org revokes");
    assert!(!revoke_as(&db, ALI, &id), "already revoked");
    assert_eq!(authenticate(&mut c, &key), None, "a revoked key");
    // its creator revokes their own
    let (mine, _) = create(&db, CARL, ACME, &[]);
    assert!(revoke_as(&db, CARL, &mine));

    // expiry
    let (expired_id, key) = create(&db, CARL, ACME, &[]);
    db.superuser()
        .execute(
            "UPDATE truxe.api_keys SET created_at = now() - interval '2 hours',
                    expires_at = now() - interval '1 hour' WHERE id = $1::text::uuid",
            &[&expired_id],
        )
        .unwrap();
    assert_eq!(authenticate(&mut c, &key), None, "an expired key");

    // the creator's removal revokes their keys there and in descendants they lose
    let (acme_id, acme_key) = create(&db, CARL, ACME, &[]);
    let (eu_id, eu_key) = create(&db, CARL, EU, &[]);
    let mut service = db.service();
    let mut t = service.transaction().unwrap();
    t.execute("SELECT truxe.set_context($1::text::uuid)", &[&ADA])
        .unwrap();
    t.execute(
        "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
        &[&ACME, &CARL],
    )
    .unwrap();
    t.commit().unwrap();
    assert_eq!(
        authenticate(&mut c, &acme_key),
        None,
        "a removed creator's key"
    );
    assert_eq!(
        authenticate(&mut c, &eu_key).as_deref(),
        Some(EU),
        "carl is still a member of acme-eu: that key lives on"
    );
    let mut audited: Vec<String> = db
        .superuser()
        .query(
            "SELECT target_id FROM truxe.audit_logs
              WHERE action = 'api_key.revoked' AND details ->> 'reason' = 'creator_removed'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    audited.sort();
    let mut expected = vec![acme_id, expired_id];
    expected.sort();
    assert_eq!(
        audited, expected,
        "carl's live acme keys (expired or not), not the acme-eu one"
    );
    let eu_revoked: bool = db
        .superuser()
        .query_one(
            "SELECT revoked_at IS NOT NULL FROM truxe.api_keys WHERE id = $1::text::uuid",
            &[&eu_id],
        )
        .unwrap()
        .get(0);
    assert!(!eu_revoked);
    // a suspended creator's keys stop too (checked on every use)
    db.superuser()
        .execute(
            "UPDATE truxe.users SET status = 'suspended' WHERE id = $1::text::uuid",
            &[&CARL],
        )
        .unwrap();
    assert_eq!(
        authenticate(&mut c, &eu_key),
        None,
        "a suspended creator's key"
    );
}

/// The number of index and sequential scans of truxe.api_keys the statistics have seen.
fn key_table_reads(db: &TestDb) -> i64 {
    db.superuser()
        .query_one(
            "SELECT pg_stat_clear_snapshot(), coalesce(idx_scan, 0) + coalesce(seq_scan, 0)
               FROM pg_stat_all_tables WHERE relid = 'truxe.api_keys'::regclass",
            &[],
        )
        .unwrap()
        .get(1)
}

/// Flushes this connection's table statistics now (not within the next second).
fn flush_stats(c: &mut Client) {
    c.batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    c.batch_execute("SELECT 1").unwrap();
}

#[test]
fn a_mistyped_key_is_refused_without_a_table_read() {
    let db = populated();
    let (_, key) = create(&db, ADA, ACME, &[]);
    let mut c = db.authenticated();
    flush_stats(&mut c);
    let before = key_table_reads(&db);
    let mega = "x".repeat(1 << 20);
    let mut garbage: Vec<String> = vec![String::new(), "trx_".into(), mega, key.to_uppercase()];
    for i in 4..key.len() {
        let mut typo = key.clone().into_bytes();
        typo[i] = if typo[i] == b'0' { b'1' } else { b'0' };
        garbage.push(String::from_utf8(typo).unwrap());
    }
    for g in &garbage {
        assert_eq!(authenticate(&mut c, g), None, "{:.40}", g);
    }
    let none: Vec<postgres::Row> = c
        .query("SELECT * FROM truxe.authenticate_api_key(NULL)", &[])
        .unwrap();
    assert!(none.is_empty());
    flush_stats(&mut c);
    assert_eq!(
        key_table_reads(&db),
        before,
        "{} malformed keys read the table",
        garbage.len()
    );
    // the control: a well-formed key is looked up (the counter can move)
    assert_eq!(authenticate(&mut c, &key).as_deref(), Some(ACME));
    flush_stats(&mut c);
    assert!(
        key_table_reads(&db) > before,
        "the statistics saw no lookup at all"
    );
}

/// A key writes an application table that protect_table guards, within its scopes and its
/// org only (permitted_org_ids knows keys), and audit_table's rows name the key.
#[test]
fn a_key_writes_a_protected_table_within_its_scope_and_is_named_in_the_audit_row() {
    let db = populated();
    db.superuser()
        .batch_execute(
            "CREATE TABLE public.projects (id bigserial PRIMARY KEY, org_id uuid NOT NULL, name text NOT NULL);
             GRANT SELECT, INSERT, UPDATE, DELETE ON public.projects TO authenticated;
             GRANT USAGE ON SEQUENCE public.projects_id_seq TO authenticated;
             SELECT truxe.protect_table('public.projects');
             SELECT truxe.audit_table('public.projects');",
        )
        .unwrap();
    let (writer_id, writer) = create(&db, ADA, ACME, &["projects:write"]);
    let (_, reader) = create(&db, ADA, ACME, &["users:read"]);
    let mut c = db.authenticated();

    let mut t = c.transaction().unwrap();
    assert!(authenticate(&mut t, &writer).is_some());
    t.execute(
        "INSERT INTO public.projects (org_id, name) VALUES ($1::text::uuid, 'apollo')",
        &[&ACME],
    )
    .unwrap();
    t.execute("SAVEPOINT s", &[]).unwrap();
    assert_eq!(
        sqlstate(t.execute(
            "INSERT INTO public.projects (org_id, name) VALUES ($1::text::uuid, 'mole')",
            &[&BETA]
        )),
        "42501",
        "another org"
    );
    t.execute("ROLLBACK TO SAVEPOINT s", &[]).unwrap();
    t.commit().unwrap();

    let mut t = c.transaction().unwrap();
    assert!(authenticate(&mut t, &reader).is_some());
    let seen: i64 = t
        .query_one("SELECT count(*) FROM public.projects", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 1, "a key reads its org's rows");
    let updated = t
        .execute("UPDATE public.projects SET name = 'renamed'", &[])
        .unwrap();
    assert_eq!(updated, 0, "no projects:write scope");
    t.commit().unwrap();

    let r = db
        .superuser()
        .query_one(
            "SELECT actor_user_id::text, details ->> 'api_key_id' FROM truxe.audit_logs
              WHERE action = 'projects.created'",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, Option<String>>(0), None);
    assert_eq!(
        r.get::<_, Option<String>>(1).as_deref(),
        Some(writer_id.as_str())
    );
}
