//! The application's own tables (README, "Your own tables"): protect_table's tenant
//! policies on an app table as real NOSUPERUSER logins, unprotect_table, audit_table's rows,
//! and application-defined audit actions (the sealed audit log: seal.rs).
use crate::harness::{as_user, server, sorted, sqlstate, strings, Tenants, TestDb, SERVICE_LOGIN};
use postgres::Client;

const ORG_A: &str = "a0000000-0000-0000-0000-00000000000a";
const ORG_A1: &str = "a1000000-0000-0000-0000-0000000000a1"; // child of A
const ORG_B: &str = "b0000000-0000-0000-0000-00000000000b";
const ALICE: &str = "00000000-0000-0000-0000-00000000a11c"; // owner of A
const ADAM: &str = "00000000-0000-0000-0000-00000000ad00"; // admin of A
const BOB: &str = "00000000-0000-0000-0000-000000000b0b"; // member of A, extra projects:write
const ERIN: &str = "00000000-0000-0000-0000-00000000e217"; // member of A1
const CAROL: &str = "00000000-0000-0000-0000-0000000ca201"; // owner of B
const OSCAR: &str = "00000000-0000-0000-0000-00000000050c"; // member of nothing

/// Two tenants (A with child A1, and B), the personas above, and an app table `projects`
/// (owned by the superuser, privileges for authenticated) with one row per org, protected
/// with its defaults. Admins hold `projects:*` by role default; bob holds `projects:write`
/// through his membership's own permissions.
fn tenants() -> TestDb {
    let db = server().fresh_db(true);
    Tenants::new()
        .user(ALICE, "alice@a.example")
        .user(ADAM, "adam@a.example")
        .user(BOB, "bob@a.example")
        .user(ERIN, "erin@a.example")
        .user(CAROL, "carol@b.example")
        .user(OSCAR, "oscar@o.example")
        .org(ORG_A, "org-a", "A", None)
        .org(ORG_B, "org-b", "B", None)
        .org(ORG_A1, "org-a1", "A1", Some(ORG_A))
        .member(ORG_A, ALICE, "owner")
        .member(ORG_A, ADAM, "admin")
        .member(ORG_A, BOB, "member")
        .permissions(r#"["projects:write"]"#)
        .member(ORG_A1, ERIN, "member")
        .member(ORG_B, CAROL, "owner")
        .seed(&db);
    db.superuser()
        .batch_execute(&format!(
            "INSERT INTO truxe.role_permissions VALUES ('admin', 'projects:*');
             CREATE TABLE public.projects (
               id bigserial PRIMARY KEY, org_id uuid NOT NULL, name text NOT NULL,
               meta jsonb NOT NULL DEFAULT '{{}}');
             GRANT SELECT, INSERT, UPDATE, DELETE ON public.projects TO authenticated, service_account;
             GRANT USAGE ON SEQUENCE public.projects_id_seq TO authenticated, service_account;
             INSERT INTO public.projects (org_id, name) VALUES
               ('{ORG_A}', 'a'), ('{ORG_A1}', 'a1'), ('{ORG_B}', 'b');
             SELECT truxe.protect_table('public.projects');"
        ))
        .expect("tenants");
    db
}

/// A persona: name, user, orgs whose rows they read, orgs where they write.
type Persona = (
    &'static str,
    Option<&'static str>,
    &'static [&'static str],
    &'static [&'static str],
);

const MATRIX: [Persona; 7] = [
    ("no context", None, &[], &[]),
    (
        "alice (owner of A)",
        Some(ALICE),
        &[ORG_A, ORG_A1],
        &[ORG_A, ORG_A1],
    ),
    (
        "adam (admin of A)",
        Some(ADAM),
        &[ORG_A, ORG_A1],
        &[ORG_A, ORG_A1],
    ),
    (
        "bob (member of A, projects:write)",
        Some(BOB),
        &[ORG_A],
        &[ORG_A],
    ),
    ("erin (member of A1)", Some(ERIN), &[ORG_A1], &[]),
    ("carol (owner of B)", Some(CAROL), &[ORG_B], &[ORG_B]),
    ("oscar (outsider)", Some(OSCAR), &[], &[]),
];

