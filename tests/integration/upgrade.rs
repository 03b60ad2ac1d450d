//! Upgrades (README, "Upgrading"): a fresh install of the current version and the released
//! 0.1.0 updated with `ALTER EXTENSION truxe UPDATE` have the same catalog, and a 0.1.0
//! database populated by the 0.1.0 library keeps working after the update.
use crate::dump::{fingerprint, restore_copy};
use crate::harness::{server, Server, AUTH_LOGIN, SERVICE_LOGIN};
use postgres::Client;
use std::collections::BTreeSet;

/// The oldest released version: what `CREATE EXTENSION truxe VERSION …` installs first.
pub(crate) const FIRST_RELEASE: &str = "0.1.0";

/// Every catalog fact of the extension truxe that a user, a policy or a dump can tell
/// apart, one line each: relations, columns (in order), constraints, indexes, policies,
/// triggers, functions, enum labels, sequences, privileges, comments, extension members,
/// pg_extension_config_dump registrations, and the rows the extension seeds itself.
const CATALOG: &str = r#"
WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'truxe'),
rel AS (SELECT c.oid::regclass::text AS name, c.* FROM pg_class c
         WHERE c.relnamespace = 'truxe'::regnamespace),
fn AS (SELECT p.oid::regprocedure::text AS name, p.* FROM pg_proc p
        WHERE p.pronamespace = 'truxe'::regnamespace)
SELECT 'relation ' || name || ' kind=' || relkind::text || ' persistence=' || relpersistence::text
       || ' rls=' || relrowsecurity || ' force_rls=' || relforcerowsecurity
       || ' options=' || coalesce(reloptions::text, '-')
       || ' acl=' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text)
                                 FROM unnest(relacl) a), '-')
  FROM rel WHERE relkind <> 'i'
UNION ALL
SELECT 'column ' || rel.name || '.' || a.attname
       || ' position=' || row_number() OVER (PARTITION BY rel.oid ORDER BY a.attnum)
       || ' type=' || format_type(a.atttypid, a.atttypmod) || ' not_null=' || a.attnotnull
       || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
       || ' identity=' || a.attidentity::text || ' generated=' || a.attgenerated::text
       || ' collation=' || coalesce(nullif(a.attcollation, 0::oid)::regcollation::text, '-')
       || ' acl=' || coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text)
                                 FROM unnest(a.attacl) x), '-')
  FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE rel.relkind IN ('r', 'v', 'p', 'c')
UNION ALL
SELECT 'constraint ' || conrelid::regclass::text || '.' || conname || ' '
       || pg_get_constraintdef(oid) || ' deferrable=' || condeferrable
  FROM pg_constraint WHERE connamespace = 'truxe'::regnamespace
UNION ALL
SELECT 'index ' || indexrelid::regclass::text || ' ' || pg_get_indexdef(indexrelid)
  FROM pg_index WHERE indrelid IN (SELECT oid FROM rel)
UNION ALL
SELECT 'policy ' || tablename || '.' || policyname || ' ' || permissive || ' ' || cmd
       || ' to=' || roles::text || ' using=' || coalesce(qual, '-')
       || ' check=' || coalesce(with_check, '-')
  FROM pg_policies WHERE schemaname = 'truxe'
UNION ALL
SELECT 'trigger ' || tgrelid::regclass::text || '.' || tgname || ' '
       || pg_get_triggerdef(oid) || ' enabled=' || tgenabled::text
  FROM pg_trigger WHERE tgrelid IN (SELECT oid FROM rel) AND NOT tgisinternal
UNION ALL
SELECT 'function ' || name || ' returns=' || pg_get_function_result(oid)
       || ' args=' || pg_get_function_arguments(oid)
       || ' language=' || (SELECT lanname FROM pg_language l WHERE l.oid = prolang)
       || ' kind=' || prokind::text || ' volatile=' || provolatile::text || ' strict=' || proisstrict
       || ' security_definer=' || prosecdef || ' leakproof=' || proleakproof
       || ' parallel=' || proparallel::text || ' cost=' || procost || ' rows=' || prorows
       || ' config=' || coalesce(proconfig::text, '-')
       || ' acl=' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text)
                                 FROM unnest(proacl) a), '-')
       || ' source=' || md5(prosrc) || ' ' || left(regexp_replace(prosrc, '\s+', ' ', 'g'), 80)
  FROM fn
