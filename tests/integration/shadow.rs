//! Name resolution cannot be hijacked (docs/security.md, "Hardening"): an attacker login
//! that owns two schemas fills them with same-named functions, aggregates and operators —
//! exact argument types — for every pg_catalog function and operator that truxe's SQL names
//! (generated from the catalog: the names that appear in the bodies of truxe's functions
//! and in the SQL of the Rust sources), each writing a row to a side table when called. With
//! those schemas first and last on search_path, the API runs once — orgs, moves,
//! invitations, roles, permissions, magic links, sessions, rate limit, usage, cleanup,
//! audit reads — and the side table stays empty.
use crate::harness::{server, AUTH_LOGIN};
use postgres::Client;

const PATH: &str = "shadow_first, pg_catalog, public, truxe, shadow_last";

/// Every Rust and SQL source of the extension, as one text: the SPI strings live there.
fn sources() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = String::new();
    for dir in ["src", "sql"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs" || e == "sql") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
                out.push('\n');
            }
        }
    }
    out
}

/// The DDL of every shadow, generated from the catalog: functions and aggregates of
/// pg_catalog whose name is followed by `(` in the corpus ($1), with their exact
/// signatures; operators whose name appears in the corpus, on the types above (polymorphic
/// operand types replaced by each matching concrete type); plus the exact-type overloads
/// that beat pg_catalog's wherever they sit on the path (make_interval(secs => int4): the
/// attack of the issue).
const SHADOWS: &str = r#"
WITH words AS (
  SELECT DISTINCT lower(m[1]) AS w FROM regexp_matches($1, '([A-Za-z_][A-Za-z0-9_]*)\s*\(', 'g') m
), optokens AS (
  SELECT DISTINCT m[1] AS t FROM regexp_matches($1, '([-+*/<>=~!@#%^&|?]+)', 'g') m
), types AS (
  SELECT t::regtype AS ty FROM unnest($2::text[]) t
), fns AS (
  SELECT p.oid, p.proname, p.prokind, p.proretset,
         pg_get_function_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS res,
         pg_get_function_identity_arguments(p.oid) AS ident,
         p.prorettype::regtype AS rettype,
         coalesce(p.proallargtypes, p.proargtypes::oid[]) AS alltypes,
         p.proargmodes
    FROM pg_proc p JOIN words ON words.w = p.proname
   WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind IN ('f', 'a')
), plain AS (
  SELECT format(
    'CREATE FUNCTION %%1$s.%I(%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L',
    proname, args, res,
    format('BEGIN PERFORM nextval(''shadow_log.hits''); INSERT INTO shadow_log.calls VALUES (%L); RETURN%s; END',
           proname || '(' || ident || ')',
           CASE WHEN proretset OR rettype = 'void'::regtype OR 'o' = ANY (proargmodes)
                     OR 't' = ANY (proargmodes) THEN '' ELSE ' NULL' END)) AS ddl
    FROM fns
   WHERE prokind = 'f'
     AND NOT EXISTS (SELECT 1 FROM unnest(alltypes || ARRAY[rettype::oid]) t
                      WHERE t::regtype::text IN ('internal', 'cstring', '"any"', 'trigger',
                        'event_trigger', 'language_handler', 'fdw_handler', 'index_am_handler',
                        'tsm_handler', 'table_am_handler', 'pg_ddl_command'))
), aggs AS (
  SELECT format(
    'CREATE FUNCTION %%1$s.%I(%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L; '
    'CREATE AGGREGATE %%1$s.%I(%s) (SFUNC = %%1$s.%I, STYPE = %s)',
    'agg_' || proname || '_' || oid, concat_ws(', ', rettype::text, nullif(ident, '')), rettype,
    format('BEGIN PERFORM nextval(''shadow_log.hits''); INSERT INTO shadow_log.calls VALUES (%L); RETURN $1; END',
           'aggregate ' || proname || '(' || ident || ')'),
    proname, CASE WHEN ident = '' THEN '*' ELSE ident END, 'agg_' || proname || '_' || oid,
    rettype) AS ddl
    FROM fns
   WHERE prokind = 'a'
     AND NOT EXISTS (SELECT 1 FROM unnest(alltypes || ARRAY[rettype::oid]) t
                      WHERE t::regtype::text LIKE 'any%' OR t::regtype::text IN ('internal', '"any"'))
), ops AS (
  SELECT DISTINCT o.oprname,
         CASE WHEN o.oprleft = 0 THEN NULL
              WHEN o.oprleft::regtype::text IN ('anyarray', 'anycompatiblearray') THEN
                (SELECT ty FROM types WHERE ty::text = l.ty::text AND ty::text LIKE '%[]')
              WHEN o.oprleft::regtype::text IN ('anyelement', 'anycompatible', 'anynonarray', 'anycompatiblenonarray') THEN
                (SELECT ty FROM types WHERE ty::text = l.ty::text AND ty::text NOT LIKE '%[]')
              WHEN o.oprleft::regtype::text = 'anyenum' THEN
                (SELECT ty FROM types WHERE ty::text = l.ty::text AND ty::text LIKE 'truxe.%')
              ELSE o.oprleft::regtype END AS lt,
         CASE WHEN o.oprright::regtype::text IN ('anyarray', 'anycompatiblearray') THEN
                (SELECT ty FROM types WHERE ty::text = r.ty::text AND ty::text LIKE '%[]')
              WHEN o.oprright::regtype::text IN ('anyelement', 'anycompatible', 'anynonarray', 'anycompatiblenonarray') THEN
                (SELECT ty FROM types WHERE ty::text = r.ty::text AND ty::text NOT LIKE '%[]')
              WHEN o.oprright::regtype::text = 'anyenum' THEN
                (SELECT ty FROM types WHERE ty::text = r.ty::text AND ty::text LIKE 'truxe.%')
              ELSE o.oprright::regtype END AS rt,
         o.oprresult::regtype AS res
    FROM pg_operator o JOIN optokens ON optokens.t = o.oprname
         CROSS JOIN types l CROSS JOIN types r
   WHERE o.oprnamespace = 'pg_catalog'::regnamespace
), typed_ops AS (
  SELECT oprname, lt, rt,
         CASE WHEN res::text LIKE 'any%' THEN coalesce(lt, rt) ELSE res END AS res
    FROM ops
   WHERE rt IS NOT NULL AND rt::regtype IN (SELECT ty FROM types)
     AND (lt IS NULL OR lt::regtype IN (SELECT ty FROM types))
), opddl AS (
  SELECT format(
    'CREATE FUNCTION %%1$s.%I(%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L; '
    'CREATE OPERATOR %%1$s.%s (%s RIGHTARG = %s, FUNCTION = %%1$s.%I)',
    fname, concat_ws(', ', lt::regtype::text, rt::regtype::text), res,
    format('BEGIN PERFORM nextval(''shadow_log.hits''); INSERT INTO shadow_log.calls VALUES (%L); RETURN NULL; END',
           format('operator %s(%s, %s)', oprname, lt::regtype, rt::regtype)),
    oprname, CASE WHEN lt IS NULL THEN '' ELSE format('LEFTARG = %s,', lt::regtype) END,
    rt::regtype, fname) AS ddl
    FROM (SELECT *, 'op_' || md5(oprname || coalesce(lt::text, '') || rt::text) AS fname
            FROM typed_ops) t
), extras AS (
  SELECT format(
    'CREATE FUNCTION %%1$s.%s RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L',
    sig, res, format('BEGIN PERFORM nextval(''shadow_log.hits''); INSERT INTO shadow_log.calls VALUES (%L); RETURN NULL; END', 'extra ' || sig)) AS ddl
    FROM (VALUES ('make_interval(secs integer)', 'interval'),
                 ('make_interval(secs bigint)', 'interval'),
                 ('lower(citext)', 'text'), ('length(citext)', 'integer'),
                 ('jsonb_build_object(text, jsonb, text, jsonb)', 'jsonb'),
                 ('jsonb_build_object(unknown, jsonb)', 'jsonb'),
                 ('date_trunc(text, timestamptz, text)', 'timestamptz'),
                 ('hashtextextended(citext, bigint)', 'bigint'),
                 ('quote_nullable(citext)', 'text'),
                 ('split_part(text, text, integer)', 'text')) v(sig, res)
)
SELECT ddl FROM plain UNION ALL SELECT ddl FROM aggs UNION ALL SELECT ddl FROM opddl
UNION ALL SELECT ddl FROM extras
"#;

