//! Every CHECK constraint of the tables (docs/reference.md, "Tables and Row Level Security"), and the keys, each with the SQLSTATE it raises.
use crate::harness::{code_of, server, sqlstate};

const U: &str = "00000000-0000-0000-0000-0000000000a1";
const O: &str = "00000000-0000-0000-0000-0000000000b1";

#[test]
fn each_constraint_rejects_bad_rows_with_its_sqlstate() {
    let db = server().fresh_db(true);
    let mut c = db.superuser();
    c.batch_execute(&format!(
        "INSERT INTO truxe.users (id, email) VALUES ('{U}', 'ok@example.com');
         INSERT INTO truxe.organizations (id, slug, name) VALUES ('{O}', 'ok-org', 'Ok');"
    ))
    .unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("bad email", "INSERT INTO truxe.users (email) VALUES ('not-an-email')", "23514"),
        ("email without tld", "INSERT INTO truxe.users (email) VALUES ('a@b')", "23514"),
        ("duplicate email, other case", "INSERT INTO truxe.users (email) VALUES ('OK@Example.com')", "23505"),
        ("metadata not object", "INSERT INTO truxe.users (email, metadata) VALUES ('m@example.com', '[]')", "23514"),
        ("null email", "INSERT INTO truxe.users (email) VALUES (NULL)", "23502"),
        ("uppercase slug", "INSERT INTO truxe.organizations (slug, name) VALUES ('Acme', 'x')", "23514"),
        ("slug with space", "INSERT INTO truxe.organizations (slug, name) VALUES ('a b', 'x')", "23514"),
        ("slug ends with dash", "INSERT INTO truxe.organizations (slug, name) VALUES ('ab-', 'x')", "23514"),
        ("slug too short", "INSERT INTO truxe.organizations (slug, name) VALUES ('a', 'x')", "23514"),
        ("slug too long", "INSERT INTO truxe.organizations (slug, name) VALUES (repeat('a', 64), 'x')", "23514"),
        ("blank name", "INSERT INTO truxe.organizations (slug, name) VALUES ('blank', '   ')", "23514"),
        ("name too long", "INSERT INTO truxe.organizations (slug, name) VALUES ('long', repeat('n', 256))", "23514"),
        ("settings not object", "INSERT INTO truxe.organizations (slug, name, settings) VALUES ('set', 'x', '1')", "23514"),
        ("duplicate slug, other case", "INSERT INTO truxe.organizations (slug, name) VALUES ('ok-org', 'x')", "23505"),
        ("self parent", &format!("UPDATE truxe.organizations SET parent_org_id = id WHERE id = '{O}'"), "23514"),
        ("unknown parent", "INSERT INTO truxe.organizations (slug, name, parent_org_id) VALUES ('orphan', 'x', gen_random_uuid())", "23503"),
        ("permissions not array", &format!("INSERT INTO truxe.memberships (org_id, user_id, permissions) VALUES ('{O}', '{U}', '{{}}')"), "23514"),
        ("joined before invited", &format!("INSERT INTO truxe.memberships (org_id, user_id, invited_at, joined_at) VALUES ('{O}', '{U}', now(), now() - interval '1 day')"), "23514"),
        ("self invite", &format!("INSERT INTO truxe.memberships (org_id, user_id, invited_by) VALUES ('{O}', '{U}', '{U}')"), "23514"),
        ("device_info not object", &format!("INSERT INTO truxe.sessions (user_id, family_id, expires_at, device_info) VALUES ('{U}', gen_random_uuid(), now() + interval '1 h', '[]')"), "23514"),
        ("expires before created", &format!("INSERT INTO truxe.sessions (user_id, family_id, expires_at) VALUES ('{U}', gen_random_uuid(), now() - interval '1 h')"), "23514"),
        ("revoked before created", &format!("INSERT INTO truxe.sessions (user_id, family_id, expires_at, revoked_at, revoked_reason) VALUES ('{U}', gen_random_uuid(), now() + interval '1 h', now() - interval '1 h', 'x')"), "23514"),
        ("revoked without reason", &format!("INSERT INTO truxe.sessions (user_id, family_id, expires_at, revoked_at) VALUES ('{U}', gen_random_uuid(), now() + interval '1 h', now())"), "23514"),
        ("reason without revoke", &format!("INSERT INTO truxe.sessions (user_id, family_id, expires_at, revoked_reason) VALUES ('{U}', gen_random_uuid(), now() + interval '1 h', 'x')"), "23514"),
        ("session without family", &format!("INSERT INTO truxe.sessions (user_id, expires_at) VALUES ('{U}', now() + interval '1 h')"), "23502"),
        ("audit details not object", "INSERT INTO truxe.audit_logs (action, details) VALUES ('user.login', '[]')", "23514"),
        ("audit target half set", "INSERT INTO truxe.audit_logs (action, target_type) VALUES ('user.login', 'user')", "23514"),
        // 0.2: any 'resource.verb' is an application's action; anything else is refused
        ("audit malformed action", "INSERT INTO truxe.audit_logs (action) VALUES ('User hacked')", "23514"),
        ("short token hash", "INSERT INTO truxe.magic_link_challenges (email, token_hash, expires_at) VALUES ('a@example.com', 'abc', now() + interval '1 h')", "23514"),
        ("attempts over 5", "INSERT INTO truxe.magic_link_challenges (email, token_hash, expires_at, attempts) VALUES ('a@example.com', repeat('0', 64), now() + interval '1 h', 6)", "23514"),
        ("negative attempts", "INSERT INTO truxe.magic_link_challenges (email, token_hash, expires_at, attempts) VALUES ('a@example.com', repeat('0', 64), now() + interval '1 h', -1)", "23514"),
        ("challenge expires before created", "INSERT INTO truxe.magic_link_challenges (email, token_hash, expires_at) VALUES ('a@example.com', repeat('0', 64), now() - interval '1 h')", "23514"),
        ("challenge used before created", "INSERT INTO truxe.magic_link_challenges (email, token_hash, expires_at, used_at) VALUES ('a@example.com', repeat('0', 64), now() + interval '1 h', now() - interval '1 h')", "23514"),
        ("challenge bad email", "INSERT INTO truxe.magic_link_challenges (email, token_hash, expires_at) VALUES ('nope', repeat('0', 64), now() + interval '1 h')", "23514"),
        ("usage period reversed", &format!("INSERT INTO truxe.usage_metrics (org_id, metric_type, period_start, period_end) VALUES ('{O}', 'x', '2026-12-01', '2026-11-01')"), "23514"),
        ("usage negative", &format!("INSERT INTO truxe.usage_metrics (org_id, metric_type, metric_value, period_start, period_end) VALUES ('{O}', 'x', -1, '2026-11-01', '2026-12-01')"), "23514"),
        ("rate count zero", "INSERT INTO truxe.rate_limits (key_hash, window_start, window_end, request_count) VALUES ('k', now(), now() + interval '1 minute', 0)", "23514"),
        ("rate window reversed", "INSERT INTO truxe.rate_limits (key_hash, window_start, window_end) VALUES ('k', now(), now() - interval '1 minute')", "23514"),
        ("bad permission string", "INSERT INTO truxe.role_permissions VALUES ('viewer', 'read everything')", "23514"),
        ("duplicate role permission", "INSERT INTO truxe.role_permissions VALUES ('owner', '*')", "23505"),
    ];
    for (what, sql, expected) in cases {
        assert_eq!(sqlstate(c.execute(*sql, &[])), *expected, "{what}: {sql}");
    }
}