/// Runs `sql` ($1 = the org) in a transaction that is rolled back: the rows it affected,
/// or the SQLSTATE.
fn try_write(c: &mut Client, sql: &str, org: &str) -> Result<u64, String> {
    let mut tx = c.transaction().unwrap();
    let r = tx.execute(sql, &[&org]);
    tx.rollback().unwrap();
    r.map_err(|e| e.code().map(|c| c.code().to_string()).unwrap_or_default())
}

/// The RLS matrix of truxe's own tables, on an application table: read, insert, update and
/// delete for two tenants, a parent and its child, owner/admin/member/outsider, no context.
#[test]
fn protect_table_rls_matrix() {
    let db = tenants();
    for (name, user, reads, writes) in MATRIX {
        let mut c = as_user(&db, user);
        assert_eq!(
            strings(&mut c, "SELECT org_id::text FROM public.projects"),
            sorted(reads),
            "{name} reads"
        );
        for org in [ORG_A, ORG_A1, ORG_B] {
            let may = writes.contains(&org);
            let insert = try_write(
                &mut c,
                "INSERT INTO public.projects (org_id, name) VALUES ($1::text::uuid, 'new')",
                org,
            );
            assert_eq!(
                insert,
                if may { Ok(1) } else { Err("42501".into()) },
                "{name} inserts into {org}"
            );
            let update = try_write(
                &mut c,
                "UPDATE public.projects SET name = name || '!' WHERE org_id = $1::text::uuid",
                org,
            );
            assert_eq!(update, Ok(u64::from(may)), "{name} updates in {org}");
            let delete = try_write(
                &mut c,
                "DELETE FROM public.projects WHERE org_id = $1::text::uuid",
                org,
            );
            assert_eq!(delete, Ok(u64::from(may)), "{name} deletes in {org}");
        }
    }
    // moving a row into an org where the user may not write: the new row is checked too
    let mut alice = db.acting_as(ALICE);
    assert_eq!(
        sqlstate(alice.execute(
            "UPDATE public.projects SET org_id = $1::text::uuid WHERE org_id = $2::text::uuid",
            &[&ORG_B, &ORG_A]
        )),
        "42501"
    );
    // the trusted backend sees and writes everything; a login with neither role nothing
    let mut s = db.service();
    assert_eq!(
        strings(&mut s, "SELECT org_id::text FROM public.projects").len(),
        3
    );
    assert_eq!(
        try_write(
            &mut s,
            "UPDATE public.projects SET name = 'x' WHERE org_id = $1::text::uuid",
            ORG_B
        ),
        Ok(1)
    );
    assert_eq!(
        sqlstate(db.nobody().query("SELECT * FROM public.projects", &[])),
        "42501"
    );
}

/// permitted_org_ids: the orgs of the matrix, empty with no context, 22023 for a
/// malformed permission.
#[test]
fn permitted_org_ids_follows_has_permission() {
    let db = tenants();
    for (name, user, _, writes) in MATRIX {
        let mut c = as_user(&db, user);
        assert_eq!(
            strings(
                &mut c,
                "SELECT unnest(truxe.permitted_org_ids('projects:write'))::text"
            ),
            sorted(writes),
            "{name}"
        );
    }
    let mut bob = db.acting_as(BOB);
    for bad in ["projects", "*", "projects:*", "Projects:write", "a:b:c"] {
        assert_eq!(
            sqlstate(bob.query_one("SELECT truxe.permitted_org_ids($1)", &[&bad])),
            "22023",
            "{bad}"
        );
    }
    // a suspended user holds nothing
    db.superuser()
        .execute(
            "UPDATE truxe.users SET status = 'suspended' WHERE id = $1::text::uuid",
            &[&ALICE],
        )
        .unwrap();
    let mut alice = db.acting_as(ALICE);
    assert!(strings(
        &mut alice,
        "SELECT unnest(truxe.permitted_org_ids('projects:write'))::text"
    )
    .is_empty());
}