UNION ALL
SELECT 'type ' || t.oid::regtype::text || ' kind=' || t.typtype::text
       || ' labels=' || coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                                    FROM pg_enum e WHERE e.enumtypid = t.oid), '-')
       || ' acl=' || coalesce(t.typacl::text, '-')
  FROM pg_type t WHERE t.typnamespace = 'truxe'::regnamespace AND t.typtype IN ('e', 'd', 'c')
   AND t.typrelid = 0
UNION ALL
SELECT 'sequence ' || seqrelid::regclass::text || ' type=' || seqtypid::regtype::text
       || ' start=' || seqstart || ' increment=' || seqincrement || ' cycle=' || seqcycle
  FROM pg_sequence WHERE seqrelid IN (SELECT oid FROM rel)
UNION ALL
SELECT 'schema truxe acl=' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text)
                                          FROM unnest(nspacl) a), '-')
  FROM pg_namespace WHERE nspname = 'truxe'
UNION ALL
SELECT 'comment ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': ' || d.description
  FROM pg_description d
 WHERE (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT oid FROM rel))
    OR (d.classoid = 'pg_proc'::regclass AND d.objoid IN (SELECT oid FROM fn))
    OR (d.classoid = 'pg_type'::regclass
        AND d.objoid IN (SELECT oid FROM pg_type WHERE typnamespace = 'truxe'::regnamespace))
    OR d.classoid IN ('pg_policy'::regclass, 'pg_trigger'::regclass, 'pg_constraint'::regclass)
       AND EXISTS (SELECT 1 FROM pg_depend x WHERE x.classid = d.classoid AND x.objid = d.objoid
                     AND x.refobjid IN (SELECT oid FROM rel))
UNION ALL
SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = ext.oid AND d.deptype = 'e'
UNION ALL
SELECT 'config_dump ' || c.oid::regclass::text || ' where=' || coalesce(nullif(cond, ''), '-')
  FROM ext, unnest(ext.extconfig, ext.extcondition) AS x(cfg, cond)
  JOIN pg_class c ON c.oid = x.cfg
"#;

/// The rows each truxe table holds in a database where nothing happened yet: what the
/// install itself seeds (role permissions, bookkeeping rows).
fn seeded_rows(c: &mut Client) -> Vec<String> {
    let tables: Vec<String> = c
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c
              WHERE c.relnamespace = 'truxe'::regnamespace AND c.relkind = 'r' ORDER BY 1",
            &[],
        )
        .expect("list truxe tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for t in tables {
        for r in c
            .query(&format!("SELECT x::text FROM {t} x ORDER BY 1"), &[])
            .expect("read seeded rows")
        {
            out.push(format!("row {t} {}", r.get::<_, String>(0)));
        }
    }
    out
}

/// The catalog of the extension truxe in the database of `c`, one fact a line.
pub fn catalog(c: &mut Client) -> BTreeSet<String> {
    let mut facts: BTreeSet<String> = c
        .query(CATALOG, &[])
        .expect("catalog snapshot")
        .iter()
        .map(|r| r.get(0))
        .collect();
    facts.extend(seeded_rows(c));
    facts
}

/// What `expected` has that `actual` lacks (`-`) and the reverse (`+`), readable; empty when
/// they agree.
fn diff(expected: &BTreeSet<String>, actual: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for line in expected.difference(actual) {
        out.push_str(&format!("  - {line}\n"));
    }
    for line in actual.difference(expected) {
        out.push_str(&format!("  + {line}\n"));
    }
    out
}

