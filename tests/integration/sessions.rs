//! Sessions as a hostile tenant sees them (0.2): no token is stored, audited or readable;
//! a user lists and signs out their own devices; access ends with membership and status;
//! no grace when the grace is 0; the functions ignore the caller's search_path.
use crate::harness::{server, sqlstate, Tenants, TestDb, SERVICE_LOGIN};
use postgres::{Client, GenericClient};
use std::sync::{Arc, Barrier};
use std::thread;

const ORG: &str = "0a000000-0000-0000-0000-00000000000a";
const CHILD: &str = "0c000000-0000-0000-0000-00000000000c";
const OWNER: &str = "00000000-0000-0000-0000-0000000000a1";
const ADMIN: &str = "00000000-0000-0000-0000-0000000000a2";
const MEMBER: &str = "00000000-0000-0000-0000-0000000000a3";
const OTHER: &str = "00000000-0000-0000-0000-0000000000a4";

/// An org (with a child org) where OWNER owns, ADMIN administers and MEMBER is a member;
/// OTHER belongs nowhere. All users active.
fn populated() -> TestDb {
    let db = server().fresh_db(true);
    Tenants::new()
        .user(OWNER, "owner@x.example")
        .user(ADMIN, "admin@x.example")
        .user(MEMBER, "member@x.example")
        .user(OTHER, "other@x.example")
        .org(ORG, "org", "Org", None)
        .org(CHILD, "child", "Child", Some(ORG))
        .member(ORG, OWNER, "owner")
        .member(ORG, ADMIN, "admin")
        .member(ORG, MEMBER, "member")
        .seed(&db);
    db
}