fn policies(c: &mut Client) -> Vec<String> {
    strings(
        c,
        "SELECT polname::text FROM pg_policy WHERE polrelid = 'public.projects'::regclass",
    )
}

fn org_indexes(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_index i WHERE i.indrelid = 'public.projects'::regclass
            AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                WHERE attrelid = 'public.projects'::regclass AND attname = 'org_id')",
        &[],
    )
    .unwrap()
    .get(0)
}

fn rls_flags(c: &mut Client) -> (bool, bool) {
    let r = c
        .query_one(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.projects'::regclass",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn app_tables_check(c: &mut Client) -> (bool, String) {
    let r = c
        .query_one(
            "SELECT ok, detail FROM truxe.security_report() WHERE check_name = 'app_tables_rls'",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// A second protect_table changes nothing; unprotect_table removes the policies, the index
/// it made (not one the app made) and RLS; security_report flags the unprotected table.
#[test]
fn protect_table_is_idempotent_and_unprotect_table_undoes_it() {
    let db = tenants();
    let mut su = db.superuser();
    let all = sorted(&[
        "truxe_delete",
        "truxe_insert",
        "truxe_read",
        "truxe_service",
        "truxe_update",
    ]);
    assert_eq!(policies(&mut su), all);
    assert_eq!(org_indexes(&mut su), 1);
    assert_eq!(rls_flags(&mut su), (true, true), "enabled and forced");
    assert!(app_tables_check(&mut su).0);
    su.batch_execute("SELECT truxe.protect_table('public.projects')")
        .unwrap();
    assert_eq!(policies(&mut su), all);
    assert_eq!(org_indexes(&mut su), 1, "no second index");
    let mut bob = db.acting_as(BOB);
    assert_eq!(
        strings(&mut bob, "SELECT org_id::text FROM public.projects"),
        sorted(&[ORG_A])
    );

    su.batch_execute("SELECT truxe.unprotect_table('public.projects')")
        .unwrap();
    assert!(policies(&mut su).is_empty());
    assert_eq!(org_indexes(&mut su), 0, "the index protect_table made");
    assert_eq!(rls_flags(&mut su), (false, false));
    let (ok, detail) = app_tables_check(&mut su);
    assert!(!ok && detail.contains("public.projects"), "{detail}");
    su.batch_execute("SELECT truxe.unprotect_table('public.projects')")
        .unwrap();

    // an index of the app's own is used, and kept
    su.batch_execute(
        "CREATE INDEX projects_by_org ON public.projects (org_id, name);
         SELECT truxe.protect_table('public.projects');
         SELECT truxe.unprotect_table('public.projects');",
    )
    .unwrap();
    assert_eq!(org_indexes(&mut su), 1, "projects_by_org stays");
}

/// Bad tables and callers: no such column or not a uuid 22023, a name that makes no
/// permission 22023, truxe's own tables 22023, a caller who does not own the table 42501
/// (before anything else is looked at), authenticated cannot call it at all.
#[test]
fn protect_and_audit_table_refuse_what_they_must() {
    let db = tenants();
    let mut su = db.superuser();
    su.batch_execute(
        "CREATE TABLE public.notes (id int PRIMARY KEY, tenant text);
         CREATE TABLE public.\"Mixed\" (id int PRIMARY KEY, org_id uuid);
         CREATE TABLE public.\"user\" (id int PRIMARY KEY, org_id uuid);",
    )
    .unwrap();
    for sql in [
        "SELECT truxe.protect_table('public.notes')",
        "SELECT truxe.protect_table('public.notes', 'tenant')",
        "SELECT truxe.protect_table('public.\"Mixed\"')",
        "SELECT truxe.protect_table('truxe.users', 'id')",
        "SELECT truxe.audit_table('public.notes')",
        "SELECT truxe.audit_table('public.\"Mixed\"')",
        "SELECT truxe.audit_table('public.\"user\"')",
        "SELECT truxe.audit_table('truxe.memberships')",
    ] {
        assert_eq!(sqlstate(su.batch_execute(sql)), "22023", "{sql}");
    }
    // a resource given explicitly makes a valid permission
    su.batch_execute("SELECT truxe.protect_table('public.\"Mixed\"', resource => 'mixed')")
        .unwrap();
    // service_account may call them, but owns no table here: the same 42501 for a table
    // without the column
    let mut s = db.service();
    for sql in [
        "SELECT truxe.protect_table('public.projects')",
        "SELECT truxe.protect_table('public.notes')",
        "SELECT truxe.unprotect_table('public.projects')",
        "SELECT truxe.audit_table('public.projects')",
        "SELECT truxe.audit_table('public.notes')",
    ] {
        assert_eq!(sqlstate(s.batch_execute(sql)), "42501", "{sql}");
    }
    let mut a = db.acting_as(ALICE);
    assert_eq!(
        sqlstate(a.batch_execute("SELECT truxe.unprotect_table('public.projects')")),
        "42501"
    );
    assert_eq!(
        policies(&mut su).len(),
        5,
        "nothing was removed by a stranger"
    );
}

/// The plan evaluates the helper once per statement (an InitPlan), not once per row, on a
/// table of 100k rows, and uses the org_id index: the function is called once per policy
/// clause, whatever the number of rows.
#[test]
fn policies_evaluate_the_helper_once_per_statement() {
    let db = tenants();
    let mut su = db.superuser();
    su.batch_execute(&format!(
        "INSERT INTO public.projects (org_id, name)
           SELECT CASE WHEN g % 1000 = 0 THEN '{ORG_A}'::uuid
                       ELSE ('00000000-0000-0000-0003-' || lpad((g % 1000)::text, 12, '0'))::uuid END,
                  'p' || g
             FROM generate_series(1, 100000) g;
         ANALYZE public.projects;
         ALTER DATABASE {} SET track_functions = 'all';",
        db.name
    ))
    .unwrap();
    let mut c = db.acting_as(ALICE);
    // an UPDATE has two policy clauses (USING, WITH CHECK): one InitPlan each
    for (sql, helper, once) in [
        ("SELECT * FROM public.projects", "accessible_org_ids", 1),
        (
            "UPDATE public.projects SET name = name || '!' WHERE name LIKE 'p1%'",
            "permitted_org_ids",
            2,
        ),
    ] {
        let plan: Vec<String> = c
            .query(
                &format!("EXPLAIN (ANALYZE, VERBOSE, COSTS OFF, TIMING OFF, SUMMARY OFF) {sql}"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let text = plan.join("\n");
        assert!(text.contains("InitPlan"), "{sql}:\n{text}");
        assert!(!text.contains("SubPlan"), "{sql}:\n{text}");
        assert!(
            !text.contains("Seq Scan"),
            "the org_id index: {sql}:\n{text}"
        );
        // every node that calls the helper is an InitPlan's Result that ran once
        for (i, line) in plan.iter().enumerate() {
            if line.contains(helper) {
                let node = plan[..i].iter().rev().find(|l| l.contains("->")).unwrap();
                assert!(
                    node.contains("Result") && node.contains("loops=1"),
                    "{helper} in {node}:\n{text}"
                );
            }
        }
        // calls counted in this backend and not yet reported: the difference around it
        let counter = format!(
            "SELECT coalesce(pg_stat_get_xact_function_calls('truxe.{helper}'::regproc::oid), 0)"
        );
        let mut tx = c.transaction().unwrap();
        let before: i64 = tx.query_one(&counter, &[]).unwrap().get(0);
        tx.execute(sql, &[]).unwrap();
        let after: i64 = tx.query_one(&counter, &[]).unwrap().get(0);
        tx.rollback().unwrap();
        let calls = after - before;
        assert_eq!(calls, once, "{helper} calls for {sql}");
    }
}

/// One audit row per inserted, updated and deleted row: action, actor, org, request
/// context, target, values (only the changed columns of an update); none for a no-op
/// update; the org's admins read them, other tenants do not.
#[test]
fn audit_table_writes_one_row_per_change() {
    let db = tenants();
    let mut su = db.superuser();
    su.batch_execute(
        "SELECT truxe.audit_table('public.projects'); SELECT truxe.audit_table('public.projects');",
    )
    .unwrap();
    let mut bob = db.acting_as(BOB);
    bob.batch_execute("SET app.ip = '203.0.113.9'").unwrap();
    let id: i64 = bob
        .query_one(
            "INSERT INTO public.projects (org_id, name) VALUES ($1::text::uuid, 'apollo') RETURNING id",
            &[&ORG_A],
        )
        .unwrap()
        .get(0);
    bob.execute(
        "UPDATE public.projects SET name = 'artemis' WHERE id = $1",
        &[&id],
    )
    .unwrap();
    assert_eq!(
        bob.execute("UPDATE public.projects SET name = name, meta = meta", &[])
            .unwrap(),
        2,
        "a no-op update of two rows"
    );
    bob.execute("DELETE FROM public.projects WHERE id = $1", &[&id])
        .unwrap();
    let rows = su
        .query(
            "SELECT action, org_id::text, actor_user_id::text, target_type, target_id,
                    details::text, host(ip)
               FROM truxe.audit_logs WHERE action LIKE 'projects.%' ORDER BY id",
            &[],
        )
        .unwrap();
    type AuditRow = (String, String, String, String, String, String, String);
    let got: Vec<AuditRow> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    let row = |action: &str, details: String| {
        (
            action.to_string(),
            ORG_A.to_string(),
            BOB.to_string(),
            "public.projects".to_string(),
            id.to_string(),
            details,
            "203.0.113.9".to_string(),
        )
    };
    let whole = |name: &str| {
        format!("{{\"id\": {id}, \"meta\": {{}}, \"name\": \"{name}\", \"org_id\": \"{ORG_A}\"}}")
    };
    assert_eq!(
        got,
        vec![
            row(
                "projects.created",
                format!("{{\"new\": {}, \"table\": \"public.projects\"}}", whole("apollo"))
            ),
            row(
                "projects.updated",
                "{\"new\": {\"name\": \"artemis\"}, \"old\": {\"name\": \"apollo\"}, \"table\": \"public.projects\"}".into()
            ),
            row(
                "projects.deleted",
                format!("{{\"old\": {}, \"table\": \"public.projects\"}}", whole("artemis"))
            ),
        ]
    );
    // A's owner reads them in A's trail; B's owner does not
    let mut alice = db.acting_as(ALICE);
    let n: i64 = alice
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE action LIKE 'projects.%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let mut carol = db.acting_as(CAROL);
    let n: i64 = carol
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE action LIKE 'projects.%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // without a primary key: no target; without an org column: no org
    su.batch_execute(
        "CREATE TABLE public.events (org_id uuid, what text);
         SELECT truxe.audit_table('public.events');
         INSERT INTO public.events VALUES (NULL, 'x');
         CREATE TABLE public.prefs (k text PRIMARY KEY, v text);
         SELECT truxe.audit_table('public.prefs', NULL);
         INSERT INTO public.prefs VALUES ('k', 'v');",
    )
    .unwrap();
    let r = su
        .query_one(
            "SELECT target_type IS NULL AND target_id IS NULL FROM truxe.audit_logs WHERE action = 'events.created'",
            &[],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0));
    let r = su
        .query_one(
            "SELECT org_id IS NULL AND target_id = 'k' FROM truxe.audit_logs WHERE action = 'prefs.created'",
            &[],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0));
}

/// The row is read as the role that changed it: an application type's cast to json runs
/// with that role's rights, never the extension owner's.
#[test]
fn audit_table_reads_the_row_as_the_writer() {
    let db = tenants();
    db.superuser()
        .batch_execute(&format!("CREATE SCHEMA app AUTHORIZATION {SERVICE_LOGIN}"))
        .unwrap();
    let mut s = db.service();
    s.batch_execute(
        "CREATE TYPE app.mood AS ENUM ('fine');
         CREATE FUNCTION app.mood_json(app.mood) RETURNS json LANGUAGE sql AS
           $$ SELECT to_json(current_user::text) $$;
         CREATE CAST (app.mood AS json) WITH FUNCTION app.mood_json(app.mood);
         CREATE TABLE app.moods (id int PRIMARY KEY, org_id uuid, m app.mood);
         SELECT truxe.audit_table('app.moods');",
    )
    .unwrap();
    s.execute(
        "INSERT INTO app.moods VALUES (1, $1::text::uuid, 'fine')",
        &[&ORG_A],
    )
    .unwrap();
    let who: String = db
        .superuser()
        .query_one(
            "SELECT details -> 'new' ->> 'm' FROM truxe.audit_logs WHERE action = 'moods.created'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(who, SERVICE_LOGIN);
}

/// Application-defined actions are validated (23514 for anything but 'resource.verb');
/// truxe's own stay out of authenticated's reach (42501).
#[test]
fn app_actions_are_validated() {
    let db = tenants();
    let mut bob = db.acting_as(BOB);
    let insert = |c: &mut Client, action: &str| {
        c.execute(
            "INSERT INTO truxe.audit_logs (org_id, actor_user_id, action) VALUES ($1::text::uuid, truxe.current_user_id(), $2)",
            &[&ORG_A, &action],
        )
    };
    insert(&mut bob, "report.exported").unwrap();
    insert(&mut bob, "invoice2.paid_late").unwrap();
    for bad in [
        "report",
        "Report.exported",
        "report.exported.twice",
        "report.",
        ".x",
        "2fa.ok",
        "a b.c",
        &format!("r.{}", "x".repeat(200)),
    ] {
        assert_eq!(sqlstate(insert(&mut bob, bad)), "23514", "{bad}");
    }
    assert_eq!(sqlstate(insert(&mut bob, "user.login")), "42501");
    let mut s = db.service();
    assert_eq!(
        sqlstate(s.execute("INSERT INTO truxe.audit_logs (action) VALUES ('nope')", &[])),
        "23514"
    );
}

/// The audit row of an application table carries the row's values as jsonb from SQL to SQL
/// (audit::write, the one writer of audit rows): a jsonb column nested deeper than serde's
/// 128 levels is recorded like any other value. (Before, the values went through serde,
/// whose refusal was a panic: the application's write failed with XX000.)
#[test]
fn audit_table_records_deeply_nested_values() {
    let db = tenants();
    let mut su = db.superuser();
    su.batch_execute("SELECT truxe.audit_table('public.projects')")
        .unwrap();
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let mut bob = db.acting_as(BOB);
    let id: i64 = bob
        .query_one(
            "INSERT INTO public.projects (org_id, name, meta) VALUES ($1::text::uuid, 'deep', $2::text::jsonb)
             RETURNING id",
            &[&ORG_A, &deep],
        )
        .expect("a deeply nested value is audited")
        .get(0);
    bob.execute(
        "UPDATE public.projects SET meta = $2::text::jsonb WHERE id = $1",
        &[&id, &format!("[{deep}]")],
    )
    .expect("and updated");
    let recorded: Vec<(String, bool)> = su
        .query(
            "SELECT action, CASE action
                              WHEN 'projects.created' THEN details -> 'new' -> 'meta' = $1::text::jsonb
                              ELSE details -> 'old' -> 'meta' = $1::text::jsonb
                                   AND details -> 'new' -> 'meta' = ('[' || $1 || ']')::jsonb END
               FROM truxe.audit_logs WHERE action LIKE 'projects.%' ORDER BY id",
            &[&deep],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        recorded,
        [
            ("projects.created".to_string(), true),
            ("projects.updated".to_string(), true)
        ]
    );
}