/// A database at the first release, updated to the current version.
fn updated_db(c: &mut Client) {
    c.batch_execute(&format!(
        "CREATE EXTENSION truxe VERSION '{FIRST_RELEASE}' CASCADE"
    ))
    .expect("install the first release");
    c.batch_execute("ALTER EXTENSION truxe UPDATE")
        .expect("ALTER EXTENSION truxe UPDATE");
}

#[test]
fn updated_catalog_equals_a_fresh_install() {
    let s = server();
    let fresh_db = s.fresh_db(true);
    let updated = s.fresh_db(false);
    let mut fresh = fresh_db.superuser();
    let mut up = updated.superuser();
    {
        // the roles exist already (fresh_db created them); serialise with other installs
        let _guard = crate::harness::INSTALL_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        updated_db(&mut up);
    }
    let version: String = up
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'truxe'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "UPDATE reaches the current version"
    );
    let (want, got) = (catalog(&mut fresh), catalog(&mut up));
    assert!(want.len() > 100, "the snapshot sees the catalog: {want:?}");
    let d = diff(&want, &got);
    assert!(
        d.is_empty(),
        "0.1.0 + ALTER EXTENSION UPDATE differs from a fresh install \
         (- only in the fresh install, + only after the update):\n{d}"
    );
}

/// The parity check fails when the fresh install changes without the upgrade script: each
/// kind of change a developer could forget is made to one of two identical databases, and
/// the diff names it.
#[test]
fn parity_check_names_every_kind_of_forgotten_change() {
    let s = server();
    let a = s.fresh_db(true);
    let b = s.fresh_db(true);
    let mut base = a.superuser();
    let mut changed = b.superuser();
    let baseline = catalog(&mut base);
    assert!(
        diff(&baseline, &catalog(&mut changed)).is_empty(),
        "two fresh installs agree"
    );
    let forgotten = [
        (
            "ALTER TABLE truxe.users ADD COLUMN nickname text",
            "truxe.users.nickname",
        ),
        (
            "ALTER TABLE truxe.users ALTER COLUMN metadata SET DEFAULT '{\"a\": 1}'",
            "truxe.users.metadata",
        ),
        (
            "CREATE INDEX idx_probe ON truxe.users (updated_at)",
            "idx_probe",
        ),
        (
            "ALTER TABLE truxe.sessions ADD CONSTRAINT probe_check CHECK (ip IS NULL OR true)",
            "probe_check",
        ),
        (
            "CREATE POLICY probe ON truxe.users FOR SELECT TO authenticated USING (false)",
            "probe",
        ),
        ("ALTER FUNCTION truxe.version() VOLATILE", "truxe.version()"),
        (
            "ALTER FUNCTION truxe.has_permission(uuid, text, uuid) SET work_mem = '1MB'",
            "has_permission",
        ),
        (
            "GRANT SELECT ON truxe.rate_limits TO authenticated",
            "truxe.rate_limits",
        ),
        (
            "REVOKE EXECUTE ON FUNCTION truxe.validate_session(uuid) FROM authenticated",
            "validate_session",
        ),
        ("COMMENT ON TABLE truxe.users IS 'probe'", "probe"),
        (
            "ALTER TYPE truxe.audit_action ADD VALUE 'probe.added'",
            "probe.added",
        ),
        (
            "ALTER EXTENSION truxe DROP SEQUENCE truxe.rate_limits_id_seq",
            "rate_limits_id_seq",
        ),
        (
            "INSERT INTO truxe.role_permissions VALUES ('viewer', 'probe:read')",
            "probe:read",
        ),
        (
            "ALTER TABLE truxe.audit_logs DISABLE TRIGGER audit_logs_append_only",
            "audit_logs_append_only",
        ),
    ];
    for (sql, names) in forgotten {
        changed.batch_execute("BEGIN").unwrap();
        changed
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        let d = diff(&baseline, &catalog(&mut changed));
        changed.batch_execute("ROLLBACK").unwrap();
        assert!(
            d.lines().any(|l| l.contains(names)),
            "the parity check misses `{sql}`: diff was\n{d}"
        );
    }
}

