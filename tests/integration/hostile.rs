//! No input reaches a panic or floods a message (docs/security.md, "Hardening"): every
//! function of schema truxe, generated from pg_proc, is called with hostile values in each
//! argument (NULL, empty, 10 MB text, control characters, malformed uuid text, deep and huge
//! jsonb, extreme numbers, intervals and timestamps) as the superuser, as service_account
//! and as authenticated (acting as an org owner). Expected: no XX000, no lost connection
//! (a crashed backend), every error message under 1 kB.
use crate::harness::{server, Tenants, TestDb};
use postgres::Client;

/// Problems that another change of 0.2 fixes, outside this module's files: reported (so
/// they stay visible) but not failed on. Remove an entry when its fix lands.
const FIXED_ELSEWHERE: &[(&str, &str)] = &[];

/// A benign value for an argument of type `ty`, as text (None = NULL): uuids name the
/// test's org (an unknown user id is as good a value as any other).
fn benign(ty: &str, org: &str) -> Option<String> {
    Some(
        match ty {
            "uuid" => org.to_string(),
            "text" | "citext" => "hostile-x".into(),
            "jsonb" => "{}".into(),
            "interval" => "1 hour".into(),
            "integer" | "bigint" => "1".into(),
            "boolean" => "false".into(),
            "timestamp with time zone" => "2026-11-15 12:00:00+00".into(),
            "inet" => "127.0.0.1".into(),
            "truxe.membership_role" | "membership_role" => "member".into(),
            _ => return None,
        }
        .to_string(),
    )
}

/// The hostile values for an argument of type `ty` (None = NULL).
fn hostile(ty: &str) -> Vec<Option<String>> {
    let mut v: Vec<Option<String>> = vec![None];
    let deep_array = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    match ty {
        "text" | "citext" => v.extend([
            Some(String::new()),
            Some("a".repeat(10 << 20)),
            Some("\u{1}\u{7}\u{8}\t\r\n\u{1b}[31m\u{7f}x".into()),
            Some("not-a-uuid".into()),
            Some("'; SELECT pg_sleep(10); --".into()),
            Some("é🦀\u{202e}".into()),
            Some(deep_array),
        ]),
        "jsonb" => v.extend([
            Some(deep_array.clone()),
            Some(deep_object.clone()),
            Some(format!("{{\"a\": {deep_array}, \"b\": {deep_object}}}")),
            Some(format!("{{\"huge\": \"{}\"}}", "h".repeat(4 << 20))),
            Some(format!("[{}]", vec!["\"p:*\""; 100_000].join(","))),
            Some("\"*\"".into()),
            Some("null".into()),
            Some("[]".into()),
        ]),
        "integer" => v.extend(["0", "-1", "2147483647", "-2147483648"].map(|s| Some(s.into()))),
        "bigint" => v.extend(
            ["0", "-1", "9223372036854775807", "-9223372036854775808"].map(|s| Some(s.into())),
        ),
        "interval" => v.extend(
            [
                "0",
                "-1 day",
                "1 microsecond",
                "178000000 years",
                "-178000000 years",
                "1 mon -40 days",
                // PostgreSQL 17+ (a cast error, 22007, before)
                "infinity",
                "-infinity",
            ]
            .map(|s| Some(s.into())),
        ),
        "timestamp with time zone" => v.extend(
            [
                "infinity",
                "-infinity",
                "4713-01-01 00:00:00+00 BC",
                "294276-12-31 00:00:00+00",
            ]
            .map(|s| Some(s.into())),
        ),
        "uuid" => v.extend(
            [
                "00000000-0000-0000-0000-000000000000",
                "ffffffff-ffff-ffff-ffff-ffffffffffff",
            ]
            .map(|s| Some(s.into())),
        ),
        "inet" => {
            v.extend(["::", "255.255.255.255/32", "::ffff:1.2.3.4/128"].map(|s| Some(s.into())))
        }
        "truxe.membership_role" | "membership_role" => {
            v.extend(["owner", "viewer"].map(|s| Some(s.into())))
        }
        _ => {}
    }
    v
}

struct Function {
    name: String,
    /// argument types as format_type prints them (IN arguments only)
    args: Vec<String>,
}