/// Creates the side table and both shadow schemas (owned by the attacker login); returns
/// how many shadows each schema got.
fn plant_shadows(db: &crate::harness::TestDb) -> usize {
    let mut su = db.superuser();
    su.batch_execute(&format!(
        "CREATE SCHEMA shadow_log;
         CREATE TABLE shadow_log.calls (what text NOT NULL, by_role text DEFAULT current_user);
         GRANT USAGE ON SCHEMA shadow_log TO PUBLIC;
         GRANT INSERT ON shadow_log.calls TO PUBLIC;
         -- a sequence is not transactional: it counts calls made in statements that failed
         CREATE SEQUENCE shadow_log.hits;
         GRANT USAGE ON SEQUENCE shadow_log.hits TO PUBLIC;
         CREATE SCHEMA shadow_first AUTHORIZATION {AUTH_LOGIN};
         CREATE SCHEMA shadow_last AUTHORIZATION {AUTH_LOGIN};
         GRANT USAGE ON SCHEMA shadow_first, shadow_last TO PUBLIC;"
    ))
    .unwrap();
    let mut corpus = sources();
    let bodies: String = su
        .query_one(
            "SELECT string_agg(prosrc, E'\\n') FROM pg_proc WHERE pronamespace = 'truxe'::regnamespace",
            &[],
        )
        .unwrap()
        .get(0);
    corpus.push_str(&bodies);
    let ddl: Vec<String> = su
        .query(SHADOWS, &[&corpus, &TYPES_LIST.to_vec()])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // the attacker (a plain authenticated login) creates them; a shadow Postgres refuses
    // (e.g. a pseudo-type plpgsql cannot take) is skipped
    let mut attacker = db.authenticated();
    let mut planted = 0;
    for schema in ["shadow_first", "shadow_last"] {
        for d in &ddl {
            let stmt = d.replace("%1$s", schema);
            if attacker.batch_execute(&stmt).is_ok() {
                planted += 1;
            }
        }
    }
    planted / 2
}