/// The outcome of `sql` with `arg` inside a transaction that is rolled back: "ok" or the
/// SQLSTATE.
fn outcome(c: &mut postgres::Client, sql: &str, arg: &str) -> String {
    let mut t = c.transaction().unwrap();
    match t.query(sql, &[&arg]) {
        Ok(_) => "ok".into(),
        Err(e) => code_of(&e),
    }
}

/// The slug and e-mail rules are stated in the tables' CHECKs (sql/schema.sql, the source),
/// again in create_organization (so that a bad slug is 22023, not 23514) and in Rust
/// (`valid_slug`, `valid_email` in src/magic_link.rs, checked before any lookup). Each
/// candidate gets the same verdict from all of them (the e-mail also from invitations'
/// CHECK, sql/invitations.sql). The one deliberate difference: Rust also caps an e-mail at
/// 254 characters.
#[test]
fn slug_and_email_rules_agree_between_the_checks_sql_and_rust() {
    let db = server().fresh_db(true);
    let mut su = db.superuser();
    let me = crate::harness::active_user(&mut su, "slugs@example.com");
    let mut user = db.acting_as(&me);
    let mut svc = db.service();
    let long_ok = "a".repeat(63);
    let long_bad = "a".repeat(64);
    for slug in [
        "ab", "a", "", "a-b", "a--b", "-ab", "ab-", "a_b", "a b", "a.b", "0a", "00", "Ab", "AB-c",
        "é1", "ab\n", &long_ok, &long_bad,
    ] {
        let check = outcome(
            &mut su,
            "INSERT INTO truxe.organizations (slug, name) VALUES ($1::text::public.citext, 'x')",
            slug,
        );
        let sql = outcome(
            &mut user,
            "SELECT truxe.create_organization($1::text::public.citext, 'x')",
            slug,
        );
        assert!(
            ["ok", "23514"].contains(&check.as_str()),
            "{slug:?}: {check}"
        );
        assert_eq!(
            sql,
            if check == "ok" { "ok" } else { "22023" },
            "create_organization vs the CHECK for {slug:?}"
        );
        // org_slug is citext, compared case-insensitively: Rust judges the slug's lowercase
        // form, which is what the CHECK judges for the stored slug it may match
        let lower_check = outcome(
            &mut su,
            "INSERT INTO truxe.organizations (slug, name) VALUES (lower($1)::public.citext, 'x')",
            slug,
        );
        let rust = outcome(
            &mut svc,
            "SELECT * FROM truxe.issue_magic_link('a@example.com', $1::text::public.citext)",
            slug,
        );
        assert_eq!(
            rust,
            if lower_check == "ok" {
                "P0002"
            } else {
                "22023"
            },
            "issue_magic_link's org_slug vs the CHECK for {slug:?}"
        );
    }
    su.batch_execute("INSERT INTO truxe.organizations (slug, name) VALUES ('email-rules', 'x')")
        .unwrap();
    let long_local = format!("{}@example.com", "a".repeat(242)); // 254 characters
    for email in [
        "a@b.co",
        "A@B.DE",
        "a.b+c%d_e-f@x-y.example.org",
        "a@b",
        "a@b.c",
        "a@b.c1",
        "a@.de",
        "a@b..de",
        "a@-b.de",
        "a@b.de.",
        "@b.de",
        "a@@b.de",
        "a b@c.de",
        "é@b.de",
        "a@b.de\n",
        "a@b_c.de",
        "",
        &long_local,
    ] {
        let check = outcome(
            &mut su,
            "INSERT INTO truxe.users (email) VALUES ($1::text::public.citext)",
            email,
        );
        let rust = outcome(
            &mut svc,
            "SELECT * FROM truxe.issue_magic_link($1::text::public.citext)",
            email,
        );
        assert!(
            ["ok", "23514"].contains(&check.as_str()),
            "{email:?}: {check}"
        );
        assert_eq!(
            rust,
            if check == "ok" { "ok" } else { "22023" },
            "issue_magic_link vs the CHECK for {email:?}"
        );
        // invitations repeat the users' e-mail CHECK (invitation_valid_email)
        let invitation_check = outcome(
            &mut su,
            "INSERT INTO truxe.invitations (org_id, email, token_hash, expires_at)
             SELECT o.id, $1::text::public.citext, repeat('a', 64), now() + interval '1 day'
               FROM truxe.organizations o WHERE o.slug = 'email-rules'",
            email,
        );
        assert_eq!(
            invitation_check, check,
            "invitations vs users for {email:?}"
        );
    }
    // 254 characters is Rust's cap (the CHECK has none)
    let too_long = format!("{}@example.com", "a".repeat(243));
    assert_eq!(
        outcome(
            &mut su,
            "INSERT INTO truxe.users (email) VALUES ($1::text::public.citext)",
            &too_long
        ),
        "ok"
    );
    assert_eq!(
        outcome(
            &mut svc,
            "SELECT * FROM truxe.issue_magic_link($1::text::public.citext)",
            &too_long
        ),
        "22023"
    );
}