/// The library of the first release, built by scripts/test from its commit
/// (`TRUXE_FIRST_RELEASE_LIB`: the directory holding its truxe.so).
fn first_release_library() -> String {
    let dir = std::env::var("TRUXE_FIRST_RELEASE_LIB").expect(
        "TRUXE_FIRST_RELEASE_LIB must name the directory of the 0.1.0 library \
         (scripts/test builds it)",
    );
    assert!(
        std::path::Path::new(&dir).join("truxe.so").is_file(),
        "no truxe.so in TRUXE_FIRST_RELEASE_LIB={dir}"
    );
    dir
}

/// What a tenant sees of each table under RLS: per table, the sorted keys of the rows that
/// `who` (an authenticated login with context `user`) can read.
fn tenant_view(c: &mut Client, user: &str) -> Vec<String> {
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT truxe.set_context($1::text::uuid)", &[&user])
        .unwrap();
    let mut out = Vec::new();
    for (table, key) in [
        ("organizations", "id::text"),
        (
            "memberships",
            "org_id || '/' || user_id || '/' || role || '/' || (joined_at IS NOT NULL)",
        ),
        ("users", "id::text || '/' || email::text"),
        ("audit_logs", "id::text"),
        ("sessions", "user_id::text || '/' || expires_at::text"),
        ("usage_metrics", "id::text"),
    ] {
        let rows = c
            .query(&format!("SELECT {key} FROM truxe.{table} ORDER BY 1"), &[])
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        out.push(format!(
            "{table}: {}",
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    c.batch_execute("COMMIT").unwrap();
    out
}

fn one_text(c: &mut Client, sql: &str) -> String {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A 0.1.0 database, populated by the 0.1.0 library through its API (a tree of orgs,
/// members, rotated and live sessions, an unused magic link,
/// usage, the audit rows all of that wrote), is updated by the current library: the link
/// verifies, the sessions validate and refresh, RLS answers as before, the closure is
/// intact, no audit row is lost or added, and pg_dump of the result restores cleanly.
#[test]
fn a_populated_first_release_database_survives_the_update() {
    let old_lib = first_release_library();
    let s = Server::launch(
        "upgrade",
        &[("dynamic_library_path", &format!("{old_lib}:$libdir"))],
    );
    let mut su = s.client("postgres", "postgres");
    su.batch_execute("CREATE DATABASE survive").unwrap();
    su.batch_execute(&format!(
        "CREATE ROLE {AUTH_LOGIN} LOGIN; CREATE ROLE {SERVICE_LOGIN} LOGIN;"
    ))
    .unwrap();
    let mut su = s.client("survive", "postgres");
    su.batch_execute(&format!(
        "CREATE EXTENSION truxe VERSION '{FIRST_RELEASE}' CASCADE;
         GRANT authenticated TO {AUTH_LOGIN}; GRANT service_account TO {SERVICE_LOGIN};"
    ))
    .unwrap();
    assert_eq!(
        one_text(&mut su, "SELECT truxe.version()"),
        FIRST_RELEASE,
        "the 0.1.0 library is the one loaded"
    );

    // --- populate through the 0.1 API, as the backend and as tenants -----------------------
    let mut svc = s.client("survive", SERVICE_LOGIN);
    let mut login = |email: &str| -> String {
        let token = one_text(
            &mut svc,
            &format!("SELECT token FROM truxe.issue_magic_link('{email}')"),
        );
        svc.query_one(
            "SELECT status, user_id::text FROM truxe.verify_magic_link($1)",
            &[&token],
        )
        .map(|r| {
            assert_eq!(r.get::<_, String>(0), "verified");
            r.get::<_, String>(1)
        })
        .unwrap()
    };
    let (ada, bob) = (login("ada@example.com"), login("bob@example.com"));
    let mut svc = s.client("survive", SERVICE_LOGIN);
    let as_user = |c: &mut Client, user: &str, sql: &str| -> String {
        c.batch_execute("BEGIN").unwrap();
        c.execute("SELECT truxe.set_context($1::text::uuid)", &[&user])
            .unwrap();
        let v: Option<String> = c
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        c.batch_execute("COMMIT").unwrap();
        v.unwrap_or_default()
    };
    let mut tenant = s.client("survive", AUTH_LOGIN);
    let acme = as_user(
        &mut tenant,
        &ada,
        "SELECT truxe.create_organization('acme', 'Acme')::text",
    );
    let eu = as_user(
        &mut tenant,
        &ada,
        &format!("SELECT truxe.create_organization('acme-eu', 'Acme EU', '{acme}')::text"),
    );
    let _de = as_user(
        &mut tenant,
        &ada,
        &format!("SELECT truxe.create_organization('acme-de', 'Acme DE', '{eu}')::text"),
    );
    as_user(
        &mut tenant,
        &ada,
        &format!("SELECT 'ok' FROM truxe.invite_member('{eu}', '{bob}', 'admin')"),
    );
    as_user(
        &mut tenant,
        &bob,
        &format!("SELECT 'ok' FROM truxe.accept_invitation('{eu}')"),
    );
    let session = |c: &mut Client, sql: &str| -> (String, String) {
        let r = c
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        (r.get::<_, String>(0), r.get::<_, String>(1))
    };
    let (rotated_jti, rotated_refresh) = session(
        &mut svc,
        &format!(
            "SELECT jti::text, refresh_jti::text FROM truxe.create_session('{ada}', '{acme}')"
        ),
    );
    let (ada_jti, ada_refresh) = session(
        &mut svc,
        &format!(
            "SELECT jti::text, refresh_jti::text FROM truxe.refresh_session('{rotated_refresh}')"
        ),
    );
    let (bob_jti, bob_refresh) = session(
        &mut svc,
        &format!("SELECT jti::text, refresh_jti::text FROM truxe.create_session('{bob}', '{eu}')"),
    );
    let link = one_text(
        &mut svc,
        "SELECT token FROM truxe.issue_magic_link('dee@example.com')",
    );
    svc.batch_execute(&format!(
        "SELECT truxe.record_usage('{acme}', 'api_calls', 7)"
    ))
    .unwrap();

    // --- what 0.1.0 answers ----------------------------------------------------------------
    let view_before = [
        tenant_view(&mut tenant, &ada),
        tenant_view(&mut tenant, &bob),
    ];
    let closure_sql =
        "SELECT coalesce(string_agg(ancestor_id || '>' || descendant_id || ':' || depth, ','
                         ORDER BY ancestor_id, descendant_id), '') FROM truxe.org_closure";
    let audit_sql = "SELECT count(*)::text || ' ' || md5(string_agg(a::text, ',' ORDER BY a.id))
                       FROM truxe.audit_logs a";
    let closure_before = one_text(&mut su, closure_sql);
    let audit_before = one_text(&mut su, audit_sql);
    assert!(closure_before.matches(':').count() == 3, "{closure_before}");
    drop((svc, tenant, su));

    // --- the new library, then ALTER EXTENSION UPDATE --------------------------------------
    s.stop();
    s.start_with(&[]);
    let mut su = s.client("survive", "postgres");
    su.batch_execute("ALTER EXTENSION truxe UPDATE").unwrap();
    assert_eq!(
        one_text(
            &mut su,
            "SELECT extversion::text FROM pg_extension WHERE extname = 'truxe'"
        ),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        one_text(&mut su, "SELECT truxe.version()"),
        env!("CARGO_PKG_VERSION"),
        "the current library is the one loaded"
    );
    assert_eq!(
        one_text(&mut su, audit_sql),
        audit_before,
        "the update neither lost nor added nor changed an audit row"
    );
    assert_eq!(
        one_text(&mut su, closure_sql),
        closure_before,
        "closure intact"
    );
    let mut tenant = s.client("survive", AUTH_LOGIN);
    let view_after = [
        tenant_view(&mut tenant, &ada),
        tenant_view(&mut tenant, &bob),
    ];
    assert_eq!(view_after, view_before, "RLS answers as before the update");

    // --- tokens issued by 0.1.0 still work ---------------------------------------------------
    let mut svc = s.client("survive", SERVICE_LOGIN);
    let r = svc
        .query_one(
            "SELECT status, email::text FROM truxe.verify_magic_link($1)",
            &[&link],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, String>(1)),
        ("verified".to_string(), "dee@example.com".to_string()),
        "a link issued before the update verifies"
    );
    let validate = |c: &mut Client, jti: &str| -> Option<(String, Option<String>)> {
        c.query_opt(
            "SELECT user_id::text, org_id::text FROM truxe.validate_session($1::text::uuid)",
            &[&jti],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
    };
    assert_eq!(
        validate(&mut svc, &ada_jti),
        Some((ada.clone(), Some(acme.clone())))
    );
    assert_eq!(
        validate(&mut svc, &bob_jti),
        Some((bob.clone(), Some(eu.clone())))
    );
    assert_eq!(
        validate(&mut svc, &rotated_jti),
        None,
        "a rotated session stays dead"
    );
    let refreshed = svc
        .query_opt(
            "SELECT jti::text FROM truxe.refresh_session($1::text::uuid)",
            &[&ada_refresh],
        )
        .unwrap()
        .map(|r| r.get::<_, String>(0))
        .expect("a refresh token issued before the update rotates");
    assert_eq!(
        validate(&mut svc, &refreshed),
        Some((ada.clone(), Some(acme.clone())))
    );
    assert!(
        svc.query_opt(
            "SELECT jti FROM truxe.refresh_session($1::text::uuid)",
            &[&bob_refresh]
        )
        .unwrap()
        .is_some(),
        "bob's refresh token from before the update rotates"
    );

    // every family counts its lifetime from its first login: the update filled
    // family_created_at with the family's oldest created_at, and rotations since copied it
    assert_eq!(
        one_text(
            &mut su,
            "SELECT count(*)::text FROM (
               SELECT family_id FROM truxe.sessions GROUP BY family_id
               HAVING count(DISTINCT family_created_at) <> 1
                   OR min(family_created_at) <> min(created_at)) bad"
        ),
        "0",
        "family_created_at is each family's first login"
    );

    // --- and the updated database round-trips through pg_dump ------------------------------
    let before = fingerprint(&mut su);
    let restored = restore_copy(&s, "survive");
    assert_eq!(fingerprint(&mut s.client(&restored, "postgres")), before);
}

/// A database still on schema 0.1.0 with the current library loaded (between installing
/// the new library and `ALTER EXTENSION truxe UPDATE`): 0.1.0's issue_magic_link still runs
/// through its C entry point, whose signature the frozen 0.1.0 script declares. Past the
/// limit it raises 53400 (that entry point keeps 0.1.0's behaviour; the 0.2 function is
/// declared on a new one that raises TX429), with the same message; after the update it is
/// TX429.
#[test]
fn first_release_issue_magic_link_runs_on_the_new_library() {
    let s = server();
    let db = s.fresh_db(false);
    let mut su = db.superuser();
    {
        let _guard = crate::harness::INSTALL_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        su.batch_execute(&format!(
            "CREATE EXTENSION truxe VERSION '{FIRST_RELEASE}' CASCADE"
        ))
        .unwrap();
    }
    let issue = |c: &mut Client| {
        c.query_one(
            "SELECT token FROM truxe.issue_magic_link('old@example.com', NULL::text)",
            &[],
        )
        .map(|r| r.get::<_, String>(0))
    };
    for _ in 0..5 {
        assert_eq!(issue(&mut su).expect("within the limit").len(), 76);
    }
    let e = issue(&mut su).unwrap_err();
    assert_eq!(crate::harness::code_of(&e), "53400");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("too many magic links"),
        "{e}"
    );
    su.batch_execute("ALTER EXTENSION truxe UPDATE").unwrap();
    assert_eq!(
        crate::harness::sqlstate(su.query(
            "SELECT token FROM truxe.issue_magic_link('old@example.com')",
            &[]
        )),
        "TX429"
    );
}