/// create_session as service_account: (jti, refresh_jti) as text.
fn create(c: &mut impl GenericClient, user: &str, org: Option<&str>) -> (String, String) {
    let r = c
        .query_one(
            "SELECT jti::text, refresh_jti::text
               FROM truxe.create_session($1::text::uuid, $2::text::uuid, '1 hour', '{\"device\": \"phone\"}')",
            &[&user, &org],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// refresh_session: Some((jti, refresh_jti)) or None for no row.
fn refresh(c: &mut impl GenericClient, refresh_jti: &str) -> Option<(String, String)> {
    c.query(
        "SELECT jti::text, refresh_jti::text FROM truxe.refresh_session($1::text::uuid, '1 hour')",
        &[&refresh_jti],
    )
    .unwrap()
    .first()
    .map(|r| (r.get(0), r.get(1)))
}

/// validate_session: the user id, or None for no row.
fn validate(c: &mut impl GenericClient, jti: &str) -> Option<String> {
    c.query(
        "SELECT user_id::text FROM truxe.validate_session($1::text::uuid)",
        &[&jti],
    )
    .unwrap()
    .first()
    .map(|r| r.get(0))
}

/// The revoked_reason of the session holding this access token (read as superuser).
fn reason(c: &mut impl GenericClient, jti: &str) -> Option<String> {
    c.query_one(
        "SELECT revoked_reason FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
        &[&jti],
    )
    .unwrap()
    .get(0)
}

/// Everything `c` may read in schema truxe, as text: every column it holds SELECT on, of
/// every row RLS shows it.
fn everything_readable(c: &mut Client) -> String {
    let cols: Vec<(String, String)> = c
        .query(
            "SELECT c.relname::text, a.attname::text FROM pg_class c
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE c.relnamespace = 'truxe'::regnamespace AND c.relkind IN ('r', 'v', 'p')
                AND has_column_privilege(c.oid, a.attnum, 'SELECT')
              ORDER BY 1, a.attnum",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out = String::new();
    let mut tables: Vec<&str> = cols.iter().map(|(t, _)| t.as_str()).collect();
    tables.dedup();
    for t in tables {
        let list: Vec<String> = cols
            .iter()
            .filter(|(tt, _)| tt == t)
            .map(|(_, col)| format!("coalesce(x.\"{col}\"::text, '')"))
            .collect();
        let sql = format!(
            "SELECT coalesce(string_agg(concat_ws('|', {}), E'\\n'), '') FROM truxe.{t} x",
            list.join(", ")
        );
        let text: String = c.query_one(&sql, &[]).unwrap().get(0);
        out.push_str(&text);
        out.push('\n');
    }
    out
}

/// The forms a token could take in text: with and without dashes, either case.
fn forms(tokens: &[&String]) -> Vec<String> {
    tokens
        .iter()
        .flat_map(|t| {
            let bare = t.replace('-', "");
            [
                t.to_string(),
                t.to_uppercase(),
                bare.clone(),
                bare.to_uppercase(),
            ]
        })
        .collect()
}

fn assert_holds_none(haystack: &str, needles: &[String], what: &str) {
    for n in needles {
        assert!(!haystack.contains(n.as_str()), "{what} holds a token: {n}");
    }
}

/// Every uuid-looking value (with or without dashes) in `text`.
fn uuids_in(text: &str) -> Vec<String> {
    let hex: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let is_hex = |c: char| c.is_ascii_hexdigit();
    let mut i = 0;
    while i < hex.len() {
        for len in [36usize, 32] {
            if i + len <= hex.len() {
                let s: String = hex[i..i + len].iter().collect();
                let ok = if len == 36 {
                    s.chars().enumerate().all(|(k, ch)| {
                        if [8, 13, 18, 23].contains(&k) {
                            ch == '-'
                        } else {
                            is_hex(ch)
                        }
                    })
                } else {
                    s.chars().all(is_hex)
                };
                if ok {
                    out.push(s);
                }
            }
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    out
}

/// The exploit of 0.1: an org admin reads session.created / session.refreshed audit rows
/// and calls validate_session on their target_id to act as the owner. In 0.2 no audit row,
/// no column an admin (or the owner) can read, and no pg_dump holds a token, and nothing
/// readable validates.
#[test]
fn an_admin_finds_no_usable_token_in_audit_rows_readable_columns_or_a_dump() {
    let db = populated();
    let mut s = db.service();
    let (jti1, refresh1) = create(&mut s, OWNER, Some(ORG));
    let (jti2, refresh2) = refresh(&mut s, &refresh1).expect("rotation");
    let needles = forms(&[&jti1, &refresh1, &jti2, &refresh2]);

    let mut admin = db.acting_as(ADMIN);
    // the admin does see the owner's session events (by public id only)
    let events: i64 = admin
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs
              WHERE action IN ('session.created', 'session.refreshed', 'session.revoked')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        events >= 3,
        "created, refreshed, revoked (rotated) are visible: {events}"
    );
    // the 0.1 exploit, verbatim: nothing
    let hijacked: i64 = admin
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs a, truxe.validate_session(a.target_id::uuid) v
              WHERE a.action IN ('session.created', 'session.refreshed')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(hijacked, 0);
    let audit: String = admin
        .query_one(
            "SELECT string_agg(coalesce(target_id, '') || '|' || details::text, E'\\n') FROM truxe.audit_logs",
            &[],
        )
        .unwrap()
        .get(0);
    assert_holds_none(&audit, &needles, "an audit row the admin reads");
    for (who, mut c) in [("the admin", admin), ("the owner", db.acting_as(OWNER))] {
        let readable = everything_readable(&mut c);
        assert!(
            readable.contains(ORG),
            "{who} reads the org's rows: {readable}"
        );
        assert_holds_none(&readable, &needles, who);
        // every uuid they can read, tried as an access token: none validates
        let candidates = uuids_in(&readable);
        assert!(!candidates.is_empty());
        let usable: i64 = c
            .query_one(
                "SELECT count(*) FROM unnest($1::text[]) t(u),
                        truxe.validate_session(replace(t.u, '-', '')::uuid) v",
                &[&candidates],
            )
            .unwrap()
            .get(0);
        assert_eq!(usable, 0, "{who} found a usable token");
    }
    // the token hashes are not granted to authenticated at all
    let mut owner = db.acting_as(OWNER);
    for sql in [
        "SELECT jti_hash FROM truxe.sessions",
        "SELECT refresh_jti_hash FROM truxe.sessions",
        "SELECT * FROM truxe.sessions",
    ] {
        assert_eq!(sqlstate(owner.query(sql, &[])), "42501", "{sql}");
    }
    // the table itself (as the superuser sees it) holds only hashes
    let stored = everything_readable(&mut db.superuser());
    assert_holds_none(&stored, &needles, "the superuser's view of every table");

    // and a plain pg_dump of the database holds none either
    let out = server()
        .tool("pg_dump")
        .args(["-Fp", "--no-owner"])
        .arg(&db.name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains("COPY truxe.sessions"),
        "the dump has the sessions"
    );
    assert_holds_none(&dump, &needles, "pg_dump");

    // the tokens still work for their holder
    assert_eq!(validate(&mut s, &jti2).as_deref(), Some(OWNER));
    assert_eq!(validate(&mut s, &jti1), None, "rotated");
}

/// Removal from the org, suspension, status `deleted` and deleting the user each end
/// validate_session and refresh_session for tokens issued before, inside the transaction
/// that made the change.
#[test]
fn removal_suspension_and_deletion_end_sessions_in_the_same_transaction() {
    let db = populated();
    let mut s = db.service();

    // removal (by the owner, through remove_member)
    let (j, r) = create(&mut s, MEMBER, Some(ORG));
    let (j_global, _) = create(&mut s, MEMBER, None);
    let mut t = s.transaction().unwrap();
    assert_eq!(validate(&mut t, &j).as_deref(), Some(MEMBER));
    t.execute("SELECT truxe.set_context($1::text::uuid)", &[&OWNER])
        .unwrap();
    t.execute(
        "SELECT truxe.remove_member($1::text::uuid, $2::text::uuid)",
        &[&ORG, &MEMBER],
    )
    .unwrap();
    assert_eq!(validate(&mut t, &j), None, "removed: no access token");
    assert_eq!(refresh(&mut t, &r), None, "removed: no refresh");
    assert_eq!(
        validate(&mut t, &j_global).as_deref(),
        Some(MEMBER),
        "a session not scoped to that org lives on"
    );
    t.commit().unwrap();
    assert_eq!(
        reason(&mut db.superuser(), &j).as_deref(),
        Some("membership_removed")
    );

    // suspension and status 'deleted': every session, org-scoped or not
    for (status, user) in [("suspended", ADMIN), ("deleted", OWNER)] {
        let (j1, r1) = create(&mut s, user, Some(ORG));
        let (j2, r2) = create(&mut s, user, None);
        let mut t = s.transaction().unwrap();
        assert_eq!(validate(&mut t, &j1).as_deref(), Some(user));
        t.execute(
            "UPDATE truxe.users SET status = $1::text::truxe.user_status WHERE id = $2::text::uuid",
            &[&status, &user],
        )
        .unwrap();
        for (j, r) in [(&j1, &r1), (&j2, &r2)] {
            assert_eq!(validate(&mut t, j), None, "{status}");
            assert_eq!(refresh(&mut t, r), None, "{status}");
        }
        t.commit().unwrap();
        let expected = format!("user_{status}");
        for j in [&j1, &j2] {
            assert_eq!(
                reason(&mut db.superuser(), j).as_deref(),
                Some(expected.as_str())
            );
        }
        let audited: i64 = s
            .query_one(
                "SELECT count(*) FROM truxe.audit_logs
                  WHERE action = 'session.revoked' AND details->>'reason' = $1",
                &[&expected],
            )
            .unwrap()
            .get(0);
        assert_eq!(audited, 2, "{status}: one session.revoked per session");
        // and no new session for them
        assert_eq!(
            sqlstate(s.query(
                "SELECT * FROM truxe.create_session($1::text::uuid)",
                &[&user]
            )),
            "42501"
        );
    }

    // deleting the user row (sessions go with it, memberships too: no error on the way)
    let (j, r) = create(&mut s, OTHER, None);
    let mut t = s.transaction().unwrap();
    t.execute(
        "DELETE FROM truxe.users WHERE id = $1::text::uuid",
        &[&OTHER],
    )
    .unwrap();
    assert_eq!(validate(&mut t, &j), None);
    assert_eq!(refresh(&mut t, &r), None);
    t.commit().unwrap();
}

/// validate_session and refresh_session re-check access themselves: a session whose
/// membership went away without the trigger (a replica-mode bulk change), or whose
/// owner/admin route through an ancestor ended by a role change, gives no row.
#[test]
fn validate_and_refresh_recheck_membership_and_status() {
    let db = populated();
    let mut s = db.service();
    // an admin of the parent may hold a session scoped to the child
    let (jc, rc) = create(&mut s, ADMIN, Some(CHILD));
    assert_eq!(validate(&mut s, &jc).as_deref(), Some(ADMIN));
    // … until they are no longer admin of the parent (no trigger for a role change)
    let mut t = s.transaction().unwrap();
    t.execute(
        "UPDATE truxe.memberships SET role = 'member' WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid",
        &[&ORG, &ADMIN],
    )
    .unwrap();
    assert_eq!(validate(&mut t, &jc), None);
    assert_eq!(refresh(&mut t, &rc), None);
    t.rollback().unwrap();
    assert_eq!(validate(&mut s, &jc).as_deref(), Some(ADMIN), "rolled back");
    // a plain member of the parent may not hold one
    assert_eq!(
        sqlstate(s.query(
            "SELECT * FROM truxe.create_session($1::text::uuid, $2::text::uuid)",
            &[&MEMBER, &CHILD]
        )),
        "42501"
    );
    // removal from the parent revokes the child-scoped session too
    let mut t = s.transaction().unwrap();
    t.execute(
        "DELETE FROM truxe.memberships WHERE org_id = $1::text::uuid AND user_id = $2::text::uuid",
        &[&ORG, &ADMIN],
    )
    .unwrap();
    assert_eq!(validate(&mut t, &jc), None);
    t.commit().unwrap();
    assert_eq!(
        reason(&mut db.superuser(), &jc).as_deref(),
        Some("membership_removed")
    );

    // triggers skipped (session_replication_role = replica, as a bulk load would): the
    // sessions stay unrevoked, and validate/refresh still refuse them
    let (j, r) = create(&mut s, MEMBER, Some(ORG));
    let (jo, ro) = create(&mut s, OWNER, None);
    let mut su = db.superuser();
    su.batch_execute(&format!(
        "SET session_replication_role = replica;
         DELETE FROM truxe.memberships WHERE org_id = '{ORG}' AND user_id = '{MEMBER}';
         UPDATE truxe.users SET status = 'suspended' WHERE id = '{OWNER}';
         RESET session_replication_role;"
    ))
    .unwrap();
    assert_eq!(
        reason(&mut su, &j),
        None,
        "not revoked: the trigger did not run"
    );
    assert_eq!(validate(&mut s, &j), None);
    assert_eq!(refresh(&mut s, &r), None);
    assert_eq!(validate(&mut s, &jo), None);
    assert_eq!(refresh(&mut s, &ro), None);
}

/// "Sign out that device": a user lists their own sessions (no credential column) and
/// revokes one by its public id; another user's id gives false and changes nothing;
/// service_account revokes any.
#[test]
fn a_user_lists_and_revokes_own_sessions_by_id_and_not_another_users() {
    let db = populated();
    let mut s = db.service();
    let (phone, _) = create(&mut s, MEMBER, None);
    let (laptop, _) = create(&mut s, MEMBER, Some(ORG));
    let (theirs, _) = create(&mut s, OTHER, None);

    let mut me = db.acting_as(MEMBER);
    let listed: Vec<(String, String)> = me
        .query(
            "SELECT id::text, device_info->>'device' FROM truxe.sessions
              WHERE revoked_at IS NULL AND expires_at > now() ORDER BY created_at, id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(listed.len(), 2, "own sessions only: {listed:?}");
    // the listing's columns: id, device, ip, user agent, created, last used, expiry
    me.query(
        "SELECT id, device_info, ip, user_agent, created_at, last_used_at, expires_at, org_id,
                family_id, revoked_at, revoked_reason, replaced_by FROM truxe.sessions",
        &[],
    )
    .unwrap();
    let id_of = |c: &mut Client, jti: &str| -> String {
        c.query_one(
            "SELECT id::text FROM truxe.sessions WHERE jti_hash = sha256(uuid_send($1::text::uuid))",
            &[&jti],
        )
        .unwrap()
        .get(0)
    };
    let mut su = db.superuser();
    let (phone_id, laptop_id, their_id) = (
        id_of(&mut su, &phone),
        id_of(&mut su, &laptop),
        id_of(&mut su, &theirs),
    );
    assert!(listed.iter().any(|(id, _)| *id == phone_id));

    let revoke = |c: &mut Client, id: &str| -> bool {
        c.query_one("SELECT truxe.revoke_session_by_id($1::text::uuid)", &[&id])
            .unwrap()
            .get(0)
    };
    assert!(revoke(&mut me, &phone_id));
    assert!(!revoke(&mut me, &phone_id), "already revoked");
    assert!(!revoke(&mut me, &their_id), "another user's session: false");
    assert!(
        !revoke(&mut me, "00000000-0000-0000-0000-000000000000"),
        "unknown: the same false"
    );
    assert!(!me
        .query_one("SELECT truxe.revoke_session_by_id(NULL)", &[])
        .unwrap()
        .get::<_, bool>(0));
    // no context: nothing
    let mut anon = db.authenticated();
    assert!(!revoke(&mut anon, &laptop_id));
    assert_eq!(validate(&mut s, &phone), None, "that device is signed out");
    assert_eq!(validate(&mut s, &laptop).as_deref(), Some(MEMBER));
    assert_eq!(validate(&mut s, &theirs).as_deref(), Some(OTHER));
    let audited: (String, String) = s
        .query_one(
            "SELECT target_id, details->>'reason' FROM truxe.audit_logs
              WHERE action = 'session.revoked' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(audited, (phone_id, "logout".to_string()));
    // a superuser (or service) connection that SET ROLE authenticated is an end user
    let mut pooled = db.superuser();
    pooled
        .batch_execute(&format!(
            "SET ROLE authenticated; SELECT truxe.set_context('{MEMBER}', NULL, false)"
        ))
        .unwrap();
    assert!(
        !revoke(&mut pooled, &their_id),
        "SET ROLE authenticated: own only"
    );
    // service_account: any session
    assert!(revoke(&mut s, &their_id));
    assert_eq!(validate(&mut s, &theirs), None);
    // a role that is neither (PUBLIC) may not call it
    assert_eq!(
        sqlstate(
            db.nobody()
                .query("SELECT truxe.revoke_session_by_id(gen_random_uuid())", &[])
        ),
        "42501"
    );
}

/// truxe.refresh_reuse_grace = 0 means no grace at all: in 0.1 a reuse within the same
/// transaction as the rotation still got the grace (revoked_at = now()).
#[test]
fn a_grace_of_zero_gives_no_grace_even_within_the_rotating_transaction() {
    let db = populated();
    let mut su = db.superuser();
    su.batch_execute("SET truxe.refresh_reuse_grace = 0")
        .unwrap();
    let (_, r) = create(&mut su, MEMBER, None);
    let mut t = su.transaction().unwrap();
    let (j2, _) = refresh(&mut t, &r).expect("rotation");
    assert_eq!(refresh(&mut t, &r), None, "reuse: no row");
    assert_eq!(validate(&mut t, &j2), None, "the family is revoked");
    assert_eq!(reason(&mut t, &j2).as_deref(), Some("refresh_token_reuse"));
    let detected: i64 = t
        .query_one(
            "SELECT count(*) FROM truxe.audit_logs WHERE action = 'session.reuse_detected'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(detected, 1);
    t.commit().unwrap();

    // with the default grace, the same sequence keeps both sessions
    let mut s = db.service();
    let (_, r) = create(&mut s, MEMBER, None);
    let mut t = s.transaction().unwrap();
    let (a, _) = refresh(&mut t, &r).expect("rotation");
    let (b, _) = refresh(&mut t, &r).expect("within the grace");
    assert_ne!(a, b);
    assert!(validate(&mut t, &a).is_some() && validate(&mut t, &b).is_some());
    t.commit().unwrap();
}

/// Two tabs refresh the same token at once: both stay signed in, with different tokens
/// of one family.
#[test]
fn two_concurrent_refreshes_of_one_token_both_get_a_session() {
    let db = populated();
    let (_, r) = create(&mut db.service(), MEMBER, None);
    let barrier = Arc::new(Barrier::new(2));
    let got: Vec<Option<(String, String)>> = (0..2)
        .map(|_| {
            let (barrier, name, r) = (barrier.clone(), db.name.clone(), r.clone());
            thread::spawn(move || {
                let mut c = server().client(&name, SERVICE_LOGIN);
                barrier.wait();
                refresh(&mut c, &r)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let got: Vec<(String, String)> = got.into_iter().map(|g| g.expect("a session")).collect();
    assert_ne!(got[0].0, got[1].0);
    let mut s = db.service();
    for (j, _) in &got {
        assert_eq!(validate(&mut s, j).as_deref(), Some(MEMBER));
    }
}

/// Every session function runs with its own search_path: same-named functions and
/// operators in a schema ahead of pg_catalog on the caller's path are never called (0.1's
/// refresh_session called a shadowing make_interval(secs => int4)).
#[test]
fn session_functions_ignore_a_hostile_search_path() {
    let db = populated();
    let mut su = db.superuser();
    su.batch_execute(
        "CREATE SCHEMA evil;
         GRANT USAGE ON SCHEMA evil TO PUBLIC;
         CREATE FUNCTION evil.make_interval(secs int4) RETURNS interval LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'hijacked make_interval'; END $$;
         CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'hijacked now'; END $$;
         CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'hijacked gen_random_uuid'; END $$;
         CREATE FUNCTION evil.eq(bytea, bytea) RETURNS boolean LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'hijacked ='; END $$;
         CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = evil.eq);
         CREATE FUNCTION evil.eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'hijacked uuid ='; END $$;
         CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.eq);
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA evil TO PUBLIC;",
    )
    .unwrap();
    for mut c in [db.service(), db.acting_as(MEMBER)] {
        c.batch_execute("SET search_path = evil, pg_catalog, public")
            .unwrap();
        if c.query_one("SELECT current_user::text", &[])
            .unwrap()
            .get::<_, String>(0)
            == SERVICE_LOGIN
        {
            let (j, r) = create(&mut c, MEMBER, Some(ORG));
            let (j2, r2) = refresh(&mut c, &r).expect("rotation");
            assert!(refresh(&mut c, &r).is_some(), "grace");
            assert_eq!(validate(&mut c, &j), None);
            assert_eq!(validate(&mut c, &j2).as_deref(), Some(MEMBER));
            c.query_one("SELECT truxe.revoke_session($1::text::uuid)", &[&j2])
                .unwrap();
            c.query_one(
                "SELECT truxe.revoke_user_sessions($1::text::uuid)",
                &[&MEMBER],
            )
            .unwrap();
            assert_eq!(refresh(&mut c, &r2), None);
            c.query_one(
                "SELECT truxe.revoke_session_by_id(pg_catalog.gen_random_uuid())",
                &[],
            )
            .unwrap();
        } else {
            assert_eq!(
                validate(&mut c, "00000000-0000-0000-0000-000000000000"),
                None
            );
            c.query_one(
                "SELECT truxe.revoke_session_by_id(pg_catalog.gen_random_uuid())",
                &[],
            )
            .unwrap();
        }
    }
    // the access-ending triggers, too
    let mut s = db.service();
    let (j, _) = create(&mut s, ADMIN, Some(ORG));
    su.batch_execute(&format!(
        "SET search_path = evil, pg_catalog, public;
         DELETE FROM truxe.memberships
          WHERE org_id OPERATOR(pg_catalog.=) '{ORG}' AND user_id OPERATOR(pg_catalog.=) '{ADMIN}';
         UPDATE truxe.users SET status = 'suspended' WHERE id OPERATOR(pg_catalog.=) '{MEMBER}';
         RESET search_path;"
    ))
    .unwrap();
    assert_eq!(reason(&mut su, &j).as_deref(), Some("membership_removed"));
}

/// The trigger functions are not callable, and nobody but their owner holds EXECUTE.
#[test]
fn access_ending_trigger_functions_are_granted_to_nobody() {
    let db = populated();
    let r = db
        .superuser()
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE p.proacl IS NULL),
                    (SELECT count(*) FROM pg_proc q, aclexplode(q.proacl) a
                      WHERE q.oid = ANY (array_agg(p.oid)) AND a.grantee <> q.proowner)
               FROM pg_proc p
              WHERE p.pronamespace = 'truxe'::regnamespace
                AND p.proname IN ('end_sessions_on_membership_delete', 'end_sessions_on_status_change')",
            &[],
        )
        .unwrap();
    let (n, default_acl, grants): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(
        (n, default_acl, grants),
        (2, 0, 0),
        "two functions, no default ACL (PUBLIC), no grant to anyone but the owner"
    );
    let mut s = db.service();
    assert_eq!(
        sqlstate(s.query("SELECT truxe.end_sessions_on_status_change()", &[])),
        "42501"
    );
}

/// Deleting an org or a user cascades to memberships (whose trigger revokes sessions) and to
/// sessions in one statement: no error on the way, and nothing validates afterwards.
#[test]
fn deleting_an_org_or_a_user_with_members_and_sessions() {
    let db = populated();
    let mut s = db.service();
    let (in_org, _) = create(&mut s, MEMBER, Some(ORG));
    let (in_child, r_child) = create(&mut s, OWNER, Some(CHILD));
    let (global, _) = create(&mut s, ADMIN, None);
    s.execute(
        "DELETE FROM truxe.organizations WHERE id = $1::text::uuid",
        &[&ORG],
    )
    .unwrap();
    assert_eq!(validate(&mut s, &in_org), None, "deleted with its org");
    assert_eq!(
        validate(&mut s, &in_child),
        None,
        "the child lost its parent, and the owner their route into it"
    );
    assert_eq!(refresh(&mut s, &r_child), None);
    assert_eq!(validate(&mut s, &global).as_deref(), Some(ADMIN));
    // a user with a membership and a session scoped to it
    s.execute(
        "INSERT INTO truxe.memberships (org_id, user_id, role, joined_at)
         VALUES ($1::text::uuid, $2::text::uuid, 'member', now())",
        &[&CHILD, &ADMIN],
    )
    .unwrap();
    let (scoped, _) = create(&mut s, ADMIN, Some(CHILD));
    assert_eq!(validate(&mut s, &scoped).as_deref(), Some(ADMIN));
    s.execute(
        "DELETE FROM truxe.users WHERE id = $1::text::uuid",
        &[&ADMIN],
    )
    .unwrap();
    assert_eq!(validate(&mut s, &global), None);
    assert_eq!(validate(&mut s, &scoped), None);
}

/// A revocation also ends sessions created after its transaction began (READ COMMITTED
/// sees them): their revoked_at is not before their created_at, and nothing fails.
#[test]
fn a_revocation_ends_sessions_newer_than_its_transaction() {
    let db = populated();
    let mut revoker = db.service();
    let mut t = revoker.transaction().unwrap();
    // the transaction's now() is fixed here
    t.query_one("SELECT now()", &[]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (jti, _) = create(&mut db.service(), MEMBER, None);
    let revoked: i32 = t
        .query_one(
            "SELECT truxe.revoke_user_sessions($1::text::uuid, 'security')",
            &[&MEMBER],
        )
        .expect("a session newer than the revoking transaction")
        .get(0);
    assert_eq!(revoked, 1);
    t.commit().unwrap();
    assert_eq!(validate(&mut db.service(), &jti), None);
}

/// The jsonb arguments that must be objects (create_session's device_info, create_api_key's
/// and put_secret's metadata) refuse an array, a string, a number and JSON null with 22023,
/// naming the argument, and take NULL, an object, and an object nested far deeper than a
/// Rust JSON parser would follow (the check reads the value's header, it does not parse).
#[test]
fn jsonb_arguments_must_be_objects() {
    let db = populated();
    let keys = crate::mfa::KeyFile::new();
    keys.write(&[("k1", &crate::mfa::random_key())]);
    crate::mfa::use_key_file(&db.name, &keys);
    let deep = format!("{}1{}", "{\"a\":".repeat(2000), "}".repeat(2000));
    let calls = [
        (
            "SELECT 1 FROM truxe.create_session($1::text::uuid, NULL, '1 hour', $2::text::jsonb)",
            "device_info",
            false,
        ),
        (
            "SELECT 1 FROM truxe.create_api_key($1::text::uuid, 'k', '{}', NULL, $2::text::jsonb)",
            "metadata",
            true,
        ),
        (
            "SELECT truxe.put_secret($1::text::uuid, 'stripe', 'sk', $2::text::jsonb)",
            "metadata",
            false,
        ),
    ];
    for (sql, what, acting) in calls {
        let mut c = if acting {
            db.acting_as(OWNER)
        } else {
            db.service()
        };
        let target = if sql.contains("create_session") {
            OWNER
        } else {
            ORG
        };
        for bad in ["[1, 2]", "\"text\"", "42", "null"] {
            let e = c.query(sql, &[&target, &bad]).unwrap_err();
            let e = e.as_db_error().expect("a server error");
            assert_eq!(e.code().code(), "22023", "{sql} with {bad}");
            assert_eq!(
                e.message(),
                format!("{what} must be a JSON object"),
                "{sql} with {bad}"
            );
        }
        for good in [
            None,
            Some("{}"),
            Some("{\"k\": [1, {\"x\": null}]}"),
            Some(deep.as_str()),
        ] {
            c.query(sql, &[&target, &good])
                .unwrap_or_else(|e| panic!("{sql} with {good:?}: {e}"));
        }
    }
}

/// create_session, refresh_session and validate_session are one-row materialized set
/// functions (src/srf.rs): they answer in a FROM clause, in a select list (expanded or as a
/// composite), with the default ttl, and with NULL arguments as their documentation says
/// (22023 for a NULL user, no row for a NULL refresh token), through real service_account
/// and authenticated logins; a refused call leaves no session behind.
#[test]
fn session_functions_answer_in_every_calling_form() {
    let db = populated();
    let mut s = db.service();
    // FROM clause, default ttl and device_info: the row's three columns, typed
    let r = s
        .query_one(
            "SELECT jti::text, refresh_jti::text, expires_at > now() + interval '6 days'
               FROM truxe.create_session($1::text::uuid)",
            &[&OWNER],
        )
        .unwrap();
    let (jti, rjti): (String, String) = (r.get(0), r.get(1));
    assert!(r.get::<_, bool>(2), "the default ttl is 7 days");
    // select list, expanded
    let r = s
        .query_one(
            "SELECT x.jti::text FROM (SELECT (truxe.refresh_session($1::text::uuid)).*) x",
            &[&rjti],
        )
        .unwrap();
    let new_jti: String = r.get(0);
    assert_ne!(new_jti, jti, "a rotation gives a new access token");
    // select list, as a composite; a NULL and an unknown token give no row
    let n = s
        .query(
            "SELECT truxe.refresh_session(NULL) UNION ALL SELECT truxe.refresh_session(gen_random_uuid())",
            &[],
        )
        .unwrap()
        .len();
    assert_eq!(n, 0);
    let row: String = s
        .query_one(
            "SELECT truxe.validate_session($1::text::uuid)::text",
            &[&new_jti],
        )
        .unwrap()
        .get(0);
    assert!(row.starts_with(&format!("({OWNER},,")), "{row}");
    // as an authenticated login, in a FROM clause with the org scope
    let (scoped, _) = create(&mut s, MEMBER, Some(ORG));
    let mut a = db.authenticated();
    let r = a
        .query_one(
            "SELECT user_id::text, org_id::text FROM truxe.validate_session($1::text::uuid)",
            &[&scoped],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, String>(1)),
        (MEMBER.to_string(), ORG.to_string())
    );
    // errors raised inside the materializing call keep their SQLSTATE
    assert_eq!(
        sqlstate(s.query("SELECT * FROM truxe.create_session(NULL)", &[])),
        "22023"
    );
    assert_eq!(
        sqlstate(s.query(
            "SELECT truxe.create_session($1::text::uuid, $2::text::uuid)",
            &[&OTHER, &ORG]
        )),
        "42501"
    );
    let mut su = db.superuser();
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM truxe.sessions WHERE user_id = $1::text::uuid",
            &[&OTHER],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a refused create leaves no session");
}