fn functions(db: &TestDb) -> Vec<Function> {
    db.superuser()
        .query(
            "SELECT p.proname::text,
                    coalesce((SELECT array_agg(format_type(t, NULL) ORDER BY i)
                                FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, i)), '{}')
               FROM pg_proc p
              WHERE p.pronamespace = 'truxe'::regnamespace AND p.prokind = 'f'
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| Function {
            name: r.get(0),
            args: r.get(1),
        })
        .collect()
}

/// Calls `f` with `values` (text, cast to each argument's type) and returns a problem, if
/// any: XX000, a lost connection, or an error message of 1 kB or more.
fn call(c: &mut Client, f: &Function, values: &[Option<String>]) -> Option<String> {
    let casts: Vec<String> = f
        .args
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::text::{t}", i + 1))
        .collect();
    let sql = format!("SELECT * FROM truxe.{}({})", f.name, casts.join(", "));
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect();
    let shown = |v: &Option<String>| {
        v.as_deref().map_or("NULL".to_string(), |s| {
            format!("{:?}", s.chars().take(24).collect::<String>())
        })
    };
    let args = values.iter().map(shown).collect::<Vec<_>>().join(", ");
    let result = c
        .batch_execute("SAVEPOINT h")
        .and_then(|_| c.query(&sql, &params));
    match result {
        Ok(_) => {
            let _ = c.batch_execute("RELEASE SAVEPOINT h");
            None
        }
        Err(e) => {
            let problem = match e.as_db_error() {
                None => Some(format!("{}({args}): connection lost: {e}", f.name)),
                Some(d) if d.code().code() == "XX000" => {
                    Some(format!("{}({args}): XX000 {}", f.name, d.message()))
                }
                Some(d) if d.message().len() >= 1024 => Some(format!(
                    "{}({args}): message of {} bytes",
                    f.name,
                    d.message().len()
                )),
                Some(_) => None,
            };
            if problem.is_none() || !c.is_closed() {
                let _ = c.batch_execute("ROLLBACK TO SAVEPOINT h");
            }
            problem
        }
    }
}

#[test]
fn hostile_arguments_never_panic_crash_or_flood() {
    let db = server().fresh_db(true);
    let owner = "00000000-0000-0000-0000-0000000000d1";
    let org = "d0000000-0000-0000-0000-0000000000d1";
    Tenants::new()
        .user(owner, "o@d.example")
        .org(org, "hostile-x", "D", None)
        .member(org, owner, "owner")
        .seed(&db);
    let funcs = functions(&db);
    assert!(funcs.len() >= 30, "{} functions", funcs.len());
    let mut problems = Vec::new();
    let mut calls = 0;
    for role in ["superuser", "service", "authenticated"] {
        let connect = || {
            let mut c = match role {
                "superuser" => db.superuser(),
                "service" => db.service(),
                _ => db.authenticated(),
            };
            c.batch_execute(&format!(
                "SET statement_timeout = '20s'; SELECT truxe.set_context('{owner}', '{org}', false); BEGIN"
            ))
            .unwrap();
            c
        };
        let mut c = connect();
        let set_context = format!("SELECT truxe.set_context('{owner}', '{org}', false)");
        for f in &funcs {
            let base: Vec<Option<String>> = f.args.iter().map(|t| benign(t, org)).collect();
            for (i, ty) in f.args.iter().enumerate() {
                for value in hostile(ty) {
                    let mut values = base.clone();
                    values[i] = value;
                    calls += 1;
                    // a previous call may have cleared or changed the context
                    let _ = c.batch_execute(&set_context);
                    if let Some(p) = call(&mut c, f, &values) {
                        problems.push(format!("as {role}: {p}"));
                    }
                    if c.is_closed() {
                        c = connect();
                    }
                }
            }
            if f.args.is_empty() {
                calls += 1;
                if let Some(p) = call(&mut c, f, &[]) {
                    problems.push(format!("as {role}: {p}"));
                }
            }
        }
        let _ = c.batch_execute("ROLLBACK");
        // the connection (and the server) still works
        assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
    }
    let (known, new): (Vec<_>, Vec<_>) = problems.iter().partition(|p| {
        FIXED_ELSEWHERE
            .iter()
            .any(|(f, what)| p.contains(&format!(": {f}(")) && p.contains(what))
    });
    if !known.is_empty() {
        eprintln!(
            "{} problems fixed by other 0.2 changes (FIXED_ELSEWHERE):\n{}",
            known.len(),
            known
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        new.is_empty(),
        "{} of {calls} calls went wrong:\n{}",
        new.len(),
        new.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
