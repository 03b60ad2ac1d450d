//! `CREATE EXTENSION truxe CASCADE` and `DROP EXTENSION truxe`.
use crate::harness::{create_extension, server};
use postgres::Client;

/// Every object of the database outside pg_catalog/information_schema/pg_toast, as
/// "kind schema.name" lines, sorted: what CREATE/DROP EXTENSION may have changed.
fn catalog_snapshot(c: &mut Client) -> Vec<String> {
    let rows = c
        .query(
            "SELECT kind || ' ' || coalesce(nsp, '-') || '.' || name AS obj FROM (
               SELECT 'class' AS kind, n.nspname AS nsp, r.relname AS name
                 FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace
               UNION ALL SELECT 'proc', n.nspname, p.oid::regprocedure::text
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               UNION ALL SELECT 'type', n.nspname, t.typname
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
               UNION ALL SELECT 'operator', n.nspname, o.oid::regoperator::text
                 FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
               UNION ALL SELECT 'schema', NULL, nspname FROM pg_namespace
               UNION ALL SELECT 'policy', NULL, polname || ' on ' || polrelid::regclass::text
                 FROM pg_policy
               UNION ALL SELECT 'trigger', NULL, tgname FROM pg_trigger
               UNION ALL SELECT 'event_trigger', NULL, evtname FROM pg_event_trigger
               UNION ALL SELECT 'extension', NULL, extname FROM pg_extension
               UNION ALL SELECT 'fdw', NULL, fdwname FROM pg_foreign_data_wrapper
             ) o
             WHERE coalesce(nsp, '') NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
             ORDER BY 1",
            &[],
        )
        .expect("catalog snapshot");
    rows.iter().map(|r| r.get(0)).collect()
}

#[test]
fn create_extension_cascade_makes_schema_truxe_and_nothing_of_truxe_in_public() {
    let db = server().fresh_db(false);
    let mut c = db.superuser();
    let before = catalog_snapshot(&mut c);
    create_extension(&mut c);

    let ext_schema: String = c
        .query_one(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'truxe'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ext_schema, "truxe", "the extension lives in schema truxe");

    let deps: Vec<String> = c
        .query(
            "SELECT extname FROM pg_extension WHERE extname IN ('citext', 'pg_trgm') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        deps,
        ["citext", "pg_trgm"],
        "CASCADE installs the required extensions"
    );

    // Objects new in public may only be members of citext or pg_trgm (CASCADE installs
    // them in the default creation schema, as Postgres always does): nothing of truxe.
    let stray: Vec<String> = c
        .query(
            "WITH public_objs AS (
               SELECT 'pg_class'::regclass AS classid, oid, relname::text AS name
                 FROM pg_class WHERE relnamespace = 'public'::regnamespace
               UNION ALL SELECT 'pg_proc'::regclass, oid, oid::regprocedure::text
                 FROM pg_proc WHERE pronamespace = 'public'::regnamespace
               UNION ALL SELECT 'pg_type'::regclass, oid, typname::text
                 FROM pg_type WHERE typnamespace = 'public'::regnamespace
               UNION ALL SELECT 'pg_operator'::regclass, oid, oid::regoperator::text
                 FROM pg_operator WHERE oprnamespace = 'public'::regnamespace
             )
             SELECT o.name FROM public_objs o
              WHERE NOT EXISTS (
                SELECT 1 FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                 WHERE d.classid = o.classid AND d.objid = o.oid AND d.deptype = 'e'
                   AND e.extname IN ('citext', 'pg_trgm'))
                AND NOT (o.classid = 'pg_type'::regclass AND EXISTS (
                  -- array types of citext's types are implicit, not members
                  SELECT 1 FROM pg_type t WHERE t.oid = o.oid AND t.typelem <> 0))",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        stray.is_empty(),
        "objects in public not owned by citext/pg_trgm: {stray:?}"
    );

    let truxe_in_public: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_depend d
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'truxe'
              WHERE d.deptype = 'e' AND pg_describe_object(d.classid, d.objid, d.objsubid)
                    LIKE '% public.%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(truxe_in_public, 0, "no truxe member object in public");

    let after = catalog_snapshot(&mut c);
    assert!(
        after.len() > before.len(),
        "CREATE EXTENSION created objects"
    );
    assert!(
        after.iter().any(|o| o == "proc truxe.truxe.version()"),
        "{after:?}"
    );
}

#[test]
fn drop_extension_leaves_no_truxe_object_behind() {
    let db = server().fresh_db(false);
    let mut c = db.superuser();
    // the required extensions stay after DROP EXTENSION truxe: take them as the baseline
    c.batch_execute("CREATE EXTENSION citext; CREATE EXTENSION pg_trgm;")
        .unwrap();
    let before = catalog_snapshot(&mut c);
    create_extension(&mut c);
    assert_ne!(catalog_snapshot(&mut c), before);
    c.batch_execute("DROP EXTENSION truxe").unwrap();
    // Postgres created schema truxe from the control file before the extension existed,
    // so it is not an extension member and stays, empty (README, "Create and drop").
    let mut expected = before.clone();
    expected.push("schema -.truxe".to_string());
    expected.sort();
    let after = catalog_snapshot(&mut c);
    assert_eq!(after, expected, "DROP EXTENSION truxe left objects behind");
    let in_schema: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_depend WHERE refclassid = 'pg_namespace'::regclass
               AND refobjid = 'truxe'::regnamespace",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(in_schema, 0, "schema truxe is empty after DROP EXTENSION");
    c.batch_execute("DROP SCHEMA truxe")
        .expect("the empty schema drops without CASCADE");
    let roles: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('authenticated', 'service_account')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        roles, 2,
        "the two cluster-wide roles stay (docs/reference.md, Roles and privileges)"
    );
}