/// The types truxe's SQL works on: shadows are made for operators on these.
const TYPES_LIST: [&str; 15] = [
    "uuid",
    "uuid[]",
    "text",
    "text[]",
    "citext",
    "timestamptz",
    "interval",
    "int4",
    "int8",
    "jsonb",
    "bool",
    "inet",
    "truxe.membership_role",
    "truxe.user_status",
    "truxe.audit_action",
];

/// A connection with the hostile search_path. The test's own statements use no function
/// or operator outside truxe (or qualify it), so every call in the side table is truxe's.
fn hostile(mut c: Client) -> Client {
    c.batch_execute(&format!("SET search_path = {PATH}"))
        .unwrap();
    c
}

fn one(c: &mut Client, sql: &str, args: &[&(dyn postgres::types::ToSql + Sync)]) -> String {
    c.query_one(sql, args)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

thread_local! {
    /// API calls that failed (a hijacked lookup often makes a call fail): reported with the
    /// side table, so that one run shows everything.
    static FAILED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn run(c: &mut Client, sql: &str, args: &[&(dyn postgres::types::ToSql + Sync)]) {
    if let Err(e) = c.query(sql, args) {
        FAILED.with(|f| f.borrow_mut().push(format!("{sql}: {}", message(&e))));
    }
}

fn message(e: &postgres::Error) -> String {
    e.as_db_error().map_or_else(
        || e.to_string(),
        |d| format!("{} {}", d.code().code(), d.message()),
    )
}

#[test]
fn no_truxe_function_resolves_names_through_the_callers_path() {
    let db = server().fresh_db(true);
    let planted = plant_shadows(&db);
    let mut su = db.superuser();
    let names: Vec<String> = su
        .query(
            "SELECT DISTINCT p.proname::text FROM pg_proc p
              WHERE p.pronamespace = 'shadow_first'::regnamespace ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for needed in [
        "now",
        "gen_random_uuid",
        "make_interval",
        "lower",
        "length",
        "jsonb_typeof",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "no shadow of {needed}: {names:?}"
        );
    }
    let ops: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_operator WHERE oprnamespace = 'shadow_first'::regnamespace
                AND oprname IN ('=', '<@', '<', '>', '@>', '||', '-', '+')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        planted > 100 && ops > 20,
        "{planted} shadows, {ops} operators"
    );

    let mut service = hostile(db.service());
    let mut login = |email: &str| -> String {
        let token = one(
            &mut service,
            "SELECT token FROM truxe.issue_magic_link($1)",
            &[&email],
        );
        assert_eq!(
            one(
                &mut service,
                "SELECT status FROM truxe.inspect_magic_link($1)",
                &[&token]
            ),
            "valid"
        );
        one(
            &mut service,
            "SELECT user_id::text FROM truxe.verify_magic_link($1)",
            &[&token],
        )
    };
    let u = login("u@shadow.example");
    let v = login("v@shadow.example");

    let mut as_u = hostile(db.authenticated());
    run(
        &mut as_u,
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&u],
    );
    let org = one(
        &mut as_u,
        "SELECT truxe.create_organization('shadow-org', 'Shadow', NULL, '{\"k\": 1}')::text",
        &[],
    );
    let kid = one(
        &mut as_u,
        "SELECT truxe.create_organization('shadow-kid', 'Kid', $1::text::uuid)::text",
        &[&org],
    );
    let other = one(
        &mut as_u,
        "SELECT truxe.create_organization('shadow-other', 'Other')::text",
        &[],
    );
    run(
        &mut as_u,
        "SELECT truxe.invite_member($1::text::uuid, $2::text::uuid, 'member', '[\"reports:read\"]')",
        &[&org, &v],
    );
    let mut as_v = hostile(db.authenticated());
    run(
        &mut as_v,
        "SELECT truxe.set_context($1::text::uuid, NULL, false)",
        &[&v],
    );
    run(
        &mut as_v,
        "SELECT truxe.accept_invitation($1::text::uuid)",
        &[&org],
    );
    run(
        &mut as_u,
        "SELECT truxe.change_role($1::text::uuid, $2::text::uuid, 'admin')",
        &[&org, &v],
    );
    run(
        &mut as_u,
        "SELECT truxe.has_permission($1::text::uuid, 'users:read')",
        &[&org],
    );
    run(
        &mut as_v,
        "SELECT truxe.has_permission($1::text::uuid, 'reports:read')",
        &[&kid],
    );
    run(
        &mut as_u,
        "SELECT * FROM truxe.org_ancestors($1::text::uuid)",
        &[&kid],
    );
    run(
        &mut as_u,
        "SELECT * FROM truxe.org_descendants($1::text::uuid)",
        &[&org],
    );
    for (child, parent) in [(&kid, Some(&other)), (&kid, None), (&kid, Some(&org))] {
        run(
            &mut as_u,
            "UPDATE truxe.organizations SET parent_org_id = $1::text::uuid WHERE id OPERATOR(pg_catalog.=) $2::text::uuid",
            &[&parent, child],
        );
    }
    run(
        &mut as_u,
        "UPDATE truxe.organizations SET settings = '{\"k\": 2}', name = 'Shadow 2' WHERE id OPERATOR(pg_catalog.=) $1::text::uuid",
        &[&org],
    );
    // the admin's attempted graft is refused, through the same path
    assert!(as_v
        .execute(
            "UPDATE truxe.organizations SET parent_org_id = NULL WHERE id OPERATOR(pg_catalog.=) $1::text::uuid",
            &[&kid],
        )
        .is_err());
    for (table, columns) in [
        ("organizations", "*"),
        ("memberships", "*"),
        ("users", "*"),
        ("audit_logs", "*"),
        ("usage_metrics", "*"),
        // every column but the token hashes, which authenticated may not read
        (
            "sessions",
            "id, user_id, org_id, family_id, expires_at, last_used_at",
        ),
    ] {
        run(
            &mut as_u,
            &format!("SELECT {columns} FROM truxe.{table}"),
            &[],
        );
    }
    for f in [
        "current_user_id",
        "current_org_id",
        "accessible_org_ids",
        "admin_org_ids",
        "invited_org_ids",
        "owner_org_ids",
        "version",
    ] {
        run(&mut as_u, &format!("SELECT truxe.{f}()"), &[]);
    }

    // the backend's own flows, as the service account on the same hostile path
    let jti_refresh: (String, String) = match service.query_one(
        "SELECT jti::text, refresh_jti::text FROM truxe.create_session($1::text::uuid, $2::text::uuid,
           '1 hour', '{\"os\": \"x\"}', '127.0.0.1', 'agent')",
        &[&u, &org],
    ) {
        Ok(r) => (r.get(0), r.get(1)),
        Err(e) => {
            FAILED.with(|f| f.borrow_mut().push(format!("create_session: {}", message(&e))));
            (u.clone(), u.clone())
        }
    };
    run(
        &mut as_u,
        "SELECT * FROM truxe.validate_session($1::text::uuid)",
        &[&jti_refresh.0],
    );
    run(
        &mut service,
        "SELECT * FROM truxe.validate_session($1::text::uuid)",
        &[&jti_refresh.0],
    );
    run(
        &mut service,
        "SELECT * FROM truxe.refresh_session($1::text::uuid)",
        &[&jti_refresh.1],
    );
    run(
        &mut service,
        "SELECT * FROM truxe.refresh_session($1::text::uuid)",
        &[&jti_refresh.1],
    );
    run(
        &mut service,
        "SELECT truxe.revoke_session($1::text::uuid)",
        &[&jti_refresh.0],
    );
    run(
        &mut service,
        "SELECT truxe.revoke_user_sessions($1::text::uuid)",
        &[&u],
    );
    run(
        &mut service,
        "SELECT * FROM truxe.rate_limit_hit('shadow-key', 3)",
        &[],
    );
    run(
        &mut service,
        "SELECT truxe.record_usage($1::text::uuid, 'api')",
        &[&org],
    );
    run(&mut service, "SELECT truxe.cleanup_expired_sessions()", &[]);
    run(
        &mut service,
        "SELECT * FROM truxe.cleanup_expired_data()",
        &[],
    );
    run(
        &mut service,
        "SELECT truxe.purge_audit_logs('100 days')",
        &[],
    );
    run(&mut service, "SELECT * FROM truxe.security_report()", &[]);
    // an application's own table (README, "Your own tables"): protected, audited, written
    // as a tenant, and the sealed log, on the same hostile path
    su.batch_execute(&format!(
        "CREATE SCHEMA shadow_app AUTHORIZATION {}",
        crate::harness::SERVICE_LOGIN
    ))
    .unwrap();
    for sql in [
        "CREATE TABLE shadow_app.projects (id int PRIMARY KEY, org_id uuid NOT NULL, name text)",
        "GRANT USAGE ON SCHEMA shadow_app TO authenticated",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON shadow_app.projects TO authenticated",
        "SELECT truxe.protect_table('shadow_app.projects')",
        "SELECT truxe.protect_table('shadow_app.projects')",
        "SELECT truxe.audit_table('shadow_app.projects')",
    ] {
        run(&mut service, sql, &[]);
    }
    run(
        &mut as_u,
        "SELECT truxe.permitted_org_ids('projects:write')",
        &[],
    );
    run(
        &mut as_u,
        "INSERT INTO shadow_app.projects VALUES (1, $1::text::uuid, 'p')",
        &[&org],
    );
    run(&mut as_u, "UPDATE shadow_app.projects SET name = 'q'", &[]);
    run(&mut as_u, "SELECT * FROM shadow_app.projects", &[]);
    run(&mut as_u, "DELETE FROM shadow_app.projects", &[]);
    run(&mut service, "SELECT truxe.seal_audit_log()", &[]);
    run(&mut service, "SELECT * FROM truxe.verify_audit_log()", &[]);
    run(
        &mut service,
        "SELECT truxe.unprotect_table('shadow_app.projects')",
        &[],
    );
    run(
        &mut as_u,
        "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
        &[&org, &v],
    );
    run(&mut as_u, "SELECT truxe.clear_context()", &[]);

    let calls: Vec<(String, String)> = su
        .query("SELECT what, by_role FROM shadow_log.calls", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let hits: bool = su
        .query_one("SELECT is_called FROM shadow_log.hits", &[])
        .unwrap()
        .get(0);
    let failed = FAILED.with(|f| f.borrow().clone());
    assert!(
        calls.is_empty() && !hits && failed.is_empty(),
        "{} of {planted} shadows were called (any called at all, failed statements included: \
         {hits}): {calls:?}\nfailed API calls: {failed:#?}",
        calls.len()
    );
}
